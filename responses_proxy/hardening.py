# -*- test-case-name: tests.test_hardening -*-
"""
Process hardening applied before the key is read (Linux).

Non-dumpable means no core dumps, no C{ptrace} from other users and
root-owned C{/proc/PID} files; C{RLIMIT_CORE=0} is belt and braces; C{LD_*}
variables are removed so that nothing this process spawns inherits an
injected library.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, MutableMapping

from twisted.logger import Logger

from responses_proxy import _libc

_log = Logger()

SECURE_MODE_VARIABLE = "CODEX_SECURE_MODE"


class HardeningFailed(RuntimeError):
    """
    A hardening step failed while secure mode demanded it.
    """


def secureModeRequested(environ: MutableMapping[str, str] = os.environ) -> bool:
    """
    Secure mode is on when C{CODEX_SECURE_MODE=1}.
    """
    return environ.get(SECURE_MODE_VARIABLE) == "1"


def _disableCoreDumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _makeNonDumpable() -> None:
    _libc.setDumpable(False)


def removeLoaderVariables(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """
    Remove every C{LD_*} variable and return the names removed.
    """
    names = [name for name in environ if name.startswith("LD_")]
    for name in names:
        del environ[name]
    return names


STEPS: list[tuple[str, Callable[[], object]]] = [
    ("prctl(PR_SET_DUMPABLE, 0)", _makeNonDumpable),
    ("setrlimit(RLIMIT_CORE, 0)", _disableCoreDumps),
    ("removing LD_* variables", removeLoaderVariables),
]


def harden(
    secure: bool, steps: list[tuple[str, Callable[[], object]]] | None = None
) -> list[str]:
    """
    Run every hardening step; return the warnings for the steps that failed.

    @raise HardeningFailed: a step failed and C{secure} is set.
    """
    warnings = []
    for name, step in STEPS if steps is None else steps:
        try:
            step()
        except Exception as e:
            message = f"hardening step {name} failed: {e}"
            if secure:
                raise HardeningFailed(message) from e
            # Not "message" or "warning": legacy log observers give those
            # keys their own meaning (and clobber or misread them).
            _log.warn("{problem}", problem=message)
            warnings.append(message)
    return warnings

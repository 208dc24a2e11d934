"""
The implementations under test: what each one is and where to find it
(launch.py starts them).

Four kinds:

  - C{ours}: our console script (or C{twistd -n responses-api-proxy}), found
    next to the Python running the bench (so C{$PYTHON} picks the venv);
  - C{reference}: the native binary of C{codex responses-api-proxy};
  - C{nginx}: a key-injecting reverse proxy (C{nginx-proxy.conf.template});
  - C{direct}: no proxy at all, the floor.

More columns are defined on the command line (L{parseImplSpec}): a kind,
optionally at another git revision, plus extra arguments. So one run can
put "features on" beside "features off", or this build beside an older one,
on the same machine state.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from _procs import firstLine
from builds import buildAtRevision

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
KEY = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"
# Column order of the built-in implementations; defined ones come after ours.
BUILTINS = ("direct", "ours", "reference", "nginx")
# Kinds a defined implementation may be based on: the others take no
# arguments of ours to add.
EXTENSIBLE = ("ours", "reference")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


@dataclass
class Impl:
    """
    One column of the results: what to run, and why not if it cannot be.

    @ivar argv: the command before the standard arguments (C{--server-info},
        C{--upstream-url}); nginx: the nginx binary.
    @ivar extraArgs: appended after the standard arguments. C{{scratch}} in
        them becomes a fresh directory for each process started, C{{run}}
        the run's scratch directory.
    @ivar python: ours: the interpreter the console script runs on (its
        package's version goes into the report).
    @ivar missing: why it cannot run (then it is skipped, with a note).
    """

    name: str
    kind: str
    argv: list[str] = field(default_factory=list)
    extraArgs: list[str] = field(default_factory=list)
    twistd: str | None = None
    python: str | None = None
    revision: str | None = None
    commit: str | None = None
    missing: str | None = None


@dataclass
class ImplSpec:
    """
    A parsed C{--impl NAME=BASE[@REV] [ARG ...]}.
    """

    name: str
    base: str
    revision: str | None
    args: list[str]


# ---------------------------------------------------------------- finding


def findOurs(
    name: str = "ours",
    scripts: Path | None = None,
    python: str = sys.executable,
    searchPath: bool = True,
) -> Impl:
    """
    Our console script and twistd in C{scripts} (default: the scripts
    directory of the Python running the bench), else on C{$PATH}.
    """
    where = scripts or Path(sysconfig.get_path("scripts"))

    def find(command: str) -> str | None:
        if (where / command).exists():
            return str(where / command)
        return shutil.which(command) if searchPath else None

    script = find("responses-api-proxy")
    if not script:
        return Impl(
            name, "ours", missing=f"console script responses-api-proxy not in {where}"
        )
    return Impl(name, "ours", [script], twistd=find("twistd"), python=python)


def _nativeCodex(root: Path) -> list[str]:
    """
    The native binaries of an npm install of @openai/codex whose
    C{node_modules} is in C{root}.
    """
    modules = f"{root}/node_modules/@openai"
    return sorted(
        glob.glob(f"{modules}/codex-linux-*/vendor/*/bin/codex")
        + glob.glob(f"{modules}/codex/vendor/*/bin/codex")
        + glob.glob(
            f"{modules}/codex/node_modules/@openai/codex-linux-*/vendor/*/bin/codex"
        )
    )


def findReference(repo: Path = REPO) -> Impl:
    """
    The native reference binary, rather than the npm C{codex} launcher (a
    Node.js script that spawns it): the proxy itself is what is measured.
    Looked for in C{$BENCH_REFERENCE} (the binary), the npm install in
    C{$CODEX_NPM_DIR}, the checkout's C{.ci/node} (where C{.ci/run}
    installs it), then next to C{codex} on C{$PATH}.
    """
    override = os.environ.get("BENCH_REFERENCE")
    if override:
        return Impl("reference", "reference", [override, "responses-api-proxy"])
    roots = (
        [Path(os.environ["CODEX_NPM_DIR"])] if os.environ.get("CODEX_NPM_DIR") else []
    )
    roots.append(repo / ".ci" / "node")
    launcher = shutil.which("codex")
    if launcher:
        # <root>/node_modules/.bin/codex links to
        # <root>/node_modules/@openai/codex/bin/codex.js
        parents = Path(os.path.realpath(launcher)).parents
        if len(parents) > 4:
            roots.append(parents[4])
    for root in roots:
        hits = _nativeCodex(root)
        if hits:
            return Impl("reference", "reference", [hits[0], "responses-api-proxy"])
    if launcher:
        return Impl("reference", "reference", [launcher, "responses-api-proxy"])
    return Impl(
        "reference",
        "reference",
        missing="not installed (npm install @openai/codex, then set CODEX_NPM_DIR to "
        "the directory holding node_modules, or BENCH_REFERENCE to the binary)",
    )


def findNginx() -> str | None:
    """
    nginx on C{$PATH}, or where Debian puts it (C{/usr/sbin}, not on a
    user's C{$PATH}).
    """
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


def builtinImpls() -> dict[str, Impl]:
    nginx = findNginx()
    return {
        "direct": Impl("direct", "direct"),
        "ours": findOurs(),
        "reference": findReference(),
        "nginx": Impl(
            "nginx",
            "nginx",
            [nginx] if nginx else [],
            missing=None if nginx else "not installed (apt-get install -y nginx)",
        ),
    }


# ---------------------------------------------------------------- defining


def parseImplSpec(spec: str) -> ImplSpec:
    """
    Parse C{NAME=BASE[@REV] [ARG ...]} (shell quoting), e.g.
    C{ours-features=ours --state-dir {scratch}} or C{ours-old=ours@v0.3}.

    @raise ValueError: with a message for the command line.
    """
    name, sep, rest = spec.partition("=")
    words = shlex.split(rest)
    if not sep or not words:
        raise ValueError(f"--impl {spec!r}: expected NAME=BASE[@REV] [ARG ...]")
    base, _, revision = words[0].partition("@")
    if not _NAME.match(name) or name.endswith("-twistd"):
        raise ValueError(f"--impl {spec!r}: bad name {name!r}")
    if base not in EXTENSIBLE:
        raise ValueError(
            f"--impl {spec!r}: BASE must be one of {', '.join(EXTENSIBLE)}"
        )
    if name in BUILTINS and name != base:
        raise ValueError(f"--impl {spec!r}: {name} can only be redefined from {name}")
    if revision and base != "ours":
        raise ValueError(f"--impl {spec!r}: only ours can be built at a revision")
    return ImplSpec(name, base, revision or None, words[1:])


def defineImpl(spec: ImplSpec, builtins: dict[str, Impl], buildDir: Path) -> Impl:
    """
    The implementation C{spec} describes: a built-in one plus arguments, or
    ours built at another revision (see L{buildAtRevision}).
    """
    base = builtins[spec.base]
    if spec.revision:
        try:
            venv, commit = buildAtRevision(spec.revision, buildDir)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            return Impl(spec.name, "ours", missing=f"build of {spec.revision}: {e}")
        bindir = venv / "bin"
        base = findOurs(spec.name, bindir, str(bindir / "python"), searchPath=False)
        base.revision, base.commit = spec.revision, commit
    return dataclasses.replace(
        base, name=spec.name, extraArgs=[*base.extraArgs, *spec.args]
    )


def describe(impl: Impl) -> str | None:
    """
    What an implementation is, for RESULTS.md: version, command, revision,
    extra arguments.
    """
    if impl.kind == "ours" and impl.argv:
        version = firstLine(
            [
                impl.python or sys.executable,
                "-c",
                "import importlib.metadata as m; "
                "print(m.version('responses-api-proxy'))",
            ],
            stderr=False,
        )
        text = f"responses-api-proxy {version or ''} ({' '.join(impl.argv)})"
    elif impl.kind == "reference" and impl.argv:
        version = firstLine([impl.argv[0], "--version"])
        if not version:
            return None
        text = f"{version} ({impl.argv[0]})"
    elif impl.kind == "nginx" and impl.argv:
        return firstLine([impl.argv[0], "-v"])
    else:
        return None
    if impl.commit:
        text += f" at git {impl.revision} ({impl.commit[:12]})"
    if impl.extraArgs:
        text += f" with `{shlex.join(impl.extraArgs)}`"
    return text

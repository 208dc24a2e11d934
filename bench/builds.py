"""
Ours at another git revision, for C{--impl 'NAME=ours@REV'}: this build
beside an older one, in the same run on the same machine state.

Each revision is installed (non-editable, as users get it) into a
virtualenv of its own, built once per commit from a temporary
C{git worktree} (so the checkout is left alone) and kept in
C{bench/out/builds/} for later runs. pip needs the project's dependencies
from its index or its cache.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from _procs import log

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    p = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120
    )
    if p.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def buildAtRevision(
    revision: str, buildDir: Path, python: str = sys.executable
) -> tuple[Path, str]:
    """
    A virtualenv in C{buildDir} with our package as of git C{revision}
    installed into it, and the commit; reused if it was built before.

    @raise RuntimeError: if git, venv or pip fail (with their message).
    """
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    venv = buildDir / commit[:12]
    marker = venv / "bench-built"
    if marker.exists():
        return venv, commit
    log(f"building ours at {revision} ({commit[:12]}) into {venv}")
    source = buildDir / f"src-{commit[:12]}"
    shutil.rmtree(venv, ignore_errors=True)
    if source.exists():
        # Left over from an interrupted build.
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(source)],
            capture_output=True,
        )
        shutil.rmtree(source, ignore_errors=True)
    buildDir.mkdir(parents=True, exist_ok=True)
    _git("worktree", "add", "--force", "--detach", str(source), commit)
    try:
        for argv in (
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        ):
            p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
            if p.returncode:
                raise RuntimeError(f"{shlex.join(argv)}: {p.stderr.strip()[-500:]}")
    finally:
        _git("worktree", "remove", "--force", str(source))
    marker.write_text(f"{revision} {commit}\n")
    return venv, commit

# -*- test-case-name: tests.test_realsystemd -*-
"""
A Debian root file system booted under C{systemd-nspawn}, for the tests
that need a real systemd as PID 1 (L{tests.test_realsystemd}).

  - L{containerRoot}: the cached root, built by C{.ci/container-root};
  - L{Container}: boot a private copy of it, run commands inside it
    (C{nsenter}), read and write its files, shut it down;
  - L{buildWheels}: the checkout's wheel and its dependencies, downloaded on
    the host, for an offline C{pip install} inside;
  - L{readmeShellBlocks}: the C{shell} blocks of one README section, so the
    tests run the documented commands as they are written.

The container has its own network namespace (a loopback of its own: port
8080 inside is not the host's), its own PID namespace and journal. It is
not registered with a host systemd (C{--register=no}, C{--keep-unit}):
the host's PID 1 need not be systemd.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from tests.support import OutputCapture, ProcessResult

CHECKOUT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ROOT_SCRIPT = os.path.join(CHECKOUT, ".ci", "container-root")
DEFAULT_ROOT = os.path.join(CHECKOUT, ".ci", "cache", "container-root")
ROOT_VARIABLE = "RESPONSES_PROXY_CONTAINER_ROOT"

# Inside the container: root's environment for every command we run there.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
    "COLUMNS": "200",
}
_PR_SET_PDEATHSIG = 1


class CannotBoot(Exception):
    """
    No container here: not root, no C{systemd-nspawn}, no root file system,
    or the boot failed. The message says which.
    """


class CommandFailed(AssertionError):
    """
    A command inside the container exited non-zero (or timed out).
    """


@dataclass
class Result:
    """
    How a command inside the container ended, and what it printed.
    """

    argv: list[str]
    exitCode: int | None
    out: str
    err: str

    def describe(self) -> str:
        return (
            f"{self.argv!r} exited {self.exitCode}\n"
            f"--- stdout\n{self.out}--- stderr\n{self.err}"
        )


def poll(
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.05,
    what: str = "",
) -> Deferred[Any]:
    """
    Call C{check()} (and await it, if it is asynchronous) until it gives a
    true value (fires with it) or C{timeout} passes (fails with
    L{AssertionError}). L{tests.support.waitFor}, for checks that may
    themselves run commands.
    """

    async def polling() -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or check}"
                )
            await task.deferLater(reactor, interval, lambda: None)

    return Deferred.fromCoroutine(polling())


# The root file system ---------------------------------------------------------


def containerRoot() -> str:
    """
    The cached Debian root: C{$RESPONSES_PROXY_CONTAINER_ROOT}, or
    C{.ci/cache/container-root} in the checkout. C{.ci/container-root}
    (re)builds it when it is missing or its recipe changed, and does nothing
    otherwise.

    @raise CannotBoot: not root, no C{systemd-nspawn}, or no root and no
        way to build one.
    """
    if os.geteuid() != 0:
        raise CannotBoot("booting a container with systemd-nspawn needs root")
    if shutil.which("systemd-nspawn") is None:
        raise CannotBoot("systemd-nspawn is not installed (Debian: systemd-container)")
    root = os.environ.get(ROOT_VARIABLE) or DEFAULT_ROOT
    built = subprocess.run(
        [ROOT_SCRIPT, root], capture_output=True, text=True, timeout=600
    )
    if built.returncode != 0:
        raise CannotBoot(
            f"no container root at {root} and .ci/container-root could not "
            f"build it (Debian: mmdebstrap):\n{built.stderr.strip()}"
        )
    return root


# Wheels ------------------------------------------------------------------------


def buildWheels(directory: str, pythonVersion: str = "3.11") -> str:
    """
    Build the checkout's wheel into C{directory} and download every
    dependency's wheel beside it, for CPython C{pythonVersion} (Debian
    bookworm's) on this platform. Returns the path of our wheel.
    """
    os.makedirs(directory, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # setuptools builds in the checkout's own build/ directory: with trial's
    # -j, two workers building at once clobber each other's files.
    lockPath = os.path.join(tempfile.gettempdir(), "responses-api-proxy-wheel.lock")
    with open(lockPath, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run(
            [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", directory, CHECKOUT],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if built.returncode != 0:
        raise AssertionError(f"pip wheel failed:\n{built.stdout}{built.stderr}")
    [wheel] = [
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.startswith("responses_api_proxy-") and name.endswith(".whl")
    ]
    downloaded = subprocess.run(
        [
            *pip,
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            pythonVersion,
            "--implementation",
            "cp",
            "--dest",
            directory,
            wheel,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if downloaded.returncode != 0:
        raise AssertionError(
            f"pip download failed:\n{downloaded.stdout}{downloaded.stderr}"
        )
    return wheel


# The README --------------------------------------------------------------------


def readmeShellBlocks(
    heading: str, readme: str | None = None, language: str = "shell"
) -> list[str]:
    """
    The C{```shell} blocks (or those of another C{language}) under the
    README heading C{heading} (a whole heading line, e.g. C{"### Rotating
    the key"}), up to the next heading of the same or a higher level, in
    order.
    """
    if readme is None:
        with open(os.path.join(CHECKOUT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
    level = len(heading) - len(heading.lstrip("#"))
    lines = readme.splitlines()
    if heading not in lines:
        raise AssertionError(f"README has no heading {heading!r}")
    blocks: list[str] = []
    block: list[str] | None = None
    for line in lines[lines.index(heading) + 1 :]:
        if block is not None:
            if line == "```":
                blocks.append("\n".join(block) + "\n")
                block = None
            else:
                block.append(line)
        elif line == "```" + language:
            block = []
        elif (match := re.match(r"(#+) ", line)) and len(match.group(1)) <= level:
            break
    if not blocks:
        raise AssertionError(f"README section {heading!r} has no {language} block")
    return blocks


def substitute(text: str, old: str, new: str) -> str:
    """
    C{text} with C{old} replaced by C{new}, where C{old} occurs exactly once:
    the visible edits the tests make to the README's commands.
    """
    if text.count(old) != 1:
        raise AssertionError(f"expected {old!r} exactly once in:\n{text}")
    return text.replace(old, new)


# The container ----------------------------------------------------------------


@dataclass
class Background:
    """
    A command running inside the container, started by L{Container.spawn}:
    its output so far, and its end.
    """

    argv: list[str]
    output: OutputCapture
    transport: Any

    @property
    def out(self) -> str:
        return self.output.out.decode("utf-8", "replace")

    def kill(self) -> Deferred[ProcessResult]:
        """
        End it (if it is still running) and fire when it has ended.

        nsenter forked the command into the container's PID namespace and
        only waits for it, so killing nsenter would leave the command
        running: SIGTERM goes to nsenter's child instead (C{timeout}, which
        passes it on to the command), SIGKILL to both if that is not enough.
        """
        if not self.output.ended.called:
            children = _children(self.transport.pid)
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            if not children:
                self.transport.signalProcess("KILL")
            call = reactor.callLater(10, self._killHard)
            self.output.ended.addBoth(lambda result: _cancel(call, result))
        return self.output.ended

    def _killHard(self) -> None:
        if self.output.ended.called:
            return
        for pid in _children(self.transport.pid):
            os.kill(pid, signal.SIGKILL)
        self.transport.signalProcess("KILL")

    async def result(self) -> Result:
        ended = await self.output.ended
        return Result(
            self.argv,
            ended.exitCode,
            self.out,
            self.output.err.decode("utf-8", "replace"),
        )


def _cancel(call: Any, result: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _writableCopy(root: str, workdir: str) -> tuple[str, bool]:
    """
    A root for one boot under C{workdir}, leaving C{root} untouched: an
    overlay on top of it where the kernel allows (instant), else a copy.
    Returns the directory, and whether it is a mount.
    """
    tree = os.path.join(workdir, "root")
    upper, work = os.path.join(workdir, "upper"), os.path.join(workdir, "work")
    for directory in (tree, upper, work):
        os.mkdir(directory)
    options = f"lowerdir={root},upperdir={upper},workdir={work}"
    overlay = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, tree],
        capture_output=True,
    )
    if overlay.returncode == 0:
        return tree, True
    os.rmdir(tree)
    subprocess.run(["cp", "-a", "--reflink=auto", root, tree], check=True)
    return tree, False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


# systemd's own cgroup hierarchies (cgroup v1 "name=systemd", and the
# unified v2 one, in a hybrid setup or alone).
_CGROUP_HIERARCHIES = (
    "/sys/fs/cgroup/systemd",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
)


def _ownCgroup(name: str) -> None:
    """
    Move this process into a cgroup of its own under each of systemd's
    hierarchies: with C{--keep-unit}, nspawn runs the container in the
    caller's cgroup, and two containers sharing one (trial -j2 runs two test
    processes) make each one's systemd fail to signal its units ("Failed to
    send signal ... to auxiliary processes: Input/output error").
    """
    for hierarchy in _CGROUP_HIERARCHIES:
        procs = os.path.join(hierarchy, "cgroup.procs")
        if not os.path.exists(procs):
            continue
        group = os.path.join(hierarchy, name)
        try:
            os.makedirs(group, exist_ok=True)
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass  # not delegated to us: stay where we are


def _dieWithParent() -> None:
    """
    In the nspawn child, before exec: in a cgroup of its own
    (L{_ownCgroup}), and SIGTERMed (an orderly halt of the container) if the
    test process dies without shutting it down.
    """
    _ownCgroup(f"responses-proxy-test-{os.getppid()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(eq=False)
class Container:
    """
    A booted copy of the root file system.

    @ivar tree: the boot's root directory on the host (its C{/}: an overlay
        on the cached root, or a copy of it); files under it
        outside the container's own mounts (C{/etc}, C{/opt}, C{/srv},
        C{/root}; not C{/run}, C{/tmp}) are the container's files.
    @ivar process: the C{systemd-nspawn} process.
    @ivar mounted: C{tree} is an overlay mount (else a plain copy).
    @ivar initPID: the container's PID 1 as the host sees it.
    """

    workdir: str
    tree: str
    process: subprocess.Popen[bytes]
    mounted: bool = False
    initPID: int = 0
    consolePath: str = ""
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    async def boot(cls, root: str, timeout: float = 90.0) -> Container:
        """
        Boot a writable copy of C{root} (L{_writableCopy}) to multi-user.

        @raise CannotBoot: with the console's last lines, if it does not
            come up within C{timeout}.
        """
        workdir = tempfile.mkdtemp(prefix="responses-proxy-container-")
        tree, mounted = _writableCopy(root, workdir)
        consolePath = os.path.join(workdir, "console.log")
        with open(consolePath, "wb") as console:
            process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--directory",
                    tree,
                    # Also the container's host name; unique, as nspawn
                    # keeps per-machine state under /run/systemd/nspawn.
                    f"--machine=responses-proxy-test-{os.getpid()}",
                    "--boot",
                    "--private-network",
                    "--register=no",
                    "--keep-unit",
                    # The units' CODEX_SECURE_MODE=1 needs mlock, which
                    # nspawn's own seccomp filter denies without it.
                    "--capability=CAP_IPC_LOCK",
                    # No terminal here: the console is nspawn's stdout.
                    "--console=pipe",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=_dieWithParent,
            )
        container = cls(workdir, tree, process, mounted, consolePath=consolePath)
        _booted.add(container)
        try:
            container.initPID = await poll(
                container._findInit, timeout, what="the container's PID 1"
            )
            state = await poll(container._booted, timeout, what="multi-user")
        except AssertionError as e:
            said = container.console()[-3000:]
            container.shutdown()
            raise CannotBoot(f"the container did not boot: {e}\n{said}") from None
        if state != "running":
            failed = await container.run(["systemctl", "--failed"], check=False)
            print(f"container booted {state}:\n{failed.out}", file=sys.stderr)
        return container

    async def _findInit(self) -> int | None:
        """
        The child of nspawn that is PID 1 in its own PID namespace.
        """
        if self.process.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.process.returncode}")
        try:
            with open(
                f"/proc/{self.process.pid}/task/{self.process.pid}/children"
            ) as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            return None
        for pid in children:
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if nspid and nspid.group(1).split()[1:] == ["1"]:
                return pid
        return None

    async def _booted(self) -> str | None:
        """
        C{running} or C{degraded} once the boot is over, else C{None}.
        """
        if self.process.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.process.returncode}")
        state = await self.run(["systemctl", "is-system-running"], check=False)
        value = state.out.strip()
        return value if value in ("running", "degraded") else None

    def console(self) -> str:
        with open(self.consolePath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    # Commands

    def spawn(
        self,
        argv: Sequence[str],
        stdin: bytes = b"",
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Background:
        """
        Start C{argv} inside the container, as root in all its namespaces
        but the cgroup one, with L{CONTAINER_ENV} plus C{env}, and return
        at once. It is killed after C{timeout} seconds.
        """
        full = [
            *("nsenter", f"--target={self.initPID}", "-m", "-u", "-i", "-n", "-p"),
            # nsenter forks into the PID namespace: the deadline is kept
            # inside, by timeout (coreutils), where the command runs.
            *("--", "timeout", "-k", "5", str(timeout), *argv),
        ]
        output = OutputCapture(stdin)
        transport = reactor.spawnProcess(
            output, "/usr/bin/nsenter", full, env={**CONTAINER_ENV, **(env or {})}
        )
        background = Background(list(argv), output, transport)
        call = reactor.callLater(timeout + 10, background._killHard)
        output.ended.addBoth(lambda result: _cancel(call, result))
        return background

    async def run(
        self,
        argv: Sequence[str],
        stdin: bytes = b"",
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> Result:
        """
        Run C{argv} inside the container and wait for it to end.

        @param check: raise L{CommandFailed} unless it exits 0.
        """
        result = await self.spawn(argv, stdin, env, timeout).result()
        if check and result.exitCode != 0:
            raise CommandFailed(result.describe())
        return result

    async def sh(
        self,
        script: str,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        check: bool = True,
        cwd: str = "/",
    ) -> Result:
        """
        Run a shell script (C{sh -e}) inside the container, in C{cwd}.
        """
        return await self.run(
            ["sh", "-ec", f"cd {cwd}\n{script}"], env=env, timeout=timeout, check=check
        )

    def processes(self) -> dict[int, int]:
        """
        The container's processes: their PIDs on the host, mapped to their
        PIDs inside.
        """
        namespace = os.readlink(f"/proc/{self.initPID}/ns/pid")
        found = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{name}/ns/pid") != namespace:
                    continue
                with open(f"/proc/{name}/status") as f:
                    nspid = re.search(r"^NSpid:\s+(.*)$", f.read(), re.M)
            except OSError:
                continue
            if nspid:
                found[int(name)] = int(nspid.group(1).split()[-1])
        return found

    # Files (under the host's view of the container's root)

    def path(self, inside: str) -> str:
        """
        The host path of C{inside}, a path on the container's root file
        system (not under its own mounts such as C{/run} or C{/tmp}).
        """
        return os.path.join(self.tree, inside.lstrip("/"))

    def writeFile(self, inside: str, data: bytes | str, mode: int = 0o644) -> None:
        """
        Write a file of the container's root file system, parents created.
        """
        host = self.path(inside)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if isinstance(data, str):
            data = data.encode("utf-8")
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(host, mode)

    def readFile(self, inside: str) -> str:
        with open(self.path(inside), encoding="utf-8") as f:
            return f.read()

    def copyTree(self, source: str, inside: str) -> None:
        """
        Copy the host directory C{source} to C{inside}, replacing it.
        """
        shutil.rmtree(self.path(inside), ignore_errors=True)
        shutil.copytree(source, self.path(inside), symlinks=True)

    # Shutting down

    def shutdown(self, timeout: float = 30.0) -> None:
        """
        Halt the container (SIGTERM to nspawn: an orderly shutdown), kill it
        if that takes longer than C{timeout}, wait, and remove the overlay
        (or copy).
        Blocking, so that it also works from L{atexit}.
        """
        if self._stopped:
            return
        self._stopped = True
        _booted.discard(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.mounted:
            unmounted = subprocess.run(["umount", self.tree], capture_output=True)
            if unmounted.returncode != 0:
                subprocess.run(["umount", "--lazy", self.tree], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


_booted: set[Container] = set()


@atexit.register
def _shutdownAll() -> None:
    for container in list(_booted):
        container.shutdown()

"""
Helpers for tests that run the installed entry points as real processes.

Kept apart from L{tests.support} (which they build on) so the process-level
tests can grow without touching the shared fixtures:

  - L{ENTRY_POINTS}: the three ways to start the proxy;
  - L{spawnProxy}: start one with a key on stdin, wait for its server-info;
  - L{restrictedArgv}: run a command with fewer privileges or limits;
  - L{procStatus}, L{procLimits}: read another process's C{/proc} entries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import protocol, reactor
from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    gatherResults,
)
from twisted.internet.interfaces import IProcessTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import (
    CANARY_KEY,
    ProcessResult,
    SpawnedProcess,
    childEnvironment,
    readServerInfo,
    scriptPath,
    spawnEntryPoint,
    waitFor,
)

_T = TypeVar("_T")

ENTRY_POINTS: dict[str, list[str]] = {
    "console script": ["responses-api-proxy"],
    "twistd": ["twistd", "-n", "--pidfile=", "responses-api-proxy"],
    "python -m": [sys.executable, "-m", "responses_proxy"],
}


@dataclass
class SpawnedProxy:
    """
    A proxy process that is listening: its process and its server-info.
    """

    process: SpawnedProcess
    serverInfoPath: str
    info: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1/responses"


class ProxyDidNotStart(AssertionError):
    """
    The process ended before it wrote its server-info file.
    """


async def spawnProxy(
    testCase: TestCase,
    *args: str,
    entry: str = "console script",
    key: bytes = CANARY_KEY.encode() + b"\n",
    env: dict[str, str] | None = None,
    serverInfoPath: str | None = None,
    timeout: float = 30.0,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> SpawnedProxy:
    """
    Start the proxy through C{entry} with C{key} on stdin and C{args}; fire
    with a L{SpawnedProxy} once its server-info file exists (killed at
    cleanup if still running). C{wrap} may rewrite the argv (e.g.
    L{restrictedArgv}).

    @raise ProxyDidNotStart: it exited first (the message has its stderr).
    """
    if serverInfoPath is None:
        serverInfoPath = os.path.join(testCase.mktemp(), "server-info.json")
    argv = [*ENTRY_POINTS[entry], "--server-info", serverInfoPath, *args]
    if wrap is not None:
        argv = wrap(argv)
    process = spawnEntryPoint(testCase, argv, stdin=key, env=env)
    await waitFor(
        lambda: process.ended.called or readServerInfo(serverInfoPath), timeout
    )
    info = readServerInfo(serverInfoPath)
    if info is None:
        result = await process.ended
        raise ProxyDidNotStart(
            f"{entry} exited ({result.exitCode}, signal {result.signal}) "
            f"before writing server-info: {result.stderr!r}"
        )
    return SpawnedProxy(process, serverInfoPath, info)


def endWithin(process: SpawnedProcess, seconds: float) -> Deferred[ProcessResult]:
    """
    C{process.ended}, failing with L{AssertionError} (after killing the
    process) if it has not ended within C{seconds}.
    """
    ended = process.ended

    def tooSlow() -> None:
        process.signal("KILL")

    call = reactor.callLater(seconds, tooSlow)

    def check(result: ProcessResult) -> ProcessResult:
        if not call.active():
            raise AssertionError(f"the process did not end within {seconds}s")
        call.cancel()
        return result

    # A fresh Deferred, so that the cleanup's own wait on .ended still works.
    d: Deferred[ProcessResult] = Deferred()

    def relay(result: ProcessResult) -> ProcessResult:
        d.callback(result)
        return result

    ended.addBoth(relay)
    return d.addCallback(check)


def inParallel(
    calls: Sequence[Callable[[], Awaitable[_T]]], limit: int = 4
) -> Deferred[list[_T]]:
    """
    Run C{calls} (functions returning Deferreds or coroutines) at most
    C{limit} at a time, so a burst of spawned processes does not starve a
    loaded machine; fire with their results in order.
    """
    semaphore = DeferredSemaphore(limit)

    async def run(call: Callable[[], Awaitable[_T]]) -> _T:
        return await call()

    return gatherResults(
        [semaphore.run(run, call) for call in calls], consumeErrors=True
    )


@dataclass
class TerminalProcess:
    """
    A process whose stdin, stdout and stderr are one pseudo-terminal.

    @ivar output: everything it wrote so far (both streams, as a terminal
        shows them).
    @ivar ended: fires with its exit status (None if killed by a signal).
    """

    transport: IProcessTransport
    output: bytearray
    ended: Deferred[int | None]

    def type(self, data: bytes) -> None:
        """
        Type C{data} at the terminal (C{\\x04} is Ctrl-D at a line start).
        """
        self.transport.write(data)


class _Terminal(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def spawnOnTerminal(testCase: TestCase, argv: list[str]) -> TerminalProcess:
    """
    Spawn C{argv} (first element resolved like L{spawnEntryPoint} does) on
    a pseudo-terminal; killed at cleanup if still running.
    """
    executable = argv[0] if os.path.isabs(argv[0]) else scriptPath(argv[0])
    terminal = _Terminal()
    transport = reactor.spawnProcess(
        terminal,
        executable,
        [executable, *argv[1:]],
        env=childEnvironment(),
        usePTY=True,
    )

    def cleanup() -> Deferred[int | None] | None:
        if terminal.ended.called:
            return None
        transport.signalProcess("KILL")
        return terminal.ended

    testCase.addCleanup(cleanup)
    return TerminalProcess(transport, terminal.output, terminal.ended)


_RESTRICT = """
import ctypes, json, os, resource, sys
settings = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if settings.get("dropIpcLock"):
    # PR_CAPBSET_DROP, CAP_IPC_LOCK: root's next exec no longer gets it.
    if libc.prctl(24, 14, 0, 0, 0) != 0:
        sys.stderr.write("restrict: cannot drop CAP_IPC_LOCK\\n")
        sys.exit(97)
if settings.get("memlock") is not None:
    limit = settings["memlock"]
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
if settings.get("gid") is not None:
    os.setgroups([])
    os.setgid(settings["gid"])
os.execv(sys.argv[2], sys.argv[2:])
"""


def restrictedArgv(
    argv: list[str],
    *,
    gid: int | None = None,
    memlock: int | None = None,
    dropIpcLock: bool = False,
) -> list[str]:
    """
    An argv that runs C{argv} (first element resolved like
    L{spawnEntryPoint} does) after changing the group, lowering
    C{RLIMIT_MEMLOCK} or dropping C{CAP_IPC_LOCK} from the bounding set.
    Exit status 97 means the capability could not be dropped.
    """
    import json

    executable = argv[0] if os.path.isabs(argv[0]) else scriptPath(argv[0])
    settings = {"gid": gid, "memlock": memlock, "dropIpcLock": dropIpcLock}
    return [sys.executable, "-c", _RESTRICT, json.dumps(settings), executable] + list(
        argv[1:]
    )


def procStatus(pid: int) -> dict[str, str]:
    """
    C{/proc/PID/status} as a mapping of field name to (stripped) value.
    """
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def procLimits(pid: int) -> dict[str, list[str]]:
    """
    C{/proc/PID/limits}: limit name to C{[soft, hard, units]}.
    """
    limits = {}
    with open(f"/proc/{pid}/limits") as f:
        next(f)
        for line in f:
            name, values = line[:26].strip(), line[26:].split()
            limits[name] = values
    return limits


def listening(port: int) -> bool:
    """
    Whether anything accepts TCP connections on 127.0.0.1:C{port}.
    """
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0

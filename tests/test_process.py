# -*- test-case-name: tests.test_process -*-
"""
Integration tests (processes) for the proxy as a process, through each
installed entry point: the console script C{responses-api-proxy},
C{twistd -n responses-api-proxy} and C{python -m responses_proxy}.

Only what a real process shows is tested here: the exit status and the
one line on standard error of a start-up failure and of a usage error,
C{--help} and C{--version}, real signals and C{GET /shutdown} ending the
process with status 0 and server-info removed, binding to loopback only,
and twistd's daemonizing launcher. Waits are on the process's end or
polls with generous deadlines, never a wall-clock window.

The logic behind each is unit-tested in memory: the options and every
usage error in C{tests.test_options}, the service and its start-up errors
in C{tests.test_tap}, the signal policy (installed before server-info is
written, a second SIGTERM stops now, the daemonized launcher's message) in
C{tests.test_lifecycle}, and the drain in C{tests.test_drain}.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import treq
from incremental import Version
from twisted import version as twistedVersion
from twisted.trial.unittest import TestCase

from tests.processes import (
    ENTRY_POINTS,
    endWithin,
    listening,
    procLimits,
    procStatus,
    spawnProxy,
)
from tests.support import (
    CANARY_KEY,
    ProcessResult,
    httpClient,
    readServerInfo,
    spawnEntryPoint,
    waitFor,
)

ALL_FLAGS = (
    "--port",
    "--listen",
    "--server-info",
    "--http-shutdown",
    "--upstream-url",
    "--upstream-ca",
    "--dump-dir",
    "--max-request-body",
    "--request-timeout",
    "--connect-timeout",
    "--drain-timeout",
)

# twistd itself exits 0 after printing a usage error before Twisted 26.10
# (app.run lacked the sys.exit(1)).
TWISTD_USAGE_EXITS_ZERO = twistedVersion < Version("Twisted", 26, 10, 0)


def stderrLines(result: ProcessResult) -> list[str]:
    """
    The non-empty lines the process wrote on stderr.
    """
    return [line for line in result.stderr.decode().splitlines() if line.strip()]


def freePort() -> int:
    """
    A loopback TCP port that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def pidfileGone(path: str) -> bool:
    """
    Whether the pidfile at C{path} was removed.
    """
    return not os.path.exists(path)


class _LifecycleTests:
    """
    Start, stop and fail to start, for the entry point named by C{entry}.
    """

    entry: str

    async def test_httpShutdown(self: Any) -> None:
        """
        With C{--http-shutdown}, C{GET /shutdown} answers 200, then the
        process exits 0 and removes its server-info file; with a drain
        timeout of a minute, it has not waited for it (nothing in flight).
        """
        proxy = await spawnProxy(
            self, "--http-shutdown", "--drain-timeout", "60", entry=self.entry
        )
        response = await httpClient(self).get(f"{proxy.base}/shutdown")
        await treq.content(response)
        self.assertEqual(response.code, 200)
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        self.assertFalse(os.path.exists(proxy.serverInfoPath))
        self.assertFalse(listening(proxy.port))

    async def _stopWithSignal(self: Any, name: str) -> None:
        proxy = await spawnProxy(self, entry=self.entry)
        self.assertEqual(proxy.info["pid"], proxy.pid)
        proxy.process.signal(name)
        result = await endWithin(proxy.process, 30)
        self.assertEqual((result.exitCode, result.signal), (0, None), result.stderr)
        self.assertFalse(os.path.exists(proxy.serverInfoPath))
        self.assertFalse(listening(proxy.port))

    async def test_sigterm(self: Any) -> None:
        """
        SIGTERM stops the proxy cleanly: exit status 0, server-info removed.
        """
        await self._stopWithSignal("TERM")

    async def test_sigint(self: Any) -> None:
        """
        SIGINT (Ctrl-C) stops the proxy cleanly too.
        """
        await self._stopWithSignal("INT")

    async def test_sighup(self: Any) -> None:
        """
        SIGHUP (the terminal went away) is a clean stop as well.
        """
        await self._stopWithSignal("HUP")

    async def test_portInUse(self: Any) -> None:
        """
        When C{--port} is taken (a failure while starting) the process exits
        1 with one line naming the problem, and writes no server-info.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        info = os.path.join(self.mktemp(), "info.json")
        process = spawnEntryPoint(
            self,
            [*ENTRY_POINTS[self.entry], "--port", str(port), "--server-info", info],
            stdin=CANARY_KEY.encode(),
        )
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 1, result.stderr)
        self.assertEqual(
            stderrLines(result),
            [
                f"responses-api-proxy: cannot listen on 127.0.0.1:{port}: "
                "Address already in use"
            ],
        )
        self.assertFalse(os.path.exists(info))

    async def test_unusableFile(self: Any) -> None:
        """
        An unusable file named by the options (a failure while the service
        is built) ends start-up with exit 1 and one line naming the file
        and the reason.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        info = os.path.join(directory, "info.json")
        process = spawnEntryPoint(
            self,
            [
                *ENTRY_POINTS[self.entry],
                "--server-info",
                info,
                "--upstream-ca",
                f"{directory}/missing.pem",
            ],
            stdin=CANARY_KEY.encode(),
        )
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 1, result.stderr)
        self.assertEqual(
            stderrLines(result),
            [
                "responses-api-proxy: cannot read the upstream CA file "
                f"{directory}/missing.pem: No such file or directory"
            ],
        )
        self.assertFalse(os.path.exists(info))

    async def test_help(self: Any) -> None:
        """
        C{--help} documents every flag and exits 0 without reading stdin.
        """
        process = spawnEntryPoint(self, [*ENTRY_POINTS[self.entry], "--help"], None)
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        text = " ".join(result.stdout.decode().split())
        for flag in ALL_FLAGS:
            self.assertIn(flag + ("" if flag == "--http-shutdown" else "="), text)
        self.assertIn("Reads the API key from standard input", text)

    async def assertUsageError(self: Any, args: list[str], message: str) -> None:
        """
        C{args} end the process with a usage error: its exit status, the
        error once in one line, no traceback, no key, nothing listening.
        """
        info = os.path.join(self.mktemp(), "info.json")
        process = spawnEntryPoint(
            self,
            [*ENTRY_POINTS[self.entry], "--server-info", info, *args],
            stdin=CANARY_KEY.encode(),
        )
        result = await endWithin(process, 30)
        output = (result.stdout + result.stderr).decode()
        if self.entry == "twistd":
            # twistd prints the usage, then "<argv0> -n: <error>", on stdout.
            if not TWISTD_USAGE_EXITS_ZERO:
                self.assertEqual(result.exitCode, 1, output)
            lines = [line for line in output.splitlines() if message in line]
            self.assertEqual(len(lines), 1, output)
            self.assertTrue(lines[0].endswith(f" -n: {message}"), lines)
        else:
            self.assertEqual(result.exitCode, 2, output)
            self.assertEqual(
                [
                    line
                    for line in stderrLines(result)
                    if "responses-api-proxy:" in line
                ],
                [f"responses-api-proxy: {message}"],
            )
        self.assertNotIn("Traceback", output)
        self.assertNotIn(CANARY_KEY, output)
        self.assertFalse(os.path.exists(info))

    async def test_badValue(self: Any) -> None:
        """
        A bad option value is a usage error (every one of them is unit
        tested in C{tests.test_options}).
        """
        await self.assertUsageError(["--port", "x"], "--port must be a number, not 'x'")

    async def test_notLoopback(self: Any) -> None:
        """
        A C{--listen} on every interface is a usage error.
        """
        await self.assertUsageError(
            ["--listen", "tcp:0"],
            "--listen 'tcp:0' would listen on every interface; add "
            "interface=127.0.0.1 (the proxy serves loopback only)",
        )


class ConsoleScriptLifecycleTests(_LifecycleTests, TestCase):
    """
    The lifecycle through the C{responses-api-proxy} console script, and
    what does not depend on the entry point.
    """

    entry = "console script"

    async def test_unknownFlag(self) -> None:
        """
        An unknown flag is a usage error.
        """
        await self.assertUsageError(
            ["--no-such-flag"], "option --no-such-flag not recognized"
        )

    async def test_version(self) -> None:
        """
        C{--version} names the proxy and its version, not only Twisted's.
        """
        from responses_proxy import __version__

        process = spawnEntryPoint(self, [*ENTRY_POINTS[self.entry], "--version"], None)
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        self.assertTrue(
            result.stdout.startswith(f"responses-api-proxy {__version__} ".encode()),
            result.stdout,
        )

    async def test_explicitPortLoopbackOnly(self) -> None:
        """
        C{--port N} listens on 127.0.0.1:N (server-info says so) and on
        nothing else: the same port on another loopback address (127.0.0.2)
        or on IPv6 refuses connections.
        """
        port = freePort()
        proxy = await spawnProxy(self, "--port", str(port), entry=self.entry)
        self.assertEqual(proxy.port, port)
        self.assertTrue(listening(port))
        for family, address in (
            (socket.AF_INET, "127.0.0.2"),
            (socket.AF_INET6, "::1"),
        ):
            with socket.socket(family) as s:
                s.settimeout(1)
                self.assertNotEqual(s.connect_ex((address, port)), 0, address)

    async def test_concurrentShutdowns(self) -> None:
        """
        Several C{GET /shutdown} at once on real sockets: the first gets its
        200, none gets an error, and the proxy exits 0 without logging a
        traceback.
        """
        proxy = await spawnProxy(self, "--http-shutdown", entry=self.entry)
        connections = []
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", proxy.port))
            self.addCleanup(connection.close)
            connections.append(connection)
        for connection in connections:
            connection.sendall(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        result = await endWithin(proxy.process, 30)
        replies = []
        for connection in connections:
            connection.settimeout(5)
            try:
                replies.append(connection.recv(100)[:13])
            except ConnectionResetError:
                replies.append(b"")
        # Requests the proxy had not read yet when it stopped get no answer
        # (a close, or a reset since the request was left unread).
        self.assertIn(b"HTTP/1.1 200 ", replies)
        self.assertEqual(set(replies) - {b"HTTP/1.1 200 ", b""}, set(), replies)
        self.assertEqual(result.exitCode, 0)
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)


class TwistdLifecycleTests(_LifecycleTests, TestCase):
    """
    The lifecycle through C{twistd -n --pidfile= responses-api-proxy}.
    """

    entry = "twistd"


class ModuleLifecycleTests(TestCase):
    """
    C{python -m responses_proxy} is the console script; a smoke test is
    enough: it documents its flags and stops cleanly.
    """

    entry = "python -m"
    _stopWithSignal = _LifecycleTests._stopWithSignal
    test_sigterm = _LifecycleTests.test_sigterm
    test_help = _LifecycleTests.test_help


class TwistdDaemonTests(TestCase):
    """
    C{twistd} without C{-n}: the key is read before it forks into the
    background, and the daemon is as protected as the foreground process.
    """

    async def test_daemonized(self) -> None:
        """
        The launcher exits 0; the daemon (the pid in the pidfile and in
        server-info) serves, keeps the key locked in memory (locks are not
        inherited across fork), has no core limit, and on SIGTERM removes
        its server-info and pidfile.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        info = os.path.join(directory, "info.json")
        pidfile = os.path.join(directory, "twistd.pid")
        launcher = spawnEntryPoint(
            self,
            [
                "twistd",
                f"--pidfile={pidfile}",
                f"--logfile={os.path.join(directory, 'twistd.log')}",
                "responses-api-proxy",
                "--server-info",
                info,
            ],
            stdin=CANARY_KEY.encode(),
        )
        result = await endWithin(launcher, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await waitFor(lambda: readServerInfo(info) and os.path.exists(pidfile))
        with open(pidfile) as f:
            pid = int(f.read())

        def killDaemon() -> None:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, 9)

        self.addCleanup(killDaemon)
        served = readServerInfo(info)
        assert served is not None
        self.assertEqual(served["pid"], pid)
        self.assertTrue(listening(served["port"]))
        if os.geteuid() == 0:
            self.assertGreater(int(procStatus(pid)["VmLck"].split()[0]), 0)
        self.assertEqual(procLimits(pid)["Max core file size"][:2], ["0", "0"])
        os.kill(pid, 15)
        await waitFor(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
        self.assertFalse(os.path.exists(info))
        self.assertFalse(os.path.exists(pidfile))

    async def test_daemonStartupFailures(self) -> None:
        """
        When the daemon cannot listen or write server-info, the launcher
        reports it and exits 1 (it used to wait forever: twistd's daemon
        reports only Exceptions, not SystemExit), and no daemon is left.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        blocker = os.path.join(directory, "file")
        with open(blocker, "wb"):
            pass
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busyPort = busy.getsockname()[1]
        port = freePort()
        cases = [
            (["--port", str(busyPort)], "Address already in use"),
            (
                ["--port", str(port), "--server-info", f"{blocker}/x/i.json"],
                "Not a directory",
            ),
        ]
        for number, (args, reason) in enumerate(cases):
            pidfile = os.path.join(directory, f"{number}.pid")
            launcher = spawnEntryPoint(
                self,
                [
                    "twistd",
                    f"--pidfile={pidfile}",
                    f"--logfile={os.path.join(directory, f'{number}.log')}",
                    "responses-api-proxy",
                    *args,
                ],
                stdin=CANARY_KEY.encode(),
            )
            result = await endWithin(launcher, 30)
            output = (result.stdout + result.stderr).decode()
            self.assertEqual(result.exitCode, 1, output)
            self.assertIn("An error has occurred", output)
            self.assertIn(reason, output)
            # The launcher exits once the daemon reported; the daemon
            # removes its pidfile (and closes its socket) a moment later.
            gone = functools.partial(pidfileGone, pidfile)
            await waitFor(gone, timeout=30)
        await waitFor(lambda: not listening(port), timeout=30)

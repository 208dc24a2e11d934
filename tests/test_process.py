"""
The proxy as a process, through each installed entry point: the console
script C{responses-api-proxy}, C{twistd -n responses-api-proxy} and
C{python -m responses_proxy}.

Startup failures (busy port, bad options) end the process quickly with one
clear line on stderr; C{GET /shutdown}, SIGTERM and SIGINT stop it with exit
status 0 and remove the server-info file.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import treq
from incremental import Version
from twisted import version as twistedVersion
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.processes import (
    ENTRY_POINTS,
    endWithin,
    inParallel,
    listening,
    procLimits,
    procStatus,
    spawnProxy,
)
from tests.support import (
    CANARY_KEY,
    ProcessResult,
    httpClient,
    rawExchange,
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
)


def stderrLines(result: ProcessResult) -> list[str]:
    """
    The non-empty lines the process wrote on stderr.
    """
    return [line for line in result.stderr.decode().splitlines() if line.strip()]


class _LifecycleTests:
    """
    Start, stop and fail to start, for the entry point named by C{entry}.
    """

    entry: str

    @inlineCallbacks
    def test_httpShutdown(self: Any) -> Any:
        """
        With C{--http-shutdown}, C{GET /shutdown} answers 200, then the
        process exits 0 within a second and removes its server-info file.
        """
        proxy = yield spawnProxy(self, "--http-shutdown", entry=self.entry)
        response = yield httpClient(self).get(f"{proxy.base}/shutdown")
        yield treq.content(response)
        asked = time.monotonic()
        self.assertEqual(response.code, 200)
        result = yield endWithin(proxy.process, 5)
        self.assertLess(time.monotonic() - asked, 1.0)
        self.assertEqual(result.exitCode, 0, result.stderr)
        self.assertFalse(os.path.exists(proxy.serverInfoPath))
        self.assertFalse(listening(proxy.port))

    @inlineCallbacks
    def test_concurrentShutdowns(self: Any) -> Any:
        """
        Several C{GET /shutdown} at once: the first gets its 200, none gets
        an error, and the proxy exits 0 without logging a traceback.
        """
        proxy = yield spawnProxy(self, "--http-shutdown", entry=self.entry)
        connections = []
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", proxy.port))
            self.addCleanup(connection.close)
            connections.append(connection)
        for connection in connections:
            connection.sendall(b"GET /shutdown HTTP/1.1\r\nHost: x\r\n\r\n")
        result = yield endWithin(proxy.process, 10)
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

    @inlineCallbacks
    def test_shutdownNeedsExactRequest(self: Any) -> Any:
        """
        Even with C{--http-shutdown}, a query string, another method or a
        trailing slash is a 403, and the proxy keeps running.
        """
        proxy = yield spawnProxy(self, "--http-shutdown", entry=self.entry)
        for request in (
            b"GET /shutdown?now HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /shutdown? HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /shutdown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n",
            b"GET /shutdown/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            reply = yield rawExchange(proxy.port, request, timeout=1)
            self.assertTrue(reply.startswith(b"HTTP/1.1 403 "), (request, reply))
        self.assertFalse(proxy.process.ended.called)
        self.assertTrue(listening(proxy.port))

    @inlineCallbacks
    def test_shutdownDisabledByDefault(self: Any) -> Any:
        """
        Without C{--http-shutdown}, C{GET /shutdown} is a 403 and the
        proxy keeps running.
        """
        proxy = yield spawnProxy(self, entry=self.entry)
        response = yield httpClient(self).get(f"{proxy.base}/shutdown")
        yield treq.content(response)
        self.assertEqual(response.code, 403)
        self.assertFalse(proxy.process.ended.called)
        self.assertTrue(listening(proxy.port))

    @inlineCallbacks
    def _stopWithSignal(self: Any, name: str) -> Any:
        proxy = yield spawnProxy(self, entry=self.entry)
        self.assertEqual(proxy.info["pid"], proxy.pid)
        proxy.process.signal(name)
        result = yield endWithin(proxy.process, 5)
        self.assertEqual((result.exitCode, result.signal), (0, None), result.stderr)
        self.assertFalse(os.path.exists(proxy.serverInfoPath))
        self.assertFalse(listening(proxy.port))

    def test_sigterm(self: Any) -> Any:
        """
        SIGTERM stops the proxy cleanly: exit status 0, server-info removed.
        """
        return self._stopWithSignal("TERM")

    def test_sigint(self: Any) -> Any:
        """
        SIGINT (Ctrl-C) stops the proxy cleanly too.
        """
        return self._stopWithSignal("INT")

    def test_sighup(self: Any) -> Any:
        """
        SIGHUP (the terminal went away) is a clean stop as well.
        """
        return self._stopWithSignal("HUP")

    @inlineCallbacks
    def _signalOnAppearance(self: Any) -> Any:
        path = os.path.join(os.path.abspath(self.mktemp()), "info.json")
        process = spawnEntryPoint(
            self,
            [*ENTRY_POINTS[self.entry], "--server-info", path],
            stdin=CANARY_KEY.encode(),
        )
        yield waitFor(lambda: os.path.exists(path), timeout=30, interval=0.0005)
        process.signal("TERM")
        result = yield endWithin(process, 10)
        return result, os.path.exists(path)

    @inlineCallbacks
    def test_sigtermAsSoonAsListening(self: Any) -> Any:
        """
        SIGTERM sent the moment server-info appears (before the reactor
        loop may have started) is still a clean stop: exit 0, file removed.
        (Several tries: the window is narrow.)
        """
        outcomes = yield inParallel([self._signalOnAppearance] * 4, limit=2)
        for result, leftBehind in outcomes:
            self.assertEqual((result.exitCode, result.signal), (0, None))
            self.assertFalse(leftBehind)

    @inlineCallbacks
    def test_portInUse(self: Any) -> Any:
        """
        When C{--port} is taken the process exits non-zero within 5 seconds
        with one line naming the problem, and writes no server-info.
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
        result = yield endWithin(process, 5)
        self.assertNotEqual(result.exitCode, 0)
        self.assertEqual(
            stderrLines(result),
            [
                f"responses-api-proxy: cannot listen on 127.0.0.1:{port}: "
                "Address already in use"
            ],
        )
        self.assertFalse(os.path.exists(info))

    @inlineCallbacks
    def test_unusableFiles(self: Any) -> Any:
        """
        An unusable C{--dump-dir} or C{--upstream-ca} ends start-up with exit
        1 and one line naming the option's file and the reason.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        blocker = os.path.join(directory, "file")
        with open(blocker, "wb"):
            pass
        info = os.path.join(directory, "info.json")
        cases = [
            (
                ["--dump-dir", f"{blocker}/dumps"],
                f"responses-api-proxy: --dump-dir {blocker}/dumps: Not a directory",
            ),
            (
                ["--upstream-ca", f"{directory}/missing.pem"],
                "responses-api-proxy: cannot read the upstream CA file "
                f"{directory}/missing.pem: No such file or directory",
            ),
        ]
        results = yield inParallel(
            [
                lambda args=args: endWithin(
                    spawnEntryPoint(
                        self,
                        [*ENTRY_POINTS[self.entry], "--server-info", info, *args],
                        stdin=CANARY_KEY.encode(),
                    ),
                    30,
                )
                for args, _ in cases
            ]
        )
        for (args, expected), result in zip(cases, results, strict=True):
            self.assertEqual(result.exitCode, 1, args)
            self.assertEqual(stderrLines(result), [expected])
        self.assertFalse(os.path.exists(info))

    @inlineCallbacks
    def test_explicitPort(self: Any) -> Any:
        """
        C{--port N} listens on 127.0.0.1:N and server-info says so.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        proxy = yield spawnProxy(self, "--port", str(port), entry=self.entry)
        self.assertEqual(proxy.port, port)
        self.assertTrue(listening(port))

    @inlineCallbacks
    def test_loopbackOnly(self: Any) -> Any:
        """
        The proxy listens on 127.0.0.1 only: the same port on another
        loopback address (127.0.0.2) or on IPv6 refuses connections.
        """
        proxy = yield spawnProxy(self, entry=self.entry)
        self.assertTrue(listening(proxy.port))
        for family, address in (
            (socket.AF_INET, "127.0.0.2"),
            (socket.AF_INET6, "::1"),
        ):
            with socket.socket(family) as s:
                s.settimeout(1)
                self.assertNotEqual(s.connect_ex((address, proxy.port)), 0, address)

    @inlineCallbacks
    def test_help(self: Any) -> Any:
        """
        C{--help} documents every flag and exits 0 without reading stdin.
        """
        process = spawnEntryPoint(self, [*ENTRY_POINTS[self.entry], "--help"], None)
        result = yield endWithin(process, 10)
        self.assertEqual(result.exitCode, 0, result.stderr)
        text = " ".join(result.stdout.decode().split())
        for flag in ALL_FLAGS:
            self.assertIn(flag + ("" if flag == "--http-shutdown" else "="), text)
        self.assertIn("Reads the API key from standard input", text)

    @inlineCallbacks
    def test_version(self: Any) -> Any:
        """
        C{--version} names the proxy and its version, not only Twisted's.
        """
        from responses_proxy import __version__

        process = spawnEntryPoint(self, [*ENTRY_POINTS[self.entry], "--version"], None)
        result = yield endWithin(process, 10)
        self.assertEqual(result.exitCode, 0, result.stderr)
        self.assertTrue(
            result.stdout.startswith(f"responses-api-proxy {__version__} ".encode()),
            result.stdout,
        )

    @inlineCallbacks
    def test_badFlagValues(self: Any) -> Any:
        """
        Each bad option value is a usage error naming the option: non-zero
        exit, and nothing listens (no server-info file).
        """
        info = os.path.join(self.mktemp(), "info.json")
        cases = [
            ["--port", "x"],
            ["--port", "70000"],
            ["--port", "1", "--listen", "tcp:0"],
            ["--listen", "tcp:0"],
            ["--listen", "tcp:0:interface=0.0.0.0"],
            ["--max-request-body", "0"],
            ["--request-timeout", "soon"],
            ["--connect-timeout", "-1"],
            ["--upstream-url", "ftp://example.com/v1/responses"],
            ["--no-such-flag"],
        ]
        if self.entry != "console script":
            cases = cases[::3]  # the same options class; a sample is enough
        results = yield inParallel(
            [
                lambda args=args: endWithin(
                    spawnEntryPoint(
                        self,
                        [*ENTRY_POINTS[self.entry], "--server-info", info, *args],
                        stdin=CANARY_KEY.encode(),
                    ),
                    30,
                )
                for args in cases
            ]
        )
        # twistd itself exits 0 after printing a usage error before
        # Twisted 26.10 (app.run lacked the sys.exit(1)).
        twistdExitsZero = self.entry == "twistd" and twistedVersion < Version(
            "Twisted", 26, 10, 0
        )
        for args, result in zip(cases, results, strict=True):
            if twistdExitsZero:
                self.assertIsNotNone(result.exitCode, args)
            else:
                self.assertNotIn(result.exitCode, (0, None), args)
            # twistd prints usage errors on stdout, the console script on stderr.
            output = result.stdout + result.stderr
            self.assertIn(args[0].encode(), output, args)
            self.assertNotIn(b"Traceback", output, args)
            self.assertNotIn(CANARY_KEY.encode(), output)
        self.assertFalse(os.path.exists(info))


class ConsoleScriptLifecycleTests(_LifecycleTests, TestCase):
    """
    The lifecycle through the C{responses-api-proxy} console script.
    """

    entry = "console script"


class TwistdLifecycleTests(_LifecycleTests, TestCase):
    """
    The lifecycle through C{twistd -n --pidfile= responses-api-proxy}.
    """

    entry = "twistd"


class ModuleLifecycleTests(TestCase):
    """
    C{python -m responses_proxy} is the console script; a smoke test is
    enough: it starts, documents its flags and stops cleanly.
    """

    entry = "python -m"
    _stopWithSignal = _LifecycleTests._stopWithSignal
    test_sigterm = _LifecycleTests.test_sigterm
    test_help = _LifecycleTests.test_help
    test_httpShutdown = _LifecycleTests.test_httpShutdown


class StartupTimeTests(TestCase):
    """
    How long the console script takes from spawn to server-info.
    """

    @inlineCallbacks
    def test_startsQuickly(self) -> Any:
        """
        The console script is listening (server-info written) within 5
        seconds of being spawned; typically about 0.3 s.
        """
        started = reactor.seconds()
        proxy = yield spawnProxy(self)
        elapsed = reactor.seconds() - started
        self.assertLess(elapsed, 5.0)
        proxy.process.signal("TERM")
        result = yield proxy.process.ended
        self.assertEqual(result.exitCode, 0)


class TwistdDaemonTests(TestCase):
    """
    C{twistd} without C{-n}: the key is read before it forks into the
    background, and the daemon is as protected as the foreground process.
    """

    @inlineCallbacks
    def test_daemonized(self) -> Any:
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
        result = yield endWithin(launcher, 10)
        self.assertEqual(result.exitCode, 0, result.stderr)
        yield waitFor(lambda: readServerInfo(info) and os.path.exists(pidfile))
        with open(pidfile) as f:
            pid = int(f.read())

        def killDaemon() -> None:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, 9)

        self.addCleanup(killDaemon)
        self.assertEqual(readServerInfo(info)["pid"], pid)
        self.assertTrue(listening(readServerInfo(info)["port"]))
        if os.geteuid() == 0:
            self.assertGreater(int(procStatus(pid)["VmLck"].split()[0]), 0)
        self.assertEqual(procLimits(pid)["Max core file size"][:2], ["0", "0"])
        os.kill(pid, 15)
        yield waitFor(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)
        self.assertFalse(os.path.exists(info))
        self.assertFalse(os.path.exists(pidfile))

    @inlineCallbacks
    def test_daemonStartupFailures(self) -> Any:
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
        freePort = socket.socket()
        freePort.bind(("127.0.0.1", 0))
        port = freePort.getsockname()[1]
        freePort.close()
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
            result = yield endWithin(launcher, 10)
            output = (result.stdout + result.stderr).decode()
            self.assertEqual(result.exitCode, 1, output)
            self.assertIn("An error has occurred", output)
            self.assertIn(reason, output)
            self.assertFalse(os.path.exists(pidfile), output)
        # The launcher exits once the daemon reported; the daemon itself
        # (and its socket) goes a moment later.
        yield waitFor(lambda: not listening(port), timeout=5)

# -*- test-case-name: tests.test_systemd -*-
"""
Running under systemd: the units verify, and the proxy speaks systemd's
protocols. The tests play systemd themselves: they create the listening
socket and hand it over at fd 3 with C{LISTEN_FDS}/C{LISTEN_PID}/
C{LISTEN_FDNAMES}, listen on a C{NOTIFY_SOCKET} datagram socket, and check
that C{READY=1} arrives only once the port answers and server-info exists,
that C{STATUS=} names the address, and that SIGTERM brings C{STOPPING=1}.

Integration tests (processes): the tests play systemd, which does not run
here (the real one is in C{tests.test_realsystemd}).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorUNIXDatagram
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from responses_proxy import sdnotify
from tests.support import (
    CANARY_KEY,
    OutputCapture,
    ProcessResult,
    childEnvironment,
    makeTestPKI,
    rawExchange,
    rawRequest,
    readServerInfo,
    scriptPath,
    serverContext,
    startFakeUpstream,
    waitFor,
)

UNIT_DIRECTORY = os.path.join(os.path.dirname(__file__), "..", "contrib", "systemd")
INSTALL_BIN = "/opt/responses-api-proxy/bin/"
SERVICES = ["responses-api-proxy.service", "responses-api-proxy-activated.service"]
FD_NAME = "responses-api-proxy"

# What systemd does between fork and exec, for the part that needs the
# child's own pid: LISTEN_PID must equal getpid() of the process that reads it.
EXEC_AS_SYSTEMD = (
    "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def readUnit(name: str) -> str:
    """
    The text of unit C{name} in contrib/systemd.
    """
    with open(os.path.join(UNIT_DIRECTORY, name), encoding="utf-8") as f:
        return f.read()


def unitSettings(text: str) -> list[tuple[str, str, str]]:
    """
    C{(section, key, value)} for each setting line of a unit file.
    """
    section = ""
    settings = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key, value))
    return settings


def renderUnit(text: str) -> str:
    """
    The unit as installed into this test environment's virtualenv.
    """
    return text.replace(INSTALL_BIN, os.path.dirname(scriptPath("twistd")) + "/")


def execStartArgv(unit: str) -> list[str]:
    """
    The unit's C{ExecStart=} as the argv systemd would exec: words split,
    C{$$} unescaped to C{$}, paths pointing at this virtualenv.
    """
    [value] = [v for s, k, v in unitSettings(renderUnit(unit)) if k == "ExecStart"]
    return [word.replace("$$", "$") for word in shlex.split(value)]


# Playing systemd --------------------------------------------------------------


@dataclass
class NotifySocket(DatagramProtocol):
    """
    A C{NOTIFY_SOCKET}: records each message, and runs C{onReady} (once)
    the moment C{READY=1} arrives.
    """

    path: str
    onReady: Callable[[], dict[str, Any] | None] | None = None
    messages: list[str] = field(default_factory=list)
    readyState: dict[str, Any] | None = None

    def datagramReceived(self, data: bytes, addr: object = None) -> None:
        message = data.decode("utf-8")
        self.messages.append(message)
        if "READY=1" in message.split("\n") and self.onReady is not None:
            self.readyState, self.onReady = self.onReady(), None

    def seen(self, line: str) -> bool:
        """
        Whether some message had C{line} as one of its lines.
        """
        return any(line in m.split("\n") for m in self.messages)


def shortDirectory(testCase: TestCase) -> str:
    """
    A fresh directory with a short path, removed after the test: C{AF_UNIX}
    paths are limited to 108 bytes, which trial's per-test temporary paths
    can exceed.
    """
    directory = tempfile.mkdtemp(prefix="rap-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


def shortPath(testCase: TestCase, name: str) -> str:
    """
    A path in a fresh short directory (L{shortDirectory}).
    """
    return os.path.join(shortDirectory(testCase), name)


def listenNotify(
    testCase: TestCase, onReady: Callable[[], dict[str, Any] | None]
) -> NotifySocket:
    """
    A L{NotifySocket} listening on a fresh path; closed after the test.
    """
    path = shortPath(testCase, "notify")
    notify = NotifySocket(path, onReady)
    port = IReactorUNIXDatagram(reactor).listenUNIXDatagram(
        path, notify, maxPacketSize=8192, mode=0o666
    )
    testCase.addCleanup(port.stopListening)
    return notify


def spawnWithListenFDs(
    testCase: TestCase,
    argv: list[str],
    listening: socket.socket | None,
    env: dict[str, str],
) -> OutputCapture:
    """
    Start C{argv} the way systemd starts a socket-activated service: the
    listening socket at fd 3 and the C{LISTEN_*} variables describing it.
    """
    capture = OutputCapture(CANARY_KEY.encode())
    childFDs: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
    if listening is not None:
        childFDs[3] = listening.fileno()
        env = {**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": FD_NAME}
        argv = [sys.executable, "-c", EXEC_AS_SYSTEMD, *argv]
    transport = reactor.spawnProcess(capture, argv[0], argv, env=env, childFDs=childFDs)

    def cleanup() -> Deferred[ProcessResult] | None:
        if capture.ended.called:
            return None
        transport.signalProcess("KILL")
        return capture.ended

    testCase.addCleanup(cleanup)
    return capture


# Where a test connects: a Unix socket's path, or an (IPv4) host and port.
Address = str | tuple[str, int]


def connects(family: int, address: Address) -> bool:
    """
    Whether a stream socket of C{family} connects to C{address} (in 5 s).
    """
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


class UnitFileTests(TestCase):
    """
    The units in contrib/systemd are valid and say what the docs promise.
    """

    async def test_systemdAnalyzeVerify(self) -> None:
        """
        C{systemd-analyze verify} accepts every unit, rendered with this
        virtualenv's paths (verify checks that executables exist), and
        prints nothing.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (Debian: systemd)")
        directory = self.mktemp()
        os.makedirs(directory)
        names = sorted(os.listdir(UNIT_DIRECTORY))
        for name in names:
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(renderUnit(readUnit(name)))
        out, err, code = await getProcessOutputAndValue(
            analyze,
            ["verify", "--man=no", *names],
            env=childEnvironment(SYSTEMD_LOG_COLOR="0"),
            path=directory,
        )
        self.assertEqual((code, out, err), (0, b"", b""))

    def test_servicesShareOneSandbox(self) -> None:
        """
        Both services run the same command (bar the listen option) under the
        same sandbox, so the two cannot drift apart.
        """

        def service(name: str) -> list[tuple[str, str, str]]:
            return [
                (s, k, v.replace("--port 8080", "LISTEN"))
                for s, k, v in unitSettings(readUnit(name))
                if s == "Service"
            ]

        standalone, activated = map(service, SERVICES)
        activatedListen = "--listen systemd:domain=INET:name=" + FD_NAME
        self.assertEqual(
            standalone,
            [(s, k, v.replace(activatedListen, "LISTEN")) for s, k, v in activated],
        )

    def test_keyOnlyThroughCredentials(self) -> None:
        """
        The key comes from C{LoadCredential=} on standard input: no unit
        holds a key or names one in its environment.
        """
        for name in SERVICES:
            unit = readUnit(name)
            settings = unitSettings(unit)
            self.assertIn(
                (
                    "Service",
                    "LoadCredential",
                    "openai-api-key:/etc/credstore/openai-api-key",
                ),
                settings,
            )
            values = "\n".join(value for _, _, value in settings)
            self.assertNotIn("OPENAI_API_KEY", values)
            self.assertNotRegex(unit, r"sk-[A-Za-z0-9]")
            [execStart] = [v for s, k, v in settings if k == "ExecStart"]
            self.assertIn('< "$${CREDENTIALS_DIRECTORY}/openai-api-key"', execStart)
            self.assertIn("--nodaemon --pidfile= responses-api-proxy", execStart)
            self.assertIn(("Service", "Type", "notify"), settings)
            self.assertIn(("Service", "NotifyAccess", "main"), settings)

    def test_socketNamesTheDescriptor(self) -> None:
        """
        The socket unit names its descriptor as the activated service asks.
        """
        settings = unitSettings(readUnit("responses-api-proxy-activated.socket"))
        self.assertIn(("Socket", "FileDescriptorName", FD_NAME), settings)
        self.assertIn(("Socket", "ListenStream", "127.0.0.1:8080"), settings)

    async def test_execStartAsSystemdRunsIt(self) -> None:
        """
        The standalone unit's own C{ExecStart=} (port 0 instead of 8080),
        run with the directories systemd would provide, reads the key from
        the credential file, writes server-info into the runtime directory,
        reports ready, forwards over TLS, and stops on SIGTERM.
        """
        await runExecStart(self, [])


async def runExecStart(testCase: TestCase, prefix: list[str]) -> ProcessResult:
    """
    Run the standalone unit's C{ExecStart=} behind C{prefix} as systemd
    would, against an HTTPS fake upstream, and check the whole life cycle.
    """
    pki = makeTestPKI(testCase.mktemp())
    upstream = startFakeUpstream(
        testCase, tls=serverContext(pki.serverCert, pki.serverKey)
    )
    # What systemd makes: the credentials, the runtime directory (short, like
    # /run/responses-api-proxy: the admin socket lives there) and the state
    # directory.
    credentials, state = testCase.mktemp(), testCase.mktemp()
    os.makedirs(credentials)
    os.makedirs(state, mode=0o700)
    runtime = shortDirectory(testCase)
    with open(os.path.join(credentials, "openai-api-key"), "w") as f:
        f.write(CANARY_KEY + "\n")
    argv = [
        "0" if word == "8080" else word for word in execStartArgv(readUnit(SERVICES[0]))
    ]
    testCase.assertEqual(argv[:2], ["/bin/sh", "-c"])
    # The unit's command line, plus the test upstream.
    argv[-1] = argv[-1].replace(
        "responses-api-proxy --port",
        f"responses-api-proxy --upstream-url {upstream.url} --port",
    )
    argv = [*prefix, *argv]
    serverInfo = os.path.join(runtime, "server-info.json")
    notify = listenNotify(testCase, lambda: readServerInfo(serverInfo))
    env = childEnvironment(
        NOTIFY_SOCKET=notify.path,
        CREDENTIALS_DIRECTORY=credentials,
        RUNTIME_DIRECTORY=runtime,
        STATE_DIRECTORY=state,
        CODEX_SECURE_MODE="1",
        SSL_CERT_FILE=pki.caCert,
    )
    capture = OutputCapture(None)
    transport = reactor.spawnProcess(capture, argv[0], argv, env=env)

    def kill() -> Deferred[ProcessResult] | None:
        if capture.ended.called:
            return None
        transport.signalProcess("KILL")
        return capture.ended

    testCase.addCleanup(kill)
    await waitFor(lambda: notify.readyState or capture.ended.called, timeout=30)
    ready = notify.readyState
    testCase.assertTrue(ready, capture.err.decode())
    assert ready is not None
    admin = os.stat(os.path.join(runtime, "admin.sock"))
    testCase.assertTrue(stat.S_ISSOCK(admin.st_mode))
    testCase.assertEqual(stat.S_IMODE(admin.st_mode), 0o600)
    reply = await rawExchange(ready["port"], rawRequest(b"{}"))
    testCase.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:200])
    [seen] = upstream.resource.requests
    testCase.assertEqual(
        seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
    )
    transport.signalProcess("TERM")
    result = await capture.ended
    testCase.assertEqual(result.exitCode, 0, result.stderr.decode())
    testCase.assertTrue(notify.seen("STOPPING=1"))
    testCase.assertIsNone(readServerInfo(serverInfo))
    return result


# Without systemd as PID 1 the units cannot run for real here, so this
# applies the parts of their sandbox a process can apply to itself, then
# execs the unit's command: no capabilities (setpriv, before this runs),
# no_new_privs, LimitMEMLOCK/LimitCORE, and seccomp filters equal to
# SystemCallFilter=@system-service ~@privileged (EPERM otherwise) and
# RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK (netlink: the
# kernel's socket table, for each caller's uid). Needs libseccomp's
# Python binding (Debian: python3-seccomp) in the system Python.
SANDBOX = """
import os, resource, socket, subprocess, sys
import seccomp

def groups():
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True, text=True, check=True,
    ).stdout
    sets, current = {}, None
    for line in out.splitlines():
        word = line.strip()
        if line.startswith("@"):
            current = sets.setdefault(word, [])
        elif current is not None and word and not word.startswith("#"):
            current.append(word)
    return sets

def expand(name, sets):
    names = set()
    for item in sets[name]:
        names |= expand(item, sets) if item.startswith("@") else {item}
    return names

sets = groups()
allowed = expand("@system-service", sets) - expand("@privileged", sets)
resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(1))
for name in sorted(allowed - {"socket"}):
    try:
        rules.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # not a system call on this architecture
for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
    rules.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
rules.load()  # also sets no_new_privs
os.execv(sys.argv[1], sys.argv[1:])
"""


class SandboxTests(TestCase):
    """
    The unit's command under (an approximation of) the unit's sandbox.
    """

    async def test_execStartUnderSandbox(self) -> None:
        """
        The sandbox leaves the proxy everything it needs: start, key, mlock
        (C{CODEX_SECURE_MODE=1} makes a failure fatal), TLS upstream,
        notify socket, clean stop. Checks that the filter is really on, too.
        """
        setpriv = shutil.which("setpriv")
        if os.getuid() != 0 or setpriv is None or not shutil.which("systemd-analyze"):
            raise SkipTest("needs root, setpriv and systemd-analyze")
        probe = await getProcessOutputAndValue(
            "/usr/bin/python3", ["-c", "import seccomp"], env=childEnvironment()
        )
        if probe[2] != 0:
            raise SkipTest("needs libseccomp for the system Python (python3-seccomp)")
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(SANDBOX)
        prefix = [
            setpriv,
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "/usr/bin/python3",
            script,
        ]
        out, err, code = await getProcessOutputAndValue(
            prefix[0],
            [
                *prefix[1:],
                sys.executable,
                "-c",
                "import os, socket\n"
                "status = open('/proc/self/status').read()\n"
                "assert 'CapEff:\\t0000000000000000' in status, status\n"
                "assert 'NoNewPrivs:\\t1' in status, status\n"
                "try:\n"
                "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                "    raise SystemExit('AF_PACKET allowed')\n"
                "except PermissionError:\n"
                "    pass\n",
            ],
            env=childEnvironment(),
        )
        self.assertEqual(code, 0, err.decode())
        await runExecStart(self, prefix)


class SocketActivationTests(TestCase):
    """
    twistd started like systemd starts the activated service.
    """

    def twistdArgv(
        self, listen: str, serverInfo: str, upstreamURL: str, console: bool = False
    ) -> list[str]:
        """
        The argv of twistd (or, with C{console}, the console script) running
        the proxy with C{--listen listen}.
        """
        if console:
            command = [scriptPath("responses-api-proxy")]
        else:
            command = [scriptPath("twistd"), "--nodaemon", "--pidfile="]
            command.append("responses-api-proxy")
        return [
            *command,
            "--listen",
            listen,
            "--server-info",
            serverInfo,
            "--upstream-url",
            upstreamURL,
        ]

    async def checkLifecycle(
        self,
        listen: str,
        family: int,
        address: Address,
        listening: socket.socket | None,
        expectedPort: int | None,
        status: str,
        console: bool = False,
    ) -> list[str]:
        """
        READY=1 after the port answers and server-info exists; STATUS names
        the address; a request is forwarded; SIGTERM sends STOPPING=1,
        removes server-info and exits 0.
        """
        upstream = startFakeUpstream(self)
        serverInfo = os.path.join(self.mktemp() + "-server-info.json")

        def atReady() -> dict[str, Any]:
            # Checked synchronously, the moment the datagram arrives.
            return {
                "connects": connects(family, address),
                "serverInfo": readServerInfo(serverInfo),
            }

        notify = listenNotify(self, atReady)
        env = childEnvironment(NOTIFY_SOCKET=notify.path)
        capture = spawnWithListenFDs(
            self,
            self.twistdArgv(listen, serverInfo, upstream.url, console),
            listening,
            env,
        )
        await waitFor(lambda: notify.readyState or capture.ended.called, timeout=30)
        ready = notify.readyState
        self.assertTrue(ready, capture.err.decode() + capture.out.decode())
        assert ready is not None
        self.assertEqual(ready["connects"], True)
        info = ready["serverInfo"]
        self.assertIsNotNone(info, "server-info missing when READY=1 arrived")
        self.assertEqual(info["port"], expectedPort)
        [readyLines] = [
            m.split("\n") for m in notify.messages if "READY=1" in m.split("\n")
        ]
        self.assertIn(f"STATUS=listening on {status}", readyLines)
        self.assertIn(f"MAINPID={info['pid']}", readyLines)

        reply = await self.exchange(family, address)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:300])
        self.assertEqual(len(upstream.resource.requests), 1)

        capture.transport.signalProcess("TERM")
        result = await capture.ended
        self.assertEqual(result.exitCode, 0, result.stderr.decode())
        self.assertTrue(notify.seen("STOPPING=1"), notify.messages)
        self.assertIsNone(readServerInfo(serverInfo))
        return notify.messages

    async def exchange(self, family: int, address: Address) -> bytes:
        """
        Send a request as a client of C{address} does (over a Unix socket,
        C{curl --unix-socket} says C{Host: localhost}); the raw answer.
        """
        if family != socket.AF_UNIX:
            assert isinstance(address, tuple), address
            return await rawExchange(address[1], rawRequest(b"{}"))
        assert isinstance(address, str), address
        from twisted.internet.protocol import ClientCreator

        from tests.support import _Collect

        proto: _Collect = await ClientCreator(reactor, _Collect).connectUNIX(address)
        assert proto.transport is not None
        proto.transport.write(rawRequest(b"{}", host=b"localhost"))
        return await proto.done

    def inetSocket(self) -> socket.socket:
        """
        A listening loopback TCP socket on an ephemeral port, as systemd
        would pass it; closed after the test.
        """
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        return listening

    async def test_inheritedInetSocket(self) -> None:
        """
        C{--listen systemd:domain=INET:name=...} serves on the socket at
        fd 3, and server-info reports its real port.
        """
        listening = self.inetSocket()
        port = listening.getsockname()[1]
        await self.checkLifecycle(
            f"systemd:domain=INET:name={FD_NAME}",
            socket.AF_INET,
            ("127.0.0.1", port),
            listening,
            port,
            f"127.0.0.1:{port}",
        )

    async def test_inheritedByConsoleScript(self) -> None:
        """
        The console script adopts the inherited socket the same way.
        """
        listening = self.inetSocket()
        port = listening.getsockname()[1]
        await self.checkLifecycle(
            f"systemd:domain=INET:name={FD_NAME}",
            socket.AF_INET,
            ("127.0.0.1", port),
            listening,
            port,
            f"127.0.0.1:{port}",
            console=True,
        )

    async def test_noSocketPassed(self) -> None:
        """
        Asked to adopt a socket systemd did not pass, twistd exits 1 with one
        line saying so, never a traceback, and never reports ready.
        """
        notify = listenNotify(self, lambda: None)
        for listen in [
            f"systemd:domain=INET:name={FD_NAME}",
            "systemd:domain=INET:index=0",
        ]:
            capture = spawnWithListenFDs(
                self,
                self.twistdArgv(listen, "unused.json", "http://127.0.0.1:9/"),
                None,
                childEnvironment(NOTIFY_SOCKET=notify.path),
            )
            result = await capture.ended
            self.assertEqual(result.exitCode, 1)
            self.assertNotIn(b"Traceback", result.stderr)
            self.assertIn(b"systemd passed no such socket", result.stderr)
        self.assertEqual(notify.messages, [])

    async def test_inheritedSocketOutlivesProxy(self) -> None:
        """
        After the proxy stops, the inherited TCP socket still accepts
        connections (they queue for the next start): the proxy closed its
        copy without shutting the socket down.
        """
        listening = self.inetSocket()
        port = listening.getsockname()[1]
        await self.checkLifecycle(
            f"systemd:domain=INET:name={FD_NAME}",
            socket.AF_INET,
            ("127.0.0.1", port),
            listening,
            port,
            f"127.0.0.1:{port}",
        )
        self.assertTrue(connects(socket.AF_INET, ("127.0.0.1", port)))

    async def test_inheritedByIndex(self) -> None:
        """
        C{index=0} finds the same descriptor as the name.
        """
        listening = self.inetSocket()
        port = listening.getsockname()[1]
        await self.checkLifecycle(
            "systemd:domain=INET:index=0",
            socket.AF_INET,
            ("127.0.0.1", port),
            listening,
            port,
            f"127.0.0.1:{port}",
        )

    async def test_inheritedUnixSocket(self) -> None:
        """
        An inherited C{AF_UNIX} socket works too; server-info has no port.
        The socket file belongs to systemd: its mode is left as the socket
        unit set it (C{SocketMode=}), and it is still there, still
        accepting, after the proxy stopped.
        """
        path = shortPath(self, "proxy.sock")
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(path)
        os.chmod(path, 0o600)
        listening.listen(16)
        await self.checkLifecycle(
            f"systemd:domain=UNIX:name={FD_NAME}",
            socket.AF_UNIX,
            path,
            listening,
            None,
            path,
        )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertTrue(connects(socket.AF_UNIX, path))

    async def test_unixEndpoint(self) -> None:
        """
        C{--listen unix:PATH:mode=660} binds the socket itself, with that mode.
        """
        path = shortPath(self, "proxy.sock")
        modes: list[int] = []
        original = connects

        def recordMode(family: int, address: Address) -> bool:
            modes.append(os.stat(path).st_mode & 0o777)
            return original(family, address)

        self.patch(sys.modules[__name__], "connects", recordMode)
        await self.checkLifecycle(
            f"unix:{path}:mode=660", socket.AF_UNIX, path, None, None, path
        )
        self.assertEqual(modes, [0o660])

    async def test_tcpEndpoint(self) -> None:
        """
        C{--listen tcp:0:interface=127.0.0.1} reports the ephemeral port.
        """
        serverInfo = os.path.join(self.mktemp() + "-server-info.json")
        upstream = startFakeUpstream(self)
        notify = listenNotify(self, lambda: readServerInfo(serverInfo))
        capture = spawnWithListenFDs(
            self,
            self.twistdArgv("tcp:0:interface=127.0.0.1", serverInfo, upstream.url),
            None,
            childEnvironment(NOTIFY_SOCKET=notify.path),
        )

        await waitFor(lambda: notify.readyState or capture.ended.called, timeout=30)
        ready = notify.readyState
        assert ready is not None, capture.err
        port = ready["port"]
        self.assertTrue(
            any(f"STATUS=listening on 127.0.0.1:{port}" in m for m in notify.messages)
        )
        capture.transport.signalProcess("TERM")
        result = await capture.ended
        self.assertEqual(result.exitCode, 0)
        self.assertTrue(notify.seen("STOPPING=1"))


class NotifyTests(TestCase):
    """
    L{sdnotify.notify} on its own.
    """

    def test_noSocketNoMessage(self) -> None:
        """
        Outside systemd (no C{NOTIFY_SOCKET}) nothing is sent, and that is fine.
        """
        self.assertFalse(sdnotify.notify("READY=1", {}))

    def test_abstractSocket(self) -> None:
        """
        A leading C{@} names a socket in the abstract namespace.
        """
        name = f"responses-api-proxy-test-{os.getpid()}-{id(self)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind("\0" + name)
            self.assertTrue(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name}))
            self.assertEqual(receiver.recv(100), b"READY=1")

    def test_goneSocket(self) -> None:
        """
        A socket path nobody listens on is reported, not raised.
        """
        path = os.path.abspath(self.mktemp())
        self.assertFalse(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": path}))


MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(3)
from OpenSSL import SSL
try:
    SSL.Context(SSL.TLS_METHOD).set_info_callback(lambda *a: None)
except MemoryError:
    sys.exit(1)
"""


class MemoryDenyWriteExecuteTests(TestCase):
    """
    Why the units say C{MemoryDenyWriteExecute=no}.
    """

    async def test_pyOpenSSLCallbacksNeedWriteExecute(self) -> None:
        """
        Under the kernel's equivalent of C{MemoryDenyWriteExecute=yes}
        (C{PR_SET_MDWE}), pyOpenSSL cannot create the callbacks Twisted sets
        on every TLS connection. If this starts passing, turn it on in the
        units.
        """
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", MDWE_PROBE], env=childEnvironment()
        )
        if code == 3:
            raise SkipTest("this kernel has no PR_SET_MDWE")
        self.assertEqual(code, 1, "pyOpenSSL works under MDWE now: " + err.decode())
        units = "".join(readUnit(name) for name in SERVICES)
        self.assertEqual(
            re.findall(r"^MemoryDenyWriteExecute=(\w+)$", units, re.M), ["no", "no"]
        )

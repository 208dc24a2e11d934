# -*- test-case-name: tests.test_tap -*-
"""
Unit tests (in memory) for L{responses_proxy.tap.makeService} with a
L{MemoryReactorClock}: the service tree it composes, what starting and
stopping it does, the L{StartupError}s of unusable options, and that a
service built for a test leaves the process alone (no signal handlers, no
garbage-collector tuning, no reactor triggers).

Requests reach the composed site over a L{StringTransport}; where one is
forwarded, the real upstream client connects through the memory reactor
and the test plays the upstream on another L{StringTransport}.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from responses_proxy import tap
from responses_proxy.apikey import AuthHeader
from responses_proxy.lifecycle import ProcessService
from responses_proxy.options import ProxyOptions
from responses_proxy.service import (
    ClosingService,
    ProxyApplicationService,
    ProxyService,
)
from responses_proxy.site import ProxySite
from responses_proxy.startup import StartupError
from tests.memory import Connection, connect, httpRequest

UPSTREAM = "http://127.0.0.1:9/v1/responses"


class _BusyPortReactor(MemoryReactorClock):
    """
    A memory reactor on which every TCP port is taken.
    """

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        raise CannotListenError(
            interface, port, OSError(errno.EADDRINUSE, "Address already in use")
        )


class _Built:
    """
    A service made by L{makeService} on a memory reactor, and what it did.
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        *args: str,
        environ: dict[str, str] | None = None,
        reactor: MemoryReactorClock | None = None,
        stop: bool = True,
    ) -> None:
        config = ProxyOptions()
        config.parseOptions(["--upstream-url", UPSTREAM, *args])
        self.testCase = testCase
        self.reactor = MemoryReactorClock() if reactor is None else reactor
        self.stops: list[None] = []
        stopper: Callable[[], object] | None = (
            (lambda: self.stops.append(None)) if stop else None
        )
        service = tap.makeService(
            config,
            reactor=self.reactor,
            credential=AuthHeader(b"Bearer sk-x"),
            environ={} if environ is None else environ,
            stop=stopper,
        )
        assert isinstance(service, ProxyApplicationService)
        self.service = service

    @property
    def listener(self) -> ProxyService:
        """
        The listening service.
        """
        assert self.service.listener is not None
        return self.service.listener

    @property
    def site(self) -> ProxySite:
        """
        The site the listener serves.
        """
        site = self.listener.factory
        assert isinstance(site, ProxySite)
        return site

    def start(self) -> None:
        """
        Start the service as twistd does; stopped at cleanup.
        """
        self.service.privilegedStartService()
        self.service.startService()
        self.testCase.addCleanup(self.stopIfRunning)

    def stopIfRunning(self) -> None:
        """
        Stop the service unless it was stopped already.
        """
        if self.service.running:
            self.testCase.successResultOf(self.service.stopService())

    def connect(self) -> Connection:
        """
        A client connection to the site.
        """
        return connect(self.testCase, self.site)

    def upstreamConnection(self, index: int = 0) -> tuple[Any, StringTransport]:
        """
        Complete the upstream client's C{index}th connection attempt; the
        protocol and the transport on which it writes the request.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        self.testCase.assertEqual((host, port), ("127.0.0.1", 9))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


def _child(resource: Resource, name: bytes) -> Resource:
    child = resource.children[name]
    assert isinstance(child, Resource)
    return child


class ServiceTreeTests(SynchronousTestCase):
    """
    What L{makeService} composes when given a reactor.
    """

    def test_tree(self) -> None:
        """
        The bare proxy service: a L{ClosingService} (for the upstream
        pool), then the L{ProxyService} listener, which is C{.listener}.
        """
        built = _Built(self)
        services = list(built.service)
        self.assertEqual([type(s) for s in services], [ClosingService, ProxyService])
        self.assertIs(built.service.listener, services[1])
        self.assertNotIsInstance(built.service, ProcessService)

    def test_siteFromOptions(self) -> None:
        """
        The site has the options' limits and the test's reactor.
        """
        built = _Built(self, "--max-request-body", "1000", "--request-timeout", "5")
        self.assertEqual(
            (built.site.maxRequestBody, built.site.requestTimeout), (1000, 5.0)
        )
        self.assertIs(built.site.reactor, built.reactor)

    def test_resourceTree(self) -> None:
        """
        Only C{/v1/responses} is in the tree, without C{--http-shutdown}.
        """
        root = _Built(self).site.resource
        assert isinstance(root, Resource)
        self.assertEqual(list(root.children), [b"v1"])
        self.assertEqual(list(_child(root, b"v1").children), [b"responses"])

    def test_httpShutdownInTree(self) -> None:
        """
        C{--http-shutdown} adds C{/shutdown}.
        """
        root = _Built(self, "--http-shutdown").site.resource
        assert isinstance(root, Resource)
        self.assertEqual(sorted(root.children), [b"shutdown", b"v1"])

    def test_twistdOptions(self) -> None:
        """
        The twistd plugin's C{Options} are the proxy's options.
        """
        self.assertIs(tap.Options, ProxyOptions)


class ListeningTests(SynchronousTestCase):
    """
    Starting listens on the memory reactor; server-info follows.
    """

    def test_privilegedStartListens(self) -> None:
        """
        C{privilegedStartService} listens on 127.0.0.1 with a backlog of 511;
        C{startService} does not listen again.
        """
        built = _Built(self, "--port", "8123")
        built.service.privilegedStartService()
        self.assertEqual(
            built.reactor.tcpServers, [(8123, built.site, 511, "127.0.0.1")]
        )
        built.service.startService()
        self.addCleanup(built.stopIfRunning)
        self.assertEqual(len(built.reactor.tcpServers), 1)
        self.assertEqual(built.listener.listeningPort, 8123)

    def test_startServiceListens(self) -> None:
        """
        Without C{privilegedStartService}, C{startService} listens.
        """
        built = _Built(self)
        built.service.startService()
        self.addCleanup(built.stopIfRunning)
        self.assertEqual(len(built.reactor.tcpServers), 1)

    def test_listenEndpoint(self) -> None:
        """
        C{--listen} is the endpoint listened on.
        """
        built = _Built(self, "--listen", "tcp:8124:interface=127.0.0.1")
        built.start()
        self.assertEqual(
            built.reactor.tcpServers, [(8124, built.site, 50, "127.0.0.1")]
        )

    def test_listenUNIX(self) -> None:
        """
        A C{unix:} endpoint listens on that path, with its mode.
        """
        path = os.path.abspath(self.mktemp())
        built = _Built(self, "--listen", f"unix:{path}:mode=660")
        built.start()
        [(address, factory, backlog, mode, wantPID)] = built.reactor.unixServers
        self.assertEqual((address, factory, mode), (path, built.site, 0o660))

    def test_serverInfoAtStart(self) -> None:
        """
        server-info is written once listening (at C{startService}, not
        before), says the port and pid, and is removed at stop.
        """
        path = os.path.abspath(self.mktemp())
        built = _Built(self, "--port", "8123", "--server-info", path)
        built.service.privilegedStartService()
        self.assertFalse(os.path.exists(path))
        built.service.startService()
        with open(path) as f:
            self.assertEqual(json.load(f), {"port": 8123, "pid": os.getpid()})
        self.successResultOf(built.service.stopService())
        self.assertFalse(os.path.exists(path))

    def test_portTaken(self) -> None:
        """
        A port that cannot be bound is a L{StartupError} at
        C{privilegedStartService}, naming the address and the reason.
        """
        built = _Built(self, "--port", "8123", reactor=_BusyPortReactor())
        with self.assertRaises(StartupError) as raised:
            built.service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "cannot listen on 127.0.0.1:8123: Address already in use",
        )

    def test_serverInfoUnwritable(self) -> None:
        """
        A server-info file that cannot be written is a L{StartupError} at
        C{startService}.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        built = _Built(self, "--server-info", f"{blocker}/info.json")
        built.service.privilegedStartService()
        with self.assertRaises(StartupError) as raised:
            built.service.startService()
        self.assertIn(f"{blocker}/info.json", str(raised.exception))
        self.assertIn("Not a directory", str(raised.exception))

    def test_stopClosesUpstream(self) -> None:
        """
        Stopping stops listening and closes the idle pooled upstream
        connections, and completes once they are closed.
        """
        built = _Built(self)
        built.start()
        client = built.connect()
        client.send(httpRequest())
        protocol, transport = built.upstreamConnection()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(client.response().status, 200)
        self.assertFalse(transport.disconnecting)
        stopped = built.service.stopService()
        self.assertIsNone(built.listener.port)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)


class StartupErrorTests(SynchronousTestCase):
    """
    Unusable options are a L{StartupError} from L{makeService}, whose text
    is the one line the operator sees.
    """

    def assertStartupError(
        self, args: list[str], message: str, environ: dict[str, str] | None = None
    ) -> None:
        """
        Building with C{args} fails with exactly C{message}.
        """
        with self.assertRaises(StartupError) as raised:
            _Built(self, *args, environ=environ)
        self.assertEqual(str(raised.exception), message)

    def test_upstreamCAMissing(self) -> None:
        """
        A missing C{--upstream-ca} file.
        """
        path = os.path.abspath(self.mktemp())
        self.assertStartupError(
            ["--upstream-ca", path],
            f"cannot read the upstream CA file {path}: No such file or directory",
        )

    def test_upstreamCAEmpty(self) -> None:
        """
        A C{--upstream-ca} file without a certificate.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertStartupError(
            ["--upstream-ca", path], f"no PEM certificate found in {path}"
        )

    def test_sslCertFileFromEnviron(self) -> None:
        """
        C{SSL_CERT_FILE} is read from the C{environ} given (not the process's).
        """
        path = os.path.abspath(self.mktemp())
        self.assertStartupError(
            [],
            f"cannot read the upstream CA file {path}: No such file or directory",
            environ={"SSL_CERT_FILE": path},
        )

    def test_egressFromEnviron(self) -> None:
        """
        An unusable egress proxy variable in C{environ}.
        """
        self.assertStartupError(
            [],
            "HTTP_PROXY: only http:// egress proxies are supported, not ftp://",
            environ={"HTTP_PROXY": "ftp://proxy.invalid"},
        )

    def test_dumpDirUnusable(self) -> None:
        """
        A C{--dump-dir} that cannot be made.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        self.assertStartupError(
            ["--dump-dir", f"{blocker}/dumps"],
            f"--dump-dir {blocker}/dumps: Not a directory",
        )

    def test_unknownEndpointType(self) -> None:
        """
        A C{--listen} endpoint type Twisted does not know.
        """
        self.assertStartupError(
            ["--listen", "nosuch:1"],
            "invalid --listen endpoint 'nosuch:1': Unknown endpoint type: 'nosuch'",
        )

    def test_badEndpointArgument(self) -> None:
        """
        A C{--listen} endpoint with an unusable argument.
        """
        path = os.path.abspath(self.mktemp())
        self.assertStartupError(
            ["--listen", f"unix:{path}:mode=rw"],
            f"invalid --listen endpoint 'unix:{path}:mode=rw': "
            "invalid literal for int() with base 8: 'rw'",
        )

    def test_systemdSocketMissing(self) -> None:
        """
        A C{systemd:} endpoint when systemd passed no socket says so.
        """
        if "LISTEN_FDS" in os.environ:
            raise self.skipTest("this test runner was passed sockets by systemd")
        with self.assertRaises(StartupError) as raised:
            _Built(self, "--listen", "systemd:domain=INET:index=0")
        self.assertTrue(
            str(raised.exception).startswith(
                "invalid --listen endpoint 'systemd:domain=INET:index=0': "
            )
        )
        self.assertTrue(
            str(raised.exception).endswith(
                "(systemd passed no such socket; see LISTEN_FDNAMES)"
            )
        )


class ForwardingTests(SynchronousTestCase):
    """
    The composed site forwards through the real upstream client, with the
    credential and upstream URL given.
    """

    def test_forwarded(self) -> None:
        """
        C{POST /v1/responses} goes to the upstream URL with the key and the
        upstream's C{Host}; its answer comes back to the client.
        """
        built = _Built(self)
        built.start()
        client = built.connect()
        client.send(httpRequest(close=True))
        protocol, transport = built.upstreamConnection()
        sent = transport.value()
        self.assertTrue(sent.startswith(b"POST /v1/responses HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nAuthorization: Bearer sk-x\r\n", sent)
        self.assertIn(b"\r\nHost: 127.0.0.1:9\r\n", sent)
        self.assertTrue(sent.endswith(b'\r\n\r\n{"model": "m", "input": "hi"}'))
        # Not kept in the pool: stopping would wait for it to close.
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        )
        response = client.response()
        self.assertEqual((response.status, response.body), (200, b"{}"))


class ShutdownTests(SynchronousTestCase):
    """
    C{--http-shutdown} and C{--drain-timeout}, wired: a drain of the composed
    site, then the C{stop} given.
    """

    def test_httpShutdown(self) -> None:
        """
        C{GET /shutdown} answers 200; once answered, the drain stops
        listening, removes server-info, and (no connection left) stops.
        """
        path = os.path.abspath(self.mktemp())
        built = _Built(self, "--http-shutdown", "--server-info", path)
        built.start()
        client = built.connect()
        client.send(httpRequest(b"GET", b"/shutdown", None))
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(response.body), {"status": "shutting down"})
        self.assertFalse(client.open)
        self.assertEqual(built.stops, [None])
        self.assertIsNone(built.listener.port)
        self.assertFalse(os.path.exists(path))

    def test_concurrentShutdowns(self) -> None:
        """
        Several connections asking to shut down: one drain, one stop; the
        connections that had sent nothing yet are closed.
        """
        built = _Built(self, "--http-shutdown")
        built.start()
        clients = [built.connect() for _ in range(3)]
        for client in clients:
            if client.open:
                client.send(httpRequest(b"GET", b"/shutdown", None))
        self.assertEqual(clients[0].response().status, 200)
        self.assertEqual([c.open for c in clients], [False] * 3)
        self.assertEqual([c.received for c in clients[1:]], [b"", b""])
        self.assertEqual(built.stops, [None])

    def test_drainTimeout(self) -> None:
        """
        An exchange still in flight at the drain deadline is aborted, and
        then the process is stopped; not before the deadline.
        """
        built = _Built(self, "--drain-timeout", "5")
        built.start()
        client = built.connect()
        client.send(httpRequest())
        built.service.shutdown()
        self.assertIsNone(built.listener.port)
        built.reactor.advance(4.9)
        self.assertEqual((client.open, built.stops), (True, []))
        built.reactor.advance(0.1)
        self.assertTrue(client.aborted)
        self.assertEqual(built.stops, [None])

    def test_defaultStopsReactor(self) -> None:
        """
        Without C{stop}, the end of a drain stops the reactor given.
        """
        built = _Built(self, stop=False)
        built.start()
        built.reactor.running = True
        self.successResultOf(built.service.shutdown())
        self.assertTrue(built.reactor.hasStopped)


class NoProcessPolicyTests(SynchronousTestCase):
    """
    With a reactor given, L{makeService} is not a process's entry point: no
    L{ProcessService}, and nothing of the process is touched.
    """

    def test_processUntouched(self) -> None:
        """
        Building, starting, shutting down and stopping the service changes
        no signal handler, no garbage-collector setting, and adds no reactor
        trigger or start-up hook.
        """
        numbers = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        handlers = [signal.getsignal(number) for number in numbers]
        thresholds = gc.get_threshold()
        frozen = gc.get_freeze_count()
        built = _Built(self, "--drain-timeout", "0")
        built.start()
        self.successResultOf(built.service.shutdown())
        self.successResultOf(built.service.stopService())
        self.assertEqual([signal.getsignal(number) for number in numbers], handlers)
        self.assertEqual(gc.get_threshold(), thresholds)
        self.assertEqual(gc.get_freeze_count(), frozen)
        self.assertEqual(built.reactor.triggers, {})
        self.assertEqual(built.reactor.whenRunningHooks, [])


class ProcessPathTests(SynchronousTestCase):
    """
    Without a reactor, L{makeService} is a process's entry point.
    """

    def test_processPathStartupError(self) -> None:
        """
        Without a reactor (a process's entry point), an unusable option is
        reported as the process reports it: one line on the real standard
        error, and exit status 1. (It fails before anything is made, so the
        global reactor is left alone.)
        """
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        path = os.path.abspath(self.mktemp())
        config = ProxyOptions()
        config.parseOptions(["--upstream-ca", path])
        with self.assertRaises(SystemExit) as raised:
            tap.makeService(config, credential=AuthHeader(b"Bearer sk-x"), environ={})
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(
            stderr.getvalue(),
            f"responses-api-proxy: cannot read the upstream CA file {path}: "
            "No such file or directory\n",
        )

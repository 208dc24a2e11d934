"""
Slow and vanishing clients: a request that never completes is closed after
C{--request-timeout}, hundreds of them do not starve a good client, a slow
upstream is never cut off by that timeout, and a client that leaves closes
its upstream connection at once.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import rawExchange, startFakeUpstream, startProxy, waitFor
from tests.test_hostile import goodRequest, openFDs, parseResponse


class _Client(protocol.Protocol):
    """
    A raw client that records when it connected, what it got and when the
    server closed the connection.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.connectedAt = 0.0
        self.closedAt: float | None = None
        self.closed: Deferred[float] = Deferred()

    def connectionMade(self) -> None:
        self.connectedAt = reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closedAt = reactor.seconds()
        self.closed.callback(self.closedAt)


def connect(testCase: TestCase, port: int) -> Deferred[_Client]:
    """
    Connect a L{_Client} to C{port}; aborted at cleanup if still open.
    """
    d = protocol.ClientCreator(reactor, _Client).connectTCP("127.0.0.1", port)

    def track(client: _Client) -> _Client:
        def cleanup() -> Deferred[float] | None:
            if client.closedAt is None:
                client.transport.abortConnection()
                return client.closed
            return None

        testCase.addCleanup(cleanup)
        return client

    return d.addCallback(track)


def _request(scenario: str, delayMS: int, close: bool = True) -> bytes:
    return goodRequest(x_fake_scenario=scenario, x_fake_delay_ms=str(delayMS))


class RequestTimeoutTests(TestCase):
    """
    C{--request-timeout} bounds how long a client may take to send a request
    and how long an idle keep-alive connection stays open.
    """

    timeout = 60

    @inlineCallbacks
    def assertClosedAfterTimeout(self, payload: bytes) -> Any:
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        client.transport.write(payload)
        closedAt = yield client.closed
        elapsed = closedAt - client.connectedAt
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 2.5)
        self.assertEqual(upstream.resource.requests, [])
        return client

    def test_unfinishedHeadClosed(self) -> None:
        """
        A client that never finishes its request head is disconnected after
        about one second.
        """
        return self.assertClosedAfterTimeout(b"POST /v1/responses HTTP/1.1\r\nHo")

    def test_silentConnectionClosed(self) -> None:
        """
        A client that connects and sends nothing is disconnected after about
        one second.
        """
        return self.assertClosedAfterTimeout(b"")

    def test_unfinishedBodyClosed(self) -> None:
        """
        A client that sends the head but only part of the announced body is
        disconnected after about one second, and nothing is forwarded.
        """
        return self.assertClosedAfterTimeout(
            b'POST /v1/responses HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"in'
        )

    @inlineCallbacks
    def test_trickleDoesNotExtendDeadline(self) -> None:
        """
        Sending one byte every 200 ms does not keep a request alive: the
        deadline counts from the first byte, not the last.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        payload = iter(b"POST /v1/responses HTTP/1.1\r\nX-Slow: " + b"s" * 100)

        calls = []

        def trickle() -> None:
            if client.closedAt is None:
                client.transport.write(bytes([next(payload)]))
                calls.append(reactor.callLater(0.2, trickle))

        trickle()
        closedAt = yield client.closed
        for call in calls:
            if call.active():
                call.cancel()
        self.assertLess(closedAt - client.connectedAt, 2.5)

    @inlineCallbacks
    def test_idleKeepAliveClosed(self) -> None:
        """
        After a complete keep-alive exchange, an idle connection is closed
        about one request-timeout later.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        body = b'{"input": "x"}'
        client.transport.write(
            b"POST /v1/responses HTTP/1.1\r\nX-Fake-Scenario: json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

        def answered() -> bool:
            response = parseResponse(bytes(client.received), closed=False)
            return response is not None and response.complete

        yield waitFor(answered, timeout=5)
        answeredAt = reactor.seconds()
        closedAt = yield client.closed
        self.assertGreater(closedAt - answeredAt, 0.8)
        self.assertLess(closedAt - answeredAt, 2.5)

    @inlineCallbacks
    def test_keepAliveSecondRequestServed(self) -> None:
        """
        A second request on a kept-alive connection, sent within the timeout
        after the first answer, is served (the deadline restarted).
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        request = (
            b"POST /v1/responses HTTP/1.1\r\nX-Fake-Scenario: json\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        client.transport.write(request)
        yield waitFor(lambda: b"resp_fake" in client.received, timeout=5)
        yield waitFor(lambda: reactor.seconds() - client.connectedAt > 0.7)
        client.transport.write(request)
        yield waitFor(lambda: client.received.count(b"resp_fake") >= 2, timeout=5)
        self.assertEqual(len(upstream.resource.requests), 2)

    @inlineCallbacks
    def test_slowUpstreamNotCutOff(self) -> None:
        """
        A client waiting 3 s for an upstream that is silent before its
        headers (C{--request-timeout 1}) gets the complete answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        started = reactor.seconds()
        data = yield rawExchange(proxy.port, _request("silent", 3000), timeout=10)
        response = parseResponse(data)
        assert response is not None, data
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b'{"late": true}')
        self.assertGreater(reactor.seconds() - started, 2.9)

    @inlineCallbacks
    def test_stalledStreamNotCutOff(self) -> None:
        """
        A stream that goes quiet for 3 s after its headers is relayed
        complete (C{--request-timeout 1}).
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        data = yield rawExchange(proxy.port, _request("stall", 3000), timeout=10)
        response = parseResponse(data)
        assert response is not None, data
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        self.assertIn(b"response.completed", response.body)


class ManySlowClientsTests(TestCase):
    """
    Hundreds of slow connections at once do not starve a good client.
    """

    timeout = 60

    @inlineCallbacks
    def test_fiveHundredSlowClients(self) -> None:
        """
        With 500 connections holding unfinished requests, a well-behaved
        client is served promptly; then all 500 are closed by the timeout.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 1400  # both ends of each connection live in this process
        if soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise SkipTest(f"RLIMIT_NOFILE hard limit {hard} < {need}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "3")
        # Count after a first exchange, which opens what stays open (the
        # pooled upstream connection, the reactor's lazily made pipes).
        yield rawExchange(proxy.port, goodRequest())
        before = openFDs()
        slow: list[_Client] = []
        for _batch in range(5):
            batch = yield DeferredList(
                [connect(self, proxy.port) for _ in range(100)], fireOnOneErrback=True
            )
            for _, client in batch:
                client.transport.write(b"POST /v1/responses HTTP/1.1\r\nX-A: b")
                slow.append(client)
        self.assertEqual(sum(c.closedAt is None for c in slow), 500)
        started = reactor.seconds()
        data = yield rawExchange(proxy.port, goodRequest(), timeout=5)
        served = reactor.seconds() - started
        response = parseResponse(data)
        assert response is not None
        self.assertEqual((response.status, response.complete), (200, True))
        self.assertLess(served, 1.0)
        self.assertTrue(all(c.closedAt is None for c in slow))
        yield waitFor(lambda: all(c.closedAt is not None for c in slow), timeout=10)
        self.assertEqual(len(upstream.resource.requests), 2)
        # Both ends of all 500 connections are closed: no descriptor leaked.
        yield waitFor(lambda: openFDs() <= before, timeout=5)


class ClientGoneTests(TestCase):
    """
    A client that goes away releases its upstream connection within 1 s,
    measured at the upstream.
    """

    timeout = 30

    @inlineCallbacks
    def assertUpstreamClosedWhenClientLeaves(
        self, scenario: str, marker: bytes, pooled: bool = False
    ) -> Any:
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        if pooled:
            # A first exchange leaves an idle upstream connection in the
            # proxy's pool, which the next request reuses.
            data = yield rawExchange(proxy.port, goodRequest(x_fake_scenario="json"))
            self.assertEqual(parseResponse(data).status, 200)  # type: ignore[union-attr]
        client = yield connect(self, proxy.port)
        client.transport.write(_request(scenario, 30000))
        yield waitFor(lambda: len(upstream.resource.requests) == 1 + pooled)
        yield waitFor(lambda: marker in client.received)
        [(_, upstreamLost)] = upstream.connections
        self.assertFalse(upstreamLost.called)
        left = reactor.seconds()
        client.transport.abortConnection()
        yield upstreamLost
        self.assertLess(reactor.seconds() - left, 1.0)

    def test_clientLeavesMidStream(self) -> None:
        """
        The upstream has sent headers and part of a stream it keeps open;
        the client disconnects; the upstream connection closes within 1 s.
        """
        return self.assertUpstreamClosedWhenClientLeaves("stall", b": stalling")

    def test_clientLeavesBeforeHeaders(self) -> None:
        """
        The upstream has not answered yet; the client disconnects; the
        upstream connection closes within 1 s.
        """
        return self.assertUpstreamClosedWhenClientLeaves("silent", b"")

    def test_clientLeavesBeforeHeadersPooled(self) -> None:
        """
        The same on a reused (pooled) upstream connection: the pending
        upstream request is cancelled and its connection closed within 1 s,
        never handed to the next request with an answer still to come.
        """
        return self.assertUpstreamClosedWhenClientLeaves("silent", b"", pooled=True)

    def test_clientLeavesMidStreamPooled(self) -> None:
        """
        The same mid-stream, on a reused (pooled) upstream connection.
        """
        return self.assertUpstreamClosedWhenClientLeaves(
            "stall", b": stalling", pooled=True
        )


class StalledReaderTests(TestCase):
    """
    A client that stops reading its answer cannot hold the connection, and
    the upstream connection behind it, for ever.
    """

    timeout = 30

    @inlineCallbacks
    def test_clientThatStopsReadingIsCut(self) -> None:
        """
        The client asks for a 64 MiB answer and reads none of it. Once the
        socket buffers are full and nothing has drained for one
        C{--request-timeout} (1 s), the proxy aborts the client connection,
        which closes the upstream connection too; the client, reading at
        last, finds a visibly incomplete answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        client.transport.pauseProducing()  # read nothing
        client.transport.write(
            goodRequest(x_fake_scenario="big", x_fake_bytes=str(64 << 20))
        )
        yield waitFor(lambda: upstream.connections, timeout=5)
        [(_, upstreamLost)] = upstream.connections
        started = reactor.seconds()
        yield waitFor(lambda: upstreamLost.called, timeout=15)
        self.assertLess(reactor.seconds() - started, 10)
        client.transport.resumeProducing()
        yield client.closed
        response = parseResponse(bytes(client.received))
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertFalse(response.complete)

    @inlineCallbacks
    def test_slowReaderNotCut(self) -> None:
        """
        A client that reads slowly but steadily (one read of at most 64 KiB
        every 30 ms, so about two seconds in all, well over the timeout)
        gets its whole 4 MiB answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = yield connect(self, proxy.port)
        client.transport.write(
            goodRequest(x_fake_scenario="big", x_fake_bytes=str(4 << 20))
        )
        calls = []

        def sip() -> None:
            # Reading resumes; the reactor reads once (at most 64 KiB)
            # before the next turn pauses it again.
            client.transport.resumeProducing()
            calls.append(reactor.callLater(0, pause))

        def pause() -> None:
            if client.closedAt is None:
                client.transport.pauseProducing()
                calls.append(reactor.callLater(0.03, sip))

        pause()
        started = reactor.seconds()
        yield client.closed
        for call in calls:
            if call.active():
                call.cancel()
        response = parseResponse(bytes(client.received))
        assert response is not None
        self.assertTrue(response.complete)
        self.assertEqual(len(response.body), 4 << 20)
        self.assertGreater(reactor.seconds() - started, 1.5)

# -*- test-case-name: tests.test_upstream_faults -*-
"""
Upstream faults: what the client gets when the upstream cannot be reached,
cannot be trusted, breaks off, or is slow; and what the upstream sees when
the client goes away.

Integration tests (loopback).
"""

from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.fakeupstream import Connections
from tests.support import (
    CANARY_KEY,
    RunningUpstream,
    connectRaw,
    makeTestPKI,
    parseRawResponse,
    serveOnLoopback,
    serverContext,
    startFakeUpstream,
    startProxy,
    tcpTransport,
    waitFor,
)

_BODY = b'{"model": "m", "input": "hi", "stream": true}'


def _request(*headerLines: bytes) -> bytes:
    """
    A streamed C{POST /v1/responses} with C{headerLines}, closing the
    connection after.
    """
    return (
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + b"".join(line + b"\r\n" for line in headerLines)
        + b"Content-Length: %d\r\n\r\n" % len(_BODY)
        + _BODY
    )


class _Exchange(TestCase):
    """
    Helpers shared by the fault tests.
    """

    async def exchange(
        self, port: int, *headerLines: bytes, timeout: float = 10
    ) -> bytes:
        """
        Send one request on a raw socket and wait (with a deadline) until
        the proxy closes the connection; return the raw bytes.
        """
        conn = await connectRaw(self, port)
        conn.send(_request(*headerLines))
        await waitFor(lambda: conn.closed.called, timeout=timeout)
        return bytes(conn.data)

    def assertUpstreamError(self, raw: bytes, status: int, code: str) -> None:
        """
        C{raw} is a complete JSON error answer with C{status} and C{code},
        and mentions neither the key nor C{Bearer}.
        """
        response = parseRawResponse(raw)
        self.assertEqual(response.status, status, raw)
        self.assertTrue(response.complete)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        error = json.loads(response.body)["error"]
        self.assertEqual(sorted(error), ["code", "message", "type"])
        self.assertEqual(error["code"], code)
        self.assertNotIn(CANARY_KEY.encode(), raw)


class UnreachableTests(_Exchange):
    """
    Failures before any upstream answer become JSON 502/504 answers.
    """

    async def test_connectionRefused(self) -> None:
        """
        A refused connection is a 502.
        """
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        raw = await self.exchange(proxy.port)
        self.assertUpstreamError(raw, 502, "upstream_refused")

    async def test_dnsFailure(self) -> None:
        """
        An upstream host name that does not resolve is a 502.
        """
        proxy = startProxy(self, "https://nonexistent.invalid/v1/responses")
        raw = await self.exchange(proxy.port, timeout=20)
        self.assertUpstreamError(raw, 502, "upstream_dns")

    async def test_connectTimeout(self) -> None:
        """
        An upstream whose SYNs go unanswered is a 504 after
        C{--connect-timeout}: a listening socket with backlog 0 whose
        accept queue is full drops new SYNs.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        proxy = startProxy(
            self,
            f"http://127.0.0.1:{address[1]}/v1/responses",
            "--connect-timeout",
            "1",
        )
        started = reactor.seconds()
        raw = await self.exchange(proxy.port)
        elapsed = reactor.seconds() - started
        self.assertUpstreamError(raw, 504, "upstream_timeout")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5)


class TLSVerificationTests(_Exchange):
    """
    An upstream whose certificate does not verify never sees the request
    (and so never sees the key): not one decrypted byte reaches it.
    """

    def setUp(self) -> None:
        self.pki = makeTestPKI(self.mktemp())

    async def tryUpstream(
        self, certificate: str, *args: str
    ) -> tuple[bytes, RunningUpstream]:
        """
        Serve the fake upstream over TLS with C{certificate}, forward one
        request and return the raw answer and the upstream.
        """
        upstream = startFakeUpstream(
            self, tls=serverContext(certificate, self.pki.serverKey)
        )
        proxy = startProxy(self, upstream.url, *args)
        raw = await self.exchange(proxy.port, b"x-fake-scenario: json")
        return raw, upstream

    async def test_trustedCertificate(self) -> None:
        """
        The control case: a certificate for 127.0.0.1 signed by the CA the
        proxy trusts works.
        """
        raw, upstream = await self.tryUpstream(
            self.pki.serverCert, "--upstream-ca", self.pki.caCert
        )
        self.assertEqual(parseRawResponse(raw).status, 200, raw)
        self.assertEqual(len(upstream.resource.requests), 1)
        self.assertGreater(upstream.resource.bytesReceived, 0)

    async def test_selfSignedAgainstCA(self) -> None:
        """
        A self-signed certificate, with the proxy trusting only the test
        CA, is a 502 and the upstream records nothing.
        """
        raw, upstream = await self.tryUpstream(
            self.pki.selfSignedCert, "--upstream-ca", self.pki.caCert
        )
        self.assertUpstreamError(raw, 502, "upstream_tls_error")
        self.assertEqual(upstream.resource.requests, [])
        self.assertEqual(upstream.resource.bytesReceived, 0)

    async def test_selfSignedAgainstSystemStore(self) -> None:
        """
        A self-signed certificate, with the proxy trusting the system
        store, is a 502 and the upstream records nothing.
        """
        raw, upstream = await self.tryUpstream(self.pki.selfSignedCert)
        self.assertUpstreamError(raw, 502, "upstream_tls_error")
        self.assertEqual(upstream.resource.requests, [])
        self.assertEqual(upstream.resource.bytesReceived, 0)

    async def test_wrongHostName(self) -> None:
        """
        A CA-signed certificate for another host name is a 502 and the
        upstream records nothing.
        """
        raw, upstream = await self.tryUpstream(
            self.pki.wrongHostCert, "--upstream-ca", self.pki.caCert
        )
        self.assertUpstreamError(raw, 502, "upstream_tls_error")
        self.assertEqual(upstream.resource.requests, [])
        self.assertEqual(upstream.resource.bytesReceived, 0)


class BrokenStreamTests(_Exchange):
    """
    Once the answer has started, an upstream failure aborts the client
    connection, so a truncated body never looks complete.
    """

    async def test_upstreamDropsMidStream(self) -> None:
        """
        The upstream aborts after three events: the client's connection is
        closed at once, and its chunked body lacks the terminating chunk.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        raw = await self.exchange(
            proxy.port, b"x-fake-scenario: drop", b"x-fake-interval-ms: 20", timeout=5
        )
        response = parseRawResponse(raw)
        self.assertEqual(response.status, 200)
        self.assertTrue(response.chunked)
        self.assertFalse(response.complete)
        self.assertFalse(raw.endswith(b"0\r\n\r\n"))
        # The upstream aborts right after its third event (an event still
        # in its socket buffer may be lost with the reset).
        self.assertIn(response.body.count(b"\n\n"), (1, 2, 3))

    async def test_upstreamDropsBeforeAnswer(self) -> None:
        """
        An upstream that aborts before sending its status line is a 502:
        nothing was relayed yet, so the client can be told properly.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        raw = await self.exchange(
            proxy.port,
            b"x-fake-scenario: drop",
            b"x-fake-events-before-drop: 0",
            timeout=5,
        )
        self.assertUpstreamError(raw, 502, "upstream_unavailable")
        self.assertEqual(len(upstream.resource.requests), 1)


class ClientGoneTests(TestCase):
    """
    When the client goes away, the upstream connection is closed promptly.
    """

    async def test_clientDisconnectsMidStream(self) -> None:
        """
        A client that disconnects after the first event makes the proxy
        close the upstream connection within 1 s, as seen by the upstream.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = await connectRaw(self, proxy.port)
        conn.send(
            _request(
                b"x-fake-scenario: sse",
                b"x-fake-events: 100",
                b"x-fake-interval-ms: 50",
            )
        )
        await conn.waitForBytes(b"event: response.created")
        [stream] = upstream.resource.streams
        conn.abort()
        gone = reactor.seconds()
        await waitFor(lambda: stream.lostAt is not None, timeout=5)
        assert stream.lostAt is not None
        self.assertLess(stream.lostAt - gone, 1.0)
        self.assertLess(stream.sent, 100)

    async def test_clientDisconnectsBeforeHeaders(self) -> None:
        """
        A client that disconnects while the upstream is still silent makes
        the proxy cancel the upstream request within 1 s.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = await connectRaw(self, proxy.port)
        conn.send(_request(b"x-fake-scenario: silent", b"x-fake-delay-ms: 10000"))
        await waitFor(lambda: upstream.resource.streams)
        [stream] = upstream.resource.streams
        conn.abort()
        gone = reactor.seconds()
        await waitFor(lambda: stream.lostAt is not None, timeout=5)
        assert stream.lostAt is not None
        self.assertLess(stream.lostAt - gone, 1.0)


class PooledClientGoneTests(_Exchange):
    """
    The same, when the upstream connection is a reused (pooled) one.
    """

    async def test_clientDisconnectsBeforeHeadersPooled(self) -> None:
        """
        After one exchange left a pooled upstream connection, a client that
        disconnects while the upstream is silent still makes the proxy
        close that connection within 1 s.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = await connectRaw(self, proxy.port)
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: json\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        await conn.waitForResponse()
        self.assertEqual(len(upstream.connections), 1)
        conn.send(_request(b"x-fake-scenario: silent", b"x-fake-delay-ms: 10000"))
        await waitFor(lambda: upstream.resource.streams)
        self.assertEqual(len(upstream.connections), 1, "connection not reused")
        [stream] = upstream.resource.streams
        conn.abort()
        gone = reactor.seconds()
        await waitFor(lambda: stream.lostAt is not None, timeout=5)
        assert stream.lostAt is not None
        self.assertLess(stream.lostAt - gone, 1.0)


class SlowUpstreamTests(_Exchange):
    """
    The request timeout bounds the client, never the upstream.
    """

    async def test_longSilenceNotCutOff(self) -> None:
        """
        With C{--request-timeout 1}, an upstream silent for 3 s before its
        first byte, and another silent for 3 s after its headers, both
        complete normally.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        # Both at once.
        before = Deferred.fromCoroutine(
            self.exchange(
                proxy.port, b"x-fake-scenario: silent", b"x-fake-delay-ms: 3000"
            )
        )
        after = Deferred.fromCoroutine(
            self.exchange(
                proxy.port, b"x-fake-scenario: stall", b"x-fake-delay-ms: 3000"
            )
        )
        raw = await before
        response = parseRawResponse(raw)
        self.assertEqual(response.status, 200, raw)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b'{"late": true}')
        raw = await after
        response = parseRawResponse(raw)
        self.assertEqual(response.status, 200, raw)
        self.assertTrue(response.complete)
        self.assertIn(b"event: response.completed", response.body)


class AbortSignalTests(TestCase):
    """
    How the client learns that a relayed body was cut short.
    """

    async def test_http10ClientSeesReset(self) -> None:
        """
        An HTTP/1.0 client gets a close-delimited body, where a clean close
        would look complete; when the upstream breaks off, its connection
        is reset instead of closed cleanly.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = await connectRaw(self, proxy.port)
        conn.send(
            b"POST /v1/responses HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: drop\r\n"
            b"x-fake-interval-ms: 20\r\nContent-Length: 2\r\n\r\n{}"
        )
        await waitFor(lambda: conn.closed.called, timeout=5)
        assert conn.lostReason is not None
        self.assertFalse(conn.lostReason.check(ConnectionDone), conn.lostReason)


class InternalErrorTests(_Exchange):
    """
    A bug while relaying never leaves the client hanging.
    """

    async def test_failureBeforeHeadersIs502(self) -> None:
        """
        If handling the upstream's answer raises before anything was sent
        to the client, the client gets a JSON 502, the error is logged and
        the upstream connection is closed.
        """
        from responses_proxy import forward

        def broken(upstream: object, outgoing: object) -> None:
            raise RuntimeError("simulated bug")

        self.patch(forward, "mirrorResponseHeaders", broken)
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        raw = await self.exchange(
            proxy.port,
            b"x-fake-scenario: sse",
            b"x-fake-events: 100",
            b"x-fake-interval-ms: 50",
            timeout=5,
        )
        self.assertUpstreamError(raw, 502, "proxy_error")
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(logged.value), "simulated bug")
        # The unwanted upstream answer is not left streaming.
        [stream] = upstream.resource.streams
        await waitFor(lambda: stream.lostAt is not None, timeout=5)


class _CannedUpstream(Protocol):
    """
    Answers the first complete request with canned bytes, then closes.
    """

    def __init__(self, answer: bytes, connections: Connections) -> None:
        self.answer = answer
        self.buffer = b""
        self._connections = connections
        self._lost: Deferred[None] | None = None

    def connectionMade(self) -> None:
        self._lost = self._connections.opened(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(_BODY):
            transport = tcpTransport(self)
            transport.write(self.answer)
            transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._lost is not None:
            self._lost.callback(None)


class RawUpstreamTests(_Exchange):
    """
    Upstream answers twisted.web would never produce.
    """

    def startCanned(self, answer: bytes) -> int:
        """
        Listen on loopback with a L{_CannedUpstream}; return the port.
        """
        connections = Connections()
        factory = Factory.forProtocol(lambda: _CannedUpstream(answer, connections))
        return serveOnLoopback(self, factory, connections)

    async def test_closeDelimitedBody(self) -> None:
        """
        An HTTP/1.0 answer whose body ends when the upstream closes is
        relayed complete (the close is its proper end).
        """
        port = self.startCanned(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
        )
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        raw = await self.exchange(proxy.port, timeout=5)
        response = parseRawResponse(raw)
        self.assertEqual(response.status, 200, raw)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"all of it")

    async def test_shortContentLength(self) -> None:
        """
        An answer that closes before its Content-Length is complete makes
        the proxy reset the client connection: whatever part of the answer
        got out, it never looks complete.
        """
        port = self.startCanned(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
        )
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        conn = await connectRaw(self, proxy.port)
        conn.send(_request())
        await waitFor(lambda: conn.closed.called, timeout=5)
        assert conn.lostReason is not None
        self.assertFalse(conn.lostReason.check(ConnectionDone), conn.lostReason)
        if conn.data:
            self.assertFalse(parseRawResponse(bytes(conn.data)).complete)

    async def test_garbageAnswer(self) -> None:
        """
        An answer that is not HTTP is a 502.
        """
        port = self.startCanned(b"SSH-2.0-OpenSSH_9.6\r\n")
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        raw = await self.exchange(proxy.port, timeout=5)
        self.assertUpstreamError(raw, 502, "upstream_unavailable")

    async def test_statusLineMirrored(self) -> None:
        """
        An unusual status and reason phrase reach the client as sent.
        """
        port = self.startCanned(
            b"HTTP/1.1 299 Quite Fine\r\nContent-Length: 2\r\n\r\nok"
        )
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        raw = await self.exchange(proxy.port, timeout=5)
        self.assertTrue(raw.startswith(b"HTTP/1.1 299 Quite Fine\r\n"), raw)
        self.assertEqual(parseRawResponse(raw).body, b"ok")

    async def test_noContent(self) -> None:
        """
        A 204 without a body is relayed as a 204 without a body.
        """
        port = self.startCanned(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        proxy = startProxy(self, f"http://127.0.0.1:{port}/v1/responses")
        raw = await self.exchange(proxy.port, timeout=5)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 204 "), raw)
        self.assertIn(b"X-A: b", head)
        self.assertEqual(body, b"")

# -*- test-case-name: tests.test_upstreamconn -*-
"""
Unit tests (in memory) for L{responses_proxy.upstreamconn} (the answer's
head watched, stale reused connections told apart, the pool honouring the
upstream's keep-alive) and for L{UpstreamClient.request}'s single retry.

Connections are L{UpstreamProtocol}s on a L{StringTransport}: the test
reads the request they write and plays the upstream's side, including
closing the connection. The pool runs on a L{MemoryReactorClock}. The
same over real sockets, against a misbehaving upstream, is in
C{tests.test_upstream_faults}.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import Request, ResponseNeverReceived
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from responses_proxy.body import BytesBodyProducer
from responses_proxy.defaults import MAX_HEADER_BYTES, MAX_HEADERS
from responses_proxy.upstream import UpstreamClient
from responses_proxy.upstreamconn import (
    HeadWatcher,
    StaleConnection,
    UpstreamAnswerInvalid,
    UpstreamPool,
    UpstreamProtocol,
    idleLimit,
)
from tests.memory import produced

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class HeadWatcherTests(SynchronousTestCase):
    """
    L{HeadWatcher} follows the answer's head and says when it breaks a limit.
    """

    def test_completeHead(self) -> None:
        """
        A well-formed head is complete, with nothing to refuse.
        """
        watcher = HeadWatcher()
        self.assertIsNone(watcher.feed(OK))
        self.assertTrue(watcher.complete)
        self.assertIsNone(watcher.keepAliveTimeout)

    def test_splitAcrossFeeds(self) -> None:
        """
        A head arriving a byte at a time is complete only with its last byte.
        """
        watcher = HeadWatcher()
        head = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\n\r\n"
        for index in range(len(head) - 1):
            self.assertIsNone(watcher.feed(head[index : index + 1]))
            self.assertFalse(watcher.complete)
        self.assertIsNone(watcher.feed(head[-1:] + b"body"))
        self.assertTrue(watcher.complete)
        self.assertEqual(watcher.keepAliveTimeout, 5.0)

    def test_bareLFHead(self) -> None:
        """
        A head ended by bare LFs (which Twisted's parser accepts) is complete.
        """
        watcher = HeadWatcher()
        self.assertIsNone(watcher.feed(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"))
        self.assertTrue(watcher.complete)

    def test_tooManyBytes(self) -> None:
        """
        A head over the byte limit is refused, before its end arrives.
        """
        watcher = HeadWatcher(maxBytes=100)
        self.assertIsNone(watcher.feed(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70))
        problem = watcher.feed(b"a" * 20)
        self.assertEqual(problem, "the answer's head is larger than 100 bytes")

    def test_tooManyBytesComplete(self) -> None:
        """
        A complete head over the byte limit is refused too.
        """
        watcher = HeadWatcher(maxBytes=30)
        self.assertEqual(
            watcher.feed(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 20 + b"\r\n\r\n"),
            "the answer's head is larger than 30 bytes",
        )

    def test_defaultLimits(self) -> None:
        """
        By default the limits are the server side's: 16 KiB, 500 lines.
        """
        watcher = HeadWatcher()
        self.assertIsNotNone(
            watcher.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEADER_BYTES)
        )
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        self.assertEqual(
            HeadWatcher().feed(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n"),
            f"the answer has more than {MAX_HEADERS} header lines",
        )

    def test_headerLines(self) -> None:
        """
        Exactly the line limit is accepted, one more refused.
        """
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(3))
        self.assertIsNone(
            HeadWatcher(maxHeaders=3).feed(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
        )
        self.assertEqual(
            HeadWatcher(maxHeaders=2).feed(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n"),
            "the answer has more than 2 header lines",
        )

    def test_interimThenFinal(self) -> None:
        """
        A 1xx answer is skipped: the head is complete with the final one,
        whose C{Keep-Alive} counts.
        """
        watcher = HeadWatcher()
        self.assertIsNone(
            watcher.feed(b"HTTP/1.1 100 Continue\r\nKeep-Alive: timeout=1\r\n\r\n")
        )
        self.assertFalse(watcher.complete)
        self.assertIsNone(
            watcher.feed(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=9\r\n\r\n")
        )
        self.assertTrue(watcher.complete)
        self.assertEqual(watcher.keepAliveTimeout, 9.0)

    def test_interimAndFinalTogether(self) -> None:
        """
        A 1xx and the final head in one piece.
        """
        watcher = HeadWatcher()
        self.assertIsNone(watcher.feed(b"HTTP/1.1 103 Early Hints\r\n\r\n" + OK))
        self.assertTrue(watcher.complete)

    def test_statusOutOfRange(self) -> None:
        """
        A status outside 100-599 is refused.
        """
        for status in (b"000", b"099", b"600", b"999"):
            self.assertEqual(
                HeadWatcher().feed(b"HTTP/1.1 " + status + b" X\r\n\r\n"),
                f"the upstream answered with status {int(status)}, outside 100-599",
            )

    def test_statusInRange(self) -> None:
        """
        The ends of the range are accepted.
        """
        for status in (b"200", b"599"):
            watcher = HeadWatcher()
            self.assertIsNone(watcher.feed(b"HTTP/1.1 " + status + b" X\r\n\r\n"))
            self.assertTrue(watcher.complete)

    def test_noStatus(self) -> None:
        """
        A status line without a number is left to Twisted's parser.
        """
        self.assertIsNone(HeadWatcher().feed(b"HTTP/1.1 abc\r\n\r\n"))

    def test_keepAliveTimeout(self) -> None:
        """
        C{timeout=N} of C{Keep-Alive} is found among its parameters, in any
        case and spacing.
        """
        for header, timeout in (
            (b"Keep-Alive: timeout=5", 5.0),
            (b"keep-alive: max=100, timeout=7", 7.0),
            (b"KEEP-ALIVE:timeout = 30", 30.0),
            (b"X-Keep-Alive: timeout=3", None),
            (b"Keep-Alive: max=5", None),
        ):
            watcher = HeadWatcher()
            watcher.feed(b"HTTP/1.1 200 OK\r\n" + header + b"\r\n\r\n")
            self.assertEqual(watcher.keepAliveTimeout, timeout, header)

    def test_idleLimit(self) -> None:
        """
        The pool keeps a connection idle a second less than the upstream
        would, or half as long for short timeouts.
        """
        self.assertEqual(
            [idleLimit(t) for t in (1.0, 2.0, 3.0, 5.0, 60.0)],
            [0.5, 1.0, 2.0, 4.0, 59.0],
        )


def _request() -> Request:
    return Request(
        b"POST",
        b"/v1/responses",
        Headers({b"host": [b"upstream.invalid"]}),
        BytesBodyProducer(b"{}"),
        persistent=True,
    )


class _Connection:
    """
    An L{UpstreamProtocol} on a L{StringTransport}.
    """

    def __init__(self) -> None:
        self.idle: list[UpstreamProtocol] = []
        self.protocol = UpstreamProtocol(self.idle.append)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def request(self) -> Deferred[IResponse]:
        """
        Send a request on the connection.
        """
        return self.protocol.request(_request())

    def served(self) -> None:
        """
        One complete exchange: the connection is reused from now on.
        """
        response = self.testResult(self.request(), OK)
        response.deliverBody(_Ignore())

    def testResult(self, d: Deferred[IResponse], answer: bytes) -> Any:
        """
        Answer C{answer} and return what C{d} fired with.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        self.protocol.dataReceived(answer)
        [result] = results
        return result

    def closedByUpstream(self, reason: Exception | None = None) -> None:
        """
        The upstream closes the connection.
        """
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class _Ignore:
    """
    A body protocol that keeps nothing.
    """

    def makeConnection(self, transport: object) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: object) -> None:
        pass


class UpstreamProtocolTests(SynchronousTestCase):
    """
    L{UpstreamProtocol}: answers held to the limits, and stale reused
    connections recognised.
    """

    def test_headTooLarge(self) -> None:
        """
        A head over the limit aborts the connection, nothing of it is
        parsed, and the request fails with L{UpstreamAnswerInvalid}.
        """
        connection = _Connection()
        d = connection.request()
        connection.protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * MAX_HEADER_BYTES
        )
        self.assertTrue(connection.transport.disconnected)
        self.assertNoResult(d)
        connection.protocol.dataReceived(b"more")
        connection.closedByUpstream(ConnectionLost())
        failure = self.failureResultOf(d, UpstreamAnswerInvalid)
        self.assertEqual(
            str(failure.value),
            f"the answer's head is larger than {MAX_HEADER_BYTES} bytes",
        )

    def test_statusRefused(self) -> None:
        """
        A status outside 100-599 fails the request likewise.
        """
        connection = _Connection()
        d = connection.request()
        connection.protocol.dataReceived(
            b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(connection.transport.disconnected)
        connection.closedByUpstream(ConnectionLost())
        self.failureResultOf(d, UpstreamAnswerInvalid)

    def test_keepAliveRemembered(self) -> None:
        """
        The final head's C{Keep-Alive: timeout=N} is the connection's
        C{idleTimeout}, for the pool.
        """
        connection = _Connection()
        response = connection.testResult(
            connection.request(),
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(connection.protocol.idleTimeout, 5.0)
        self.assertEqual(connection.idle, [connection.protocol])

    def test_reusedClosedBeforeAnswer(self) -> None:
        """
        A reused connection closed before any byte of the answer: the
        request fails with L{StaleConnection} (it may be sent again), which
        keeps what Twisted reported.
        """
        connection = _Connection()
        connection.served()
        d = connection.request()
        connection.closedByUpstream()
        failure = self.failureResultOf(d, StaleConnection)
        self.assertTrue(failure.value.failure.check(ResponseNeverReceived))

    def test_reusedLostBeforeAnswer(self) -> None:
        """
        The same for a connection lost (reset) rather than closed.
        """
        connection = _Connection()
        connection.served()
        d = connection.request()
        connection.closedByUpstream(ConnectionLost())
        self.failureResultOf(d, StaleConnection)

    def test_freshClosedBeforeAnswer(self) -> None:
        """
        A fresh connection closed before answering is not stale: the
        upstream saw the request on a connection it had just accepted.
        """
        connection = _Connection()
        d = connection.request()
        connection.closedByUpstream()
        self.failureResultOf(d, ResponseNeverReceived)

    def test_reusedClosedAfterAnswerBytes(self) -> None:
        """
        A reused connection closed after some of the answer arrived is not
        stale: the upstream had begun answering.
        """
        connection = _Connection()
        connection.served()
        d = connection.request()
        connection.protocol.dataReceived(b"HTTP/1.1 2")
        connection.closedByUpstream()
        failure = self.failureResultOf(d)
        self.assertFalse(failure.check(StaleConnection))
        self.assertTrue(failure.check(ResponseNeverReceived, ResponseFailed))

    def test_reusedCancelled(self) -> None:
        """
        A request cancelled on a reused connection is not stale either.
        """
        connection = _Connection()
        connection.served()
        d = connection.request()
        d.cancel()
        connection.closedByUpstream(ConnectionLost())
        failure = self.failureResultOf(d)
        self.assertFalse(failure.check(StaleConnection))


class _Endpoint:
    """
    An endpoint whose connection attempts never complete.
    """

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        self.attempts += 1
        return Deferred()


class UpstreamPoolTests(SynchronousTestCase):
    """
    L{UpstreamPool._putConnection}: the upstream's keep-alive honoured, and
    closing connections never pooled.
    """

    key = ("https", b"upstream.invalid", 443)

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, persistent=True)
        # As makeUpstreamClient sets them.
        self.pool.cachedConnectionTimeout = 20
        self.pool.retryAutomatically = False
        self.endpoint = _Endpoint()

    def put(self, connection: UpstreamProtocol) -> None:
        """
        Give C{connection} back to the pool, as it does when idle.
        """
        self.pool._putConnection(self.key, connection)

    def pooled(self) -> UpstreamProtocol | None:
        """
        The connection the pool hands out for the key, if it has one.
        """
        d = self.pool.getConnection(self.key, self.endpoint)  # type: ignore[arg-type]
        if not d.called:
            return None
        connection = self.successResultOf(d)
        assert isinstance(connection, UpstreamProtocol)
        return connection

    def test_idleTimeoutHonoured(self) -> None:
        """
        An upstream that keeps idle connections 5 s: pooled for 4 s, then
        closed; the pool's own timeout is unchanged.
        """
        connection = _Connection()
        connection.protocol.idleTimeout = 5
        self.put(connection.protocol)
        self.assertEqual(self.pool.cachedConnectionTimeout, 20)
        self.assertEqual(
            [call.getTime() for call in self.reactor.getDelayedCalls()], [4.0]
        )
        self.reactor.advance(4)
        self.assertTrue(connection.transport.disconnecting)
        self.assertIsNone(self.pooled())

    def test_reusedWithinIdleTimeout(self) -> None:
        """
        Within that time, the connection is handed out again.
        """
        connection = _Connection()
        connection.protocol.idleTimeout = 5
        self.put(connection.protocol)
        self.reactor.advance(3.9)
        self.assertIs(self.pooled(), connection.protocol)
        self.assertEqual(self.endpoint.attempts, 0)

    def test_longerUpstreamTimeout(self) -> None:
        """
        An upstream timeout longer than the pool's: the pool's applies.
        """
        connection = _Connection()
        connection.protocol.idleTimeout = 100
        self.put(connection.protocol)
        self.assertEqual(
            [call.getTime() for call in self.reactor.getDelayedCalls()], [20.0]
        )

    def test_noUpstreamTimeout(self) -> None:
        """
        Without a C{Keep-Alive} timeout, the pool's applies.
        """
        self.put(_Connection().protocol)
        self.assertEqual(
            [call.getTime() for call in self.reactor.getDelayedCalls()], [20.0]
        )

    def test_disconnectingDropped(self) -> None:
        """
        A connection already told to close is aborted, not pooled.
        """
        connection = _Connection()
        connection.transport.loseConnection()
        self.put(connection.protocol)
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.pooled())
        self.assertEqual(self.endpoint.attempts, 1)

    def test_disconnectedDropped(self) -> None:
        """
        A connection without a transport any more is dropped.
        """
        self.put(UpstreamProtocol())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.pooled())


class _Agent:
    """
    An agent whose requests the test answers.
    """

    def __init__(self) -> None:
        self.requests: list[
            tuple[bytes, bytes, Headers, bytes, Deferred[IResponse]]
        ] = []
        self.cancelled = 0

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: Any = None,
    ) -> Deferred[IResponse]:
        def cancel(d: Deferred[IResponse]) -> None:
            self.cancelled += 1

        d: Deferred[IResponse] = Deferred(cancel)
        assert headers is not None
        self.requests.append((method, uri, headers, produced(bodyProducer), d))
        return d

    def fail(self, reason: Exception, index: int = -1) -> None:
        """
        The request C{index} fails with C{reason}.
        """
        self.requests[index][4].errback(Failure(reason))


def _stale() -> StaleConnection:
    return StaleConnection(Failure(ResponseNeverReceived([Failure(ConnectionDone())])))


class UpstreamClientRetryTests(SynchronousTestCase):
    """
    L{UpstreamClient.request} retries once, on a fresh connection, exactly
    when a reused connection turned out stale.
    """

    def setUp(self) -> None:
        self.pooled = _Agent()
        self.fresh = _Agent()
        self.pool = UpstreamPool(MemoryReactorClock())
        self.client = UpstreamClient(self.pooled, self.fresh, self.pool)  # type: ignore[arg-type]
        self.headers = Headers({b"authorization": [b"Bearer sk-x"]})
        self.body = io.BytesIO(b'{"input": "hi"}')
        self.body.seek(5)

    def request(self) -> Deferred[IResponse]:
        """
        Ask for one request.
        """
        return self.client.request(
            b"https://u.invalid/v1/responses", self.headers, self.body
        )

    def test_firstAttempt(self) -> None:
        """
        The first attempt goes through the pooled agent: a POST of the
        whole body, wherever its file was positioned.
        """
        d = self.request()
        [(method, uri, headers, body, _)] = self.pooled.requests
        self.assertEqual(
            (method, uri, headers, body),
            (
                b"POST",
                b"https://u.invalid/v1/responses",
                self.headers,
                b'{"input": "hi"}',
            ),
        )
        self.assertEqual(self.fresh.requests, [])
        self.assertNoResult(d)

    def test_retriedOnStale(self) -> None:
        """
        A L{StaleConnection} is retried once through the fresh agent with
        the same request and body; its answer is the result.
        """
        d = self.request()
        self.pooled.fail(_stale())
        [(method, uri, headers, body, retry)] = self.fresh.requests
        self.assertEqual(
            (method, uri, headers, body),
            (
                b"POST",
                b"https://u.invalid/v1/responses",
                self.headers,
                b'{"input": "hi"}',
            ),
        )
        answer: Any = object()
        retry.callback(answer)
        self.assertIs(self.successResultOf(d), answer)
        self.assertEqual(len(self.pooled.requests), 1)

    def test_retryOnlyOnce(self) -> None:
        """
        A retry that fails, even as stale, is not retried again.
        """
        d = self.request()
        self.pooled.fail(_stale())
        self.fresh.fail(_stale())
        self.failureResultOf(d, StaleConnection)
        self.assertEqual((len(self.pooled.requests), len(self.fresh.requests)), (1, 1))

    def test_otherFailuresNotRetried(self) -> None:
        """
        Any other failure is the result, with no retry.
        """
        for reason in (
            ConnectionRefusedError(),
            ResponseNeverReceived([Failure(ConnectionDone())]),
            ResponseFailed([Failure(ConnectionLost())]),
            UpstreamAnswerInvalid("the answer's head is larger than 16384 bytes"),
        ):
            self.setUp()
            d = self.request()
            self.pooled.fail(reason)
            self.failureResultOf(d, type(reason))
            self.assertEqual(self.fresh.requests, [], reason)

    def test_cancelFirst(self) -> None:
        """
        Cancelling during the first attempt cancels it, and nothing is retried.
        """
        d = self.request()
        d.cancel()
        self.assertEqual(self.pooled.cancelled, 1)
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.fresh.requests, [])

    def test_cancelRetry(self) -> None:
        """
        Cancelling during the retry cancels the retry.
        """
        d = self.request()
        self.pooled.fail(_stale())
        d.cancel()
        self.assertEqual(self.fresh.cancelled, 1)
        self.failureResultOf(d, CancelledError)

    def test_close(self) -> None:
        """
        C{close} closes the pool's idle connections.
        """
        connection = _Connection()
        self.pool._putConnection(("https", b"u", 443), connection.protocol)
        d = self.client.close()
        self.assertTrue(connection.transport.disconnecting)
        self.assertNoResult(d)
        connection.closedByUpstream()
        self.successResultOf(d)

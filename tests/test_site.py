# -*- test-case-name: tests.test_site -*-
"""
Unit tests (in memory) for L{responses_proxy.site},
L{responses_proxy.channel} and L{responses_proxy.deadlines}: the request
deadline, the stalled-reader cut, the body limit, strict parsing of the
head, the JSON answers the proxy gives while reading, persistence, and
draining.

Each test drives a L{ProxySite} connection on a L{StringTransport} with a
L{Clock}; where forwarding matters, behind the real resource tree and
L{Forwarder} with an upstream whose answers the test gives
(L{tests.memory}). The same behaviour over real sockets is in
C{tests.test_limits}, C{tests.test_hostile} and C{tests.test_slowclients}.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from responses_proxy.defaults import MAX_HEADER_BYTES, MAX_HEADERS
from responses_proxy.record import Caller
from responses_proxy.site import ProxySite
from tests.memory import (
    Connection,
    InMemoryProxy,
    httpRequest,
    inMemoryProxy,
)
from tests.support import RawResponse


def assertJSONError(
    testCase: SynchronousTestCase, response: RawResponse, status: int, code: str
) -> dict[str, str]:
    """
    C{response} is the proxy's own JSON error C{status} with C{code}.
    """
    testCase.assertEqual(response.status, status, response)
    testCase.assertEqual(response.header(b"content-type"), [b"application/json"])
    testCase.assertTrue(response.complete, response)
    error: dict[str, str] = json.loads(response.body)["error"]
    testCase.assertEqual(sorted(error), ["code", "message", "type"])
    testCase.assertEqual(error["code"], code)
    return error


class DeadlineTests(SynchronousTestCase):
    """
    A request must arrive completely within C{requestTimeout} seconds of the
    connection (or of the previous answer); once it has, the clock stops.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy(requestTimeout=1)

    def assertCutAtDeadline(
        self, client: Connection, elapsed: float = 0.0, forwarded: int = 0
    ) -> None:
        """
        C{client}, C{elapsed} seconds into its deadline, is still open just
        before the deadline and aborted at it; only C{forwarded} requests
        reached the upstream.
        """
        self.proxy.clock.advance(1 - elapsed - 0.001)
        self.assertTrue(client.open)
        self.proxy.clock.advance(0.001)
        self.assertTrue(client.aborted)
        self.assertEqual(len(self.proxy.upstream.calls), forwarded)

    def test_silentConnection(self) -> None:
        """
        A client that connects and sends nothing is aborted at the deadline.
        """
        self.assertCutAtDeadline(self.proxy.connect(self))

    def test_unfinishedHead(self) -> None:
        """
        A client that never finishes its request head is aborted at the
        deadline.
        """
        client = self.proxy.connect(self)
        client.send(b"POST /v1/responses HTTP/1.1\r\nHo")
        self.assertCutAtDeadline(client)

    def test_unfinishedBody(self) -> None:
        """
        A client that sends the head but only part of the announced body is
        aborted at the deadline, and nothing is forwarded.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest(body=b"x" * 100)[:-90])
        self.assertCutAtDeadline(client)

    def test_trickleDoesNotExtendDeadline(self) -> None:
        """
        One byte every 200 ms does not keep a request alive: the deadline
        counts from the connection, not from the last byte.
        """
        client = self.proxy.connect(self)
        request = httpRequest()
        for index in range(4):
            client.send(request[index : index + 1])
            self.proxy.clock.advance(0.2)
        client.send(request[4:5])
        self.assertCutAtDeadline(client, elapsed=0.8)

    def test_idleKeepAliveClosed(self) -> None:
        """
        After a complete exchange on a keep-alive connection, the idle
        connection is aborted one timeout after the answer.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest())
        self.proxy.clock.advance(5)
        self.proxy.upstream.calls[0].respond(200, b"{}")
        self.assertEqual(client.response().status, 200)
        self.assertCutAtDeadline(client, forwarded=1)

    def test_keepAliveSecondRequestServed(self) -> None:
        """
        A second request sent on a kept-alive connection within the timeout
        of the first answer (but later than one timeout after the
        connection) is served: the deadline restarted with the answer.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest())
        self.proxy.clock.advance(0.5)
        self.proxy.upstream.calls[0].respond(200, b"{}")
        self.proxy.clock.advance(0.9)
        client.send(httpRequest())
        self.assertEqual(len(self.proxy.upstream.calls), 2)
        self.proxy.upstream.calls[1].respond(200, b"{}")
        self.assertEqual([r.status for r in client.responses()], [200, 200])
        self.assertTrue(client.open)

    def test_completeRequestStopsClock(self) -> None:
        """
        Once the request is complete, no deadline applies while the upstream
        is silent before its headers: the answer arrives, complete, long
        after the timeout.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest(close=True))
        self.assertEqual(self.proxy.clock.getDelayedCalls(), [])
        self.proxy.clock.advance(300)
        self.assertTrue(client.open)
        self.proxy.upstream.calls[0].respond(200, b'{"late": true}')
        response = client.response()
        self.assertEqual((response.status, response.body), (200, b'{"late": true}'))
        self.assertFalse(client.aborted)

    def test_stalledStreamNotCut(self) -> None:
        """
        An answer that goes quiet after its headers is relayed complete,
        however long the silence.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest(close=True))
        answer = self.proxy.upstream.calls[0].respond(
            200, headers={b"content-type": [b"text/event-stream"]}
        )
        answer.write(b"event: one\n\n")
        self.proxy.clock.advance(300)
        answer.write(b"event: two\n\n")
        answer.finish()
        response = client.response()
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"event: one\n\nevent: two\n\n")
        self.assertFalse(client.aborted)

    def test_refusalCancelsDeadline(self) -> None:
        """
        A request refused while being read leaves no deadline behind.
        """
        client = self.proxy.connect(self)
        client.send(b"GET / HTTP/1.1\nHost: 127.0.0.1\n\n")
        self.assertEqual(client.response().status, 400)
        self.assertEqual(self.proxy.clock.getDelayedCalls(), [])

    def test_noTimeout(self) -> None:
        """
        A site with no request timeout sets no deadline at all.
        """
        proxy = inMemoryProxy(requestTimeout=0)
        client = proxy.connect(self)
        client.send(b"POST /v1/responses HTTP/1.1\r\nHo")
        self.assertEqual(proxy.clock.getDelayedCalls(), [])
        client.channel.pauseProducing()
        self.assertEqual(proxy.clock.getDelayedCalls(), [])


class StalledReaderTests(SynchronousTestCase):
    """
    A client that stops reading its answer (the transport pauses the channel
    and never resumes it) is cut after C{requestTimeout}; one that reads
    slowly but steadily is not.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy(requestTimeout=1)
        self.client = self.proxy.connect(self)
        self.client.send(httpRequest())
        self.answer = self.proxy.upstream.calls[0].respond(200)
        self.answer.write(b"x" * 1000)

    def test_stalledReaderCut(self) -> None:
        """
        Paused for a whole timeout: the client connection is aborted, and
        the upstream body stops.
        """
        self.client.channel.pauseProducing()
        self.assertEqual(self.answer.transport.producerState, "paused")
        self.proxy.clock.advance(0.999)
        self.assertTrue(self.client.open)
        self.proxy.clock.advance(0.001)
        self.assertTrue(self.client.aborted)
        self.assertEqual(self.answer.transport.producerState, "stopped")
        self.assertEqual(self.proxy.records[0].outcome, "client_gone")

    def test_slowReaderNotCut(self) -> None:
        """
        A reader that drains its socket within each timeout is never cut,
        however long the answer takes in all.
        """
        for _ in range(10):
            self.client.channel.pauseProducing()
            self.proxy.clock.advance(0.9)
            self.client.channel.resumeProducing()
            self.answer.write(b"x" * 1000)
        self.answer.finish()
        self.assertFalse(self.client.aborted)
        response = self.client.response()
        self.assertTrue(response.complete)
        self.assertEqual(len(response.body), 11000)

    def test_pauseTwiceOneDeadline(self) -> None:
        """
        A second pause before a resume does not restart the stall deadline.
        """
        self.client.channel.pauseProducing()
        self.proxy.clock.advance(0.6)
        self.client.channel.pauseProducing()
        self.proxy.clock.advance(0.4)
        self.assertTrue(self.client.aborted)


class BodyLimitTests(SynchronousTestCase):
    """
    A body over C{maxRequestBody} gets a JSON 413 and the connection is
    closed, before anything is forwarded.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy(maxRequestBody=10)
        self.client = self.proxy.connect(self)

    def assertTooLarge(self) -> None:
        """
        The client got the 413 and was disconnected; nothing went upstream.
        """
        error = assertJSONError(self, self.client.response(), 413, "request_too_large")
        self.assertIn("10 bytes", error["message"])
        self.assertEqual(self.client.response().header(b"connection"), [b"close"])
        self.assertFalse(self.client.open)
        self.assertEqual(self.proxy.upstream.calls, [])

    def test_announcedLength(self) -> None:
        """
        A C{Content-Length} over the limit is refused as soon as the head is
        in, without waiting for a byte of the body.
        """
        self.client.send(httpRequest(body=b"x" * 11)[:-11])
        self.assertTooLarge()

    def test_announcedLengthWithExpect(self) -> None:
        """
        A client that asked C{Expect: 100-continue} gets the 413 and no
        C{100 Continue} before it: it must not send the body.
        """
        head = httpRequest(body=b"x" * 11, headers=[(b"Expect", b"100-continue")])
        self.client.send(head[:-11])
        self.assertTrue(self.client.received.startswith(b"HTTP/1.1 413 "))
        self.assertTooLarge()

    def test_lengthAtLimit(self) -> None:
        """
        A body of exactly the limit is forwarded.
        """
        self.client.send(httpRequest(body=b"x" * 10))
        [call] = self.proxy.upstream.calls
        self.assertEqual(call.body, b"x" * 10)

    def test_chunkedOverLimit(self) -> None:
        """
        A chunked body is refused once its chunks pass the limit, and what
        the client sends after that is not read.
        """
        self.client.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'6\r\n{"a": \r\n'
        )
        self.assertEqual(self.client.received, b"")
        self.client.send(b"5\r\n12345\r\n")
        self.assertTooLarge()
        sent = self.client.received
        self.client.send(b"0\r\n\r\n")
        self.assertEqual(self.client.received, sent)

    def test_chunkedAtLimit(self) -> None:
        """
        A chunked body of exactly the limit is forwarded, whole.
        """
        self.client.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n5\r\n 12}\n\r\n0\r\n\r\n'
        )
        [call] = self.proxy.upstream.calls
        self.assertEqual(call.body, b'{"a": 12}\n')

    def test_recordedAsRefused(self) -> None:
        """
        The refusal is not an exchange: nothing is in flight afterwards.
        """
        self.client.send(httpRequest(body=b"x" * 11))
        self.assertEqual(self.proxy.exchanges.inFlight, 0)


class StrictParsingTests(SynchronousTestCase):
    """
    The head is parsed strictly: each malformed head below is a complete
    JSON error, then the connection closes; nothing is forwarded.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy()
        self.client = self.proxy.connect(self)

    def assertRefused(
        self, data: bytes, status: int = 400, code: str = "bad_request"
    ) -> str:
        """
        Sending C{data} gets the JSON error C{status}/C{code} and a close.
        """
        self.client.send(data)
        response = self.client.response()
        error = assertJSONError(self, response, status, code)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertFalse(self.client.open)
        self.assertFalse(self.client.aborted)
        self.assertEqual(self.proxy.upstream.calls, [])
        return error["message"]

    def assertForbidden(self, data: bytes) -> None:
        """
        C{data} is well-formed: it is parsed, routed and refused with the
        ordinary 403 (the control case of a malformed variant).
        """
        self.client.send(data)
        assertJSONError(self, self.client.response(), 403, "forbidden")

    def test_bareLF(self) -> None:
        """
        A head whose lines all end with a bare LF is refused.
        """
        message = self.assertRefused(b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\n\n")
        self.assertIn("bare LF", message)

    def test_bareLFInsideCRLFHead(self) -> None:
        """
        One bare LF among CRLF line endings is refused.
        """
        self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\nX-A: b\r\n\r\n"
        )

    def test_bareCR(self) -> None:
        """
        A bare CR inside a header line is refused.
        """
        message = self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\rX-A: b\r\n\r\n"
        )
        self.assertIn("bare CR", message)

    def test_obsFold(self) -> None:
        """
        An obs-folded (continued) header line is refused.
        """
        message = self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n"
        )
        self.assertIn("obs-folded", message)

    def test_tabFold(self) -> None:
        """
        A header line starting with a tab is refused too.
        """
        self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n\tc\r\n\r\n"
        )

    def test_controlCharacters(self) -> None:
        """
        Control characters in a header value are refused, each of them.
        """
        for control in (b"\x01", b"\x08", b"\x0b", b"\x1b", b"\x1f", b"\x7f"):
            self.setUp()
            message = self.assertRefused(
                b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"X-A: a" + control + b"b\r\n\r\n"
            )
            self.assertIn("control character", message)

    def test_nul(self) -> None:
        """
        A NUL in a header value (which twisted.web refuses itself) gets the
        proxy's JSON 400, not twisted.web's bare one.
        """
        self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n"
        )

    def test_tabAllowed(self) -> None:
        """
        A horizontal tab inside a header value is allowed.
        """
        self.assertForbidden(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\tb\r\n\r\n"
        )

    def test_malformedRequestLine(self) -> None:
        """
        A request line twisted.web cannot parse gets the JSON 400.
        """
        self.assertRefused(b"GARBAGE\r\nHost: 127.0.0.1\r\n\r\n")

    def test_badContentLength(self) -> None:
        """
        A C{Content-Length} that is not a number gets the JSON 400.
        """
        self.assertRefused(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 1x\r\n\r\n"
        )

    def test_headTooLarge(self) -> None:
        """
        Header lines adding up to more than 16 KiB are a 431.
        """
        filler = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        message = self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler + b"\r\n",
            431,
            "request_header_fields_too_large",
        )
        self.assertIn(str(MAX_HEADER_BYTES), message)

    def test_lineTooLong(self) -> None:
        """
        A single header line longer than 16 KiB is a 431, even before its
        end arrives.
        """
        self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: "
            + b"v" * MAX_HEADER_BYTES,
            431,
            "request_header_fields_too_large",
        )

    def test_headAtLimitAccepted(self) -> None:
        """
        A head of just under 16 KiB is accepted.
        """
        start = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        size = MAX_HEADER_BYTES - (len(start) - 4) - len(b"X-Pad: ")
        self.assertForbidden(start + b"X-Pad: " + b"p" * size + b"\r\n\r\n")

    def test_headOverLimitByOne(self) -> None:
        """
        One byte more than that is a 431.
        """
        start = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        size = MAX_HEADER_BYTES - (len(start) - 4) - len(b"X-Pad: ") + 1
        self.assertRefused(
            start + b"X-Pad: " + b"p" * size + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        )

    def test_tooManyHeaders(self) -> None:
        """
        More than 500 header lines are a 431.
        """
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS))
        self.assertRefused(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n",
            431,
            "request_header_fields_too_large",
        )

    def test_headersAtLimitAccepted(self) -> None:
        """
        Exactly 500 header lines are accepted.
        """
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 1))
        self.assertForbidden(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
        )

    def test_nothingReadAfterRefusal(self) -> None:
        """
        Bytes that follow a refused head (a second request) are not read.
        """
        self.assertRefused(b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\n\n")
        sent = self.client.received
        self.client.channel.dataReceived(httpRequest())
        self.assertEqual(self.client.received, sent)
        self.assertEqual(self.proxy.upstream.calls, [])


class RefuseRequestTests(SynchronousTestCase):
    """
    L{ProxyChannel.refuseRequest} answers once and closes once.
    """

    def test_onceOnly(self) -> None:
        """
        A second refusal writes nothing and does not close again; later
        bytes are ignored, and no request is made of them.
        """
        proxy = inMemoryProxy()
        client = proxy.connect(self)
        client.send(b"POST /v1/respo")
        client.channel.refuseRequest(b"first")
        client.channel.refuseRequest(b"second")
        client.send(b"nses HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(client.received, b"first")
        self.assertEqual((client.transport.closes, client.transport.aborts), (1, 0))
        self.assertEqual(client.channel.requests, [])
        self.assertEqual(proxy.site.channels, set())


class _Exploding(Resource):
    """
    A leaf whose rendering fails, after writing C{before} if given.
    """

    isLeaf = True

    def __init__(self, before: bytes = b"") -> None:
        super().__init__()
        self._before = before

    def render(self, request: Request) -> bytes:
        if self._before:
            request.write(self._before)
        raise ZeroDivisionError("a bug of ours")


class ProcessingFailedTests(SynchronousTestCase):
    """
    A bug while rendering is a JSON 500, never twisted.web's HTML page.
    """

    def test_json500(self) -> None:
        """
        A resource that raises gets a JSON 500 with no traceback in it, and
        the failure is logged.
        """
        proxy = inMemoryProxy(resource=_Exploding())
        client = proxy.connect(self)
        client.send(httpRequest(b"GET", b"/anything", None))
        response = client.response()
        assertJSONError(self, response, 500, "proxy_error")
        self.assertNotIn(b"ZeroDivisionError", client.received)
        self.assertNotIn(b"<html", client.received.lower())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(client.open)

    def test_afterWriting(self) -> None:
        """
        A failure after the answer started cannot be answered: the
        connection is aborted, so the answer visibly breaks off.
        """
        proxy = inMemoryProxy(resource=_Exploding(b"partial"))
        client = proxy.connect(self)
        client.send(httpRequest(b"GET", b"/anything", None))
        self.assertTrue(client.aborted)
        self.assertNotIn(b"500", client.received.split(b"\r\n")[0])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class _Pending(Resource):
    """
    A leaf that leaves each request unanswered, for the test to answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET

    def answer(self, index: int = 0, body: bytes = b"done") -> None:
        """
        Answer the request C{index} with C{body}.
        """
        request = self.requests[index]
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class PersistenceTests(SynchronousTestCase):
    """
    Which requests keep their connection open after the answer.
    """

    def setUp(self) -> None:
        self.resource = _Pending()
        self.proxy = inMemoryProxy(resource=self.resource)
        self.client = self.proxy.connect(self)

    def exchange(self, request: bytes) -> RawResponse:
        """
        Send C{request}, answer it, and return the answer.
        """
        self.client.send(request)
        self.resource.answer()
        return self.client.response()

    def assertClosedAfter(self, request: bytes) -> None:
        """
        The answer to C{request} says C{Connection: close}, and the
        connection closes after it.
        """
        response = self.exchange(request)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertFalse(self.client.open)
        self.assertFalse(self.client.aborted)

    def test_keepAlive(self) -> None:
        """
        An HTTP/1.1 request without C{Connection: close} keeps the connection.
        """
        response = self.exchange(httpRequest(b"GET", b"/x", None))
        self.assertEqual(response.header(b"connection"), [])
        self.assertTrue(self.client.open)

    def test_close(self) -> None:
        """
        C{Connection: close} closes after the answer.
        """
        self.assertClosedAfter(httpRequest(b"GET", b"/x", None, close=True))

    def test_closeAmongTokens(self) -> None:
        """
        C{Connection: close, X-Foo} (which twisted.web, splitting on spaces
        only, reads as C{close,}) closes after the answer.
        """
        self.assertClosedAfter(
            httpRequest(b"GET", b"/x", None, headers=[(b"Connection", b"close, X-Foo")])
        )

    def test_closeLastToken(self) -> None:
        """
        C{Connection: X-Foo,close} closes too, whatever the spacing and case.
        """
        self.assertClosedAfter(
            httpRequest(b"GET", b"/x", None, headers=[(b"Connection", b"X-Foo,Close")])
        )

    def test_closeInSecondHeader(self) -> None:
        """
        A C{close} in a second C{Connection} header line counts.
        """
        self.assertClosedAfter(
            httpRequest(
                b"GET",
                b"/x",
                None,
                headers=[(b"Connection", b"X-Foo"), (b"Connection", b"close")],
            )
        )

    def test_http10(self) -> None:
        """
        An HTTP/1.0 request closes after the answer.
        """
        self.assertClosedAfter(httpRequest(b"GET", b"/x", None, version=b"HTTP/1.0"))

    def test_closeForwarded(self) -> None:
        """
        A forwarded answer to a C{Connection: close} request says
        C{Connection: close} too (the relayed head replaces the request's
        response headers, and must keep that one).
        """
        proxy = inMemoryProxy()
        client = proxy.connect(self)
        client.send(httpRequest(close=True))
        proxy.upstream.calls[0].respond(200, b"{}")
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertFalse(client.open)


class IdentityTests(SynchronousTestCase):
    """
    Who is on the other end is asked once, when the connection is made.
    """

    def test_callerOfRequests(self) -> None:
        """
        The site's C{identify} sees the transport; its answer is the
        channel's caller, and so the caller of each request's record.
        """
        seen: list[object] = []
        alice = Caller(1000, user="alice")

        def identify(transport: object) -> Caller:
            seen.append(transport)
            return alice

        proxy = inMemoryProxy(identify=identify)
        client = proxy.connect(self)
        client.send(httpRequest(b"GET", b"/x", None))
        client.send(httpRequest(b"GET", b"/y", None))
        self.assertEqual(seen, [client.transport])
        self.assertIs(client.channel.caller, alice)
        self.assertEqual([r.caller for r in proxy.records], [alice, alice])

    def test_unknownByDefault(self) -> None:
        """
        Without C{identify}, the caller is unknown, never a guess.
        """
        proxy = inMemoryProxy()
        client = proxy.connect(self)
        self.assertIsNone(client.channel.caller.uid)


class ProcessTests(SynchronousTestCase):
    """
    What L{ProxyRequest.process} leaves out of twisted.web's.
    """

    def test_noServerHeader(self) -> None:
        """
        The proxy's answers do not reveal a version in C{Server}.
        """
        proxy = inMemoryProxy()
        client = proxy.connect(self)
        client.send(httpRequest(b"GET", b"/x", None))
        self.assertEqual(client.response().header(b"server"), [])

    def test_optionsAsterisk(self) -> None:
        """
        C{OPTIONS *} is not answered 200 by twisted.web: it is refused.
        """
        proxy = inMemoryProxy()
        client = proxy.connect(self)
        client.send(httpRequest(b"OPTIONS", b"*", None))
        assertJSONError(self, client.response(), 403, "forbidden")


class ClientGoneTests(SynchronousTestCase):
    """
    A client that leaves releases what it held upstream at once.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy(requestTimeout=1)
        self.client = self.proxy.connect(self)
        self.client.send(httpRequest())
        [self.call] = self.proxy.upstream.calls

    def test_beforeHeaders(self) -> None:
        """
        Leaving before the upstream answered cancels the upstream request.
        """
        self.client.disconnect()
        self.assertTrue(self.call.cancelled)
        self.assertEqual(self.proxy.records[0].outcome, "client_gone")
        self.assertEqual(self.proxy.exchanges.inFlight, 0)

    def test_midStream(self) -> None:
        """
        Leaving mid-stream stops the upstream body (its connection closes).
        """
        answer = self.call.respond(200)
        answer.write(b"data: 1\n\n")
        self.client.disconnect()
        self.assertEqual(answer.transport.producerState, "stopped")
        self.assertEqual(self.proxy.records[0].outcome, "client_gone")


class DrainTests(SynchronousTestCase):
    """
    The site's part in a drain: idle connections close, busy ones close
    after their answer, and the rest can be aborted.
    """

    def setUp(self) -> None:
        self.proxy: InMemoryProxy = inMemoryProxy()
        self.site = self.proxy.site

    def busy(self) -> Connection:
        """
        A connection whose request is waiting for the upstream.
        """
        client = self.proxy.connect(self)
        client.send(httpRequest())
        return client

    def test_idleClosed(self) -> None:
        """
        Idle connections are closed (cleanly) at once.
        """
        clients = [self.proxy.connect(self) for _ in range(2)]
        self.site.startDraining()
        self.assertEqual([(c.open, c.aborted) for c in clients], [(False, False)] * 2)
        self.assertEqual(self.site.channels, set())

    def test_idleAfterAnswerClosed(self) -> None:
        """
        A kept-alive connection between requests is idle.
        """
        client = self.busy()
        self.proxy.upstream.calls[0].respond(200, b"{}")
        self.assertTrue(client.open)
        self.site.startDraining()
        self.assertFalse(client.open)

    def test_busyClosesAfterAnswer(self) -> None:
        """
        A connection with a request in flight stays open; its answer says
        C{Connection: close}, and the connection closes after it.
        """
        client = self.busy()
        self.site.startDraining()
        self.assertTrue(client.open)
        self.proxy.upstream.calls[0].respond(200, b"{}")
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertFalse(client.open)
        self.assertFalse(client.aborted)

    def test_answerStartedClosesAfter(self) -> None:
        """
        A connection whose answer is already streaming closes once it ends.
        """
        client = self.busy()
        answer = self.proxy.upstream.calls[0].respond(200)
        answer.write(b"data: 1\n\n")
        self.site.startDraining()
        self.assertTrue(client.open)
        answer.finish()
        self.assertTrue(client.response().complete)
        self.assertFalse(client.open)

    def test_partialHeadIsBusy(self) -> None:
        """
        A connection with part of a request head is not idle: the request
        is served, with C{Connection: close}.
        """
        client = self.proxy.connect(self)
        request = httpRequest()
        client.send(request[:10])
        self.site.startDraining()
        self.assertTrue(client.open)
        client.send(request[10:])
        self.assertEqual(len(self.proxy.upstream.calls), 1, "the request was dropped")
        self.proxy.upstream.calls[0].respond(200, b"{}")
        self.assertEqual(client.response().header(b"connection"), [b"close"])
        self.assertFalse(client.open)

    def test_newConnectionClosed(self) -> None:
        """
        A connection accepted during the drain is closed at once, and what
        it sends is not read.
        """
        self.site.startDraining()
        client = self.proxy.connect(self)
        self.assertFalse(client.open)
        client.channel.dataReceived(httpRequest())
        self.assertEqual(self.proxy.upstream.calls, [])

    def test_whenNoConnections(self) -> None:
        """
        C{whenNoConnections} fires at once when none is open, else (for
        every caller) when the last one closes.
        """
        self.successResultOf(self.site.whenNoConnections())
        client = self.busy()
        waiting = [self.site.whenNoConnections() for _ in range(2)]
        self.site.startDraining()
        for d in waiting:
            self.assertNoResult(d)
        self.proxy.upstream.calls[0].respond(200, b"{}")
        self.assertFalse(client.open)
        for d in waiting:
            self.successResultOf(d)

    def test_abortConnections(self) -> None:
        """
        C{abortConnections} aborts every connection still open.
        """
        clients = [self.busy(), self.proxy.connect(self)]
        self.site.abortConnections()
        self.assertEqual([c.aborted for c in clients], [True, True])
        self.assertEqual(self.site.channels, set())

    def test_channelsTracked(self) -> None:
        """
        The site knows its open connections.
        """
        client = self.proxy.connect(self)
        self.assertEqual(self.site.channels, {client.channel})
        client.disconnect()
        self.assertEqual(self.site.channels, set())


class SiteTests(SynchronousTestCase):
    """
    The site itself.
    """

    def test_noAccessLog(self) -> None:
        """
        The site logs no access line of its own (each exchange logs one
        structured event instead).
        """
        proxy = inMemoryProxy(resource=_Pending())
        client = proxy.connect(self)
        with capturedLogs() as events:
            client.send(httpRequest(b"GET", b"/x", None))
            assert isinstance(proxy.site.resource, _Pending)
            proxy.site.resource.answer()
        self.assertEqual(list(events), [])

    def test_defaults(self) -> None:
        """
        A site built without limits uses the proxy's defaults, and no idle
        timeout of twisted.web's (the request deadline bounds idle
        connections).
        """
        site = ProxySite(_Pending(), Clock())
        self.assertEqual(
            (site.maxRequestBody, site.requestTimeout), (64 * 1024 * 1024, 60.0)
        )
        self.assertIsNone(site.timeOut)

    def test_formBodyNotParsed(self) -> None:
        """
        A form-encoded body is not parsed into C{request.args}: it is bytes.
        """
        resource = _Pending()
        proxy = inMemoryProxy(resource=resource)
        client = proxy.connect(self)
        body = b"a=1&b=2"
        client.send(
            b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        [request] = resource.requests
        self.assertEqual(request.args, {})
        assert request.content is not None
        self.assertEqual(request.content.read(), body)

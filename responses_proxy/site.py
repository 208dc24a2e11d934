# -*- test-case-name: tests.test_site,tests.test_limits -*-
"""
The HTTP server side: a L{Site} whose requests enforce the proxy's limits
while they are still being read.

  - Request bodies over C{maxRequestBody} get a JSON 413 before anything is
    forwarded, announced (C{Content-Length}) or discovered (chunked).
  - A request must arrive completely within C{requestTimeout} seconds of
    its first byte (or of the connection, or of the previous response), so
    a client that never finishes cannot hold a connection; once the request
    is complete the clock stops, and a slow upstream never trips it.
  - A client that stops reading its answer (its socket stays full, nothing
    drains) for C{requestTimeout} seconds is disconnected, which also
    closes the upstream connection it was holding; a slow but reading
    client is never cut.
  - The request head is parsed strictly, as a proxy must (RFC 9112): bare
    LF or CR line endings, obs-folded header lines and control characters
    in header values are a 400 at once (a different parser downstream could
    read them differently), and heads over C{MAX_HEADER_BYTES} or
    C{MAX_HEADERS} are a 431. All of the proxy's refusals while reading are
    complete JSON errors that close the connection.
  - Form bodies are never parsed (C{parsePOSTFormSubmission=False}): the
    body is opaque bytes for the upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from responses_proxy.admission import Admission, Refusal, RequestHead
from responses_proxy.chunks import ChunkSizes
from responses_proxy.defaults import (
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
)
from responses_proxy.eagerwrite import batchedWrites, sendEagerly
from responses_proxy.errors import errorBody, rawErrorResponse
from responses_proxy.record import (
    UNKNOWN_CALLER,
    Caller,
    ExchangeRecord,
    Exchanges,
    printable,
)
from responses_proxy.routes import Routes
from responses_proxy.target import UpstreamTarget

# Routes for a site that forwards nothing (the tests' plain sites).
_NOWHERE = UpstreamTarget.fromString("http://127.0.0.1:9/v1/responses")

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_log = Logger()
# How long a refused client may go on sending before it is cut off.
LINGER_SECONDS = 5.0

# Re-exported for the tests that name the limits.
__all__ = [
    "DEFAULT_MAX_REQUEST_BODY",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_HEADER_BYTES",
    "MAX_HEADERS",
    "ProxyChannel",
    "ProxyRequest",
    "ProxySite",
]


class ProxyRequest(server.Request):
    """
    A request that refuses bodies over the limit as they arrive.
    """

    _received = 0
    _refused = False
    channel: ProxyChannel

    def refuseTooLarge(self) -> None:
        """
        Answer 413 now: the body is, or is declared, larger than the limit.
        """
        self._refused = True
        limit = self.channel.site.maxRequestBody
        self.requestHeaders.removeHeader(b"expect")
        self.channel.refuseRequest(
            rawErrorResponse(
                413,
                f"The request body is larger than the proxy's limit of {limit} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        )

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.channel.site.maxRequestBody:
            self.refuseTooLarge()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.maxRequestBody:
            self.refuseTooLarge()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        # server.Request.process minus per-request work a proxy does not
        # want: a version-revealing Server header, and a Date header that a
        # relayed answer replaces anyway (the proxy's own answers add one).
        # Nor is "OPTIONS *" answered 200 here: it traverses like any other
        # target, and is refused.
        self.site = self.channel.site
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> None:
        """
        A bug of ours while rendering: log it, and answer a JSON 500 (never
        twisted.web's HTML page, which would also show the traceback).
        """
        _log.failure("Rendering {uri} failed", reason, uri=self.uri)
        if self.startedWriting:
            self.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        body = errorBody(
            "The proxy failed to handle the request.", "server_error", "proxy_error"
        )
        self.responseHeaders = type(self.responseHeaders)()
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    @property
    def caller(self) -> Caller:
        """
        Who sent this request (determined when its connection was accepted).
        """
        return self.channel.caller

    def write(self, data: bytes) -> None:
        if self.startedWriting:
            super().write(data)
        else:
            with batchedWrites():  # the answer's head and first bytes: one send
                super().write(data)


class ProxyChannel(http.HTTPChannel):
    """
    An HTTP channel with a deadline for receiving each request.
    """

    _deadline: IDelayedCall | None = None
    site: ProxySite
    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADERS
    # No single line may be longer than the whole head may be.
    MAX_LENGTH = MAX_HEADER_BYTES
    _host: IAddress | None = None
    caller: Caller = UNKNOWN_CALLER
    _draining = False
    _refused = False
    # The request line of the request being received.
    _method = b""
    _target = b""
    _chunkSizes: ChunkSizes | None = None
    _linger: IDelayedCall | None = None

    def getHost(self) -> IAddress:
        # Every Request asks; one getsockname(2) per connection is enough.
        if self._host is None:
            self._host = self.transport.getHost()  # type: ignore[union-attr]
        return self._host

    def connectionMade(self) -> None:
        sendEagerly(self.transport)
        self.caller = self.site.identify(self.transport)
        super().connectionMade()
        self.site.channelOpened(self)
        self._startDeadline()

    # Draining: idle connections close now, busy ones after their answer.

    def isIdle(self) -> bool:
        """
        No request is under way on this connection, not even partly received.
        """
        return not self.requests and not self._buffer

    def startDraining(self) -> None:
        """
        Close now if idle; otherwise close once the request under way is
        answered (and say so in its answer, if it has not started yet).
        """
        self._draining = True
        if self.isIdle():
            # Whatever arrives from now on is not read as a request.
            self._refused = True
            self.loseConnection()
            return
        if not self.requests:
            # Only part of a request line so far: checkPersistence will say
            # no when its head is complete (Twisted drops a request line
            # that arrives on a channel already marked non-persistent).
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # twisted.web splits Connection on spaces only, so it misses the
        # "close" of "Connection: close, X-Foo"; and a draining proxy keeps
        # no connection open.
        tokens = {
            token.strip().lower()
            for value in request.requestHeaders.getRawHeaders(b"connection", [])
            for token in value.split(b",")
        }
        if self._draining or b"close" in tokens or version != b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return True

    def _startDeadline(self) -> None:
        self._cancelDeadline()
        timeout = self.site.requestTimeout
        if timeout:
            self._deadline = self.callLater(timeout, self._requestTimedOut)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _requestTimedOut(self) -> None:
        self._deadline = None
        self._abort()

    # A client that stops reading. The transport pauses us when its send
    # buffer is full and resumes us when it drains.

    _stalled: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        super().pauseProducing()
        timeout = self.site.requestTimeout
        if timeout and self._stalled is None and self.transport is not None:
            self._stalled = self.callLater(timeout, self._readerStalled)

    def resumeProducing(self) -> None:
        self._cancelStalled()
        super().resumeProducing()

    def _cancelStalled(self) -> None:
        if self._stalled is not None and self._stalled.active():
            self._stalled.cancel()
        self._stalled = None

    def _readerStalled(self) -> None:
        self._stalled = None
        self._abort()

    def allContentReceived(self) -> None:
        self._cancelDeadline()
        if self._refused:
            # Refused on its head: Twisted still calls this for a request
            # without a body, which must not reach the resource.
            return
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if not self._handlingRequest and self.transport is not None:
            self._startDeadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._cancelDeadline()
        self._cancelStalled()
        super().connectionLost(reason)
        self.site.channelClosed(self)

    # Strict parsing of the request head.

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().dataReceived(data)
        # Whatever is still buffered in line mode is an unfinished head line;
        # a LF in it cannot be part of a CRLF, so the client uses bare LFs.
        if self.line_mode and b"\n" in self._buffer and not self._refused:
            self._badRequest("bare LF line ending")

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if b"\n" in line or b"\r" in line:
            self._badRequest("bare CR or LF line ending")
        elif line[:1] in (b" ", b"\t"):
            self._badRequest("obs-folded or indented header line")
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._headTooLarge()
        else:
            requests = len(self.requests)
            super().lineReceived(line)
            parts = line.split()
            if len(self.requests) > requests and len(parts) == 3:
                # The request line of a new request (a malformed one was
                # refused by Twisted, which still counts it).
                self._method, self._target = parts[0], parts[1]
                self._chunkSizes = None

    def allHeadersReceived(self) -> None:
        # Admission of the head, before any byte of the body is read (and
        # before an "Expect: 100-continue" is answered).
        request = self.requests[-1]
        site = self.site
        head = RequestHead(
            self._method,
            self._target,
            request.requestHeaders,
            self.caller,
            site.routes.forwards(self._method, self._target),
        )
        refusal = site.admission.checkHead(head)
        if refusal is not None:
            site.refusedHead(head, refusal)
            self.refuseRequest(
                rawErrorResponse(
                    refusal.status,
                    refusal.message,
                    refusal.type,
                    refusal.code,
                    refusal.headers,
                )
            )
            return
        encodings = request.requestHeaders.getRawHeaders(b"transfer-encoding") or []
        if any(b"chunked" in value.lower() for value in encodings):
            self._chunkSizes = ChunkSizes(site.maxRequestBody)
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        sizes = self._chunkSizes
        if sizes is not None and not sizes.feed(data):
            # A chunk-size line already declares more than the limit allows.
            self._chunkSizes = None
            request: Any = self.requests[-1]
            request.refuseTooLarge()
            return
        super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._headTooLarge()

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._headTooLarge()
            return False
        if _CONTROL.search(line.partition(b":")[2]):
            # RFC 9110 5.5; twisted.web refuses only NUL, CR and LF, and the
            # rest would otherwise be forwarded to the upstream verbatim.
            self._badRequest("control character in a header value")
            return False
        return bool(super().headerReceived(line))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own refusal is a bare "400 Bad Request" with no body.
        self._badRequest("malformed request")

    def _badRequest(self, why: str) -> None:
        self.refuseRequest(
            rawErrorResponse(
                400,
                f"The request is not valid HTTP/1.1 ({why}).",
                "invalid_request_error",
                "bad_request",
            )
        )

    def _headTooLarge(self) -> None:
        self.refuseRequest(
            rawErrorResponse(
                431,
                f"The request line and headers exceed the proxy's limit of "
                f"{self.totalHeadersSize} bytes or {self.maxHeaders} headers.",
                "invalid_request_error",
                "request_header_fields_too_large",
            )
        )

    def refuseRequest(self, response: bytes) -> None:
        """
        Answer C{response} while the request is still being read, and close.

        The close lingers, as nginx's does: the answer is followed by a FIN
        while what the client still sends (a body it had started) is read
        and dropped, for up to L{LINGER_SECONDS}. Closing at once, with
        unread bytes, would make the kernel reset the connection, and a
        client still writing its body would see the reset instead of the
        answer.
        """
        if self._refused:
            return
        self._refused = True
        self._cancelDeadline()
        transport: Any = self.transport
        transport.write(response)
        if not callable(getattr(transport, "loseWriteConnection", None)):
            self.loseConnection()
            return
        # The channel is the transport's producer; no more of that, and
        # reading goes on (to drop what arrives) even if it was paused.
        transport.unregisterProducer()
        transport.resumeProducing()
        transport.loseWriteConnection()
        self._linger = self.callLater(LINGER_SECONDS, self._abort)


class ProxySite(server.Site):
    """
    The proxy's L{Site}: strict requests, no access log of its own (each
    exchange logs one structured event instead), no sessions.
    """

    requestFactory = ProxyRequest
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        reactor: Any,
        *,
        maxRequestBody: int = DEFAULT_MAX_REQUEST_BODY,
        requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
        identify: Callable[[Any], Caller] | None = None,
        admission: Admission | None = None,
        routes: Routes | None = None,
        exchanges: Exchanges | None = None,
    ) -> None:
        super().__init__(
            resource,
            reactor=reactor,
            # Idle keep-alive connections are bounded by our own deadline.
            timeout=None,
            parsePOSTFormSubmission=False,
        )
        self.maxRequestBody = maxRequestBody
        self.requestTimeout = requestTimeout
        self._identify = identify
        self.admission = admission or Admission()
        self.routes = routes or Routes(_NOWHERE)
        self.exchanges = exchanges or Exchanges()
        self.channels: set[ProxyChannel] = set()
        self._emptied: list[Deferred[None]] = []
        self._draining = False

    def log(self, request: Any) -> None:
        pass

    def identify(self, transport: Any) -> Caller:
        """
        Who is on the other end of a newly accepted connection.
        """
        if self._identify is None:
            return UNKNOWN_CALLER
        return self._identify(transport)

    def refusedHead(self, head: RequestHead, refusal: Refusal) -> None:
        """
        Record a request refused on its head, like an exchange.
        """
        self.exchanges.told(
            ExchangeRecord(
                method=printable(head.method, 20),
                path=printable(head.target),
                caller=head.caller,
                status=refusal.status,
                outcome="rejected",
                code=refusal.code,
            )
        )

    # The open client connections, for the drain.

    def channelOpened(self, channel: ProxyChannel) -> None:
        self.channels.add(channel)
        if self._draining:
            channel.startDraining()

    def channelClosed(self, channel: ProxyChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def startDraining(self) -> None:
        """
        Close idle connections; busy ones close after their current answer.
        """
        self._draining = True
        for channel in list(self.channels):
            channel.startDraining()

    def whenNoConnections(self) -> Deferred[None]:
        """
        Fire once no client connection is open.
        """
        if not self.channels:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptied.append(d)
        return d

    def abortConnections(self) -> None:
        """
        Abort every client connection still open.
        """
        for channel in list(self.channels):
            transport: Any = channel.transport
            if transport is not None:
                transport.abortConnection()

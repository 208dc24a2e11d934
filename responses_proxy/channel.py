# -*- test-case-name: tests.test_site,tests.test_hostile,tests.test_chunks -*-
"""
One client connection of the proxy's site, read as a proxy must read it.

  - The request head is parsed strictly (RFC 9112): bare LF or CR line
    endings, obs-folded header lines and control characters in header
    values are a 400 at once (a different parser downstream could read them
    differently), and heads over C{MAX_HEADER_BYTES} or C{MAX_HEADERS} are
    a 431.
  - When a request's head is complete, the site's admission may refuse it,
    before any byte of its body is read.
  - A chunked body is refused (413) as soon as its chunk-size lines declare
    more than the site's C{maxRequestBody}.
  - All of these refusals are complete JSON errors that close the
    connection, lingeringly (L{ProxyChannel.refuseRequest}).
  - The request deadline and the stalled-reader cut are its base class's,
    L{responses_proxy.deadlines.DeadlineChannel}; the channel says when a
    request starts and when it is complete.
  - Draining: idle connections close now, busy ones after their answer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from responses_proxy.admission import RequestHead
from responses_proxy.chunks import ChunkSizes
from responses_proxy.deadlines import DeadlineChannel
from responses_proxy.defaults import MAX_HEADER_BYTES, MAX_HEADERS
from responses_proxy.eagerwrite import sendEagerly
from responses_proxy.errors import rawErrorResponse
from responses_proxy.record import UNKNOWN_CALLER, Caller

if TYPE_CHECKING:
    # The site that builds these channels (its module imports this one).
    from responses_proxy.site import ProxySite

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# How long a refused client may go on sending before it is cut off.
LINGER_SECONDS = 5.0


class ProxyChannel(DeadlineChannel):
    """
    The proxy's HTTP channel: a strict head, admission before the body,
    draining, and a lingering close after a refusal (see the module
    docstring).
    """

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

    # Where the request deadline (kept by DeadlineChannel) stops and starts.

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

# -*- test-case-name: tests.test_limits -*-
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
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from responses_proxy.eagerwrite import sendEagerly
from responses_proxy.errors import rawErrorResponse

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0
# The request line plus all header lines, and the number of header lines.
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 500


class ProxyRequest(server.Request):
    """
    A request that refuses bodies over the limit as they arrive.
    """

    _received = 0
    _refused = False

    def _refuseTooLarge(self) -> None:
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
            self._refuseTooLarge()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.maxRequestBody:
            self._refuseTooLarge()
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

    def getHost(self) -> IAddress:
        # Every Request asks; one getsockname(2) per connection is enough.
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def connectionMade(self) -> None:
        sendEagerly(self.transport)
        super().connectionMade()
        self._startDeadline()

    def _startDeadline(self) -> None:
        self._cancelDeadline()
        timeout = self.site.requestTimeout
        if timeout:
            self._deadline = self.callLater(timeout, self._requestTimedOut)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _requestTimedOut(self) -> None:
        self._deadline = None
        self.transport.abortConnection()

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
        self.transport.abortConnection()

    def allContentReceived(self) -> None:
        self._cancelDeadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if not self._handlingRequest and self.transport is not None:
            self._startDeadline()

    def connectionLost(self, reason: Any) -> None:
        self._cancelDeadline()
        self._cancelStalled()
        super().connectionLost(reason)

    # Strict parsing of the request head.

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # Whatever is still buffered in line mode is an unfinished head line;
        # a LF in it cannot be part of a CRLF, so the client uses bare LFs.
        if self.line_mode and b"\n" in self._buffer and not self._refused:
            self._badRequest("bare LF line ending")

    def lineReceived(self, line: bytes) -> None:
        if b"\n" in line or b"\r" in line:
            self._badRequest("bare CR or LF line ending")
        elif line[:1] in (b" ", b"\t"):
            self._badRequest("obs-folded or indented header line")
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._headTooLarge()
        else:
            super().lineReceived(line)

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

    _refused = False

    def refuseRequest(self, response: bytes) -> None:
        """
        Answer C{response} while the request is still being read, and close.
        """
        if self._refused:
            return
        self._refused = True
        self._cancelDeadline()
        self.transport.write(response)
        self.loseConnection()
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.lineReceived = lambda line: None  # type: ignore[method-assign]


class ProxySite(server.Site):
    """
    The proxy's L{Site}: strict requests, no access log of its own (each
    exchange logs one structured event instead), no sessions.
    """

    requestFactory = ProxyRequest
    protocol = ProxyChannel

    def __init__(
        self,
        resource: IResource,
        reactor: Any,
        *,
        maxRequestBody: int = DEFAULT_MAX_REQUEST_BODY,
        requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
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

    def log(self, request: Any) -> None:
        pass

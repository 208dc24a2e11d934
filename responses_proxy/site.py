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
  - Form bodies are never parsed (C{parsePOSTFormSubmission=False}): the
    body is opaque bytes for the upstream.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web import http, server
from twisted.web.resource import IResource

from responses_proxy.errors import rawErrorResponse

DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0


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

    def _handleStar(self) -> None:
        # twisted.web answers "OPTIONS *" 200 by itself, before any resource
        # sees it; render the root instead, which refuses it like the rest.
        self.render(self.site.resource)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # server.Request.process sets a version-revealing Server header; we
        # send none of our own (a mirrored upstream one is kept).
        if name in (b"Server", b"server"):
            return
        super().setHeader(name, value)


class ProxyChannel(http.HTTPChannel):
    """
    An HTTP channel with a deadline for receiving each request.
    """

    _deadline: IDelayedCall | None = None
    site: ProxySite

    def connectionMade(self) -> None:
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

    def allContentReceived(self) -> None:
        self._cancelDeadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if not self._handlingRequest and self.transport is not None:
            self._startDeadline()

    def connectionLost(self, reason: Any) -> None:
        self._cancelDeadline()
        super().connectionLost(reason)

    def refuseRequest(self, response: bytes) -> None:
        """
        Answer C{response} while the request is still being read, and close.
        """
        self._cancelDeadline()
        self.transport.write(response)
        self.loseConnection()
        self.dataReceived = lambda data: None  # type: ignore[method-assign]


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

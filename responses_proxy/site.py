# -*- test-case-name: tests.test_site,tests.test_limits -*-
"""
The HTTP server side: a L{Site} whose requests enforce the proxy's limits
while they are still being read. Its parts:

  - L{ProxySite}, here: no access log of its own (each exchange logs one
    structured event instead), no sessions; the open client connections,
    for the drain, and the record of requests refused on their head. Form
    bodies are never parsed (C{parsePOSTFormSubmission=False}): the body is
    opaque bytes for the upstream.
  - L{ProxyRequest}, here: request bodies over C{maxRequestBody} get a JSON
    413 before anything is forwarded, announced (C{Content-Length}) or
    discovered (chunked); a bug of ours while rendering is a JSON 500.
  - L{ProxyChannel}, in L{responses_proxy.channel}: one connection, its
    head parsed strictly (a 400 or 431 at once), the admission hook before
    any body byte is read, draining, and the lingering close after a
    refusal. All of the proxy's refusals while reading are complete JSON
    errors that close the connection.
  - The channel's two clocks, in L{responses_proxy.deadlines}: the request
    deadline and the stalled-reader cut, so a client can hold a connection
    neither by never finishing its request nor by never reading its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource

from responses_proxy.admission import Admission, Refusal, RequestHead
from responses_proxy.channel import LINGER_SECONDS, ProxyChannel
from responses_proxy.defaults import (
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
)
from responses_proxy.eagerwrite import batchedWrites
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

_log = Logger()

# Re-exported for the tests that name the limits, and the channel.
__all__ = [
    "DEFAULT_MAX_REQUEST_BODY",
    "DEFAULT_REQUEST_TIMEOUT",
    "LINGER_SECONDS",
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

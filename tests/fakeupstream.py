"""
The tests' fake Responses API upstream: a real twisted.web server with
scenarios, built on the demo's answer (L{responses_proxy.demoupstream}).

By default it streams a well-formed Responses SSE answer (C{response.created},
C{output_text} deltas, C{response.completed}). Tests pick other behaviour per
request with headers, which the proxy forwards unchanged:

  - C{x-fake-scenario}: C{sse} (default), C{json}, C{gzip}, C{status},
    C{drop} (abort mid-stream), C{stall} (headers, then silence),
    C{silent} (silence before headers), C{redirect}, C{cookie}, C{big}, C{echo};
  - C{x-fake-events}, C{x-fake-interval-ms}: SSE event count and spacing;
  - C{x-fake-step: manual}: send one SSE event now and each further one
    only when a test calls the stream's C{step()};
  - C{x-fake-status}: the status for C{status}; C{x-fake-bytes}: size for C{big};
  - C{x-fake-delay-ms}: silence length for C{stall} and C{silent};
  - C{x-fake-response-headers}: a JSON list of C{[name, value]} pairs
    added to any scenario's response headers.

Every request is recorded in L{FakeUpstream.requests}, and every streamed
answer's writer in L{FakeUpstream.streams} (C{big} ones in
L{FakeUpstream.bigBodies}), so tests can compare what the
upstream has sent with what their client has received; its connections are
in L{FakeUpstream.connections} (a L{Connections}, which the other test
servers use too).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from responses_proxy.demoupstream import (
    DEFAULT_TEXT,
    RecordedRequest,
    modelOf,
    record,
    responseEvents,
    sseEvent,
)

if TYPE_CHECKING:
    from twisted.web.http import _GenericHTTPChannelProtocol

__all__ = [
    "DEFAULT_TEXT",
    "Connections",
    "FakeUpstream",
    "RecordedRequest",
    "makeSite",
    "sseEvent",
]


class Connections(list[tuple[IProtocol, Deferred[None]]]):
    """
    The open (and closed) server-side connections of a test server: each
    protocol with a L{Deferred} that fires once it is lost, so that a test
    can wait for a close and cleanup can abort what is still open.
    """

    def opened(self, protocol: IProtocol) -> Deferred[None]:
        """
        Record C{protocol}'s new connection; return the L{Deferred} its
        C{connectionLost} must fire.
        """
        lost: Deferred[None] = Deferred()
        self.append((protocol, lost))
        return lost

    async def closeAll(self) -> None:
        """
        Abort every connection still open and wait until each is lost.
        """
        for protocol, lost in self:
            if not lost.called:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    ITCPTransport(transport).abortConnection()
                await lost


def _intHeader(request: Request, name: bytes, default: int) -> int:
    value = request.getHeader(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _addResponseHeaders(request: Request) -> None:
    extra = request.getHeader(b"x-fake-response-headers")
    if extra is None:
        return
    for name, value in json.loads(extra):
        request.responseHeaders.addRawHeader(
            name.encode("latin-1"), value.encode("latin-1")
        )


@dataclass
class Stream:
    """
    Writes queued chunks one by one, C{interval} seconds apart; or, when
    C{manual}, one more each time L{step} is called (the first at once).
    """

    request: Request
    chunks: list[bytes]
    interval: float
    reactor: Any
    abortAfter: int | None = None
    manual: bool = False
    call: IDelayedCall | None = None
    gone: bool = False
    sent: int = field(default=0)
    lostAt: float | None = None

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._lost)
        self._next()

    def _lost(self, _: object) -> None:
        # The connection went away before the answer was complete.
        self.gone = True
        self.lostAt = self.reactor.seconds()
        if self.call is not None and self.call.active():
            self.call.cancel()

    def step(self) -> None:
        """
        In C{manual} mode: send the next chunk (or finish the answer).
        """
        self._next()

    def _next(self) -> None:
        self.call = None
        while not self.gone:
            if self.abortAfter is not None and self.sent >= self.abortAfter:
                # Plain TCP, or TLS (which provides its TCP transport's
                # interfaces).
                ITCPTransport(self.request.channel.transport).abortConnection()
                return
            if not self.chunks:
                self.request.finish()
                return
            self.request.write(self.chunks.pop(0))
            self.sent += 1
            if self.manual:
                return
            if self.interval:
                self.call = self.reactor.callLater(self.interval, self._next)
                return


class FakeUpstream(Resource):
    """
    The fake Responses endpoint; answers at any path, records every request.
    """

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.streams: list[Stream] = []
        self.bigBodies: list[BigBody] = []
        self.connections = Connections()
        # Plain-text HTTP bytes received on all connections, even those
        # that never completed a request.
        self.bytesReceived = 0

    def render(self, request: Request) -> object:
        recorded = record(request)
        body = recorded.body
        self.requests.append(recorded)
        scenario = (request.getHeader(b"x-fake-scenario") or b"sse").decode()
        handler = getattr(self, "scenario_" + scenario.replace("-", "_"), None)
        if handler is None:
            request.setResponseCode(400)
            return b"unknown scenario\n"
        request.setHeader(b"x-request-id", b"req_fake_%d" % len(self.requests))
        _addResponseHeaders(request)
        return handler(request, body)

    def _sse(self, request: Request, body: bytes, abortAfter: int | None) -> object:
        events = responseEvents(
            modelOf(body), DEFAULT_TEXT, _intHeader(request, b"x-fake-events", 0)
        )
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"openai-processing-ms", b"12")
        request.setHeader(b"x-ratelimit-remaining-requests", b"99")
        interval = _intHeader(request, b"x-fake-interval-ms", 0) / 1000
        stream = Stream(
            request,
            [sseEvent(e) for e in events],
            interval,
            self.reactor,
            abortAfter,
            manual=request.getHeader(b"x-fake-step") == b"manual",
        )
        self.streams.append(stream)
        stream.start()
        return NOT_DONE_YET

    def scenario_sse(self, request: Request, body: bytes) -> object:
        return self._sse(request, body, None)

    def scenario_drop(self, request: Request, body: bytes) -> object:
        return self._sse(
            request, body, _intHeader(request, b"x-fake-events-before-drop", 3)
        )

    def scenario_json(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        document = responseEvents(modelOf(body), DEFAULT_TEXT)[-1]["response"]
        return json.dumps(document).encode()

    def scenario_gzip(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-encoding", b"gzip")
        payload = gzip.compress(self.scenario_json(request, body))
        request.setHeader(b"content-length", b"%d" % len(payload))
        return payload

    def scenario_status(self, request: Request, body: bytes) -> bytes:
        status = _intHeader(request, b"x-fake-status", 429)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"7")
        request.setHeader(b"x-ratelimit-limit-requests", b"100")
        return json.dumps(
            {"error": {"message": "fake error", "type": "fake", "code": str(status)}}
        ).encode()

    def scenario_redirect(self, request: Request, body: bytes) -> bytes:
        request.setResponseCode(302)
        request.defaultContentType = None
        request.setHeader(b"location", b"http://127.0.0.1:9/elsewhere")
        return b"redirected\n"

    def scenario_cookie(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"set-cookie", b"session=fake-upstream-cookie; Path=/")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {"cookie": (request.getHeader(b"cookie") or b"").decode()}
        ).encode()

    def scenario_echo(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        recorded = self.requests[-1]
        return json.dumps(
            {
                "method": recorded.method.decode(),
                "uri": recorded.uri.decode(),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in recorded.headers
                ],
                "body_length": len(body),
            }
        ).encode()

    def scenario_stall(self, request: Request, body: bytes) -> object:
        delay = _intHeader(request, b"x-fake-delay-ms", 3000) / 1000
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b": stalling\n\n")
        chunks = [sseEvent(e) for e in responseEvents("fake-model", DEFAULT_TEXT)]
        stream = Stream(request, chunks, 0, self.reactor)
        self.streams.append(stream)
        request.notifyFinish().addErrback(stream._lost)
        stream.call = self.reactor.callLater(delay, stream._next)
        return NOT_DONE_YET

    def scenario_silent(self, request: Request, body: bytes) -> object:
        delay = _intHeader(request, b"x-fake-delay-ms", 3000) / 1000
        stream = Stream(request, [b'{"late": true}'], 0, self.reactor)
        self.streams.append(stream)
        request.notifyFinish().addErrback(stream._lost)
        request.setHeader(b"content-type", b"application/json")
        stream.call = self.reactor.callLater(delay, stream._next)
        return NOT_DONE_YET

    def scenario_big(self, request: Request, body: bytes) -> object:
        total = _intHeader(request, b"x-fake-bytes", 10 * 1024 * 1024)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % total)
        producer = BigBody(request, total)
        self.bigBodies.append(producer)
        request.registerProducer(producer, True)
        return NOT_DONE_YET


class BigBody:
    """
    A push producer of C{total} bytes that honours pause/resume, so the fake
    upstream itself never buffers more than the socket allows.
    """

    _chunk = b"x" * 65536

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.total = total
        self.remaining = total
        self.paused = False
        self.pauses = 0
        self.stopped = False
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        request.channel.callLater(0, self.resumeProducing)

    @property
    def sentBytes(self) -> int:
        """
        Body bytes handed to the transport so far.
        """
        return self.total - self.remaining

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.remaining > 0:
            chunk = self._chunk[: min(len(self._chunk), self.remaining)]
            self.remaining -= len(chunk)
            self.request.write(chunk)
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class _UpstreamChannel(HTTPChannel):
    """
    An HTTP channel that records its connection in its L{FakeUpstream}'s
    C{connections} and adds every byte it receives (after TLS decryption)
    to its C{bytesReceived}.
    """

    # Set by Site.buildProtocol.
    site: _UpstreamSite
    _lost: Deferred[None] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._lost = self.site.upstream.connections.opened(self)

    def dataReceived(self, data: bytes) -> None:
        self.site.upstream.bytesReceived += len(data)
        super().dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self._lost is not None and not self._lost.called:
            self._lost.callback(None)


class _UpstreamSite(Site):
    """
    The fake upstream's site: its own channel, no access log.
    """

    # Twisted types Site.protocol as a factory of its generic (HTTP/1.1 or
    # HTTP/2) wrapper, but setting it to an HTTPChannel subclass is its
    # documented way to choose the channel.
    protocol = cast("Callable[[], _GenericHTTPChannelProtocol]", _UpstreamChannel)

    def __init__(self, upstream: FakeUpstream, reactor: Any) -> None:
        super().__init__(upstream, reactor=reactor)
        self.upstream = upstream

    def log(self, request: http.Request) -> None:
        pass


def makeSite(reactor: Any) -> tuple[Site, FakeUpstream]:
    """
    A L{Site} serving a fresh L{FakeUpstream}; returns both.
    """
    upstream = FakeUpstream(reactor)
    return _UpstreamSite(upstream, reactor), upstream

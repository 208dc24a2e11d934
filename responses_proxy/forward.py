# -*- test-case-name: tests.test_forwarding -*-
"""
Forward one client request upstream and relay the answer as it arrives.

The upstream body is relayed with flow control: the upstream socket (the
C{TransportProxyProducer} that L{twisted.web.client.Agent} hands to our body
protocol) is registered as a streaming producer on the client's request, so
twisted.web pauses reading from the upstream while the client's socket
buffer is full, and memory stays bounded however slow the client is.

Failure handling, by phase:
  - before upstream headers: a JSON 502 (504 for a connect timeout);
  - after headers were relayed: the client connection is aborted, so a
    truncated body can never look complete;
  - client gone: the pending upstream request is cancelled, or the upstream
    connection is closed if the body was streaming.

What else watches an exchange (dumps, usage accounting) does so from beside
the relay, as an L{ExchangeObserver}: it sees the answer's head and every
relayed piece, and can neither delay nor change them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.server import NOT_DONE_YET, Request

from responses_proxy.body import bodyLength
from responses_proxy.errors import respondWithError
from responses_proxy.faults import classifyUpstreamFailure
from responses_proxy.headers import mirrorResponseHeaders, upstreamRequestHeaders
from responses_proxy.record import Caller, ExchangeRecord, Exchanges
from responses_proxy.target import UpstreamTarget


class Credential(Protocol):
    """
    Where the C{Authorization} value comes from: the key, or a token that
    is renewed in the background.
    """

    def currentHeader(self) -> bytes | None:
        """
        The value to send now, or L{None} when there is no valid one.
        """


class Upstream(Protocol):
    """
    How an exchange reaches the upstream (L{responses_proxy.upstream.UpstreamClient}).
    """

    def request(self, url: bytes, headers: Headers, body: Any) -> Deferred[IResponse]:
        """
        POST C{body} (a file positioned anywhere) to C{url}.
        """


class ExchangeObserver(Protocol):
    """
    Sees one exchange from beside the relay.
    """

    def responseStarted(self, status: int, headers: Headers) -> None:
        """
        The answer's status and headers, as relayed to the client.
        """

    def bodyReceived(self, data: bytes) -> None:
        """
        One piece of the answer's body, as relayed (never to be kept
        by reference beyond what the observer needs).
        """

    def finished(self, record: ExchangeRecord) -> None:
        """
        The exchange ended; C{record} may still be annotated (e.g. with usage)
        before the listeners of L{Exchanges} see it.
        """


ObserverFactory = Callable[[Request, ExchangeRecord], "ExchangeObserver | None"]


class _RelayBody(TwistedProtocol):
    """
    Write upstream body bytes to the client as they arrive.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        self._exchange.upstreamBodyStarted(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._exchange.relay(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.upstreamBodyEnded(reason)


class Forwarder:
    """
    Everything an exchange needs that outlives it: the upstream, the key
    (or token), the registry of exchanges and the observers to attach.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        upstream: Upstream,
        target: UpstreamTarget,
        credential: Credential,
        exchanges: Exchanges | None = None,
        observers: Sequence[ObserverFactory] = (),
    ) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.target = target
        self.credential = credential
        self.exchanges = Exchanges() if exchanges is None else exchanges
        self.observers = list(observers)

    def forward(
        self, request: Request, caller: Caller, target: UpstreamTarget | None = None
    ) -> object:
        """
        Start forwarding C{request} (to C{target}, by default the upstream
        URL); the answer is written asynchronously.
        """
        Exchange(self, request, caller, target or self.target).start()
        return NOT_DONE_YET


class Exchange:
    """
    One request and its upstream answer: owns the Deferreds, the counters
    and the record that ends it.
    """

    _log = Logger()

    def __init__(
        self,
        forwarder: Forwarder,
        request: Request,
        caller: Caller,
        target: UpstreamTarget,
    ) -> None:
        self._forwarder = forwarder
        self._request = request
        self._target = target
        self._started = forwarder.reactor.seconds()
        self._responseDeferred: Deferred[IResponse] | None = None
        self._upstreamTransport: IPushProducer | None = None
        self._clientGone = False
        self._ended = False
        self._observers: list[ExchangeObserver] = []
        self.record = ExchangeRecord(
            method=request.method.decode("latin-1"),
            path=request.uri.decode("latin-1"),
            caller=caller,
            forwarded=True,
        )
        # An upstream answer whose body nobody has taken yet.
        self._undelivered: IResponse | None = None

    def start(self) -> None:
        """
        Send the request upstream.
        """
        request = self._request
        forwarder = self._forwarder
        forwarder.exchanges.begin(self, self.record.caller)
        request.notifyFinish().addErrback(self._clientDisconnected)
        content = request.content
        assert content is not None
        self.record.bytesIn = bodyLength(content)
        for observe in forwarder.observers:
            observer = observe(request, self.record)
            if observer is not None:
                self._observers.append(observer)
        authorization = forwarder.credential.currentHeader()
        if authorization is None:
            self._answerError(
                503,
                "the proxy has no valid upstream credential right now; try again later",
                "upstream_auth_unavailable",
                "upstream_error",
            )
            return
        headers = upstreamRequestHeaders(
            request.requestHeaders, authorization, self._target.hostHeader
        )
        d = forwarder.upstream.request(self._target.url, headers, content)
        # Kept for cancelling until a callback below clears it. Not "if not
        # d.called": on a pooled connection d has fired already (with the
        # Deferred of the answer still to come), and a client leaving then
        # must still cancel the upstream request and close its connection.
        self._responseDeferred = d
        d.addCallbacks(self._gotResponse, self._requestFailed)
        d.addErrback(self._internalError)

    # Upstream answered (headers).

    def _gotResponse(self, response: IResponse) -> None:
        self._responseDeferred = None
        self._undelivered = response
        record = self.record
        record.upstreamStatus = response.code
        requestIds = response.headers.getRawHeaders(b"x-request-id")
        if requestIds:
            record.requestID = requestIds[0].decode("latin-1")
        if self._clientGone:
            self._undelivered = None
            response.deliverBody(_Discard())
            return
        request = self._request
        record.status = response.code
        request.setResponseCode(response.code, response.phrase)
        _freshHeaders(request)
        mirrorResponseHeaders(response.headers, request.responseHeaders)
        if response.length is not UNKNOWN_LENGTH and response.code not in NO_BODY_CODES:
            # The upstream's length, relayed: no chunked framing to add, and a
            # client of an answer cut short (we abort) sees it is short.
            request.responseHeaders.setRawHeaders(
                b"content-length", [b"%d" % response.length]
            )
        request.defaultContentType = None
        for observer in self._observers:
            observer.responseStarted(response.code, request.responseHeaders)
        self._undelivered = None
        response.deliverBody(_RelayBody(self))

    def upstreamBodyStarted(self, transport: IPushProducer) -> None:
        """
        Let the client's socket pace the upstream socket.
        """
        self._upstreamTransport = transport
        self._request.registerProducer(transport, True)

    def relay(self, data: bytes) -> None:
        """
        Pass one piece of upstream body to the client, unchanged.
        """
        record = self.record
        if record.ttfbMS is None:
            record.ttfbMS = (self._forwarder.reactor.seconds() - self._started) * 1000
        record.bytesOut += len(data)
        self._request.write(data)
        for observer in self._observers:
            observer.bodyReceived(data)

    def upstreamBodyEnded(self, reason: Failure) -> None:
        """
        Finish the client response, or abort it if the upstream broke off.
        """
        self._upstreamTransport = None
        if self._clientGone:
            return
        request = self._request
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            self._end("complete")
        else:
            self._abortClient()
            self._end("upstream_aborted")

    def _abortClient(self) -> None:
        channel: Any = self._request.channel
        channel.transport.abortConnection()

    # Upstream never answered.

    def _requestFailed(self, failure: Failure) -> None:
        self._responseDeferred = None
        if self._clientGone or failure.check(CancelledError):
            return
        status, message, code = classifyUpstreamFailure(failure)
        self._log.warn(
            "Upstream request failed: {kind}", kind=code, failure_type=failure.type
        )
        self._answerError(status, message, code, "upstream_error")

    def _answerError(self, status: int, message: str, code: str, outcome: str) -> None:
        """
        Answer the client ourselves (nothing of an upstream answer was sent).
        """
        request = self._request
        _freshHeaders(request)
        self.record.status = status
        self.record.code = code
        body = respondWithError(request, status, message, "upstream_error", code)
        for observer in self._observers:
            observer.responseStarted(status, request.responseHeaders)
            observer.bodyReceived(body)
        request.write(body)
        request.finish()
        self.record.bytesOut = len(body)
        self._end(outcome)

    # A bug of ours: never leave the client hanging.

    def _internalError(self, failure: Failure) -> None:
        self._responseDeferred = None
        self._log.failure("Forwarding failed", failure=failure)
        if self._undelivered is not None:
            # Close the upstream connection rather than leave it waiting.
            self._undelivered.deliverBody(_Discard())
            self._undelivered = None
        if self._clientGone or self._ended:
            return
        if self._request.startedWriting:
            self._abortClient()
            self._end("proxy_error")
        else:
            self._answerError(
                502,
                "the proxy failed to relay the upstream's answer",
                "proxy_error",
                "proxy_error",
            )

    # Client went away, or the proxy stops.

    def _clientDisconnected(self, reason: Failure) -> None:
        self._clientGone = True
        if self._responseDeferred is not None:
            self._responseDeferred.cancel()
        if self._upstreamTransport is not None:
            self._upstreamTransport.stopProducing()
            self._upstreamTransport = None
        self._end("client_gone")

    def abort(self, outcome: str) -> None:
        """
        Cut the exchange short (the proxy is stopping): the client sees a
        truncated answer, never one that looks complete.
        """
        if self._ended:
            return
        self._end(outcome)
        self._abortClient()

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        record = self.record
        record.outcome = outcome
        record.durationMS = (self._forwarder.reactor.seconds() - self._started) * 1000
        for observer in self._observers:
            observer.finished(record)
        self._forwarder.exchanges.end(self, record)


def _freshHeaders(request: Request) -> None:
    """
    Replace the answer's headers with none, keeping C{Connection: close}
    when the connection will close after it (the client asked, HTTP/1.0,
    or the proxy is draining): a client must be told.
    """
    request.responseHeaders = type(request.responseHeaders)()
    channel: Any = request.channel
    if channel is not None and not channel.persistent:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])


class _Discard(TwistedProtocol):
    """
    Drop a body nobody will read; closes the upstream connection at once.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

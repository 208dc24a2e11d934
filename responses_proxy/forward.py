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
"""

from __future__ import annotations

import io
from typing import IO

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from responses_proxy.apikey import AuthHeader
from responses_proxy.dumps import DumpWriter, ExchangeDump
from responses_proxy.eagerwrite import batchedWrites
from responses_proxy.egress import EgressProxyError
from responses_proxy.errors import respondWithError
from responses_proxy.headers import mirrorResponseHeaders, upstreamRequestHeaders
from responses_proxy.upstream import UpstreamTarget

# Bodies up to this size are sent in one write; larger ones are streamed
# from the spooled file with flow control.
_ONE_WRITE_LIMIT = 1 << 20


@implementer(IBodyProducer)
class _BytesBodyProducer:
    """
    Send a small, already complete body in one write (no cooperator ticks).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _bodyProducer(content: IO[bytes]) -> IBodyProducer:
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    if length <= _ONE_WRITE_LIMIT:
        return _BytesBodyProducer(content.read())
    return FileBodyProducer(content)


def _flattenReasons(failure: Failure) -> list[Failure]:
    reasons = getattr(failure.value, "reasons", None)
    if not reasons:
        return [failure]
    flat: list[Failure] = []
    for reason in reasons:
        flat.extend(_flattenReasons(reason))
    return flat


def classifyUpstreamFailure(failure: Failure) -> tuple[int, str, str]:
    """
    Map a failure to reach the upstream to C{(status, message, code)}.

    The messages name the kind of fault only: never a header, never the key.
    """
    for reason in [failure, *_flattenReasons(failure)]:
        if reason.check(error.TimeoutError):
            return 504, "connecting to the upstream timed out", "upstream_timeout"
        if reason.check(VerificationError, SSL.Error):
            return (
                502,
                "the upstream's TLS certificate failed verification",
                "upstream_tls_error",
            )
        if reason.check(error.DNSLookupError):
            return 502, "the upstream host name could not be resolved", "upstream_dns"
        if reason.check(error.ConnectionRefusedError):
            return 502, "the upstream refused the connection", "upstream_refused"
        if reason.check(EgressProxyError):
            return 502, "the egress proxy failed or refused", "egress_proxy_error"
    return 502, "the upstream connection failed", "upstream_unavailable"


class _RelayBody(Protocol):
    """
    Write upstream body bytes to the client as they arrive.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        self._exchange.upstreamBodyStarted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._exchange.relay(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._exchange.upstreamBodyEnded(reason)


class Forwarder:
    """
    Everything an exchange needs that outlives it: the upstream, the client
    Agent, the key and the optional dump writer.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        agent: IAgent,
        target: UpstreamTarget,
        authorization: AuthHeader,
        dumps: DumpWriter | None = None,
    ) -> None:
        self.reactor = reactor
        self.agent = agent
        self.target = target
        self.authorization = authorization
        self.dumps = dumps

    def forward(self, request: Request) -> object:
        """
        Start forwarding C{request}; the answer is written asynchronously.
        """
        Exchange(self, request).start()
        return NOT_DONE_YET


class Exchange:
    """
    One request and its upstream answer: owns the Deferreds, the counters
    and the one log event written when it ends.
    """

    _log = Logger()

    def __init__(self, forwarder: Forwarder, request: Request) -> None:
        self._forwarder = forwarder
        self._request = request
        self._started = forwarder.reactor.seconds()
        self._responseDeferred: Deferred[IResponse] | None = None
        self._upstreamTransport: IPushProducer | None = None
        self._clientGone = False
        self._ended = False
        self.upstreamStatus: int | None = None
        # The status the client was sent, once it was sent.
        self.status: int | None = None
        self.upstreamRequestId: str | None = None
        self.bytesIn = 0
        self.bytesOut = 0
        self._dump: ExchangeDump | None = None
        # An upstream answer whose body nobody has taken yet.
        self._undelivered: IResponse | None = None

    def start(self) -> None:
        """
        Send the request upstream.
        """
        request = self._request
        forwarder = self._forwarder
        request.notifyFinish().addErrback(self._clientDisconnected)
        headers = upstreamRequestHeaders(
            request.requestHeaders,
            forwarder.authorization.value,
            forwarder.target.hostHeader,
        )
        body = _bodyProducer(request.content)
        self.bytesIn = body.length
        if forwarder.dumps is not None:
            self._dump = forwarder.dumps.startExchange(request)
        d = forwarder.agent.request(b"POST", forwarder.target.url, headers, body)
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
        self.upstreamStatus = response.code
        requestIds = response.headers.getRawHeaders(b"x-request-id")
        if requestIds:
            self.upstreamRequestId = requestIds[0].decode("latin-1")
        if self._clientGone:
            self._undelivered = None
            response.deliverBody(_Discard())
            return
        request = self._request
        self.status = response.code
        request.setResponseCode(response.code, response.phrase)
        request.responseHeaders = type(response.headers)()
        mirrorResponseHeaders(response.headers, request.responseHeaders)
        if response.length is not UNKNOWN_LENGTH and response.code not in NO_BODY_CODES:
            # The upstream's length, relayed: no chunked framing to add, and a
            # client of an answer cut short (we abort) sees it is short.
            request.responseHeaders.setRawHeaders(
                b"content-length", [b"%d" % response.length]
            )
        request.defaultContentType = None
        if self._dump is not None:
            self._dump.responseStarted(response.code, request.responseHeaders)
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
        self.bytesOut += len(data)
        if self._request.startedWriting:
            self._request.write(data)
        else:
            with batchedWrites():  # the answer's head and first bytes: one send
                self._request.write(data)
        if self._dump is not None:
            self._dump.responseChunk(data)

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
            request.channel.transport.abortConnection()
            self._end("upstream_aborted")

    # Upstream never answered.

    def _requestFailed(self, failure: Failure) -> None:
        self._responseDeferred = None
        if self._clientGone or failure.check(CancelledError):
            return
        status, message, code = classifyUpstreamFailure(failure)
        self._log.warn(
            "Upstream request failed: {kind}", kind=code, failure_type=failure.type
        )
        request = self._request
        request.responseHeaders = type(request.responseHeaders)()
        self.status = status
        body = respondWithError(request, status, message, "upstream_error", code)
        if self._dump is not None:
            self._dump.responseStarted(status, request.responseHeaders)
            self._dump.responseChunk(body)
        request.write(body)
        request.finish()
        self.bytesOut = len(body)
        self._end("upstream_error")

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
        request = self._request
        if request.startedWriting:
            request.channel.transport.abortConnection()
        else:
            request.responseHeaders = type(request.responseHeaders)()
            self.status = 502
            body = respondWithError(
                request,
                502,
                "the proxy failed to relay the upstream's answer",
                "upstream_error",
                "proxy_error",
            )
            request.write(body)
            request.finish()
            self.bytesOut = len(body)
        self._end("proxy_error")

    # Client went away.

    def _clientDisconnected(self, reason: Failure) -> None:
        self._clientGone = True
        if self._responseDeferred is not None:
            self._responseDeferred.cancel()
        if self._upstreamTransport is not None:
            self._upstreamTransport.stopProducing()
            self._upstreamTransport = None
        self._end("client_gone")

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        duration = self._forwarder.reactor.seconds() - self._started
        if self._dump is not None:
            self._dump.finished(outcome)
        self._log.info(
            "{method} {path} -> {status} ({outcome}, upstream {upstream_status}, "
            "{bytes_in} B in, {bytes_out} B out, {duration_ms:.1f} ms, "
            "x-request-id {request_id})",
            method="POST",
            path="/v1/responses",
            status=self.status,
            outcome=outcome,
            upstream_status=self.upstreamStatus,
            bytes_in=self.bytesIn,
            bytes_out=self.bytesOut,
            duration_ms=duration * 1000,
            request_id=self.upstreamRequestId,
            exchange=True,
        )


class _Discard(Protocol):
    """
    Drop a body nobody will read; closes the upstream connection at once.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()

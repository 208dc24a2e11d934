"""
In-memory doubles for unit tests: no socket, no global reactor.

  - L{connect}: a L{ProxySite} connection on a L{StringTransportWithDisconnection},
    fed bytes with C{dataReceived} (the Twisted test standard's idiom);
  - L{InMemoryProxy} / L{inMemoryProxy}: the real resource tree and
    L{Forwarder} on a L{Clock}, in front of a L{FakeUpstream};
  - L{FakeUpstream}: an upstream client (C{request(url, headers, body)})
    whose answers the test gives, piece by piece, with L{FakeResponse};
  - L{httpRequest}: the bytes of a request the proxy accepts (loopback
    C{Host}, JSON C{Content-Type}, no browser headers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import IResource
from zope.interface import implementer

from responses_proxy.apikey import AuthHeader
from responses_proxy.forward import Forwarder
from responses_proxy.record import Caller, ExchangeRecord, Exchanges
from responses_proxy.resource import buildRoot
from responses_proxy.site import ProxyChannel, ProxySite
from responses_proxy.target import UpstreamTarget
from tests.support import RawResponse, parseRawResponse

UPSTREAM_URL = "https://upstream.invalid/v1/responses"
KEY_HEADER = b"Bearer sk-memory-test"
JSON_BODY = b'{"model": "m", "input": "hi"}'


def httpRequest(
    method: bytes = b"POST",
    target: bytes = b"/v1/responses",
    body: bytes | None = JSON_BODY,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    host: bytes = b"127.0.0.1",
    close: bool = False,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """
    A request as a client sends it: C{Host: 127.0.0.1}, and with a body
    C{Content-Type: application/json} and its C{Content-Length}.
    """
    lines = [b"%s %s %s" % (method, target, version), b"Host: " + host]
    if body is not None:
        lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    lines.extend(b"%s: %s" % (name, value) for name, value in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class CountingTransport(StringTransportWithDisconnection):
    """
    A L{StringTransportWithDisconnection} that counts how it was closed.

    @ivar closes: calls to C{loseConnection}.
    @ivar aborts: calls to C{abortConnection}.
    """

    closes = 0
    aborts = 0

    def loseConnection(self) -> None:
        if not self.disconnected:  # not called by abortConnection
            self.closes += 1
        super().loseConnection()

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


@dataclass
class Connection:
    """
    One client connection to a site, in memory.
    """

    channel: ProxyChannel
    transport: CountingTransport

    def send(self, data: bytes) -> None:
        """
        The client sends C{data}.
        """
        self.channel.dataReceived(data)

    @property
    def received(self) -> bytes:
        """
        Everything the proxy wrote to the client so far.
        """
        return bytes(self.transport.value())

    def response(self) -> RawResponse:
        """
        The first response the proxy wrote.
        """
        return parseRawResponse(self.received)

    def responses(self) -> list[RawResponse]:
        """
        Every complete response the proxy wrote, in order (each framed by
        its C{Content-Length}; no interim C{1xx} among them).
        """
        found = []
        data = self.received
        while b"\r\n\r\n" in data:
            response = parseRawResponse(data)
            if not response.complete or not response.header(b"content-length"):
                break
            found.append(response)
            head = data.index(b"\r\n\r\n") + 4
            data = data[head + len(response.body) :]
        return found

    @property
    def open(self) -> bool:
        """
        The proxy has neither closed nor aborted the connection.
        """
        return bool(self.transport.connected)

    @property
    def aborted(self) -> bool:
        """
        The proxy aborted the connection (rather than closing it cleanly).
        """
        return bool(self.transport.disconnected)

    def disconnect(self) -> None:
        """
        The client goes away.
        """
        if self.transport.connected:
            self.transport.connected = False
            self.channel.connectionLost(Failure(ConnectionLost("client left")))


def connect(testCase: SynchronousTestCase, site: ProxySite) -> Connection:
    """
    Open a connection to C{site}; the client leaves at cleanup if the proxy
    has not closed it.
    """
    channel = cast(ProxyChannel, site.buildProtocol(None))
    transport = CountingTransport()
    transport.protocol = channel
    channel.makeConnection(transport)
    connection = Connection(channel, transport)
    testCase.addCleanup(connection.disconnect)
    return connection


@implementer(IPushProducer)
class FakeBodyTransport:
    """
    What an upstream answer's body protocol gets as its transport: a push
    producer whose state a test can read.

    @ivar producerState: C{producing}, C{paused} or C{stopped}.
    """

    producerState = "producing"

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "producing"

    def stopProducing(self) -> None:
        self.producerState = "stopped"


@implementer(IResponse)
class FakeResponse:
    """
    An upstream answer; its body is given with L{write} and ended with
    L{finish} or L{breakOff}, before or after the forwarder takes it.
    """

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(
        self,
        code: int = 200,
        headers: Headers | None = None,
        length: int | object = UNKNOWN_LENGTH,
        phrase: bytes = b"OK",
    ) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = Headers() if headers is None else headers
        self.length = length
        self.transport = FakeBodyTransport()
        self.protocol: Protocol | None = None
        self._pending: list[bytes] = []
        self._ended: Failure | None = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def write(self, data: bytes) -> None:
        """
        The upstream sends C{data} of the body.
        """
        if self.protocol is None:
            self._pending.append(data)
        else:
            self.protocol.dataReceived(data)

    def finish(self) -> None:
        """
        The body is complete.
        """
        self._end(Failure(ResponseDone()))

    def breakOff(self) -> None:
        """
        The upstream connection broke mid-body.
        """
        self._end(Failure(ConnectionLost("upstream went away")))

    def _end(self, reason: Failure) -> None:
        if self.protocol is None:
            self._ended = reason
        else:
            self.protocol.connectionLost(reason)


@dataclass
class UpstreamCall:
    """
    One request the forwarder made of the upstream.

    @ivar deferred: fire it (L{respond}) to answer.
    @ivar cancelled: whether the forwarder cancelled it.
    """

    url: bytes
    headers: Headers
    body: bytes
    deferred: Deferred[IResponse] = field(repr=False)
    cancelled: bool = False

    def respond(
        self,
        code: int = 200,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        length: int | object | None = None,
    ) -> FakeResponse:
        """
        Answer with C{code} and C{headers}; with C{body}, the whole body
        (its length known unless C{length} says otherwise).
        """
        if length is None:
            length = len(body) if body is not None else UNKNOWN_LENGTH
        response = FakeResponse(code, Headers(headers or {}), length)
        if body is not None:
            response.write(body)
            response.finish()
        self.deferred.callback(response)
        return response


class FakeUpstream:
    """
    The forwarder's upstream client (L{responses_proxy.forward.Upstream}),
    recording each request and leaving its answer to the test.
    """

    def __init__(self) -> None:
        self.calls: list[UpstreamCall] = []

    def request(
        self, url: bytes, headers: Headers, body: IO[bytes]
    ) -> Deferred[IResponse]:
        position = body.tell()
        data = body.read()
        body.seek(position)

        def cancel(d: Deferred[IResponse]) -> None:
            call.cancelled = True

        call = UpstreamCall(url, headers, data, Deferred(cancel))
        self.calls.append(call)
        return call.deferred


@dataclass
class InMemoryProxy:
    """
    The proxy's site, resource tree and forwarder, on a L{Clock}.

    @ivar records: every exchange record, as the L{Exchanges} listeners
        see them (forwarded and refused alike).
    """

    site: ProxySite
    clock: Clock
    upstream: FakeUpstream
    exchanges: Exchanges
    records: list[ExchangeRecord]
    shutdowns: list[None]

    def connect(self, testCase: SynchronousTestCase) -> Connection:
        """
        A new client connection.
        """
        return connect(testCase, self.site)


def inMemoryProxy(
    *,
    requestTimeout: float = 60.0,
    maxRequestBody: int = 1 << 20,
    httpShutdown: bool = False,
    identify: Callable[[Any], Caller] | None = None,
    resource: IResource | None = None,
) -> InMemoryProxy:
    """
    The real tree (C{buildRoot}) and L{Forwarder} before a L{FakeUpstream};
    or C{resource} instead of the tree.
    """
    clock = Clock()
    upstream = FakeUpstream()
    records: list[ExchangeRecord] = []
    exchanges = Exchanges(listeners=[records.append])
    forwarder = Forwarder(
        clock,
        upstream,
        UpstreamTarget.fromString(UPSTREAM_URL),
        AuthHeader(KEY_HEADER),
        exchanges,
    )
    shutdowns: list[None] = []
    root = resource or buildRoot(
        forwarder, (lambda: shutdowns.append(None)) if httpShutdown else None
    )
    site = ProxySite(
        root,
        clock,
        requestTimeout=requestTimeout,
        maxRequestBody=maxRequestBody,
        identify=identify,
    )
    return InMemoryProxy(site, clock, upstream, exchanges, records, shutdowns)


class CollectingConsumer:
    """
    An L{IConsumer} that keeps what a body producer writes.
    """

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def produced(producer: Any) -> bytes:
    """
    Everything C{producer} (an L{IBodyProducer}) writes, synchronously.
    """
    consumer = CollectingConsumer()
    producer.startProducing(cast(IConsumer, consumer))
    return bytes(consumer.data)


__all__ = [
    "JSON_BODY",
    "KEY_HEADER",
    "UPSTREAM_URL",
    "CollectingConsumer",
    "Connection",
    "CountingTransport",
    "FakeBodyTransport",
    "FakeResponse",
    "FakeUpstream",
    "InMemoryProxy",
    "UpstreamCall",
    "connect",
    "httpRequest",
    "inMemoryProxy",
    "produced",
]

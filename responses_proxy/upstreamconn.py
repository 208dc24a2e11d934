# -*- test-case-name: tests.test_upstreamconn -*-
"""
One upstream connection, and the pool that keeps them.

What each connection adds to Twisted's HTTP/1.1 client protocol:

  - Nagle's algorithm off and send-on-write (L{responses_proxy.eagerwrite}),
    as on the client side: a body written in pieces, or an upstream that
    delays its ACKs, must not hold a request back.
  - The answer's head is held to the limits the proxy's own server side
    applies (L{MAX_HEADER_BYTES}, L{MAX_HEADERS}), and its status to
    100-599; anything else is refused before one byte of it is relayed,
    with memory bounded (Twisted's client parser counts neither:
    twisted/twisted#8570).
  - It knows whether a request went out on a connection that had already
    served one, and whether any byte of the answer arrived, so that the
    pool's user can retry exactly the requests a reused connection lost
    (L{StaleConnection}).
  - It remembers the upstream's C{Keep-Alive: timeout=N}, and the pool then
    closes it while idle before the upstream would.

These hooks override public methods (C{request}, C{dataReceived},
C{connectionMade}) of a class from the private C{twisted.web._newclient},
and the pool's private C{_factory} and C{_putConnection}: Twisted offers no
public way to choose the pool's protocol. tests/test_twistedcontract.py
checks every name this relies on.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IResponse

from responses_proxy.defaults import MAX_HEADER_BYTES, MAX_HEADERS
from responses_proxy.eagerwrite import sendEagerly

# The end of a head: an empty line (Twisted's parser also accepts bare LF).
_HEAD_END = re.compile(rb"\n\r?\n")
_KEEP_ALIVE_TIMEOUT = re.compile(
    rb"(?im)^keep-alive[ \t]*:.*?\btimeout[ \t]*=[ \t]*(\d+)"
)


class StaleConnection(Exception):
    """
    A reused connection was closed before any byte of the answer arrived:
    the request can be sent again on a fresh connection.

    @ivar failure: what Twisted reported.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__("the upstream closed a reused connection before answering")
        self.failure = failure


class UpstreamAnswerInvalid(Exception):
    """
    The upstream's answer head broke the proxy's limits; C{str()} says how.
    """


class HeadWatcher:
    """
    Follow an answer's head as it arrives, without holding up any byte.

    Only the head is kept, and never more of it than the limits allow.

    @ivar complete: the final (non-1xx) head has been seen.
    @ivar keepAliveTimeout: the C{timeout=} of its C{Keep-Alive} header.
    """

    def __init__(
        self, maxBytes: int = MAX_HEADER_BYTES, maxHeaders: int = MAX_HEADERS
    ) -> None:
        self._maxBytes = maxBytes
        self._maxHeaders = maxHeaders
        self._buffer = b""
        self.complete = False
        self.keepAliveTimeout: float | None = None

    def feed(self, data: bytes) -> str | None:
        """
        Look at the next bytes of the answer; return why it is refused, if it is.
        """
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = _HEAD_END.search(buffer)
            if end is None:
                self._buffer = buffer
                return self._tooLarge(buffer)
            head = buffer[: end.start() + 1]
            problem = self._tooLarge(head)
            if problem is not None:
                return problem
            code = _statusCode(head)
            if code is not None and not 100 <= code <= 599:
                return f"the upstream answered with status {code}, outside 100-599"
            if code is not None and code < 200:
                # An interim 1xx answer (Twisted skips it); the real one follows.
                buffer = buffer[end.end() :]
                continue
            self._buffer = b""
            self.complete = True
            timeout = _KEEP_ALIVE_TIMEOUT.search(head)
            if timeout is not None:
                self.keepAliveTimeout = float(timeout.group(1))
            return None

    def _tooLarge(self, head: bytes) -> str | None:
        if len(head) > self._maxBytes:
            return f"the answer's head is larger than {self._maxBytes} bytes"
        if head.count(b"\n") - 1 > self._maxHeaders:
            return f"the answer has more than {self._maxHeaders} header lines"
        return None


def _statusCode(head: bytes) -> int | None:
    """
    The status code of a head, or None when it has none (Twisted's parser
    refuses such an answer itself).
    """
    parts = head.split(b"\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


def _closedByPeer(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", None) or [failure]
    return all(
        isinstance(reason, Failure)
        and reason.check(ConnectionDone, ConnectionLost) is not None
        and reason.check(CancelledError) is None
        for reason in reasons
    )


class UpstreamProtocol(HTTP11ClientProtocol):
    """
    An upstream connection; see the module docstring.

    @ivar idleTimeout: how long the upstream keeps this connection open
        while idle, when it said so (C{Keep-Alive: timeout=N}).
    """

    idleTimeout: float | None = None
    _requestsSent = 0
    _answerStarted = False
    _refused: str | None = None
    _head: HeadWatcher | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        # Under TLS the socket is the transport's own transport.
        socket = getattr(transport, "transport", None) or transport
        sendEagerly(socket)
        setNoDelay = getattr(socket, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass

    def request(self, request: Any) -> Deferred[IResponse]:
        reused = self._requestsSent > 0
        self._requestsSent += 1
        self._answerStarted = False
        self._head = HeadWatcher()
        d: Deferred[IResponse] = super().request(request)
        return d.addErrback(self._classify, reused)

    def _classify(self, failure: Failure, reused: bool) -> Failure:
        if self._refused is not None:
            return Failure(UpstreamAnswerInvalid(self._refused))
        if (
            reused
            and not self._answerStarted
            and failure.check(ResponseNeverReceived, RequestTransmissionFailed)
            and _closedByPeer(failure)
        ):
            return Failure(StaleConnection(failure))
        return failure

    def dataReceived(self, data: bytes) -> None:
        if self._refused is not None:
            return
        self._answerStarted = True
        head = self._head
        if head is not None:
            problem = head.feed(data)
            if problem is not None:
                self._refused = problem
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if head.complete:
                self._head = None
                self.idleTimeout = head.keepAliveTimeout
        super().dataReceived(data)


def idleLimit(keepAliveTimeout: float) -> float:
    """
    How long to keep a connection idle whose upstream closes it after
    C{keepAliveTimeout} seconds: long enough to be reused, short enough that
    the upstream's timer does not cross our next request.
    """
    if keepAliveTimeout <= 2:
        return keepAliveTimeout / 2
    return keepAliveTimeout - 1.0


class _UpstreamClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per upstream connection is noise.
    noisy = False

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return UpstreamProtocol(self._quiescentCallback)


class UpstreamPool(HTTPConnectionPool):
    """
    The pool of L{UpstreamProtocol} connections.
    """

    _factory = _UpstreamClientFactory

    def _putConnection(self, key: object, connection: HTTP11ClientProtocol) -> None:
        # A connection already told to close (its client left mid-answer) can
        # still finish reading its response, and Twisted then pools it; the
        # next request would be written into a closing socket and get a 502.
        transport: Any = connection.transport
        if transport is None or getattr(transport, "disconnecting", False):
            if transport is not None:
                transport.abortConnection()
            return
        timeout = self.cachedConnectionTimeout
        upstreamLimit = getattr(connection, "idleTimeout", None)
        if upstreamLimit is not None:
            limit = min(timeout, idleLimit(upstreamLimit))
            self.cachedConnectionTimeout = limit  # type: ignore[assignment]
        try:
            super()._putConnection(key, connection)
        finally:
            self.cachedConnectionTimeout = timeout

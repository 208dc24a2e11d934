# -*- test-case-name: tests.test_eagerwrite -*-
"""
Send on write when nothing is queued, instead of on the next reactor turn;
pause reading only when it matters.

Twisted's TCP transports queue every C{write()} and send it on the next
reactor iteration, registering and unregistering the socket with epoll each
time. On a proxy's request path that is two extra loop turns and four
C{epoll_ctl} calls per exchange (client side and upstream side), most of
the latency a sequential client sees (bench: ttfb). When the transport's
queue is empty, this tries C{send(2)} at once and queues only what the
kernel did not take, so ordering, flow control (the producer is paused when
that queue grows) and error handling (a failing socket is left to the
reactor's write path) stay Twisted's. An aborted transport sends nothing.

Where the proxy knows it is about to write several pieces that belong
together (an answer's head and its first bytes), L{batchedWrites} holds
them and sends each transport's pieces with one C{send(2)} when the block
ends: on loopback a send costs several percent of an exchange. Measured
and not kept: holding everything one event writes until the event ends (the
first byte of an answer then waits for the rest of the event's work), and
batching the upstream request's head with its body (about 0.06 ms more
time to first byte in bench/run's ttfb, for a few percent of CPU).

It applies to already connected plain C{twisted.internet.tcp} transports,
whose class is switched to a subclass that only adds this C{write}
(L{sendEagerly}); anything else (TLS wrappers, UNIX sockets, test
transports) is left alone.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from twisted.internet import tcp

_holding: list[_EagerWriteMixin] = []


class _Batch:
    """
    Context manager: hold eager writes until the outermost block ends.
    """

    depth = 0

    def __enter__(self) -> None:
        _Batch.depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _Batch.depth -= 1
        if not _Batch.depth:
            while _holding:
                _holding.pop()._sendHeld()


batchedWrites = _Batch


class _EagerWriteMixin:
    connected: int
    disconnecting: bool
    dataBuffer: bytes
    offset: int
    _tempDataBuffer: list[bytes]
    _writeDisconnected: bool
    _aborting: bool
    socket: Any
    _held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        elif _Batch.depth and data:
            self._held = [data]
            _holding.append(self)
        else:
            self._sendNow(data)

    def _sendHeld(self) -> None:
        held, self._held = self._held, None
        if held:
            self._sendNow(held[0] if len(held) == 1 else b"".join(held))

    def _sendNow(self, data: bytes) -> None:
        if (
            data
            and self.connected
            and not self.disconnecting
            and not self._aborting
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except OSError:
                # Full (EAGAIN) or failing: queue it either way; the
                # reactor's write path sends it later or reports the error.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    # Lazy pausing. Twisted's HTTP client pauses the upstream socket when an
    # answer's head is parsed and resumes it as soon as the body has a
    # reader, in the same call: two epoll_ctl calls per exchange for nothing
    # (a tenth of the CPU at c=32). A pause here only marks the transport;
    # the socket is taken out of epoll if a read event arrives while marked,
    # so no data is ever read while paused.

    _reading = True  # sendEagerly switches connected, reading transports
    _pausePending = False

    def startReading(self) -> None:
        self._reading = True
        super().startReading()  # type: ignore[misc]

    def stopReading(self) -> None:
        self._reading = False
        self._pausePending = False
        super().stopReading()  # type: ignore[misc]

    def pauseProducing(self) -> None:
        if self._reading:
            self._pausePending = True
        else:
            super().pauseProducing()  # type: ignore[misc]

    def resumeProducing(self) -> None:
        if self._pausePending:
            self._pausePending = False
        else:
            super().resumeProducing()  # type: ignore[misc]

    def doRead(self) -> Any:
        if self._pausePending:
            self.stopReading()
            return None
        return super().doRead()  # type: ignore[misc]


class _EagerServer(_EagerWriteMixin, tcp.Server):
    pass


class _EagerClient(_EagerWriteMixin, tcp.Client):
    pass


_EAGER = {tcp.Server: _EagerServer, tcp.Client: _EagerClient}


def sendEagerly(transport: object) -> bool:
    """
    Make a plain TCP transport send on write when its queue is empty;
    return whether it was switched.
    """
    eager = _EAGER.get(type(transport))  # exact types only, never subclasses
    if eager is None:
        return False
    transport.__class__ = eager
    return True

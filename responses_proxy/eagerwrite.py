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

(Holding the writes of one event and sending them together was tried: no
less CPU, and the first byte of an answer left later.)

It applies to already connected plain C{twisted.internet.tcp} transports,
whose class is switched to a subclass that only adds this C{write}
(L{sendEagerly}); anything else (TLS wrappers, UNIX sockets, test
transports) is left alone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class _EagerWriteMixin:
    connected: int
    disconnecting: bool
    dataBuffer: bytes
    offset: int
    _tempDataBuffer: list[bytes]
    _writeDisconnected: bool
    _aborting: bool
    socket: Any

    def write(self, data: bytes) -> None:
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

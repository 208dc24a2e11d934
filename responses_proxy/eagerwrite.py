# -*- test-case-name: tests.test_eagerwrite -*-
"""
Send on write when nothing is queued, instead of on the next reactor turn;
pause reading only when it matters.

Twisted's TCP transports queue every C{write()} and send it on the next
reactor iteration, registering and unregistering the socket with epoll each
time (twisted/twisted#5303, "Default transport implementation doesn't write
out bytes immediately", open since 2011). On a proxy's request path that is
two extra loop turns and four C{epoll_ctl} calls per exchange (client side
and upstream side), most of the latency a sequential client sees (bench:
ttfb). When the transport's queue is empty, this tries C{send(2)} at once
and queues only what the kernel did not take, so ordering, flow control
(the producer is paused when that queue grows) and error handling (a
failing socket is left to the reactor's write path) stay Twisted's. An
aborted transport sends nothing.

Where the proxy knows it is about to write several pieces that belong
together (an answer's head and its first bytes), L{batchedWrites} holds
them and sends each transport's pieces with one C{send(2)} when the block
ends: on loopback a send costs several percent of an exchange.

Lazy pausing: Twisted's HTTP client pauses the upstream socket when an
answer's head is parsed and resumes it as soon as the body has a reader, in
the same call: two C{epoll_ctl} calls per exchange for nothing (a tenth of
the CPU at c=32). A pause then only marks the transport; the socket leaves
epoll if a read event arrives while marked, so no data is ever read while
paused. The transport's own C{pauseProducing} contract is kept: nothing is
delivered to the protocol while paused.

It applies to already connected plain C{twisted.internet.tcp} transports,
whose class is switched to a subclass that adds only this (L{sendEagerly});
anything else (TLS wrappers, UNIX sockets, test transports) is left alone.
This reads and relies on C{tcp.Connection} internals (C{dataBuffer},
C{offset}, C{_tempDataBuffer}, C{_writeDisconnected}, C{_aborting},
C{doRead}); they are checked once, on the first transport, and if any is
missing nothing is switched and stock Twisted is used
(tests/test_twistedcontract.py checks them too). Environment switches, read
at the first connection: C{RESPONSES_PROXY_EAGER_WRITES=0} turns all of
this off, C{RESPONSES_PROXY_LAZY_PAUSE=0} only the lazy pausing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

_log = Logger()

EAGER_WRITES_VARIABLE = "RESPONSES_PROXY_EAGER_WRITES"
LAZY_PAUSE_VARIABLE = "RESPONSES_PROXY_LAZY_PAUSE"

# What the switched classes read or override on a connected tcp transport.
REQUIRED_ATTRIBUTES = (
    "connected",
    "disconnecting",
    "dataBuffer",
    "offset",
    "socket",
    "_tempDataBuffer",
    "_writeDisconnected",
    "_aborting",
)
REQUIRED_METHODS = (
    "write",
    "writeSequence",
    "doRead",
    "startReading",
    "stopReading",
    "pauseProducing",
    "resumeProducing",
)

_holding: list[_EagerWrite] = []


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


class _EagerWrite:
    """
    Mixed into C{tcp.Server}/C{tcp.Client}: send on write when nothing is queued.
    """

    connected: int
    disconnecting: int
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


class _LazyPause:
    """
    Mixed in after L{_EagerWrite}: a pause only marks the transport until a
    read event arrives while it is marked.
    """

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


def _subclasses(lazyPause: bool) -> dict[type, type]:
    mixins: tuple[type, ...] = (
        (_EagerWrite, _LazyPause) if lazyPause else (_EagerWrite,)
    )
    return {
        base: type(f"Eager{base.__name__}", (*mixins, base), {})
        for base in (tcp.Server, tcp.Client)
    }


def missingPreconditions(transport: object) -> list[str]:
    """
    The attributes and methods the switched classes need that C{transport}
    (a connected C{tcp.Server} or C{tcp.Client}) does not have.
    """
    missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(transport, name)]
    missing += [
        name
        for name in REQUIRED_METHODS
        if not callable(getattr(transport, name, None))
    ]
    return missing


class EagerWrites:
    """
    Whether, and with which classes, transports are switched; decided once.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._classes: dict[type, type] | None = None

    def _decide(self, transport: object) -> dict[type, type]:
        if self._environ.get(EAGER_WRITES_VARIABLE, "1") == "0":
            return {}
        missing = missingPreconditions(transport)
        if missing:
            _log.warn(
                "This Twisted's TCP transports lack {missing}: sending the "
                "stock way (eager writes off)",
                missing=", ".join(missing),
            )
            return {}
        return _subclasses(self._environ.get(LAZY_PAUSE_VARIABLE, "1") != "0")

    def switch(self, transport: object) -> bool:
        """
        Make a plain TCP transport send on write when its queue is empty;
        return whether it was switched.
        """
        if type(transport) not in (tcp.Server, tcp.Client):
            return False  # exact types only, never subclasses
        if self._classes is None:
            self._classes = self._decide(transport)
        eager = self._classes.get(type(transport))
        if eager is None:
            return False
        transport.__class__ = eager
        return True


_default = EagerWrites()


def sendEagerly(transport: object) -> bool:
    """
    Switch C{transport} as the process's environment says (see the module
    docstring); return whether it was switched.
    """
    return _default.switch(transport)

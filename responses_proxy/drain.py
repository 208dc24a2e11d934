# -*- test-case-name: tests.test_drain -*-
"""
Stop without cutting what is in flight (C{--drain-timeout}).

A drain, started by SIGTERM, SIGINT, SIGHUP or C{GET /shutdown}:

  1. stops accepting at once: the listening port is closed (with socket
     activation only our copy: systemd keeps the socket, and connections
     queue for the next process), server-info is removed, systemd is told
     C{STOPPING=1};
  2. closes every idle client connection, and lets those with a request
     under way finish it (its answer says C{Connection: close});
  3. after C{timeout} seconds aborts whatever is left, visibly truncated,
     each exchange logged with outcome C{drain_aborted}.

It is over when no client connection is left, or at the deadline.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from responses_proxy.record import Exchanges


class Listener(Protocol):
    def stopAccepting(self) -> Deferred[None]:
        """
        Close the listening port, remove server-info, notify systemd.
        """


class Connections(Protocol):
    def startDraining(self) -> None:
        """
        Close idle connections, and make busy ones close after their answer.
        """

    def whenNoConnections(self) -> Deferred[None]:
        """
        Fire once no client connection is open.
        """

    def abortConnections(self) -> None:
        """
        Abort every client connection still open.
        """


class Drain:
    """
    One drain of the proxy (see the module docstring).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        listener: Listener,
        connections: Connections,
        exchanges: Exchanges,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._listener = listener
        self._connections = connections
        self._exchanges = exchanges
        self._timeout = timeout
        self._done: Deferred[None] | None = None
        self._deadline: Any = None

    def start(self) -> Deferred[None]:
        """
        Begin; fires when the drain is over. Calling it again returns a
        Deferred for the same drain.
        """
        if self._done is not None:
            return _follow(self._done)
        self._done = Deferred()
        self._listener.stopAccepting()
        self._connections.startDraining()
        inFlight = self._exchanges.inFlight
        self._log.info(
            "Draining: {in_flight} exchanges in flight, up to {timeout} s",
            in_flight=inFlight,
            timeout=self._timeout,
        )
        if self._timeout <= 0:
            self.now()
        else:
            self._deadline = self._reactor.callLater(self._timeout, self._expired)
            self._connections.whenNoConnections().addCallback(self._drained)
        return _follow(self._done)

    def _drained(self, _: object) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._finish()

    def _expired(self) -> None:
        self._deadline = None
        left = self._exchanges.inFlight
        self._log.warn(
            "Drain timeout: aborting {in_flight} exchanges still in flight",
            in_flight=left,
        )
        self.now()

    def now(self) -> None:
        """
        Abort everything that is left and end the drain.
        """
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        for exchange in self._exchanges.active():
            exchange.abort("drain_aborted")
        self._connections.abortConnections()
        self._finish()

    def _finish(self) -> None:
        if self._done is not None and not self._done.called:
            self._done.callback(None)


def _follow(d: Deferred[None]) -> Deferred[None]:
    if d.called:
        return succeed(None)
    follower: Deferred[None] = Deferred()

    def done(result: object) -> object:
        follower.callback(None)
        return result

    d.addBoth(done)
    return follower

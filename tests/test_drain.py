# -*- test-case-name: tests.test_drain -*-
"""
Unit tests (in memory) for L{responses_proxy.drain.Drain} on a L{Clock},
with stand-ins for the listener, the client connections and the exchanges
in flight; and for how L{ProxyApplicationService} runs one drain.

The site's side of a drain (which connections close when) is in
C{tests.test_site}; the drain composed by L{makeService} in
C{tests.test_tap}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.drain import Drain
from responses_proxy.record import UNKNOWN_CALLER, ExchangeRecord, Exchanges
from responses_proxy.service import ProxyApplicationService


class _Listener:
    """
    Records L{stopAccepting}.
    """

    def __init__(self) -> None:
        self.stopped = 0

    def stopAccepting(self) -> Deferred[None]:
        self.stopped += 1
        return succeed(None)


class _Connections:
    """
    Client connections that close when the test says so.
    """

    def __init__(self, open: bool = True) -> None:
        self.draining = 0
        self.aborted = 0
        self.open = open
        self._waiting: list[Deferred[None]] = []

    def startDraining(self) -> None:
        self.draining += 1

    def whenNoConnections(self) -> Deferred[None]:
        if not self.open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def abortConnections(self) -> None:
        self.aborted += 1

    def allClosed(self) -> None:
        """
        The last connection closed.
        """
        self.open = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class _Exchange:
    """
    An exchange in flight, recording how it was aborted.
    """

    def __init__(self, exchanges: Exchanges) -> None:
        self.aborted: list[str] = []
        self._exchanges = exchanges
        exchanges.begin(self, UNKNOWN_CALLER)

    def abort(self, outcome: str) -> None:
        self.aborted.append(outcome)
        self._exchanges.end(self, ExchangeRecord("POST", "/v1/responses"))


class _Stage:
    """
    A clock, the stand-ins, and two exchanges in flight.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.listener = _Listener()
        self.connections = _Connections()
        self.exchanges = Exchanges(listeners=[])
        self.inFlight = [_Exchange(self.exchanges) for _ in range(2)]

    def drain(self, timeout: float = 10) -> Drain:
        """
        A drain of the stand-ins.
        """
        return Drain(
            self.clock, self.listener, self.connections, self.exchanges, timeout
        )


class DrainTests(SynchronousTestCase):
    """
    One drain: stop accepting, wait for the connections, abort at the
    deadline.
    """

    def setUp(self) -> None:
        stage = self.stage = _Stage()
        self.clock = stage.clock
        self.listener = stage.listener
        self.connections = stage.connections
        self.inFlight = stage.inFlight
        self.drain = stage.drain

    def test_stopsAcceptingAtOnce(self) -> None:
        """
        Starting stops accepting and starts draining the connections at
        once; the drain is not over while connections are open.
        """
        done = self.drain().start()
        self.assertEqual((self.listener.stopped, self.connections.draining), (1, 1))
        self.assertNoResult(done)

    def test_overWhenNoConnections(self) -> None:
        """
        Once the last connection closes, the drain is over: nothing is
        aborted and no deadline is left behind.
        """
        done = self.drain().start()
        self.clock.advance(9)
        self.connections.allClosed()
        self.successResultOf(done)
        self.assertEqual([e.aborted for e in self.inFlight], [[], []])
        self.assertEqual(self.connections.aborted, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothingOpen(self) -> None:
        """
        With no connection open the drain is over at once.
        """
        self.connections.open = False
        self.successResultOf(self.drain().start())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortsAtDeadline(self) -> None:
        """
        At the deadline, every exchange in flight is aborted as
        C{drain_aborted}, then every connection, and the drain is over.
        """
        done = self.drain(10).start()
        self.clock.advance(9.999)
        self.assertNoResult(done)
        self.clock.advance(0.001)
        self.assertEqual(
            [e.aborted for e in self.inFlight], [["drain_aborted"], ["drain_aborted"]]
        )
        self.assertEqual(self.connections.aborted, 1)
        self.successResultOf(done)

    def test_closedAfterDeadline(self) -> None:
        """
        Connections that close after the drain was cut short change nothing.
        """
        done = self.drain(1).start()
        self.clock.advance(1)
        self.connections.allClosed()
        self.successResultOf(done)
        self.assertEqual(self.connections.aborted, 1)

    def test_zeroTimeout(self) -> None:
        """
        A timeout of 0 aborts at once.
        """
        done = self.drain(0).start()
        self.successResultOf(done)
        self.assertEqual(
            [e.aborted for e in self.inFlight], [["drain_aborted"], ["drain_aborted"]]
        )
        self.assertEqual(self.connections.aborted, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_startTwice(self) -> None:
        """
        Starting again is the same drain: one stop, one deadline, and both
        results fire when it is over.
        """
        drain = self.drain()
        first = drain.start()
        second = drain.start()
        self.assertEqual((self.listener.stopped, self.connections.draining), (1, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertNoResult(second)
        self.connections.allClosed()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(drain.start())

    def test_resultsIndependent(self) -> None:
        """
        A callback on one result does not change what the others get.
        """
        drain = self.drain()
        first = drain.start()
        first.addCallback(lambda _: "mine")
        second = drain.start()
        self.connections.allClosed()
        self.assertEqual(self.successResultOf(first), "mine")
        self.assertIsNone(self.successResultOf(second))

    def test_now(self) -> None:
        """
        C{now} cuts a drain short: aborts, cancels the deadline, is over.
        """
        drain = self.drain()
        done = drain.start()
        drain.now()
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.connections.aborted, 1)
        drain.now()
        self.assertEqual(
            [e.aborted for e in self.inFlight], [["drain_aborted"], ["drain_aborted"]]
        )


class _Drains:
    """
    Makes the drains L{ProxyApplicationService} asks for, on stand-ins.
    """

    def __init__(self, stage: _Stage) -> None:
        self.stage = stage
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> Drain:
        self.timeouts.append(timeout)
        return self.stage.drain(timeout)


class ApplicationServiceTests(SynchronousTestCase):
    """
    L{ProxyApplicationService.shutdown} and C{stopNow}: one drain, one stop.
    """

    def setUp(self) -> None:
        self.helper = _Stage()
        self.drains = _Drains(self.helper)
        self.stops: list[None] = []
        self.service = ProxyApplicationService(
            self.drains, 10, lambda: self.stops.append(None)
        )

    def test_shutdown(self) -> None:
        """
        C{shutdown} drains with the drain timeout, then stops; its result
        fires when drained.
        """
        done = self.service.shutdown()
        self.assertEqual(self.drains.timeouts, [10])
        self.assertNoResult(done)
        self.assertEqual(self.stops, [])
        self.helper.connections.allClosed()
        self.successResultOf(done)
        self.assertEqual(self.stops, [None])

    def test_shutdownTwice(self) -> None:
        """
        A second C{shutdown} (a second C{GET /shutdown}) joins the first drain.
        """
        first = self.service.shutdown()
        second = self.service.shutdown()
        self.assertEqual(self.drains.timeouts, [10])
        self.helper.connections.allClosed()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.stops, [None])

    def test_stopNowDuringShutdown(self) -> None:
        """
        C{stopNow} during a drain cuts it short; the process stops once.
        """
        self.service.shutdown()
        self.service.stopNow()
        self.assertEqual(self.drains.timeouts, [10])
        self.assertEqual(self.helper.connections.aborted, 1)
        self.assertEqual(self.stops, [None])
        self.service.stopNow()
        self.helper.connections.allClosed()
        self.assertEqual(self.stops, [None])

    def test_stopNowFirst(self) -> None:
        """
        C{stopNow} without a drain under way is a drain with no time: it
        aborts at once and stops once.
        """
        self.service.stopNow()
        self.assertEqual(self.drains.timeouts, [0])
        self.assertEqual(self.stops, [None])
        self.service.stopNow()
        self.successResultOf(self.service.shutdown())
        self.assertEqual(self.drains.timeouts, [0])
        self.assertEqual(self.stops, [None])

    def test_deadline(self) -> None:
        """
        A drain that reaches its deadline stops too, once.
        """
        self.service.shutdown()
        self.helper.clock.advance(10)
        self.assertEqual(self.stops, [None])
        self.helper.connections.allClosed()
        self.assertEqual(self.stops, [None])

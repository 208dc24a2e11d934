# -*- test-case-name: tests.test_lifecycle -*-
"""
Unit tests (in memory) for L{responses_proxy.lifecycle}: the process
policy of L{ProcessService} driven with a memory reactor and injected
C{installSignal}, C{tuneGC} and C{getpid}, so that no real signal handler,
garbage-collector setting or standard error is touched.

The same policy in real processes (signals, exit status, twistd's
daemonizing launcher) is in C{tests.test_process}.
"""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy import lifecycle
from responses_proxy.lifecycle import (
    STOP_SIGNALS,
    ProcessService,
    reportStartupFailure,
    stopOnce,
    tuneGarbageCollector,
)
from responses_proxy.startup import StartupError


class _Reactor(MemoryReactorClock):
    """
    A memory reactor whose C{callFromThread} queues, as a signal handler's
    hand-over to the reactor thread does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThread: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any) -> None:
        self.fromThread.append((f, args))

    def runFromThread(self) -> None:
        """
        Run what was handed over.
        """
        calls, self.fromThread = self.fromThread, []
        for f, args in calls:
            f(*args)


class _Proxy(Service):
    """
    The proxy service as the policy sees it: records its calls, and fails
    to start with C{failure} if given.
    """

    def __init__(
        self,
        events: list[str],
        failure: StartupError | None = None,
        failIn: str = "startService",
    ) -> None:
        self.events = events
        self.failure = failure
        self.failIn = failIn

    def privilegedStartService(self) -> None:
        self.events.append("privilegedStartService")
        if self.failure is not None and self.failIn == "privilegedStartService":
            raise self.failure
        super().privilegedStartService()

    def startService(self) -> None:
        self.events.append("startService")
        if self.failure is not None and self.failIn == "startService":
            raise self.failure
        super().startService()

    def shutdown(self) -> Deferred[None]:
        self.events.append("shutdown")
        return succeed(None)

    def stopNow(self) -> None:
        self.events.append("stopNow")


class _Process:
    """
    A L{ProcessService} around a L{_Proxy}, and what the policy did.
    """

    def __init__(
        self,
        failure: StartupError | None = None,
        failIn: str = "startService",
        pids: list[int] | None = None,
        wipe: Callable[[], object] | None = None,
    ) -> None:
        self.events: list[str] = []
        self.installed: list[tuple[int, Any]] = []
        self.reactor = _Reactor()
        self.proxy = _Proxy(self.events, failure, failIn)
        pidList = [100] if pids is None else pids

        def getpid() -> int:
            return pidList.pop(0) if len(pidList) > 1 else pidList[0]

        def installSignal(number: int, handler: Any) -> None:
            self.events.append(f"signal {signal.Signals(number).name}")
            self.installed.append((number, handler))

        self.service = ProcessService(
            self.proxy,
            self.reactor,
            wipe=wipe,
            installSignal=installSignal,
            tuneGC=lambda: self.events.append("tuneGC"),
            getpid=getpid,
        )
        self.proxy.setServiceParent(self.service)

    def start(self) -> None:
        """
        Start as the entry points do.
        """
        self.service.privilegedStartService()
        self.service.startService()

    def deliver(self, number: int) -> None:
        """
        The process receives signal C{number}: the installed handler runs,
        then what it handed to the reactor thread.
        """
        handlers = [h for n, h in self.installed if n == number]
        handlers[-1](number, None)
        self.reactor.runFromThread()

    def reset(self) -> None:
        """
        Forget the events so far.
        """
        del self.events[:]


class SignalTests(SynchronousTestCase):
    """
    SIGTERM, SIGINT and SIGHUP drain; a second SIGTERM or SIGINT stops now.
    """

    def setUp(self) -> None:
        self.process = _Process()
        self.process.start()
        self.process.reset()

    def test_installedAtStart(self) -> None:
        """
        The handlers are installed in C{startService}, before the proxy
        starts (so before it writes server-info): a signal sent the moment
        server-info appears already drains.
        """
        process = _Process()
        process.start()
        self.assertEqual(
            process.events,
            [
                "privilegedStartService",
                "signal SIGTERM",
                "signal SIGINT",
                "signal SIGHUP",
                "startService",
                "tuneGC",
            ],
        )
        self.assertEqual(
            [number for number, _ in process.installed], list(STOP_SIGNALS)
        )

    def test_installedAgainWhenRunning(self) -> None:
        """
        Once the reactor runs (and has installed its own), they are
        installed again.
        """
        self.process.reactor.run()
        self.assertEqual(
            self.process.events,
            ["signal SIGTERM", "signal SIGINT", "signal SIGHUP"],
        )

    def test_handlerHandsOver(self) -> None:
        """
        The handler itself only hands the signal to the reactor thread.
        """
        [(number, handler)] = self.process.installed[:1]
        handler(number, None)
        self.assertEqual(self.process.events, [])
        self.assertEqual(len(self.process.reactor.fromThread), 1)
        self.process.reactor.runFromThread()
        self.assertEqual(self.process.events, ["shutdown"])

    def test_firstSignalDrains(self) -> None:
        """
        Each stop signal, first received, drains.
        """
        for number in STOP_SIGNALS:
            process = _Process()
            process.start()
            process.reset()
            process.deliver(number)
            self.assertEqual(process.events, ["shutdown"], number)

    def test_secondSIGTERMStopsNow(self) -> None:
        """
        A second SIGTERM stops now.
        """
        self.process.deliver(signal.SIGTERM)
        self.process.deliver(signal.SIGTERM)
        self.assertEqual(self.process.events, ["shutdown", "stopNow"])

    def test_secondSIGINTStopsNow(self) -> None:
        """
        So does a second SIGINT (a second Ctrl-C), also after a SIGTERM.
        """
        self.process.deliver(signal.SIGTERM)
        self.process.deliver(signal.SIGINT)
        self.assertEqual(self.process.events, ["shutdown", "stopNow"])

    def test_SIGHUPTwiceDrainsOnly(self) -> None:
        """
        SIGHUP twice (a terminal that went away, twice) does not stop now.
        """
        self.process.deliver(signal.SIGHUP)
        self.process.deliver(signal.SIGHUP)
        self.assertEqual(self.process.events, ["shutdown"])

    def test_SIGTERMAfterSIGHUPStopsNow(self) -> None:
        """
        A SIGTERM after a SIGHUP's drain stops now.
        """
        self.process.deliver(signal.SIGHUP)
        self.process.deliver(signal.SIGTERM)
        self.assertEqual(self.process.events, ["shutdown", "stopNow"])


class StartupFailureTests(SynchronousTestCase):
    """
    A L{StartupError} while starting: one line on the real standard error
    and exit status 1, or, under a daemonizing twistd, a short
    L{RuntimeError} for its launcher to show.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)

    def test_startService(self) -> None:
        """
        A failure in C{startService} is one line and C{SystemExit(1)}; the
        garbage collector is not tuned.
        """
        process = _Process(
            StartupError("cannot write server-info /x: Permission denied")
        )
        process.service.privilegedStartService()
        with self.assertRaises(SystemExit) as raised:
            process.service.startService()
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "responses-api-proxy: cannot write server-info /x: Permission denied\n",
        )
        self.assertNotIn("tuneGC", process.events)

    def test_privilegedStartService(self) -> None:
        """
        A failure to listen in C{privilegedStartService} is reported the
        same way.
        """
        process = _Process(
            StartupError("cannot listen on 127.0.0.1:1: Address already in use"),
            failIn="privilegedStartService",
        )
        with self.assertRaises(SystemExit) as raised:
            process.service.privilegedStartService()
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "responses-api-proxy: cannot listen on 127.0.0.1:1: "
            "Address already in use\n",
        )

    def test_daemonized(self) -> None:
        """
        In a process other than the one that built the service (twistd
        forked to daemonize), the failure is a L{RuntimeError} with the
        message, and nothing is written to standard error.
        """
        process = _Process(StartupError("cannot listen: busy"), pids=[100, 200])
        process.service.privilegedStartService()
        with self.assertRaises(RuntimeError) as raised:
            process.service.startService()
        self.assertEqual(str(raised.exception), "cannot listen: busy")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_daemonizedLongMessage(self) -> None:
        """
        A long message keeps its end (the reason), within what twistd's
        launcher shows.
        """
        message = "cannot write server-info " + "/very/long" * 20 + ": Not a directory"
        process = _Process(StartupError(message), pids=[100, 200])
        with self.assertRaises(RuntimeError) as raised:
            process.start()
        shown = str(raised.exception)
        self.assertEqual(len(shown), 84)
        self.assertTrue(shown.startswith("..."))
        self.assertTrue(message.endswith(shown[3:]))
        self.assertTrue(shown.endswith(": Not a directory"))

    def test_daemonizedShortMessageKept(self) -> None:
        """
        A message of up to 84 characters is kept whole.
        """
        message = "x" * 84
        process = _Process(StartupError(message), pids=[100, 200])
        with self.assertRaises(RuntimeError) as raised:
            process.start()
        self.assertEqual(str(raised.exception), message)

    def test_reportStartupFailure(self) -> None:
        """
        L{reportStartupFailure} writes the line and returns the exit.
        """
        result = reportStartupFailure("no key on standard input")
        self.assertIsInstance(result, SystemExit)
        self.assertEqual(result.code, 1)
        self.assertEqual(
            self.stderr.getvalue(), "responses-api-proxy: no key on standard input\n"
        )


class WipeTests(SynchronousTestCase):
    """
    The key is wiped after the reactor has shut down.
    """

    def test_wipeAfterShutdown(self) -> None:
        """
        C{wipe} is an "after shutdown" trigger, and only that.
        """
        wiped: list[None] = []

        def wipe() -> None:
            wiped.append(None)

        process = _Process(wipe=wipe)
        self.assertEqual(
            process.reactor.triggers, {"after": {"shutdown": [(wipe, (), {})]}}
        )
        self.assertEqual(wiped, [])

    def test_noWipe(self) -> None:
        """
        Without C{wipe}, no trigger.
        """
        self.assertEqual(_Process().reactor.triggers, {})


class HelperTests(SynchronousTestCase):
    """
    The small helpers of the policy.
    """

    def test_stopOnce(self) -> None:
        """
        L{stopOnce} stops a running reactor, and ignores one that is not.
        """
        reactor = MemoryReactorClock()
        reactor.running = True
        stopOnce(reactor)
        self.assertTrue(reactor.hasStopped)

        class Stopped:
            def stop(self) -> None:
                raise ReactorNotRunning()

        stopOnce(Stopped())

    def test_tuneGarbageCollector(self) -> None:
        """
        L{tuneGarbageCollector} collects, freezes, and raises the first
        threshold (checked on a stand-in for L{gc}: the test runner's own
        heap is never frozen).
        """
        calls: list[tuple[str, tuple[int, ...]]] = []

        class FakeGC:
            def collect(self) -> None:
                calls.append(("collect", ()))

            def freeze(self) -> None:
                calls.append(("freeze", ()))

            def set_threshold(self, *values: int) -> None:
                calls.append(("set_threshold", values))

        self.patch(lifecycle, "gc", FakeGC())
        tuneGarbageCollector()
        self.assertEqual(
            calls,
            [("collect", ()), ("freeze", ()), ("set_threshold", (20_000, 50, 100))],
        )

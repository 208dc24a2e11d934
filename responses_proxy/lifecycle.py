# -*- test-case-name: tests.test_lifecycle -*-
"""
How a proxy *process* starts and stops: the policy both entry points (twistd
and the console script) apply around the proxy service, and that services a
test starts in-process never get.

  - Start-up failures (L{StartupError}) are one line on standard error and
    exit status 1. Under a daemonizing twistd, whose standard error is
    /dev/null by the time services start, the error is raised instead, so
    that twistd reports it through its launcher (a workaround for
    twisted/twisted#4762, "give me a good error message and exit without
    daemonizing when an IService can't start up").
  - SIGTERM, SIGINT and SIGHUP start a drain (L{ProxyServiceLike.shutdown});
    a second SIGTERM or SIGINT stops at once. The handlers are installed
    before the reactor runs (a client may signal the proxy as soon as
    server-info appears) and again once it runs (it installs its own). The
    process then exits 0 under both entry points; systemd treats that as
    a clean stop.
  - Once started, the garbage collector is tuned for the request path.
  - After the reactor has shut down, the key (or token) buffer is wiped.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from responses_proxy.startup import StartupError

_log = Logger()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ProxyServiceLike(Protocol):
    """
    What the process policy needs of the proxy service.
    """

    def shutdown(self) -> Deferred[None]:
        """
        Drain, then stop.
        """

    def stopNow(self) -> None:
        """
        Abort what is in flight and stop.
        """


def reportStartupFailure(message: str) -> SystemExit:
    """
    Print one line to the real standard error and return the exit to raise.

    twistd has redirected C{sys.stderr} into its log by the time services
    start, so the operator would otherwise find the reason only in the log.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"responses-api-proxy: {message}\n")
    stream.flush()
    return SystemExit(1)


def stopOnce(reactor: Any) -> None:
    """
    Stop the reactor unless it is already stopping.
    """
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def tuneGarbageCollector() -> None:
    """
    Fewer and cheaper garbage collections on the request path.

    Start-up leaves tens of thousands of long-lived objects (Twisted, the
    OpenSSL bindings) that every full collection would walk again; freezing
    them leaves collections only the proxy's own objects. A larger first
    threshold lets a request's short-lived objects be freed by reference
    counting before a collection looks at them. Measured with bench/run at
    c=32: about +12% requests/s and half the p99 latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


class ProcessService(MultiService):
    """
    The top service of a proxy process: the proxy service under the
    process policy described in the module docstring.
    """

    def __init__(
        self,
        proxy: ProxyServiceLike,
        reactor: Any,
        *,
        wipe: Callable[[], object] | None = None,
        installSignal: Callable[[int, Any], object] = signal.signal,
        tuneGC: Callable[[], object] = tuneGarbageCollector,
        getpid: Callable[[], int] = os.getpid,
    ) -> None:
        super().__init__()
        self.proxy = proxy
        self._reactor = reactor
        self._installSignal = installSignal
        self._tuneGC = tuneGC
        self._getpid = getpid
        # twistd daemonizes (forks) between makeService and the start.
        self._builtIn = getpid()
        self._stopSignals = 0
        if wipe is not None:
            reactor.addSystemEventTrigger("after", "shutdown", wipe)

    def _failed(self, error: StartupError) -> BaseException:
        message = str(error)
        if self._getpid() != self._builtIn:
            # twistd's launcher shows the first 100 bytes of "Class: message";
            # a builtin class keeps the prefix short, and the end of the
            # message (the reason) is kept when a path makes it too long.
            _log.error("Start-up failed: {reason}", reason=message)
            return RuntimeError(
                message if len(message) <= 84 else "..." + message[-81:]
            )
        return reportStartupFailure(message)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            raise self._failed(e) from None

    def startService(self) -> None:
        self.handleSignals()
        self._reactor.callWhenRunning(self.handleSignals)
        try:
            super().startService()
        except StartupError as e:
            raise self._failed(e) from None
        self._tuneGC()

    def handleSignals(self) -> None:
        """
        Make SIGTERM, SIGINT and SIGHUP start a drain.
        """
        for number in STOP_SIGNALS:
            self._installSignal(number, self._signalled)

    def _signalled(self, number: int, frame: object) -> None:
        # In a signal handler: hand over to the reactor thread at once.
        self._reactor.callFromThread(self.stopSignalled, number)

    def stopSignalled(self, number: int) -> None:
        """
        A stop signal arrived: the first starts a drain, a second SIGTERM
        or SIGINT stops now.
        """
        self._stopSignals += 1
        if self._stopSignals == 1:
            _log.info("Received {signal}: draining", signal=signal.Signals(number).name)
            self.proxy.shutdown()
        elif number != signal.SIGHUP:
            _log.info(
                "Received {signal} again: stopping now",
                signal=signal.Signals(number).name,
            )
            self.proxy.stopNow()

# -*- test-case-name: tests.test_ledgerwriter -*-
"""
Unit tests (in memory, no global reactor) for
L{responses_proxy.ledgerwriter}: the usage ledger's writer thread, against a
recording stand-in for the SQLite connection and a reactor stand-in whose
C{callFromThread} the test runs itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.ledgerwriter import LedgerWriter

# How long a test waits for the writer thread before it fails.
DEADLINE = 30.0


class _Connection:
    """
    Records the statements and batches it is given; C{failNext} makes the
    next C{executemany} raise.
    """

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.failNext = False
        self.closed = False

    def execute(self, statement: str) -> None:
        self.calls.append(statement)

    def executemany(self, statement: str, rows: Sequence[Any]) -> None:
        if self.failNext:
            self.failNext = False
            raise OSError("disk I/O error")
        self.calls.append(list(rows))

    def close(self) -> None:
        self.closed = True


class _Reactor:
    """
    C{callFromThread} queues the call; L{runNext} runs one in the test.
    """

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., object], Any, Any]] = queue.Queue()

    def callFromThread(self, f: Callable[..., object], *a: Any, **kw: Any) -> None:
        self.calls.put((f, a, kw))

    def runNext(self) -> None:
        f, a, kw = self.calls.get(timeout=DEADLINE)
        f(*a, **kw)


class LedgerWriterTests(SynchronousTestCase):
    """
    L{LedgerWriter} commits batches on its own thread.
    """

    def setUp(self) -> None:
        self.connection = _Connection()
        self.reactor = _Reactor()
        # The thread "gathers" until the test lets it go on.
        self.gathering = threading.Event()
        self.release = threading.Event()

        def sleep(seconds: float) -> None:
            self.gathering.set()
            self.release.wait(DEADLINE)

        self.combine: Callable[[Sequence[Any]], list[Any]] = list
        self.writer = LedgerWriter(
            self.connection,  # type: ignore[arg-type]
            "INSERT ...",
            self.reactor,
            sleep=sleep,
            combine=lambda rows: self.combine(rows),
        )
        self.writer.start()
        self.addCleanup(self.finish)

    def finish(self) -> None:
        self.release.set()
        self.wait(self.writer.close())

    def wait(self, d: Deferred[None]) -> None:
        """
        Run the writer's calls into the reactor until C{d} has fired.
        """
        while not d.called:
            self.reactor.runNext()

    def test_rowsEndingTogetherShareATransaction(self) -> None:
        """
        The rows put while the thread gathers after the first are committed
        in one transaction, and C{flushed} fires after it.
        """
        self.writer.put((1,))
        self.assertTrue(self.gathering.wait(DEADLINE))
        self.writer.put((2,))
        self.writer.put((3,))
        flushed = self.writer.flushed()
        self.release.set()
        self.wait(flushed)
        self.assertEqual(self.connection.calls, ["BEGIN", [(1,), (2,), (3,)], "COMMIT"])

    def test_batchCombined(self) -> None:
        """
        A batch's rows go through C{combine} (in the writer thread) before
        they are executed; a failure still counts the rows that were put.
        """
        self.combine = lambda rows: [(sum(row[0] for row in rows),)]
        self.writer.put((1,))
        self.assertTrue(self.gathering.wait(DEADLINE))
        self.writer.put((2,))
        flushed = self.writer.flushed()
        self.release.set()
        self.wait(flushed)
        self.assertEqual(self.connection.calls, ["BEGIN", [(3,)], "COMMIT"])
        self.connection.failNext = True
        self.writer.put((4,))
        self.writer.put((5,))
        with capturedLogs() as events:
            self.wait(self.writer.flushed())
        [event] = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(event["count"], 2)

    def test_flushedWhenIdle(self) -> None:
        """
        With nothing queued, C{flushed} fires without a transaction.
        """
        self.wait(self.writer.flushed())
        self.assertEqual(self.connection.calls, [])

    def test_failureLoggedAndWritingGoesOn(self) -> None:
        """
        A batch that cannot be written is rolled back and logged (in the
        reactor thread, with the count, never the rows); later batches are
        written.
        """
        self.release.set()
        self.connection.failNext = True
        self.writer.put((1,))
        with capturedLogs() as events:
            self.wait(self.writer.flushed())
        self.assertEqual(self.connection.calls, ["BEGIN", "ROLLBACK"])
        [event] = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual((event["count"], event["error"]), (1, "disk I/O error"))
        self.writer.put((2,))
        self.wait(self.writer.flushed())
        self.assertEqual(self.connection.calls[2:], ["BEGIN", [(2,)], "COMMIT"])

    def test_closeCommitsThenCloses(self) -> None:
        """
        C{close} commits what is queued and closes the file;
        closing again is done at once.
        """
        self.release.set()
        self.writer.put((1,))
        self.wait(self.writer.close())
        self.assertEqual(self.connection.calls, ["BEGIN", [(1,)], "COMMIT"])
        self.assertTrue(self.connection.closed)
        self.assertTrue(self.writer.close().called)

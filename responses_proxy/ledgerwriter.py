# -*- test-case-name: tests.test_ledger -*-
"""
The usage ledger's writer: one thread of its own that commits what the
reactor hands it, so a slow disk never stalls a stream.

The reactor only puts rows on a queue (no Deferred, no wake-up of the
reactor per write). The thread takes the first row, lets a moment pass
(L{GATHER_SECONDS}) so that the exchanges ending together share one
transaction, and commits everything queued by then, one upsert per key
(C{combine}). That keeps a busy proxy to at most a hundred small
transactions a second, and a killed proxy loses only what ended in the
last 10 ms. (A Twisted threadpool call per batch cost more than the write
itself: the hand-off, the reactor's wake-up and the Deferred callbacks,
each time. And each wake-up of this thread costs the reactor a context
switch, on the same CPU when the proxy is pinned to one: at c=32, a
2 ms gather woke it about once per two requests, 12.5 us of CPU per
request; 10 ms wakes it once per five, 5.5 us.)

The reactor hears back only when it asks (L{LedgerWriter.flushed}), when a
write fails (logged) and at the end (L{LedgerWriter.close}).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

# How long the thread waits, after the first row of a batch, for more.
GATHER_SECONDS = 0.01


class _Marker:
    """
    A request to the thread, queued behind the rows put before it: tell
    C{done} (in the reactor thread) once they are committed; C{last} means
    close the file and stop after that.
    """

    def __init__(self, done: Deferred[None], last: bool = False) -> None:
        self.done = done
        self.last = last


class LedgerWriter:
    """
    Commit rows of C{statement}'s parameters on a thread of their own.

    @ivar _combine: turns one batch's rows into the parameters to execute
        (the ledger sums rows that share a key), in the writer thread.
    """

    _log = Logger(namespace="responses_proxy.ledger")

    def __init__(
        self,
        connection: sqlite3.Connection,
        statement: str,
        reactor: Any,
        gather: float = GATHER_SECONDS,
        sleep: Callable[[float], object] = time.sleep,
        combine: Callable[
            [Sequence[Sequence[Any]]], Sequence[Sequence[Any]]
        ] = lambda rows: rows,
    ) -> None:
        self._connection = connection
        self._statement = statement
        self._combine = combine
        self._reactor = reactor
        self._gather = gather
        self._sleep = sleep
        self._queue: queue.SimpleQueue[Sequence[Any] | _Marker] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="usage-ledger", daemon=True
        )
        self._started = False
        self._closed = False

    def start(self) -> None:
        """
        Start the thread.
        """
        if not self._started:
            self._started = True
            self._thread.start()

    def put(self, values: Sequence[Any]) -> None:
        """
        Queue one row for the next transaction (from the reactor thread).
        """
        self._queue.put(values)

    def flushed(self) -> Deferred[None]:
        """
        Fire once every row put so far is committed (or its write failed and
        was logged).
        """
        done: Deferred[None] = Deferred()
        self._queue.put(_Marker(done))
        self.start()
        return done

    def close(self) -> Deferred[None]:
        """
        Commit what is queued, close the file, stop the thread.
        """
        done: Deferred[None] = Deferred()
        if self._closed:
            done.callback(None)
            return done
        self._closed = True
        self._queue.put(_Marker(done, last=True))
        self.start()
        return done

    # In the writer thread.

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if not isinstance(batch[0], _Marker):
                self._sleep(self._gather)
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item for item in batch if not isinstance(item, _Marker)]
            if rows:
                self._write(self._combine(rows), len(rows))
            markers = [item for item in batch if isinstance(item, _Marker)]
            last = any(marker.last for marker in markers)
            if last:
                self._connection.close()
            for marker in markers:
                self._reactor.callFromThread(marker.done.callback, None)
            if last:
                return

    def _write(self, rows: Sequence[Sequence[Any]], exchanges: int) -> None:
        connection = self._connection
        try:
            connection.execute("BEGIN")
            try:
                connection.executemany(self._statement, rows)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except Exception as e:
            self._reactor.callFromThread(
                self._log.error,
                "Could not write {count} exchanges to the usage ledger: {error}",
                count=exchanges,
                error=str(e),
            )

# -*- test-case-name: tests.test_ledger -*-
"""
The usage ledger (C{--state-dir}): tokens per caller uid, model and UTC day,
in SQLite (the standard library's C{sqlite3}, WAL mode), surviving restarts.

  - Each finished exchange adds one row's worth of counts. Writes happen on
    one thread of their own, in batches (what ended within 10 ms of each
    other, summed per day, uid and model; L{responses_proxy.ledgerwriter}),
    so a slow disk never stalls a stream. A killed proxy loses the
    exchanges in flight, and at most those that ended in the last 10 ms.
  - Today's totals per uid, and for everyone, are kept in memory too, for
    the budgets (L{responses_proxy.limits}), counted as exchanges finish.
    They are loaded from the file at start and restart from zero at each
    UTC midnight.
  - The directory is made 0700 and the file 0600 (SQLite gives its -wal and
    -shm files the same mode). They hold counts, uids, user names and model
    names: no prompt, no answer, no key.
  - The file carries an application id and a schema version: a file that is
    not SQLite, is corrupt, or is another program's database is a start-up
    error (one line), never a crash mid-stream.
"""

from __future__ import annotations

import datetime
import functools
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from responses_proxy.ledgerwriter import LedgerWriter
from responses_proxy.record import ExchangeRecord
from responses_proxy.startup import StartupError

LEDGER_FILE = "usage.sqlite3"
# "RAPX" in ASCII: marks the file as ours (PRAGMA application_id).
APPLICATION_ID = 0x52415058
SCHEMA_VERSION = 1
UNKNOWN_MODEL = "(unknown)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    uid INTEGER NOT NULL,
    user TEXT,
    model TEXT NOT NULL,
    exchanges INTEGER NOT NULL DEFAULT 0,
    unknown_usage INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, uid, model)
)
"""
_ADD = """
INSERT INTO usage (day, uid, user, model, exchanges, unknown_usage,
                   input_tokens, cached_input_tokens, output_tokens,
                   reasoning_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, uid, model) DO UPDATE SET
    user = COALESCE(excluded.user, user),
    exchanges = exchanges + excluded.exchanges,
    unknown_usage = unknown_usage + excluded.unknown_usage,
    input_tokens = input_tokens + excluded.input_tokens,
    cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens
"""
# An unknown caller is stored under this uid (no real uid is negative).
UNKNOWN_UID = -1


# POSIX time has no leap seconds: every UTC day is exactly this long, and
# day N (counting from the epoch) starts at N * SECONDS_PER_DAY.
SECONDS_PER_DAY = 86400


@functools.lru_cache(maxsize=4)
def _dayName(number: int) -> str:
    return (_EPOCH + datetime.timedelta(days=number)).isoformat()


_EPOCH = datetime.date(1970, 1, 1)


def utcDay(when: float) -> str:
    """
    The UTC day of a POSIX time, as C{YYYY-MM-DD}.

    Several times per exchange (the limits, the ledger), so the name of a
    day is made once: formatting a datetime each time was 6 % of a busy
    proxy's time.
    """
    return _dayName(int(when // SECONDS_PER_DAY))


def nextMidnight(when: float) -> float:
    """
    The POSIX time of the next UTC midnight after C{when}.
    """
    return float((int(when // SECONDS_PER_DAY) + 1) * SECONDS_PER_DAY)


@dataclass(frozen=True)
class Row:
    """
    One exchange's contribution to the ledger.
    """

    day: str
    uid: int
    user: str | None
    model: str
    unknownUsage: int
    inputTokens: int
    cachedInputTokens: int
    outputTokens: int
    reasoningTokens: int

    @classmethod
    def fromRecord(cls, record: ExchangeRecord, when: float) -> Row:
        usage = record.usage
        uid = record.caller.uid
        return cls(
            day=utcDay(when),
            uid=UNKNOWN_UID if uid is None else uid,
            user=record.caller.user,
            model=record.model or (usage.model if usage else None) or UNKNOWN_MODEL,
            unknownUsage=0 if usage else 1,
            inputTokens=usage.inputTokens if usage else 0,
            cachedInputTokens=usage.cachedInputTokens if usage else 0,
            outputTokens=usage.outputTokens if usage else 0,
            reasoningTokens=usage.reasoningTokens if usage else 0,
        )

    @property
    def tokens(self) -> int:
        return self.inputTokens + self.outputTokens

    def values(self) -> list[Any]:
        """
        The parameters of L{_ADD}, for one exchange.
        """
        return [
            self.day,
            self.uid,
            self.user,
            self.model,
            1,
            self.unknownUsage,
            self.inputTokens,
            self.cachedInputTokens,
            self.outputTokens,
            self.reasoningTokens,
        ]


def combineRows(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """
    Sum the L{Row.values} of one batch that share a day, uid and model, so a
    transaction does one upsert per key, however busy the proxy was.
    """
    combined: dict[tuple[Any, ...], list[Any]] = {}
    for values in rows:
        key = (values[0], values[1], values[3])
        into = combined.get(key)
        if into is None:
            combined[key] = list(values)
            continue
        into[2] = values[2] or into[2]
        for i in range(4, len(values)):
            into[i] += values[i]
    return list(combined.values())


def prepareDirectory(directory: str) -> str:
    """
    Make C{directory} (0700) if missing, tighten it to 0700 if we own it;
    return the ledger file's path.

    @raise StartupError: it cannot be made, or is another user's and open
        to others.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise StartupError(f"--state-dir {directory} is not a directory")
        if info.st_mode & 0o077:
            if info.st_uid != os.geteuid():
                raise StartupError(
                    f"--state-dir {directory} is open to other users and not ours"
                )
            os.chmod(directory, 0o700)
    except OSError as e:
        raise StartupError(f"--state-dir {directory}: {e.strerror or e}") from None
    return os.path.join(directory, LEDGER_FILE)


def openLedgerFile(path: str, create: bool = True) -> sqlite3.Connection:
    """
    Open (and, with C{create}, initialise) the ledger file, checking it is ours.

    @raise StartupError: it is not SQLite, is corrupt, or is not a ledger.
    """
    if create and not os.path.exists(path):
        # Created 0600 before SQLite opens it; -wal/-shm inherit the mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        applicationID = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()[0]
        if applicationID == 0 and version == 0 and tables == 0 and create:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute(_SCHEMA)
        elif applicationID != APPLICATION_ID:
            connection.close()
            raise StartupError(
                f"{path} is not a responses-api-proxy usage ledger "
                "(another program's SQLite database); move it away"
            )
        elif version != SCHEMA_VERSION:
            connection.close()
            raise StartupError(
                f"{path} has ledger schema version {version}, this proxy "
                f"knows {SCHEMA_VERSION}"
            )
        connection.execute("PRAGMA quick_check").fetchone()
        if create:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StartupError(f"{path}: SQLite refused WAL mode ({mode})")
            connection.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as e:
        raise StartupError(f"{path} is not a usable SQLite database: {e}") from None
    return connection


class Ledger:
    """
    The ledger of one running proxy: see the module docstring.

    @ivar clock: where "now" comes from (C{seconds()}).
    """

    def __init__(self, path: str, reactor: Any, *, clock: Any = None) -> None:
        self.path = path
        self.clock = clock or reactor
        self._connection = openLedgerFile(path)
        self._writer = LedgerWriter(
            self._connection, _ADD, reactor, combine=combineRows
        )
        self._closed = False
        self._day = ""
        self._perUID: dict[int, int] = {}
        self._total = 0
        self._today: dict[tuple[int, str], dict[str, Any]] = {}
        self._loadToday()

    def start(self) -> None:
        """
        Start the writer thread.
        """
        self._writer.start()

    # Today's totals.

    def _loadToday(self) -> None:
        self._day = utcDay(self.clock.seconds())
        self._perUID = {}
        self._total = 0
        self._today = {}
        rows = self._connection.execute(
            "SELECT uid, user, model, exchanges, unknown_usage, input_tokens,"
            " cached_input_tokens, output_tokens, reasoning_tokens"
            " FROM usage WHERE day = ?",
            (self._day,),
        ).fetchall()
        for uid, user, model, exchanges, unknown, *tokens in rows:
            self._count(uid, user, model, exchanges, unknown, *tokens)

    def _count(
        self,
        uid: int,
        user: str | None,
        model: str,
        exchanges: int,
        unknown: int,
        inputTokens: int,
        cached: int,
        outputTokens: int,
        reasoning: int,
    ) -> None:
        total = inputTokens + outputTokens
        self._perUID[uid] = self._perUID.get(uid, 0) + total
        self._total += total
        entry = self._today.setdefault(
            (uid, model),
            {
                "uid": None if uid == UNKNOWN_UID else uid,
                "user": user,
                "model": model,
                "exchanges": 0,
                "unknown_usage": 0,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
            },
        )
        entry["user"] = user or entry["user"]
        entry["exchanges"] += exchanges
        entry["unknown_usage"] += unknown
        entry["input_tokens"] += inputTokens
        entry["cached_input_tokens"] += cached
        entry["output_tokens"] += outputTokens
        entry["reasoning_tokens"] += reasoning

    def _rollOver(self) -> None:
        day = utcDay(self.clock.seconds())
        if day != self._day:
            self._day = day
            self._perUID = {}
            self._total = 0
            self._today = {}

    def usedToday(self, uid: int | None) -> int:
        """
        Tokens the caller with C{uid} used today (UTC), as recorded so far.
        """
        self._rollOver()
        return self._perUID.get(UNKNOWN_UID if uid is None else uid, 0)

    def usedTodayByEveryone(self) -> int:
        """
        Tokens everyone used today (UTC), as recorded so far.
        """
        self._rollOver()
        return self._total

    def today(self) -> list[dict[str, Any]]:
        """
        Today's rows (per uid and model), for the admin socket's C{/usage};
        with their C{total_tokens}, as C{responses-api-proxy usage} shows.
        """
        self._rollOver()
        return [
            {**entry, "total_tokens": entry["input_tokens"] + entry["output_tokens"]}
            for entry in self._today.values()
        ]

    # Recording.

    def exchangeEnded(self, record: ExchangeRecord) -> None:
        """
        Account for a finished, forwarded exchange (an L{Exchanges} listener).
        """
        if not record.forwarded or self._closed:
            return
        self._rollOver()
        row = Row.fromRecord(record, self.clock.seconds())
        self._count(
            row.uid,
            row.user,
            row.model,
            1,
            row.unknownUsage,
            row.inputTokens,
            row.cachedInputTokens,
            row.outputTokens,
            row.reasoningTokens,
        )
        self._writer.put(row.values())

    def flushed(self) -> Deferred[None]:
        """
        Fire once everything recorded so far is committed.
        """
        return self._writer.flushed()

    async def close(self) -> None:
        """
        Commit what is queued, then close the file and stop the writer thread.
        """
        if self._closed:
            return
        self._closed = True
        await self._writer.close()


def ledgerFor(
    directory: str, reactor: Any, clock: Any = None
) -> tuple[Ledger, Callable[[], Deferred[None]]]:
    """
    The ledger of C{--state-dir}, and what closes it at shutdown.

    @raise StartupError: the directory or the file is unusable.
    """
    ledger = Ledger(prepareDirectory(directory), reactor, clock=clock)

    def close() -> Deferred[None]:
        return Deferred.fromCoroutine(ledger.close())

    return ledger, close

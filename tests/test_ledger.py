"""
The usage ledger: counts per uid, model and UTC day in SQLite, surviving a
restart; unusable files as clear start-up errors; the C{usage} command.

Unit tests (a real SQLite file in a temporary directory, the writer thread
of the ledger, and a C{Clock} for the day).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import sqlite3
import stat

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from responses_proxy.ledger import (
    LEDGER_FILE,
    Ledger,
    Row,
    combineRows,
    ledgerFor,
    nextMidnight,
    prepareDirectory,
    utcDay,
)
from responses_proxy.record import Caller, ExchangeRecord, Usage
from responses_proxy.startup import StartupError
from responses_proxy.usagereport import run

# 2026-12-01 12:00:00 UTC
NOON = 1796126400.0


def exchange(
    uid: int | None = 1000,
    user: str | None = "alice",
    usage: Usage | None = None,
    model: str | None = "gpt-test",
) -> ExchangeRecord:
    """
    A finished exchange of C{uid}; its model is its usage's, as the usage
    watcher records it.
    """
    if usage is not None:
        model = usage.model
    record = ExchangeRecord(
        "POST", "/v1/responses", Caller(uid, user=user), forwarded=True, model=model
    )
    record.usage = usage
    return record


class DayTests(SynchronousTestCase):
    """
    L{utcDay} and L{nextMidnight} agree with the calendar, at the
    boundaries too.
    """

    def test_calendar(self) -> None:
        """
        The day's name and the next midnight are what C{datetime} says, at a
        midnight, just before it, and at times across the years.
        """
        times = [0.0, 86399.999, 86400.0, 951782400.0, 1796169599.9999]
        times += [1796169600.0 + k * 7777.7 for k in range(0, 40000, 97)]
        for when in times:
            moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
            midnight = datetime.datetime.combine(
                moment.date() + datetime.timedelta(days=1),
                datetime.time(),
                datetime.UTC,
            )
            self.assertEqual(utcDay(when), moment.strftime("%Y-%m-%d"), when)
            self.assertEqual(nextMidnight(when), midnight.timestamp(), when)


class CombineRowsTests(SynchronousTestCase):
    """
    L{combineRows}: one upsert per day, uid and model in a batch.
    """

    def test_sumsPerKey(self) -> None:
        """
        Rows sharing a day, uid and model are summed, the exchange count
        with the tokens; the latest known user name is kept; other keys
        stay apart, in the order first seen.
        """
        alice = Row("2026-12-01", 1000, "alice", "gpt-test", 0, 10, 4, 2, 1)
        renamed = Row("2026-12-01", 1000, None, "gpt-test", 1, 0, 0, 0, 0)
        other = Row("2026-12-01", 1000, "alice", "o9", 0, 1, 0, 1, 0)
        self.assertEqual(
            combineRows(
                [alice.values(), other.values(), renamed.values(), alice.values()]
            ),
            [
                ["2026-12-01", 1000, "alice", "gpt-test", 3, 1, 20, 8, 4, 2],
                ["2026-12-01", 1000, "alice", "o9", 1, 0, 1, 0, 1, 0],
            ],
        )


class LedgerTests(TestCase):
    """
    L{Ledger}: what it keeps, where, and for how long.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(NOON)

    async def openLedger(self) -> Ledger:
        ledger, close = ledgerFor(self.directory, reactor, clock=self.clock)
        ledger.start()
        self.addCleanup(close)
        return ledger

    async def test_survivesRestart(self) -> None:
        """
        What one ledger recorded, a new one on the same directory counts as
        today's use, per uid and for everyone.
        """
        ledger = await self.openLedger()
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 100, 40, 20, 5)))
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 10, 0, 2, 0)))
        ledger.exchangeEnded(
            exchange(uid=1001, user="bob", usage=Usage("o9", 7, 0, 3, 0))
        )
        await ledger.close()
        again = await self.openLedger()
        self.assertEqual(again.usedToday(1000), 132)
        self.assertEqual(again.usedToday(1001), 10)
        self.assertEqual(again.usedTodayByEveryone(), 142)
        self.assertEqual(
            sorted(
                (row["user"], row["model"], row["exchanges"]) for row in again.today()
            ),
            [("alice", "gpt-test", 2), ("bob", "o9", 1)],
        )

    async def test_unknowns(self) -> None:
        """
        An unknown usage counts the exchange (as unknown), no tokens; an
        unknown caller and an unknown model have rows of their own.
        """
        ledger = await self.openLedger()
        ledger.exchangeEnded(exchange(usage=None))
        ledger.exchangeEnded(exchange(uid=None, user=None, model=None, usage=None))
        await ledger.flushed()
        [alice, nobody] = sorted(ledger.today(), key=lambda row: row["uid"] is None)
        self.assertEqual((alice["exchanges"], alice["unknown_usage"]), (1, 1))
        self.assertEqual(
            (nobody["uid"], nobody["model"], nobody["unknown_usage"]),
            (None, "(unknown)", 1),
        )
        self.assertEqual(ledger.usedToday(None), 0)

    async def test_refusalsNotCounted(self) -> None:
        """
        Refused requests (never forwarded) are not in the ledger.
        """
        ledger = await self.openLedger()
        ledger.exchangeEnded(
            ExchangeRecord("POST", "/v1/responses", outcome="rejected")
        )
        self.assertEqual(ledger.today(), [])

    async def test_newDay(self) -> None:
        """
        At UTC midnight today's totals start from zero; the file keeps both days.
        """
        ledger = await self.openLedger()
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 5, 0, 5, 0)))
        self.clock.advance(nextMidnight(self.clock.seconds()) - self.clock.seconds())
        self.assertEqual(ledger.usedToday(1000), 0)
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 1, 0, 1, 0)))
        await ledger.flushed()
        self.assertEqual(ledger.usedToday(1000), 2)
        connection = sqlite3.connect(os.path.join(self.directory, LEDGER_FILE))
        days = connection.execute("SELECT day FROM usage ORDER BY day").fetchall()
        connection.close()
        self.assertEqual(days, [("2026-12-01",), ("2026-12-02",)])

    async def test_committedPromptly(self) -> None:
        """
        A finished exchange is committed (visible to another connection) as
        soon as its batch is written, without waiting for shutdown.
        """
        ledger = await self.openLedger()
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 1, 0, 1, 0)))
        await ledger.flushed()
        connection = sqlite3.connect(os.path.join(self.directory, LEDGER_FILE))
        [(exchanges,)] = connection.execute("SELECT exchanges FROM usage").fetchall()
        connection.close()
        self.assertEqual(exchanges, 1)

    async def test_permissions(self) -> None:
        """
        The directory is 0700 (tightened if it was open) and the files 0600,
        WAL mode on.
        """
        os.makedirs(self.directory, mode=0o755)
        os.chmod(self.directory, 0o755)
        ledger = await self.openLedger()
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 1, 0, 1, 0)))
        await ledger.flushed()
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in os.listdir(self.directory):
            mode = stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertIn(LEDGER_FILE + "-wal", os.listdir(self.directory))

    def test_corruptFile(self) -> None:
        """
        A file that is not SQLite is a start-up error naming it.
        """
        path = prepareDirectory(self.directory)
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 100)
        error = self.assertRaises(StartupError, ledgerFor, self.directory, reactor)
        self.assertIn(path, str(error))
        self.assertIn("not a usable SQLite database", str(error))

    def test_foreignDatabase(self) -> None:
        """
        Another program's SQLite database is refused, not written to.
        """
        path = prepareDirectory(self.directory)
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE other (x)")
        connection.commit()
        connection.close()
        error = self.assertRaises(StartupError, ledgerFor, self.directory, reactor)
        self.assertIn("not a responses-api-proxy usage ledger", str(error))

    def test_notADirectory(self) -> None:
        """
        A --state-dir that is a file is a start-up error.
        """
        with open(self.directory, "w"):
            pass
        error = self.assertRaises(StartupError, ledgerFor, self.directory, reactor)
        self.assertIn("--state-dir", str(error))

    def test_days(self) -> None:
        """
        UTC days and midnights.
        """
        self.assertEqual(utcDay(NOON), "2026-12-01")
        self.assertEqual(utcDay(nextMidnight(NOON)), "2026-12-02")
        self.assertEqual(nextMidnight(NOON) - NOON, 12 * 3600)


class ReportTests(TestCase):
    """
    C{responses-api-proxy usage}: the ledger as a table or JSON.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.directory = os.path.abspath(self.mktemp())
        clock = Clock()
        clock.advance(NOON)
        ledger, close = ledgerFor(self.directory, reactor, clock=clock)
        ledger.start()
        ledger.exchangeEnded(exchange(usage=Usage("gpt-test", 100, 40, 20, 5)))
        ledger.exchangeEnded(
            exchange(uid=1001, user="bob", usage=Usage("o9", 7, 0, 3, 0))
        )
        clock.advance(86400)
        ledger.exchangeEnded(exchange(usage=None))
        await close()

    def report(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = run(["--state-dir", self.directory, *argv], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_byUser(self) -> None:
        """
        The default table: one line per user, and a total.
        """
        status, out, err = self.report()
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("user"), out)
        self.assertRegex(
            lines[1], r"^alice \(uid 1000\)\s+2\s+100\s+40\s+20\s+5\s+120\s+1$"
        )
        self.assertRegex(lines[2], r"^bob \(uid 1001\)\s+1\s+7\s+0\s+3\s+0\s+10\s+0$")
        self.assertRegex(lines[3], r"^total\s+3\s+107\s+40\s+23\s+5\s+130\s+1$")

    def test_jsonByModelSince(self) -> None:
        """
        C{--json --by model --since}: the rows of those days, by model.
        """
        status, out, _ = self.report("--json", "--by", "model", "--since", "2026-12-02")
        self.assertEqual(status, 0)
        document = json.loads(out)
        self.assertEqual(
            [
                (row["model"], row["exchanges"], row["unknown_usage"])
                for row in document["rows"]
            ],
            [("gpt-test", 1, 1)],
        )

    def test_byDay(self) -> None:
        """
        C{--by day}: one line per UTC day.
        """
        status, out, _ = self.report("--by", "day", "--json")
        self.assertEqual(
            [row["day"] for row in json.loads(out)["rows"]],
            ["2026-12-01", "2026-12-02"],
        )

    def test_badOptions(self) -> None:
        """
        Bad options: exit 2 with the synopsis and the reason.
        """
        for argv in (["--by", "month"], ["--since", "yesterday"], ["--nope"]):
            status, _, err = self.report(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("responses-api-proxy usage:", err)

    def test_noLedger(self) -> None:
        """
        No ledger in the directory: exit 1 with one line.
        """
        out, err = io.StringIO(), io.StringIO()
        status = run(["--state-dir", os.path.abspath(self.mktemp())], out, err)
        self.assertEqual(status, 1)
        self.assertIn("no ledger at", err.getvalue())
        self.assertEqual(len(err.getvalue().splitlines()), 1)

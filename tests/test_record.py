# -*- test-case-name: tests.test_record -*-
"""
Unit tests (in memory) for L{responses_proxy.record}: the exchange record,
its one log event, the caller's description, and the registry of exchanges
in flight.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.record import (
    EXCHANGE_FIELDS,
    UNKNOWN_CALLER,
    Caller,
    ExchangeRecord,
    Exchanges,
    Usage,
    logExchange,
    printable,
)

ALICE = Caller(1000, pid=4242, user="alice")


def _record(**changes: object) -> ExchangeRecord:
    """
    A forwarded, complete exchange of alice's, with C{changes}.
    """
    fields: dict[str, object] = {
        "method": "POST",
        "path": "/v1/responses",
        "caller": ALICE,
        "status": 200,
        "outcome": "complete",
        "upstreamStatus": 200,
        "bytesIn": 30,
        "bytesOut": 500,
        "durationMS": 12.5,
        "requestID": "req_1",
        "model": "gpt-x",
        "usage": Usage("gpt-x", 100, 40, 20, 5),
        "forwarded": True,
    }
    fields.update(changes)
    return ExchangeRecord(**fields)  # type: ignore[arg-type]


class LogFieldsTests(SynchronousTestCase):
    """
    L{ExchangeRecord.logFields} is the event's fields, exactly.
    """

    def test_exactlyTheFields(self) -> None:
        """
        The keys are L{EXCHANGE_FIELDS}, in that order.
        """
        self.assertEqual(tuple(_record().logFields()), EXCHANGE_FIELDS)
        self.assertEqual(tuple(ExchangeRecord("GET", "/").logFields()), EXCHANGE_FIELDS)

    def test_values(self) -> None:
        """
        Each field carries its part of the record, the caller's and the usage's.
        """
        self.assertEqual(
            _record().logFields(),
            {
                "method": "POST",
                "path": "/v1/responses",
                "status": 200,
                "outcome": "complete",
                "code": None,
                "upstream_status": 200,
                "bytes_in": 30,
                "bytes_out": 500,
                "duration_ms": 12.5,
                "request_id": "req_1",
                "uid": 1000,
                "user": "alice",
                "pid": 4242,
                "model": "gpt-x",
                "input_tokens": 100,
                "cached_input_tokens": 40,
                "output_tokens": 20,
                "reasoning_tokens": 5,
                "total_tokens": 120,
            },
        )

    def test_noUsage(self) -> None:
        """
        Without usage, every token field is None.
        """
        fields = _record(usage=None).logFields()
        for name in (
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "total_tokens",
        ):
            self.assertIsNone(fields[name], name)

    def test_unknownCaller(self) -> None:
        """
        An unknown caller's fields are None.
        """
        fields = ExchangeRecord("GET", "/").logFields()
        self.assertEqual(
            (fields["uid"], fields["user"], fields["pid"]), (None, None, None)
        )

    def test_totalTokens(self) -> None:
        """
        The total is input plus output (cached and reasoning are parts of them).
        """
        self.assertEqual(Usage("m", 10, 3, 7, 2).totalTokens, 17)


class LogExchangeTests(SynchronousTestCase):
    """
    L{logExchange} emits one event per exchange.
    """

    def test_oneEvent(self) -> None:
        """
        One info event in C{responses_proxy.exchange}, with C{exchange=True}
        and every field of L{EXCHANGE_FIELDS}.
        """
        record = _record()
        with capturedLogs() as events:
            logExchange(record)
        [event] = events
        self.assertIs(event["exchange"], True)
        self.assertEqual(event["log_namespace"], "responses_proxy.exchange")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(
            {name: event[name] for name in EXCHANGE_FIELDS}, record.logFields()
        )

    def test_text(self) -> None:
        """
        The event's text says the exchange in one line.
        """
        with capturedLogs() as events:
            logExchange(_record())
        self.assertEqual(
            formatEvent(events[0]),
            "POST /v1/responses -> 200 (complete, upstream 200, 30 B in, 500 B out, "
            "12.5 ms, x-request-id req_1, caller alice (uid 1000), model gpt-x, "
            "100 tokens in (40 cached), 20 out (5 reasoning))",
        )

    def test_tokensUnknownOrNone(self) -> None:
        """
        A forwarded exchange without usage says it is unknown; a refusal
        that it has none.
        """
        with capturedLogs() as events:
            logExchange(_record(usage=None))
            logExchange(ExchangeRecord("GET", "/", status=403, outcome="rejected"))
        texts = [formatEvent(event) for event in events]
        self.assertTrue(texts[0].endswith(", model gpt-x, usage unknown)"), texts[0])
        self.assertTrue(texts[1].endswith(", no usage)"), texts[1])
        self.assertIn("caller unknown (not identified)", texts[1])

    def test_refusalText(self) -> None:
        """
        A request the proxy answered itself shows its error code after the
        outcome, and C{-} for the upstream's status and request id it never
        had (not C{None}).
        """
        refused = ExchangeRecord(
            "POST",
            "/v1/responses",
            caller=ALICE,
            status=403,
            outcome="rejected",
            code="caller_not_allowed",
        )
        with capturedLogs() as events:
            logExchange(refused)
        self.assertEqual(
            formatEvent(events[0]),
            "POST /v1/responses -> 403 (rejected caller_not_allowed, upstream -, "
            "0 B in, 0 B out, 0.0 ms, x-request-id -, caller alice (uid 1000), "
            "no usage)",
        )


class CallerTests(SynchronousTestCase):
    """
    L{Caller.describe}, for log lines.
    """

    def test_named(self) -> None:
        """
        A user with a name.
        """
        self.assertEqual(ALICE.describe(), "alice (uid 1000)")

    def test_uidOnly(self) -> None:
        """
        A uid without a name.
        """
        self.assertEqual(Caller(1234).describe(), "uid 1234")

    def test_unknown(self) -> None:
        """
        Unknown, with why.
        """
        self.assertEqual(
            Caller(None, unknownReason="not a local socket").describe(),
            "unknown (not a local socket)",
        )
        self.assertEqual(UNKNOWN_CALLER.describe(), "unknown (not identified)")

    def test_unknownWithoutReason(self) -> None:
        """
        Unknown, without a reason given.
        """
        self.assertEqual(Caller(None).describe(), "unknown (no reason given)")


class PrintableTests(SynchronousTestCase):
    """
    L{printable}: raw request bytes, safe for a log line.
    """

    def test_escaped(self) -> None:
        """
        Control and non-ASCII bytes are escaped.
        """
        self.assertEqual(printable(b"/a\r\nb\x00\xff"), "/a\\r\\nb\\x00\\xff")

    def test_limit(self) -> None:
        """
        At most C{limit} bytes are shown.
        """
        self.assertEqual(printable(b"x" * 300), "x" * 200)
        self.assertEqual(printable(b"POSTPOST", 4), "POST")


class ExchangesTests(SynchronousTestCase):
    """
    L{Exchanges}: what is in flight, per caller, and who is told of each end.
    """

    def setUp(self) -> None:
        self.told: list[ExchangeRecord] = []
        self.exchanges = Exchanges(listeners=[self.told.append])

    def test_defaultListenerLogs(self) -> None:
        """
        By default the one listener is L{logExchange}.
        """
        self.assertEqual(Exchanges().listeners, [logExchange])

    def test_counts(self) -> None:
        """
        In flight: in all, and per uid (unknown callers counted together).
        """
        bob = Caller(1001, user="bob")
        for exchange, caller in (
            ("a", ALICE),
            ("b", ALICE),
            ("c", bob),
            ("d", UNKNOWN_CALLER),
        ):
            self.exchanges.begin(exchange, caller)
        self.assertEqual(self.exchanges.inFlight, 4)
        self.assertEqual(
            [self.exchanges.inFlightFor(uid) for uid in (1000, 1001, None, 7)],
            [2, 1, 1, 0],
        )
        self.exchanges.end("a", _record())
        self.exchanges.end("c", _record(caller=bob))
        self.assertEqual(self.exchanges.inFlight, 2)
        self.assertEqual(
            [self.exchanges.inFlightFor(uid) for uid in (1000, 1001, None)], [1, 0, 1]
        )
        self.assertEqual(sorted(self.exchanges.active()), ["b", "d"])

    def test_endTellsListeners(self) -> None:
        """
        Each end tells every listener, in order, with the record.
        """
        second: list[ExchangeRecord] = []
        self.exchanges.listeners.append(second.append)
        record = _record()
        self.exchanges.begin("a", ALICE)
        self.exchanges.end("a", record)
        self.assertEqual((self.told, second), ([record], [record]))

    def test_endTwiceCountsOnce(self) -> None:
        """
        Ending an exchange twice does not count it out twice.
        """
        self.exchanges.begin("a", ALICE)
        self.exchanges.begin("b", ALICE)
        self.exchanges.end("a", _record())
        self.exchanges.end("a", _record())
        self.assertEqual(self.exchanges.inFlightFor(1000), 1)

    def test_toldForRefusals(self) -> None:
        """
        A refused request, never in flight, is told to the listeners and
        changes no count.
        """
        refused = ExchangeRecord(
            "GET", "/", caller=ALICE, status=403, outcome="rejected"
        )
        self.exchanges.begin("a", ALICE)
        self.exchanges.told(refused)
        self.assertEqual(self.told, [refused])
        self.assertEqual(self.exchanges.inFlightFor(1000), 1)

    def test_activeIsACopy(self) -> None:
        """
        C{active()} may be iterated while exchanges end.
        """
        for name in "abc":
            self.exchanges.begin(name, ALICE)
        for exchange in self.exchanges.active():
            self.exchanges.end(exchange, _record())
        self.assertEqual(self.exchanges.inFlight, 0)

    def test_whenIdleAtOnce(self) -> None:
        """
        With nothing in flight, C{whenIdle} calls back at once.
        """
        called: list[None] = []
        self.exchanges.whenIdle(lambda: called.append(None))
        self.assertEqual(called, [None])

    def test_whenIdleAfterLast(self) -> None:
        """
        Otherwise, once (for each waiter) when the last exchange ends.
        """
        called: list[str] = []
        self.exchanges.begin("a", ALICE)
        self.exchanges.begin("b", ALICE)
        self.exchanges.whenIdle(lambda: called.append("first"))
        self.exchanges.whenIdle(lambda: called.append("second"))
        self.exchanges.end("a", _record())
        self.assertEqual(called, [])
        self.exchanges.end("b", _record())
        self.assertEqual(called, ["first", "second"])
        self.exchanges.begin("c", ALICE)
        self.exchanges.end("c", _record())
        self.assertEqual(called, ["first", "second"])

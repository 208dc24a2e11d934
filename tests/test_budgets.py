"""
Budgets, concurrency limits and the model policy, as admission checks.

Unit tests (in memory: fake ledger numbers, a C{Clock}).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.limits import Limits
from responses_proxy.policy import ModelPolicy
from responses_proxy.record import Caller, Exchanges

ALICE = Caller(1000, user="alice")
BOB = Caller(1001, user="bob")
# 2026-12-01 21:30:00 UTC: 2 h 30 min before the budgets reset.
EVENING = 1796160600.0


class FakeLedger:
    """
    What L{Limits} asks of the ledger.
    """

    def __init__(self, perUID: dict[int | None, int]) -> None:
        self.perUID = perUID
        self.clock = Clock()
        self.clock.advance(EVENING)

    def usedToday(self, uid: int | None) -> int:
        return self.perUID.get(uid, 0)

    def usedTodayByEveryone(self) -> int:
        return sum(self.perUID.values())


class ConcurrencyTests(SynchronousTestCase):
    """
    C{--max-concurrent-per-user}.
    """

    def test_perUser(self) -> None:
        """
        A caller at the limit gets 429 C{rate_limit_exceeded} with
        C{Retry-After}; another caller is not affected; a finished exchange
        frees its place.
        """
        exchanges = Exchanges(listeners=[])
        limits = Limits(exchanges, None, concurrentPerUser=2)
        first, second = object(), object()
        exchanges.begin(first, ALICE)
        self.assertIsNone(limits(None, ALICE))
        exchanges.begin(second, ALICE)
        refusal = limits(None, ALICE)
        assert refusal is not None
        self.assertEqual((refusal.status, refusal.code), (429, "rate_limit_exceeded"))
        self.assertIn((b"retry-after", b"1"), refusal.headers)
        self.assertIn("2 at a time", refusal.message)
        self.assertIsNone(limits(None, BOB))
        from responses_proxy.record import ExchangeRecord

        exchanges.end(first, ExchangeRecord("POST", "/v1/responses", ALICE))
        self.assertIsNone(limits(None, ALICE))

    def test_unknownCallersShare(self) -> None:
        """
        Callers whose uid is unknown share one count.
        """
        exchanges = Exchanges(listeners=[])
        limits = Limits(exchanges, None, concurrentPerUser=1)
        exchanges.begin(object(), Caller(None, unknownReason="a"))
        self.assertIsNotNone(limits(None, Caller(None, unknownReason="b")))


class BudgetTests(SynchronousTestCase):
    """
    C{--max-tokens-per-day} and C{--max-tokens-per-day-total}.
    """

    def limits(self, perUID: dict[int | None, int], **budgets: Any) -> Limits:
        return Limits(Exchanges(listeners=[]), FakeLedger(perUID), **budgets)  # type: ignore[arg-type]

    def test_perUser(self) -> None:
        """
        Once a caller's recorded tokens reach the budget: 429
        C{insufficient_quota}, saying which budget and when it resets, and
        telling the SDKs not to retry. Others keep their budget.
        """
        limits = self.limits({1000: 1000, 1001: 999}, tokensPerDay=1000)
        refusal = limits(None, ALICE)
        assert refusal is not None
        self.assertEqual((refusal.status, refusal.code), (429, "insufficient_quota"))
        self.assertEqual(refusal.type, "insufficient_quota")
        self.assertIn("daily token budget of 1000 tokens per user", refusal.message)
        self.assertIn("alice (uid 1000) used 1000 today", refusal.message)
        self.assertIn("resets at 00:00 UTC, in 2 h 30 min", refusal.message)
        self.assertIn((b"x-should-retry", b"false"), refusal.headers)
        self.assertIsNone(limits(None, BOB))

    def test_total(self) -> None:
        """
        The budget for everyone together.
        """
        limits = self.limits({1000: 600, 1001: 400}, tokensPerDayTotal=1000)
        refusal = limits(None, Caller(1002))
        assert refusal is not None
        self.assertIn("daily token budget of 1000 tokens for everyone", refusal.message)

    def test_underBudget(self) -> None:
        """
        Under both budgets, admitted.
        """
        limits = self.limits({1000: 10}, tokensPerDay=11, tokensPerDayTotal=11)
        self.assertIsNone(limits(None, ALICE))


class _Request:
    def __init__(self, body: bytes) -> None:
        self.content = io.BytesIO(body)


class ModelPolicyTests(SynchronousTestCase):
    """
    C{--allow-model}.
    """

    def setUp(self) -> None:
        self.policy = ModelPolicy(["gpt-5*", "o4-mini"])

    def test_allowed(self) -> None:
        """
        A matching model is admitted, and the body is left for forwarding
        (position back at its start, bytes untouched).
        """
        request = _Request(b'{"model": "gpt-5.1-codex", "input": "x"}')
        self.assertIsNone(self.policy(request, ALICE))
        self.assertEqual(
            request.content.read(), b'{"model": "gpt-5.1-codex", "input": "x"}'
        )

    def test_notAllowed(self) -> None:
        """
        Another model (case matters), or none: 400 C{model_not_allowed}
        naming it.
        """
        for body, named in [
            (b'{"model": "gpt-4o"}', '"gpt-4o"'),
            (b'{"model": "GPT-5"}', '"GPT-5"'),
            (b'{"input": "no model"}', "null"),
            (b'{"model": 5}', "5"),
        ]:
            refusal = self.policy(_Request(body), ALICE)
            assert refusal is not None, body
            self.assertEqual((refusal.status, refusal.code), (400, "model_not_allowed"))
            self.assertIn(f"The model {named} is not allowed", refusal.message)

    def test_notJSON(self) -> None:
        """
        A body that is not a JSON object: 400 C{invalid_json}.
        """
        for body in (b"", b"{", b"[1, 2]", b'"gpt-5"', b"\xff\xfe"):
            refusal = self.policy(_Request(body), ALICE)
            assert refusal is not None, body
            self.assertEqual((refusal.status, refusal.code), (400, "invalid_json"))

# -*- test-case-name: tests.test_budgets,tests.test_accounting -*-
"""
What each caller may spend: exchanges in flight, and tokens per UTC day.

  - C{--max-concurrent-per-user N}: a caller (uid) with N exchanges in
    flight gets HTTP 429 C{rate_limit_exceeded} with C{Retry-After}, as the
    OpenAI API answers a rate limit.
  - C{--max-tokens-per-day N} (per uid) and C{--max-tokens-per-day-total N}
    (everyone together): once the tokens recorded today reach N, requests
    get HTTP 429 C{insufficient_quota}, as the API answers an exhausted
    quota, with a message saying which budget it is and when it resets
    (00:00 UTC), and C{x-should-retry: false}, which the OpenAI SDKs honour.

The budget is checked when an exchange is admitted, against what is
recorded so far: an admitted exchange is never cut because the budget ran
out while it streamed (so the last one may go over). Callers whose uid is
unknown share one budget and one concurrency count.
"""

from __future__ import annotations

import math
from typing import Any

from responses_proxy.admission import Refusal
from responses_proxy.ledger import Ledger, nextMidnight
from responses_proxy.record import Caller, Exchanges

RETRY_AFTER_SECONDS = 1


def _untilMidnight(now: float) -> str:
    minutes = math.ceil((nextMidnight(now) - now) / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


class Limits:
    """
    The limits the options set, as one exchange check.
    """

    def __init__(
        self,
        exchanges: Exchanges,
        ledger: Ledger | None,
        *,
        concurrentPerUser: int | None = None,
        tokensPerDay: int | None = None,
        tokensPerDayTotal: int | None = None,
    ) -> None:
        self._exchanges = exchanges
        self._ledger = ledger
        self._concurrent = concurrentPerUser
        self._perUser = tokensPerDay
        self._total = tokensPerDayTotal

    def __call__(self, request: Any, caller: Caller) -> Refusal | None:
        if self._concurrent is not None:
            inFlight = self._exchanges.inFlightFor(caller.uid)
            if inFlight >= self._concurrent:
                return Refusal(
                    429,
                    "rate_limit_exceeded",
                    f"Too many requests in flight for {caller.describe()}: the "
                    f"limit is {self._concurrent} at a time. Try again when one "
                    "has finished.",
                    type="requests",
                    headers=((b"retry-after", b"%d" % RETRY_AFTER_SECONDS),),
                )
        ledger = self._ledger
        if ledger is None:
            return None
        if self._perUser is not None:
            used = ledger.usedToday(caller.uid)
            if used >= self._perUser:
                return self._exhausted(
                    f"the daily token budget of {self._perUser} tokens per user "
                    f"({caller.describe()} used {used} today)",
                    ledger,
                )
        if self._total is not None:
            used = ledger.usedTodayByEveryone()
            if used >= self._total:
                return self._exhausted(
                    f"the daily token budget of {self._total} tokens for everyone "
                    f"({used} used today)",
                    ledger,
                )
        return None

    def _exhausted(self, which: str, ledger: Ledger) -> Refusal:
        now = ledger.clock.seconds()
        return Refusal(
            429,
            "insufficient_quota",
            f"This proxy's quota is used up: {which} is exhausted. It resets at "
            f"00:00 UTC, in {_untilMidnight(now)}.",
            type="insufficient_quota",
            headers=((b"x-should-retry", b"false"),),
        )

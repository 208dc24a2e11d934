# -*- test-case-name: tests.test_admin -*-
"""
Operator metrics, counted as exchanges end and shown in Prometheus' text
format by C{prometheus_client} (a well-kept library, rather than our own
exposition code).

The counts are plain numbers updated by one L{Exchanges} listener, and
turned into metric families only when scraped (a custom collector): no
locks or metric objects on the request path.

Metrics (all prefixed C{responses_proxy_}):
  - C{exchanges_total{status,outcome}}, C{exchanges_in_flight};
  - C{time_to_first_byte_seconds} and C{exchange_duration_seconds}
    (histograms, forwarded exchanges);
  - C{request_bytes_total}, C{response_bytes_total};
  - C{tokens_total{model,user,kind}} (kind: input, cached_input, output,
    reasoning), C{usage_unknown_total{model,user}};
  - C{refusals_total{reason}} (the proxy's own refusals, by error code);
  - C{upstream_errors_total{kind}}.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from responses_proxy.record import ExchangeRecord, Exchanges

TTFB_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_PREFIX = "responses_proxy_"


class Histogram:
    """
    Cumulative-bucket counts of observations, in seconds.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        running = 0
        points: list[tuple[str, float]] = []
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            points.append((repr(float(bound)), running))
        running += self.counts[-1]
        points.append(("+Inf", running))
        return HistogramMetricFamily(
            name, documentation, buckets=points, sum_value=self.total
        )


class Metrics(Collector):
    """
    The counts (see the module docstring), and their exposition.
    """

    def __init__(self, exchanges: Exchanges, clock: Any) -> None:
        self._exchanges = exchanges
        self._clock = clock
        self.exchangeCounts: collections.Counter[tuple[str, str]] = (
            collections.Counter()
        )
        self.refusals: collections.Counter[str] = collections.Counter()
        self.upstreamErrors: collections.Counter[str] = collections.Counter()
        self.tokens: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.unknownUsage: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requestBytes = 0
        self.responseBytes = 0
        self.ttfb = Histogram(TTFB_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self._recentErrors: collections.deque[float] = collections.deque()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exchangeEnded(self, record: ExchangeRecord) -> None:
        """
        Count a finished (or refused) exchange: an L{Exchanges} listener.
        """
        self.exchangeCounts[(str(record.status), record.outcome)] += 1
        self.requestBytes += record.bytesIn
        self.responseBytes += record.bytesOut
        if record.outcome == "rejected":
            self.refusals[record.code or "forbidden"] += 1
            return
        if record.outcome == "upstream_error":
            self._upstreamError(record.code or "upstream_unavailable")
        elif record.outcome == "upstream_aborted":
            self._upstreamError("mid_stream")
        if not record.forwarded:
            return
        if record.ttfbMS is not None:
            self.ttfb.observe(record.ttfbMS / 1000)
        self.duration.observe(record.durationMS / 1000)
        model = record.model or "(unknown)"
        user = record.caller.user or (
            str(record.caller.uid) if record.caller.uid is not None else "(unknown)"
        )
        usage = record.usage
        if usage is None:
            if record.upstreamStatus is not None:
                self.unknownUsage[(model, user)] += 1
            return
        for kind, count in (
            ("input", usage.inputTokens),
            ("cached_input", usage.cachedInputTokens),
            ("output", usage.outputTokens),
            ("reasoning", usage.reasoningTokens),
        ):
            self.tokens[(model, user, kind)] += count

    def _upstreamError(self, kind: str) -> None:
        self.upstreamErrors[kind] += 1
        self._recentErrors.append(self._clock.seconds())

    def upstreamErrorsLastMinute(self) -> int:
        """
        How many upstream errors happened in the last 60 seconds.
        """
        horizon = self._clock.seconds() - 60
        recent = self._recentErrors
        while recent and recent[0] < horizon:
            recent.popleft()
        return len(recent)

    def collect(self) -> Iterator[Any]:
        yield _counters(
            "exchanges",
            "Client exchanges, by the status sent and how they ended.",
            ["status", "outcome"],
            self.exchangeCounts,
        )
        yield GaugeMetricFamily(
            _PREFIX + "exchanges_in_flight",
            "Exchanges forwarded and not finished.",
            value=self._exchanges.inFlight,
        )
        yield self.ttfb.family(
            _PREFIX + "time_to_first_byte_seconds",
            "From the request to the first byte of the answer relayed.",
        )
        yield self.duration.family(
            _PREFIX + "exchange_duration_seconds",
            "From the request to the end of the answer.",
        )
        yield CounterMetricFamily(
            _PREFIX + "request_bytes",
            "Request body bytes received from clients.",
            value=self.requestBytes,
        )
        yield CounterMetricFamily(
            _PREFIX + "response_bytes",
            "Answer bytes sent to clients.",
            value=self.responseBytes,
        )
        yield _counters(
            "tokens",
            "Tokens the upstream reported, by model, user and kind.",
            ["model", "user", "kind"],
            self.tokens,
        )
        yield _counters(
            "usage_unknown",
            "Forwarded exchanges whose usage could not be read.",
            ["model", "user"],
            self.unknownUsage,
        )
        yield _counters(
            "refusals",
            "Requests the proxy refused itself, by error code.",
            ["reason"],
            {(reason,): count for reason, count in self.refusals.items()},
        )
        yield _counters(
            "upstream_errors",
            "Failures reaching or reading the upstream, by kind.",
            ["kind"],
            {(kind,): count for kind, count in self.upstreamErrors.items()},
        )

    def exposition(self) -> bytes:
        """
        The Prometheus text format of everything counted so far.
        """
        text: bytes = generate_latest(self.registry)
        return text


_Labels = TypeVar("_Labels", bound=tuple[str, ...])


def _counters(
    name: str,
    documentation: str,
    labels: list[str],
    counts: Mapping[_Labels, int],
) -> CounterMetricFamily:
    """
    One counter family with a sample per label tuple, in a stable order.
    """
    family = CounterMetricFamily(_PREFIX + name, documentation, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric(list(values), count)
    return family

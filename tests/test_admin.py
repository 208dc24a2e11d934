"""
The operator's socket: metrics (parsed with prometheus_client's own
parser), health and today's usage.

Unit tests (in memory: the metrics counted from records, the admin tree
through treq's StubTreq) and one integration test (the real admin socket of
a spawned proxy, 0600, over a real Unix socket).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent

from responses_proxy.admin import AdminResource
from responses_proxy.metrics import Metrics
from responses_proxy.record import Caller, ExchangeRecord, Exchanges, Usage
from tests.processes import spawnProxy
from tests.support import startFakeUpstream


def forwarded(**fields: Any) -> ExchangeRecord:
    record = ExchangeRecord(
        "POST",
        "/v1/responses",
        Caller(1000, user="alice"),
        status=200,
        outcome="complete",
        upstreamStatus=200,
        bytesIn=100,
        bytesOut=2000,
        durationMS=1500.0,
        ttfbMS=20.0,
        forwarded=True,
        model="gpt-test",
        usage=Usage("gpt-test", 10, 4, 7, 2),
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of the exposition, parsed by prometheus_client.
    """
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics}: counted from finished exchanges.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.exchanges = Exchanges(listeners=[])
        self.metrics = Metrics(self.exchanges, self.clock)

    def test_exposition(self) -> None:
        """
        Exchanges by status and outcome, bytes each way, tokens by model,
        user and kind, the histograms, refusals by reason and upstream
        errors by kind, all readable by Prometheus' own parser.
        """
        metrics = self.metrics
        metrics.exchangeEnded(forwarded())
        metrics.exchangeEnded(forwarded())
        metrics.exchangeEnded(
            forwarded(
                status=502,
                outcome="upstream_error",
                code="upstream_refused",
                upstreamStatus=None,
                usage=None,
                ttfbMS=None,
                model=None,
            )
        )
        metrics.exchangeEnded(
            ExchangeRecord(
                "GET", "/", status=403, outcome="rejected", code="browser_request"
            )
        )
        self.exchanges.begin(object(), Caller(1000))
        found = samples(metrics.exposition())
        p = "responses_proxy_"
        self.assertEqual(
            found[
                (p + "exchanges_total", (("outcome", "complete"), ("status", "200")))
            ],
            2,
        )
        self.assertEqual(found[(p + "exchanges_in_flight", ())], 1)
        self.assertEqual(found[(p + "request_bytes_total", ())], 300)
        self.assertEqual(found[(p + "response_bytes_total", ())], 6000)
        labels = (("kind", "output"), ("model", "gpt-test"), ("user", "alice"))
        self.assertEqual(found[(p + "tokens_total", labels)], 14)
        labels = (("kind", "cached_input"), ("model", "gpt-test"), ("user", "alice"))
        self.assertEqual(found[(p + "tokens_total", labels)], 8)
        self.assertEqual(
            found[(p + "refusals_total", (("reason", "browser_request"),))], 1
        )
        self.assertEqual(
            found[(p + "upstream_errors_total", (("kind", "upstream_refused"),))], 1
        )
        ttfb = p + "time_to_first_byte_seconds"
        self.assertEqual(found[(ttfb + "_count", ())], 2)
        self.assertEqual(found[(ttfb + "_bucket", (("le", "0.025"),))], 2)
        self.assertEqual(found[(ttfb + "_bucket", (("le", "0.01"),))], 0)
        duration = p + "exchange_duration_seconds"
        self.assertEqual(found[(duration + "_count", ())], 3)
        self.assertEqual(found[(duration + "_bucket", (("le", "+Inf"),))], 3)

    def test_recentErrors(self) -> None:
        """
        Upstream errors of the last minute only.
        """
        self.metrics.exchangeEnded(forwarded(outcome="upstream_aborted"))
        self.clock.advance(45)
        self.metrics.exchangeEnded(forwarded(outcome="upstream_error", code="x"))
        self.assertEqual(self.metrics.upstreamErrorsLastMinute(), 2)
        self.clock.advance(30)
        self.assertEqual(self.metrics.upstreamErrorsLastMinute(), 1)


class AdminResourceTests(SynchronousTestCase):
    """
    L{AdminResource}: /metrics, /healthz, /usage, and nothing else.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.exchanges = Exchanges(listeners=[])
        self.metrics = Metrics(self.exchanges, self.clock)
        self.draining = False
        self.resource = AdminResource(
            self.metrics, self.exchanges, None, self.clock, lambda: self.draining
        )
        # StubTreq makes its request methods at run time, untyped.
        self.client: Any = StubTreq(self.resource)

    def get(self, path: str) -> tuple[int, bytes, Any]:
        response = self.successResultOf(self.client.get(f"http://admin{path}"))
        body = self.successResultOf(response.content())
        return response.code, body, response.headers

    def test_metrics(self) -> None:
        """
        C{GET /metrics}: Prometheus' text format, with its content type.
        """
        self.metrics.exchangeEnded(forwarded())
        code, body, headers = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"text/plain", headers.getRawHeaders(b"content-type")[0])
        self.assertIn(("responses_proxy_exchanges_in_flight", ()), samples(body))

    def test_healthz(self) -> None:
        """
        C{GET /healthz}: 200 and the numbers while serving, 503 once draining.
        """
        self.clock.advance(12.5)
        self.exchanges.begin(object(), Caller(1))
        code, body, _ = self.get("/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(
            json.loads(body),
            {
                "status": "serving",
                "uptime_seconds": 12.5,
                "exchanges_in_flight": 1,
                "upstream_errors_last_minute": 0,
            },
        )
        self.draining = True
        code, body, _ = self.get("/healthz")
        self.assertEqual((code, json.loads(body)["status"]), (503, "draining"))

    def test_usageWithoutLedger(self) -> None:
        """
        C{GET /usage} without C{--state-dir}: 404 saying why.
        """
        code, body, _ = self.get("/usage")
        self.assertEqual(code, 404)
        self.assertIn(b"--state-dir", body)

    def test_otherPaths(self) -> None:
        """
        Anything else is a JSON 404; other methods too.
        """
        for path in ("/", "/metrics/x", "/v1/responses", "/shutdown"):
            code, body, _ = self.get(path)
            self.assertEqual(code, 404, path)
            self.assertEqual(json.loads(body)["error"]["code"], "not_found")
        response = self.successResultOf(self.client.post("http://admin/metrics"))
        self.assertEqual(response.code, 404)


class AdminSocketTests(TestCase):
    """
    The real admin socket of a spawned proxy.
    """

    timeout = 60

    async def test_socket(self) -> None:
        """
        A Unix socket of mode 0600 owned by the proxy's user, serving the
        metrics of the exchanges forwarded so far and today's usage; the
        public listener still refuses /metrics.
        """
        upstream = startFakeUpstream(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "admin.sock")
        proxy = await spawnProxy(
            self,
            "--upstream-url",
            upstream.url,
            "--admin-socket",
            path,
            "--state-dir",
            os.path.join(directory, "state"),
        )
        info = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(info.st_mode))
        self.assertEqual(
            (stat.S_IMODE(info.st_mode), info.st_uid), (0o600, os.getuid())
        )

        response = await treq.post(
            proxy.url,
            json={"model": "gpt-test", "input": "hi", "stream": True},
            persistent=False,
        )
        await treq.content(response)
        agent = Agent.usingEndpointFactory(reactor, _UNIXEndpoints(path))
        metrics = await treq.content(
            await treq.get("http://admin/metrics", agent=agent)
        )
        found = samples(metrics)
        self.assertEqual(
            found[
                (
                    "responses_proxy_exchanges_total",
                    (("outcome", "complete"), ("status", "200")),
                )
            ],
            1,
        )
        usage = json.loads(
            await treq.content(await treq.get("http://admin/usage", agent=agent))
        )
        [row] = usage["usage"]
        self.assertEqual((row["model"], row["uid"]), ("gpt-test", os.getuid()))
        self.assertGreater(row["output_tokens"], 0)
        self.assertEqual(
            row["total_tokens"], row["input_tokens"] + row["output_tokens"]
        )
        public = await treq.get(f"{proxy.base}/metrics", persistent=False)
        await treq.content(public)
        self.assertEqual(public.code, 403)


class _UNIXEndpoints:
    """
    An Agent endpoint factory that always connects to one Unix socket.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, self._path)

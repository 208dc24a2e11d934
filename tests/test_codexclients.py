"""
What the real Codex CLI sees of the proxy's own answers: its WebSocket
probe, and (in later tests) the refusals of limits and policy.

Integration tests (the real C{codex exec} against the spawned proxy and the
fake upstream).
"""

from __future__ import annotations

import os
from typing import Any

import treq
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from tests.codex import CodexRun, runCodex
from tests.fakeupstream import DEFAULT_TEXT
from tests.jsonlogs import exchangeEvents
from tests.processes import spawnProxy
from tests.support import startFakeUpstream, waitFor


class WebSocketFallbackTests(TestCase):
    """
    Codex configured for WebSockets falls back to HTTPS at once.
    """

    timeout = 120

    async def test_oneProbeThenHTTPS(self) -> None:
        """
        With C{supports_websockets = true}, Codex asks once for a WebSocket
        (C{GET /v1/responses}, answered 426), then completes the turn over
        C{POST}; nothing but the POST reaches the upstream. (Answered 403,
        it retried the WebSocket five times first.)
        """
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(
            self, "--upstream-url", upstream.url, "--log-format", "json"
        )
        run = await runCodex(
            self, f"{proxy.base}/v1", extra=", supports_websockets = true"
        )
        self.assertEqual(run.result.exitCode, 0, run.output)
        self.assertIn(DEFAULT_TEXT, run.stdout, run.output)
        self.assertNotIn("Reconnecting", run.output)
        log = bytes(proxy.process.capture.err).decode()
        self.assertEqual(log.count('"status": 426'), 1, log)
        self.assertEqual(
            [(r.method, r.uri) for r in upstream.resource.requests],
            [(b"POST", b"/v1/responses")],
        )


class RefusalTests(TestCase):
    """
    What a Codex user sees for each of the proxy's refusals, and that Codex
    gives up (at most its own five retries) rather than looping.
    """

    timeout = 180

    async def codexAgainst(self, *args: str) -> tuple[CodexRun, list[dict[str, Any]]]:
        upstream = startFakeUpstream(self)
        self.upstream = upstream
        proxy = await spawnProxy(
            self, "--upstream-url", upstream.url, "--log-format", "json", *args
        )
        self.proxy = proxy
        if self.warmUp:
            await self.warmUp(proxy)
        run = await runCodex(self, f"{proxy.base}/v1")
        return run, [e for e in exchangeEvents(proxy) if e["status"] != 200]

    warmUp: Any = None

    async def test_quotaExhausted(self) -> None:
        """
        A used-up daily budget: Codex stops at once with "Quota exceeded",
        exit 1, after one request.
        """

        async def useTheBudget(proxy: Any) -> None:
            response = await treq.post(
                proxy.url, json={"model": "m", "stream": True}, persistent=False
            )
            await treq.content(response)

        self.warmUp = useTheBudget
        run, refused = await self.codexAgainst(
            "--state-dir", os.path.abspath(self.mktemp()), "--max-tokens-per-day", "1"
        )
        self.assertEqual(run.result.exitCode, 1, run.output)
        self.assertIn("Quota exceeded", run.output)
        self.assertEqual([e["code"] for e in refused], ["insufficient_quota"])

    async def test_tooManyInFlight(self) -> None:
        """
        Over the concurrency limit: Codex retries (five times, honouring
        Retry-After), then stops with the 429, exit 1.
        """

        async def holdAStream(proxy: Any) -> None:
            self.held = treq.post(
                proxy.url,
                json={"model": "m"},
                headers=Headers(
                    {b"x-fake-scenario": [b"stall"], b"x-fake-delay-ms": [b"60000"]}
                ),
                persistent=False,
                unbuffered=True,
            )
            await waitFor(lambda: self.upstream.resource.streams)

        self.warmUp = holdAStream
        run, refused = await self.codexAgainst(
            "--state-dir",
            os.path.abspath(self.mktemp()),
            "--max-concurrent-per-user",
            "1",
        )
        self.assertEqual(run.result.exitCode, 1, run.output)
        self.assertIn("429 Too Many Requests", run.output)
        codes = [e["code"] for e in refused]
        self.assertEqual(set(codes), {"rate_limit_exceeded"})
        self.assertLessEqual(len(codes), 6)
        self.held.cancel()
        self.held.addErrback(lambda _: None)

    async def test_modelNotAllowed(self) -> None:
        """
        A model outside the policy: Codex shows the proxy's message naming
        the model, exit 1, after one request.
        """
        run, refused = await self.codexAgainst("--allow-model", "no-such-model")
        self.assertEqual(run.result.exitCode, 1, run.output)
        self.assertIn("model_not_allowed", run.output)
        self.assertIn("is not allowed through this proxy", run.output)
        self.assertEqual([e["code"] for e in refused], ["model_not_allowed"])

    async def test_callerNotAllowed(self) -> None:
        """
        A caller root does not allow: Codex retries (five times), then shows
        the proxy's 403 message, exit 1; nothing reaches the upstream.
        """
        run, refused = await self.codexAgainst("--allow-user", "65533")
        self.assertEqual(run.result.exitCode, 1, run.output)
        self.assertIn("403 Forbidden", run.output)
        self.assertIn("not available to", run.output)
        codes = [e["code"] for e in refused]
        self.assertEqual(set(codes), {"caller_not_allowed"})
        self.assertLessEqual(len(codes), 6)
        self.assertEqual(self.upstream.resource.requests, [])

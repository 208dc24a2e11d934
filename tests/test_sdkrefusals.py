"""
What the official C{openai} Python SDK shows for each of the proxy's own
refusals (limits, policy, callers), and that it never retries in a loop:
with its default C{max_retries=2} it retries a rate limit twice (after the
proxy's C{Retry-After}) and nothing else.

Integration tests (the SDK in a thread against the in-process proxy on
loopback, the caller identified by the kernel as this process's uid).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from tests.support import startFakeUpstream, startProxy


def _callSDK(baseURL: str) -> dict[str, Any]:
    """
    In a thread: one non-streaming request with the SDK's default retries;
    what it raised.
    """
    from openai import APIStatusError, OpenAI

    client = OpenAI(base_url=baseURL, api_key="sk-dummy", timeout=20)
    try:
        client.responses.create(model="gpt-4o", input="Say hello.")
    except APIStatusError as e:
        body: Any = e.body
        return {
            "exception": type(e).__name__,
            "status": e.status_code,
            "code": body.get("code") if isinstance(body, dict) else None,
            "message": str(e),
        }
    finally:
        client.close()
    return {"exception": None}


class SDKRefusalTests(TestCase):
    """
    The SDK against each refusal.
    """

    timeout = 60

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def refusals(self, status: int) -> int:
        return sum(
            1
            for event in self.events
            if event.get("exchange") and event.get("status") == status
        )

    async def call(self, *args: str) -> dict[str, Any]:
        proxy = startProxy(self, self.upstream.url, *args)
        result: dict[str, Any] = await deferToThread(_callSDK, proxy.base + "/v1")
        return result

    async def test_insufficientQuota(self) -> None:
        """
        A used-up budget: C{RateLimitError} with code C{insufficient_quota}
        and the proxy's message, after one attempt (C{x-should-retry: false}).
        """
        stateDir = os.path.abspath(self.mktemp())
        proxy = startProxy(
            self,
            self.upstream.url,
            "--state-dir",
            stateDir,
            "--max-tokens-per-day-total",
            "1",
        )
        first = await deferToThread(_callSDK, proxy.base + "/v1")
        self.assertEqual(first, {"exception": None})
        seen = await deferToThread(_callSDK, proxy.base + "/v1")
        self.assertEqual(
            (seen["exception"], seen["status"], seen["code"]),
            ("RateLimitError", 429, "insufficient_quota"),
        )
        self.assertIn("quota is used up", seen["message"])
        self.assertEqual(self.refusals(429), 1)

    async def test_rateLimit(self) -> None:
        """
        Too many in flight: C{RateLimitError} C{rate_limit_exceeded} after
        the SDK's two retries (three attempts), each after C{Retry-After}.
        """
        proxy = startProxy(
            self,
            self.upstream.url,
            "--state-dir",
            os.path.abspath(self.mktemp()),
            "--max-concurrent-per-user",
            "1",
        )
        import treq

        stalled = treq.post(
            proxy.url,
            json={"model": "m"},
            headers=Headers({b"x-fake-step": [b"manual"]}),
            persistent=False,
            unbuffered=True,
        )
        from tests.support import waitFor

        await waitFor(lambda: self.upstream.resource.streams)
        seen = await deferToThread(_callSDK, proxy.base + "/v1")
        self.assertEqual(
            (seen["exception"], seen["status"], seen["code"]),
            ("RateLimitError", 429, "rate_limit_exceeded"),
        )
        self.assertEqual(self.refusals(429), 3)
        stream: Any = self.upstream.resource.streams[0]
        while stream.chunks:
            stream.step()
        stream.step()
        await treq.content(await stalled)

    async def test_modelNotAllowed(self) -> None:
        """
        A model outside the policy: C{BadRequestError} C{model_not_allowed},
        naming the model, one attempt.
        """
        seen = await self.call("--allow-model", "gpt-5*")
        self.assertEqual(
            (seen["exception"], seen["status"], seen["code"]),
            ("BadRequestError", 400, "model_not_allowed"),
        )
        self.assertIn('"gpt-4o"', seen["message"])
        self.assertEqual(self.refusals(400), 1)

    async def test_callerNotAllowed(self) -> None:
        """
        A caller root does not allow: C{PermissionDeniedError}
        C{caller_not_allowed}, one attempt.
        """
        seen = await self.call("--allow-user", "65533")
        self.assertEqual(
            (seen["exception"], seen["status"], seen["code"]),
            ("PermissionDeniedError", 403, "caller_not_allowed"),
        )
        self.assertEqual(self.refusals(403), 1)
        self.assertEqual(self.upstream.resource.requests, [])

# -*- test-case-name: tests.test_openai_sdk -*-
"""
The official C{openai} Python SDK streams a response through the proxy.

Integration tests (loopback): the SDK in a thread, the proxy in-process.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.fakeupstream import DEFAULT_TEXT
from tests.support import CANARY_KEY, startFakeUpstream, startProxy

_DUMMY_KEY = "sk-dummy-not-the-real-key"


def _streamWithSDK(baseURL: str) -> dict[str, Any]:
    """
    In a thread: stream one response with the synchronous SDK and return
    what it saw.
    """
    from openai import OpenAI

    client = OpenAI(base_url=baseURL, api_key=_DUMMY_KEY, max_retries=0, timeout=20)
    try:
        deltas = []
        types = []
        completed = None
        stream = client.responses.create(
            model="gpt-fake", input="Say hello.", stream=True
        )
        with stream:
            for event in stream:
                types.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                elif event.type == "response.completed":
                    completed = event.response
        return {
            "deltas": deltas,
            "types": types,
            "completedText": completed.output_text if completed else None,
            "completedStatus": completed.status if completed else None,
        }
    finally:
        client.close()


class OpenAISDKTests(TestCase):
    """
    A real client library works through the proxy unchanged.
    """

    async def test_streamingResponse(self) -> None:
        """
        C{client.responses.create(..., stream=True)} against the proxy's
        C{/v1} yields the text deltas and the completed event, and the
        upstream saw our key, not the SDK's dummy one.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        seen = await deferToThread(_streamWithSDK, proxy.base + "/v1")
        self.assertEqual("".join(seen["deltas"]), DEFAULT_TEXT)
        self.assertEqual(len(seen["deltas"]), len(DEFAULT_TEXT.split(" ")))
        self.assertEqual(seen["types"][0], "response.created")
        self.assertEqual(seen["types"][-1], "response.completed")
        self.assertEqual(seen["completedText"], DEFAULT_TEXT)
        self.assertEqual(seen["completedStatus"], "completed")
        [request] = upstream.resource.requests
        self.assertEqual(
            request.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
        )
        self.assertNotIn(_DUMMY_KEY.encode(), repr(request.headers).encode())
        self.assertEqual(request.uri, b"/v1/responses")
        sent = json.loads(request.body)
        self.assertEqual(
            (sent["model"], sent["input"], sent["stream"]),
            ("gpt-fake", "Say hello.", True),
        )

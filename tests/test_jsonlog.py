# -*- test-case-name: tests.test_jsonlog -*-
"""
C{twistd --logger responses_proxy.jsonlog.observer}: one JSON object per
line, and exactly one line per client exchange.

Integration tests (processes).
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from responses_proxy.record import EXCHANGE_FIELDS
from tests.support import (
    CANARY_KEY,
    httpClient,
    jsonHeaders,
    readServerInfo,
    spawnEntryPoint,
    startFakeUpstream,
    waitFor,
)


class JSONLogTests(TestCase):
    """
    twistd with our JSON observer, as the systemd unit can run it.
    """

    async def test_oneLinePerExchange(self) -> None:
        """
        Every stdout line is a JSON object; two forwarded requests and one
        refused request give exactly three exchange lines with the exchange
        fields, and the key appears nowhere.
        """
        upstream = startFakeUpstream(self)
        info = os.path.abspath(self.mktemp())
        process = spawnEntryPoint(
            self,
            [
                "twistd",
                "--nodaemon",
                "--pidfile=",
                "--logger",
                "responses_proxy.jsonlog.observer",
                "responses-api-proxy",
                "--upstream-url",
                upstream.url,
                "--server-info",
                info,
            ],
            stdin=CANARY_KEY.encode(),
        )
        await waitFor(lambda: readServerInfo(info) or process.ended.called, 30)
        serverInfo = readServerInfo(info)
        assert serverInfo is not None, process.capture.err
        base = f"http://127.0.0.1:{serverInfo['port']}"
        client = httpClient(self)
        for scenario in ["json", "sse"]:
            response = await client.post(
                base + "/v1/responses",
                data=b'{"input": "hi"}',
                headers=jsonHeaders({"x-fake-scenario": scenario}),
            )
            await treq.content(response)
            self.assertEqual(response.code, 200)
        response = await client.get(base + "/")
        await treq.content(response)
        self.assertEqual(response.code, 403)
        process.signal("TERM")
        result = await process.ended
        self.assertEqual(result.exitCode, 0, result.stderr)

        self.assertNotIn(CANARY_KEY.encode(), result.stdout + result.stderr)
        lines = result.stdout.decode().splitlines()
        events = [json.loads(line) for line in lines]
        self.assertTrue(all(isinstance(e, dict) for e in events))
        exchanges: list[dict[str, Any]] = [e for e in events if e.get("exchange")]
        self.assertEqual(
            [(e["method"], e["path"], e["status"]) for e in exchanges],
            [
                ("POST", "/v1/responses", 200),
                ("POST", "/v1/responses", 200),
                ("GET", "/", 403),
            ],
        )
        for event in exchanges:
            self.assertLessEqual(set(EXCHANGE_FIELDS), set(event))
        self.assertEqual(
            [e["request_id"] for e in exchanges[:2]], ["req_fake_1", "req_fake_2"]
        )
        self.assertEqual([e["upstream_status"] for e in exchanges[:2]], [200, 200])

"""
C{--allow-path}: Codex's other endpoints, opt-in. An exact sub-path of
C{/v1/responses} is forwarded (POST only, no query) to the upstream URL's
path with the same suffix, the upstream URL's query kept; everything else
stays 403, and the allowed path gets the same admission as
C{/v1/responses}.

Integration tests (loopback: the in-process proxy and the fake upstream,
which records what it received).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from tests.support import parseRawResponse, rawExchange, startFakeUpstream, startProxy


class AllowPathTests(TestCase):
    """
    Forwarding an allowed sub-path, and refusing the rest.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        # An Azure-style upstream URL: its query must survive the suffix.
        base = self.upstream.url + "?api-version=2025-04-01-preview"
        self.proxy = startProxy(
            self,
            base,
            "--allow-path",
            "/v1/responses/compact",
            "--allow-path",
            "/v1/responses/input_tokens",
        )

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await treq.post(
            self.proxy.base + path,
            json={"model": "m", "input": []},
            persistent=False,
            **kwargs,
        )
        body = await treq.content(response)
        return response.code, body

    async def test_forwarded(self) -> None:
        """
        Each allowed path reaches the upstream's path with the same suffix
        and the upstream URL's query, with our key.
        """
        for path in ("/v1/responses/compact", "/v1/responses/input_tokens"):
            code, _ = await self.post(path)
            self.assertEqual(code, 200, path)
        self.assertEqual(
            [r.uri for r in self.upstream.resource.requests],
            [
                b"/v1/responses/compact?api-version=2025-04-01-preview",
                b"/v1/responses/input_tokens?api-version=2025-04-01-preview",
            ],
        )
        for seen in self.upstream.resource.requests:
            self.assertTrue(seen.header(b"authorization")[0].startswith(b"Bearer "))

    async def test_othersForbidden(self) -> None:
        """
        Paths not listed, variants of listed ones, and other methods stay
        403; nothing reaches the upstream.
        """
        for path in (
            "/v1/responses/other",
            "/v1/responses/compact/",
            "/v1/responses/compact?x=1",
            "/v1/responses/Compact",
            "/v1/responses/compact/x",
            "/v1/responses/%63ompact",
        ):
            code, body = await self.post(path)
            self.assertEqual(code, 403, path)
            self.assertEqual(json.loads(body)["error"]["code"], "forbidden", path)
        raw = await rawExchange(
            self.proxy.port,
            b"GET /v1/responses/compact HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n",
        )
        self.assertEqual(parseRawResponse(raw).status, 403)
        self.assertEqual(self.upstream.resource.requests, [])

    async def test_sameAdmission(self) -> None:
        """
        An allowed path gets the same admission as /v1/responses: a browser
        is refused, and the body must be declared JSON.
        """
        raw = await rawExchange(
            self.proxy.port,
            b"POST /v1/responses/compact HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Origin: http://127.0.0.2\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\n\r\n{}",
        )
        self.assertEqual(parseRawResponse(raw).status, 403)
        raw = await rawExchange(
            self.proxy.port,
            b"POST /v1/responses/compact HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
        )
        self.assertEqual(parseRawResponse(raw).status, 415)
        self.assertEqual(self.upstream.resource.requests, [])

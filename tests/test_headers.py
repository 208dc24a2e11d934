# -*- test-case-name: tests.test_headers -*-
"""
Which headers cross the proxy: end-to-end headers unchanged in both
directions, Authorization replaced by ours, Host set for the upstream,
hop-by-hop headers stopped.

Integration tests (loopback); L{UpstreamRequestHeadersTests} is a unit
test (in memory).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from responses_proxy.headers import HOP_BY_HOP, upstreamRequestHeaders
from tests.fakeupstream import RecordedRequest
from tests.support import (
    CANARY_KEY,
    RawResponse,
    RunningProxy,
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
)

_OURS = f"Bearer {CANARY_KEY}".encode()
_BODY = b'{"model": "m", "input": "hi"}'


class RequestHeaderTests(TestCase):
    """
    What the upstream receives, sent from a raw socket so that the exact
    header lines are under the test's control.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    async def forward(
        self,
        headerLines: bytes,
        host: bytes | None = b"127.0.0.1",
        contentType: bytes | None = b"application/json",
        proxy: RunningProxy | None = None,
    ) -> RecordedRequest:
        """
        POST to C{proxy} (by default the test's) with C{headerLines} added,
        after a C{Host} and a C{Content-Type} line unless they are L{None}
        (C{headerLines} has its own); return what the upstream recorded.
        """
        head = b"POST /v1/responses HTTP/1.1\r\n"
        if host is not None:
            head += b"Host: %s\r\n" % (host,)
        if contentType is not None:
            head += b"Content-Type: %s\r\n" % (contentType,)
        raw = await rawExchange(
            (proxy or self.proxy).port,
            head
            + b"x-fake-scenario: json\r\n"
            + b"Content-Length: %d\r\n" % len(_BODY)
            + headerLines
            + b"\r\n"
            + _BODY,
        )
        self.assertEqual(parseRawResponse(raw).status, 200, raw)
        [seen] = self.upstream.resource.requests
        return seen

    async def test_endToEndHeadersUnchanged(self) -> None:
        """
        Every end-to-end header reaches the upstream with its value byte for
        byte: odd spacing, commas, quotes, repeated headers in order,
        non-ASCII bytes and long values included.
        """
        sent = [
            (b"Host", b"localhost:%d" % self.proxy.port),
            (b"Content-Type", b"application/json; charset=utf-8"),
            (b"Accept", b"text/event-stream"),
            (b"User-Agent", b"codex_cli_rs/0.50.0 (Linux; x86_64) tester"),
            (b"OpenAI-Beta", b"responses=experimental"),
            (b"OpenAI-Organization", b"org-123"),
            (b"session_id", b"6f0c-11ee"),
            (b"X-Stainless-Lang", b"python"),
            (b"X-Quoted", b'"a, b"; q=0.5,  c'),
            (b"X-Multi", b"first"),
            (b"X-Multi", b"second"),
            (b"X-Latin1", b"caf\xe9"),
            (b"X-Utf8", "\u00e9\u4e2d".encode()),
            (b"X-Long", b"v" * 6000),
            (b"Connection", b"close"),
        ]
        seen = await self.forward(
            b"".join(b"%s: %s\r\n" % pair for pair in sent),
            host=None,
            contentType=None,
        )
        for name, value in sent:
            if name in (b"Host", b"Connection", b"X-Multi"):
                continue
            self.assertEqual(seen.header(name), [value], name)
        self.assertEqual(seen.header(b"x-multi"), [b"first", b"second"])
        self.assertEqual(seen.body, _BODY)

    async def test_authorizationReplaced(self) -> None:
        """
        Any client Authorization header, in any case and any number, is
        dropped and exactly one C{Authorization: Bearer <key>} is sent.
        """
        seen = await self.forward(
            b"Authorization: Bearer sk-client-one\r\n"
            b"authorization: Basic dXNlcjpwYXNz\r\n"
            b"AUTHORIZATION: Bearer sk-client-three\r\n"
            b"aUtHoRiZaTiOn: \r\n"
            b"Connection: close\r\n"
        )
        values = [v for k, v in seen.headers if k.lower() == b"authorization"]
        self.assertEqual(values, [_OURS])

    async def test_authorizationAddedWhenAbsent(self) -> None:
        """
        A client that sends no Authorization still gets ours added.
        """
        seen = await self.forward(b"Connection: close\r\n")
        self.assertEqual(seen.header(b"authorization"), [_OURS])

    async def test_hostIsUpstream(self) -> None:
        """
        Host becomes the upstream's C{host:port}, whatever name the client
        used: another loopback name, or one C{--allow-host} admits.
        """
        seen = await self.forward(
            b"Host: localhost:%d\r\nConnection: close\r\n" % self.proxy.port,
            host=None,
        )
        self.assertEqual(seen.header(b"host"), [b"127.0.0.1:%d" % self.upstream.port])
        del self.upstream.resource.requests[:]
        named = startProxy(self, self.upstream.url, "--allow-host", "proxy.example")
        seen = await self.forward(
            b"Host: proxy.example\r\nConnection: close\r\n", host=None, proxy=named
        )
        self.assertEqual(seen.header(b"host"), [b"127.0.0.1:%d" % self.upstream.port])

    async def test_hopByHopNotForwarded(self) -> None:
        """
        Connection, the headers it names, Keep-Alive, Proxy-Authorization,
        Proxy-Connection, TE, Trailer and Upgrade stop at the proxy.
        """
        seen = await self.forward(
            # (twisted.web only honours "close" as the whole first value.)
            b"Connection: close\r\n"
            b"Connection: X-Named-One, x-named-two\r\n"
            b"X-Named-One: secret-one\r\n"
            b"X-Named-Two: secret-two\r\n"
            b"Keep-Alive: timeout=5, max=100\r\n"
            b"Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"TE: trailers\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: h2c\r\n"
            b"X-Kept: yes\r\n"
        )
        for name in (
            b"x-named-one",
            b"x-named-two",
            b"keep-alive",
            b"proxy-authorization",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"upgrade",
            b"transfer-encoding",
        ):
            self.assertEqual(seen.header(name), [], name)
        for value in seen.header(b"connection"):
            self.assertNotIn(b"x-named", value.lower())
        self.assertEqual(seen.header(b"x-kept"), [b"yes"])

    async def test_nothingAdded(self) -> None:
        """
        The upstream receives the client's end-to-end headers plus only
        Host, Authorization and Content-Length: no Accept-Encoding,
        User-Agent, Via or X-Forwarded-* of the proxy's own.
        """
        seen = await self.forward(
            b"Connection: close\r\nX-One: 1\r\nContent-Type: application/json\r\n",
            contentType=None,
        )
        names = sorted({name.lower() for name, _ in seen.headers})
        self.assertEqual(
            names,
            [
                b"authorization",
                b"content-length",
                b"content-type",
                b"host",
                b"x-fake-scenario",
                b"x-one",
            ],
        )

    async def test_secretsNeverEchoed(self) -> None:
        """
        Neither the key nor the client's own credential appears in the
        client's response headers.
        """
        raw = await rawExchange(
            self.proxy.port,
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: json\r\n"
            b"Authorization: Bearer sk-client-secret\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
        )
        head = raw.partition(b"\r\n\r\n")[0]
        self.assertNotIn(CANARY_KEY.encode(), raw)
        self.assertNotIn(b"sk-client-secret", head)


class UpstreamRequestHeadersTests(TestCase):
    """
    L{upstreamRequestHeaders} on its own.
    """

    def test_everyHopByHopNameDropped(self) -> None:
        """
        Each name in L{HOP_BY_HOP}, in any case, is dropped, and framing
        headers the Agent owns are not copied.
        """
        incoming = Headers()
        for name in HOP_BY_HOP:
            incoming.addRawHeader(name.upper(), b"x")
        incoming.addRawHeader(b"Content-Length", b"12")
        incoming.addRawHeader(b"Expect", b"100-continue")
        incoming.addRawHeader(b"X-End-To-End", b"kept")
        outgoing = upstreamRequestHeaders(incoming, _OURS)
        self.assertEqual(
            sorted(name.lower() for name, _ in outgoing.getAllRawHeaders()),
            [b"authorization", b"x-end-to-end"],
        )


class ResponseHeaderTests(TestCase):
    """
    What the client receives: the upstream's status and end-to-end headers.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    async def exchange(
        self, scenario: bytes, extra: list[list[str]] | None = None
    ) -> RawResponse:
        """
        POST through the proxy from a raw socket; return the parsed answer.
        """
        lines = b"x-fake-scenario: " + scenario + b"\r\n"
        if extra is not None:
            lines += b"x-fake-response-headers: " + json.dumps(extra).encode() + b"\r\n"
        raw = await rawExchange(
            self.proxy.port,
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + lines
            + b"Content-Length: %d\r\n\r\n" % len(_BODY)
            + _BODY,
        )
        return parseRawResponse(raw)

    async def test_streamHeadersMirrored(self) -> None:
        """
        The SSE answer's end-to-end headers reach the client unchanged.
        """
        response = await self.exchange(
            b"sse",
            [
                ["x-ratelimit-limit-tokens", "30000"],
                ["x-ratelimit-reset-requests", "1s"],
                ["openai-version", "2020-10-01"],
                ["Set-Cookie", "a=1; Path=/"],
                ["Set-Cookie", "b=2; Path=/"],
            ],
        )
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete)
        expected = {
            b"content-type": [b"text/event-stream"],
            b"cache-control": [b"no-cache"],
            b"x-request-id": [b"req_fake_1"],
            b"openai-processing-ms": [b"12"],
            b"x-ratelimit-remaining-requests": [b"99"],
            b"x-ratelimit-limit-tokens": [b"30000"],
            b"x-ratelimit-reset-requests": [b"1s"],
            b"openai-version": [b"2020-10-01"],
            b"set-cookie": [b"a=1; Path=/", b"b=2; Path=/"],
        }
        for name, values in expected.items():
            self.assertEqual(response.header(name), values, name)

    async def test_errorHeadersMirrored(self) -> None:
        """
        A 429's status, Retry-After and rate-limit headers are mirrored.
        """
        response = await self.exchange(b"status")
        self.assertEqual(response.status, 429)
        self.assertEqual(response.header(b"retry-after"), [b"7"])
        self.assertEqual(response.header(b"x-ratelimit-limit-requests"), [b"100"])
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        self.assertEqual(json.loads(response.body)["error"]["code"], "429")

    async def test_responseHopByHopNotMirrored(self) -> None:
        """
        The upstream's hop-by-hop headers do not reach the client.

        (Headers named by the upstream's C{Connection} header are not
        covered: twisted.web's client keeps C{Connection} away from the
        response headers the proxy sees.)
        """
        response = await self.exchange(
            b"json",
            [
                ["Keep-Alive", "timeout=30"],
                ["Proxy-Authenticate", "Basic realm=upstream"],
                ["Trailer", "X-Checksum"],
                ["X-Public", "end-to-end"],
            ],
        )
        self.assertEqual(response.status, 200)
        for name in (
            b"keep-alive",
            b"proxy-authenticate",
            b"trailer",
        ):
            self.assertEqual(response.header(name), [], name)
        self.assertEqual(response.header(b"x-public"), [b"end-to-end"])
        self.assertEqual(json.loads(response.body)["status"], "completed")

    async def test_noContentTypeInvented(self) -> None:
        """
        When the upstream sends no Content-Type, the proxy adds none.
        """
        response = await self.exchange(b"redirect")
        self.assertEqual(response.status, 302)
        self.assertEqual(response.header(b"content-type"), [])

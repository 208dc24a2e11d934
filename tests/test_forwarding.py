# -*- test-case-name: tests.test_forwarding -*-
"""
Forwarding over real loopback: the body and headers reach the upstream
unchanged, the key is injected, and the answer comes back as sent.

Integration tests (loopback).
"""

from __future__ import annotations

import gzip
import io
import json
import os

import treq
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.support import (
    CANARY_KEY,
    RawResponse,
    bareAgent,
    connectRaw,
    httpClient,
    jsonHeaders,
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
    waitFor,
)


class ForwardingTests(TestCase):
    """
    C{POST /v1/responses} reaches the upstream with our key and nothing else
    changed.
    """

    async def test_streamedAnswerRelayed(self) -> None:
        """
        The fake upstream's SSE answer arrives complete, with its status and
        end-to-end headers, and the upstream saw the body byte for byte and
        exactly one Authorization, ours.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        body = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
        response = await httpClient(self).post(
            proxy.url,
            data=body,
            headers=jsonHeaders(
                {"Authorization": "Bearer client-supplied", "X-Custom": "kept as is"}
            ),
        )
        text = await treq.text_content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream"]
        )
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), ["req_fake_1"])
        self.assertIn("event: response.completed", text)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(
            seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
        )
        self.assertEqual(seen.header(b"x-custom"), [b"kept as is"])
        host = f"127.0.0.1:{upstream.port}".encode()
        self.assertEqual(seen.header(b"host"), [host])


class RequestBodyTests(TestCase):
    """
    The request body reaches the upstream byte for byte, however the client
    framed it.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    async def postRaw(
        self, head: bytes, body: bytes, contentType: bytes = b"application/json"
    ) -> RawResponse:
        """
        Send a raw request (C{head} are extra header lines) with C{body}
        declared C{contentType}, and return the parsed response.
        """
        raw = await rawExchange(
            self.proxy.port,
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: %s\r\nx-fake-scenario: echo\r\nConnection: close\r\n"
            % (contentType,)
            + head
            + b"\r\n"
            + body,
        )
        return parseRawResponse(raw)

    async def test_binaryBodyUnchanged(self) -> None:
        """
        A body that is not JSON, not UTF-8 and contains CR/LF and NUL bytes
        (declared JSON: the proxy never parses a body) is forwarded
        unchanged, with the same Content-Length.
        """
        body = bytes(range(256)) * 4 + b"\r\n\r\n0\r\n\r\n"
        response = await self.postRaw(b"Content-Length: %d\r\n" % len(body), body)
        self.assertEqual(response.status, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header(b"content-length"), [b"%d" % len(body)])

    async def test_largeBodyUnchanged(self) -> None:
        """
        A body larger than the single-write limit (streamed from the spooled
        file) arrives complete and unchanged.
        """
        body = os.urandom(3 * 1024 * 1024 + 17)
        agent = bareAgent()
        response = await treq.post(
            self.proxy.url,
            data=body,
            headers=jsonHeaders({"x-fake-scenario": "echo"}),
            agent=agent,
        )
        await treq.content(response)
        self.assertEqual(response.code, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(len(seen.body), len(body))
        self.assertTrue(seen.body == body)

    async def test_chunkedBody(self) -> None:
        """
        A body sent with C{Transfer-Encoding: chunked} reaches the upstream
        de-chunked, byte for byte, and without the client's framing header.
        """
        body = b'{"model": "m", "input": "' + b"x" * 5000 + b'"}'
        chunked = b""
        for start in range(0, len(body), 1000):
            piece = body[start : start + 1000]
            chunked += b"%x\r\n%s\r\n" % (len(piece), piece)
        chunked += b"0\r\n\r\n"
        response = await self.postRaw(b"Transfer-Encoding: chunked\r\n", chunked)
        self.assertEqual(response.status, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header(b"transfer-encoding"), [])
        self.assertEqual(seen.header(b"content-length"), [b"%d" % len(body)])

    async def test_expectContinue(self) -> None:
        """
        With C{Expect: 100-continue} the proxy answers C{100 Continue} before
        the body is sent; the body then reaches the upstream unchanged, and
        the upstream is not asked to continue again.
        """
        body = b'{"model": "m", "input": "continue"}'
        conn = await connectRaw(self, self.proxy.port)
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"x-fake-scenario: echo\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        await conn.waitForBytes(b"\r\n\r\n")
        self.assertTrue(conn.data.startswith(b"HTTP/1.1 100 Continue\r\n"), conn.data)
        self.assertEqual(self.upstream.resource.requests, [])
        conn.send(body)
        await conn.closed
        response = parseRawResponse(bytes(conn.data))
        self.assertEqual(response.status, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header(b"expect"), [])

    async def test_formBodiesNotParsed(self) -> None:
        """
        Bodies are opaque bytes: form-encoded and multipart ones declared
        JSON are forwarded unchanged, with their Content-Type (parameters
        included).
        """
        for contentType, body in _FORMS:
            response = await self.postRaw(
                b"Content-Length: %d\r\n" % len(body), body, contentType
            )
            self.assertEqual(response.status, 200)
            seen = self.upstream.resource.requests[-1]
            self.assertEqual(seen.body, body)
            self.assertEqual(seen.header(b"content-type"), [contentType])

    async def test_formContentTypesRefused(self) -> None:
        """
        The same bodies with their own form content types (which a web page
        can send without a CORS preflight) are refused on their head: 415
        C{unsupported_media_type}, and nothing reaches the upstream.
        """
        for contentType, body in (
            (b"application/x-www-form-urlencoded", _FORMS[0][1]),
            (b"multipart/form-data; boundary=XyZ", _FORMS[1][1]),
            (b"text/plain", _FORMS[0][1]),
        ):
            response = await self.postRaw(
                b"Content-Length: %d\r\n" % len(body), body, contentType
            )
            self.assertEqual(response.status, 415, contentType)
            error = json.loads(response.body)["error"]
            self.assertEqual(error["code"], "unsupported_media_type", contentType)
        self.assertEqual(self.upstream.resource.requests, [])

    async def test_emptyBody(self) -> None:
        """
        An empty body is forwarded as an empty body.
        """
        response = await self.postRaw(b"Content-Length: 0\r\n", b"")
        self.assertEqual(response.status, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.body, b"")


_FORMS = [
    (b"application/json", b"a=1&b=%20two&a=3"),
    (
        b"application/json; charset=utf-8",
        b'--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\n'
        b"value\r\n--XyZ--\r\n",
    ),
]


class UpstreamURLTests(TestCase):
    """
    The request goes to exactly the configured C{--upstream-url}.
    """

    async def test_queryStringKept(self) -> None:
        """
        An Azure-style upstream URL with a query string is requested with
        exactly that path and query.
        """
        upstream = startFakeUpstream(
            self, path="/openai/responses?api-version=2025-04-01-preview"
        )
        proxy = startProxy(self, upstream.url)
        response = await httpClient(self).post(
            proxy.url, data=b"{}", headers=jsonHeaders({"x-fake-scenario": "json"})
        )
        await treq.content(response)
        self.assertEqual(response.code, 200)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.uri, b"/openai/responses?api-version=2025-04-01-preview")


class ResponseTests(TestCase):
    """
    The upstream's answer reaches the client as sent: status, headers and
    body, with no decoding, redirect following or cookie keeping.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    async def post(self, scenario: str, **headers: str) -> tuple[IResponse, bytes]:
        """
        POST a JSON body through the proxy with a bare Agent; return the
        response and its body.
        """
        sent = Headers(
            {
                b"content-type": [b"application/json"],
                b"x-fake-scenario": [scenario.encode()],
            }
        )
        for name, value in headers.items():
            sent.addRawHeader(name.replace("_", "-").encode(), value.encode())
        response = await bareAgent().request(
            b"POST", self.proxy.url.encode(), sent, _body(b'{"model": "m"}')
        )
        body = await readBody(response)
        return response, body

    async def test_errorStatusMirrored(self) -> None:
        """
        4xx and 5xx upstream answers reach the client with their status,
        headers and body.
        """
        for status in (400, 401, 404, 429, 500, 503):
            response, body = await self.post("status", x_fake_status=str(status))
            self.assertEqual(response.code, status)
            self.assertEqual(
                json.loads(body)["error"]["code"], str(status), (status, body)
            )
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])
            self.assertEqual(
                response.headers.getRawHeaders(b"x-ratelimit-limit-requests"),
                [b"100"],
            )

    async def test_gzipNotDecoded(self) -> None:
        """
        A gzip answer reaches the client still compressed, with its
        Content-Encoding, and the upstream was not offered gzip on the
        client's behalf.
        """
        response, body = await self.post("gzip")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(json.loads(gzip.decompress(body))["status"], "completed")
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.header(b"accept-encoding"), [])

    async def test_acceptEncodingFromClientKept(self) -> None:
        """
        An Accept-Encoding the client did send is forwarded unchanged.
        """
        response, body = await self.post("gzip", accept_encoding="gzip, br")
        self.assertEqual(response.code, 200)
        [seen] = self.upstream.resource.requests
        self.assertEqual(seen.header(b"accept-encoding"), [b"gzip, br"])

    async def test_redirectNotFollowed(self) -> None:
        """
        A 302 is mirrored as is, Location included; nothing follows it.
        """
        response, body = await self.post("redirect")
        self.assertEqual(response.code, 302)
        self.assertEqual(
            response.headers.getRawHeaders(b"location"),
            [b"http://127.0.0.1:9/elsewhere"],
        )
        self.assertEqual(body, b"redirected\n")
        self.assertEqual(len(self.upstream.resource.requests), 1)

    async def test_noCookieJar(self) -> None:
        """
        The upstream's Set-Cookie reaches the client, but the proxy keeps no
        jar: the next client's request carries no cookie upstream.
        """
        response, body = await self.post("cookie")
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"),
            [b"session=fake-upstream-cookie; Path=/"],
        )
        response, body = await self.post("cookie")
        self.assertEqual(json.loads(body), {"cookie": ""})
        for seen in self.upstream.resource.requests:
            self.assertEqual(seen.header(b"cookie"), [])

    async def test_clientCookieForwarded(self) -> None:
        """
        A cookie the client sends itself is an ordinary header: forwarded.
        """
        response, body = await self.post("cookie", cookie="mine=1")
        self.assertEqual(json.loads(body), {"cookie": "mine=1"})


def _body(data: bytes) -> FileBodyProducer:
    return FileBodyProducer(io.BytesIO(data))


class ConnectionReuseTests(TestCase):
    """
    Client keep-alive, concurrent streams and upstream connection reuse.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    async def test_contentLengthRelayed(self) -> None:
        """
        An upstream answer with a Content-Length reaches the client with the
        same Content-Length and no chunked framing added.
        """
        conn = await connectRaw(self, self.proxy.port)
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: gzip\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        await conn.waitForResponse()
        response = parseRawResponse(bytes(conn.data))
        [seen] = self.upstream.resource.requests
        self.assertFalse(response.chunked)
        self.assertEqual(
            response.header(b"content-length"), [b"%d" % len(response.body)]
        )
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])

    async def test_keepAliveClient(self) -> None:
        """
        Two requests on one client connection are both forwarded and
        answered in order.
        """
        conn = await connectRaw(self, self.proxy.port)
        body = b'{"n": 1}'
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await conn.waitForResponse()
        first = parseRawResponse(bytes(conn.data))
        del conn.data[:]
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-scenario: sse\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await conn.closed
        second = parseRawResponse(bytes(conn.data))
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(json.loads(first.body)["status"], "completed")
        self.assertTrue(second.complete)
        self.assertIn(b"event: response.completed", second.body)
        self.assertEqual(len(self.upstream.resource.requests), 2)

    async def test_concurrentStreams(self) -> None:
        """
        Several streams at once each get their own complete answer.
        """
        client = httpClient(self)
        responses = await gatherResults(
            [
                client.post(
                    self.proxy.url,
                    data=b'{"n": %d}' % n,
                    headers=jsonHeaders(
                        {"x-fake-interval-ms": "10", "x-fake-events": str(n)}
                    ),
                )
                for n in range(1, 6)
            ]
        )
        texts = await gatherResults([treq.text_content(r) for r in responses])
        for n, text in enumerate(texts, 1):
            self.assertEqual(text.count("event: response.output_text.delta"), n)
            self.assertTrue(text.endswith("\n\n"))
        self.assertEqual(
            sorted(r.body for r in self.upstream.resource.requests),
            sorted(b'{"n": %d}' % n for n in range(1, 6)),
        )

    async def test_afterClientGone(self) -> None:
        """
        After a client left mid-stream, the next exchange works normally
        (the abandoned upstream connection is not reused).
        """
        conn = await connectRaw(self, self.proxy.port)
        conn.send(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nx-fake-events: 50\r\n"
            b"x-fake-interval-ms: 50\r\nContent-Length: 2\r\n\r\n{}"
        )
        await conn.waitForBytes(b"event: response.created")
        conn.abort()
        [stream] = self.upstream.resource.streams
        await waitFor(lambda: stream.lostAt is not None)
        response = await httpClient(self).post(
            self.proxy.url, data=b"{}", headers=jsonHeaders({"x-fake-scenario": "json"})
        )
        document = await response.json()
        self.assertEqual(document["status"], "completed")

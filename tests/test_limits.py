# -*- test-case-name: tests.test_limits -*-
"""
Request limits with clear errors: bodies over C{--max-request-body} get a
JSON 413 before anything is forwarded, heads over the header limits a JSON
431, and the client can read that answer even while it is still sending.

Integration tests (loopback).
"""

from __future__ import annotations

import json
import socket

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from responses_proxy.site import DEFAULT_MAX_REQUEST_BODY, MAX_HEADER_BYTES
from tests.support import rawExchange, startFakeUpstream, startProxy
from tests.test_hostile import RawResponse, goodRequest, parseResponse


def _sendBodyThenRead(
    port: int, head: bytes, pieces: int, piece: bytes, chunked: bool
) -> tuple[bytes, int]:
    """
    Send C{head}, then C{pieces} copies of C{piece} (as chunks if
    C{chunked}) for as long as the server reads, then read its answer.
    Returns the answer and how many body bytes were sent. Run in a thread.
    """
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        try:
            for _ in range(pieces):
                sock.sendall(frame)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytearray()
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
    return bytes(received), sent


# The request line and the headers of a well-formed POST /v1/responses.
_HEAD = (
    b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\n"
)


class BodyLimitTests(TestCase):
    """
    Bodies over the limit are refused with a JSON 413 and never forwarded.
    """

    timeout = 60

    def assertTooLarge(self, data: bytes, limit: int) -> RawResponse:
        """
        C{data} is a complete JSON 413 naming C{limit}, closing the connection.
        """
        response = parseResponse(data)
        self.assertIsNotNone(response, f"no 413 answer: {data[:100]!r}")
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertTrue(response.complete)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        self.assertEqual(response.header(b"connection"), [b"close"])
        error = json.loads(response.body)["error"]
        self.assertEqual(error["code"], "request_too_large")
        self.assertIn(str(limit), error["message"])
        return response

    async def test_announcedLengthOverDefaultLimit(self) -> None:
        """
        With the default limit (64 MiB), a C{Content-Length} one byte over it
        is refused from the head alone, before a single body byte is sent.
        """
        self.assertEqual(DEFAULT_MAX_REQUEST_BODY, 64 * 1024 * 1024)
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        data = await rawExchange(
            proxy.port,
            _HEAD + b"Content-Length: %d\r\n\r\n" % (DEFAULT_MAX_REQUEST_BODY + 1),
            timeout=5,
        )
        self.assertTooLarge(data, DEFAULT_MAX_REQUEST_BODY)
        self.assertEqual(upstream.resource.requests, [])

    async def test_expectContinueOverLimit(self) -> None:
        """
        A client asking C{Expect: 100-continue} for an oversized body gets
        the 413 instead of a 100 Continue.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--max-request-body", "1000")
        data = await rawExchange(
            proxy.port,
            _HEAD + b"Expect: 100-continue\r\nContent-Length: 1001\r\n\r\n",
            timeout=5,
        )
        self.assertNotIn(b"100 Continue", data)
        self.assertTooLarge(data, 1000)
        self.assertEqual(upstream.resource.requests, [])

    async def test_chunkedOverDefaultLimit(self) -> None:
        """
        A chunked body that grows past the default 64 MiB is refused with a
        413 as soon as it does; the client, still sending, reads the answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        piece = b"x" * (1 << 20)
        data, sent = await threads.deferToThread(
            _sendBodyThenRead,
            proxy.port,
            _HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
            80,
            piece,
            True,
        )
        self.assertTooLarge(data, DEFAULT_MAX_REQUEST_BODY)
        self.assertGreater(sent, DEFAULT_MAX_REQUEST_BODY - (8 << 20))
        self.assertEqual(upstream.resource.requests, [])

    async def test_chunkedOverSmallLimit(self) -> None:
        """
        With C{--max-request-body 100000}, a chunked body of 200 kB is
        refused with a 413 and nothing is forwarded.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--max-request-body", "100000")
        data, _ = await threads.deferToThread(
            _sendBodyThenRead,
            proxy.port,
            _HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
            20,
            b"y" * 10000,
            True,
        )
        self.assertTooLarge(data, 100000)
        self.assertEqual(upstream.resource.requests, [])

    async def test_clientStillSendingReadsThe413(self) -> None:
        """
        A client that sends its whole oversized body (announced length)
        before reading still receives the 413: the proxy does not reset the
        connection under it.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--max-request-body", "1000000")
        size = 4 << 20
        data, sent = await threads.deferToThread(
            _sendBodyThenRead,
            proxy.port,
            _HEAD + b"Content-Length: %d\r\n\r\n" % size,
            64,
            b"z" * (size // 64),
            False,
        )
        self.assertTooLarge(data, 1000000)
        self.assertEqual(upstream.resource.requests, [])

    async def test_refusedHeadWhileSendingBody(self) -> None:
        """
        A request refused on its head (a browser's, here) whose client goes
        on sending its body before reading still gets the refusal: the
        proxy half-closes and drops what follows (a lingering close)
        instead of resetting the connection under the client.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        size = 4 << 20
        for _ in range(3):
            data, sent = await threads.deferToThread(
                _sendBodyThenRead,
                proxy.port,
                _HEAD
                + b"Origin: http://127.0.0.2\r\n"
                + b"Content-Length: %d\r\n\r\n" % size,
                64,
                b"z" * (size // 64),
                False,
            )
            response = parseResponse(data)
            assert response is not None, data
            self.assertEqual(response.status, 403)
            self.assertEqual(
                json.loads(response.body)["error"]["code"], "browser_request"
            )
            self.assertEqual(sent, size)
        self.assertEqual(upstream.resource.requests, [])

    async def test_bodyAtLimitForwarded(self) -> None:
        """
        A body of exactly the limit, announced or chunked, is forwarded whole.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--max-request-body", "5000")
        body = b"a" * 5000
        data = await rawExchange(proxy.port, goodRequest(body, x_fake_scenario="json"))
        response = parseResponse(data)
        assert response is not None
        self.assertEqual(response.status, 200)
        chunked = (
            _HEAD + b"Connection: close\r\n"
            b"X-Fake-Scenario: json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"9c4\r\n%s\r\n9c4\r\n%s\r\n0\r\n\r\n" % (body[:2500], body[2500:])
        )
        data = await rawExchange(proxy.port, chunked)
        response = parseResponse(data)
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertEqual([r.body for r in upstream.resource.requests], [body, body])


class HeaderLimitTests(TestCase):
    """
    Oversized request heads are refused with a clear JSON 431.
    """

    async def assertHeadRefused(self, payload: bytes) -> None:
        """
        C{payload}'s head is refused with a complete JSON 431 that names the
        limit, nothing is forwarded, and the next request is served.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        data = await rawExchange(proxy.port, payload, timeout=5)
        response = parseResponse(data)
        self.assertIsNotNone(response, f"no answer: {data[:100]!r}")
        assert response is not None
        self.assertEqual(response.status, 431)
        self.assertTrue(response.complete)
        error = json.loads(response.body)["error"]
        self.assertEqual(error["code"], "request_header_fields_too_large")
        self.assertIn(str(MAX_HEADER_BYTES), error["message"])
        self.assertEqual(upstream.resource.requests, [])
        data = await rawExchange(proxy.port, goodRequest())
        good = parseResponse(data)
        assert good is not None, data[:100]
        self.assertEqual(good.status, 200)

    async def test_oneHugeHeader(self) -> None:
        """
        A single 1 MiB header line is a 431, not a silent close.
        """
        await self.assertHeadRefused(
            _HEAD + b"X-Big: " + b"b" * (1 << 20) + b"\r\nContent-Length: 0\r\n\r\n"
        )

    async def test_headJustOverLimit(self) -> None:
        """
        Headers adding up to just over the limit (in lines that are each
        small) are a 431.
        """
        lines = b"".join(
            b"X-H%d: %s\r\n" % (i, b"v" * 1000)
            for i in range(MAX_HEADER_BYTES // 1000 + 1)
        )
        await self.assertHeadRefused(_HEAD + lines + b"Content-Length: 0\r\n\r\n")

    async def test_tooManyHeaders(self) -> None:
        """
        More header lines than allowed (each tiny) are a 431.
        """
        lines = b"".join(b"A:%d\r\n" % (i % 10) for i in range(2000))
        await self.assertHeadRefused(_HEAD + lines + b"Content-Length: 0\r\n\r\n")

    async def test_largeButAllowedHead(self) -> None:
        """
        A head comfortably under the limit (8 KiB of headers) is forwarded.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        data = await rawExchange(proxy.port, goodRequest(x_padding="p" * 8192))
        response = parseResponse(data)
        assert response is not None, data[:100]
        self.assertEqual(response.status, 200)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.header(b"x-padding"), [b"p" * 8192])

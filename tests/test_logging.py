# -*- test-case-name: tests.test_logging -*-
"""
Logging: one structured event per exchange, start-up names the listening
address, and neither the key nor bodies are ever logged.

Integration tests (loopback): the proxy in-process, its events on the
global log publisher.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from responses_proxy.record import EXCHANGE_FIELDS
from tests.support import (
    CANARY_KEY,
    connectRaw,
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
    waitFor,
)

_BODY = b'{"model": "m", "input": "a very private prompt"}'


def _request(
    *headerLines: bytes, target: bytes = b"/v1/responses", host: bytes = b"127.0.0.1"
) -> bytes:
    """
    A C{POST} of a private prompt to C{target} with a client credential and
    C{headerLines}, closing the connection after.
    """
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Authorization: Bearer sk-client-secret\r\n"
        + b"".join(line + b"\r\n" for line in headerLines)
        + b"Content-Length: %d\r\n\r\n" % len(_BODY)
        + _BODY
    )


class LoggingTests(TestCase):
    """
    The events the proxy writes to the global log publisher.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def exchanges(self) -> list[LogEvent]:
        """
        The per-exchange events logged so far.
        """
        return [e for e in self.events if e.get("exchange")]

    async def exchangeEvent(
        self, payload: bytes, upstreamURL: str | None = None
    ) -> tuple[bytes, LogEvent]:
        """
        Run one raw exchange against a fresh proxy and return the single
        exchange event it logged.
        """
        if upstreamURL is None:
            self.upstream = startFakeUpstream(self)
            upstreamURL = self.upstream.url
        proxy = startProxy(self, upstreamURL)
        raw = await rawExchange(proxy.port, payload)
        await waitFor(self.exchanges)
        [event] = self.exchanges()
        self.assertSecretsNotLogged()
        return raw, event

    def assertSecretsNotLogged(self) -> None:
        """
        No event, formatted or raw, holds the key, the client's credential
        or the prompt.
        """
        for event in self.events:
            text = (formatEvent(event) or "") + repr(event)
            self.assertNotIn(CANARY_KEY, text)
            self.assertNotIn("sk-client-secret", text)
            self.assertNotIn("very private prompt", text)

    async def test_forwardedExchange(self) -> None:
        """
        A forwarded exchange logs one event with method, path, status,
        upstream status, bytes in and out, duration and x-request-id.
        """
        raw, event = await self.exchangeEvent(_request(b"x-fake-scenario: json"))
        response = parseRawResponse(raw)
        self.assertTrue(response.complete)
        self.assertEqual(event["method"], "POST")
        self.assertEqual(event["path"], "/v1/responses")
        self.assertEqual(event["status"], 200)
        self.assertEqual(event["upstream_status"], 200)
        self.assertEqual(event["outcome"], "complete")
        self.assertEqual(event["bytes_in"], len(_BODY))
        self.assertEqual(event["bytes_out"], len(response.body))
        self.assertIsInstance(event["duration_ms"], float)
        self.assertGreaterEqual(event["duration_ms"], 0)
        self.assertLess(event["duration_ms"], 10_000)
        self.assertEqual(event["request_id"], "req_fake_1")
        self.assertLessEqual(set(EXCHANGE_FIELDS), set(event))
        text = formatEvent(event)
        self.assertIn("POST /v1/responses -> 200", text)
        self.assertIn("x-request-id req_fake_1, caller ", text)

    async def test_upstreamErrorStatus(self) -> None:
        """
        An upstream 429 is logged with status and upstream status 429.
        """
        raw, event = await self.exchangeEvent(_request(b"x-fake-scenario: status"))
        self.assertEqual(event["status"], 429)
        self.assertEqual(event["upstream_status"], 429)

    async def test_unreachableUpstream(self) -> None:
        """
        An unreachable upstream is logged once, status 502 and no upstream
        status.
        """
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        raw, event = await self.exchangeEvent(
            _request(), f"http://127.0.0.1:{port}/v1/responses"
        )
        self.assertEqual(event["status"], 502)
        self.assertIsNone(event["upstream_status"])
        self.assertEqual(event["outcome"], "upstream_error")
        self.assertEqual(event["bytes_in"], len(_BODY))

    async def test_refusedOnHead(self) -> None:
        """
        A request admission refuses on its head (here: a Host that is not
        loopback) is logged once, outcome C{rejected} with the refusal's
        code, before any of its body was read.
        """
        raw, event = await self.exchangeEvent(_request(host=b"attacker.example"))
        self.assertEqual(parseRawResponse(raw).status, 403)
        self.assertEqual(event["status"], 403)
        self.assertEqual(event["outcome"], "rejected")
        self.assertEqual(event["code"], "host_not_allowed")
        self.assertEqual((event["method"], event["path"]), ("POST", "/v1/responses"))
        self.assertEqual(event["bytes_in"], 0)
        self.assertIsNone(event["upstream_status"])
        self.assertEqual(self.upstream.resource.requests, [])

    async def test_rejectedRequest(self) -> None:
        """
        A refused request is logged once, with status 403 and its target
        escaped.
        """
        raw, event = await self.exchangeEvent(_request(target=b"/v1/responses?\x7f"))
        self.assertEqual(event["status"], 403)
        self.assertEqual(event["outcome"], "rejected")
        self.assertEqual(event["path"], "/v1/responses?\\x7f")
        self.assertEqual(event["bytes_in"], len(_BODY))
        self.assertEqual(self.upstream.resource.requests, [])

    async def test_upstreamAborted(self) -> None:
        """
        An upstream that breaks off mid-stream is logged once, with the
        status the client was sent.
        """
        raw, event = await self.exchangeEvent(
            _request(b"x-fake-scenario: drop", b"x-fake-interval-ms: 20")
        )
        self.assertEqual(event["outcome"], "upstream_aborted")
        self.assertEqual(event["status"], 200)
        self.assertGreater(event["bytes_out"], 0)

    async def test_clientGone(self) -> None:
        """
        A client leaving mid-stream is logged once, with the status it was
        sent and the bytes relayed so far.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = await connectRaw(self, proxy.port)
        conn.send(
            _request(
                b"x-fake-scenario: sse",
                b"x-fake-events: 50",
                b"x-fake-interval-ms: 50",
            )
        )
        await conn.waitForBytes(b"event: response.created")
        conn.abort()
        await waitFor(self.exchanges)
        await waitFor(lambda: upstream.resource.streams[0].lostAt is not None)
        [event] = self.exchanges()
        self.assertEqual(event["outcome"], "client_gone")
        self.assertEqual(event["status"], 200)
        self.assertEqual(event["upstream_status"], 200)
        self.assertGreater(event["bytes_out"], 0)
        self.assertSecretsNotLogged()

    def test_startupLogsAddress(self) -> None:
        """
        Starting the proxy logs the address it listens on.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        texts = [formatEvent(e) for e in self.events]
        self.assertIn(f"listening on 127.0.0.1:{proxy.port}", "\n".join(texts))
        self.assertSecretsNotLogged()

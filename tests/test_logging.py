"""
Logging: one structured event per exchange, start-up names the listening
address, and neither the key nor bodies are ever logged.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

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


def _request(*headerLines: bytes, target: bytes = b"/v1/responses") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
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
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def exchanges(self) -> list[LogEvent]:
        """
        The per-exchange events logged so far.
        """
        return [e for e in self.events if e.get("exchange")]

    @inlineCallbacks
    def exchangeEvent(self, payload: bytes, upstreamURL: str | None = None) -> Any:
        """
        Run one raw exchange against a fresh proxy and return the single
        exchange event it logged.
        """
        if upstreamURL is None:
            self.upstream = startFakeUpstream(self)
            upstreamURL = self.upstream.url
        proxy = startProxy(self, upstreamURL)
        raw = yield rawExchange(proxy.port, payload)
        yield waitFor(self.exchanges)
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

    @inlineCallbacks
    def test_forwardedExchange(self) -> None:
        """
        A forwarded exchange logs one event with method, path, status,
        upstream status, bytes in and out, duration and x-request-id.
        """
        raw, event = yield self.exchangeEvent(_request(b"x-fake-scenario: json"))
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
        text = formatEvent(event)
        self.assertIn("POST /v1/responses -> 200", text)
        self.assertIn("req_fake_1", text)

    @inlineCallbacks
    def test_upstreamErrorStatus(self) -> None:
        """
        An upstream 429 is logged with status and upstream status 429.
        """
        raw, event = yield self.exchangeEvent(_request(b"x-fake-scenario: status"))
        self.assertEqual(event["status"], 429)
        self.assertEqual(event["upstream_status"], 429)

    @inlineCallbacks
    def test_unreachableUpstream(self) -> None:
        """
        An unreachable upstream is logged once, status 502 and no upstream
        status.
        """
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        raw, event = yield self.exchangeEvent(
            _request(), f"http://127.0.0.1:{port}/v1/responses"
        )
        self.assertEqual(event["status"], 502)
        self.assertIsNone(event["upstream_status"])
        self.assertEqual(event["outcome"], "upstream_error")
        self.assertEqual(event["bytes_in"], len(_BODY))

    @inlineCallbacks
    def test_rejectedRequest(self) -> None:
        """
        A refused request is logged once, with status 403 and its target
        escaped.
        """
        raw, event = yield self.exchangeEvent(_request(target=b"/v1/responses?\x7f"))
        self.assertEqual(event["status"], 403)
        self.assertEqual(event["outcome"], "rejected")
        self.assertEqual(event["path"], "/v1/responses?\\x7f")
        self.assertEqual(event["bytes_in"], len(_BODY))
        self.assertEqual(self.upstream.resource.requests, [])

    @inlineCallbacks
    def test_upstreamAborted(self) -> None:
        """
        An upstream that breaks off mid-stream is logged once, with the
        status the client was sent.
        """
        raw, event = yield self.exchangeEvent(
            _request(b"x-fake-scenario: drop", b"x-fake-interval-ms: 20")
        )
        self.assertEqual(event["outcome"], "upstream_aborted")
        self.assertEqual(event["status"], 200)
        self.assertGreater(event["bytes_out"], 0)

    @inlineCallbacks
    def test_clientGone(self) -> None:
        """
        A client leaving mid-stream is logged once, with the status it was
        sent and the bytes relayed so far.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        conn = yield connectRaw(self, proxy.port)
        conn.send(
            _request(
                b"x-fake-scenario: sse",
                b"x-fake-events: 50",
                b"x-fake-interval-ms: 50",
            )
        )
        yield conn.waitForBytes(b"event: response.created")
        conn.transport.abortConnection()
        yield waitFor(self.exchanges)
        yield waitFor(lambda: upstream.resource.streams[0].lostAt is not None)
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

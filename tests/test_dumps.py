# -*- test-case-name: tests.test_dumps -*-
"""
C{--dump-dir}: each exchange is written as a request and a response JSON
file, numbered in order, with secrets redacted.

Integration tests (loopback): the proxy in-process on real sockets, dumps
written to real files.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from responses_proxy.dumps import (
    MAX_DUMPED_RESPONSE_BODY,
    DumpWriter,
    ExchangeDump,
)
from responses_proxy.record import ExchangeRecord
from tests.support import (
    CANARY_KEY,
    connectRaw,
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
    waitFor,
)

_BODY = b'{"model": "m", "input": "dump me", "stream": true}'


def _request(body: bytes = _BODY, *headerLines: bytes) -> bytes:
    """
    A C{POST /v1/responses} of C{body} (declared JSON, whatever it is) with
    C{headerLines}, closing the connection after.
    """
    return (
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + b"".join(line + b"\r\n" for line in headerLines)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _headerValues(document: dict[str, Any], name: str) -> list[str]:
    """
    The values of header C{name} in a dumped request or response.
    """
    return [h["value"] for h in document["headers"] if h["name"].lower() == name]


class DumpTests(TestCase):
    """
    Dumps written by a running proxy.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url, "--dump-dir", self.directory)

    def files(self) -> list[str]:
        """
        The dump file names, sorted (temporary hidden files excluded).
        """
        return sorted(n for n in os.listdir(self.directory) if n[0] != ".")

    def load(self, name: str) -> Any:
        """
        Parse one dump file.
        """
        with open(os.path.join(self.directory, name), "rb") as f:
            return json.loads(f.read())

    def waitForFiles(self, count: int) -> Deferred[bool]:
        """
        Wait until C{count} dump files exist (they are written from a
        thread, each appearing complete at once).
        """
        return waitFor(lambda: len(self.files()) >= count)

    async def test_exchangeDumped(self) -> None:
        """
        One exchange writes a request file (method, url, headers, body as
        JSON) and a response file (status, headers, body as text), with
        Authorization and cookie headers redacted and the key nowhere.
        """
        raw = await rawExchange(
            self.proxy.port,
            _request(
                _BODY,
                b"Authorization: Bearer sk-client-secret",
                b"Cookie: session=client-cookie",
                b"api-key: azure-client-secret",
                b"Proxy-Authorization: Basic proxy-secret",
                b"X-Visible: shown",
                b"x-fake-response-headers: "
                + json.dumps([["Set-Cookie", "s=upstream-cookie"]]).encode(),
            ),
        )
        self.assertEqual(parseRawResponse(raw).status, 200)
        await self.waitForFiles(2)
        requestName, responseName = self.files()
        self.assertTrue(requestName.endswith("-request.json"), requestName)
        self.assertTrue(responseName.endswith("-response.json"), responseName)
        self.assertEqual(
            requestName.split("-")[:2], responseName.split("-")[:2], "same prefix"
        )
        request = self.load(requestName)
        self.assertEqual(request["method"], "POST")
        self.assertEqual(request["url"], "/v1/responses")
        self.assertEqual(request["body"], json.loads(_BODY))
        self.assertEqual(_headerValues(request, "authorization"), ["[REDACTED]"])
        self.assertEqual(_headerValues(request, "cookie"), ["[REDACTED]"])
        self.assertEqual(_headerValues(request, "api-key"), ["[REDACTED]"])
        self.assertEqual(_headerValues(request, "proxy-authorization"), ["[REDACTED]"])
        self.assertEqual(_headerValues(request, "x-visible"), ["shown"])
        response = self.load(responseName)
        self.assertEqual(response["status"], 200)
        self.assertEqual(_headerValues(response, "set-cookie"), ["[REDACTED]"])
        self.assertEqual(_headerValues(response, "x-request-id"), ["req_fake_1"])
        self.assertIsInstance(response["body"], str)
        self.assertIn("event: response.completed", response["body"])
        self.assertFalse(response["body_truncated"])
        self.assertEqual(response["body_bytes"], len(response["body"].encode()))
        for name in self.files():
            with open(os.path.join(self.directory, name), "rb") as f:
                content = f.read()
            self.assertNotIn(CANARY_KEY.encode(), content)
            self.assertNotIn(b"sk-client-secret", content)
            self.assertNotIn(b"client-cookie", content)
            self.assertNotIn(b"azure-client-secret", content)
            self.assertNotIn(b"proxy-secret", content)
        self.assertNotIn("upstream-cookie", json.dumps(response))

    async def test_textBodies(self) -> None:
        """
        A request body that is not JSON (though declared so) is dumped as
        text; a JSON response body is dumped as JSON.
        """
        body = b"not json at all \xff"
        await rawExchange(self.proxy.port, _request(body, b"x-fake-scenario: json"))
        await self.waitForFiles(2)
        requestName, responseName = self.files()
        self.assertEqual(self.load(requestName)["body"], "not json at all \ufffd")
        self.assertEqual(self.load(responseName)["body"]["status"], "completed")

    async def test_numberedInOrder(self) -> None:
        """
        Consecutive exchanges sort in order: request 1, response 1,
        request 2, response 2, ...
        """
        for number in range(3):
            await rawExchange(
                self.proxy.port,
                _request(b'{"n": %d}' % number, b"x-fake-scenario: json"),
            )
        await self.waitForFiles(6)
        names = self.files()
        kinds = [name.rsplit("-", 1)[1] for name in names]
        self.assertEqual(kinds, ["request.json", "response.json"] * 3)
        bodies = [self.load(name)["body"] for name in names[::2]]
        self.assertEqual(bodies, [{"n": 0}, {"n": 1}, {"n": 2}])

    async def test_errorAnswerDumped(self) -> None:
        """
        An upstream 4xx answer is dumped with its status and body.
        """
        await rawExchange(
            self.proxy.port,
            _request(_BODY, b"x-fake-scenario: status", b"x-fake-status: 400"),
        )
        await self.waitForFiles(2)
        response = self.load(self.files()[1])
        self.assertEqual(response["status"], 400)
        self.assertEqual(response["body"]["error"]["code"], "400")

    async def test_abortedStreamDumped(self) -> None:
        """
        When the upstream breaks off, the response dump is still written,
        with what was relayed.
        """
        await rawExchange(
            self.proxy.port,
            _request(
                _BODY,
                b"x-fake-scenario: drop",
                b"x-fake-events-before-drop: 2",
                b"x-fake-interval-ms: 20",
            ),
        )
        await self.waitForFiles(2)
        response = self.load(self.files()[1])
        self.assertEqual(response["status"], 200)
        self.assertEqual(response["outcome"], "upstream_aborted")
        # The upstream aborts right after its second event: an event still
        # in its socket buffer may be lost with the reset, never a third.
        self.assertIn(response["body"].count("\n\n"), (1, 2))
        self.assertEqual(response["body_bytes"], len(response["body"].encode()))

    async def test_clientGoneDumped(self) -> None:
        """
        When the client disconnects mid-stream, the response dump is
        written when the exchange ends.
        """
        conn = await connectRaw(self, self.proxy.port)
        conn.send(
            _request(
                _BODY,
                b"x-fake-scenario: sse",
                b"x-fake-events: 50",
                b"x-fake-interval-ms: 50",
            )
        )
        await conn.waitForBytes(b"event: response.created")
        conn.abort()
        await self.waitForFiles(2)
        response = self.load(self.files()[1])
        self.assertEqual(response["status"], 200)
        self.assertEqual(response["outcome"], "client_gone")
        self.assertIn("response.created", response["body"])

    async def test_permissions(self) -> None:
        """
        The directory is private (0700) and each file 0600.
        """
        await rawExchange(self.proxy.port, _request(_BODY, b"x-fake-scenario: json"))
        await self.waitForFiles(2)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in self.files():
            mode = os.stat(os.path.join(self.directory, name)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600, name)


class DumpWriterTests(TestCase):
    """
    L{DumpWriter} numbering across restarts.
    """

    def test_numberingContinues(self) -> None:
        """
        A writer on a directory that already holds dumps numbers after the
        highest existing one, so a restarted proxy's dumps still sort last.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("000007-1-request.json", "000012-2-response.json", "notes"):
            with open(os.path.join(directory, name), "w") as f:
                f.write("{}")
        writer = DumpWriter(directory, reactor)
        self.assertEqual(next(writer._sequence), 13)


class UpstreamFailureDumpTests(TestCase):
    """
    The proxy's own error answers are dumped too.
    """

    async def test_refusedDumped(self) -> None:
        """
        When the upstream refuses the connection, the response dump holds
        the proxy's 502 JSON error.
        """
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        directory = os.path.abspath(self.mktemp())
        proxy = startProxy(
            self, f"http://127.0.0.1:{port}/v1/responses", "--dump-dir", directory
        )
        raw = await rawExchange(proxy.port, _request())
        self.assertEqual(parseRawResponse(raw).status, 502)

        def names() -> list[str]:
            return sorted(n for n in os.listdir(directory) if n[0] != ".")

        await waitFor(lambda: len(names()) == 2)
        name = names()[1]
        with open(os.path.join(directory, name), "rb") as f:
            response = json.loads(f.read())
        self.assertEqual(response["status"], 502)
        self.assertEqual(response["body"]["error"]["code"], "upstream_refused")


class ResponseBodyCapTests(TestCase):
    """
    A response dump keeps a bounded part of the body.
    """

    async def test_bodyCapped(self) -> None:
        """
        Past C{maxBody} bytes, the body is no longer kept; the dump records
        the real length and that it was truncated.
        """
        directory = os.path.abspath(self.mktemp())
        writer = DumpWriter(directory, reactor)
        path = os.path.join(directory, "000001-0-response.json")
        dump = ExchangeDump(writer, path, maxBody=10)
        dump.responseStarted(200, Headers({b"content-type": [b"text/plain"]}))
        for piece in (b"0123456", b"789abc", b"defghij"):
            dump.bodyReceived(piece)
        dump.finished(ExchangeRecord("POST", "/v1/responses", outcome="complete"))
        await waitFor(lambda: os.path.exists(path))
        with open(path, "rb") as f:
            document = json.loads(f.read())
        self.assertEqual(document["body"], "0123456789")
        self.assertEqual(document["body_bytes"], 20)
        self.assertTrue(document["body_truncated"])

    def test_defaultCap(self) -> None:
        """
        By default a dump keeps at most 16 MiB of response body.
        """
        self.assertEqual(MAX_DUMPED_RESPONSE_BODY, 16 * 1024 * 1024)

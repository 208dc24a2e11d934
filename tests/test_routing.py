"""
Strict routing: exactly C{POST /v1/responses} without a query string is
forwarded; every other request gets a JSON 403 and never reaches the
upstream.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import (
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
)

_BODY = b'{"model": "m", "input": "hi"}'


class RoutingTests(TestCase):
    """
    Each request line below is refused with a JSON 403, and the upstream
    records nothing.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url)

    @inlineCallbacks
    def assertForbidden(
        self, requestLine: bytes, body: bytes = _BODY, host: bytes = b"127.0.0.1"
    ) -> Any:
        """
        Send C{requestLine} (with a JSON body) on a raw socket and check
        the answer is our 403 and the upstream saw nothing.
        """
        payload = (
            requestLine + b"\r\n"
            b"Host: " + host + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        ) + body
        raw = yield rawExchange(self.proxy.port, payload)
        response = parseRawResponse(raw)
        self.assertEqual(response.status, 403, raw)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        if not requestLine.upper().startswith(b"HEAD "):
            document = json.loads(response.body)
            self.assertEqual(
                sorted(document["error"]), ["code", "message", "type"], document
            )
            self.assertEqual(document["error"]["code"], "forbidden")
        self.assertEqual(self.upstream.resource.requests, [])
        return response

    @inlineCallbacks
    def test_exactRequestForwarded(self) -> None:
        """
        The control case: C{POST /v1/responses} over the same raw socket
        reaches the upstream.
        """
        payload = (
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"x-fake-scenario: json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BODY)
        ) + _BODY
        raw = yield rawExchange(self.proxy.port, payload)
        self.assertEqual(parseRawResponse(raw).status, 200)
        self.assertEqual(len(self.upstream.resource.requests), 1)

    def test_get(self) -> None:
        """
        GET is refused.
        """
        return self.assertForbidden(b"GET /v1/responses HTTP/1.1", body=b"")

    def test_put(self) -> None:
        """
        PUT is refused.
        """
        return self.assertForbidden(b"PUT /v1/responses HTTP/1.1")

    def test_delete(self) -> None:
        """
        DELETE is refused.
        """
        return self.assertForbidden(b"DELETE /v1/responses HTTP/1.1", body=b"")

    def test_patch(self) -> None:
        """
        PATCH is refused.
        """
        return self.assertForbidden(b"PATCH /v1/responses HTTP/1.1")

    def test_head(self) -> None:
        """
        HEAD is refused with a 403 status (and, being HEAD, no body).
        """
        return self.assertForbidden(b"HEAD /v1/responses HTTP/1.1", body=b"")

    def test_lowercasePost(self) -> None:
        """
        Methods are case-sensitive: C{post} is not C{POST}.
        """
        return self.assertForbidden(b"post /v1/responses HTTP/1.1")

    def test_options(self) -> None:
        """
        OPTIONS on the endpoint is refused.
        """
        return self.assertForbidden(b"OPTIONS /v1/responses HTTP/1.1", body=b"")

    def test_optionsAsterisk(self) -> None:
        """
        C{OPTIONS *} is refused.
        """
        return self.assertForbidden(b"OPTIONS * HTTP/1.1", body=b"")

    def test_connect(self) -> None:
        """
        C{CONNECT host:443} is refused: the proxy is no tunnel.
        """
        return self.assertForbidden(
            b"CONNECT api.openai.com:443 HTTP/1.1", body=b"", host=b"api.openai.com"
        )

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target naming the right path is still refused.
        """
        return self.assertForbidden(
            b"POST http://127.0.0.1/v1/responses HTTP/1.1"
        ).addCallback(
            lambda _: self.assertForbidden(
                b"POST https://api.openai.com/v1/responses HTTP/1.1"
            )
        )

    def test_queryString(self) -> None:
        """
        Any query string is refused.
        """
        return self.assertForbidden(b"POST /v1/responses?stream=true HTTP/1.1")

    def test_bareQuestionMark(self) -> None:
        """
        Even an empty query string (a bare C{?}) is refused.
        """
        return self.assertForbidden(b"POST /v1/responses? HTTP/1.1")

    def test_trailingSlash(self) -> None:
        """
        C{/v1/responses/} is refused.
        """
        return self.assertForbidden(b"POST /v1/responses/ HTTP/1.1")

    def test_doubleSlashes(self) -> None:
        """
        Doubled slashes anywhere are refused.
        """
        return self.assertForbidden(b"POST //v1/responses HTTP/1.1").addCallback(
            lambda _: self.assertForbidden(b"POST /v1//responses HTTP/1.1")
        )

    def test_percentEncoded(self) -> None:
        """
        Percent-encoded variants of the path are refused, though
        twisted.web decodes them while traversing.
        """
        return self.assertForbidden(b"POST /v1/respons%65s HTTP/1.1").addCallback(
            lambda _: self.assertForbidden(b"POST /v1%2Fresponses HTTP/1.1")
        )

    def test_caseVariant(self) -> None:
        """
        Paths are case-sensitive.
        """
        return self.assertForbidden(b"POST /V1/responses HTTP/1.1").addCallback(
            lambda _: self.assertForbidden(b"POST /v1/Responses HTTP/1.1")
        )

    def test_subPath(self) -> None:
        """
        Paths below the endpoint are refused.
        """
        return self.assertForbidden(b"POST /v1/responses/anything HTTP/1.1")

    def test_otherPaths(self) -> None:
        """
        The root, C{/v1} and other API endpoints are refused.
        """
        d = self.assertForbidden(b"POST / HTTP/1.1")
        for path in (b"/v1", b"/v1/", b"/v1/chat/completions", b"/v1/models"):
            d.addCallback(
                lambda _, path=path: self.assertForbidden(
                    b"POST " + path + b" HTTP/1.1"
                )
            )
        return d

    def test_shutdownDisabled(self) -> None:
        """
        Without C{--http-shutdown}, C{GET /shutdown} is just another 403.
        """
        return self.assertForbidden(b"GET /shutdown HTTP/1.1", body=b"")

    def test_http10(self) -> None:
        """
        An HTTP/1.0 request to a wrong path is refused the same way.
        """
        return self.assertForbidden(b"GET /v1/models HTTP/1.0", body=b"")


class ShutdownRoutingTests(TestCase):
    """
    With C{--http-shutdown}, only the exact C{GET /shutdown} is special.
    """

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.proxy = startProxy(self, self.upstream.url, "--http-shutdown")

    @inlineCallbacks
    def test_shutdownVariantsForbidden(self) -> None:
        """
        Other methods (lowercase C{get} and HEAD included), a query string,
        slash, case, percent-encoded or absolute-form variants of
        C{/shutdown} are refused, and the proxy keeps serving.
        """
        for line in (
            b"POST /shutdown HTTP/1.1",
            b"GET /shutdown? HTTP/1.1",
            b"GET /shutdown/ HTTP/1.1",
            b"GET /Shutdown HTTP/1.1",
            b"get /shutdown HTTP/1.1",
            b"GET /shut%64own HTTP/1.1",
            b"GET //shutdown HTTP/1.1",
            b"GET http://127.0.0.1/shutdown HTTP/1.1",
            b"HEAD /shutdown HTTP/1.1",
        ):
            raw = yield rawExchange(
                self.proxy.port,
                line + b"\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            self.assertEqual(parseRawResponse(raw).status, 403, line)
        self.assertEqual(self.upstream.resource.requests, [])

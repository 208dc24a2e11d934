# -*- test-case-name: tests.test_routing -*-
"""
Unit tests (in memory) for the strict routing of
L{responses_proxy.resource}: exactly C{POST /v1/responses} without a query
string is forwarded; every other request gets a JSON 403 and never reaches
the upstream.

Each request is raw bytes fed to a L{ProxySite} connection on a
L{StringTransport}, in front of the real resource tree and forwarder, whose
upstream records every request it is asked to make (L{tests.memory}). The
same requests over real sockets, and many generated ones, are in
C{tests.test_hostile}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.memory import JSON_BODY, KEY_HEADER, UPSTREAM_URL, inMemoryProxy
from tests.support import RawResponse


def _request(
    requestLine: bytes, body: bytes = JSON_BODY, host: bytes = b"127.0.0.1"
) -> bytes:
    """
    C{requestLine} with a loopback C{Host}, a JSON body and C{Connection: close}.
    """
    return (
        requestLine + b"\r\n"
        b"Host: " + host + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body)
    ) + body


class RoutingTests(SynchronousTestCase):
    """
    Each request line below is refused with a JSON 403, and the upstream is
    asked for nothing.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy()

    def assertForbidden(
        self,
        requestLine: bytes,
        body: bytes = JSON_BODY,
        codes: tuple[str, ...] = ("forbidden",),
    ) -> RawResponse:
        """
        Send C{requestLine} (with a JSON body) on a fresh connection and
        check the answer is our 403 and the upstream saw nothing.
        """
        client = self.proxy.connect(self)
        client.send(_request(requestLine, body))
        response = client.response()
        self.assertEqual(response.status, 403, client.received)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        if not requestLine.upper().startswith(b"HEAD "):
            document = json.loads(response.body)
            self.assertEqual(
                sorted(document["error"]), ["code", "message", "type"], document
            )
            self.assertIn(document["error"]["code"], codes)
        self.assertFalse(client.open)
        self.assertEqual(self.proxy.upstream.calls, [])
        return response

    def test_exactRequestForwarded(self) -> None:
        """
        The control case: C{POST /v1/responses} on the same kind of
        connection reaches the upstream (URL, key, body), and its answer
        comes back.
        """
        client = self.proxy.connect(self)
        client.send(_request(b"POST /v1/responses HTTP/1.1"))
        [call] = self.proxy.upstream.calls
        self.assertEqual(call.url, UPSTREAM_URL.encode())
        self.assertEqual(call.headers.getRawHeaders(b"authorization"), [KEY_HEADER])
        self.assertEqual(call.body, JSON_BODY)
        call.respond(200, b'{"id": "resp_1"}')
        self.assertEqual(client.response().status, 200)
        self.assertEqual(client.response().body, b'{"id": "resp_1"}')

    def test_get(self) -> None:
        """
        GET is refused.
        """
        self.assertForbidden(b"GET /v1/responses HTTP/1.1", body=b"")

    def test_put(self) -> None:
        """
        PUT is refused.
        """
        self.assertForbidden(b"PUT /v1/responses HTTP/1.1")

    def test_delete(self) -> None:
        """
        DELETE is refused.
        """
        self.assertForbidden(b"DELETE /v1/responses HTTP/1.1", body=b"")

    def test_patch(self) -> None:
        """
        PATCH is refused.
        """
        self.assertForbidden(b"PATCH /v1/responses HTTP/1.1")

    def test_head(self) -> None:
        """
        HEAD is refused with a 403 status (and, being HEAD, no body).
        """
        response = self.assertForbidden(b"HEAD /v1/responses HTTP/1.1", body=b"")
        self.assertEqual(response.body, b"")

    def test_lowercasePost(self) -> None:
        """
        Methods are case-sensitive: C{post} is not C{POST}.
        """
        self.assertForbidden(b"post /v1/responses HTTP/1.1")

    def test_options(self) -> None:
        """
        OPTIONS on the endpoint is refused.
        """
        self.assertForbidden(b"OPTIONS /v1/responses HTTP/1.1", body=b"")

    def test_optionsAsterisk(self) -> None:
        """
        C{OPTIONS *} is refused.
        """
        self.assertForbidden(b"OPTIONS * HTTP/1.1", body=b"")

    def test_connect(self) -> None:
        """
        C{CONNECT host:443} is refused: the proxy is no tunnel.
        """
        self.assertForbidden(b"CONNECT api.openai.com:443 HTTP/1.1", body=b"")

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target naming the right path is still refused
        (naming another host, also for that reason).
        """
        self.assertForbidden(b"POST http://127.0.0.1/v1/responses HTTP/1.1")
        self.assertForbidden(
            b"POST https://api.openai.com/v1/responses HTTP/1.1",
            codes=("forbidden", "host_not_allowed"),
        )

    def test_queryString(self) -> None:
        """
        Any query string is refused.
        """
        self.assertForbidden(b"POST /v1/responses?stream=true HTTP/1.1")

    def test_bareQuestionMark(self) -> None:
        """
        Even an empty query string (a bare C{?}) is refused.
        """
        self.assertForbidden(b"POST /v1/responses? HTTP/1.1")

    def test_trailingSlash(self) -> None:
        """
        C{/v1/responses/} is refused.
        """
        self.assertForbidden(b"POST /v1/responses/ HTTP/1.1")

    def test_doubleSlashes(self) -> None:
        """
        Doubled slashes anywhere are refused.
        """
        self.assertForbidden(b"POST //v1/responses HTTP/1.1")
        self.assertForbidden(b"POST /v1//responses HTTP/1.1")

    def test_percentEncoded(self) -> None:
        """
        Percent-encoded variants of the path are refused, though
        twisted.web decodes them while traversing.
        """
        self.assertForbidden(b"POST /v1/respons%65s HTTP/1.1")
        self.assertForbidden(b"POST /v1%2Fresponses HTTP/1.1")

    def test_caseVariant(self) -> None:
        """
        Paths are case-sensitive.
        """
        self.assertForbidden(b"POST /V1/responses HTTP/1.1")
        self.assertForbidden(b"POST /v1/Responses HTTP/1.1")

    def test_subPath(self) -> None:
        """
        Paths below the endpoint are refused.
        """
        self.assertForbidden(b"POST /v1/responses/anything HTTP/1.1")

    def test_otherPaths(self) -> None:
        """
        The root, C{/v1} and other API endpoints are refused.
        """
        for path in (b"/", b"/v1", b"/v1/", b"/v1/chat/completions", b"/v1/models"):
            self.assertForbidden(b"POST " + path + b" HTTP/1.1")

    def test_shutdownDisabled(self) -> None:
        """
        Without C{--http-shutdown}, C{GET /shutdown} is just another 403.
        """
        self.assertForbidden(b"GET /shutdown HTTP/1.1", body=b"")

    def test_http10(self) -> None:
        """
        An HTTP/1.0 request to a wrong path is refused the same way.
        """
        self.assertForbidden(b"GET /v1/models HTTP/1.0", body=b"")

    def test_refusalsRecorded(self) -> None:
        """
        Each refusal ends as one exchange record, C{rejected} with the code.
        """
        self.assertForbidden(b"GET /v1/models HTTP/1.1", body=b"")
        [record] = self.proxy.records
        self.assertEqual(
            (record.method, record.path, record.status, record.outcome, record.code),
            ("GET", "/v1/models", 403, "rejected", "forbidden"),
        )
        self.assertFalse(record.forwarded)


class ShutdownRoutingTests(SynchronousTestCase):
    """
    With C{--http-shutdown}, only the exact C{GET /shutdown} is special.
    """

    def setUp(self) -> None:
        self.proxy = inMemoryProxy(httpShutdown=True)

    def test_shutdownVariantsForbidden(self) -> None:
        """
        Other methods (lowercase C{get} and HEAD included), a query string,
        slash, case, percent-encoded or absolute-form variants of
        C{/shutdown} are refused, and do not shut down.
        """
        for line in (
            b"POST /shutdown HTTP/1.1",
            b"GET /shutdown? HTTP/1.1",
            b"GET /shutdown?now HTTP/1.1",
            b"GET /shutdown/ HTTP/1.1",
            b"GET /Shutdown HTTP/1.1",
            b"get /shutdown HTTP/1.1",
            b"GET /shut%64own HTTP/1.1",
            b"GET //shutdown HTTP/1.1",
            b"GET http://127.0.0.1/shutdown HTTP/1.1",
            b"HEAD /shutdown HTTP/1.1",
        ):
            client = self.proxy.connect(self)
            client.send(_request(line, b""))
            self.assertEqual(client.response().status, 403, line)
        self.assertEqual(self.proxy.shutdowns, [])
        self.assertEqual(self.proxy.upstream.calls, [])

    def test_shutdown(self) -> None:
        """
        The exact C{GET /shutdown} answers 200 with C{Connection: close},
        and shuts down once the answer is sent (the drain then closes the
        connection: C{tests.test_tap}).
        """
        client = self.proxy.connect(self)
        client.send(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = client.response()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertEqual(json.loads(response.body), {"status": "shutting down"})
        self.assertEqual(self.proxy.shutdowns, [None])

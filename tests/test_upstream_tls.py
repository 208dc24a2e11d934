# -*- test-case-name: tests.test_upstream_tls -*-
"""
Trusting the upstream: the system store with host name verification by
default, or exactly a private CA given with C{--upstream-ca} or
C{SSL_CERT_FILE}.

Integration tests (loopback / processes).
"""

from __future__ import annotations

import json
import os

import treq
from twisted.trial.unittest import TestCase

from tests.support import (
    CANARY_KEY,
    RunningProxy,
    RunningUpstream,
    childEnvironment,
    httpClient,
    jsonHeaders,
    makeTestPKI,
    readServerInfo,
    serverContext,
    spawnEntryPoint,
    startFakeUpstream,
    startProxy,
    waitFor,
)

JSON = jsonHeaders({"x-fake-scenario": "json"})


class UpstreamTrustTests(TestCase):
    """
    An HTTPS fake upstream whose certificate a throw-away test CA signed.
    """

    def setUp(self) -> None:
        self.pki = makeTestPKI(self.mktemp())

    def upstream(self, cert: str | None = None) -> RunningUpstream:
        """
        A fake upstream over TLS, with C{cert} (by default one for
        127.0.0.1 and localhost, signed by the test CA).
        """
        context = serverContext(cert or self.pki.serverCert, self.pki.serverKey)
        return startFakeUpstream(self, tls=context)

    async def post(self, url: str) -> tuple[int, bytes]:
        """
        POST a JSON body to C{url}; the answer's status and body.
        """
        response = await httpClient(self).post(url, data=b"{}", headers=JSON)
        body = await treq.content(response)
        return response.code, body

    async def assertRefused(
        self, proxy: RunningProxy, upstream: RunningUpstream
    ) -> None:
        """
        C{proxy} answers a JSON 502 C{upstream_tls_error}, and nothing
        reached C{upstream}.
        """
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_tls_error")
        self.assertEqual(upstream.resource.requests, [])

    async def test_privateCA(self) -> None:
        """
        With C{--upstream-ca} the upstream is trusted and gets the request.
        """
        upstream = self.upstream()
        proxy = startProxy(self, upstream.url, "--upstream-ca", self.pki.caCert)
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        self.assertEqual(len(upstream.resource.requests), 1)

    async def test_systemStoreByDefault(self) -> None:
        """
        Without it, the system store does not know the test CA: 502, and
        nothing (the key least of all) reached the upstream.
        """
        upstream = self.upstream()
        await self.assertRefused(startProxy(self, upstream.url), upstream)

    async def test_hostNameChecked(self) -> None:
        """
        A certificate from the trusted CA but for another host is refused.
        """
        upstream = self.upstream(self.pki.wrongHostCert)
        proxy = startProxy(self, upstream.url, "--upstream-ca", self.pki.caCert)
        await self.assertRefused(proxy, upstream)

    async def test_selfSignedRefused(self) -> None:
        """
        A self-signed certificate for the right host is refused.
        """
        upstream = self.upstream(self.pki.selfSignedCert)
        proxy = startProxy(self, upstream.url, "--upstream-ca", self.pki.caCert)
        await self.assertRefused(proxy, upstream)

    async def test_sslCertFile(self) -> None:
        """
        C{SSL_CERT_FILE} is used when C{--upstream-ca} is not given.
        """
        upstream = self.upstream()
        proxy = startProxy(
            self, upstream.url, environ={"SSL_CERT_FILE": self.pki.caCert}
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)

    async def test_upstreamCAWins(self) -> None:
        """
        C{--upstream-ca} takes precedence over C{SSL_CERT_FILE}.
        """
        upstream = self.upstream()
        proxy = startProxy(
            self,
            upstream.url,
            "--upstream-ca",
            self.pki.caCert,
            environ={"SSL_CERT_FILE": self.pki.selfSignedCert},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)

    async def test_sslCertFileSpawned(self) -> None:
        """
        The installed console script, given C{SSL_CERT_FILE} in its
        environment, trusts the CA in it.
        """
        upstream = self.upstream()
        info = os.path.abspath(self.mktemp())
        process = spawnEntryPoint(
            self,
            [
                "responses-api-proxy",
                "--upstream-url",
                upstream.url,
                "--server-info",
                info,
            ],
            stdin=CANARY_KEY.encode() + b"\n",
            env=childEnvironment(SSL_CERT_FILE=self.pki.caCert),
        )
        await waitFor(lambda: readServerInfo(info) or process.ended.called, 30)
        serverInfo = readServerInfo(info)
        assert serverInfo is not None, process.capture.err
        port = serverInfo["port"]
        code, body = await self.post(f"http://127.0.0.1:{port}/v1/responses")
        self.assertEqual(code, 200, body)
        [seen] = upstream.resource.requests
        self.assertEqual(
            seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
        )
        process.signal("TERM")
        result = await process.ended
        self.assertEqual(result.exitCode, 0, result.stderr)

    async def test_unusableCAFile(self) -> None:
        """
        A CA file without a certificate stops startup with one line, exit 1.
        """
        empty = os.path.abspath(self.mktemp())
        with open(empty, "w") as f:
            f.write("not a certificate\n")
        process = spawnEntryPoint(
            self,
            ["responses-api-proxy", "--upstream-ca", empty],
            stdin=CANARY_KEY.encode(),
        )
        result = await process.ended
        self.assertEqual(result.exitCode, 1)
        self.assertIn(b"no PEM certificate found in " + empty.encode(), result.stderr)

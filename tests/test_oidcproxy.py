"""
Our C{--github-oidc} mode for real: the spawned proxy gets its access token
from fake GitHub and OpenAI token endpoints over HTTPS (a test CA), renews
it in the background, refuses with 503 when it has none, fails start-up
with one line, never shows a token, sends what the reference sends, and
carries a real Codex turn.

Integration tests (spawned entry points, loopback HTTPS fakes from
tests/fakeoidc.py; the comparison with the reference also uses its private
network namespace, and runs where the reference binary and namespaces are
available).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from tests.codex import runCodex
from tests.fakeoidc import (
    FAKE_REQUEST_TOKEN,
    Answer,
    FakeGitHubOIDC,
    FakeTokenExchange,
    ServedEndpoint,
    makeHostPKI,
    serveHTTPS,
)
from tests.fakeupstream import DEFAULT_TEXT
from tests.processes import ProxyDidNotStart, SpawnedProxy, spawnProxy
from tests.support import childEnvironment, scriptPath, startFakeUpstream, waitFor
from tests.test_egress import startConnectProxy

AUDIENCE = "api://openai-workload-identity/test"


class _OIDC(TestCase):
    timeout = 120
    entry = "console script"

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        self.pki = makeHostPKI(directory)
        self.github = FakeGitHubOIDC()
        self.exchange = FakeTokenExchange()
        self.githubServer = self.serve(self.github, "github")
        self.exchangeServer = self.serve(self.exchange, "exchange")
        self.upstream = startFakeUpstream(self)

    def serve(self, resource: Any, stem: str) -> ServedEndpoint:
        return serveHTTPS(self, resource, self.pki.serverOptions(["127.0.0.1"], stem))

    def flags(self, **overrides: str) -> list[str]:
        values = {
            "oidc-audience": AUDIENCE,
            "identity-provider-id": "wip_test",
            "service-account-id": "sa_test",
            "github-oidc-request-url": self.githubServer.url(
                "/run/idtoken?api-version=2.0"
            ),
            "oidc-token-url": self.exchangeServer.url("/oauth/token"),
            "upstream-url": self.upstream.url,
            "upstream-ca": self.pki.caCert,
        }
        values.update(overrides)
        flags = ["--github-oidc"]
        for name, value in values.items():
            flags += [f"--{name}", value]
        return flags

    async def proxy(self, *extra: str, **overrides: str) -> SpawnedProxy:
        log = ["--log-format", "json"] if self.entry == "console script" else []
        proxy: SpawnedProxy = await spawnProxy(
            self,
            *self.flags(**overrides),
            *log,
            *extra,
            entry=self.entry,
            key=FAKE_REQUEST_TOKEN.encode() + b"\n",
        )
        return proxy

    async def post(self, proxy: SpawnedProxy) -> tuple[int, bytes]:
        response = await treq.post(
            proxy.url,
            json={"model": "gpt-test", "input": "hi", "stream": True},
            persistent=False,
        )
        return response.code, await treq.content(response)

    def upstreamTokens(self) -> list[bytes]:
        return [r.header(b"authorization")[0] for r in self.upstream.resource.requests]

    def secrets(self) -> list[bytes]:
        """
        Every secret of the mode so far, and forms of them a leak may take.
        """
        values = [FAKE_REQUEST_TOKEN, *self.github.issued, *self.exchange.issued]
        forms = []
        for value in values:
            raw = value.encode()
            forms += [raw, raw[-24:], base64.b64encode(raw)]
        return forms

    def assertNoSecrets(self, *places: bytes) -> None:
        for place in places:
            for secret in self.secrets():
                self.assertNotIn(secret, place)


class HappyPathTests(_OIDC):
    """
    The mode working.
    """

    async def test_tokenInjected(self) -> None:
        """
        Before listening the proxy got an ID token (audience appended,
        request token as Bearer) and exchanged it; the upstream sees the
        access token, never the request or ID token; no secret is in the
        logs, the server-info file or the answers.
        """
        proxy = await self.proxy()
        self.assertEqual(len(self.github.requests), 1)
        self.assertEqual(len(self.exchange.requests), 1)
        status, body = await self.post(proxy)
        self.assertEqual(status, 200)
        self.assertEqual(self.upstreamTokens(), [b"Bearer oai_access_canary_1"])
        [github] = self.github.requests
        self.assertEqual(
            github.header("authorization"), [f"Bearer {FAKE_REQUEST_TOKEN}"]
        )
        self.assertEqual(github.query()["audience"], [AUDIENCE])
        self.assertEqual(github.query()["api-version"], ["2.0"])
        [exchange] = self.exchange.requests
        self.assertEqual(
            list(exchange.json()),
            [
                "grant_type",
                "subject_token_type",
                "subject_token",
                "identity_provider_id",
                "service_account_id",
            ],
        )
        self.assertEqual(exchange.json()["subject_token"], self.github.issued[0])
        with open(proxy.serverInfoPath, "rb") as f:
            info = f.read()
        proxy.process.signal("TERM")
        result = await proxy.process.ended
        self.assertEqual(result.exitCode, 0)
        self.assertNoSecrets(info, body, result.stdout, result.stderr)

    async def test_secretsNowhere(self) -> None:
        """
        The request token, the ID token and the access tokens (and
        fragments and base64 of them) are in no dump, log line, answer,
        server-info file, command line or environment, also across a
        renewal and a 503.
        """
        self.exchange.expiresIn = self.exchange.expiresAtOffset = 4
        dumps = os.path.abspath(self.mktemp())
        proxy = await self.proxy("--dump-dir", dumps)
        answers = [await self.post(proxy)]
        await waitFor(lambda: len(self.exchange.requests) == 2, 20)
        self.exchange.fallback = Answer.json({"error": "server_error"}, 500)
        answers.append(await self.post(proxy))
        await waitFor(lambda: len(self.exchange.requests) >= 4, 30)
        answers.append(await self.post(proxy))
        self.assertEqual(answers[-1][0], 503)
        places = [body for _, body in answers]
        for leaf in ("cmdline", "environ"):
            with open(f"/proc/{proxy.pid}/{leaf}", "rb") as f:
                places.append(f.read())
        with open(proxy.serverInfoPath, "rb") as f:
            places.append(f.read())
        proxy.process.signal("TERM")
        result = await proxy.process.ended
        places += [result.stdout, result.stderr]
        # Once the proxy has exited, every dump is written out (a listing
        # taken earlier may name a temporary file just being renamed).
        names = os.listdir(dumps)
        self.assertGreaterEqual(len(names), 4, names)
        for name in names:
            with open(os.path.join(dumps, name), "rb") as f:
                places.append(f.read())
        self.assertGreater(len(self.secrets()), 9)
        self.assertNoSecrets(*places)

    async def test_twistd(self) -> None:
        """
        twistd takes the same flags.
        """
        self.entry = "twistd"
        proxy = await self.proxy()
        self.assertEqual((await self.post(proxy))[0], 200)
        self.assertEqual(self.upstreamTokens(), [b"Bearer oai_access_canary_1"])

    async def test_throughEgressProxy(self) -> None:
        """
        With C{HTTPS_PROXY}, both token requests go through the egress
        proxy's C{CONNECT} tunnels, with its credentials on the C{CONNECT}
        only, and no secret is visible to it outside the TLS inside.
        """
        proxyPort, state = startConnectProxy(self)
        proxy = await spawnProxy(
            self,
            *self.flags(),
            entry=self.entry,
            key=FAKE_REQUEST_TOKEN.encode() + b"\n",
            env=childEnvironment(
                HTTPS_PROXY=f"http://alice:s%40cret@127.0.0.1:{proxyPort}"
            ),
        )
        self.assertEqual(
            [(method, target) for method, target, _ in state.requests],
            [
                (b"CONNECT", f"127.0.0.1:{self.githubServer.port}".encode()),
                (b"CONNECT", f"127.0.0.1:{self.exchangeServer.port}".encode()),
            ],
        )
        expected = b"Basic " + base64.b64encode(b"alice:s@cret")
        for _, _, headers in state.requests:
            self.assertEqual(headers[b"proxy-authorization"], expected)
        self.assertEqual(self.github.requests[0].header("proxy-authorization"), [])
        self.assertNoSecrets(bytes(state.relayed))
        self.assertEqual((await self.post(proxy))[0], 200)


class RenewalTests(_OIDC):
    """
    Renewal in the background, and what happens when it fails.
    """

    async def test_renewedInBackground(self) -> None:
        """
        With a 4 s token, a new one is fetched at 3.2 s with no request
        waiting for it; requests after that carry the new token.
        """
        self.exchange.expiresIn = self.exchange.expiresAtOffset = 4
        proxy = await self.proxy()
        self.assertEqual((await self.post(proxy))[0], 200)
        await waitFor(lambda: len(self.exchange.requests) == 2, 20)
        self.assertEqual(len(self.github.requests), 2)
        self.assertEqual((await self.post(proxy))[0], 200)
        self.assertEqual(
            self.upstreamTokens(),
            [b"Bearer oai_access_canary_1", b"Bearer oai_access_canary_2"],
        )
        log = bytes(proxy.process.capture.err)
        self.assertIn(b"Renewed the upstream access token", log)
        self.assertNoSecrets(log)

    async def test_renewalFailing(self) -> None:
        """
        While renewals fail (retried with backoff, logged), requests keep
        using the token that is still valid; once it has expired they get
        503 C{upstream_auth_unavailable} and nothing is sent upstream
        without authorisation.
        """
        self.exchange.expiresIn = self.exchange.expiresAtOffset = 4
        proxy = await self.proxy()
        self.exchange.fallback = Answer.json({"error": "server_error"}, 500)
        self.assertEqual((await self.post(proxy))[0], 200)
        await waitFor(lambda: len(self.exchange.requests) >= 2, 20)
        status, body = await self.post(proxy)
        if status == 200:
            # Still inside the first token's life: try again once it ended.
            await waitFor(lambda: len(self.exchange.requests) >= 4, 30)
            status, body = await self.post(proxy)
        self.assertEqual(status, 503, body)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_auth_unavailable")
        self.assertEqual(set(self.upstreamTokens()), {b"Bearer oai_access_canary_1"})
        log = bytes(proxy.process.capture.err)
        self.assertIn(b"Renewing the upstream access token failed", log)
        self.assertIn(b"HTTP 500", log)
        self.exchange.fallback = None
        await waitFor(lambda: self.exchange.issued[-1:] == ["oai_access_canary_2"], 40)
        await waitFor(
            lambda: b"Renewed the upstream" in bytes(proxy.process.capture.err)
        )
        self.assertEqual((await self.post(proxy))[0], 200)
        self.assertEqual(self.upstreamTokens()[-1], b"Bearer oai_access_canary_2")
        self.assertNoSecrets(bytes(proxy.process.capture.err))


class StartupFailureTests(_OIDC):
    """
    A failure before listening: one line on standard error, exit 1.
    """

    async def assertFails(self, why: str, **overrides: str) -> None:
        try:
            await self.proxy(**overrides)
        except ProxyDidNotStart as e:
            message = str(e)
        else:
            self.fail("the proxy started")
        self.assertIn("exited (1,", message)
        self.assertIn(why, message)
        self.assertNotIn("Traceback", message)
        self.assertNoSecrets(message.encode())

    async def test_githubRefuses(self) -> None:
        """
        GitHub refusing the request token.
        """
        self.github.refuseRequestToken = True
        await self.assertFails("GitHub OIDC rejected the request (HTTP 401)")
        self.assertEqual(self.exchange.requests, [])

    async def test_exchangeRejected(self) -> None:
        """
        The exchange answering 401.
        """
        self.exchange.queue(Answer.json({"error": "invalid_grant"}, 401))
        await self.assertFails("token exchange rejected the request (HTTP 401)")

    async def test_exchangeMalformed(self) -> None:
        """
        The exchange answering something that is not JSON.
        """
        self.exchange.queue(Answer(200, b"<html>oops", contentType="text/html"))
        await self.assertFails("returned an invalid answer (not JSON)")

    async def test_exchangeLifetimes(self) -> None:
        """
        A zero lifetime, and one over an hour.
        """
        self.exchange.expiresIn = 0
        await self.assertFails("expired workload identity token")
        self.exchange.expiresIn = self.exchange.expiresAtOffset = 7200
        await self.assertFails("invalid token lifetime")

    async def test_untrustedEndpoint(self) -> None:
        """
        An endpoint whose certificate is not trusted: a TLS failure.
        """
        other = makeHostPKI(os.path.abspath(self.mktemp()))
        await self.assertFails(
            "GitHub OIDC request failed", **{"upstream-ca": other.caCert}
        )

    async def test_badRequestToken(self) -> None:
        """
        A request token with other characters is refused before anything
        is asked of GitHub.
        """
        try:
            await spawnProxy(self, *self.flags(), key=b"not a token\n")
        except ProxyDidNotStart as e:
            self.assertIn("GitHub OIDC request token", str(e))
        else:
            self.fail("the proxy started")
        self.assertEqual(self.github.requests, [])


class CodexTests(_OIDC):
    """
    A real Codex turn in this mode.
    """

    timeout = 180

    async def test_codexCompletesATurn(self) -> None:
        """
        C{codex exec} through the proxy in OIDC mode completes a turn; the
        upstream saw the access token.
        """
        proxy = await self.proxy()
        run = await runCodex(self, f"{proxy.base}/v1")
        self.assertEqual(run.result.exitCode, 0, run.output)
        self.assertIn(DEFAULT_TEXT, run.stdout, run.output)
        self.assertEqual(set(self.upstreamTokens()), {b"Bearer oai_access_canary_1"})
        self.assertNoSecrets(run.result.stdout, run.result.stderr)


class ReferenceComparisonTests(TestCase):
    """
    Ours and the reference, each run in the same kind of private world
    (tests/test_oidc_reference.py), send the same requests.
    """

    timeout = 180

    async def test_sameRequests(self) -> None:
        """
        The GitHub request (method, host, path, query with the audience
        last, Authorization) and the exchange (method, host, path, content
        type, the JSON body with its key order) are the same; the upstream
        gets C{Bearer <access token>} from both.
        """
        from tests.test_oidc_reference import recordReference, referenceUnavailable

        reason = referenceUnavailable()
        if reason:
            raise self.skipTest(reason)
        theirs = await recordReference(self)
        ours = await recordReference(self, command=[scriptPath("responses-api-proxy")])
        self.assertEqual((ours["responses"], theirs["responses"]), ([200], [200]))

        def essentials(record: dict[str, Any]) -> dict[str, Any]:
            headers = dict(record["headers"])
            return {
                "method": record["method"],
                "host": record["host"],
                "path": record["path"],
                "query": record["query"],
                "authorization": headers.get("authorization"),
                "contentType": record["contentType"],
                "json": list(record["json"].items()) if "json" in record else None,
            }

        for endpoint in ("github", "exchange", "upstream"):
            self.assertEqual(
                [essentials(r) for r in ours[endpoint]],
                [essentials(r) for r in theirs[endpoint]],
                endpoint,
            )

"""
C{--github-oidc}: the URLs, the checks of the token exchange's answer, the
request token read from standard input, and the access token renewed in
the background (with a C{Clock} and a fake fetch).

Unit tests (in memory).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.apikey import REQUEST_TOKEN, InvalidKey, readAuthHeader
from responses_proxy.oidc import (
    AccessToken,
    WorkloadIdentityError,
    accessTokenFrom,
)
from responses_proxy.oidcurls import BadRequestURL, checkRequestURL, identityTokenURL
from responses_proxy.options import ProxyOptions
from responses_proxy.record import ExchangeRecord
from responses_proxy.tokens import (
    MAX_BACKOFF,
    WIPE_DELAY,
    RenewingCredential,
    validUntil,
)

NOW = 1_800_000_000.0
GOOD = {
    "access_token": "oai_access_1",
    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "token_type": "Bearer",
    "expires_in": 3600,
    "expires_at": int(NOW) + 3600,
}
OIDC_FLAGS = [
    "--github-oidc",
    "--oidc-audience",
    "api://openai",
    "--identity-provider-id",
    "wip_1",
    "--service-account-id",
    "sa_1",
    "--github-oidc-request-url",
    "https://pipelines.example/run/idtoken?api-version=2.0",
]


class URLTests(SynchronousTestCase):
    """
    The token-request URL: what it may be, and how the audience is added.
    """

    def test_requestURL(self) -> None:
        """
        HTTPS with a host, a port or a query is fine; anything else, user
        info and fragments are refused.
        """
        for good in (
            "https://pipelines.actions.githubusercontent.com/x/idtoken?api-version=2.0",
            "https://127.0.0.1:8443/idtoken",
        ):
            self.assertEqual(checkRequestURL(good), good)
        for bad in (
            "http://pipelines.example/idtoken",
            "https://user@pipelines.example/idtoken",
            "https://user:pw@pipelines.example/idtoken",
            "https://pipelines.example/idtoken#x",
            "https://pipelines.example/idtoken#",
            "https://",
            "https://pipelines.example:notaport/",
            "pipelines.example/idtoken",
        ):
            self.assertRaises(BadRequestURL, checkRequestURL, bad)

    def test_audienceAppended(self) -> None:
        """
        C{audience} is the last parameter, form-encoded, replacing any
        C{audience} the URL had; the other parameters keep their order.
        """
        self.assertEqual(
            identityTokenURL("https://h/p?audience=old&b=2&a=1", "urn:x y&z=1/é"),
            "https://h/p?b=2&a=1&audience=urn%3Ax+y%26z%3D1%2F%C3%A9",
        )
        self.assertEqual(
            identityTokenURL("https://h/p?", "api://o"),
            "https://h/p?audience=api%3A%2F%2Fo",
        )


class ExchangeAnswerTests(SynchronousTestCase):
    """
    L{accessTokenFrom}: the exchange's answer is checked as the reference
    checks it.
    """

    def test_good(self) -> None:
        """
        All five fields right: the token, with the shorter of the lifetimes.
        """
        token = accessTokenFrom(dict(GOOD, expires_at=int(NOW) + 200), NOW)
        self.assertEqual(token.value, b"oai_access_1")
        self.assertEqual(token.lifetime, 200)
        self.assertEqual(
            accessTokenFrom(dict(GOOD, token_type="bearer"), NOW).lifetime, 3600
        )

    def test_refused(self) -> None:
        """
        Each bad answer is refused with its own message, none of which
        contains the token.
        """
        cases: list[tuple[Any, str]] = [
            ("not an object", "invalid token response"),
            (
                {k: v for k, v in GOOD.items() if k != "expires_at"},
                "invalid token response",
            ),
            (dict(GOOD, expires_in="3600"), "invalid token response"),
            (dict(GOOD, expires_in=3600.0), "invalid token response"),
            (dict(GOOD, expires_in=True), "invalid token response"),
            (dict(GOOD, access_token=None), "invalid token response"),
            (dict(GOOD, issued_token_type="urn:x"), "unsupported"),
            (dict(GOOD, token_type="mac"), "unsupported"),
            (dict(GOOD, token_type="Bearer "), "unsupported"),
            (dict(GOOD, expires_in=0), "expired"),
            (dict(GOOD, expires_at=int(NOW)), "expired"),
            (dict(GOOD, expires_in=3601), "invalid token lifetime"),
            (dict(GOOD, expires_in=-5), "invalid token lifetime"),
            (dict(GOOD, access_token=""), "not a usable bearer token"),
            (dict(GOOD, access_token="has space"), "not a usable bearer token"),
        ]
        for document, message in cases:
            error = self.assertRaises(
                WorkloadIdentityError, accessTokenFrom, document, NOW
            )
            self.assertIn(message, str(error), document)
            self.assertNotIn("oai_access", str(error))


class RequestTokenTests(SynchronousTestCase):
    """
    The request token, read from standard input like the key.
    """

    def read(self, data: bytes) -> Any:
        readFD, writeFD = os.pipe()
        os.write(writeFD, data)
        os.close(writeFD)
        self.addCleanup(os.close, readFD)
        header = readAuthHeader(readFD, format=REQUEST_TOKEN)
        self.addCleanup(header.wipe)
        return header

    def test_firstLine(self) -> None:
        """
        The first line, without its line ending; what follows is ignored.
        """
        self.assertEqual(
            self.read(b"abc.DEF-1_2~3+4/5==\r\njunk junk").value,
            b"Bearer abc.DEF-1_2~3+4/5==",
        )

    def test_refused(self) -> None:
        """
        Empty, other characters, or longer than 16384 characters: refused,
        with a message that never shows it.
        """
        for data in (b"", b"\n", b" abc\n", b"a b\n", b"a:b", b"a\rb\n", b"x" * 16385):
            error = self.assertRaises(InvalidKey, self.read, data)
            self.assertIn("GitHub OIDC request token", str(error))
            self.assertNotIn("a:b", str(error))
        self.assertEqual(len(self.read(b"y" * 16384 + b"\n").value), 16384 + 7)


class OptionsTests(SynchronousTestCase):
    """
    The mode's options.
    """

    def test_needsAll(self) -> None:
        """
        Each of the four is required, nonempty, and needs --github-oidc.
        """
        ProxyOptions().parseOptions(OIDC_FLAGS)
        for index in (2, 4, 6):
            flags = list(OIDC_FLAGS)
            flags[index] = "  "
            self.assertRaises(usage.UsageError, ProxyOptions().parseOptions, flags)
        self.assertRaises(
            usage.UsageError, ProxyOptions().parseOptions, OIDC_FLAGS[:-2]
        )
        error = self.assertRaises(
            usage.UsageError, ProxyOptions().parseOptions, OIDC_FLAGS[1:3]
        )
        self.assertIn("needs --github-oidc", str(error))

    def test_urls(self) -> None:
        """
        The request URL and --oidc-token-url must be https.
        """
        for flags in (
            [*OIDC_FLAGS[:-1], "http://pipelines.example/idtoken"],
            [*OIDC_FLAGS, "--oidc-token-url", "http://auth.example/oauth/token"],
        ):
            self.assertRaises(usage.UsageError, ProxyOptions().parseOptions, flags)


class RenewalTests(SynchronousTestCase):
    """
    L{RenewingCredential}: renewed in the background, retried with backoff.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fetches: list[Deferred[AccessToken]] = []
        self.credential = RenewingCredential(
            self.clock, AccessToken(b"first", NOW + 100, 100), self.fetch
        )

    def fetch(self) -> Deferred[AccessToken]:
        d: Deferred[AccessToken] = Deferred()
        self.fetches.append(d)
        return d

    def test_renewedAhead(self) -> None:
        """
        At 80 % of the lifetime a renewal starts in the background; the old
        token is sent meanwhile, the new one from when it arrives.
        """
        self.assertEqual(self.credential.currentHeader(), b"Bearer first")
        self.clock.advance(79)
        self.assertEqual(self.fetches, [])
        self.clock.advance(1)
        self.assertEqual(len(self.fetches), 1)
        self.assertEqual(self.credential.currentHeader(), b"Bearer first")
        self.fetches[0].callback(AccessToken(b"second", NOW + 200, 100))
        self.assertEqual(self.credential.currentHeader(), b"Bearer second")

    def test_replacedWiped(self) -> None:
        """
        A replaced token's buffer is zeroed once in-flight requests have
        had time to write it out.
        """
        first = self.credential.currentHeader()
        assert first is not None
        self.clock.advance(80)
        self.fetches[0].callback(AccessToken(b"second", NOW + 200, 100))
        self.assertEqual(first, b"Bearer first")
        self.clock.advance(WIPE_DELAY)
        self.assertEqual(first, b"\0" * len(b"Bearer first"))

    def test_backoff(self) -> None:
        """
        Failed renewals are retried after 1, 2, 4, ... seconds, at most 30,
        logged; the current token is used until just before it expires,
        then none (so requests get 503).
        """
        self.clock.advance(80)
        delays = []
        with capturedLogs() as events:
            for _ in range(7):
                self.fetches[-1].errback(WorkloadIdentityError("GitHub OIDC rejected"))
                before = len(self.fetches)
                waited = 0.0
                while len(self.fetches) == before:
                    self.clock.advance(0.5)
                    waited += 0.5
                delays.append(waited)
        self.assertEqual(delays, [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF])
        self.assertTrue(any("retrying in" in str(e.get("log_format")) for e in events))
        self.assertIsNone(self.credential.currentHeader())

    def test_validUntil(self) -> None:
        """
        A token is used until 5 % (at most 5 s) before it expires.
        """
        self.assertEqual(validUntil(0, 100), 95)
        self.assertEqual(validUntil(0, 3600), 3595)
        self.clock.advance(95)
        self.assertIsNone(self.credential.currentHeader())

    def test_unauthorisedRenews(self) -> None:
        """
        An upstream 401 starts a renewal at once; others do not.
        """
        self.credential.exchangeEnded(
            ExchangeRecord("POST", "/v1/responses", upstreamStatus=403)
        )
        self.assertEqual(self.fetches, [])
        self.credential.exchangeEnded(
            ExchangeRecord("POST", "/v1/responses", upstreamStatus=401)
        )
        self.assertEqual(len(self.fetches), 1)
        self.credential.exchangeEnded(
            ExchangeRecord("POST", "/v1/responses", upstreamStatus=401)
        )
        self.assertEqual(len(self.fetches), 1)

    def test_stopWipes(self) -> None:
        """
        Stopping ends the renewals and zeroes the token.
        """
        header = self.credential.currentHeader()
        self.credential.stop()
        self.assertIsNone(self.credential.currentHeader())
        assert header is not None
        self.assertEqual(set(header), {0})
        self.clock.advance(1000)
        self.assertEqual(self.fetches, [])

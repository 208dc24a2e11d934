# -*- test-case-name: tests.test_oidc -*-
"""
GitHub Actions workload identity (C{--github-oidc}): an OpenAI access token
from the job's OIDC identity, instead of an API key.

Two requests, the same ones the reference proxy makes:

  1. GitHub: C{GET} the job's token-request URL (the runner's
     C{ACTIONS_ID_TOKEN_REQUEST_URL}) with C{audience=<--oidc-audience>}
     appended to its query, authorised by C{Bearer <request token>} (the
     runner's C{ACTIONS_ID_TOKEN_REQUEST_TOKEN}, which arrives on standard
     input). GitHub answers C{{"value": "<ID token>"}}.
  2. OpenAI: C{POST} a JSON token exchange (RFC 8693 grant and subject
     token types) of that ID token, naming the workload identity provider
     and the service account, to C{https://auth.openai.com/oauth/token}
     (C{--oidc-token-url} overrides it). OpenAI answers with an access
     token, its type, and a lifetime of at most an hour.

Both answers are checked as strictly as the reference checks them, and
every failure is one line that never contains a token. This module does
the requests with the standard library's HTTP client, blocking: at start-up
that is what must happen before anything listens, and renewals run it in a
thread (L{responses_proxy.tokens}).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from responses_proxy import __version__
from responses_proxy.egress import proxyFromEnvironment
from responses_proxy.oidcurls import DEFAULT_TOKEN_URL, identityTokenURL

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
MAX_TOKEN_LENGTH = 16384
MAX_LIFETIME = 3600
MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT = 30.0
# What a bearer token may contain (RFC 6750's b64token).
_TOKEN = re.compile(rb"[A-Za-z0-9._~+/=-]+")


class WorkloadIdentityError(Exception):
    """
    Getting an access token failed; C{str()} is one line, without secrets.
    """


def validToken(value: bytes, what: str) -> bytes:
    """
    C{value}, if it is a usable bearer token.

    @raise WorkloadIdentityError: it is empty, too long or has other bytes.
    """
    if not 0 < len(value) <= MAX_TOKEN_LENGTH or _TOKEN.fullmatch(value) is None:
        raise WorkloadIdentityError(f"{what} is not a usable bearer token")
    return value


@dataclass(frozen=True)
class AccessToken:
    """
    An access token from the exchange, and when it stops being valid.
    """

    value: bytes = field(repr=False)
    expiresAt: float
    lifetime: float


@dataclass(frozen=True)
class WorkloadIdentity:
    """
    Everything needed to get an access token (the options), with the
    request token's C{Authorization} value.

    @ivar requestAuthorization: C{b"Bearer " + request token}; the caller
        keeps it locked.
    """

    requestURL: str
    audience: str
    identityProviderID: str
    serviceAccountID: str
    tokenURL: str = DEFAULT_TOKEN_URL
    caFile: str | None = None
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = TIMEOUT


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(
    identity: WorkloadIdentity, request: urllib.request.Request
) -> urllib.request.OpenerDirector:
    """
    An opener for C{request}: the upstream's trust (C{--upstream-ca}), its
    egress proxy (C{HTTPS_PROXY}, C{NO_PROXY}), no redirects. The egress
    proxy's credentials go on the request as C{Proxy-Authorization}, which
    urllib moves onto the C{CONNECT} (never into the tunnel).
    """
    context = ssl.create_default_context(cafile=identity.caFile)
    host = urlsplit(request.full_url).hostname or ""
    proxies = {}
    egress = proxyFromEnvironment("https", host, identity.environ)
    if egress is not None:
        proxies["https"] = f"http://{egress.host}:{egress.port}"
        if egress.authorization is not None:
            request.add_unredirected_header(
                "Proxy-Authorization", egress.authorization.decode("latin-1")
            )
    return urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies),
        urllib.request.HTTPSHandler(context=context),
        _NoRedirects(),
    )


def _call(identity: WorkloadIdentity, request: urllib.request.Request, who: str) -> Any:
    """
    Send C{request}; its JSON answer.

    @raise WorkloadIdentityError: it failed, was refused or did not answer
        JSON (the message names C{who} and the status, never a body).
    """
    opener = _opener(identity, request)
    try:
        with opener.open(request, timeout=identity.timeout) as answer:
            body = answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()
        raise WorkloadIdentityError(
            f"{who} rejected the request (HTTP {e.code})"
        ) from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        reason = getattr(e, "reason", e)
        raise WorkloadIdentityError(
            f"{who} request failed: {_describe(reason)}"
        ) from None
    if len(body) > MAX_ANSWER_BYTES:
        raise WorkloadIdentityError(f"{who} returned an oversized answer")
    try:
        return json.loads(body)
    except ValueError:
        raise WorkloadIdentityError(
            f"{who} returned an invalid answer (not JSON)"
        ) from None


def _describe(reason: object) -> str:
    if isinstance(reason, ssl.SSLError):
        return "TLS failed (certificate not trusted?)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = getattr(reason, "strerror", None) or str(reason)
    return text.splitlines()[0][:120] if text else type(reason).__name__


def fetchIdentityToken(
    identity: WorkloadIdentity, requestAuthorization: bytes
) -> bytes:
    """
    Ask GitHub for an OIDC ID token for the audience.

    @raise WorkloadIdentityError: GitHub failed or answered something else.
    """
    request = urllib.request.Request(
        identityTokenURL(identity.requestURL, identity.audience),
        method="GET",
        headers={
            "Authorization": requestAuthorization.decode("ascii"),
            "Accept": "*/*",
            "User-Agent": f"responses-api-proxy/{__version__}",
        },
    )
    document = _call(identity, request, "GitHub OIDC")
    value = document.get("value") if isinstance(document, dict) else None
    if not isinstance(value, str):
        raise WorkloadIdentityError("GitHub OIDC returned an invalid token response")
    return validToken(value.encode("utf-8", "replace"), "GitHub's ID token")


def exchangeIdentityToken(
    identity: WorkloadIdentity, identityToken: bytes, now: float | None = None
) -> AccessToken:
    """
    Exchange the ID token at OpenAI for an access token.

    @raise WorkloadIdentityError: the exchange failed or its answer is not
        a usable token.
    """
    body = json.dumps(
        {
            "grant_type": GRANT_TYPE,
            "subject_token_type": SUBJECT_TOKEN_TYPE,
            "subject_token": identityToken.decode("ascii"),
            "identity_provider_id": identity.identityProviderID,
            "service_account_id": identity.serviceAccountID,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    request = urllib.request.Request(
        identity.tokenURL,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "*/*",
            "User-Agent": f"responses-api-proxy/{__version__}",
        },
    )
    document = _call(identity, request, "OpenAI workload identity token exchange")
    return accessTokenFrom(document, time.time() if now is None else now)


def accessTokenFrom(document: Any, now: float) -> AccessToken:
    """
    The access token of an exchange answer, checked.

    @raise WorkloadIdentityError: a field is missing, of the wrong type or
        out of range.
    """
    invalid = WorkloadIdentityError(
        "OpenAI workload identity returned an invalid token response"
    )
    if not isinstance(document, dict):
        raise invalid
    token = document.get("access_token")
    issued = document.get("issued_token_type")
    kind = document.get("token_type")
    expiresIn = document.get("expires_in")
    expiresAt = document.get("expires_at")
    if not (
        isinstance(token, str)
        and isinstance(issued, str)
        and isinstance(kind, str)
        and isinstance(expiresIn, int)
        and isinstance(expiresAt, int)
        and not isinstance(expiresIn, bool)
        and not isinstance(expiresAt, bool)
    ):
        raise invalid
    if issued != ACCESS_TOKEN_TYPE or kind.lower() != "bearer":
        raise WorkloadIdentityError(
            "OpenAI returned an unsupported workload identity token type"
        )
    if expiresIn == 0 or expiresAt <= now:
        raise WorkloadIdentityError(
            "OpenAI returned an expired workload identity token"
        )
    if not 0 < expiresIn <= MAX_LIFETIME:
        raise WorkloadIdentityError("OpenAI returned an invalid token lifetime")
    value = validToken(token.encode("utf-8", "replace"), "OpenAI's access token")
    lifetime = min(float(expiresIn), expiresAt - now)
    return AccessToken(value, now + lifetime, lifetime)


def fetchAccessToken(
    identity: WorkloadIdentity, requestAuthorization: bytes
) -> AccessToken:
    """
    Both requests: a fresh ID token from GitHub, exchanged at OpenAI.

    @raise WorkloadIdentityError: either failed.
    """
    return exchangeIdentityToken(
        identity, fetchIdentityToken(identity, requestAuthorization)
    )

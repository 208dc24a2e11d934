# -*- test-case-name: tests.test_oidc -*-
"""
The URLs of C{--github-oidc}: checked while parsing options, so standard
library only.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_TOKEN_URL = "https://auth.openai.com/oauth/token"


class BadRequestURL(ValueError):
    """
    C{--github-oidc-request-url} is not an https URL without user info or
    fragment.
    """


def checkRequestURL(url: str) -> str:
    """
    The GitHub token-request URL, if it is one we may send the request
    token to.

    @raise BadRequestURL: it is not.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port, raising if it is bad)
    except ValueError:
        raise BadRequestURL("invalid GitHub OIDC request URL") from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.fragment
        or "#" in url
    ):
        raise BadRequestURL(
            "GitHub OIDC request URL must be HTTPS without user info or fragment"
        )
    return url


def identityTokenURL(requestURL: str, audience: str) -> str:
    """
    The request URL with C{audience} as its last query parameter (any
    C{audience} it had is replaced), form-encoded.
    """
    parts = urlsplit(requestURL)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != "audience"]
    query.append(("audience", audience))
    return urlunsplit(parts._replace(query=urlencode(query)))

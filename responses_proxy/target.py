# -*- test-case-name: tests.test_options -*-
"""
The upstream URL, parsed and checked once (C{--upstream-url}).

Standard library only: the options use it, and parsing options must not
load Twisted's HTTP client or OpenSSL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1/responses"


class BadUpstreamURL(ValueError):
    """
    C{--upstream-url} is not an absolute http(s) URL.
    """


@dataclass(frozen=True)
class UpstreamTarget:
    """
    The parsed C{--upstream-url}.

    @ivar url: the URL as bytes, query string included, sent as-is.
    @ivar hostHeader: C{host[:port]} as the upstream expects it in C{Host}.
    """

    url: bytes
    scheme: str
    host: str
    port: int
    hostHeader: bytes

    @classmethod
    def fromString(cls, url: str) -> UpstreamTarget:
        """
        Parse and check an absolute http(s) URL.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise BadUpstreamURL(f"invalid upstream URL {url!r}: {e}") from e
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadUpstreamURL(
                f"upstream URL must be an absolute http:// or https:// URL: {url!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise BadUpstreamURL("upstream URL must not contain credentials")
        if parts.fragment:
            raise BadUpstreamURL(f"upstream URL must not have a fragment: {url!r}")
        if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
            raise BadUpstreamURL(f"upstream URL must be ASCII without spaces: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        return cls(
            url=url.encode("ascii"),
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or default,
            hostHeader=parts.netloc.encode("ascii"),
        )

    def withPathSuffix(self, suffix: str) -> UpstreamTarget:
        """
        The same upstream with C{suffix} appended to its path, query kept:
        C{/v1/responses?api-version=X} + C{/compact} is
        C{/v1/responses/compact?api-version=X}.
        """
        parts = urlsplit(self.url.decode("ascii"))
        path = parts.path.rstrip("/") + suffix
        url = urlunsplit(parts._replace(path=path))
        return replace(self, url=url.encode("ascii"))

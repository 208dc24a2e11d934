# -*- test-case-name: tests.test_headers -*-
"""
Which headers cross the proxy, in each direction.

Everything end-to-end is forwarded with its value unchanged. Hop-by-hop
headers (RFC 9110 section 7.6.1) describe one connection and stop here, as
do the headers a C{Connection} header names. Upstream, the client's
C{Authorization} is replaced by ours and C{Host} is the upstream's; framing
(C{Content-Length}, C{Transfer-Encoding}) is set by the client Agent from
the buffered body, and C{Expect} was already answered by the proxy.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Request headers the proxy itself owns on the upstream hop.
_OWNED_UPSTREAM = frozenset({b"authorization", b"host", b"content-length", b"expect"})
_SKIP_UPSTREAM = HOP_BY_HOP | _OWNED_UPSTREAM


def _connectionNamed(values: Iterable[bytes] | None) -> set[bytes]:
    named: set[bytes] = set()
    for value in values or ():
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                named.add(token)
    return named


def _copyEndToEnd(
    source: Headers, destination: Headers, skip: frozenset[bytes]
) -> None:
    connection = source.getRawHeaders(b"connection")
    if connection:
        skip = skip | _connectionNamed(connection)
    for name, values in source.getAllRawHeaders():
        if name.lower() not in skip:
            destination.setRawHeaders(name, values)


def upstreamRequestHeaders(
    incoming: Headers, authorization: bytes, host: bytes | None = None
) -> Headers:
    """
    The headers to send upstream: the client's end-to-end headers, with
    exactly one C{Authorization: <authorization>} and, when given, C{Host}
    (set here, the Agent would otherwise copy all headers to add it).
    """
    outgoing = Headers()
    _copyEndToEnd(incoming, outgoing, _SKIP_UPSTREAM)
    outgoing.setRawHeaders(b"authorization", [authorization])
    if host is not None:
        outgoing.setRawHeaders(b"host", [host])
    return outgoing


def mirrorResponseHeaders(upstream: Headers, outgoing: Headers) -> None:
    """
    Copy the upstream response's end-to-end headers to the client response.

    The Agent's parser keeps connection-control headers (C{Connection},
    C{Content-Length}, C{Transfer-Encoding}, C{Keep-Alive}, ...) out of
    C{upstream}; the forwarder sets C{Content-Length} from the answer's
    known length, else twisted.web frames the relayed body itself (chunked
    for HTTP/1.1), and an upstream that dies early makes the proxy abort the
    client connection, so a truncated body never looks complete. For the
    same reason, headers named only by the upstream's C{Connection} header
    cannot be recognised here and are passed on.
    """
    _copyEndToEnd(upstream, outgoing, HOP_BY_HOP)

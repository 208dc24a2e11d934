# -*- test-case-name: tests.test_routing -*-
"""
The resource tree: exactly C{POST /v1/responses} is forwarded, and
C{GET /shutdown} answered when enabled; everything else is a JSON 403.

Traversal alone is not strict enough (twisted.web percent-decodes path
segments), so each endpoint also compares the raw request target byte for
byte: no query string, not even a bare C{?}, no encoded or case variants.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from responses_proxy.errors import respondWithError
from responses_proxy.forward import Forwarder

RESPONSES_PATH = b"/v1/responses"
SHUTDOWN_PATH = b"/shutdown"

_log = Logger()


def _printable(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("latin-1")
    return text.encode("unicode_escape").decode("ascii")


def forbid(request: Request) -> bytes:
    """
    Answer 403 with a JSON error, and log the rejection with the same
    fields as a forwarded exchange.
    """
    body = respondWithError(
        request,
        403,
        "Only POST /v1/responses is allowed through this proxy.",
        "invalid_request_error",
        "forbidden",
    )
    content = request.content
    bytesIn = content.seek(0, 2) if content is not None else 0
    _log.info(
        "{method} {path} -> 403 (rejected)",
        method=_printable(request.method, 20),
        path=_printable(request.uri),
        status=403,
        outcome="rejected",
        upstream_status=None,
        bytes_in=bytesIn,
        bytes_out=len(body),
        duration_ms=0.0,
        request_id=None,
        exchange=True,
    )
    return body


class ForbiddenResource(Resource):
    """
    A leaf that refuses everything, whatever the method.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return forbid(request)


_FORBIDDEN = ForbiddenResource()


class StrictResource(Resource):
    """
    A node whose unknown children, and whose own rendering, are forbidden.
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _FORBIDDEN

    def render(self, request: Request) -> bytes:
        return forbid(request)


class ResponsesResource(StrictResource):
    """
    C{/v1/responses}: forwards exactly C{POST /v1/responses}.
    """

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self._forwarder = forwarder

    def render(self, request: Request) -> object:
        if request.method == b"POST" and request.uri == RESPONSES_PATH:
            return self._forwarder.forward(request)
        return forbid(request)


class ShutdownResource(StrictResource):
    """
    C{/shutdown}: exactly C{GET /shutdown} answers 200, then stops the process.
    """

    def __init__(self, shutdown: Callable[[], object]) -> None:
        super().__init__()
        self._shutdown = shutdown

    def render(self, request: Request) -> bytes:
        if request.method != b"GET" or request.uri != SHUTDOWN_PATH:
            return forbid(request)
        _log.info("Shutdown requested over HTTP", status=200, outcome="shutdown")
        request.notifyFinish().addBoth(lambda _: self._shutdown())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"connection", b"close")
        return b'{"status": "shutting down"}\n'


def buildRoot(
    forwarder: Forwarder, shutdown: Callable[[], object] | None = None
) -> Resource:
    """
    The tree: C{/v1/responses}, plus C{/shutdown} when C{shutdown} is given.
    """
    root = StrictResource()
    v1 = StrictResource()
    v1.putChild(b"responses", ResponsesResource(forwarder))
    root.putChild(b"v1", v1)
    if shutdown is not None:
        root.putChild(b"shutdown", ShutdownResource(shutdown))
    return root

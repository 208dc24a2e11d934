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
from responses_proxy.record import UNKNOWN_CALLER, ExchangeRecord, Exchanges

RESPONSES_PATH = b"/v1/responses"
SHUTDOWN_PATH = b"/shutdown"

_log = Logger()


def printable(raw: bytes, limit: int = 200) -> str:
    """
    C{raw} as text safe for a log line: at most C{limit} bytes, escaped.
    """
    text = raw[:limit].decode("latin-1")
    return text.encode("unicode_escape").decode("ascii")


class Refusals:
    """
    Answers the proxy gives itself without forwarding, each recorded like
    an exchange.
    """

    def __init__(self, exchanges: Exchanges) -> None:
        self.exchanges = exchanges

    def refuse(
        self,
        request: Request,
        status: int,
        message: str,
        code: str,
        type: str = "invalid_request_error",
    ) -> bytes:
        """
        Answer C{status} with a JSON error, and record the refusal.
        """
        body = respondWithError(request, status, message, type, code)
        content = request.content
        record = ExchangeRecord(
            method=printable(request.method, 20),
            path=printable(request.uri),
            caller=getattr(request, "caller", UNKNOWN_CALLER),
            status=status,
            outcome="rejected",
            code=code,
            bytesIn=content.seek(0, 2) if content is not None else 0,
            bytesOut=len(body),
        )
        self.exchanges.told(record)
        return body

    def forbid(self, request: Request) -> bytes:
        """
        The 403 for everything that is not C{POST /v1/responses}.
        """
        return self.refuse(
            request,
            403,
            "Only POST /v1/responses is allowed through this proxy.",
            "forbidden",
        )


class ForbiddenResource(Resource):
    """
    A leaf that refuses everything, whatever the method.
    """

    isLeaf = True

    def __init__(self, refusals: Refusals) -> None:
        super().__init__()
        self._refusals = refusals

    def render(self, request: Request) -> bytes:
        return self._refusals.forbid(request)


class StrictResource(Resource):
    """
    A node whose unknown children, and whose own rendering, are forbidden.
    """

    def __init__(self, refusals: Refusals) -> None:
        super().__init__()
        self.refusals = refusals
        self._forbidden = ForbiddenResource(refusals)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self._forbidden

    def render(self, request: Request) -> bytes:
        return self.refusals.forbid(request)


class ResponsesResource(StrictResource):
    """
    C{/v1/responses}: forwards exactly C{POST /v1/responses}.
    """

    def __init__(self, refusals: Refusals, forwarder: Forwarder) -> None:
        super().__init__(refusals)
        self._forwarder = forwarder

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        if request.method == b"POST" and request.uri == RESPONSES_PATH:
            result = self._forwarder.forward(request, request.caller)  # type: ignore[attr-defined]
            assert isinstance(result, int)
            return result
        return self.refusals.forbid(request)


class ShutdownResource(StrictResource):
    """
    C{/shutdown}: exactly C{GET /shutdown} answers 200, then stops the process.
    """

    def __init__(self, refusals: Refusals, shutdown: Callable[[], object]) -> None:
        super().__init__(refusals)
        self._shutdown = shutdown

    def render(self, request: Request) -> bytes:
        if request.method != b"GET" or request.uri != SHUTDOWN_PATH:
            return self.refusals.forbid(request)
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
    refusals = Refusals(forwarder.exchanges)
    root = StrictResource(refusals)
    v1 = StrictResource(refusals)
    v1.putChild(b"responses", ResponsesResource(refusals, forwarder))
    root.putChild(b"v1", v1)
    if shutdown is not None:
        root.putChild(b"shutdown", ShutdownResource(refusals, shutdown))
    return root

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

from responses_proxy.admission import Admission, Refusal
from responses_proxy.errors import respondWithError
from responses_proxy.forward import Forwarder
from responses_proxy.record import UNKNOWN_CALLER, ExchangeRecord, Exchanges, printable
from responses_proxy.routes import Routes

SHUTDOWN_PATH = b"/shutdown"

_log = Logger()


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

    def answer(self, request: Request, refusal: Refusal) -> bytes:
        """
        Answer an admission refusal.
        """
        for name, value in refusal.headers:
            request.setHeader(name, value)
        return self.refuse(
            request, refusal.status, refusal.message, refusal.code, refusal.type
        )

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
    C{/v1/responses} and below: forwards exactly C{POST /v1/responses} and
    the allowed sub-paths, once admitted.
    """

    isLeaf = True

    def __init__(
        self,
        refusals: Refusals,
        forwarder: Forwarder,
        routes: Routes,
        admission: Admission,
    ) -> None:
        super().__init__(refusals)
        self._forwarder = forwarder
        self._routes = routes
        self._admission = admission

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        target = self._routes.upstreamFor(request.uri)
        if request.method != b"POST" or target is None:
            return self.refusals.forbid(request)
        caller = getattr(request, "caller", UNKNOWN_CALLER)
        refusal = self._admission.admit(request, caller)
        if refusal is not None:
            return self.refusals.answer(request, refusal)
        result = self._forwarder.forward(request, caller, target)
        assert isinstance(result, int)
        return result


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
    forwarder: Forwarder,
    shutdown: Callable[[], object] | None = None,
    routes: Routes | None = None,
    admission: Admission | None = None,
) -> Resource:
    """
    The tree: C{/v1/responses} (and its allowed sub-paths), plus
    C{/shutdown} when C{shutdown} is given.
    """
    refusals = Refusals(forwarder.exchanges)
    root = StrictResource(refusals)
    v1 = StrictResource(refusals)
    responses = ResponsesResource(
        refusals,
        forwarder,
        routes or Routes(forwarder.target),
        admission or Admission(),
    )
    v1.putChild(b"responses", responses)
    root.putChild(b"v1", v1)
    if shutdown is not None:
        root.putChild(b"shutdown", ShutdownResource(refusals, shutdown))
    return root

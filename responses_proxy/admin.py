# -*- test-case-name: tests.test_admin -*-
"""
The operator's socket (C{--admin-socket PATH}): a Unix socket, never TCP,
mode 0600 and owned by the proxy's user, so only that user and root can
ask it anything. It serves:

  - C{GET /metrics}: Prometheus' text format (L{responses_proxy.metrics});
  - C{GET /healthz}: 200 with JSON (uptime, exchanges in flight, upstream
    errors in the last minute) while serving, 503 once draining;
  - C{GET /usage}: today's ledger (C{--state-dir}) as JSON.

Nothing on the public listener changes: there, everything but
C{POST /v1/responses} stays 403.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from responses_proxy.errors import errorBody
from responses_proxy.ledger import Ledger, utcDay
from responses_proxy.metrics import Metrics
from responses_proxy.record import Exchanges
from responses_proxy.startup import StartupError


def _json(request: Request, status: int, document: Any) -> bytes:
    body = json.dumps(document, indent=1).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return body


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[Request], bytes]) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: Request) -> bytes:
        if request.method != b"GET" or request.postpath not in ([b""], []):
            return _notFound(request)
        return self._answer(request)


def _notFound(request: Request) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"application/json")
    return errorBody(
        "The admin socket serves GET /metrics, /healthz and /usage.",
        "invalid_request_error",
        "not_found",
    )


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        child: Resource | None = self.children.get(path)
        return _Leaf(_notFound) if child is None else child

    def render(self, request: Request) -> bytes:
        return _notFound(request)


class AdminResource(_Root):
    """
    The admin socket's tree.
    """

    def __init__(
        self,
        metrics: Metrics,
        exchanges: Exchanges,
        ledger: Ledger | None,
        clock: Any,
        draining: Callable[[], bool],
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._exchanges = exchanges
        self._ledger = ledger
        self._clock = clock
        self._draining = draining
        self._started = clock.seconds()
        self.putChild(b"metrics", _Leaf(self.renderMetrics))
        self.putChild(b"healthz", _Leaf(self.renderHealth))
        self.putChild(b"usage", _Leaf(self.renderUsage))

    def renderMetrics(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self._metrics.exposition()

    def renderHealth(self, request: Request) -> bytes:
        draining = self._draining()
        return _json(
            request,
            503 if draining else 200,
            {
                "status": "draining" if draining else "serving",
                "uptime_seconds": round(self._clock.seconds() - self._started, 3),
                "exchanges_in_flight": self._exchanges.inFlight,
                "upstream_errors_last_minute": self._metrics.upstreamErrorsLastMinute(),
            },
        )

    def renderUsage(self, request: Request) -> bytes:
        if self._ledger is None:
            return _json(
                request,
                404,
                {"error": {"message": "no ledger: start with --state-dir"}},
            )
        return _json(
            request,
            200,
            {"day": utcDay(self._clock.seconds()), "usage": self._ledger.today()},
        )


class _QuietSite(Site):
    """
    No access log, and no "starting on" lines: the service logs the socket
    once, by its purpose.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def _removeStaleSocket(path: str) -> None:
    """
    Remove a socket file left by a proxy that was killed (nobody answers on
    it); refuse to touch anything else.

    @raise StartupError: C{path} is not a socket, or another process serves it.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"--admin-socket {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise StartupError(f"--admin-socket {path}: {e.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"--admin-socket {path} is in use by another process")


class AdminService(Service):
    """
    Listen on the admin socket once the proxy starts (after any privilege
    drop, so the socket belongs to the proxy's user); close it at stop.
    """

    _log = Logger()

    def __init__(self, reactor: Any, path: str, resource: Resource) -> None:
        self._reactor = reactor
        self.path = os.path.abspath(path)
        self._site = _QuietSite(resource)
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        _removeStaleSocket(self.path)
        outcome: list[Any] = []
        endpoint = UNIXServerEndpoint(self._reactor, self.path, mode=0o600)
        endpoint.listen(self._site).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], Failure):
            reason = outcome[0].getErrorMessage() if outcome else "did not complete"
            raise StartupError(f"cannot listen on --admin-socket {self.path}: {reason}")
        self._port = outcome[0]
        self._log.info("Admin socket on {path}", path=self.path)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopping = port.stopListening()
        return stopping if isinstance(stopping, Deferred) else succeed(None)

# -*- test-case-name: tests.test_tap,tests.test_drain -*-
"""
The proxy's services: the listener, and the top service that stops them
with a drain.

Order matters for clients that wait on the listener: the port is listening
first, then the server-info file is written, then systemd is told
C{READY=1}. A failure to bind or to write the file raises L{StartupError}
synchronously, so both twistd and the console script exit non-zero with one
clear line instead of running with nothing listening.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from responses_proxy import sdnotify
from responses_proxy.serverinfo import (
    ServerInfoError,
    removeServerInfo,
    serverInfoLine,
    writeServerInfo,
)
from responses_proxy.startup import StartupError


def describeListenFailure(failure: Failure, description: str) -> str:
    """
    One line for a failed C{listen}, e.g. address already in use.
    """
    reason = failure.value
    detail = getattr(reason, "socketError", None) or reason
    text = getattr(detail, "strerror", None) or str(detail)
    return f"cannot listen on {description}: {text}"


class ProxyService(Service):
    """
    Listen on C{endpoint}, then write server-info and notify systemd.
    """

    _log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Any,
        description: str,
        serverInfoPath: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.serverInfoPath = serverInfoPath
        self.port: IListeningPort | None = None
        self._serverInfoIdentity: tuple[int, ...] | None = None

    def privilegedStartService(self) -> None:
        """
        Bind now (before any privilege drop); fail loudly and synchronously.
        """
        super().privilegedStartService()
        outcome: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"listening on {self.description} did not complete")
        if isinstance(outcome[0], Failure):
            raise StartupError(describeListenFailure(outcome[0], self.description))
        self.port = outcome[0]

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        assert self.port is not None
        address = self.port.getHost()
        self._log.info(
            "responses-api-proxy listening on {address}",
            address=_formatAddress(address),
        )
        if self.serverInfoPath:
            try:
                self._serverInfoIdentity = writeServerInfo(
                    self.serverInfoPath, serverInfoLine(self.listeningPort, os.getpid())
                )
            except ServerInfoError as e:
                self.port.stopListening()
                raise StartupError(str(e)) from e
        sdnotify.notify(
            f"READY=1\nSTATUS=listening on {_formatAddress(address)}\n"
            f"MAINPID={os.getpid()}"
        )

    @property
    def listeningPort(self) -> int | None:
        """
        The TCP port number actually bound (also for inherited sockets).
        """
        if self.port is None:
            return None
        return getattr(self.port.getHost(), "port", None)

    def stopAccepting(self) -> Deferred[None]:
        """
        Stop listening, remove server-info and tell systemd C{STOPPING=1}
        (once; later calls do nothing).
        """
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        sdnotify.notify("STOPPING=1")
        if self.serverInfoPath and self._serverInfoIdentity:
            removeServerInfo(self.serverInfoPath, self._serverInfoIdentity)
            self._serverInfoIdentity = None
        stopping = port.stopListening()
        return stopping if isinstance(stopping, Deferred) else succeed(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stopAccepting()


class ProxyApplicationService(MultiService):
    """
    The proxy: its services, and how it stops.

    @ivar drain: makes the drain that L{shutdown} runs.
    @ivar stop: what ends the process once drained (C{reactor.stop} for a
        real process).
    @ivar listener: the listening service, once added.
    """

    listener: ProxyService | None = None

    def __init__(
        self,
        drain: Callable[[float], Any],
        drainTimeout: float,
        stop: Callable[[], object],
    ) -> None:
        super().__init__()
        self._makeDrain = drain
        self._drainTimeout = drainTimeout
        self._stop = stop
        self._drain: Any = None

    @property
    def draining(self) -> bool:
        """
        Whether a drain (or a stop) has begun.
        """
        return self._drain is not None

    def shutdown(self) -> Deferred[None]:
        """
        Drain (for up to the drain timeout), then stop; what SIGTERM and
        C{GET /shutdown} do. Fires when drained.
        """
        if self._drain is None:
            self._drain = self._makeDrain(self._drainTimeout)
            self._drain.start().addCallback(lambda _: self._stop())
        result: Deferred[None] = self._drain.start()
        return result

    def stopNow(self) -> None:
        """
        Abort whatever is in flight and stop.
        """
        if self._drain is None:
            self._drain = self._makeDrain(0)
            self._drain.start().addCallback(lambda _: self._stop())
        else:
            self._drain.now()


def _formatAddress(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return name.decode() if isinstance(name, bytes) else str(name or address)


class ClosingService(Service):
    """
    Calls C{start} when the proxy starts and C{close} when it stops (e.g. to
    close idle upstream connections), waiting for the Deferred it returns.
    """

    def __init__(
        self,
        close: Callable[[], Deferred[None]],
        start: Callable[[], object] | None = None,
    ) -> None:
        self._close = close
        self._start = start

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._close()

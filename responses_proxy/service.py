# -*- test-case-name: tests.test_service -*-
"""
The listening service: binds, then announces where it listens.

Order matters for clients that wait on it: the port is listening first, then
the server-info file is written, then systemd is told C{READY=1}. A failure
to bind or to write the file raises L{StartupError} synchronously, so both
twistd and the console script exit non-zero with one clear line instead of
running with nothing listening.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
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


class StartupError(Exception):
    """
    The proxy cannot start; C{str()} is the one line to show the operator.
    """


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

    def stopService(self) -> Deferred[None]:
        super().stopService()
        sdnotify.notify("STOPPING=1")
        if self.serverInfoPath and self._serverInfoIdentity:
            removeServerInfo(self.serverInfoPath, self._serverInfoIdentity)
            self._serverInfoIdentity = None
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)


def _formatAddress(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return name.decode() if isinstance(name, bytes) else str(name or address)

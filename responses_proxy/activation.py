# -*- test-case-name: tests.test_systemd -*-
"""
Socket activation: serving on the listening socket systemd passes.

Twisted's C{systemd:} endpoint adopts C{AF_INET} sockets well: at stop it
closes its copy without shutting the socket down, so systemd's copy keeps
accepting (connections queue until the next start). For C{AF_UNIX} it
treats the socket file as its own: it chmods it to 0666 when it starts
(overriding the socket unit's C{SocketMode=}, or failing outright when the
service user does not own the file) and unlinks it when it stops, so the
next activation has no file to connect to. L{AdoptedUNIXEndpoint} serves on
such a socket and leaves the file, and the socket, alone.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, fdesc, tcp, unix
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import AlreadyListened
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from responses_proxy.startup import StartupError

_log = Logger()


class _AdoptedUNIXPort(unix.Port):
    """
    A UNIX listening port on a socket someone else created and owns.
    """

    # Never shutdown(2) the shared socket: close only our descriptor.
    _shouldShutdown = False

    def startListening(self) -> None:
        # unix.Port.startListening on an inherited socket, minus its chmod.
        # Kept in step with it: the reserved descriptor (EMFILE recovery on
        # accept) and the "starting on" line.
        tcp._reservedFD.reserve()
        skt = self._preexistingSocket
        assert skt is not None and self.factory is not None
        _log.info(
            "{factory} starting on {address!r}",
            factory=self.factory.__class__.__name__,
            address=skt.getsockname(),
        )
        self.factory.doStart()
        self._preexistingSocket = None
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        # unix.Port would unlink the socket file here.
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class AdoptedUNIXEndpoint:
    """
    Listen on an inherited C{AF_UNIX} socket without touching its file.
    """

    def __init__(self, reactor: Any, fileno: int) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self._used = False

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        if self._used:
            return defer.fail(AlreadyListened())
        self._used = True
        try:
            fdesc.setNonBlocking(self.fileno)
            port = _AdoptedUNIXPort._fromListeningDescriptor(
                self.reactor, self.fileno, factory
            )
            port.startListening()
            os.close(self.fileno)
        except BaseException:
            return defer.fail()
        return defer.succeed(port)


def adoptingSocketFiles(
    reactor: Any, endpoint: IStreamServerEndpoint
) -> IStreamServerEndpoint:
    """
    C{endpoint}, except that an inherited C{AF_UNIX} socket is served by
    L{AdoptedUNIXEndpoint}.
    """
    if (
        isinstance(endpoint, AdoptedStreamServerEndpoint)
        and endpoint.addressFamily == socket.AF_UNIX
    ):
        return AdoptedUNIXEndpoint(reactor, endpoint.fileno)
    return endpoint


def serverEndpoint(
    reactor: Any, listen: tuple[str, str]
) -> tuple[IStreamServerEndpoint, str]:
    """
    The endpoint to listen on, from C{(endpoint string, description)}, and
    its description.

    @raise StartupError: the endpoint string is unusable, or names a
        systemd socket that was not passed.
    """
    description, shown = listen
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        message = f"invalid --listen endpoint {description!r}: {e}"
        if description.startswith("systemd:"):
            message += " (systemd passed no such socket; see LISTEN_FDNAMES)"
        raise StartupError(message) from None
    return adoptingSocketFiles(reactor, endpoint), shown

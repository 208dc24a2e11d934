"""
The private Twisted names the package relies on, and their shape.

Unit tests (in memory, no global reactor). Each check names the private
name, the module of ours that relies on it, and the Twisted ticket that
would make it unnecessary. When a Twisted release renames or reshapes one,
this test fails with one readable line per broken name, instead of a
stream reordered or backpressure silently lost in production.

The supported range is bounded in setup.cfg and CI runs the whole suite at
both ends (.ci/run, constraints-oldest.txt).
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted import version as twistedVersion
from twisted.internet import tcp, unix
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, server
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from responses_proxy import channel, deadlines, eagerwrite, site, upstreamconn


@dataclass(frozen=True)
class Contract:
    """
    One private name: where it lives, who needs it, and why.
    """

    owner: object
    name: str
    user: str
    ticket: str
    parameters: tuple[str, ...] | None = None  # for methods: their parameters

    def problem(self) -> str | None:
        if not hasattr(self.owner, self.name):
            return "is gone"
        if self.parameters is None:
            return None
        value = getattr(self.owner, self.name)
        try:
            actual = tuple(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            return None
        if actual != self.parameters:
            return f"now takes {actual}, not {self.parameters}"
        return None

    def describe(self) -> str:
        owner = getattr(self.owner, "__qualname__", None) or getattr(
            self.owner, "__name__", None
        )
        if owner is None:
            owner = type(self.owner).__qualname__  # an instance
        return f"{owner}.{self.name}"


def _connectedTransport(kind: type) -> Any:
    """
    A real, connected C{tcp.Server} (on a socket pair, with a memory reactor),
    to see the instance attributes a live transport has.
    """
    left, right = socket.socketpair()
    reactor = MemoryReactor()
    if kind is tcp.Server:
        # The server port is only used for logging; none is needed here.
        port: Any = None
        transport = tcp.Server(left, Protocol(), ("127.0.0.1", 1), port, 1, reactor)
    else:
        raise AssertionError(kind)
    return transport, (left, right)


_EAGER = "responses_proxy/eagerwrite.py (send on write, lazy pause)"
_EAGER_TICKET = "twisted/twisted#5303 (write immediately when nothing is queued)"
_UPSTREAM = "responses_proxy/upstreamconn.py (the pool's connection protocol)"
_POOL_TICKET = (
    "none found; to file: a public way to choose HTTPConnectionPool's protocol"
)
_HEAD_TICKET = "twisted/twisted#8570 (limits on a response's head)"
_CHANNEL = "responses_proxy/channel.py (strict request parsing)"
_CHANNEL_TICKET = (
    "twisted/twisted#4892 and #6927 (HTTPChannel's head limits and errors)"
)
_ACTIVATION = "responses_proxy/activation.py (adopted AF_UNIX sockets)"
_ACTIVATION_TICKET = (
    "the AF_UNIX sibling of twisted/twisted#5621 (adopted sockets left alone)"
)

CONTRACTS = [
    # The pool's connection protocol.
    Contract(
        HTTPConnectionPool,
        "_factory",
        _UPSTREAM,
        _POOL_TICKET,
    ),
    Contract(
        HTTPConnectionPool,
        "_putConnection",
        _UPSTREAM,
        _POOL_TICKET,
        ("self", "key", "connection"),
    ),
    Contract(
        _HTTP11ClientFactory,
        "__init__",
        _UPSTREAM,
        _POOL_TICKET,
        ("self", "quiescentCallback", "metadata"),
    ),
    Contract(
        HTTP11ClientProtocol,
        "__init__",
        _UPSTREAM,
        _POOL_TICKET,
        ("self", "quiescentCallback"),
    ),
    Contract(
        HTTP11ClientProtocol, "request", _UPSTREAM, _HEAD_TICKET, ("self", "request")
    ),
    Contract(
        HTTP11ClientProtocol, "dataReceived", _UPSTREAM, _HEAD_TICKET, ("self", "bytes")
    ),
    Contract(
        HTTP11ClientProtocol, "connectionMade", _UPSTREAM, _POOL_TICKET, ("self",)
    ),
    # The server side.
    Contract(
        http.HTTPChannel,
        "_respondToBadRequestAndDisconnect",
        _CHANNEL,
        _CHANNEL_TICKET,
        ("self",),
    ),
    Contract(http.HTTPChannel, "_receivedHeaderSize", _CHANNEL, _CHANNEL_TICKET),
    Contract(http.HTTPChannel, "_receivedHeaderCount", _CHANNEL, _CHANNEL_TICKET),
    # An instance attribute: look on an instance.
    Contract(http.HTTPChannel(), "_handlingRequest", _CHANNEL, _CHANNEL_TICKET),
    Contract(http.HTTPChannel, "totalHeadersSize", _CHANNEL, _CHANNEL_TICKET),
    Contract(http.HTTPChannel, "maxHeaders", _CHANNEL, _CHANNEL_TICKET),
    Contract(
        http.HTTPChannel,
        "checkPersistence",
        _CHANNEL,
        "public, overridden",
        ("self", "request", "version"),
    ),
    Contract(LineReceiver, "_buffer", _CHANNEL, _CHANNEL_TICKET),
    Contract(
        server.Request,
        "process",
        "responses_proxy/site.py (no Server/Date header per request)",
        "none found; to file: let Request.process skip the Server and Date headers",
        ("self",),
    ),
    # Adopted AF_UNIX sockets.
    Contract(tcp.Port, "_shouldShutdown", _ACTIVATION, _ACTIVATION_TICKET),
    Contract(
        unix.Port,
        "_fromListeningDescriptor",
        _ACTIVATION,
        _ACTIVATION_TICKET,
        ("reactor", "fd", "factory"),
    ),
    Contract(tcp, "_reservedFD", _ACTIVATION, _ACTIVATION_TICKET),
    Contract(
        tcp.Port,
        "connectionLost",
        _ACTIVATION,
        _ACTIVATION_TICKET,
        ("self", "reason"),
    ),
]


class TwistedContractTests(SynchronousTestCase):
    """
    Every private Twisted name the package touches still has its shape.
    """

    def assertNoProblems(self, problems: list[str]) -> None:
        if problems:
            self.fail(
                f"Twisted {twistedVersion.short()} changed what responses-api-proxy "
                "relies on:\n" + "\n".join(problems)
            )

    def test_names(self) -> None:
        """
        Each listed private name exists, methods with the parameters we call
        them with or override them with.
        """
        problems = []
        for contract in CONTRACTS:
            problem = contract.problem()
            if problem is not None:
                problems.append(
                    f"- {contract.describe()} {problem}: revisit {contract.user} "
                    f"(upstream: {contract.ticket})"
                )
        self.assertNoProblems(problems)

    def test_eagerWritePreconditions(self) -> None:
        """
        A live C{tcp.Server} has every attribute and method the eager-write
        classes read (the same check they make once at run time, where a
        failure falls back to stock Twisted).
        """
        transport, sockets = _connectedTransport(tcp.Server)
        for s in sockets:
            self.addCleanup(s.close)
        missing = eagerwrite.missingPreconditions(transport)
        self.assertNoProblems(
            [
                f"- tcp.Server.{name} is gone: revisit {_EAGER} "
                f"(upstream: {_EAGER_TICKET})"
                for name in missing
            ]
        )

    def test_eagerWriteQueue(self) -> None:
        """
        What eager writes infer from the queue holds: a fresh transport has
        an empty queue (C{offset == len(dataBuffer)}, no C{_tempDataBuffer}),
        and a queued write shows up in C{_tempDataBuffer}.
        """
        transport, sockets = _connectedTransport(tcp.Server)
        for s in sockets:
            self.addCleanup(s.close)
        self.assertEqual(
            (transport.offset, len(transport.dataBuffer), transport._tempDataBuffer),
            (0, 0, []),
            f"revisit {_EAGER}",
        )
        tcp.Server.write(transport, b"queued")
        self.assertEqual(transport._tempDataBuffer, [b"queued"], f"revisit {_EAGER}")

    def test_poolBuildsOurProtocol(self) -> None:
        """
        A new pooled connection is built by the pool's C{_factory}, called
        with the quiescent callback, so the pool's connections are ours.
        """
        built: list[Any] = []

        class Endpoint:
            def connect(self, factory: Any) -> Any:
                built.append(factory.buildProtocol(None))
                from twisted.internet.defer import Deferred

                return Deferred()

        pool = upstreamconn.UpstreamPool(MemoryReactor(), persistent=True)
        endpoint: Any = Endpoint()  # only connect() is called
        pool.getConnection(("https", b"example", 443), endpoint)
        self.assertEqual(len(built), 1)
        self.assertIsInstance(
            built[0],
            upstreamconn.UpstreamProtocol,
            f"revisit {_UPSTREAM} (upstream: {_POOL_TICKET})",
        )

    def test_ourNamesDoNotShadowTwisted(self) -> None:
        """
        The private attributes our subclasses add are not names Twisted's
        base classes use for something else.
        """
        pairs: list[tuple[type, type]] = [
            (channel.ProxyChannel, http.HTTPChannel),
            (deadlines.DeadlineChannel, http.HTTPChannel),
            (site.ProxyRequest, server.Request),
            (upstreamconn.UpstreamProtocol, HTTP11ClientProtocol),
            (upstreamconn.UpstreamPool, HTTPConnectionPool),
        ]
        overridden = {
            "_respondToBadRequestAndDisconnect",
            "_factory",
            "_putConnection",
        }
        problems = []
        for ours, base in pairs:
            own = {
                name
                for name in vars(ours)
                if name.startswith("_") and not name.startswith("__")
            }
            instance = _instanceNames(base)
            for name in sorted((own & (set(dir(base)) | instance)) - overridden):
                problems.append(
                    f"- {ours.__name__}.{name} shadows {base.__name__}.{name}"
                )
        self.assertNoProblems(problems)


def _instanceNames(base: type) -> set[str]:
    """
    Attribute names C{base.__init__} (and its bases') assign on C{self}.
    """
    names: set[str] = set()
    for klass in base.__mro__:
        init: Callable[..., Any] | None = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            line = line.strip()
            if line.startswith("self.") and "=" in line:
                names.add(line[5:].split("=", 1)[0].split(":")[0].strip())
    return names

# -*- test-case-name: tests.test_egress -*-
"""
Reaching the upstream through an egress (forward) proxy, the way curl and
the reference proxy's HTTP client do it.

The proxy is chosen once, at startup, from the environment:
C{HTTPS_PROXY}/C{https_proxy} for an https upstream, C{HTTP_PROXY}/
C{http_proxy} for an http one, C{ALL_PROXY}/C{all_proxy} for either, unless
the upstream host matches C{NO_PROXY}/C{no_proxy} (comma-separated host
names, which also match their subdomains, IP addresses, CIDR blocks, or
C{*}). Only C{http://} proxies are supported; anything else fails at startup
rather than being silently bypassed.

  - An https upstream is reached through a C{CONNECT} tunnel: TCP to the
    proxy, C{CONNECT host:port}, and once it answers 2xx, TLS inside the
    tunnel, verified against the B{upstream} host name. The proxy sees only
    the target host and port; the key travels inside TLS.
  - An http upstream is sent to the proxy in absolute form
    (C{POST http://host/... HTTP/1.1}); the proxy then sees everything,
    including the key.

Credentials in the proxy URL (C{http://user:pass@proxy:3128}) become
C{Proxy-Authorization: Basic ...}, sent to the proxy only.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

# A CONNECT answer's head larger than this is not a proxy we understand.
_MAX_CONNECT_HEAD = 16 * 1024


class BadProxyURL(ValueError):
    """
    A C{*_PROXY} variable holds something we cannot use.
    """


class EgressProxyError(Exception):
    """
    The egress proxy could not be reached or refused the tunnel.
    """


@dataclass(frozen=True)
class EgressProxy:
    """
    An http:// forward proxy.

    @ivar authorization: the C{Proxy-Authorization} value, if the URL had
        credentials.
    """

    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)
    variable: str = ""

    @classmethod
    def fromString(cls, value: str, variable: str = "") -> EgressProxy:
        """
        Parse a proxy URL; C{host:port} without a scheme means http.
        """
        text = value.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise BadProxyURL(f"{variable or 'proxy'}: invalid URL: {e}") from None
        if parts.scheme.lower() != "http":
            raise BadProxyURL(
                f"{variable or 'proxy'}: only http:// egress proxies are supported, "
                f"not {parts.scheme}://"
            )
        if not parts.hostname:
            raise BadProxyURL(f"{variable or 'proxy'}: no proxy host name")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
        return cls(parts.hostname, port or 80, authorization, variable)

    def describe(self) -> str:
        """
        Where the proxy is, for the log; never its credentials.
        """
        return f"http://{_hostPort(self.host, self.port)} (from {self.variable})"


def _hostPort(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _firstSet(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _noProxyEntryMatches(host: str, entry: str) -> bool:
    entry = entry.strip().lower()
    if entry.startswith("[") and "]" in entry:
        entry = entry[1 : entry.index("]")]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    if not entry:
        return False
    if entry == "*":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        entry = entry.lstrip(".")
        return host == entry or host.endswith("." + entry)
    try:
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def bypassesProxy(host: str, noProxy: str) -> bool:
    """
    Whether C{host} matches the C{NO_PROXY} list C{noProxy}.
    """
    host = host.strip("[]").lower().rstrip(".")
    return any(_noProxyEntryMatches(host, entry) for entry in noProxy.split(","))


def proxyFromEnvironment(
    scheme: str, host: str, environ: Mapping[str, str]
) -> EgressProxy | None:
    """
    The egress proxy to use for C{scheme://host}, or L{None} for direct.

    @raise BadProxyURL: the applicable variable is not a usable proxy URL.
    """
    noProxy = _firstSet(environ, "NO_PROXY", "no_proxy")
    if noProxy is not None and bypassesProxy(host, noProxy[1]):
        return None
    if scheme == "https":
        names: tuple[str, ...] = ("HTTPS_PROXY", "https_proxy")
    elif "REQUEST_METHOD" in environ:
        # In a CGI environment HTTP_PROXY can come from a request header
        # ("httpoxy"), so curl ignores it there, and so do we.
        names = ("http_proxy",)
    else:
        names = ("HTTP_PROXY", "http_proxy")
    found = _firstSet(environ, *names, "ALL_PROXY", "all_proxy")
    if found is None:
        return None
    return EgressProxy.fromString(found[1], found[0])


class _TunnelProtocol(Protocol):
    """
    Ask the proxy for a tunnel, then hand the connection to the protocol
    that will use it (for us, TLS with HTTP inside), passing bytes through.
    """

    def __init__(self, tunnel: TunnelEndpoint, factory: IProtocolFactory) -> None:
        self._tunnel = tunnel
        self._factory = factory
        self._buffer = b""
        self._inner: IProtocol | None = None
        self.established: Deferred[IProtocol] = Deferred(self._cancel)
        self._timeout: Any = None

    @property
    def _socket(self) -> Any:
        # The connected TCP transport (never None once connected).
        return self.transport

    def connectionMade(self) -> None:
        self._socket.write(self._tunnel.connectRequest())
        self._timeout = self._tunnel.reactor.callLater(
            self._tunnel.timeout, self._timedOut
        )

    def _timedOut(self) -> None:
        self._timeout = None
        self._fail(TimeoutError(string="the egress proxy did not answer CONNECT"))

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        self._stopTimeout()
        self._socket.abortConnection()

    def _stopTimeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def _fail(self, reason: Exception) -> None:
        self._stopTimeout()
        if not self.established.called:
            self.established.errback(Failure(reason))
        self._socket.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_CONNECT_HEAD:
                self._fail(EgressProxyError("the egress proxy's answer is too long"))
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
            self._fail(EgressProxyError("the egress proxy did not answer in HTTP/1"))
            return
        if not (status[1].isdigit() and status[1].startswith(b"2")):
            self._fail(
                EgressProxyError(
                    "the egress proxy refused CONNECT with "
                    + b" ".join(status[1:]).decode("latin-1")
                )
            )
            return
        self._stopTimeout()
        inner = self._factory.buildProtocol(self._socket.getPeer())
        if inner is None:
            self._fail(EgressProxyError("no protocol for the tunnel"))
            return
        self._inner = inner
        inner.makeConnection(self._socket)
        self.established.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimeout()
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self.established.called:
            self.established.errback(
                Failure(EgressProxyError("the egress proxy closed the connection"))
            )


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    A byte stream to C{host:port} through an HTTP proxy's C{CONNECT}.
    """

    def __init__(
        self,
        reactor: Any,
        proxy: EgressProxy,
        host: str,
        port: int,
        timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.host = host
        self.port = port
        self.timeout = timeout

    def connectRequest(self) -> bytes:
        """
        The C{CONNECT} request head.
        """
        target = _hostPort(self.host, self.port).encode("idna")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self.proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self.proxy.authorization)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        endpoint = HostnameEndpoint(
            self.reactor, self.proxy.host, self.proxy.port, timeout=self.timeout
        )
        tunnelFactory = Factory.forProtocol(
            lambda: _TunnelProtocol(self, protocolFactory)
        )
        tunnelFactory.noisy = False  # no "Starting factory" line per tunnel
        connecting = endpoint.connect(tunnelFactory)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(TimeoutError, EgressProxyError, CancelledError):
                return failure
            where = _hostPort(self.proxy.host, self.proxy.port)
            message = f"cannot reach the egress proxy {where}: "
            return Failure(EgressProxyError(message + failure.getErrorMessage()))

        def established(tunnel: IProtocol) -> Deferred[IProtocol]:
            assert isinstance(tunnel, _TunnelProtocol)
            return tunnel.established

        return connecting.addCallback(established).addErrback(unreachable)


@implementer(IAgentEndpointFactory)
class TunnellingEndpointFactory:
    """
    Endpoints for L{Agent.usingEndpointFactory}: every https URI through a
    C{CONNECT} tunnel, TLS checked against the URI's host by C{policy}.
    """

    def __init__(
        self,
        reactor: Any,
        proxy: EgressProxy,
        policy: IPolicyForHTTPS,
        connectTimeout: float = 30.0,
    ) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._policy = policy
        self._connectTimeout = connectTimeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        tunnel = TunnelEndpoint(
            self._reactor, self._proxy, host, uri.port, self._connectTimeout
        )
        if uri.scheme == b"http":
            return tunnel
        return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tunnel)


@implementer(IAgent)
class ProxyAuthorizingAgent:
    """
    Add C{Proxy-Authorization} to every request (for absolute-form requests
    to an HTTP proxy, which L{twisted.web.client.ProxyAgent} does not do).
    """

    def __init__(self, agent: IAgent, authorization: bytes) -> None:
        self._agent = agent
        self._authorization = authorization

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: Any = None,
    ) -> Deferred[Any]:
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"proxy-authorization", [self._authorization])
        return self._agent.request(method, uri, headers, bodyProducer)

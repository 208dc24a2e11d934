# -*- test-case-name: tests.test_upstream_tls,tests.test_egress -*-
"""
Where requests go: the upstream URL and the HTTP client that reaches it.

The client is a bare L{twisted.web.client.Agent}, deliberately not
C{treq.HTTPClient}: treq's request path always wraps C{ContentDecoderAgent}
(it adds C{Accept-Encoding: gzip} and rewrites compressed bodies) and a
C{CookieAgent} whose jar is shared by every caller. A proxy must forward
bytes unchanged and must never carry one client's cookies to another, so
neither layer may sit between the client and the upstream. The Agent also
follows no redirects.

Trust: the system store with full host name verification, or exactly the
CA certificates in C{--upstream-ca} (else C{$SSL_CERT_FILE}) when given.
Egress: the upstream may be reached through an HTTP proxy named by the usual
environment variables (see L{responses_proxy.egress}); both are read once,
at startup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ProxyAgent,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from responses_proxy.eagerwrite import sendEagerly
from responses_proxy.egress import (
    EgressProxy,
    ProxyAuthorizingAgent,
    TunnellingEndpointFactory,
    proxyFromEnvironment,
)

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1/responses"


class BadUpstreamURL(ValueError):
    """
    C{--upstream-url} is not an absolute http(s) URL.
    """


@dataclass(frozen=True)
class UpstreamTarget:
    """
    The parsed C{--upstream-url}.

    @ivar url: the URL as bytes, query string included, sent as-is.
    @ivar hostHeader: C{host[:port]} as the upstream expects it in C{Host}.
    """

    url: bytes
    scheme: str
    host: str
    port: int
    hostHeader: bytes

    @classmethod
    def fromString(cls, url: str) -> UpstreamTarget:
        """
        Parse and check an absolute http(s) URL.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise BadUpstreamURL(f"invalid upstream URL {url!r}: {e}") from e
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadUpstreamURL(
                f"upstream URL must be an absolute http:// or https:// URL: {url!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise BadUpstreamURL("upstream URL must not contain credentials")
        if parts.fragment:
            raise BadUpstreamURL(f"upstream URL must not have a fragment: {url!r}")
        if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
            raise BadUpstreamURL(f"upstream URL must be ASCII without spaces: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        return cls(
            url=url.encode("ascii"),
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or default,
            hostHeader=parts.netloc.encode("ascii"),
        )


def loadTrustRoot(caFile: str) -> ssl.IOpenSSLTrustRoot:
    """
    Trust exactly the PEM certificates in C{caFile}.

    @raise ValueError: the file holds no certificate.
    """
    with open(caFile, "rb") as f:
        pem = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
    if not blocks:
        raise ValueError(f"no PEM certificate found in {caFile}")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(block) for block in blocks]
    )


class _UpstreamProtocol(HTTP11ClientProtocol):
    """
    An upstream connection with Nagle's algorithm off, as on the client side
    (twisted.web sets it there): a body written in pieces, or an upstream
    that delays its ACKs, must not hold a request back.
    """

    def connectionMade(self) -> None:
        transport = self.transport
        # Under TLS the socket is the transport's own transport.
        socket = getattr(transport, "transport", None) or transport
        sendEagerly(socket)
        setNoDelay = getattr(socket, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass


class _QuietClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per upstream connection is noise.
    noisy = False

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return _UpstreamProtocol(self._quiescentCallback)


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory

    def _putConnection(self, key: object, connection: HTTP11ClientProtocol) -> None:
        # A connection already told to close (its client left mid-answer) can
        # still finish reading its response, and Twisted then pools it; the
        # next request would be written into a closing socket and get a 502.
        transport = connection.transport
        if transport is None or getattr(transport, "disconnecting", False):
            if transport is not None:
                transport.abortConnection()
            return
        super()._putConnection(key, connection)


class _FixedTargetAgent(Agent):
    """
    An L{Agent} for a proxy that always calls the same URL.

    C{Agent.request} parses the URL and builds a new endpoint (IDNA-encoding
    the host name) for every request; with one constant upstream that was
    about a tenth of the proxy's CPU per request. This does both once per
    URL and then takes the same path as C{Agent.request}: the same pool key,
    the same endpoint factory (TLS, tunnels), a fresh DNS lookup per new
    connection.
    """

    _targets: dict[bytes, tuple[URI, object, tuple[bytes, bytes, int]]]

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        targets = self.__dict__.setdefault("_targets", {})
        target = targets.get(uri)
        if target is None:
            parsed = URI.fromBytes(uri)
            endpoint = self._getEndpoint(parsed)
            key = (parsed.scheme, parsed.host, parsed.port)
            target = targets[uri] = (parsed, endpoint, key)
        parsed, endpoint, key = target
        return self._requestWithEndpoint(
            key, endpoint, method, parsed, headers, bodyProducer, parsed.originForm
        )


@dataclass
class UpstreamClient:
    """
    The Agent the forwarder uses, and the pool it can close at shutdown.
    """

    agent: IAgent
    pool: HTTPConnectionPool
    egress: EgressProxy | None = None

    def close(self) -> Deferred[None]:
        """
        Close idle pooled upstream connections.
        """
        return self.pool.closeCachedConnections()


def makeUpstreamClient(
    reactor: IReactorTime,
    *,
    caFile: str | None = None,
    connectTimeout: float = 30.0,
    maxPersistentPerHost: int = 512,
    target: UpstreamTarget | None = None,
    environ: Mapping[str, str] | None = None,
) -> UpstreamClient:
    """
    Build the upstream client: persistent connections, TLS verified with
    service_identity against the system store (or C{caFile}, else
    C{SSL_CERT_FILE}), no decoding, no cookies, no redirects; through the
    egress proxy C{environ} names for C{target}, if any.

    @param environ: the environment to read C{*_PROXY}, C{NO_PROXY} and
        C{SSL_CERT_FILE} from; L{os.environ} by default.
    @raise ValueError: a CA file holds no certificate, or a proxy variable
        is unusable (L{responses_proxy.egress.BadProxyURL}).
    @raise OSError: a CA file cannot be read.
    """
    environ = os.environ if environ is None else environ
    caFile = caFile or environ.get("SSL_CERT_FILE") or None
    trustRoot = loadTrustRoot(caFile) if caFile else None
    policy = BrowserLikePolicyForHTTPS(trustRoot)
    pool = _QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = maxPersistentPerHost
    # Shorter than common upstream keep-alive timeouts, so that we rarely
    # reuse a connection the upstream is about to close.
    pool.cachedConnectionTimeout = 20
    pool.retryAutomatically = False
    egress = None
    if target is not None:
        egress = proxyFromEnvironment(target.scheme, target.host, environ)
    agent: IAgent
    if egress is None:
        agent = _FixedTargetAgent(
            reactor, contextFactory=policy, connectTimeout=connectTimeout, pool=pool
        )
    elif target is not None and target.scheme == "https":
        # CONNECT tunnel; TLS inside it is verified against the upstream host.
        tunnels = TunnellingEndpointFactory(reactor, egress, policy, connectTimeout)
        agent = _FixedTargetAgent.usingEndpointFactory(reactor, tunnels, pool=pool)
    else:
        # Plain HTTP: absolute-form requests to the proxy, which sees them.
        proxyEndpoint = HostnameEndpoint(
            reactor, egress.host, egress.port, timeout=connectTimeout
        )
        agent = ProxyAgent(proxyEndpoint, reactor, pool=pool)
        if egress.authorization is not None:
            agent = ProxyAuthorizingAgent(agent, egress.authorization)
    return UpstreamClient(agent, pool, egress)

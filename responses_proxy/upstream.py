# -*- test-case-name: tests.test_upstreamconn,tests.test_egress -*-
"""
The HTTP client that reaches the upstream.

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

Connections are pooled (see L{responses_proxy.upstreamconn} for what each
one checks of the answers it reads). A request sent on a *reused*
connection that the upstream closed before answering (its idle timer and
our request crossed) is sent once more, on a fresh connection; nothing is
ever retried once a byte of the answer arrived, nor after a fresh
connection failed. That is the rule browsers apply to POST.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from responses_proxy.body import bodyProducer
from responses_proxy.egress import (
    EgressProxy,
    ProxyAuthorizingAgent,
    TunnellingEndpointFactory,
    proxyFromEnvironment,
)
from responses_proxy.startup import StartupError
from responses_proxy.target import UpstreamTarget
from responses_proxy.upstreamconn import StaleConnection, UpstreamPool

if TYPE_CHECKING:
    # Only for the annotation: Twisted exports no public name for it.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_log = Logger()


def loadTrustRoot(caFile: str) -> IOpenSSLTrustRoot:
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
    trustRoot: IOpenSSLTrustRoot = ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(block) for block in blocks]
    )
    return trustRoot


@implementer(IAgentEndpointFactory)
class DirectEndpointFactory:
    """
    Endpoints straight to the upstream: TCP, with TLS for https.
    """

    def __init__(
        self, reactor: Any, policy: IPolicyForHTTPS, connectTimeout: float
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connectTimeout = connectTimeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host, uri.port, timeout=self._connectTimeout
        )
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IAgentEndpointFactory)
class CachingEndpointFactory:
    """
    Build each upstream's endpoint once.

    Building one IDNA-encodes the host name and makes a TLS connection
    creator, and the proxy always calls the same upstream: per request that
    was about a tenth of its CPU. Endpoints can connect any number of
    times, each with a fresh DNS lookup, so reusing them changes nothing else.
    """

    def __init__(self, factory: IAgentEndpointFactory) -> None:
        self._factory = factory
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._factory.endpointForURI(uri)
        return endpoint


BodySource = IO[bytes]


@dataclass
class UpstreamClient:
    """
    How the forwarder reaches the upstream: the pooled Agent, a second one
    for the single retry on a fresh connection, and the pool to close at
    shutdown.
    """

    agent: IAgent
    freshAgent: IAgent
    pool: UpstreamPool
    egress: EgressProxy | None = None

    def request(
        self, url: bytes, headers: Headers, body: BodySource
    ) -> Deferred[IResponse]:
        """
        C{POST} C{body} to C{url}; retried once on a fresh connection when a
        reused one turns out to have been closed before any byte of the
        answer arrived. Cancelling the result cancels whichever attempt is
        under way.
        """
        first = self.agent.request(b"POST", url, headers, bodyProducer(body))

        def retry(failure: Failure) -> Deferred[IResponse]:
            failure.trap(StaleConnection)
            _log.info(
                "Upstream closed a reused connection before answering; "
                "retrying once on a fresh connection",
                retry=True,
            )
            return self.freshAgent.request(b"POST", url, headers, bodyProducer(body))

        return first.addErrback(retry)

    def close(self) -> Deferred[None]:
        """
        Close idle pooled upstream connections.
        """
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


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
    pool = UpstreamPool(reactor, persistent=True)
    pool.maxPersistentPerHost = maxPersistentPerHost
    # Shorter than common upstream keep-alive timeouts, so that we rarely
    # reuse a connection the upstream is about to close.
    pool.cachedConnectionTimeout = 20
    # Twisted's own retry never retries a POST; ours is in request().
    pool.retryAutomatically = False
    egress = None
    if target is not None:
        egress = proxyFromEnvironment(target.scheme, target.host, environ)
    agentWith: Callable[[UpstreamPool], IAgent]
    if egress is None or (target is not None and target.scheme == "https"):
        endpoints: IAgentEndpointFactory
        if egress is None:
            endpoints = DirectEndpointFactory(reactor, policy, connectTimeout)
        else:
            # CONNECT tunnel; TLS inside it is verified against the upstream.
            endpoints = TunnellingEndpointFactory(
                reactor, egress, policy, connectTimeout
            )
        cached = CachingEndpointFactory(endpoints)

        def agentWith(pool: UpstreamPool) -> IAgent:
            agent: IAgent = Agent.usingEndpointFactory(reactor, cached, pool=pool)
            return agent

    else:
        # Plain HTTP: absolute-form requests to the proxy, which sees them.
        proxyEndpoint = HostnameEndpoint(
            reactor, egress.host, egress.port, timeout=connectTimeout
        )
        authorization = egress.authorization

        def agentWith(pool: UpstreamPool) -> IAgent:
            agent: IAgent = ProxyAgent(proxyEndpoint, reactor, pool=pool)
            if authorization is not None:
                agent = ProxyAuthorizingAgent(agent, authorization)
            return agent

    fresh = UpstreamPool(reactor, persistent=False)
    return UpstreamClient(agentWith(pool), agentWith(fresh), pool, egress)


def upstreamClientFor(
    config: Mapping[str, Any], reactor: Any, environ: Mapping[str, str] | None
) -> UpstreamClient:
    """
    The upstream client the options ask for.

    @raise StartupError: the CA file (C{--upstream-ca} or C{SSL_CERT_FILE})
        or a proxy variable is unusable.
    """
    try:
        upstream = makeUpstreamClient(
            reactor,
            caFile=config["upstream-ca"],
            connectTimeout=config["connect-timeout"],
            target=config["upstream"],
            environ=environ,
        )
    except OSError as e:
        raise StartupError(
            f"cannot read the upstream CA file {e.filename or ''}: {e.strerror or e}"
        ) from None
    except ValueError as e:
        raise StartupError(str(e)) from None
    if upstream.egress is not None:
        _log.info("Upstream via egress proxy {proxy}", proxy=upstream.egress.describe())
    return upstream

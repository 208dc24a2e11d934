# -*- test-case-name: tests.test_tap -*-
"""
Build the proxy service from options: what C{twistd responses-api-proxy}
and the C{responses-api-proxy} console script both run.

The key is read here, inside L{makeService}: twistd calls it before it
daemonizes and redirects standard input, and the console script before the
reactor starts, so in both cases the key is read before anything listens.
Hardening runs first, before the key is in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService

from responses_proxy.activation import serverEndpoint
from responses_proxy.apikey import loadKey
from responses_proxy.drain import Drain
from responses_proxy.dumps import DumpWriter
from responses_proxy.forward import Credential, Forwarder, ObserverFactory
from responses_proxy.lifecycle import ProcessService, reportStartupFailure, stopOnce
from responses_proxy.options import ProxyOptions
from responses_proxy.record import Exchanges
from responses_proxy.resource import buildRoot
from responses_proxy.service import (
    ClosingService,
    ProxyApplicationService,
    ProxyService,
)
from responses_proxy.site import ProxySite
from responses_proxy.startup import StartupError
from responses_proxy.upstream import upstreamClientFor

Options = ProxyOptions


def makeService(
    config: ProxyOptions,
    *,
    reactor: Any = None,
    stdinFD: int = 0,
    credential: Credential | None = None,
    environ: Mapping[str, str] | None = None,
    stop: Callable[[], object] | None = None,
) -> MultiService:
    """
    Compose the proxy: key, upstream client, resource tree, site, listener.

    Without C{reactor} this is a process's entry point (twistd, the console
    script): the global reactor, and the process policy of
    L{responses_proxy.lifecycle} around the service. Tests pass their own
    reactor (and C{credential}, C{environ}) and get the bare service, which
    touches nothing of the process.

    @param environ: where to read C{*_PROXY}, C{NO_PROXY} and
        C{SSL_CERT_FILE}; L{os.environ} by default.
    @param stop: what ends the process once a drain is over;
        C{reactor.stop} by default.
    @raise StartupError: (bare service) something the options name is unusable.
    """
    if reactor is not None:
        credential = credential if credential is not None else loadKey(stdinFD)
        return _compose(config, reactor, credential, environ, stop)
    from twisted.internet import reactor as globalReactor

    try:
        credential = credential if credential is not None else loadKey(stdinFD)
        proxy = _compose(config, globalReactor, credential, environ, stop)
    except StartupError as e:
        raise reportStartupFailure(str(e)) from None
    process = ProcessService(
        proxy, globalReactor, wipe=getattr(credential, "wipe", None)
    )
    proxy.setServiceParent(process)
    return process


def _compose(
    config: ProxyOptions,
    reactor: Any,
    credential: Credential,
    environ: Mapping[str, str] | None,
    stop: Callable[[], object] | None,
) -> ProxyApplicationService:
    upstream = upstreamClientFor(config, reactor, environ)
    exchanges = Exchanges()
    observers: list[ObserverFactory] = []
    if config["dump-dir"]:
        dumps = DumpWriter.forDirectory(config["dump-dir"], reactor)
        observers.append(dumps.startExchange)
    forwarder = Forwarder(
        reactor, upstream, config["upstream"], credential, exchanges, observers
    )
    proxy = ProxyApplicationService(
        lambda timeout: Drain(reactor, listener, site, exchanges, timeout),
        config["drain-timeout"],
        stop or (lambda: stopOnce(reactor)),
    )
    shutdown = proxy.shutdown if config["http-shutdown"] else None
    site = ProxySite(
        buildRoot(forwarder, shutdown),
        reactor,
        maxRequestBody=config["max-request-body"],
        requestTimeout=config["request-timeout"],
    )
    endpoint, description = serverEndpoint(reactor, config.listenDescription())
    listener = ProxyService(endpoint, site, description, config["server-info"])
    ClosingService(upstream.close).setServiceParent(proxy)
    listener.setServiceParent(proxy)
    proxy.listener = listener
    return proxy

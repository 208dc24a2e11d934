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

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.threads import deferToThread

from responses_proxy.activation import serverEndpoint
from responses_proxy.admin import AdminResource, AdminService
from responses_proxy.admission import Admission, ExchangeCheck, HeadCheck
from responses_proxy.apikey import REQUEST_TOKEN, loadKey
from responses_proxy.browsers import refuseBrowsers, requireJSON
from responses_proxy.callers import (
    CallerIdentity,
    CallerPolicy,
    resolveGroup,
    resolveUser,
)
from responses_proxy.drain import Drain
from responses_proxy.dumps import DumpWriter
from responses_proxy.forward import Credential, Forwarder, ObserverFactory
from responses_proxy.hosts import HostCheck
from responses_proxy.ledger import Ledger, ledgerFor
from responses_proxy.lifecycle import ProcessService, reportStartupFailure, stopOnce
from responses_proxy.limits import Limits
from responses_proxy.metrics import Metrics
from responses_proxy.oidc import (
    WorkloadIdentity,
    WorkloadIdentityError,
    fetchAccessToken,
)
from responses_proxy.options import ProxyOptions
from responses_proxy.policy import ModelPolicy
from responses_proxy.record import Exchanges
from responses_proxy.resource import buildRoot
from responses_proxy.routes import Routes
from responses_proxy.service import (
    ClosingService,
    ProxyApplicationService,
    ProxyService,
)
from responses_proxy.site import ProxySite
from responses_proxy.startup import StartupError
from responses_proxy.tokens import RenewingCredential
from responses_proxy.upgrades import WebSocketRefusal
from responses_proxy.upstream import upstreamClientFor
from responses_proxy.usage import watchUsage

Options = ProxyOptions


def admissionFor(
    config: ProxyOptions,
    reactor: Any,
    routes: Routes,
    exchanges: Exchanges,
    ledger: Ledger | None,
) -> Admission:
    """
    The admission checks the options ask for, in the order they run.

    @raise StartupError: an C{--allow-user} or C{--allow-group} names no
        such user or group.
    """
    headChecks: list[HeadCheck] = [refuseBrowsers, HostCheck(config["allow-host"])]
    if config["allow-user"] or config["allow-group"]:
        uids = [resolveUser(user) for user in config["allow-user"]]
        gids = [resolveGroup(group) for group in config["allow-group"]]
        headChecks.append(CallerPolicy(uids, gids, reactor))
    headChecks.append(WebSocketRefusal(routes))
    exchangeChecks: list[ExchangeCheck] = []
    if config["allow-model"]:
        exchangeChecks.append(ModelPolicy(config["allow-model"]))
    limits = {
        "concurrentPerUser": config["max-concurrent-per-user"],
        "tokensPerDay": config["max-tokens-per-day"],
        "tokensPerDayTotal": config["max-tokens-per-day-total"],
    }
    if any(value is not None for value in limits.values()):
        exchangeChecks.append(Limits(exchanges, ledger, **limits))
    return Admission(headChecks, [requireJSON], exchangeChecks)


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
        if credential is None:
            credential = credentialFor(config, reactor, stdinFD, environ)
        return _compose(config, reactor, credential, environ, stop)
    from twisted.internet import reactor as globalReactor

    try:
        if credential is None:
            credential = credentialFor(config, globalReactor, stdinFD, environ)
        proxy = _compose(config, globalReactor, credential, environ, stop)
    except StartupError as e:
        raise reportStartupFailure(str(e)) from None
    process = ProcessService(
        proxy, globalReactor, wipe=getattr(credential, "wipe", None)
    )
    proxy.setServiceParent(process)
    return process


def credentialFor(
    config: ProxyOptions,
    reactor: Any,
    stdinFD: int,
    environ: Mapping[str, str] | None,
) -> Credential:
    """
    The key from standard input; or, with C{--github-oidc}, the request
    token from standard input and a first access token for it, obtained now,
    before anything listens.

    @raise StartupError: the key or token is unusable, or no access token
        could be had.
    """
    if not config["github-oidc"]:
        return loadKey(stdinFD)
    requestToken = loadKey(stdinFD, REQUEST_TOKEN)
    identity = WorkloadIdentity(
        requestURL=config["github-oidc-request-url"],
        audience=config["oidc-audience"],
        identityProviderID=config["identity-provider-id"],
        serviceAccountID=config["service-account-id"],
        tokenURL=config["oidc-token-url"],
        caFile=config["upstream-ca"] or (environ or os.environ).get("SSL_CERT_FILE"),
        environ=os.environ if environ is None else environ,
    )
    try:
        first = fetchAccessToken(identity, requestToken.value)
    except WorkloadIdentityError as e:
        requestToken.wipe()
        raise StartupError(str(e)) from None
    return RenewingCredential(
        reactor,
        first,
        lambda: deferToThread(fetchAccessToken, identity, requestToken.value),
        requestToken,
        requireLock=requestToken.requireLock,
    )


def _compose(
    config: ProxyOptions,
    reactor: Any,
    credential: Credential,
    environ: Mapping[str, str] | None,
    stop: Callable[[], object] | None,
) -> ProxyApplicationService:
    upstream = upstreamClientFor(config, reactor, environ)
    exchanges = Exchanges()
    ledger = closeLedger = None
    if config["state-dir"]:
        ledger, closeLedger = ledgerFor(config["state-dir"], reactor)
        exchanges.listeners.insert(0, ledger.exchangeEnded)
    routes = Routes(config["upstream"], config["allow-path"])
    admission = admissionFor(config, reactor, routes, exchanges, ledger)
    observers: list[ObserverFactory] = [watchUsage]
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
        buildRoot(forwarder, shutdown, routes, admission),
        reactor,
        maxRequestBody=config["max-request-body"],
        requestTimeout=config["request-timeout"],
        identify=CallerIdentity(),
        admission=admission,
        routes=routes,
        exchanges=exchanges,
    )
    endpoint, description = serverEndpoint(reactor, config.listenDescription())
    listener = ProxyService(endpoint, site, description, config["server-info"])
    if ledger is not None and closeLedger is not None:
        ClosingService(closeLedger, ledger.start).setServiceParent(proxy)
    ClosingService(upstream.close).setServiceParent(proxy)
    if isinstance(credential, RenewingCredential):
        exchanges.listeners.insert(0, credential.exchangeEnded)
        ClosingService(credential.stop).setServiceParent(proxy)
    if config["admin-socket"]:
        metrics = Metrics(exchanges, reactor)
        exchanges.listeners.insert(-1, metrics.exchangeEnded)
        resource = AdminResource(
            metrics, exchanges, ledger, reactor, lambda: proxy.draining
        )
        AdminService(reactor, config["admin-socket"], resource).setServiceParent(proxy)
    listener.setServiceParent(proxy)
    proxy.listener = listener
    return proxy

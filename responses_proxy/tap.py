# -*- test-case-name: tests.test_tap -*-
"""
Build the proxy service from options: what C{twistd responses-api-proxy}
and the C{responses-api-proxy} console script both run.

The key is read here, inside C{makeService}: twistd calls it before it
daemonizes and redirects standard input, and the console script before the
reactor starts, so in both cases the key is read before anything listens.
Hardening runs first, before the key is in memory.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from responses_proxy.activation import adoptingSocketFiles
from responses_proxy.apikey import AuthHeader, InvalidKey, readAuthHeader
from responses_proxy.dumps import DumpWriter
from responses_proxy.forward import Forwarder
from responses_proxy.hardening import HardeningFailed, harden, secureModeRequested
from responses_proxy.options import ProxyOptions
from responses_proxy.resource import buildRoot
from responses_proxy.service import ProxyService, StartupError
from responses_proxy.site import ProxySite
from responses_proxy.upstream import UpstreamClient, makeUpstreamClient

Options = ProxyOptions
_log = Logger()


def fail(message: str) -> SystemExit:
    """
    Print one line to the real standard error and return the exit to raise.

    twistd has redirected C{sys.stderr} into its log by the time services
    start, so the operator would otherwise find the reason only in the log.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"responses-api-proxy: {message}\n")
    stream.flush()
    return SystemExit(1)


def _stderrIsDevNull() -> bool:
    try:
        stderr, devNull = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return (stderr.st_rdev, stat.S_ISCHR(stderr.st_mode)) == (devNull.st_rdev, True)


def startupFailure(message: str) -> BaseException:
    """
    The exception that ends a failed start-up (bind, server-info).

    Normally L{fail}: one line on stderr and exit 1. But a daemonizing
    twistd has pointed stderr at /dev/null by then, and its launcher waits
    for the daemon to report over a pipe, which twistd writes only for an
    L{Exception}; on L{SystemExit} the launcher would wait forever. So
    there a plain L{RuntimeError} is raised (its class name is short: the
    launcher shows only the first 100 bytes of "RuntimeError: ..."), after
    logging the whole message.
    """
    if _stderrIsDevNull():
        _log.error("Start-up failed: {reason}", reason=message)
        # Keep the end (the reason) when the path makes the line too long.
        return RuntimeError(message if len(message) <= 84 else "..." + message[-81:])
    return fail(message)


class ProxyApplicationService(MultiService):
    """
    The top service: turns startup failures into a one-line error and exit 1.

    @ivar reactor: when given and not yet running at C{startService}, SIGTERM
        and SIGINT are handled from then on (see L{stopCleanlyOnSignals}).
    """

    def __init__(self, reactor: Any = None) -> None:
        super().__init__()
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            raise startupFailure(str(e)) from None

    def startService(self) -> None:
        if self.reactor is not None and not self.reactor.running:
            stopCleanlyOnSignals(self.reactor)
        try:
            super().startService()
        except StartupError as e:
            raise startupFailure(str(e)) from None
        tuneGarbageCollector()


def tuneGarbageCollector() -> None:
    """
    Fewer and cheaper garbage collections on the request path.

    Start-up leaves tens of thousands of long-lived objects (Twisted, the
    OpenSSL bindings) that every full collection would walk again; freezing
    them leaves collections only the proxy's own objects. A larger first
    threshold lets a request's short-lived objects be freed by reference
    counting before a collection looks at them. Measured with bench/run at
    c=32: about +12% requests/s and half the p99 latency.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def stopCleanlyOnSignals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT (and SIGHUP) a clean stop already before the
    reactor runs.

    Both twistd and the console script start the services (which write the
    server-info file) before C{reactor.run()} installs its signal handlers.
    A client that signals the proxy as soon as the file appears would kill
    it with the default action: no clean exit, server-info left behind.
    Until the reactor replaces them, these handlers queue C{reactor.stop}
    for its first iteration.
    """

    def stopWhenRunning(number: int, frame: object) -> None:
        reactor.callFromThread(stopOnce, reactor)

    signal.signal(signal.SIGTERM, stopWhenRunning)
    signal.signal(signal.SIGINT, stopWhenRunning)
    # The reactor leaves SIGHUP alone: keep this one for good, so that
    # closing the terminal of a foreground proxy stops it cleanly too.
    signal.signal(signal.SIGHUP, stopWhenRunning)


class _UpstreamPoolService(Service):
    """
    Closes idle upstream connections when the proxy stops.
    """

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._upstream.close()


def _terminalPrompt() -> None:
    stream = sys.__stderr__ or sys.stderr
    stream.write(
        "responses-api-proxy: reading the API key from the terminal, not echoed "
        "(end it with Ctrl-D; better: pipe it in)\n"
    )
    stream.flush()


def loadKey(stdinFD: int) -> AuthHeader:
    """
    Harden the process, then read the key; exit with one line on failure.
    """
    secure = secureModeRequested()
    try:
        harden(secure)
        return readAuthHeader(stdinFD, requireLock=secure, prompt=_terminalPrompt)
    except HardeningFailed as e:
        raise fail(f"{e} (CODEX_SECURE_MODE=1 makes this fatal)") from None
    except InvalidKey as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"cannot read or lock the API key: {e.strerror or e}") from None


def makeService(
    config: ProxyOptions,
    *,
    reactor: Any = None,
    stdinFD: int = 0,
    authorization: AuthHeader | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProxyApplicationService:
    """
    Compose the proxy: key, upstream client, resource tree, site, listener.

    @param environ: where to read C{*_PROXY}, C{NO_PROXY} and
        C{SSL_CERT_FILE}; L{os.environ} by default.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    if authorization is None:
        authorization = loadKey(stdinFD)
    try:
        upstream = makeUpstreamClient(
            reactor,
            caFile=config["upstream-ca"],
            connectTimeout=config["connect-timeout"],
            target=config["upstream"],
            environ=environ,
        )
    except OSError as e:
        # --upstream-ca, or SSL_CERT_FILE from the environment.
        raise fail(
            f"cannot read the upstream CA file {e.filename or ''}: {e.strerror or e}"
        ) from None
    except ValueError as e:
        raise fail(str(e)) from None
    try:
        dumps = DumpWriter(config["dump-dir"], reactor) if config["dump-dir"] else None
    except OSError as e:
        raise fail(f"--dump-dir {config['dump-dir']}: {e.strerror or e}") from None
    if upstream.egress is not None:
        _log.info("Upstream via egress proxy {proxy}", proxy=upstream.egress.describe())
    forwarder = Forwarder(
        reactor, upstream.agent, config["upstream"], authorization, dumps
    )
    shutdown = None
    if config["http-shutdown"]:

        def shutdown() -> None:
            reactor.callLater(0, stopOnce, reactor)

    site = ProxySite(
        buildRoot(forwarder, shutdown),
        reactor,
        maxRequestBody=config["max-request-body"],
        requestTimeout=config["request-timeout"],
    )
    try:
        endpoint = adoptingSocketFiles(
            reactor, serverFromString(reactor, config["listen"])
        )
    except (ValueError, KeyError, IndexError, TypeError) as e:
        message = f"invalid --listen endpoint {config['listen']!r}: {e}"
        if config["listen"].startswith("systemd:"):
            message += " (systemd passed no such socket; see LISTEN_FDNAMES)"
        raise fail(message) from None
    top = ProxyApplicationService(reactor)
    _UpstreamPoolService(upstream).setServiceParent(top)
    description = config.get("listen-description") or config["listen"]
    ProxyService(endpoint, site, description, config["server-info"]).setServiceParent(
        top
    )
    reactor.addSystemEventTrigger("after", "shutdown", authorization.wipe)
    reactor.addSystemEventTrigger("after", "shutdown", forgetExitSignal, reactor)
    return top


def stopOnce(reactor: Any) -> None:
    """
    Stop the reactor unless it is already stopping: several C{GET /shutdown}
    requests at once (or one racing SIGTERM) must not log
    C{ReactorNotRunning} tracebacks.
    """
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def forgetExitSignal(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT a clean stop (exit status 0), as documented.

    The reactor's signal handlers record the signal, and twistd re-raises it
    on itself once the reactor has stopped, so C{twistd -n} would otherwise
    exit 143 or 130 where the console script exits 0. The attribute is part
    of Twisted's C{_ISupportsExitSignalCapturing}; reactors without it are
    left alone.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None

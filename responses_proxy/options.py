# -*- test-case-name: tests.test_options -*-
"""
Command-line options, shared by the twistd plugin and the console script.

Light on purpose: parsing them (and C{--help}, and every usage error) loads
only C{twisted.python.usage} and the standard library, not the HTTP stack.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from urllib.parse import urlsplit

from twisted.python import usage

from responses_proxy.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_TIMEOUT,
)
from responses_proxy.oidcurls import DEFAULT_TOKEN_URL, BadRequestURL, checkRequestURL
from responses_proxy.routes import BadAllowedPath, checkAllowedPath
from responses_proxy.target import DEFAULT_UPSTREAM_URL, BadUpstreamURL, UpstreamTarget


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"--port must be a number, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"--port must be between 0 and 65535, not {port}")
    return port


def _positive(name: str, kind: type) -> object:
    def convert(value: str) -> object:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"{name} must be a number, not {value!r}") from None
        if not number > 0:  # also refuses nan
            raise usage.UsageError(f"{name} must be greater than 0")
        return number

    return convert


def _nonNegative(name: str, kind: type) -> object:
    def convert(value: str) -> object:
        try:
            number = kind(value)
        except ValueError:
            raise usage.UsageError(f"{name} must be a number, not {value!r}") from None
        if not number >= 0:  # also refuses nan
            raise usage.UsageError(f"{name} must not be negative")
        return number

    return convert


_INTERNET_ENDPOINTS = ("tcp", "tcp6", "ssl")
_LIMITS = ("max-concurrent-per-user", "max-tokens-per-day", "max-tokens-per-day-total")
_WORKLOAD_IDENTITY = (
    "oidc-audience",
    "identity-provider-id",
    "service-account-id",
    "github-oidc-request-url",
)
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def checkLoopbackListen(description: str) -> None:
    """
    Refuse a C{--listen} TCP endpoint that is not bound to a loopback
    address: without C{interface=} Twisted binds every interface, which
    would offer the injected key to the network. Other endpoint types
    (C{systemd:}, C{unix:}) are left to whoever set them up.

    @raise usage.UsageError: the endpoint is TCP and not loopback-only.
    """
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    if parts[0].lower() not in _INTERNET_ENDPOINTS:
        return
    options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    interface = options.get("interface")
    if interface is None:
        raise usage.UsageError(
            f"--listen {description!r} would listen on every interface; "
            "add interface=127.0.0.1 (the proxy serves loopback only)"
        )
    try:
        loopback = ipaddress.ip_address(interface).is_loopback
    except ValueError:
        loopback = interface == "localhost"
    if not loopback:
        raise usage.UsageError(
            f"--listen interface {interface!r} is not a loopback address "
            "(the proxy serves loopback only)"
        )


class ProxyOptions(usage.Options):
    """
    Options for C{responses-api-proxy}; the API key comes on standard input.
    """

    synopsis = "[options] < api-key"
    longdesc = (
        "A strict proxy for the OpenAI Responses API. Reads the API key from "
        "standard input, listens on 127.0.0.1 and forwards exactly "
        "POST /v1/responses to the upstream with 'Authorization: Bearer <key>'; "
        "everything else is answered 403. Set CODEX_SECURE_MODE=1 to make any "
        "failed hardening step fatal."
    )

    optFlags = [
        ["http-shutdown", None, "Enable GET /shutdown to stop the proxy (exit 0)."],
        [
            "github-oidc",
            None,
            "Authenticate to OpenAI with GitHub Actions workload identity: "
            "standard input supplies the job's OIDC request token "
            "(ACTIONS_ID_TOKEN_REQUEST_TOKEN), not an API key. Needs the four "
            "options below.",
        ],
    ]

    optParameters = [
        [
            "port",
            None,
            None,
            "Port to bind on 127.0.0.1 [default: an ephemeral port].",
            _port,
        ],
        [
            "listen",
            None,
            None,
            "Twisted endpoint to listen on instead of --port (TCP only with a "
            "loopback interface=), e.g. "
            "tcp:8080:interface=127.0.0.1, systemd:domain=INET:index=0, "
            "unix:/run/responses-api-proxy.sock:mode=660.",
        ],
        [
            "server-info",
            None,
            None,
            'Write {"port": N, "pid": P} to this file once listening.',
        ],
        [
            "upstream-url",
            None,
            DEFAULT_UPSTREAM_URL,
            "Absolute http(s) URL requests are forwarded to (query string kept).",
        ],
        [
            "upstream-ca",
            None,
            None,
            "PEM file of CA certificates to trust for the upstream instead of "
            "the system store.",
        ],
        [
            "dump-dir",
            None,
            None,
            "Write each request and response as JSON files into this directory "
            "(Authorization and cookies redacted).",
        ],
        [
            "max-request-body",
            None,
            DEFAULT_MAX_REQUEST_BODY,
            "Largest request body accepted, in bytes; larger ones get 413.",
            _positive("--max-request-body", int),
        ],
        [
            "request-timeout",
            None,
            DEFAULT_REQUEST_TIMEOUT,
            "Seconds a client has to send a complete request (also the "
            "keep-alive idle limit, and how long it may leave an answer "
            "unread). Never applies while waiting for the upstream.",
            _positive("--request-timeout", float),
        ],
        [
            "connect-timeout",
            None,
            DEFAULT_CONNECT_TIMEOUT,
            "Seconds to wait for the upstream connection (then 504).",
            _positive("--connect-timeout", float),
        ],
        [
            "state-dir",
            None,
            None,
            "Directory for the usage ledger (tokens per caller, model and UTC "
            "day, in SQLite); needed by the limits. Under systemd: "
            "StateDirectory=.",
        ],
        [
            "max-concurrent-per-user",
            None,
            None,
            "Exchanges one caller (uid) may have in flight; more get 429 "
            "rate_limit_exceeded. Needs --state-dir.",
            _positive("--max-concurrent-per-user", int),
        ],
        [
            "max-tokens-per-day",
            None,
            None,
            "Tokens one caller (uid) may use per UTC day; then 429 "
            "insufficient_quota. Needs --state-dir.",
            _positive("--max-tokens-per-day", int),
        ],
        [
            "max-tokens-per-day-total",
            None,
            None,
            "Tokens all callers together may use per UTC day; then 429 "
            "insufficient_quota. Needs --state-dir.",
            _positive("--max-tokens-per-day-total", int),
        ],
        [
            "admin-socket",
            None,
            None,
            "Unix socket (mode 0600) serving GET /metrics (Prometheus), "
            "/healthz and /usage to the proxy's user and root.",
        ],
        [
            "oidc-audience",
            None,
            None,
            "With --github-oidc: the audience configured on the OpenAI "
            "workload identity provider.",
        ],
        [
            "identity-provider-id",
            None,
            None,
            "With --github-oidc: the OpenAI workload identity provider ID.",
        ],
        [
            "service-account-id",
            None,
            None,
            "With --github-oidc: the OpenAI service account ID the provider "
            "maps the job to.",
        ],
        [
            "github-oidc-request-url",
            None,
            None,
            "With --github-oidc: the HTTPS token-request URL, straight from the "
            "runner's ACTIONS_ID_TOKEN_REQUEST_URL (never from a workflow input "
            "or repository content: the request token is sent to it).",
        ],
        [
            "oidc-token-url",
            None,
            DEFAULT_TOKEN_URL,
            "With --github-oidc: OpenAI's token-exchange endpoint (for tests "
            "and staging).",
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "On SIGTERM, SIGINT or GET /shutdown: stop accepting at once, let "
            "the exchanges in flight finish for up to this many seconds, then "
            "cut what is left. 0 stops at once.",
            _nonNegative("--drain-timeout", float),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        # The opt_* methods' docstrings are their help; without their
        # indentation, --help wraps them as the other options'.
        self.docs = {
            name: " ".join((doc or "").split()) for name, doc in self.docs.items()
        }
        self["allow-host"] = []
        self["allow-user"] = []
        self["allow-group"] = []
        self["allow-path"] = []
        self["allow-model"] = []

    def opt_allow_host(self, name: str) -> None:
        """
        Also accept requests whose Host header names NAME (any port); by
        default only 127.0.0.0/8, [::1] and localhost (repeatable).
        """
        if not _HOST_NAME.fullmatch(name):
            raise usage.UsageError(f"--allow-host {name!r} is not a host name")
        self["allow-host"].append(name)

    def opt_allow_user(self, user: str) -> None:
        """
        Let only the local user NAME or UID (and the other --allow-user and
        --allow-group callers) use the key; everyone else gets 403
        (repeatable).
        """
        if not user:
            raise usage.UsageError("--allow-user needs a user name or uid")
        self["allow-user"].append(user)

    def opt_allow_group(self, group: str) -> None:
        """
        Let the members (primary or supplementary) of the local group NAME or
        GID use the key (repeatable).
        """
        if not group:
            raise usage.UsageError("--allow-group needs a group name or gid")
        self["allow-group"].append(group)

    def opt_allow_path(self, path: str) -> None:
        """
        Also forward POST to PATH, an exact sub-path of /v1/responses such as
        /v1/responses/compact, to the upstream URL's path with the same
        suffix (repeatable).
        """
        try:
            self["allow-path"].append(checkAllowedPath(path))
        except BadAllowedPath as e:
            raise usage.UsageError(f"--allow-path: {e}") from None

    def opt_allow_model(self, pattern: str) -> None:
        """
        Forward only requests whose "model" matches PATTERN (shell-style,
        e.g. 'gpt-5*'); others get 400 model_not_allowed (repeatable).
        """
        if not pattern:
            raise usage.UsageError("--allow-model needs a model name or pattern")
        self["allow-model"].append(pattern)

    def opt_version(self) -> None:
        """
        Display the proxy's (and Twisted's) version and exit.
        """
        from twisted import version as twistedVersion

        from responses_proxy import __version__

        print(f"responses-api-proxy {__version__} (Twisted {twistedVersion.short()})")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["port"] is not None and self["listen"] is not None:
            raise usage.UsageError("give --port or --listen, not both")
        try:
            self["upstream"] = UpstreamTarget.fromString(self["upstream-url"])
        except BadUpstreamURL as e:
            raise usage.UsageError(f"--upstream-url: {e}") from None
        if self["listen"] is not None:
            checkLoopbackListen(self["listen"])
        for limit in _LIMITS:
            if self[limit] is not None and not self["state-dir"]:
                raise usage.UsageError(
                    f"--{limit} needs --state-dir (limits are kept in the usage ledger)"
                )
        self._checkWorkloadIdentity()
        socketPath = self["admin-socket"]
        if socketPath is not None and (not socketPath or ":" in socketPath):
            raise usage.UsageError(
                "--admin-socket takes a Unix socket path (never TCP), "
                f"not {socketPath!r}"
            )

    def _checkWorkloadIdentity(self) -> None:
        names = _WORKLOAD_IDENTITY
        given = [name for name in names if self[name] is not None]
        if not self["github-oidc"]:
            if given:
                raise usage.UsageError(f"--{given[0]} needs --github-oidc")
            if self["oidc-token-url"] != DEFAULT_TOKEN_URL:
                raise usage.UsageError("--oidc-token-url needs --github-oidc")
            return
        for name in names:
            if self[name] is None or not self[name].strip():
                raise usage.UsageError(f"--github-oidc needs a nonempty --{name}")
        try:
            checkRequestURL(self["github-oidc-request-url"])
        except BadRequestURL as e:
            raise usage.UsageError(f"--github-oidc-request-url: {e}") from None
        token = self["oidc-token-url"]
        if urlsplit(token).scheme != "https" or not urlsplit(token).hostname:
            raise usage.UsageError(
                f"--oidc-token-url must be an https URL, not {token!r}"
            )

    def listenDescription(self) -> tuple[str, str]:
        """
        The endpoint to listen on, and what error messages call it.
        """
        if self["listen"] is not None:
            return self["listen"], self["listen"]
        port = self["port"] if self["port"] is not None else 0
        # Twisted's default backlog of 50 drops SYNs under a burst of
        # connections (each retried only after 1 s); 511 is nginx's.
        return f"tcp:{port}:interface=127.0.0.1:backlog=511", f"127.0.0.1:{port}"

# -*- test-case-name: tests.test_oidc_reference -*-
"""
Integration tests (processes / network and mount namespaces): the reference,
C{codex responses-api-proxy --github-oidc}, observed as a black box.

The reference runs in a network namespace of its own (loopback only, so it
can reach nothing real) and a mount namespace of its own, where a private
C{/etc/hosts} maps GitHub's and OpenAI's host names to loopback addresses.
Our fakes (L{tests.fakeoidc}) listen there on port 443, over TLS, with
certificates for those names from a test CA the reference trusts through
C{SSL_CERT_FILE}. Every request it makes is recorded in full, and these
tests pin down what it sends and how it behaves, so that ours can be held
to the same protocol: L{recordReference} gives the normalised requests for
a field-by-field comparison.

They run where the reference binary is installed (C{$CODEX_REFERENCE_BIN},
else the checkout's C{.ci/node} copy, else C{codex} on C{$PATH}) and we are
root; otherwise they are skipped, saying why.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.fakeoidc import (
    FAKE_REQUEST_TOKEN,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    Answer,
    FakeGitHubOIDC,
    FakeResponsesUpstream,
    FakeTokenExchange,
    HostPKI,
    HTTPResponse,
    NetworkNamespace,
    RecordedRequest,
    hostsFile,
    makeHostPKI,
    namespaceUnavailable,
    serveHTTPS,
)
from tests.support import OutputCapture, ProcessResult

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GITHUB_HOST = "pipelines.actions.githubusercontent.com"
TOKEN_HOST = "auth.openai.com"
API_HOST = "api.openai.com"
ADDRESSES = {
    GITHUB_HOST: "127.0.10.1",
    TOKEN_HOST: "127.0.10.2",
    API_HOST: "127.0.10.3",
}

# What a runner's ACTIONS_ID_TOKEN_REQUEST_URL looks like (made-up ids).
REQUEST_PATH = (
    "/fake-run/00000000-0000-0000-0000-000000000000/_apis/distributedtask"
    "/hubs/Actions/plans/plan-1/jobs/job-1/idtoken?api-version=2.0"
)
REQUEST_URL = f"https://{GITHUB_HOST}{REQUEST_PATH}"
AUDIENCE = "api://openai-workload-identity/test"
IDENTITY_PROVIDER_ID = "wip_fake_0123456789abcdef"
SERVICE_ACCOUNT_ID = "sa_fake_0123456789abcdef"

# What the reference was seen to send and to need back.
TOKEN_URL = f"https://{TOKEN_HOST}/oauth/token"
EXCHANGE_FIELDS = [
    "grant_type",
    "subject_token_type",
    "subject_token",
    "identity_provider_id",
    "service_account_id",
]
EXCHANGE_ANSWER_FIELDS = [
    "access_token",
    "issued_token_type",
    "token_type",
    "expires_in",
    "expires_at",
]


def referenceBinary() -> str | None:
    """
    The reference to run: C{$CODEX_REFERENCE_BIN}; else the native binary
    in the checkout's C{.ci/node} (where C{.ci/run} installs
    C{@openai/codex}); else C{codex} on C{$PATH}; else C{None}.
    """
    configured = os.environ.get("CODEX_REFERENCE_BIN")
    if configured:
        return configured
    pattern = os.path.join(
        CHECKOUT,
        ".ci/node/node_modules/@openai/codex-linux-*/vendor/*/bin/codex",
    )
    found = sorted(glob.glob(pattern))
    if found:
        return found[0]
    return shutil.which("codex")


@functools.cache
def referenceUnavailable() -> str | None:
    """
    Why these tests cannot run here, or C{None} (asked once per run).
    """
    binary = referenceBinary()
    if binary is None:
        return "the reference (codex) is not installed; set CODEX_REFERENCE_BIN"
    try:
        helpText = subprocess.run(
            [binary, "responses-api-proxy", "--help"],
            capture_output=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run the reference {binary}: {e}"
    if b"--github-oidc" not in helpText:
        return f"the reference {binary} has no --github-oidc mode"
    return namespaceUnavailable()


# Running the reference ---------------------------------------------------------


def referenceErrors(ended: ProcessResult) -> list[str]:
    """
    The reference's C{Error: ...} lines (its start-up failures).
    """
    return [
        line[len("Error: ") :]
        for line in ended.stderr.decode(errors="replace").splitlines()
        if line.startswith("Error: ")
    ]


class _ReferenceProtocol(OutputCapture):
    """
    L{OutputCapture}, and C{started} fires when the reference says it
    listens (or has ended).
    """

    def __init__(self, stdin: bytes) -> None:
        super().__init__(stdin)
        self.started: Deferred[bool] = Deferred()

    def errReceived(self, data: bytes) -> None:
        super().errReceived(data)
        if b"listening on" in self.err and not self.started.called:
            self.started.callback(True)

    def processEnded(self, reason: Failure) -> None:
        super().processEnded(reason)
        if not self.started.called:
            self.started.callback(False)


@dataclass
class ReferenceProcess:
    """
    A reference process in its namespaces.

    @ivar listening: whether it got as far as listening.
    """

    world: ReferenceWorld
    proto: _ReferenceProtocol
    transport: Any
    serverInfoPath: str
    listening: bool = False

    @property
    def port(self) -> int:
        with open(self.serverInfoPath) as f:
            return int(json.load(f)["port"])

    async def post(
        self, body: dict[str, Any] | None = None, headers: Sequence[str] = ()
    ) -> HTTPResponse:
        """
        C{POST /v1/responses} through it, as a caller would (with an
        C{Authorization} of the caller's own, which must not get through).
        """
        payload = json.dumps(body or {"model": "gpt-test", "input": "hi"}).encode()
        head = [
            "POST /v1/responses HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Content-Type: application/json",
            "Authorization: Bearer caller-supplied-junk",
            f"Content-Length: {len(payload)}",
            "Connection: close",
            *headers,
        ]
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        return await self.world.namespace.rawRequest(self.port, data)

    async def stop(self) -> ProcessResult:
        """
        Stop it (SIGTERM) if it still runs; how it ended.
        """
        if not self.proto.ended.called:
            try:
                self.transport.signalProcess("TERM")
            except ProcessExitedAlready:
                pass
        return await self.proto.ended


@dataclass
class ReferenceWorld:
    """
    One namespace with fake GitHub, OpenAI token and Responses endpoints on
    port 443 under their real host names, and how to run the reference in
    it.
    """

    testCase: TestCase
    directory: str
    namespace: NetworkNamespace
    pki: HostPKI
    github: FakeGitHubOIDC
    exchange: FakeTokenExchange
    upstream: FakeResponsesUpstream
    hosts: str
    started: list[ReferenceProcess] = field(default_factory=list)

    @classmethod
    async def make(cls, testCase: TestCase) -> ReferenceWorld:
        """
        Make the namespace, the CA, the fakes and the hosts file.
        """
        directory = os.path.abspath(testCase.mktemp())
        os.makedirs(directory)
        namespace = await NetworkNamespace.start(testCase)
        pki = makeHostPKI(directory)
        github = FakeGitHubOIDC(clock=reactor.seconds)
        exchange = FakeTokenExchange(clock=reactor.seconds)
        upstream = FakeResponsesUpstream(clock=reactor.seconds)
        for host, resource in (
            (GITHUB_HOST, github),
            (TOKEN_HOST, exchange),
            (API_HOST, upstream),
        ):
            serveHTTPS(
                testCase,
                resource,
                pki.serverOptions([host], stem=host),
                port=443,
                interface=ADDRESSES[host],
                namespace=namespace,
            )
        hosts = hostsFile(os.path.join(directory, "hosts"), ADDRESSES)
        return cls(
            testCase, directory, namespace, pki, github, exchange, upstream, hosts
        )

    def arguments(
        self,
        audience: str = AUDIENCE,
        identityProviderId: str = IDENTITY_PROVIDER_ID,
        serviceAccountId: str = SERVICE_ACCOUNT_ID,
        requestURL: str = REQUEST_URL,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """
        The arguments for the GitHub OIDC mode (the reference's flags).
        """
        return [
            "--github-oidc",
            "--oidc-audience",
            audience,
            "--identity-provider-id",
            identityProviderId,
            "--service-account-id",
            serviceAccountId,
            "--github-oidc-request-url",
            requestURL,
            *extra,
        ]

    async def start(
        self,
        stdin: bytes = FAKE_REQUEST_TOKEN.encode() + b"\n",
        command: Sequence[str] | None = None,
        **arguments: Any,
    ) -> ReferenceProcess:
        """
        Start the reference (or C{command}, which takes the same flags and
        writes the same server-info: ours) with C{stdin}; return once it
        listens or ends.
        """
        if command is None:
            binary = referenceBinary()
            assert binary is not None
            command = [binary, "responses-api-proxy"]
        number = len(self.started)
        serverInfo = os.path.join(self.directory, f"server-info-{number}.json")
        home = os.path.join(self.directory, f"home-{number}")
        os.makedirs(home)
        argv = self.namespace.argv(
            [
                *command,
                *self.arguments(**arguments),
                "--server-info",
                serverInfo,
            ],
            binds=[(self.hosts, "/etc/hosts")],
        )
        env = {
            # Ours, in case the reference is npm's node wrapper.
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": home,
            "CODEX_HOME": home,
            "SSL_CERT_FILE": self.pki.caCert,
        }
        proto = _ReferenceProtocol(stdin)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=env)
        process = ReferenceProcess(self, proto, transport, serverInfo)
        self.started.append(process)

        def kill() -> Deferred[ProcessResult] | None:
            if proto.ended.called:
                return None
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            return proto.ended

        self.testCase.addCleanup(kill)
        process.listening = await proto.started.addTimeout(60, reactor)
        return process

    async def startFails(self, **kwargs: Any) -> ProcessResult:
        """
        Start the reference, expecting it to give up before listening.
        """
        process = await self.start(**kwargs)
        ended = await process.proto.ended.addTimeout(60, reactor)
        self.testCase.assertFalse(process.listening, ended.stderr)
        self.testCase.assertFalse(os.path.exists(process.serverInfoPath))
        return ended

    def secrets(self) -> dict[str, str]:
        """
        The fake secrets seen so far and their placeholders.
        """
        names = {FAKE_REQUEST_TOKEN: "{request_token}"}
        for i, token in enumerate(self.github.issued, 1):
            names[token] = f"{{id_token_{i}}}"
        for i, token in enumerate(self.exchange.issued, 1):
            names[token] = f"{{access_token_{i}}}"
        return names


async def atOffset(start: float, offset: float) -> None:
    """
    Wait until C{offset} seconds after reactor time C{start}.
    """
    delay = max(0.0, start + offset - reactor.seconds())
    await task.deferLater(reactor, delay, lambda: None)


# Normalised records ----------------------------------------------------------


def _hide(value: Any, secrets: dict[str, str]) -> Any:
    if isinstance(value, str):
        for secret, name in sorted(secrets.items(), key=lambda i: -len(i[0])):
            value = value.replace(secret, name)
        return value
    if isinstance(value, list):
        return [_hide(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _hide(v, secrets) for k, v in value.items()}
    return value


def normalise(record: RecordedRequest, secrets: dict[str, str]) -> dict[str, Any]:
    """
    A request as plain data, fake secrets replaced by placeholders such as
    C{{id_token_1}}: method, host, TLS server name, path, query pairs in
    order, headers (names lower-cased) in order, and the body parsed by its
    Content-Type (C{json} keeps the key order).
    """
    contentType = (record.header("content-type") or [""])[0]
    hosts = record.header("host")
    normal: dict[str, Any] = {
        "method": record.method,
        "host": hosts[0] if hosts else None,
        "serverName": record.serverName,
        "path": record.path,
        "query": [list(p) for p in parse_qsl(urlsplit(record.target).query, True)],
        "headers": [[k.lower(), v] for k, v in record.headers],
        "contentType": contentType or None,
    }
    if not record.body:
        normal["body"] = None
    elif contentType.lower().startswith("application/json"):
        normal["json"] = record.json()
    elif contentType.lower().startswith("application/x-www-form-urlencoded"):
        normal["form"] = [list(p) for p in parse_qsl(record.body.decode(), True)]
    else:
        normal["body"] = record.body.decode("utf-8", "replace")
    hidden: dict[str, Any] = _hide(normal, secrets)
    return hidden


async def recordReference(
    testCase: TestCase,
    requests: int = 1,
    configure: Callable[[ReferenceWorld], None] | None = None,
    command: Sequence[str] | None = None,
    **arguments: Any,
) -> dict[str, Any]:
    """
    Run the reference once in a fresh L{ReferenceWorld} (after
    C{configure(world)}, if given), send C{requests} requests through it,
    stop it, and return what each endpoint received, normalised (see
    L{normalise}): C{{"github": [...], "exchange": [...], "upstream":
    [...], "responses": [status, ...], "listening": bool, "exitCode": ...,
    "errors": [...]}}.

    With C{command}, another implementation taking the same flags is
    recorded the same way (see L{ReferenceWorld.start}): a later test can
    record ours and compare the two field by field.
    """
    world = await ReferenceWorld.make(testCase)
    if configure is not None:
        configure(world)
    process = await world.start(command=command, **arguments)
    statuses = []
    if process.listening:
        for _ in range(requests):
            statuses.append((await process.post()).status)
    ended = await process.stop()
    secrets = world.secrets()
    return {
        "github": [normalise(r, secrets) for r in world.github.requests],
        "exchange": [normalise(r, secrets) for r in world.exchange.requests],
        "upstream": [normalise(r, secrets) for r in world.upstream.requests],
        "responses": statuses,
        "listening": process.listening,
        "exitCode": ended.exitCode,
        "errors": _hide(referenceErrors(ended), secrets),
    }


# Tests -----------------------------------------------------------------------


class ReferenceTestCase(TestCase):
    """
    Skips when the reference or the namespaces are unavailable.
    """

    timeout = 120

    def setUp(self) -> None:
        reason = referenceUnavailable()
        if reason:
            raise self.skipTest(reason)


class WireTests(ReferenceTestCase):
    """
    What the reference sends when everything works.
    """

    async def test_githubRequest(self) -> None:
        """
        It asks GitHub for an ID token with a C{GET} of the request URL as
        given, plus C{audience} (form-encoded) as the last query parameter,
        authorised by C{Bearer <request token>} (the token read from stdin,
        its newline trimmed), with no body and no user agent.
        """
        record = await recordReference(self)
        [github] = record["github"]
        self.assertEqual(github["method"], "GET")
        self.assertEqual(github["host"], GITHUB_HOST)
        self.assertEqual(github["serverName"], GITHUB_HOST)
        self.assertEqual(github["path"], urlsplit(REQUEST_URL).path)
        self.assertEqual(
            github["query"], [["api-version", "2.0"], ["audience", AUDIENCE]]
        )
        headers = dict(github["headers"])
        self.assertEqual(headers["authorization"], "Bearer {request_token}")
        self.assertEqual(headers["accept"], "*/*")
        self.assertNotIn("user-agent", headers)
        self.assertIsNone(github["body"])
        self.assertEqual(
            sorted(headers), ["accept", "accept-encoding", "authorization", "host"]
        )

    async def test_audienceEncoding(self) -> None:
        """
        The audience is percent-encoded as in a form (space as C{+}); an
        C{audience} already in the URL is dropped, the others kept in order.
        """
        audience = "urn:x y&z=1/é"
        world = await ReferenceWorld.make(self)
        process = await world.start(
            audience=audience,
            requestURL=f"https://{GITHUB_HOST}/idtoken?audience=old&b=2&a=1",
        )
        await process.stop()
        [github] = world.github.requests
        self.assertEqual(
            github.target, "/idtoken?b=2&a=1&audience=urn%3Ax+y%26z%3D1%2F%C3%A9"
        )

    async def test_exchangeRequest(self) -> None:
        """
        It exchanges the ID token with a JSON C{POST} to
        C{https://auth.openai.com/oauth/token}: an RFC 8693 token exchange
        of a JWT, naming the identity provider and the service account.
        """
        record = await recordReference(self)
        [exchange] = record["exchange"]
        self.assertEqual(exchange["method"], "POST")
        self.assertEqual(f"https://{exchange['host']}{exchange['path']}", TOKEN_URL)
        self.assertEqual(exchange["serverName"], TOKEN_HOST)
        self.assertEqual(exchange["query"], [])
        self.assertEqual(exchange["contentType"], "application/json")
        self.assertEqual(list(exchange["json"]), EXCHANGE_FIELDS)
        self.assertEqual(
            exchange["json"],
            {
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token_type": JWT_TOKEN_TYPE,
                "subject_token": "{id_token_1}",
                "identity_provider_id": IDENTITY_PROVIDER_ID,
                "service_account_id": SERVICE_ACCOUNT_ID,
            },
        )
        headers = dict(exchange["headers"])
        self.assertNotIn("authorization", headers)
        self.assertNotIn("user-agent", headers)
        self.assertEqual(
            sorted(headers),
            ["accept", "accept-encoding", "content-length", "content-type", "host"],
        )

    async def test_upstreamRequest(self) -> None:
        """
        Requests go to the default upstream with C{Bearer <access token>}
        in place of the caller's C{Authorization}.
        """
        record = await recordReference(self, requests=2)
        self.assertEqual(record["responses"], [200, 200])
        self.assertEqual(len(record["exchange"]), 1)
        for upstream in record["upstream"]:
            self.assertEqual(upstream["method"], "POST")
            self.assertEqual(upstream["host"], API_HOST)
            self.assertEqual(upstream["serverName"], API_HOST)
            self.assertEqual(upstream["path"], "/v1/responses")
            self.assertEqual(
                [v for k, v in upstream["headers"] if k == "authorization"],
                ["Bearer {access_token_1}"],
            )

    async def test_exchangeAnswer(self) -> None:
        """
        It needs all of C{access_token}, C{issued_token_type},
        C{token_type}, C{expires_in} and C{expires_at} in the answer: without
        any one of them it gives up.
        """
        for name in EXCHANGE_ANSWER_FIELDS:

            def drop(world: ReferenceWorld, name: str = name) -> None:
                world.exchange.extra[name] = None

            record = await recordReference(self, configure=drop)
            self.assertFalse(record["listening"], name)
            self.assertEqual(record["exitCode"], 1, name)
            self.assertEqual(
                record["errors"],
                ["OpenAI workload identity returned an invalid token response"],
                name,
            )


class StartupRefusalTests(ReferenceTestCase):
    """
    What it refuses before asking anybody anything.
    """

    async def test_onlyTheDefaultUpstream(self) -> None:
        """
        In this mode the upstream must be the default one.
        """
        world = await ReferenceWorld.make(self)
        ended = await world.startFails(
            extra=["--upstream-url", "https://example.com/v1/responses"]
        )
        self.assertEqual(ended.exitCode, 1)
        self.assertEqual(
            referenceErrors(ended),
            ["workload identity requires the default OpenAI Responses endpoint"],
        )
        self.assertEqual(world.github.requests, [])

    async def test_requestURL(self) -> None:
        """
        The request URL must be HTTPS, without user info or a fragment.
        """
        world = await ReferenceWorld.make(self)
        bad = "GitHub OIDC request URL must be HTTPS without user info or fragment"
        for url, error in [
            (f"http://{GITHUB_HOST}/idtoken", bad),
            (f"https://user@{GITHUB_HOST}/idtoken", bad),
            (f"https://user:pw@{GITHUB_HOST}/idtoken", bad),
            (f"https://{GITHUB_HOST}/idtoken#part", bad),
            ("not a URL", "invalid GitHub OIDC request URL"),
        ]:
            ended = await world.startFails(requestURL=url)
            self.assertEqual(ended.exitCode, 1, url)
            self.assertEqual(referenceErrors(ended), [error], url)
        self.assertEqual(world.github.requests, [])

    async def test_emptyArguments(self) -> None:
        """
        The audience, identity provider and service account must not be
        empty (or blank).
        """
        world = await ReferenceWorld.make(self)
        for arguments, flag in [
            ({"audience": " "}, "--oidc-audience"),
            ({"identityProviderId": ""}, "--identity-provider-id"),
            ({"serviceAccountId": "  "}, "--service-account-id"),
        ]:
            ended = await world.startFails(**arguments)
            self.assertEqual(ended.exitCode, 1)
            self.assertEqual(
                referenceErrors(ended),
                [f"workload identity requires a nonempty {flag}"],
            )
        self.assertEqual(world.github.requests, [])

    async def test_requestTokenFromStdin(self) -> None:
        """
        The request token is the first line of stdin (C{\\n} or C{\\r\\n}
        ended), 1 to 16384 characters of C{A-Za-z0-9-._~+/=}.
        """
        world = await ReferenceWorld.make(self)
        world.github.refuseRequestToken = True  # keep it from going further
        accepted = [
            (b"tok.en-_~+/=\n", "tok.en-_~+/="),
            (b"token\r\n", "token"),
            (b"first\nsecond line, ignored\n", "first"),
            (b"a" * 16384, "a" * 16384),
        ]
        for stdin, sent in accepted:
            ended = await world.startFails(stdin=stdin)
            self.assertEqual(
                referenceErrors(ended),
                ["GitHub OIDC token request rejected (HTTP 401)"],
            )
            self.assertEqual(
                world.github.requests[-1].header("authorization"), [f"Bearer {sent}"]
            )
        contacted = len(world.github.requests)
        invalid = "invalid workload identity bearer credential"
        for stdin, error in [
            (b"", invalid),
            (b"\n", invalid),
            (b" token\n", invalid),
            (b"token \n", invalid),
            (b"tok:en\n", invalid),
            (b"tok en\n", invalid),
            ("tokén\n".encode(), invalid),
            (b"a" * 16385, invalid),
            (b"a" * 16386, "GitHub OIDC request credential too large"),
        ]:
            ended = await world.startFails(stdin=stdin)
            self.assertEqual(ended.exitCode, 1)
            self.assertEqual(referenceErrors(ended), [error], stdin[:20])
        self.assertEqual(len(world.github.requests), contacted)


class StartupFailureTests(ReferenceTestCase):
    """
    The first token cannot be had: one line on stderr, exit 1, never
    listening; no retry.
    """

    async def assertFails(
        self, configure: Callable[[ReferenceWorld], None], error: str
    ) -> dict[str, Any]:
        record = await recordReference(self, configure=configure)
        self.assertFalse(record["listening"])
        self.assertEqual(record["exitCode"], 1)
        self.assertEqual(record["errors"], [error])
        return record

    async def test_githubRefusesRequestToken(self) -> None:
        """
        GitHub answers 401: it stops there, without a retry.
        """

        def refuse(world: ReferenceWorld) -> None:
            world.github.refuseRequestToken = True

        record = await self.assertFails(
            refuse, "GitHub OIDC token request rejected (HTTP 401)"
        )
        self.assertEqual(len(record["github"]), 1)
        self.assertEqual(record["exchange"], [])

    async def test_githubUnavailable(self) -> None:
        """
        A 5xx from GitHub is not retried either; nor is a redirect followed.
        """
        for status in (503, 302):

            def fail(world: ReferenceWorld, status: int = status) -> None:
                world.github.fallback = Answer(
                    status, b"", [("Location", f"https://{GITHUB_HOST}/elsewhere")]
                )

            record = await self.assertFails(
                fail, f"GitHub OIDC token request rejected (HTTP {status})"
            )
            self.assertEqual(len(record["github"]), 1)

    async def test_githubMalformed(self) -> None:
        """
        An answer that is not JSON with a string C{value} is refused; an
        empty C{value} too.
        """
        for body, error in [
            (b"not json", "GitHub OIDC returned an invalid token response"),
            (b'{"count": 1}', "GitHub OIDC returned an invalid token response"),
            (b'{"value": 5}', "GitHub OIDC returned an invalid token response"),
            (
                b'{"value": ""}',
                "workload identity source returned an invalid subject token",
            ),
        ]:

            def answer(world: ReferenceWorld, body: bytes = body) -> None:
                world.github.fallback = Answer(200, body)

            record = await self.assertFails(answer, error)
            self.assertEqual(record["exchange"], [])

    async def test_exchangeRejected(self) -> None:
        """
        The token endpoint answers 401 (or 5xx): no retry.
        """
        for status in (401, 500):

            def reject(world: ReferenceWorld, status: int = status) -> None:
                world.exchange.fallback = Answer(status)

            record = await self.assertFails(
                reject,
                f"OpenAI workload identity token request rejected (HTTP {status})",
            )
            self.assertEqual(len(record["exchange"]), 1)

    async def test_exchangeMalformed(self) -> None:
        """
        An answer that is not JSON, or has fields of the wrong type.
        """
        invalid = "OpenAI workload identity returned an invalid token response"
        for body in [b"{not json", b"<html></html>"]:

            def answer(world: ReferenceWorld, body: bytes = body) -> None:
                world.exchange.fallback = Answer(200, body)

            await self.assertFails(answer, invalid)

        def stringLifetime(world: ReferenceWorld) -> None:
            world.exchange.extra["expires_in"] = "3600"

        await self.assertFails(stringLifetime, invalid)

    async def test_exchangeLifetime(self) -> None:
        """
        C{expires_in} must be 1 to 3600 seconds and C{expires_at} (Unix
        seconds) in the future.
        """
        for expiresIn, expiresAt, error in [
            (0, 3600, "OpenAI returned an expired workload identity token"),
            (3600, 0, "OpenAI returned an expired workload identity token"),
            (3600, -60, "OpenAI returned an expired workload identity token"),
            (3601, 3601, "OpenAI returned an invalid token lifetime"),
            (-1, 3600, "OpenAI workload identity returned an invalid token response"),
        ]:

            def lifetime(
                world: ReferenceWorld, expiresIn: int = expiresIn, at: int = expiresAt
            ) -> None:
                world.exchange.expiresIn = expiresIn
                world.exchange.expiresAtOffset = at

            await self.assertFails(lifetime, error)

    async def test_exchangeTokenType(self) -> None:
        """
        C{token_type} must be Bearer (any case) and C{issued_token_type} an
        access token.
        """
        unsupported = "OpenAI returned an unsupported workload identity token type"
        for name, value in [
            ("token_type", "mac"),
            ("issued_token_type", JWT_TOKEN_TYPE),
        ]:

            def answer(
                world: ReferenceWorld, name: str = name, value: str = value
            ) -> None:
                world.exchange.extra[name] = value

            await self.assertFails(answer, unsupported)

        def upper(world: ReferenceWorld) -> None:
            world.exchange.extra["token_type"] = "BEARER"

        record = await recordReference(self, configure=upper)
        self.assertTrue(record["listening"])
        self.assertEqual(record["responses"], [200])

    async def test_accessTokenCharacters(self) -> None:
        """
        The access token must be fit for a header, as the request token.
        """
        for token in ["", "has space"]:

            def answer(world: ReferenceWorld, token: str = token) -> None:
                world.exchange.extra["access_token"] = token

            await self.assertFails(
                answer, "invalid workload identity bearer credential"
            )


class RenewalTests(ReferenceTestCase):
    """
    When and how it gets a new access token: on demand only.
    """

    async def test_renewsOnDemandAtNineTenths(self) -> None:
        """
        No renewal in the background: the first request after nine tenths
        of the lifetime gets a new token (GitHub and exchange again), and
        uses it. (The lead is a tenth, at most 60 s: a one-hour token was
        seen renewed 55 to 65 s before its expiry, too slow to test here.)
        """
        world = await ReferenceWorld.make(self)
        world.exchange.expiresIn = 10
        world.exchange.expiresAtOffset = 3600  # whole seconds: keep it out of it
        process = await world.start()
        [first] = world.exchange.requests
        t0 = first.receivedAt
        await atOffset(t0, 1)
        self.assertEqual((await process.post()).status, 200)
        await atOffset(t0, 8.4)
        self.assertEqual((await process.post()).status, 200)
        self.assertEqual(len(world.exchange.requests), 1, "renewed in the background")
        await atOffset(t0, 9.6)
        self.assertEqual((await process.post()).status, 200)
        await process.stop()
        self.assertEqual(len(world.github.requests), 2)
        self.assertEqual(len(world.exchange.requests), 2)
        self.assertEqual(
            [r.header("authorization") for r in world.upstream.requests],
            [[f"Bearer {world.exchange.issued[i]}"] for i in (0, 0, 1)],
        )
        renewal = world.exchange.requests[1].fields()
        self.assertEqual(renewal["subject_token"], world.github.issued[1])

    async def test_earlierExpiryWins(self) -> None:
        """
        The lifetime is the shorter of C{expires_in} and C{expires_at}.
        """
        world = await ReferenceWorld.make(self)
        world.exchange.expiresIn = 3600
        world.exchange.expiresAtOffset = 5
        process = await world.start()
        t0 = world.exchange.requests[0].receivedAt
        await atOffset(t0, 5.2)
        self.assertEqual((await process.post()).status, 200)
        await process.stop()
        self.assertEqual(len(world.exchange.requests), 2)

    async def test_renewalFailureBacksOff(self) -> None:
        """
        With no valid token a request gets a bare 502, as soon as the
        renewal fails; the next attempt waits 1 s, then 2 s, then 4 s
        (doubling), with every request in between refused without asking
        anybody; once the exchange works again, requests get through with a
        new token.
        """
        world = await ReferenceWorld.make(self)
        world.exchange.expiresIn = 2
        world.exchange.expiresAtOffset = 3600
        process = await world.start()
        world.exchange.fallback = Answer(401)
        await atOffset(world.exchange.requests[0].receivedAt, 2.5)
        failedAt = reactor.seconds()

        async def postAfter(delay: float, exchanges: int) -> HTTPResponse:
            await atOffset(failedAt, delay)
            response = await process.post()
            self.assertEqual(len(world.exchange.requests), exchanges, delay)
            return response

        for backoff, exchanges in [(0, 2), (1, 3), (2, 4)]:
            if backoff:
                response = await postAfter(backoff / 2, exchanges - 1)
                self.assertEqual((response.status, response.body), (502, b""))
            response = await postAfter(backoff * 1.5, exchanges)
            failedAt = reactor.seconds()
            self.assertEqual((response.status, response.body), (502, b""))
        response = await postAfter(2, 4)
        self.assertEqual((response.status, response.body), (502, b""))
        world.exchange.fallback = None
        response = await postAfter(6, 5)
        self.assertEqual(response.status, 200)
        await process.stop()
        self.assertEqual(len(world.upstream.requests), 1)
        self.assertEqual(
            world.upstream.requests[0].header("authorization"),
            [f"Bearer {world.exchange.issued[-1]}"],
        )

    async def test_upstream401DropsToken(self) -> None:
        """
        A 401 from upstream is relayed as it is, and the token dropped: the
        next request gets a new one.
        """
        world = await ReferenceWorld.make(self)
        world.upstream.queue(Answer(401))
        process = await world.start()
        self.assertEqual((await process.post()).status, 401)
        self.assertEqual(len(world.exchange.requests), 1)
        self.assertEqual((await process.post()).status, 200)
        await process.stop()
        self.assertEqual(len(world.exchange.requests), 2)
        self.assertEqual(
            [r.header("authorization") for r in world.upstream.requests],
            [[f"Bearer {token}"] for token in world.exchange.issued],
        )

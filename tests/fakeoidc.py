# -*- test-case-name: tests.test_oidc_reference -*-
"""
Fakes for GitHub Actions workload identity (C{--github-oidc}).

Fake endpoints stand in for the real ones:

  - L{FakeGitHubOIDC}: the runner's ID-token endpoint
    (C{ACTIONS_ID_TOKEN_REQUEST_URL}): a C{GET} authorised by the request
    token, answered with C{{"value": <ID token>}};
  - L{FakeTokenExchange}: OpenAI's token endpoint: an RFC 8693 token
    exchange of that ID token for a short-lived access token;
  - L{FakeResponsesUpstream}: a minimal C{/v1/responses}, to see which
    access token a proxy sends upstream.

All are plain C{twisted.web} resources (so a unit test can drive them with
C{StubTreq}), record every request in full (request line, headers in the
order and case they came, body, TLS server name) and answer as configured:
token values, C{expires_in}, status codes, malformed bodies, a refused
request token.

The rest is what a test needs around them:

  - L{makeHostPKI}: a throw-away CA issuing server certificates for any host
    names (C{api.openai.com}, a GitHub host...);
  - L{serveHTTPS}: serve a resource over TLS on the global reactor, with
    every raw request recorded, closed when the test ends;
  - L{NetworkNamespace}: a private loopback-only network namespace, so a
    process under test can be given port 443 and a hosts file of its own
    (with a private mount namespace) and cannot reach the real network.
"""

from __future__ import annotations

import base64
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, reactor, ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorSocket, IReactorSSL
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web import http
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

if TYPE_CHECKING:
    from twisted.web.http import _GenericHTTPChannelProtocol

_T = TypeVar("_T")

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

# Fake secrets: recognisable, never real.
FAKE_REQUEST_TOKEN = "ghreq_canary_4b1d9e7f2a6c8e0b3d5f7a9c1e3b5d7f"
FAKE_ACCESS_TOKEN_PREFIX = "oai_access_canary_"


# Certificates ----------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class HostPKI:
    """
    A test CA that issues server certificates for any host names.

    @ivar directory: where the PEM files are written.
    @ivar caCert: the CA certificate (PEM), to be trusted by the client.
    """

    directory: str
    caCert: str
    _caKey: ec.EllipticCurvePrivateKey
    _caName: x509.Name

    def issue(self, names: Sequence[str], stem: str = "server") -> tuple[str, str]:
        """
        Write a certificate for C{names} (DNS names or IP addresses) signed
        by the CA, and its key; return their paths C{(cert, key)}.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self._caName)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                False,
            )
            .sign(self._caKey, hashes.SHA256())
        )
        certPath = os.path.join(self.directory, f"{stem}.pem")
        keyPath = os.path.join(self.directory, f"{stem}-key.pem")
        _writeFile(certPath, cert.public_bytes(serialization.Encoding.PEM))
        _writeFile(keyPath, _pem(key))
        return certPath, keyPath

    def serverOptions(
        self, names: Sequence[str], stem: str = "server"
    ) -> ssl.CertificateOptions:
        """
        TLS server options with a fresh certificate for C{names}.
        """
        certPath, keyPath = self.issue(names, stem)
        with open(certPath, "rb") as c, open(keyPath, "rb") as k:
            pem = c.read() + k.read()
        options: ssl.CertificateOptions = ssl.PrivateCertificate.loadPEM(pem).options()
        return options


def _writeFile(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def makeHostPKI(directory: str) -> HostPKI:
    """
    Make a throw-away CA in C{directory} (created if needed).
    """
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("responses-api-proxy OIDC test CA")
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(key, hashes.SHA256())
    )
    caCert = _writeFile(
        os.path.join(directory, "ca.pem"),
        cert.public_bytes(serialization.Encoding.PEM),
    )
    return HostPKI(directory, caCert, key, name)


# Recording -------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """
    One request exactly as an endpoint received it.

    @ivar method: the request method, e.g. C{"POST"}.
    @ivar target: the request target as sent (path and query).
    @ivar version: e.g. C{"HTTP/1.1"}.
    @ivar headers: C{(name, value)} pairs in the order and case received.
    @ivar body: the body (de-chunked if it was chunked).
    @ivar serverName: the TLS server name (SNI) the client asked for, if any.
    @ivar receivedAt: the endpoint's clock (C{time.time} unless given) when
        the request was complete.
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    serverName: str | None = None
    receivedAt: float = 0.0

    def header(self, name: str) -> list[str]:
        """
        Every value of header C{name} (case-insensitive), in order.
        """
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]

    def headerNames(self) -> list[str]:
        """
        The header names, lower-cased, in the order received.
        """
        return [key.lower() for key, _ in self.headers]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self) -> dict[str, list[str]]:
        """
        The query parameters (blank values kept).
        """
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        """
        The body parsed as C{application/x-www-form-urlencoded}.
        """
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)

    def json(self) -> Any:
        """
        The body parsed as JSON.
        """
        return json.loads(self.body)

    def fields(self) -> dict[str, Any]:
        """
        The body's fields, from a form or a JSON object (by Content-Type),
        with single values as strings.
        """
        contentType = (self.header("content-type") or [""])[0].lower()
        if contentType.startswith("application/json"):
            return {k: v for k, v in self.json().items()}
        return {k: v[0] if len(v) == 1 else v for k, v in self.form().items()}

    def raw(self) -> bytes:
        """
        The request rebuilt as raw HTTP/1.1 bytes (a chunked body is shown
        de-chunked).
        """
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        head = "\r\n".join(lines).encode("latin-1")
        return head + b"\r\n\r\n" + self.body


class RecordingRequest(Request):
    """
    A request that keeps its raw head lines (set by L{RecordingChannel}).
    """

    rawHead: list[bytes]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rawHead = []


class RecordingChannel(HTTPChannel):
    """
    An HTTP channel that hands each request its head exactly as received.
    """

    _rawLines: list[bytes] | None = None
    # Big enough that the fakes never refuse what a client under test sends.
    totalHeadersSize = 1024 * 1024
    MAX_LENGTH = 1024 * 1024

    def lineReceived(self, line: bytes) -> None:
        if self._rawLines is None:
            self._rawLines = []
        if line or self._rawLines:
            self._rawLines.append(line)
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        if isinstance(request, RecordingRequest):
            request.rawHead = [line for line in self._rawLines or [] if line]
        self._rawLines = None
        super().allHeadersReceived()


def _serverName(request: Request) -> str | None:
    transport = request.channel.transport if request.channel else None
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    try:
        name = getHandle().get_servername()
    except Exception:
        return None
    return name.decode("ascii") if name else None


def recordRequest(request: Request, now: float = 0.0) -> RecordedRequest:
    """
    Make a L{RecordedRequest} of C{request} (its raw head if it has one,
    else what twisted.web parsed).
    """
    rawHead = getattr(request, "rawHead", None)
    if rawHead:
        method, target, version = rawHead[0].decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in rawHead[1:]:
            text = line.decode("latin-1")
            if text[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + " " + text.strip())
                continue
            name, _, value = text.partition(":")
            headers.append((name, value.strip(" \t")))
    else:
        method = request.method.decode("latin-1")
        target = request.uri.decode("latin-1")
        version = request.clientproto.decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
    assert request.content is not None
    request.content.seek(0)
    body = request.content.read()
    return RecordedRequest(
        method, target, version, headers, body, _serverName(request), now
    )


class RecordingSite(Site):
    """
    A site whose requests keep their raw head, for L{recordRequest}.
    """

    # Twisted types HTTPFactory.protocol as a factory of its generic (HTTP/1.1
    # or HTTP/2) wrapper, but setting it to an HTTPChannel subclass is its
    # documented way to choose the channel.
    protocol = cast("Callable[[], _GenericHTTPChannelProtocol]", RecordingChannel)
    requestFactory = RecordingRequest
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        pass


# Endpoints -------------------------------------------------------------------


@dataclass
class Answer:
    """
    How an endpoint answers one request.

    @ivar status: the status code.
    @ivar body: the body; C{None} for the endpoint's normal answer (which
        is then built with L{status} too, e.g. a 200 with fresh tokens).
    @ivar headers: extra response headers.
    @ivar contentType: the Content-Type of C{body}.
    @ivar hang: never answer (the request stays open until the client gives
        up or the test ends), to exercise the client's deadlines.
    """

    status: int = 200
    body: bytes | None = None
    headers: Sequence[tuple[str, str]] = ()
    contentType: str = "application/json"
    hang: bool = False

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Answer:
        """
        An answer with C{value} serialised as JSON.
        """
        return cls(status, json.dumps(value).encode())


class RecordingEndpoint(Resource):
    """
    A leaf resource that records every request and answers from a queue of
    L{Answer}s, then from L{fallback}, then with L{normalAnswer}.

    @ivar requests: every request received, in order.
    @ivar fallback: the answer once the queue is empty (C{None}: normal).
    """

    isLeaf = True

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self.fallback: Answer | None = None
        self._queue: deque[Answer] = deque()
        self._waiting: list[tuple[int, Deferred[list[RecordedRequest]]]] = []
        self._clock = clock or time.time

    def queue(self, *answers: Answer) -> None:
        """
        Answer the next requests with C{answers}, in order.
        """
        self._queue.extend(answers)

    def whenRequests(self, count: int) -> Deferred[list[RecordedRequest]]:
        """
        Fire (with L{requests}) once C{count} requests have arrived. No
        deadline of its own: add one with C{addTimeout}.
        """
        if len(self.requests) >= count:
            return succeed(self.requests)
        d: Deferred[list[RecordedRequest]] = Deferred()
        self._waiting.append((count, d))
        return d

    def render(self, request: Request) -> bytes | int:
        record = recordRequest(request, self._clock())
        self.requests.append(record)
        answer = self._queue.popleft() if self._queue else self.fallback
        if answer is not None and answer.hang:
            self._notify()
            return NOT_DONE_YET
        if answer is None or answer.body is None:
            answer = self.normalAnswer(record, answer or Answer())
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", answer.contentType.encode())
        request.setHeader(b"cache-control", b"no-store")
        for name, value in answer.headers:
            request.responseHeaders.addRawHeader(name, value)
        self._notify()
        return answer.body or b""

    def _notify(self) -> None:
        ready = [(n, d) for n, d in self._waiting if len(self.requests) >= n]
        self._waiting = [(n, d) for n, d in self._waiting if len(self.requests) < n]
        for _, d in ready:
            d.callback(self.requests)

    def normalAnswer(self, record: RecordedRequest, answer: Answer) -> Answer:
        """
        The answer when none was given: a bare C{answer.status}.
        """
        return Answer(answer.status, b"", answer.headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def fakeJWT(claims: dict[str, Any]) -> str:
    """
    A JWT-shaped token with C{claims} and a fake signature (nobody checks it).
    """
    header = {"alg": "RS256", "typ": "JWT", "kid": "fake-github-key"}
    parts = [
        _b64url(json.dumps(header, separators=(",", ":")).encode()),
        _b64url(json.dumps(claims, separators=(",", ":")).encode()),
        _b64url(b"fake-signature-" + json.dumps(claims).encode()[:16]),
    ]
    return ".".join(parts)


class FakeGitHubOIDC(RecordingEndpoint):
    """
    The runner's ID-token endpoint: C{GET <request URL>&audience=...} with
    C{Authorization: Bearer <request token>} answers C{{"value": <JWT>}}.

    @ivar requestToken: the request token it accepts.
    @ivar refuseRequestToken: refuse every request with 401, as GitHub does
        when the request token is not (or no longer) valid.
    @ivar issued: every ID token issued, in order.
    @ivar upcoming: ID tokens to issue next, in order, before making up
        fake JWTs again.
    @ivar lifetime: the ID tokens' lifetime (their C{exp} claim).
    """

    def __init__(
        self,
        requestToken: str = FAKE_REQUEST_TOKEN,
        clock: Callable[[], float] | None = None,
        subject: str = "repo:example/widgets:ref:refs/heads/main",
        lifetime: int = 300,
    ) -> None:
        super().__init__(clock)
        self.requestToken = requestToken
        self.refuseRequestToken = False
        self.issued: list[str] = []
        self.upcoming: deque[str] = deque()
        self.subject = subject
        self.lifetime = lifetime

    def authorised(self, record: RecordedRequest) -> bool:
        """
        Whether C{record} carries exactly one C{Bearer} request token that
        is ours (the scheme case-insensitive, as RFC 9110 has it).
        """
        values = record.header("authorization")
        if len(values) != 1 or self.refuseRequestToken:
            return False
        scheme, _, token = values[0].partition(" ")
        return scheme.lower() == "bearer" and token == self.requestToken

    def normalAnswer(self, record: RecordedRequest, answer: Answer) -> Answer:
        if not self.authorised(record):
            return Answer.json({"message": "Unauthorized"}, 401)
        if answer.status != 200:
            return Answer.json({"message": "fake failure"}, answer.status)
        token = self.upcoming.popleft() if self.upcoming else self.makeToken(record)
        self.issued.append(token)
        return Answer.json({"count": 1, "value": token})

    def makeToken(self, record: RecordedRequest) -> str:
        """
        A fake JWT for C{record}'s audience, with a unique C{jti}.
        """
        audience = (record.query().get("audience") or [""])[0]
        now = int(datetime.datetime.now(datetime.UTC).timestamp())
        return fakeJWT(
            {
                "iss": GITHUB_ISSUER,
                "aud": audience,
                "sub": self.subject,
                "jti": f"fake-id-token-{len(self.issued) + 1}",
                "iat": now,
                "nbf": now,
                "exp": now + self.lifetime,
            }
        )


class FakeTokenExchange(RecordingEndpoint):
    """
    OpenAI's token endpoint: an RFC 8693 token exchange of a GitHub ID token
    for an access token C{<prefix><n>}.

    @ivar accepted: if set, the subject tokens it accepts (others: 401
        C{invalid_grant}); e.g. a L{FakeGitHubOIDC}'s C{issued} list.
    @ivar expiresIn: the C{expires_in} it answers; C{None} leaves it out.
    @ivar expiresAtOffset: C{expires_at} is now (Unix time, whole seconds)
        plus this; C{None} leaves it out. Starts as the C{expiresIn} given
        to the constructor (set both to change the lifetime).
    @ivar tokenType: the C{token_type} it answers.
    @ivar extra: more fields for the answer (or C{None} values to drop one).
    @ivar issued: every access token issued, in order.
    @ivar upcoming: access tokens to issue next, in order, before going on
        with C{<prefix><n>}.
    """

    def __init__(
        self,
        prefix: str = FAKE_ACCESS_TOKEN_PREFIX,
        expiresIn: int | None = 3600,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(clock)
        self.prefix = prefix
        self.expiresIn = expiresIn
        self.expiresAtOffset: int | None = expiresIn
        self.tokenType = "Bearer"
        self.accepted: Iterable[str] | None = None
        self.extra: dict[str, Any] = {}
        self.issued: list[str] = []
        self.upcoming: deque[str] = deque()

    def normalAnswer(self, record: RecordedRequest, answer: Answer) -> Answer:
        if answer.status != 200:
            return Answer.json(
                {"error": "invalid_request", "error_description": "fake failure"},
                answer.status,
            )
        if self.accepted is not None:
            try:
                subject = record.fields().get("subject_token")
            except (ValueError, AttributeError):
                subject = None
            if subject not in list(self.accepted):
                return Answer.json(
                    {"error": "invalid_grant", "error_description": "bad subject"},
                    401,
                )
        token = (
            self.upcoming.popleft()
            if self.upcoming
            else f"{self.prefix}{len(self.issued) + 1}"
        )
        self.issued.append(token)
        body: dict[str, Any] = {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": self.tokenType,
        }
        if self.expiresIn is not None:
            body["expires_in"] = self.expiresIn
        if self.expiresAtOffset is not None:
            now = int(datetime.datetime.now(datetime.UTC).timestamp())
            body["expires_at"] = now + self.expiresAtOffset
        body.update(self.extra)
        return Answer.json({k: v for k, v in body.items() if v is not None})


class FakeResponsesUpstream(RecordingEndpoint):
    """
    A minimal C{POST /v1/responses} upstream: answers every request with one
    small completed (non-streamed) response, so a test can see which
    C{Authorization} a proxy sent with it.
    """

    text = "Hello from the fake OIDC-mode upstream."

    def normalAnswer(self, record: RecordedRequest, answer: Answer) -> Answer:
        if answer.status != 200:
            return Answer.json(
                {"error": {"message": "fake", "type": "fake", "code": None}},
                answer.status,
            )
        number = len(self.requests)
        return Answer.json(
            {
                "id": f"resp_fake_{number}",
                "object": "response",
                "status": "completed",
                "model": "fake-model",
                "output": [
                    {
                        "id": f"msg_fake_{number}",
                        "type": "message",
                        "role": "assistant",
                        "status": "completed",
                        "content": [
                            {
                                "type": "output_text",
                                "text": self.text,
                                "annotations": [],
                            }
                        ],
                    }
                ],
                "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
            }
        )


# Serving ---------------------------------------------------------------------


@dataclass
class ServedEndpoint:
    """
    A resource being served over HTTPS.

    @ivar host: the address it listens on.
    @ivar port: the port number.
    """

    resource: Resource
    site: RecordingSite
    listeningPort: IListeningPort
    host: str
    port: int
    connections: list[Any] = field(default_factory=list)

    def url(self, path: str = "/", hostname: str | None = None) -> str:
        """
        An https URL of C{path} here (by C{hostname} if given: port 443
        is then left out of it).
        """
        if hostname is not None and self.port == 443:
            return f"https://{hostname}{path}"
        return f"https://{hostname or self.host}:{self.port}{path}"


def _trackedFactory(factory: Any, connections: list[Any]) -> Any:
    original = factory.buildProtocol

    def buildProtocol(addr: Any) -> Any:
        proto = original(addr)
        connections.append(proto)
        return proto

    factory.buildProtocol = buildProtocol
    return factory


def serveHTTPS(
    testCase: TestCase,
    resource: Resource,
    tls: ssl.CertificateOptions,
    port: int = 0,
    interface: str = "127.0.0.1",
    namespace: NetworkNamespace | None = None,
) -> ServedEndpoint:
    """
    Serve C{resource} over TLS on the global reactor, recording raw
    requests; stopped (connections aborted) when the test ends.

    With C{namespace}, the listening socket is made inside that network
    namespace (so C{port} 443 is free to take).
    """
    site = RecordingSite(resource)
    connections: list[Any] = []
    if namespace is None:
        listening = IReactorSSL(reactor).listenSSL(port, site, tls, interface=interface)
    else:
        sock = namespace.listeningSocket(interface, port)
        # adoptStreamPort is typed for a ServerFactory but takes any protocol
        # factory (listenSSL itself wraps the site in this one).
        factory = cast(protocol.ServerFactory, TLSMemoryBIOFactory(tls, False, site))
        try:
            listening = IReactorSocket(reactor).adoptStreamPort(
                sock.fileno(), socket.AF_INET, factory
            )
        finally:
            sock.close()
    trackedFactory = listening.factory if hasattr(listening, "factory") else site
    _trackedFactory(trackedFactory, connections)

    async def stop() -> None:
        stopping = listening.stopListening()
        if stopping is not None:
            await stopping
        for proto in connections:
            transport = getattr(proto, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()

    testCase.addCleanup(stop)
    address = listening.getHost()
    assert isinstance(address, (IPv4Address, IPv6Address)), address
    served = ServedEndpoint(
        resource, site, listening, interface, address.port, connections
    )
    return served


# Network namespace -----------------------------------------------------------


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _inNamespace(fd: int, work: Callable[[], _T]) -> _T:
    """
    Run C{work} in a thread that has joined the network namespace C{fd}
    (setns(2) moves only the calling thread), and return its result.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns: {os.strerror(errno)}")
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, name="netns")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


def namespaceUnavailable() -> str | None:
    """
    Why L{NetworkNamespace} cannot be used here, or C{None} if it can:
    it needs root, C{unshare}, C{nsenter} and C{ip}, and a kernel that lets
    us make network and mount namespaces.
    """
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("unshare", "nsenter", "ip"):
        if _tool(tool) is None:
            return f"needs {tool} (util-linux / iproute2)"
    try:
        probe = subprocess.run(
            [_tool("unshare") or "unshare", "--net", "--mount", "true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if probe.returncode != 0:
        return f"cannot make namespaces: {probe.stderr.decode(errors='replace')}"
    return None


def _tool(name: str) -> str | None:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


class _Holder(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = bytearray()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(f"netns holder ended: {bytes(self.output)!r}")
            )
        self.ended.callback(None)


@dataclass
class HTTPResponse:
    """
    A response read off a raw connection (the server closes it).
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        """
        Every value of header C{name} (case-insensitive).
        """
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]


def parseHTTPResponse(data: bytes) -> HTTPResponse:
    """
    Parse a complete response (C{Content-Length}, chunked or close-framed).
    """
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    ]
    response = HTTPResponse(int(status), reason, headers, rest)
    if any(v.lower() == "chunked" for v in response.header("transfer-encoding")):
        body = bytearray()
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size.split(b";")[0], 16)
            if length == 0:
                break
            body += rest[:length]
            rest = rest[length + 2 :]
        response.body = bytes(body)
    elif response.header("content-length"):
        response.body = rest[: int(response.header("content-length")[0])]
    return response


class _Collect(protocol.Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(bytes(self.data))


@dataclass
class NetworkNamespace:
    """
    A private network namespace with only a loopback interface (up), kept
    alive by a small holder process (C{cat} on a pipe, so it also ends when
    we do).

    Sockets for the global reactor are made inside it from a short-lived
    thread (L{listeningSocket}, L{connectedSocket}); processes are run in
    it with L{argv}.

    @ivar pid: the holder's pid.
    @ivar fd: an open descriptor of the namespace.
    """

    pid: int
    fd: int

    @classmethod
    async def start(cls, testCase: TestCase) -> NetworkNamespace:
        """
        Make one (root only: see L{namespaceUnavailable}); removed when the
        test ends.
        """
        holder = _Holder()
        unshare = _tool("unshare") or "unshare"
        transport = reactor.spawnProcess(
            holder,
            unshare,
            [unshare, "--net", "--", "/bin/sh", "-c", _HOLDER_SCRIPT],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )

        def stop() -> Deferred[None]:
            if not holder.ended.called:
                transport.signalProcess("KILL")
            return holder.ended

        testCase.addCleanup(stop)
        await holder.ready
        fd = os.open(f"/proc/{transport.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        testCase.addCleanup(os.close, fd)
        return cls(transport.pid, fd)

    def listeningSocket(self, interface: str, port: int) -> socket.socket:
        """
        A non-blocking TCP socket listening on C{interface}:C{port} inside
        the namespace.
        """

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((interface, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        return _inNamespace(self.fd, make)

    def connectedSocket(self, host: str, port: int) -> socket.socket:
        """
        A non-blocking TCP socket connected to C{host}:C{port} inside the
        namespace (the connect itself blocks, briefly: it is loopback).
        """

        def make() -> socket.socket:
            sock = socket.create_connection((host, port), timeout=10)
            sock.setblocking(False)
            return sock

        return _inNamespace(self.fd, make)

    def connect(
        self, host: str, port: int, factory: protocol.Factory[Any]
    ) -> protocol.Protocol:
        """
        Connect C{factory}'s protocol to C{host}:C{port} in the namespace,
        on the global reactor, and return that protocol.
        """
        built: list[protocol.Protocol] = []
        original = factory.buildProtocol

        def buildProtocol(addr: Any) -> protocol.Protocol | None:
            proto = original(addr)
            if proto is not None:
                built.append(proto)
            return proto

        factory.buildProtocol = buildProtocol  # type: ignore[method-assign]
        sock = self.connectedSocket(host, port)
        try:
            # Typed for a ServerFactory, but any protocol factory will do.
            IReactorSocket(reactor).adoptStreamConnection(
                sock.fileno(), socket.AF_INET, cast(protocol.ServerFactory, factory)
            )
        finally:
            sock.close()
            factory.buildProtocol = original  # type: ignore[method-assign]
        return built[0]

    async def rawRequest(
        self, port: int, payload: bytes, host: str = "127.0.0.1"
    ) -> HTTPResponse:
        """
        Send C{payload} (a whole request; say C{Connection: close}) to
        C{host}:C{port} in the namespace and parse what comes back before
        the server closes.
        """
        proto = self.connect(
            host, port, protocol.Factory.forProtocol(lambda: _Collect(payload))
        )
        assert isinstance(proto, _Collect)
        return parseHTTPResponse(await proto.done)

    def argv(
        self, command: Sequence[str], binds: Sequence[tuple[str, str]] = ()
    ) -> list[str]:
        """
        An argv that runs C{command} in this network namespace and in a
        private mount namespace of its own, where each C{(source, target)}
        of C{binds} is bind-mounted first (e.g. a hosts file over
        C{/etc/hosts}); nothing outside sees those mounts.
        """
        script = "".join(
            f'mount --bind "${2 * i + 1}" "${2 * i + 2}" && ' for i in range(len(binds))
        )
        shift = f"shift {2 * len(binds)} && " if binds else ""
        return [
            _tool("nsenter") or "nsenter",
            f"--net=/proc/{self.pid}/ns/net",
            "--",
            _tool("unshare") or "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script + shift + 'exec "$@"',
            "sh",
            *(path for pair in binds for path in pair),
            *command,
        ]


_HOLDER_SCRIPT = "ip link set lo up && echo ready && exec cat"


def hostsFile(path: str, names: dict[str, str]) -> str:
    """
    Write a hosts file mapping each host name of C{names} to its address.
    """
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{address} {name}" for name, address in names.items()]
    return _writeFile(path, ("\n".join(lines) + "\n").encode())

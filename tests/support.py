"""
Shared test fixtures: real loopback servers and clients, no mocks.

  - L{makeTestPKI}: a throw-away CA and server certificates made per test;
  - L{startFakeUpstream}: the bundled fake upstream on 127.0.0.1 (HTTP or HTTPS);
  - L{serveOnLoopback}: any test server on 127.0.0.1, closed after the test;
  - L{startProxy}: the real proxy service, in-process, on an ephemeral port;
  - L{httpClient}: a treq client with its own non-persistent pool;
  - L{rawRequest}: the bytes of a request as the proxy's clients send it;
  - L{rawExchange}: send raw bytes on a socket and collect the reply;
  - L{spawnEntryPoint}: run an installed console script or twistd.

Requests made here are what a real client sends (the proxy refuses
anything else on its head): one C{Host} naming loopback, and for
C{POST /v1/responses} a C{Content-Type: application/json}; treq and the
Agent set C{Host} themselves, so treq tests only need the content type
(L{jsonHeaders}, or treq's C{json=}).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import protocol, reactor, ssl, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IPushProducer,
    IReactorSSL,
    ITCPTransport,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from responses_proxy.apikey import AuthHeader
from responses_proxy.options import ProxyOptions
from responses_proxy.service import ProxyApplicationService
from responses_proxy.site import ProxySite
from responses_proxy.tap import makeService
from tests.fakeupstream import Connections, FakeUpstream, makeSite

CANARY_KEY = "sk-canary_7f3c9a1e5b2d4c6e8a0f1b3d5e7a9c2e4f6b8d0a"

_T = TypeVar("_T")


# PKI -------------------------------------------------------------------------


@dataclass
class TestPKI:
    """
    Paths of a test CA and of server certificates it (or nobody) signed.
    """

    directory: str
    caCert: str
    serverCert: str  # for 127.0.0.1 and localhost, signed by the CA
    serverKey: str
    wrongHostCert: str  # signed by the CA, but for another host name
    selfSignedCert: str  # for 127.0.0.1, signed by nobody we trust


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signingKey: CertificateIssuerPrivateKeyTypes,
    sans: list[x509.GeneralName],
    ca: bool = False,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    cert = builder.sign(signingKey, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def makeTestPKI(directory: str) -> TestPKI:
    """
    Make a CA and server certificates in C{directory} (created if needed).
    """
    os.makedirs(directory, exist_ok=True)
    caKey = ec.generate_private_key(ec.SECP256R1())
    serverKey = ec.generate_private_key(ec.SECP256R1())
    caName = _name("responses-api-proxy test CA")
    goodSANs = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    keyPEM = serverKey.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TestPKI(
        directory=directory,
        caCert=_write(
            f"{directory}/ca.pem",
            _certificate(caName, caName, caKey, caKey, [], ca=True),
        ),
        serverCert=_write(
            f"{directory}/server.pem",
            _certificate(_name("localhost"), caName, serverKey, caKey, goodSANs),
        ),
        serverKey=_write(f"{directory}/server-key.pem", keyPEM),
        wrongHostCert=_write(
            f"{directory}/wrong-host.pem",
            _certificate(
                _name("elsewhere.invalid"),
                caName,
                serverKey,
                caKey,
                [x509.DNSName("elsewhere.invalid")],
            ),
        ),
        selfSignedCert=_write(
            f"{directory}/self-signed.pem",
            _certificate(
                _name("localhost"), _name("localhost"), serverKey, serverKey, goodSANs
            ),
        ),
    )


def serverContext(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """
    TLS server options from PEM files.
    """
    with open(certPath, "rb") as f:
        cert = f.read()
    with open(keyPath, "rb") as f:
        key = f.read()
    options: ssl.CertificateOptions = ssl.PrivateCertificate.loadPEM(
        cert + key
    ).options()
    return options


# Servers ---------------------------------------------------------------------


def listenOnLoopback(
    factory: protocol.Factory[Any],
    port: int = 0,
    tls: ssl.CertificateOptions | None = None,
) -> IListeningPort:
    """
    Listen with C{factory} on C{port} (by default an ephemeral one) of
    127.0.0.1, over TLS with C{tls}.
    """
    # The reactor's listen methods are typed for a ServerFactory (a bare one
    # for TCP, which, Factory being invariant, no factory of a protocol
    # subclass is), but take any protocol factory.
    server = cast(protocol.ServerFactory, factory)
    if tls is None:
        return reactor.listenTCP(port, server, interface="127.0.0.1")
    return IReactorSSL(reactor).listenSSL(port, server, tls, interface="127.0.0.1")


def portNumber(port: IListeningPort) -> int:
    """
    The TCP port number C{port} listens on.
    """
    address = port.getHost()
    assert isinstance(address, IPv4Address), address
    return address.port


def serveOnLoopback(
    testCase: TestCase,
    factory: protocol.Factory[Any],
    connections: Connections,
    tls: ssl.CertificateOptions | None = None,
) -> int:
    """
    Listen with C{factory} on an ephemeral port of 127.0.0.1 (over TLS with
    C{tls}); when the test ends, stop listening, abort the C{connections}
    still open and wait until they are closed. Returns the port number.

    C{factory}'s protocols record themselves in C{connections}
    (L{Connections.opened}).
    """
    port = listenOnLoopback(factory, tls=tls)

    async def close() -> None:
        stopping = port.stopListening()
        if stopping is not None:
            await stopping
        await connections.closeAll()

    testCase.addCleanup(close)
    return portNumber(port)


@dataclass
class RunningUpstream:
    """
    A fake upstream listening on loopback.

    @ivar connections: its server-side connections, open or closed.
    """

    resource: FakeUpstream
    port: int
    url: str
    connections: Connections = field(default_factory=Connections)


def startFakeUpstream(
    testCase: TestCase,
    tls: ssl.CertificateOptions | None = None,
    path: str = "/v1/responses",
) -> RunningUpstream:
    """
    Serve a fresh L{FakeUpstream} on 127.0.0.1; closed (connections too)
    when the test ends.
    """
    site, resource = makeSite(reactor)
    number = serveOnLoopback(testCase, site, resource.connections, tls)
    scheme = "http" if tls is None else "https"
    return RunningUpstream(
        resource, number, f"{scheme}://127.0.0.1:{number}{path}", resource.connections
    )


@dataclass
class RunningProxy:
    """
    The proxy service started in-process.
    """

    service: ProxyApplicationService
    port: int
    site: ProxySite

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/responses"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def startProxy(
    testCase: TestCase,
    upstreamURL: str,
    *args: str,
    key: str = CANARY_KEY,
    environ: dict[str, str] | None = None,
) -> RunningProxy:
    """
    Start the real proxy service (options parsed from C{args}) with C{key},
    on an ephemeral loopback port; stopped when the test ends.

    C{environ} is the environment the service reads (C{*_PROXY},
    C{SSL_CERT_FILE}); empty by default, so that the host's proxy settings
    never leak into a test.
    """
    config = ProxyOptions()
    config.parseOptions(["--upstream-url", upstreamURL, *args])
    service = makeService(
        config,
        reactor=reactor,
        credential=AuthHeader(b"Bearer " + key.encode()),
        environ={} if environ is None else environ,
        # GET /shutdown drains, then must not stop the test's reactor.
        stop=lambda: None,
    )
    # With its own reactor, makeService gives the bare proxy service.
    assert isinstance(service, ProxyApplicationService), service
    service.privilegedStartService()
    service.startService()
    listener = service.listener
    assert listener is not None and listener.listeningPort is not None
    site = listener.factory
    assert isinstance(site, ProxySite), site

    async def stop() -> None:
        await service.stopService()
        site.abortConnections()
        await site.whenNoConnections()

    testCase.addCleanup(stop)
    return RunningProxy(service, listener.listeningPort, site)


# Clients ---------------------------------------------------------------------


def httpClient(testCase: TestCase) -> HTTPClient:
    """
    A treq client whose connections are closed after each request, so no
    connection outlives the test.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool))


def jsonHeaders(
    extra: Mapping[str, str] | None = None,
) -> dict[bytes | str, bytes | str]:
    """
    The headers of a treq POST of a JSON body given as bytes: C{Content-Type:
    application/json}, then C{extra}.
    """
    headers: dict[bytes | str, bytes | str] = {"Content-Type": "application/json"}
    headers.update(extra or {})
    return headers


def rawRequest(
    body: bytes | None = b'{"model": "m", "input": "hi"}',
    extra: bytes = b"",
    *,
    method: bytes = b"POST",
    target: bytes = b"/v1/responses",
    host: bytes = b"127.0.0.1",
    contentType: bytes | None = b"application/json",
    close: bool = True,
) -> bytes:
    """
    The bytes of a request as the proxy's clients send it: C{Host:
    127.0.0.1}, and with a C{body} its C{Content-Type} (JSON) and
    C{Content-Length}; C{Connection: close} unless C{close} is false.

    @param extra: more header lines, each ending in CRLF.
    """
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)
    if body is not None:
        if contentType is not None:
            head += b"Content-Type: %s\r\n" % (contentType,)
        head += b"Content-Length: %d\r\n" % (len(body),)
    if close:
        head += b"Connection: close\r\n"
    return head + extra + b"\r\n" + (body or b"")


def tcpTransport(connected: protocol.Protocol) -> ITCPTransport:
    """
    The transport of a connected protocol, as the TCP transport it is here
    (also under TLS, which provides its TCP transport's interfaces):
    L{protocol.Protocol.transport} is typed as a bare, optional ITransport.
    """
    return ITCPTransport(connected.transport)


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()
        self.lostReason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lostReason = reason
        self.done.callback(bytes(self.data))


def rawExchange(
    port: int, payload: bytes, timeout: float = 10.0, halfClose: bool = False
) -> Deferred[bytes]:
    """
    Connect to 127.0.0.1:C{port}, send C{payload} and return everything
    received until the server closes (or C{timeout} passes: then we close).
    """
    connecting: Deferred[_Collect] = protocol.ClientCreator(
        reactor, _Collect
    ).connectTCP("127.0.0.1", port)

    def connected(proto: _Collect) -> Deferred[bytes]:
        transport = tcpTransport(proto)
        transport.write(payload)
        if halfClose:
            transport.loseWriteConnection()
        call = reactor.callLater(timeout, transport.abortConnection)

        def finished(data: bytes) -> bytes:
            if call.active():
                call.cancel()
            return data

        return proto.done.addCallback(finished)

    return connecting.addCallback(connected)


def waitFor(
    predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.02
) -> Deferred[_T]:
    """
    Poll C{predicate} until it returns a true value (fires with it) or
    C{timeout} passes (fails with AssertionError).
    """
    deadline = reactor.seconds() + timeout

    async def poll() -> _T:
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {predicate}"
                )
            await task.deferLater(reactor, interval)

    return Deferred.fromCoroutine(poll())


# Processes -------------------------------------------------------------------


def scriptPath(name: str) -> str:
    """
    The installed console script C{name} next to this Python.
    """
    return os.path.join(sysconfig.get_path("scripts"), name)


@dataclass
class ProcessResult:
    """
    How a spawned process ended, and everything it wrote.
    """

    exitCode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes


class OutputCapture(protocol.ProcessProtocol):
    """
    Feed a process C{stdin} (unless L{None}), then close it; collect what it
    writes; C{ended} fires with a L{ProcessResult}.
    """

    transport: IProcessTransport

    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[ProcessResult] = Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if reason.check(ProcessDone):
            code = 0
        elif not reason.check(ProcessTerminated):
            code = None
        self.ended.callback(ProcessResult(code, sig, bytes(self.out), bytes(self.err)))


@dataclass
class SpawnedProcess:
    """
    A running entry point: its pid, output so far and the Deferred of its end.
    """

    pid: int
    capture: OutputCapture

    @property
    def ended(self) -> Deferred[ProcessResult]:
        return self.capture.ended

    def signal(self, name: str) -> None:
        self.capture.transport.signalProcess(name)


def childEnvironment(**extra: str) -> dict[str, str]:
    """
    The environment for spawned entry points: ours, plus C{extra}.
    """
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


def spawnEntryPoint(
    testCase: TestCase,
    argv: list[str],
    stdin: bytes | None = b"",
    env: dict[str, str] | None = None,
    uid: int | None = None,
    gid: int | None = None,
    path: str | None = None,
) -> SpawnedProcess:
    """
    Spawn C{argv} (argv[0] resolved among the installed scripts); the
    process is killed at cleanup if it is still running.
    """
    executable = argv[0] if os.path.isabs(argv[0]) else scriptPath(argv[0])
    capture = OutputCapture(stdin)
    transport = reactor.spawnProcess(
        capture,
        executable,
        [executable, *argv[1:]],
        env=childEnvironment() if env is None else env,
        uid=uid,
        gid=gid,
        path=path,
    )

    def cleanup() -> Deferred[ProcessResult] | None:
        if not capture.ended.called:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
            return capture.ended
        return None

    testCase.addCleanup(cleanup)
    return SpawnedProcess(transport.pid, capture)


def readServerInfo(path: str) -> dict[str, Any] | None:
    """
    The parsed server-info file, or None while it does not exist yet.
    """
    try:
        with open(path, "rb") as f:
            info: dict[str, Any] = json.loads(f.read())
    except FileNotFoundError:
        return None
    return info


# Raw HTTP responses -----------------------------------------------------------


@dataclass
class RawResponse:
    """
    One HTTP/1.1 response parsed from raw bytes.

    @ivar complete: the body ended where its framing says it ends (for a
        chunked body: the terminating C{0\\r\\n\\r\\n} chunk was received).
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool
    chunked: bool

    def header(self, name: bytes) -> list[bytes]:
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return bytes(body), False
        size = int(data[:end].split(b";", 1)[0], 16)
        if size == 0:
            return bytes(body), data[end + 2 :].startswith(b"\r\n")
        chunk = data[end + 2 : end + 2 + size]
        body += chunk
        if len(chunk) < size:
            return bytes(body), False
        data = data[end + 2 + size + 2 :]


def parseRawResponse(data: bytes) -> RawResponse:
    """
    Parse the first response in C{data}, skipping interim C{1xx} responses.
    """
    while True:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        if 100 <= status < 200:
            data = rest
            continue
        break
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(b":") for line in lines[1:])
    ]
    response = RawResponse(status, headers, rest, True, False)
    if any(v.lower() == b"chunked" for v in response.header(b"transfer-encoding")):
        response.chunked = True
        response.body, response.complete = _dechunk(rest)
    elif response.header(b"content-length"):
        length = int(response.header(b"content-length")[0])
        response.body = rest[:length]
        response.complete = len(rest) >= length
    return response


# Interactive raw sockets ------------------------------------------------------


class RawConnection(protocol.Protocol):
    """
    A raw client connection driven step by step by a test.

    @ivar data: everything received so far.
    @ivar closed: fires with C{None} when the connection is lost.
    @ivar lostReason: the L{Failure} the connection was lost with.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: Deferred[None] = Deferred()
        self.lostReason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lostReason = reason
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        """
        Write C{data} to the server.
        """
        tcpTransport(self).write(data)

    def abort(self) -> None:
        """
        Close the connection at once, discarding what is not sent yet.
        """
        tcpTransport(self).abortConnection()

    def waitForBytes(self, marker: bytes, timeout: float = 10.0) -> Deferred[bool]:
        """
        Wait (with a deadline) until C{marker} was received.
        """
        return waitFor(lambda: marker in self.data, timeout)

    def waitForResponse(self, timeout: float = 10.0) -> Deferred[bool]:
        """
        Wait (with a deadline) until a complete response was received,
        whatever its framing (chunked or C{Content-Length}).
        """

        def complete() -> bool:
            if b"\r\n\r\n" not in self.data:
                return False
            return parseRawResponse(bytes(self.data)).complete

        return waitFor(complete, timeout)

    def stopReading(self) -> None:
        """
        Stop reading from the socket, so the server's writes back up.
        """
        IPushProducer(self.transport).pauseProducing()

    def startReading(self) -> None:
        """
        Read from the socket again.
        """
        IPushProducer(self.transport).resumeProducing()


def connectRaw(testCase: TestCase, port: int) -> Deferred[RawConnection]:
    """
    Connect a L{RawConnection} to 127.0.0.1:C{port}; aborted (and waited
    for) at cleanup if still open.
    """
    d: Deferred[RawConnection] = protocol.ClientCreator(
        reactor, RawConnection
    ).connectTCP("127.0.0.1", port)

    def connected(conn: RawConnection) -> RawConnection:
        def cleanup() -> Deferred[None] | None:
            if conn.closed.called:
                return None
            conn.abort()
            return conn.closed

        testCase.addCleanup(cleanup)
        return conn

    return d.addCallback(connected)


def bareAgent() -> Agent:
    """
    A bare Agent (no gzip decoding, no cookie jar, no redirects) whose
    connections close after each request.
    """
    return Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

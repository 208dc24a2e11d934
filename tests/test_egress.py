# -*- test-case-name: tests.test_egress -*-
"""
Egress through a forward proxy: HTTPS upstreams through a C{CONNECT}
tunnel (TLS checked against the upstream, key inside the tunnel), plain
HTTP in absolute form, C{NO_PROXY}, failures; and upstream connection reuse.

The egress proxies are small Twisted servers written here that record what
they were asked and every byte they relayed.

Integration tests (loopback); L{EnvironmentTests} are unit tests (in
memory).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientCreator, Factory, Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import proxy as webproxy
from twisted.web.http import HTTPFactory

from responses_proxy.egress import (
    BadProxyURL,
    EgressProxy,
    bypassesProxy,
    proxyFromEnvironment,
)
from tests.fakeupstream import Connections
from tests.support import (
    CANARY_KEY,
    RunningUpstream,
    httpClient,
    makeTestPKI,
    rawExchange,
    rawRequest,
    serveOnLoopback,
    serverContext,
    startFakeUpstream,
    startProxy,
    tcpTransport,
)

if TYPE_CHECKING:
    from twisted.web.http import _GenericHTTPChannelProtocol

# A fast, non-streamed answer from the fake upstream.
JSON: dict[bytes | str, bytes | str] = {
    "x-fake-scenario": "json",
    "content-type": "application/json",
}


# A CONNECT proxy ---------------------------------------------------------------


@dataclass
class ConnectProxyState:
    """
    What the CONNECT proxy saw; C{answer} set means refuse with it.
    """

    requests: list[tuple[bytes, bytes, dict[bytes, bytes]]] = field(
        default_factory=list
    )
    relayed: bytearray = field(default_factory=bytearray)
    hosts: dict[bytes, str] = field(default_factory=dict)
    answer: bytes | None = None
    silent: bool = False
    relays: list[Deferred[None]] = field(default_factory=list)
    protocols: Connections = field(default_factory=Connections)


class _Relay(Protocol):
    def __init__(self, client: _ConnectProxyProtocol) -> None:
        self.client = client
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        tcpTransport(self.client).write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        tcpTransport(self.client).loseConnection()
        self.lost.callback(None)


class _ConnectProxyProtocol(Protocol):
    def __init__(self, state: ConnectProxyState) -> None:
        self.state = state
        self.buffer = b""
        self.relay: _Relay | None = None
        self.connecting = False
        self._lost: Deferred[None] | None = None

    def connectionMade(self) -> None:
        self._lost = self.state.protocols.opened(self)

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.state.relayed += data
            tcpTransport(self.relay).write(data)
            return
        self.buffer += data
        if self.connecting or b"\r\n\r\n" not in self.buffer:
            return
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        headers = {k.lower(): v for k, v in headers.items()}
        self.state.requests.append((method, target, headers))
        if self.state.silent:
            return
        transport = tcpTransport(self)
        if self.state.answer is not None or method != b"CONNECT":
            transport.write(self.state.answer or b"HTTP/1.1 405 No\r\n\r\n")
            transport.loseConnection()
            return
        host, port = target.rsplit(b":", 1)
        address = self.state.hosts.get(host, host.decode())
        self.connecting = True
        connecting: Deferred[_Relay] = ClientCreator(reactor, _Relay, self).connectTCP(
            address, int(port)
        )
        connecting.addCallbacks(self.relayConnected, self.unreachable)

    def relayConnected(self, relay: _Relay) -> None:
        self.state.relays.append(relay.lost)
        self.relay = relay
        tcpTransport(self).write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.buffer:
            self.state.relayed += self.buffer
            tcpTransport(relay).write(self.buffer)

    def unreachable(self, failure: Failure) -> None:
        transport = tcpTransport(self)
        transport.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.relay is not None:
            tcpTransport(self.relay).loseConnection()
        if self._lost is not None:
            self._lost.callback(None)


def startConnectProxy(testCase: TestCase) -> tuple[int, ConnectProxyState]:
    """
    A CONNECT-only proxy on 127.0.0.1; closed, relays too, after the test.
    """
    state = ConnectProxyState()
    # Cleanups run last first: this one after the server's own.
    testCase.addCleanup(lambda: gatherResults(state.relays))
    factory = Factory.forProtocol(lambda: _ConnectProxyProtocol(state))
    return serveOnLoopback(testCase, factory, state.protocols), state


# A plain HTTP forward proxy (absolute-form requests) --------------------------

# What the forward proxy forwarded: method, URI and headers of each request.
Seen = list[tuple[bytes, bytes, dict[bytes, bytes]]]


class _RecordingProxyRequest(webproxy.ProxyRequest):
    channel: _RecordingProxy

    def process(self) -> None:
        self.channel.recorder().seen.append(
            (self.method, self.uri, dict(self.getAllHeaders()))
        )
        super().process()


class _RecordingProxy(webproxy.Proxy):
    requestFactory = _RecordingProxyRequest
    _lost: Deferred[None] | None = None

    def recorder(self) -> _RecordingProxyFactory:
        """
        The factory that made this channel, which keeps the record.
        """
        assert isinstance(self.factory, _RecordingProxyFactory)
        return self.factory

    def connectionMade(self) -> None:
        super().connectionMade()
        self._lost = self.recorder().connections.opened(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if self._lost is not None:
            self._lost.callback(None)


class _RecordingProxyFactory(HTTPFactory):
    # Twisted types HTTPFactory.protocol as a factory of its generic (HTTP/1.1
    # or HTTP/2) wrapper, but setting it to an HTTPChannel subclass is its
    # documented way to choose the channel.
    protocol = cast("Callable[[], _GenericHTTPChannelProtocol]", _RecordingProxy)

    def __init__(self) -> None:
        super().__init__()
        self.seen: Seen = []
        self.connections = Connections()


def startHTTPProxy(testCase: TestCase) -> tuple[int, Seen]:
    """
    Twisted's own forward proxy, recording each request it forwards.
    """
    factory = _RecordingProxyFactory()
    return serveOnLoopback(testCase, factory, factory.connections), factory.seen


def closedPort() -> int:
    """
    A loopback port nothing listens on (bound, then released).
    """
    port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    port.stopListening()
    return address.port


class EgressTests(TestCase):
    """
    The proxy reaches its upstream through the egress proxy the environment
    names, or directly when C{NO_PROXY} says so.
    """

    def setUp(self) -> None:
        self.pki = makeTestPKI(self.mktemp())

    def tlsUpstream(self, cert: str | None = None) -> RunningUpstream:
        """
        A fake upstream over TLS, with C{cert} (by default one for
        127.0.0.1 and localhost).
        """
        return startFakeUpstream(
            self, tls=serverContext(cert or self.pki.serverCert, self.pki.serverKey)
        )

    async def post(self, url: str) -> tuple[int, bytes]:
        """
        POST a JSON body to C{url}; the answer's status and body.
        """
        response = await httpClient(self).post(url, data=b"{}", headers=JSON)
        body = await treq.content(response)
        return response.code, body

    async def test_httpsThroughConnect(self) -> None:
        """
        With C{HTTPS_PROXY} set, the upstream is reached through a CONNECT
        tunnel to its host and port; the key reaches the upstream, and the
        egress proxy saw neither the key nor an Authorization header.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        url = f"https://localhost:{upstream.port}/v1/responses"
        proxy = startProxy(
            self,
            url,
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        [(method, target, headers)] = state.requests
        self.assertEqual(
            (method, target), (b"CONNECT", b"localhost:%d" % upstream.port)
        )
        self.assertEqual(headers, {b"host": b"localhost:%d" % upstream.port})
        [seen] = upstream.resource.requests
        self.assertEqual(
            seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
        )
        self.assertTrue(state.relayed)
        self.assertNotIn(CANARY_KEY.encode(), bytes(state.relayed))

    async def test_tlsVerifiedAgainstUpstreamHost(self) -> None:
        """
        The certificate is checked against the upstream's name, not the
        egress proxy's: an upstream named C{elsewhere.invalid} (which only
        the egress proxy can resolve) with a certificate for that name and
        not for 127.0.0.1 works through a proxy at 127.0.0.1.
        """
        upstream = self.tlsUpstream(self.pki.wrongHostCert)
        proxyPort, state = startConnectProxy(self)
        state.hosts[b"elsewhere.invalid"] = "127.0.0.1"
        proxy = startProxy(
            self,
            f"https://elsewhere.invalid:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"https_proxy": f"127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        self.assertEqual(state.requests[0][1], b"elsewhere.invalid:%d" % upstream.port)

    async def test_wrongCertificateThroughTunnel(self) -> None:
        """
        A certificate for another host, presented through the tunnel, is
        refused: 502 C{upstream_tls_error}, and nothing reached the upstream.
        """
        upstream = self.tlsUpstream(self.pki.wrongHostCert)
        proxyPort, state = startConnectProxy(self)
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_tls_error")
        self.assertEqual(len(state.requests), 1)
        self.assertEqual(upstream.resource.requests, [])

    async def test_noProxyBypasses(self) -> None:
        """
        An upstream host in C{NO_PROXY} is reached directly.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        proxy = startProxy(
            self,
            upstream.url,
            "--upstream-ca",
            self.pki.caCert,
            environ={
                "HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}",
                "NO_PROXY": "example.com, 127.0.0.1",
            },
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        self.assertEqual(state.requests, [])
        self.assertEqual(len(upstream.resource.requests), 1)

    async def test_proxyDown(self) -> None:
        """
        An egress proxy that is not listening gives a clean JSON 502.
        """
        upstream = self.tlsUpstream()
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{closedPort()}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "egress_proxy_error")
        self.assertEqual(upstream.resource.requests, [])

    async def test_connectRefused(self) -> None:
        """
        An egress proxy that answers CONNECT with 403 gives a clean JSON 502.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        state.answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"ALL_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "egress_proxy_error")

    async def test_connectUnanswered(self) -> None:
        """
        An egress proxy that never answers CONNECT counts as a connect
        timeout (C{--connect-timeout}): 504, and the tunnel is closed.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        state.silent = True
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            "--connect-timeout",
            "0.3",
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 504)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_timeout")
        [(_, lost)] = state.protocols
        await lost

    async def test_clientGoneDuringConnect(self) -> None:
        """
        A client that leaves while the tunnel is being set up takes the
        tunnel with it.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        state.silent = True
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        await rawExchange(proxy.port, rawRequest(b"{}", close=False), timeout=0.3)
        self.assertEqual(len(state.requests), 1)
        [(_, lost)] = state.protocols
        await lost

    async def test_proxyCredentials(self) -> None:
        """
        Credentials in the proxy URL become C{Proxy-Authorization: Basic} on
        the CONNECT request, percent-decoded.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://alice:s%40cret@127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        expected = b"Basic " + base64.b64encode(b"alice:s@cret")
        self.assertEqual(state.requests[0][2][b"proxy-authorization"], expected)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.header(b"proxy-authorization"), [])

    async def test_tunnelReused(self) -> None:
        """
        Sequential requests share one tunnel: one CONNECT for ten requests.
        """
        upstream = self.tlsUpstream()
        proxyPort, state = startConnectProxy(self)
        proxy = startProxy(
            self,
            f"https://localhost:{upstream.port}/v1/responses",
            "--upstream-ca",
            self.pki.caCert,
            environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxyPort}"},
        )
        for _ in range(10):
            code, body = await self.post(proxy.url)
            self.assertEqual(code, 200, body)
        self.assertEqual(len(state.requests), 1)
        self.assertEqual(len(upstream.resource.requests), 10)

    async def test_plainHTTPThroughProxy(self) -> None:
        """
        An http:// upstream goes to C{HTTP_PROXY} in absolute form, with
        C{Proxy-Authorization}; the proxy sees the key (documented).
        """
        upstream = startFakeUpstream(self)
        proxyPort, seen = startHTTPProxy(self)
        proxy = startProxy(
            self,
            upstream.url,
            environ={"HTTP_PROXY": f"http://bob:pw@127.0.0.1:{proxyPort}"},
        )
        code, body = await self.post(proxy.url)
        self.assertEqual(code, 200, body)
        [(method, uri, headers)] = seen
        self.assertEqual((method, uri), (b"POST", upstream.url.encode()))
        self.assertEqual(
            headers[b"proxy-authorization"], b"Basic " + base64.b64encode(b"bob:pw")
        )
        self.assertEqual(headers[b"authorization"], f"Bearer {CANARY_KEY}".encode())
        self.assertEqual(len(upstream.resource.requests), 1)


class ConnectionReuseTests(TestCase):
    """
    The upstream pool keeps connections alive between requests.
    """

    async def reuse(self, tls: bool) -> None:
        """
        100 sequential requests through the proxy, over TLS or not, open at
        most 3 upstream connections.
        """
        pki = makeTestPKI(self.mktemp())
        context = serverContext(pki.serverCert, pki.serverKey) if tls else None
        upstream = startFakeUpstream(self, tls=context)
        proxy = startProxy(self, upstream.url, "--upstream-ca", pki.caCert)
        client = httpClient(self)
        for _ in range(100):
            response = await client.post(proxy.url, data=b"{}", headers=JSON)
            await treq.content(response)
            self.assertEqual(response.code, 200)
        self.assertEqual(len(upstream.resource.requests), 100)
        self.assertLessEqual(len(upstream.connections), 3)

    async def test_plainHTTP(self) -> None:
        """
        100 sequential requests over HTTP open at most a handful of upstream
        connections.
        """
        await self.reuse(tls=False)

    async def test_https(self) -> None:
        """
        The same over HTTPS: no TLS handshake per request.
        """
        await self.reuse(tls=True)


class EnvironmentTests(SynchronousTestCase):
    """
    Which proxy, if any, the environment names for the upstream.
    """

    def test_precedence(self) -> None:
        """
        Upper case before lower case, the scheme's own variable before
        C{ALL_PROXY}; empty values count as unset.
        """
        env = {
            "HTTPS_PROXY": "",
            "https_proxy": "http://lower:1",
            "ALL_PROXY": "http://all:2",
            "HTTP_PROXY": "http://plain:3",
        }

        def named(scheme: str) -> EgressProxy:
            proxy = proxyFromEnvironment(scheme, "h", env)
            assert proxy is not None, scheme
            return proxy

        self.assertEqual(named("https").host, "lower")
        self.assertEqual(named("http").host, "plain")
        del env["https_proxy"]
        self.assertEqual(named("https").port, 2)
        self.assertIsNone(proxyFromEnvironment("https", "h", {}))

    def test_cgiIgnoresUpperCaseHTTPProxy(self) -> None:
        """
        Under CGI (C{REQUEST_METHOD} set) C{HTTP_PROXY} may come from a
        request header, so only C{http_proxy} counts ("httpoxy").
        """
        env = {"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://evil:1"}
        self.assertIsNone(proxyFromEnvironment("http", "h", env))

    def test_noProxyForms(self) -> None:
        """
        C{NO_PROXY} entries: names match themselves and subdomains, a
        leading dot is optional, IPs and CIDR blocks, ports ignored, C{*}.
        """
        self.assertTrue(bypassesProxy("api.openai.com", "openai.com"))
        self.assertTrue(bypassesProxy("api.openai.com", ".openai.com"))
        self.assertTrue(bypassesProxy("openai.com", "foo, openai.com:443"))
        self.assertFalse(bypassesProxy("notopenai.com", "openai.com"))
        self.assertTrue(bypassesProxy("10.1.2.3", "10.0.0.0/8"))
        self.assertTrue(bypassesProxy("::1", "[::1]"))
        self.assertFalse(bypassesProxy("10.1.2.3", "example.com"))
        self.assertTrue(bypassesProxy("anything", "*"))
        self.assertFalse(bypassesProxy("anything", ""))

    def test_proxyURLs(self) -> None:
        """
        C{host:port} means http; credentials are kept out of C{repr}; other
        schemes are refused rather than bypassed.
        """
        proxy = EgressProxy.fromString("u:p@proxy.example:3128", "HTTPS_PROXY")
        self.assertEqual((proxy.host, proxy.port), ("proxy.example", 3128))
        self.assertNotIn("Basic", repr(proxy))
        self.assertNotIn("u:p", proxy.describe())
        self.assertEqual(EgressProxy.fromString("http://p").port, 80)
        for bad in ["socks5://p:1080", "https://p:443", "http://:8080"]:
            self.assertRaises(BadProxyURL, EgressProxy.fromString, bad)

"""
An upstream's connection habits, over real sockets: it closes idle
keep-alive connections on its own timer (the proxy retries, once, a request
a reused connection lost before answering), it may say how long it keeps
them (C{Keep-Alive: timeout=N}, honoured), and it may send an answer whose
head is too large or whose status is not a status (refused with a 502).

Integration tests (loopback: the in-process proxy, twisted.web upstreams
with an idle timeout, and raw upstreams that write hostile heads).
"""

from __future__ import annotations

import json
from typing import Any, cast

import treq
from twisted.internet import protocol, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import startProxy


class _Answer(Resource):
    """
    A small complete JSON answer, with the number of the connection it was
    served on.
    """

    isLeaf = True

    def __init__(self, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.headers = list(headers)
        self.requests = 0

    def render(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        for name, value in self.headers:
            request.setHeader(name, value)
        return json.dumps({"id": "resp", "model": "m", "output": []}).encode()


class _CountingSite(Site):
    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


def _listen(testCase: TestCase, factory: Any) -> str:
    """
    Serve C{factory} on an ephemeral loopback port; its upstream URL.
    """
    # Twisted's annotations want a ServerFactory and give an IAddress.
    port: Any = cast(Any, reactor).listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/v1/responses"


async def _post(url: str) -> int:
    response = await treq.post(url, json={"model": "m"}, persistent=False)
    await treq.content(response)
    return int(response.code)


class IdleCloseTests(TestCase):
    """
    The upstream closes idle connections 200 ms after each answer.
    """

    timeout = 120

    async def test_noErrorsAcrossTheRace(self) -> None:
        """
        Forty requests spaced around the upstream's idle timeout all get
        200: a request that met a connection the upstream had just closed is
        sent again on a fresh connection (and logged), never answered 502.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        site = _CountingSite(_Answer(), timeout=0.2)
        site.log = lambda request: None  # type: ignore[method-assign]
        proxy = startProxy(self, _listen(self, site))
        statuses = []
        for number in range(40):
            statuses.append(await _post(proxy.url))
            # Around the upstream's 200 ms: some requests cross its close.
            await deferLater(reactor, 0.19 + 0.002 * (number % 10), lambda: None)
        self.assertEqual(statuses, [200] * 40)
        retries = [e for e in events if e.get("retry")]
        # Each retry is logged; none was needed more than once per request.
        self.assertLessEqual(len(retries), 40)
        self.assertLessEqual(site.connections, 40 + len(retries))


class KeepAliveTests(TestCase):
    """
    The upstream says how long it keeps idle connections.
    """

    timeout = 60

    async def test_keepAliveTimeoutHonoured(self) -> None:
        """
        With C{Keep-Alive: timeout=1} the proxy closes its idle connection
        itself before the upstream would (after 0.5 s): a request after
        0.7 s opens a new connection and needs no retry.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        resource = _Answer([(b"keep-alive", b"timeout=1, max=100")])
        site = _CountingSite(resource, timeout=1)
        site.log = lambda request: None  # type: ignore[method-assign]
        proxy = startProxy(self, _listen(self, site))
        self.assertEqual(await _post(proxy.url), 200)
        self.assertEqual(await _post(proxy.url), 200)
        self.assertEqual(site.connections, 1)
        await deferLater(reactor, 0.7, lambda: None)
        self.assertEqual(await _post(proxy.url), 200)
        self.assertEqual(site.connections, 2)
        self.assertEqual([e for e in events if e.get("retry")], [])


class _RawUpstream(protocol.Protocol):
    """
    Answers every request with a fixed head and body, byte for byte.
    """

    answer = b""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(self.answer)  # type: ignore[union-attr]


def _rawUpstream(testCase: TestCase, answer: bytes) -> str:
    answering = type("Answering", (_RawUpstream,), {"answer": answer})
    return _listen(testCase, protocol.Factory.forProtocol(answering))


class BadHeadTests(TestCase):
    """
    Answers the proxy must not relay.
    """

    async def assertRefused(self, answer: bytes, why: str) -> None:
        proxy = startProxy(self, _rawUpstream(self, answer))
        response = await treq.post(proxy.url, json={"model": "m"}, persistent=False)
        body = json.loads(await treq.content(response))
        self.assertEqual(response.code, 502)
        self.assertEqual(body["error"]["code"], "upstream_bad_response")
        self.assertIn(why, body["error"]["message"])
        # Nothing of the answer's head reached the client.
        self.assertIsNone(response.headers.getRawHeaders(b"x-flood"))

    async def test_twentyThousandHeaders(self) -> None:
        """
        An answer with 20,000 headers: 502, never relayed.
        """
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Flood: a\r\n" * 20_000
        await self.assertRefused(head + b"Content-Length: 0\r\n\r\n", "head")

    async def test_oneHugeHeader(self) -> None:
        """
        A head over 16 KiB in one header: 502.
        """
        head = b"HTTP/1.1 200 OK\r\nX-Flood: " + b"a" * 17_000 + b"\r\n"
        await self.assertRefused(head + b"Content-Length: 0\r\n\r\n", "larger than")

    async def test_weirdStatus(self) -> None:
        """
        C{HTTP/1.1 999 Weird}: 502, not relayed as is.
        """
        answer = b"HTTP/1.1 999 Weird\r\nX-Flood: 1\r\nContent-Length: 2\r\n\r\n{}"
        await self.assertRefused(answer, "status 999")

    async def test_interimThenFinal(self) -> None:
        """
        An interim 103 before the answer is fine: the answer is relayed.
        """
        proxy = startProxy(
            self,
            _rawUpstream(
                self,
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            ),
        )
        response = await treq.post(proxy.url, json={"model": "m"}, persistent=False)
        self.assertEqual((response.code, await treq.content(response)), (200, b"{}"))

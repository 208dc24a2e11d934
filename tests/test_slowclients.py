# -*- test-case-name: tests.test_slowclients -*-
"""
Integration tests (loopback) for slow and vanishing clients, on real
sockets and the global reactor, for what only real sockets show: hundreds
of unfinished requests do not starve a good client and leak no descriptor,
a client that leaves closes the pooled upstream connection it held, and a
client whose socket fills up (the kernel's buffers, the transport pausing
the channel) is cut.

The logic itself (request deadline, stalled-reader cut, slow readers and
slow upstreams never cut, cancellation when the client leaves) is tested
with a L{Clock} in C{tests.test_site}. Nothing here asserts a wall-clock
window: waits are on Deferreds, or polls with a generous deadline.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import SkipTest, TestCase

from tests.memory import httpRequest
from tests.support import (
    parseRawResponse,
    rawExchange,
    startFakeUpstream,
    startProxy,
    waitFor,
)


def openFDs() -> int:
    """
    How many file descriptors this (test) process has open.
    """
    return len(os.listdir("/proc/self/fd"))


def scenario(name: str, **headers: str) -> bytes:
    """
    A C{POST /v1/responses} asking the fake upstream for scenario C{name}
    (C{headers} are more C{x-fake-*} settings), closing the connection after.
    """
    fake = [(b"X-Fake-Scenario", name.encode())]
    fake += [
        (f"X-Fake-{key.replace('_', '-')}".encode(), value.encode())
        for key, value in headers.items()
    ]
    return httpRequest(headers=fake, close=True)


class _Client(protocol.Protocol):
    """
    A raw client that records what it got and when the server closed the
    connection.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.isClosed = False
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.isClosed = True
        self.closed.callback(None)


async def connect(testCase: TestCase, port: int) -> _Client:
    """
    Connect a L{_Client} to C{port}; aborted at cleanup if still open.
    """
    creator = protocol.ClientCreator(reactor, _Client)
    client: _Client = await creator.connectTCP("127.0.0.1", port)

    def cleanup() -> Deferred[None] | None:
        if client.isClosed:
            return None
        transport: Any = client.transport
        transport.abortConnection()
        return client.closed

    testCase.addCleanup(cleanup)
    return client


class ManySlowClientsTests(TestCase):
    """
    Hundreds of slow connections at once do not starve a good client.
    """

    timeout = 60

    async def test_fiveHundredSlowClients(self) -> None:
        """
        With 500 connections holding unfinished requests, a well-behaved
        client is served while all 500 are still open; then the request
        timeout closes all 500, and no descriptor is left behind.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 1400  # both ends of each connection live in this process
        if soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise SkipTest(f"RLIMIT_NOFILE hard limit {hard} < {need}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "3")
        # Count after a first exchange, which opens what stays open (the
        # pooled upstream connection, the reactor's lazily made pipes).
        await rawExchange(proxy.port, scenario("json"))
        before = openFDs()
        slow: list[_Client] = []
        for _batch in range(5):
            batch = await DeferredList(
                [Deferred.fromCoroutine(connect(self, proxy.port)) for _ in range(100)],
                fireOnOneErrback=True,
            )
            for _, client in batch:
                assert client.transport is not None
                client.transport.write(b"POST /v1/responses HTTP/1.1\r\nX-A: b")
                slow.append(client)
        self.assertEqual(sum(not c.isClosed for c in slow), 500)
        data = await rawExchange(proxy.port, scenario("json"), timeout=30)
        response = parseRawResponse(data)
        self.assertEqual((response.status, response.complete), (200, True))
        self.assertEqual([c for c in slow if c.isClosed], [])
        await waitFor(lambda: all(c.isClosed for c in slow), timeout=30)
        self.assertEqual(len(upstream.resource.requests), 2)
        # Both ends of all 500 connections are closed: no descriptor leaked.
        await waitFor(lambda: openFDs() <= before, timeout=10)


class ClientGoneTests(TestCase):
    """
    A client that goes away releases the pooled upstream connection it was
    using, long before the upstream would have ended the exchange itself.
    """

    timeout = 60

    async def assertUpstreamClosedWhenClientLeaves(
        self, name: str, marker: bytes
    ) -> None:
        """
        After a first exchange (which leaves an idle upstream connection in
        the proxy's pool), a request for C{name}, which the upstream holds
        open for 30 s, is sent on that reused connection; once the client
        has C{marker}, it leaves; the upstream connection closes well
        within the 30 s.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        data = await rawExchange(proxy.port, scenario("json"))
        self.assertEqual(parseRawResponse(data).status, 200)
        client = await connect(self, proxy.port)
        assert client.transport is not None
        client.transport.write(scenario(name, delay_ms="30000"))
        await waitFor(lambda: len(upstream.resource.requests) == 2)
        await waitFor(lambda: marker in client.received)
        [(_, upstreamLost)] = upstream.connections
        self.assertFalse(upstreamLost.called)
        transport: Any = client.transport
        transport.abortConnection()
        await waitFor(lambda: upstreamLost.called, timeout=10)

    async def test_clientLeavesBeforeHeaders(self) -> None:
        """
        The upstream has not answered yet: the pending upstream request is
        cancelled and its connection closed, never handed to the next
        request with an answer still to come.
        """
        await self.assertUpstreamClosedWhenClientLeaves("silent", b"")

    async def test_clientLeavesMidStream(self) -> None:
        """
        The upstream has sent headers and part of a stream it keeps open:
        its connection is closed.
        """
        await self.assertUpstreamClosedWhenClientLeaves("stall", b": stalling")


class StalledReaderTests(TestCase):
    """
    A client that stops reading its answer cannot hold the connection, and
    the upstream connection behind it, for ever.
    """

    timeout = 60

    async def test_clientThatStopsReadingIsCut(self) -> None:
        """
        The client asks for a 64 MiB answer and reads none of it. Once the
        socket buffers are full and nothing has drained for one
        C{--request-timeout} (1 s), the proxy aborts the client connection,
        which closes the upstream connection too; the client, reading at
        last, finds a visibly incomplete answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        client = await connect(self, proxy.port)
        transport: Any = client.transport
        transport.pauseProducing()  # read nothing
        transport.write(scenario("big", bytes=str(64 << 20)))
        await waitFor(lambda: upstream.connections, timeout=10)
        [(_, upstreamLost)] = upstream.connections
        await waitFor(lambda: upstreamLost.called, timeout=30)
        transport.resumeProducing()
        await client.closed
        response = parseRawResponse(bytes(client.received))
        self.assertEqual(response.status, 200)
        self.assertFalse(response.complete)

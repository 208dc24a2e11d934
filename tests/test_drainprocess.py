"""
Restarts that finish streams: a real proxy process with a stream in flight
gets SIGTERM (or SIGINT, or GET /shutdown), under the console script and
under twistd. It stops accepting at once, lets the stream finish, and
exits 0; at the drain timeout it cuts what is left, visibly; a second
SIGTERM, or C{--drain-timeout 0}, stops at once.

Integration tests (spawned entry points, loopback, the fake upstream's
manually stepped streams). The logic itself is unit-tested in memory in
tests/test_drain.py and tests/test_lifecycle.py.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.trial.unittest import TestCase

from tests.jsonlogs import exchangeEvents
from tests.processes import ENTRY_POINTS, SpawnedProxy, endWithin, spawnProxy
from tests.support import (
    RawConnection,
    connectRaw,
    parseRawResponse,
    startFakeUpstream,
    waitFor,
)

_REQUEST = (
    b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nx-fake-step: manual\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


def refused(port: int) -> bool:
    """
    Whether a new connection to the port is refused (nothing listens).
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object


class _Drain(_Base):
    timeout = 120
    entry = "console script"

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)

    async def proxy(self, *args: str) -> SpawnedProxy:
        proxy: SpawnedProxy = await spawnProxy(
            self,
            "--upstream-url",
            self.upstream.url,
            *args,
            entry=self.entry,
        )
        return proxy

    async def streamInFlight(self, proxy: SpawnedProxy) -> tuple[RawConnection, Any]:
        """
        A client with a stream started (its first event received).
        """
        client = await connectRaw(self, proxy.port)
        client.send(_REQUEST)
        await waitFor(lambda: self.upstream.resource.streams)
        await client.waitForBytes(b"response.created")
        return client, self.upstream.resource.streams[0]

    async def test_streamFinishes(self) -> None:
        """
        SIGTERM with a stream in flight: server-info goes and new
        connections are refused at once, the stream runs to its end, then
        the process exits 0.
        """
        proxy = await self.proxy("--drain-timeout", "60")
        client, stream = await self.streamInFlight(proxy)
        proxy.process.signal("TERM")
        await waitFor(lambda: not os.path.exists(proxy.serverInfoPath))
        await waitFor(lambda: refused(proxy.port))
        self.assertFalse(proxy.process.ended.called)
        while stream.chunks:
            stream.step()
        stream.step()
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await client.closed
        response = parseRawResponse(bytes(client.data))
        self.assertEqual(response.status, 200)
        self.assertTrue(response.complete, client.data)
        self.assertIn(b"response.completed", response.body)

    async def test_timeoutCutsVisibly(self) -> None:
        """
        A stream that does not finish within the drain timeout is cut: the
        client's answer is visibly truncated, the exchange is logged as
        C{drain_aborted}, and the process still exits 0.
        """
        proxy = await self.proxy("--drain-timeout", "1", *self.jsonLog)
        client, stream = await self.streamInFlight(proxy)
        proxy.process.signal("TERM")
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await client.closed
        self.assertFalse(parseRawResponse(bytes(client.data)).complete)
        if self.jsonLog:
            outcomes = [e["outcome"] for e in exchangeEvents(proxy)]
            self.assertEqual(outcomes, ["drain_aborted"])

    async def test_secondSignalStopsNow(self) -> None:
        """
        A second SIGTERM during a drain stops at once (long before the
        60 s drain timeout), cutting the stream.
        """
        proxy = await self.proxy("--drain-timeout", "60")
        client, stream = await self.streamInFlight(proxy)
        proxy.process.signal("TERM")
        await waitFor(lambda: not os.path.exists(proxy.serverInfoPath))
        proxy.process.signal("TERM")
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await client.closed
        self.assertFalse(parseRawResponse(bytes(client.data)).complete)

    async def test_zeroTimeout(self) -> None:
        """
        C{--drain-timeout 0}: SIGINT stops at once.
        """
        proxy = await self.proxy("--drain-timeout", "0")
        client, stream = await self.streamInFlight(proxy)
        proxy.process.signal("INT")
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await client.closed
        self.assertFalse(parseRawResponse(bytes(client.data)).complete)

    jsonLog: tuple[str, ...] = ()


class ConsoleScriptDrainTests(_Drain, TestCase):
    """
    The console script drains.
    """

    jsonLog = ("--log-format", "json")

    async def test_httpShutdownDrains(self) -> None:
        """
        C{GET /shutdown} drains too: the stream in flight finishes.
        """
        proxy = await self.proxy("--drain-timeout", "60", "--http-shutdown")
        client, stream = await self.streamInFlight(proxy)
        shutdown = await connectRaw(self, proxy.port)
        shutdown.send(b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await shutdown.waitForResponse()
        await waitFor(lambda: refused(proxy.port))
        while stream.chunks:
            stream.step()
        stream.step()
        result = await endWithin(proxy.process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        await client.closed
        self.assertTrue(parseRawResponse(bytes(client.data)).complete)


class TwistdDrainTests(_Drain, TestCase):
    """
    twistd drains the same way, and exits 0 (not by the signal).
    """

    entry = "twistd"


assert set(ENTRY_POINTS) >= {"console script", "twistd"}

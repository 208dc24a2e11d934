# -*- test-case-name: tests.test_streaming -*-
"""
Streaming: events reach the client as they arrive, and a slow client
slows the upstream down instead of filling the proxy's memory.

Integration tests (loopback).
"""

from __future__ import annotations

import treq
from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import (
    httpClient,
    jsonHeaders,
    startFakeUpstream,
    startProxy,
    tcpTransport,
    waitFor,
)

_BODY = b'{"model": "m", "input": "hi", "stream": true}'


class SSEArrivalTests(TestCase):
    """
    Each SSE event is written to the client the moment it arrives.
    """

    async def test_eachEventBeforeTheNext(self) -> None:
        """
        Event k reaches the client before the upstream has sent event k+1:
        the upstream is held in lockstep (it sends event k+1 only once the
        client holds event k), so a proxy that held any event back waiting
        for more data would never let the stream finish.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        response = await httpClient(self).post(
            proxy.url,
            data=_BODY,
            headers=jsonHeaders({"x-fake-events": "3", "x-fake-step": "manual"}),
            unbuffered=True,
        )
        self.assertEqual(response.code, 200)
        [stream] = upstream.resource.streams
        received = bytearray()
        # (events complete at the client, events the upstream had sent)
        progress: list[tuple[int, int]] = []

        def gotData(data: bytes) -> None:
            received.extend(data)
            progress.append((received.count(b"\n\n"), stream.sent))

        done = treq.collect(response, gotData)
        for k in range(1, 12):

            def holds(k: int = k) -> bool:
                return received.count(b"\n\n") >= k

            await waitFor(holds, timeout=5)
            self.assertEqual(stream.sent, k, "upstream ran ahead")
            stream.step()
        await done
        self.assertEqual(received.count(b"\n\n"), 11)
        self.assertTrue(received.startswith(b"event: response.created\n"))
        self.assertTrue(received.endswith(b"\n\n"))
        self.assertIn(b"event: response.completed", received)
        for complete, upstreamSent in progress:
            self.assertEqual(upstreamSent, complete, progress)

    async def test_timedEventsArriveSeparately(self) -> None:
        """
        With events spaced 50 ms apart by the upstream, the client receives
        them as separate deliveries, never all at the end.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        response = await httpClient(self).post(
            proxy.url,
            data=_BODY,
            headers=jsonHeaders({"x-fake-events": "3", "x-fake-interval-ms": "50"}),
            unbuffered=True,
        )
        [stream] = upstream.resource.streams
        sentAtDelivery: list[int] = []
        await treq.collect(response, lambda data: sentAtDelivery.append(stream.sent))
        # Most deliveries happen while the upstream is still sending.
        self.assertGreater(len([n for n in sentAtDelivery if n < 11]), 5)

    async def test_manyEvents(self) -> None:
        """
        A stream of 5000 events sent back to back arrives complete.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        response = await httpClient(self).post(
            proxy.url, data=_BODY, headers=jsonHeaders({"x-fake-events": "5000"})
        )
        text = await response.text()
        self.assertEqual(text.count("event: response.output_text.delta"), 5000)
        self.assertTrue(text.endswith("\n\n"))


class _CountingClient(protocol.Protocol):
    """
    Counts the body of one response, chunked or with a Content-Length,
    without keeping it.
    """

    def __init__(self) -> None:
        self.head = b""
        self.buffer = bytearray()
        self.headDone = False
        self.bodyBytes = 0
        self.chunkLeft = 0
        self.complete = False
        self.length: int | None = None
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.headDone:
            head, sep, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            if not sep:
                return
            self.head, self.headDone = head, True
            self.buffer = bytearray(rest)
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.length = int(value)
        if self.length is not None:
            self.bodyBytes += len(self.buffer)
            del self.buffer[:]
            self.complete = self.bodyBytes == self.length
            return
        self._dechunk()

    def _dechunk(self) -> None:
        while self.buffer and not self.complete:
            if self.chunkLeft:
                taken = min(self.chunkLeft, len(self.buffer))
                self.bodyBytes += taken
                self.chunkLeft -= taken
                del self.buffer[:taken]
                if self.chunkLeft:
                    return
                self.chunkLeft = -2  # the CRLF after the chunk
            if self.chunkLeft == -2:
                if len(self.buffer) < 2:
                    return
                del self.buffer[:2]
                self.chunkLeft = 0
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(self.buffer[:end]), 16)
            del self.buffer[: end + 2]
            if size == 0:
                self.complete = True
                return
            self.chunkLeft = size

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class BackpressureTests(TestCase):
    """
    A client that reads slower than the upstream sends pauses the upstream.
    """

    async def test_slowClientPausesUpstream(self) -> None:
        """
        While the client reads nothing, the upstream's producer comes to a
        standstill, paused, having sent only a small part of a 128 MiB body;
        once the client reads again, every byte arrives.
        """
        total = 128 * 1024 * 1024
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        connecting: Deferred[_CountingClient] = protocol.ClientCreator(
            reactor, _CountingClient
        ).connectTCP("127.0.0.1", proxy.port)
        client = await connecting
        self.addCleanup(_abort, client)
        IPushProducer(client.transport).pauseProducing()
        tcpTransport(client).write(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"x-fake-scenario: big\r\nx-fake-bytes: %d\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n"
            % (total, len(_BODY))
            + _BODY
        )
        await waitFor(lambda: upstream.resource.bigBodies)
        [producer] = upstream.resource.bigBodies
        await waitFor(lambda: producer.paused)
        # The upstream must come to a standstill, not just pause for a
        # moment: sample until it sent nothing for 0.3 s (socket buffers
        # may take a moment to fill), within a deadline.
        deadline = reactor.seconds() + 5
        previous = -1
        while producer.sentBytes != previous:
            self.assertLess(reactor.seconds(), deadline, "upstream never stalled")
            previous = producer.sentBytes
            await task.deferLater(reactor, 0.3)
        self.assertTrue(producer.paused)
        # Only socket buffers fill up (a few MiB on loopback).
        self.assertLess(previous, total // 2, "upstream was not held back")
        self.assertEqual(client.bodyBytes, 0)

        IPushProducer(client.transport).resumeProducing()
        await client.closed
        self.assertTrue(client.complete)
        self.assertEqual(client.bodyBytes, total)
        self.assertIn(b"HTTP/1.1 200 ", client.head)
        self.assertGreater(producer.pauses, 1)


def _abort(client: _CountingClient) -> Deferred[None] | None:
    """
    Abort C{client}'s connection unless it is closed; wait until it is.
    """
    if client.closed.called:
        return None
    tcpTransport(client).abortConnection()
    return client.closed

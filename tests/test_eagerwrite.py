# -*- test-case-name: tests.test_eagerwrite -*-
"""
Eager writes and lazy pauses on real loopback TCP connections.

Integration tests (loopback).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from responses_proxy.eagerwrite import batchedWrites, sendEagerly
from tests.support import listenOnLoopback, portNumber, tcpTransport, waitFor


class _Peer(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class EagerTransportTests(TestCase):
    """
    A switched transport sends at once, queues what the kernel refuses, and
    reads nothing while paused.
    """

    async def connect(self) -> Any:
        """
        Connect a client to a server peer (C{self.server}) on loopback and
        switch the client's transport; return that transport.

        It is typed L{Any}: its class is made at run time (a subclass of
        C{tcp.Client}), and these tests look at its internals.
        """
        self.server = _Peer()
        factory = protocol.Factory.forProtocol(lambda: self.server)
        port = listenOnLoopback(factory)
        self.addCleanup(port.stopListening)
        connecting: Deferred[_Peer] = protocol.ClientCreator(reactor, _Peer).connectTCP(
            "127.0.0.1", portNumber(port)
        )
        self.client = await connecting
        await waitFor(lambda: self.server.transport is not None)
        transport = self.client.transport
        self.assertTrue(sendEagerly(transport))
        self.addCleanup(self._close)
        return transport

    def _close(self) -> Deferred[None]:
        tcpTransport(self.client).abortConnection()
        return self.server.lost

    async def test_onlyPlainTCPSwitched(self) -> None:
        """
        Already switched, or anything but a plain TCP transport, is left alone.
        """
        transport = await self.connect()
        self.assertFalse(sendEagerly(transport))
        self.assertFalse(sendEagerly(object()))

    async def test_sentAtOnce(self) -> None:
        """
        A write with nothing queued leaves in the same call: nothing is left
        in the transport's queue.
        """
        transport = await self.connect()
        transport.write(b"hello")
        transport.writeSequence([b" ", b"world"])
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(transport.dataBuffer, b"")
        await waitFor(lambda: bytes(self.server.received) == b"hello world")

    async def test_batchSendsOnce(self) -> None:
        """
        Writes inside a batch are held, and sent together (in order, in one
        piece) when the outermost batch ends.
        """
        transport = await self.connect()
        with batchedWrites():
            transport.write(b"head ")
            with batchedWrites():
                transport.writeSequence([b"and ", b"body"])
            self.assertEqual(transport._held, [b"head ", b"and body"])
        self.assertIsNone(transport._held)
        self.assertEqual(transport._tempDataBuffer, [])
        await waitFor(lambda: bytes(self.server.received) == b"head and body")

    async def test_remainderQueuedInOrder(self) -> None:
        """
        With the peer not reading, what the kernel does not take is queued
        (pausing a registered producer as Twisted does) and later writes go
        behind it; everything arrives in order once the peer reads.
        """
        transport = await self.connect()
        IPushProducer(self.server.transport).pauseProducing()
        chunk = bytes(range(256)) * 4096  # 1 MiB
        expected = bytearray()
        for number in range(32):
            piece = bytes([number]) + chunk
            transport.write(piece)
            expected += piece
        self.assertTrue(transport._tempDataBuffer or transport.dataBuffer)
        IPushProducer(self.server.transport).resumeProducing()
        await waitFor(lambda: len(self.server.received) == len(expected), timeout=20)
        self.assertEqual(bytes(self.server.received), bytes(expected))

    async def test_abortedSendsNothing(self) -> None:
        """
        After abortConnection a write sends nothing.
        """
        transport = await self.connect()
        transport.abortConnection()
        transport.write(b"late")
        await self.server.lost
        self.assertEqual(bytes(self.server.received), b"")

    async def test_pauseThenResumeIsFree(self) -> None:
        """
        A pause undone before the next read never touches epoll, and data
        keeps flowing.
        """
        transport = await self.connect()
        transport.pauseProducing()
        transport.resumeProducing()
        self.assertTrue(transport._reading)
        tcpTransport(self.server).write(b"ping")
        await waitFor(lambda: bytes(self.client.received) == b"ping")

    async def test_nothingReadWhilePaused(self) -> None:
        """
        Data that arrives while paused stays in the kernel: the first read
        event stops reading for real; resuming delivers it.
        """
        transport = await self.connect()
        transport.pauseProducing()
        tcpTransport(self.server).write(b"held back")
        await waitFor(lambda: not transport._reading, timeout=5)
        self.assertEqual(bytes(self.client.received), b"")
        transport.resumeProducing()
        await waitFor(lambda: bytes(self.client.received) == b"held back")

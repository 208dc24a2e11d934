"""
Eager writes and lazy pauses on real loopback TCP connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from responses_proxy.eagerwrite import batchedWrites, sendEagerly
from tests.support import waitFor


class _Peer(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class EagerTransportTests(TestCase):
    """
    A switched transport sends at once, queues what the kernel refuses, and
    reads nothing while paused.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = _Peer()
        factory = protocol.Factory.forProtocol(lambda: self.server)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = yield protocol.ClientCreator(reactor, _Peer).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        yield waitFor(lambda: self.server.transport is not None)
        self.assertTrue(sendEagerly(self.client.transport))
        self.addCleanup(self._close)

    def _close(self) -> Deferred[None]:
        self.client.transport.abortConnection()
        return self.server.lost

    def test_onlyPlainTCPSwitched(self) -> None:
        """
        Already switched, or anything but a plain TCP transport, is left alone.
        """
        self.assertFalse(sendEagerly(self.client.transport))
        self.assertFalse(sendEagerly(object()))

    def test_sentAtOnce(self) -> None:
        """
        A write with nothing queued leaves in the same call: nothing is left
        in the transport's queue.
        """
        transport = self.client.transport
        transport.write(b"hello")
        transport.writeSequence([b" ", b"world"])
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(transport.dataBuffer, b"")
        return waitFor(lambda: bytes(self.server.received) == b"hello world")

    def test_batchSendsOnce(self) -> Any:
        """
        Writes inside a batch are held, and sent together (in order, in one
        piece) when the outermost batch ends.
        """
        transport = self.client.transport
        with batchedWrites():
            transport.write(b"head ")
            with batchedWrites():
                transport.writeSequence([b"and ", b"body"])
            self.assertEqual(transport._held, [b"head ", b"and body"])
        self.assertIsNone(transport._held)
        self.assertEqual(transport._tempDataBuffer, [])
        return waitFor(lambda: bytes(self.server.received) == b"head and body")

    @inlineCallbacks
    def test_remainderQueuedInOrder(self) -> Any:
        """
        With the peer not reading, what the kernel does not take is queued
        (pausing a registered producer as Twisted does) and later writes go
        behind it; everything arrives in order once the peer reads.
        """
        self.server.transport.pauseProducing()
        transport = self.client.transport
        chunk = bytes(range(256)) * 4096  # 1 MiB
        expected = bytearray()
        for number in range(32):
            piece = bytes([number]) + chunk
            transport.write(piece)
            expected += piece
        self.assertTrue(transport._tempDataBuffer or transport.dataBuffer)
        self.server.transport.resumeProducing()
        yield waitFor(lambda: len(self.server.received) == len(expected), timeout=20)
        self.assertEqual(bytes(self.server.received), bytes(expected))

    @inlineCallbacks
    def test_abortedSendsNothing(self) -> Any:
        """
        After abortConnection a write sends nothing.
        """
        transport = self.client.transport
        transport.abortConnection()
        transport.write(b"late")
        yield self.server.lost
        self.assertEqual(bytes(self.server.received), b"")

    @inlineCallbacks
    def test_pauseThenResumeIsFree(self) -> Any:
        """
        A pause undone before the next read never touches epoll, and data
        keeps flowing.
        """
        transport = self.client.transport
        transport.pauseProducing()
        transport.resumeProducing()
        self.assertTrue(transport._reading)
        self.server.transport.write(b"ping")
        yield waitFor(lambda: bytes(self.client.received) == b"ping")

    @inlineCallbacks
    def test_nothingReadWhilePaused(self) -> Any:
        """
        Data that arrives while paused stays in the kernel: the first read
        event stops reading for real; resuming delivers it.
        """
        transport = self.client.transport
        transport.pauseProducing()
        self.server.transport.write(b"held back")
        yield waitFor(lambda: not transport._reading, timeout=5)
        self.assertEqual(bytes(self.client.received), b"")
        transport.resumeProducing()
        yield waitFor(lambda: bytes(self.client.received) == b"held back")

"""
Limits declared up front: a body whose declared size (Content-Length, or a
chunk-size line) exceeds C{--max-request-body} gets 413 at once, without
waiting for the bytes.

Unit tests (in memory: L{ChunkSizes} alone, and a L{ProxySite} channel on a
C{StringTransport} with a C{Clock}).
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from responses_proxy.chunks import ChunkSizes
from responses_proxy.site import ProxySite


class ChunkSizesTests(SynchronousTestCase):
    """
    L{ChunkSizes} follows a chunked body and counts what it declares.
    """

    def test_withinLimit(self) -> None:
        """
        Chunks that add up to the limit pass, however they are split.
        """
        body = b"4\r\nabcd\r\n6;ext=1\r\nefghij\r\n0\r\n\r\n"
        for size in (1, 2, 3, len(body)):
            sizes = ChunkSizes(10)
            pieces = [body[i : i + size] for i in range(0, len(body), size)]
            self.assertTrue(all(sizes.feed(piece) for piece in pieces), size)

    def test_overLimitSum(self) -> None:
        """
        The chunk whose size takes the total over the limit is refused
        when its size line arrives, before its data.
        """
        sizes = ChunkSizes(10)
        self.assertTrue(sizes.feed(b"8\r\n12345678\r\n"))
        self.assertFalse(sizes.feed(b"3\r\n"))

    def test_hugeSizeLine(self) -> None:
        """
        A size of 2^64 or more is refused, even before its line ends.
        """
        self.assertFalse(ChunkSizes(64 << 20).feed(b"10000000000000000\r\n"))
        self.assertFalse(ChunkSizes(64 << 20).feed(b"ffffffffffffffffffff"))

    def test_malformedLeftToTwisted(self) -> None:
        """
        A size line that is not hex is not counted: Twisted refuses it.
        """
        sizes = ChunkSizes(10)
        self.assertTrue(sizes.feed(b"zz\r\n"))
        self.assertTrue(sizes.feed(b"ffffffffffffffffffff\r\n"))

    def test_trailersIgnored(self) -> None:
        """
        After the last chunk, nothing more is counted.
        """
        sizes = ChunkSizes(4)
        self.assertTrue(sizes.feed(b"4\r\nabcd\r\n0\r\nX-Trailer: 99999999\r\n\r\n"))


class _Sink(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.rendered.append(request.content.read())
        return b"ok"


class DeclaredLimitTests(SynchronousTestCase):
    """
    The site refuses a declared size over the limit as soon as it sees it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = _Sink()
        site = ProxySite(self.resource, self.clock, maxRequestBody=100)
        self.channel = site.buildProtocol(None)
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def assertRefused413(self) -> None:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), head)
        self.assertEqual(json.loads(body)["error"]["code"], "request_too_large")
        self.assertFalse(self.transport.connected)
        self.assertEqual(self.resource.rendered, [])

    def request(self, framing: bytes) -> None:
        self.channel.dataReceived(
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n"
        )

    def test_contentLength(self) -> None:
        """
        A Content-Length over the limit: 413 before any body byte.
        """
        self.request(b"Content-Length: 101\r\n")
        self.assertRefused413()

    def test_chunkSizeLine(self) -> None:
        """
        A chunk-size line of 2^64: 413 at once, not at the request deadline.
        """
        self.request(b"Transfer-Encoding: chunked\r\n")
        self.channel.dataReceived(b"10000000000000000\r\n")
        self.assertRefused413()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_chunkSizesAddUp(self) -> None:
        """
        Chunks each under the limit but together over it: 413 when the size
        line of the chunk that crosses it arrives.
        """
        self.request(b"Transfer-Encoding: chunked\r\n")
        self.channel.dataReceived(b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.channel.dataReceived(b"40\r\n")
        self.assertRefused413()

    def test_withinLimitServed(self) -> None:
        """
        A chunked body within the limit is served whole.
        """
        self.request(b"Transfer-Encoding: chunked\r\n")
        self.channel.dataReceived(b"5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(self.resource.rendered, [b"hello"])

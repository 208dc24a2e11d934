# -*- test-case-name: tests.test_demo -*-
"""
C{responses-api-proxy-demo}: one command that streams an answer from the
fake upstream through the real proxy.

Integration tests (loopback / processes); L{SSEParserTests} are unit tests
(in memory).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from responses_proxy.demo import SSEParser, streamThroughProxy
from tests.fakeupstream import DEFAULT_TEXT
from tests.processes import endWithin
from tests.support import (
    childEnvironment,
    scriptPath,
    spawnEntryPoint,
    startFakeUpstream,
    startProxy,
)


class SSEParserTests(SynchronousTestCase):
    """
    The demo's incremental SSE parser.
    """

    def test_splitAnywhere(self) -> None:
        """
        Events are dispatched once complete, however the bytes are split,
        with C{\\r\\n} or C{\\n} line ends and multi-line data.
        """
        stream = (
            b'event: a\ndata: {"n": 1}\n\n'
            b": a comment\n\n"
            b"event: b\r\ndata: line one\r\ndata: line two\r\n\r\n"
            b'data: {"n": 3}\n\n'
        )

        def parse(size: int) -> list[tuple[str, Any]]:
            events: list[tuple[str, Any]] = []
            parser = SSEParser(lambda name, data: events.append((name, data)))
            for i in range(0, len(stream), size):
                parser.feed(stream[i : i + size])
            return events

        for size in (1, 2, 5, len(stream)):
            self.assertEqual(
                parse(size),
                [("a", {"n": 1}), ("b", "line one\nline two"), ("message", {"n": 3})],
                size,
            )

    def test_incomplete(self) -> None:
        """
        An event without its blank line is not dispatched yet.
        """
        events: list[Any] = []
        parser = SSEParser(lambda name, data: events.append(data))
        parser.feed(b"data: {}\n")
        self.assertEqual(events, [])
        parser.feed(b"\n")
        self.assertEqual(events, [{}])


class StreamThroughProxyTests(TestCase):
    """
    The demo's client half against an in-process proxy and fake upstream.
    """

    async def test_printsDeltas(self) -> None:
        """
        The deltas are written as they arrive and add up to the answer.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        out = io.StringIO()
        text = await streamThroughProxy(reactor, proxy.url, out, intervalMS=0)
        self.assertEqual(text, DEFAULT_TEXT)
        self.assertEqual(out.getvalue(), DEFAULT_TEXT + "\n")


class _Timed(protocol.ProcessProtocol):
    """
    Records when each piece of standard output arrived; fires C{ended} with
    the exit status and when the process ended.
    """

    transport: IProcessTransport

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.err = bytearray()
        self.ended: Deferred[tuple[int | None, float]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.chunks.append((reactor.seconds(), data))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = (
            value.exitCode
            if isinstance(value, ProcessDone | ProcessTerminated)
            else None
        )
        self.ended.callback((code, reactor.seconds()))


class DemoCommandTests(TestCase):
    """
    The installed C{responses-api-proxy-demo} console script.
    """

    async def test_demo(self) -> None:
        """
        The demo exits 0 having printed the fake upstream's text, delta by
        delta (several writes, spread over time), and says on stderr that
        the proxy was stopped with C{GET /shutdown}.
        """
        process = _Timed()
        executable = scriptPath("responses-api-proxy-demo")
        transport = reactor.spawnProcess(
            process, executable, [executable], env=childEnvironment()
        )

        def kill() -> Deferred[tuple[int | None, float]] | None:
            if process.ended.called:
                return None
            transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill)
        code, endedAt = await process.ended
        self.assertEqual(code, 0, bytes(process.err))
        stdout = b"".join(data for _, data in process.chunks)
        self.assertEqual(stdout.decode(), DEFAULT_TEXT + "\n")
        self.assertGreater(len(process.chunks), 2)
        firstAt = process.chunks[0][0]
        self.assertGreater(endedAt - firstAt, 0.1)
        self.assertIn(b"proxy stopped with GET /shutdown", process.err)
        self.assertIn(b"the upstream received the key", process.err)

    async def test_arguments(self) -> None:
        """
        C{--help} describes the demo and exits 0; any other argument is a
        usage error (exit 2). Neither starts anything.
        """
        for args, code in ((["--help"], 0), (["--port", "1"], 2)):
            process = spawnEntryPoint(
                self, ["responses-api-proxy-demo", *args], stdin=None
            )
            result = await endWithin(process, 30)
            self.assertEqual(result.exitCode, code, args)
            self.assertIn(b"usage: responses-api-proxy-demo", result.stderr)
            self.assertNotIn(b"listening", result.stderr)

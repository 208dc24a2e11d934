#!/usr/bin/env python3
"""
The benchmark's upstream: a small, fast asyncio HTTP/1.1 server (stdlib only).

It answers every POST (whatever the path) according to request headers, which
every proxy under test forwards unchanged:

  x-bench-mode: json (default) | sse | big
  x-bench-events: N          SSE: number of events (default 200)
  x-bench-interval-ms: MS    SSE: spacing between events (default 20)
  x-bench-bytes: N           big: body size in bytes (default 200 MB)

  json  a small JSON answer with Content-Length; it reports how many request
        body bytes arrived ("received"), so it doubles as the upload sink.
  sse   text/event-stream, chunked; event k is written at start + k*interval
        (loop.call_at, not a chain of sleeps, so spacing does not drift), and
        its data carries "t": time.time_ns() taken just before the write.
  big   application/octet-stream with Content-Length, written as fast as the
        socket accepts it, with flow control (pause_writing/resume_writing),
        so a slow reader downstream never makes this process buffer the body.

Usage: upstream.py [--port 0] [--ready-file FILE]  (FILE gets {"port": N})
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import cast

from _procs import raiseFdLimit

JSON_BODY = (
    b'{"id":"resp_bench","object":"response","status":"completed",'
    b'"model":"gpt-bench","output":[{"type":"message","role":"assistant",'
    b'"content":[{"type":"output_text","text":"ok"}]}],"received":%d}'
)
EVENT = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"seq":%d,"t":%d,"delta":" lorem ipsum"}\n\n'
)
DONE_EVENT = b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
BIG_CHUNK = memoryview(b"x" * (256 * 1024))


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.inBody = False
        self.need = 0
        self.headers: dict[bytes, bytes] = {}
        self.received = 0
        self.busy = False
        self.closed = False
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=1 << 20, low=256 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        if self.task is not None:
            self.task.cancel()
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.inBody and not self.buf:
            # Fast path for large uploads: count and drop.
            take = min(len(data), self.need)
            self.need -= take
            self.received += take
            if self.need:
                return
            self.inBody = False
            data = data[take:]
            self._requestComplete()
            if not data:
                return
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.busy and not self.closed:
            if self.inBody:
                take = min(len(self.buf), self.need)
                del self.buf[:take]
                self.need -= take
                self.received += take
                if self.need:
                    return
                self.inBody = False
                self._requestComplete()
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            lines = head.split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            self.headers = headers
            self.received = 0
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                # Not needed by any proxy under test (all send Content-Length).
                self.transport.write(
                    b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
                self.transport.close()
                return
            self.need = int(headers.get(b"content-length", b"0"))
            self.inBody = self.need > 0
            if not self.inBody:
                self._requestComplete()

    def _requestComplete(self) -> None:
        self.busy = True
        h = self.headers
        mode = h.get(b"x-bench-mode", b"json")
        self.keepAlive = h.get(b"connection", b"").lower() != b"close"
        if mode == b"sse":
            self._startSSE(
                int(h.get(b"x-bench-events", b"200")),
                int(h.get(b"x-bench-interval-ms", b"20")) / 1000.0,
            )
        elif mode == b"big":
            size = int(h.get(b"x-bench-bytes", str(200 * 1000 * 1000).encode()))
            self.task = asyncio.get_running_loop().create_task(self._big(size))
        else:
            body = JSON_BODY % self.received
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"x-request-id: req_bench\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            self._responseDone()

    def _responseDone(self) -> None:
        self.busy = False
        self.task = None
        if not self.keepAlive:
            self.transport.close()
            return
        if self.buf:
            self._process()

    # SSE

    def _startSSE(self, events: int, interval: float) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\nx-request-id: req_bench\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.timers = [
            loop.call_at(start + k * interval, self._sendEvent, k, events)
            for k in range(events)
        ]

    def _sendEvent(self, seq: int, events: int) -> None:
        if self.closed:
            return
        event = EVENT % (seq, time.time_ns())
        if seq == events - 1:
            event += DONE_EVENT
        self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        if seq == events - 1:
            self.transport.write(b"0\r\n\r\n")
            self.timers = []
            self._responseDone()

    # Big body

    async def _big(self, size: int) -> None:
        t = self.transport
        t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"x-request-id: req_bench\r\ncontent-length: %d\r\n\r\n" % size
        )
        remaining = size
        chunk = len(BIG_CHUNK)
        while remaining > 0:
            if self.closed:
                return
            if self.paused:
                self.resumed = asyncio.get_running_loop().create_future()
                await self.resumed
                self.resumed = None
                continue
            n = min(chunk, remaining)
            t.write(BIG_CHUNK[:n])
            remaining -= n
        self._responseDone()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    raiseFdLimit()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        Conn, "127.0.0.1", args.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"port": port, "pid": os.getpid()}, f)
        os.rename(tmp, args.ready_file)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()


if __name__ == "__main__":
    asyncio.run(main())

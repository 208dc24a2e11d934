#!/usr/bin/env python3
"""
The benchmark's Python load generator (stdlib only). Every subcommand prints
one JSON object on stdout. The same code measures every implementation.

  sse        N concurrent SSE streams; per-event latency = receipt time minus
             the "t" stamp the upstream wrote just before sending the event.
  big        read one large response at full speed, or paced (--rate, --seconds).
  upload     send one large request body, wait for the answer.
  ttfb       sequential requests on one keep-alive connection.
  throughput closed-loop POSTs on C connections for D seconds (used only when
             wrk is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import time
from typing import cast

from _procs import raiseFdLimit

REQUEST_BODY = (
    b'{"model":"gpt-bench","input":[{"role":"user","content":[{"type":"input_text",'
    b'"text":"Say hello."}]}],"stream":true}'
)
STAMP = re.compile(rb'"t":(\d+)')


def request(port: int, extra: dict[str, str], body: bytes = REQUEST_BODY) -> bytes:
    lines = [
        b"POST /v1/responses HTTP/1.1",
        b"Host: 127.0.0.1:%d" % port,
        b"Content-Type: application/json",
        b"Accept: text/event-stream",
        b"User-Agent: responses-api-proxy-bench",
        b"Content-Length: %d" % len(body),
    ]
    lines += [f"{k}: {v}".encode() for k, v in extra.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


class BodyDecoder:
    """
    Incremental HTTP/1.1 response parser: head, then Content-Length, chunked
    or close-delimited body. feed() returns decoded body bytes.
    """

    def __init__(self) -> None:
        self.head = bytearray()
        self.headDone = False
        self.status = 0
        self.chunked = False
        self.length: int | None = None
        self.done = False
        self.raw = bytearray()  # chunked: undecoded framing
        self.chunkLeft = 0
        self.bodyBytes = 0

    def feed(self, data: bytes) -> bytes:
        """
        Take the next bytes received; return the body bytes among them.
        """
        if not self.headDone:
            data = self._feedHead(data)
        if not data:
            return b""
        if self.chunked:
            return self._feedChunked(data)
        return self._feedPlain(data)

    def _feedHead(self, data: bytes) -> bytes:
        """
        Collect the head until it is complete, then parse it; return what
        follows it (the start of the body).
        """
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head = bytes(self.head[:end])
        rest = bytes(self.head[end + 4 :])
        self.head = bytearray()
        self.headDone = True
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"content-length":
                self.length = int(value)
        if not self.chunked and self.length == 0:
            self.done = True
        return rest

    def _feedPlain(self, data: bytes) -> bytes:
        """
        Content-Length or close-delimited body.
        """
        if self.length is not None:
            data = data[: self.length - self.bodyBytes]
            self.bodyBytes += len(data)
            if self.bodyBytes >= self.length:
                self.done = True
        else:
            self.bodyBytes += len(data)
        return data

    def _feedChunked(self, data: bytes) -> bytes:
        """
        Chunked body: undo the framing of as much as has arrived, keep the
        rest (a partial size line or chunk) for the next call.
        """
        out = bytearray()
        self.raw += data
        pos = 0
        raw = self.raw
        while not self.done:
            if self.chunkLeft > 0:
                take = min(self.chunkLeft, len(raw) - pos)
                if take <= 0:
                    break
                out += raw[pos : pos + take]
                pos += take
                self.chunkLeft -= take
                if self.chunkLeft == 0:
                    self.chunkLeft = -2  # expect CRLF
            elif self.chunkLeft == -2:
                if len(raw) - pos < 2:
                    break
                pos += 2
                self.chunkLeft = 0
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                self._startChunk(bytes(raw[pos:eol]))
                pos = eol + 2
        del raw[:pos]
        self.bodyBytes += len(out)
        return bytes(out)

    def _startChunk(self, sizeLine: bytes) -> None:
        """
        A chunk-size line: size 0 ends the body (trailers are ignored).
        """
        self.chunkLeft = int(sizeLine.split(b";")[0], 16)
        if self.chunkLeft == 0:
            self.done = True


# --------------------------------------------------------------------- sse


class SSEClient(asyncio.Protocol):
    def __init__(self, run: SSERun, index: int) -> None:
        self.run = run
        self.index = index
        self.decoder = BodyDecoder()
        self.pending = bytearray()
        self.events = 0
        self.headersAt: float | None = None
        self.finished = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.run.requestBytes)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        try:
            body = self.decoder.feed(data)
        except Exception as e:  # noqa: BLE001
            self._fail(f"parse: {e}")
            return
        if self.headersAt is None and self.decoder.headDone:
            self.headersAt = now
            if self.decoder.status != 200:
                self._fail(f"status {self.decoder.status}")
                return
            self.run.headerArrived()
        if body:
            self.pending += body
            end = self.pending.rfind(b"\n\n")
            if end >= 0:
                chunk = bytes(self.pending[: end + 2])
                del self.pending[: end + 2]
                for m in STAMP.finditer(chunk):
                    self.events += 1
                    self.run.record(int(m.group(1)), now)
        if self.decoder.done:
            self.transport.close()
            if not self.finished.done():
                self.finished.set_result(None)

    def _fail(self, why: str) -> None:
        self.error = why
        self.transport.abort()
        if not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if not self.decoder.done:
                self.error = f"closed early: {exc!r}"
            self.finished.set_result(None)


class SSERun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.requestBytes = request(
            args.port,
            {
                "x-bench-mode": "sse",
                "x-bench-events": str(args.events),
                "x-bench-interval-ms": str(args.interval_ms),
            },
        )
        self.samples: list[tuple[int, int]] = []
        self.headers = 0
        self.allConnectedNs: int | None = None

    def headerArrived(self) -> None:
        self.headers += 1
        if self.headers == self.args.streams:
            self.allConnectedNs = time.time_ns()

    def record(self, sent: int, received: int) -> None:
        self.samples.append((sent, received))

    async def one(self, index: int, gate: asyncio.Semaphore) -> SSEClient | str:
        loop = asyncio.get_running_loop()
        async with gate:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: SSEClient(self, index), "127.0.0.1", self.args.port
                    ),
                    30,
                )
            except Exception as e:  # noqa: BLE001
                return f"connect: {type(e).__name__}: {e}"
        return proto

    async def main(self) -> dict:
        args = self.args
        gate = asyncio.Semaphore(args.connect_parallel)
        t0 = time.time_ns()
        results = await asyncio.gather(
            *(self.one(i, gate) for i in range(args.streams))
        )
        connectedNs = time.time_ns()
        clients = [r for r in results if not isinstance(r, str)]
        errors = [r for r in results if isinstance(r, str)]
        deadline = args.events * args.interval_ms / 1000.0 + args.grace
        if clients:
            done, _ = await asyncio.wait(
                [c.finished for c in clients], timeout=deadline
            )
        for c in clients:
            if not c.finished.done():
                c.error = "timeout"
                c.transport.abort()
            if c.error:
                errors.append(c.error)
            elif c.events != args.events:
                errors.append(f"got {c.events} of {args.events} events")
        lat = [(r - s) / 1e6 for s, r in self.samples]  # ms
        after = (
            [(r - s) / 1e6 for s, r in self.samples if s >= self.allConnectedNs]
            if self.allConnectedNs
            else []
        )
        errorKinds: dict[str, int] = {}
        for e in errors:
            key = e.split(":")[0] if not e.startswith("got ") else "missing events"
            errorKinds[key] = errorKinds.get(key, 0) + 1
        return {
            "streams": args.streams,
            "events_expected": args.streams * args.events,
            "events_delivered": len(self.samples),
            "errors": len(errors),
            "error_kinds": errorKinds,
            "error_examples": errors[:5],
            "connect_s": (connectedNs - t0) / 1e9,
            "all_headers_s": ((self.allConnectedNs - t0) / 1e9)
            if self.allConnectedNs
            else None,
            "latency_ms": stats(lat),
            "latency_after_all_connected_ms": stats(after),
        }


def cmdSSE(args: argparse.Namespace) -> dict:
    raiseFdLimit()
    return asyncio.run(SSERun(args).main())


# ------------------------------------------------------------ blocking utils


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def readResponse(s: socket.socket, decoder: BodyDecoder, buf: bytearray) -> None:
    view = memoryview(buf)
    while not decoder.done:
        n = s.recv_into(view)
        if not n:
            if decoder.headDone and decoder.length is None and not decoder.chunked:
                decoder.done = True
                return
            raise ConnectionError("connection closed before the response ended")
        decoder.feed(bytes(view[:n]))


def _readFull(
    s: socket.socket, decoder: BodyDecoder, buf: bytearray, size: int
) -> None:
    """
    Full speed: parse the head, then count body bytes without copying them.
    """
    view = memoryview(buf)
    while not decoder.headDone:
        n = s.recv_into(view)
        if not n:
            raise ConnectionError("closed before headers")
        decoder.feed(bytes(view[:n]))
    if decoder.chunked:
        readResponse(s, decoder, buf)
        return
    total = decoder.bodyBytes
    while total < size:
        n = s.recv_into(view)
        if not n:
            raise ConnectionError(f"closed after {total} body bytes")
        total += n
    decoder.bodyBytes = total


def _readPaced(
    s: socket.socket,
    decoder: BodyDecoder,
    buf: bytearray,
    t0: float,
    rate: float,
    seconds: float,
) -> None:
    """
    Paced: at most C{rate} bytes per second, for C{seconds}, then hang up.
    """
    view = memoryview(buf)
    end = t0 + seconds
    received = 0
    while not decoder.done:
        now = time.perf_counter()
        if now >= end:
            break
        allowed = int((now - t0) * rate) - received
        if allowed <= 0:
            time.sleep(min(0.005, end - now))
            continue
        n = s.recv_into(view, min(len(buf), allowed))
        if not n:
            raise ConnectionError("closed early")
        received += n
        decoder.feed(bytes(view[:n]))


def cmdBig(args: argparse.Namespace) -> dict:
    s = connect(args.port)
    s.sendall(
        request(args.port, {"x-bench-mode": "big", "x-bench-bytes": str(args.bytes)})
    )
    decoder = BodyDecoder()
    buf = bytearray(1 << 20 if not args.rate else 64 * 1024)
    t0 = time.perf_counter()
    error = None
    try:
        if not args.rate:
            _readFull(s, decoder, buf, args.bytes)
        else:
            _readPaced(s, decoder, buf, t0, args.rate, args.seconds)
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    elapsed = time.perf_counter() - t0
    s.close()
    return {
        "status": decoder.status,
        "bytes": decoder.bodyBytes,
        "seconds": elapsed,
        "mb_per_s": decoder.bodyBytes / elapsed / 1e6 if elapsed else None,
        "error": error,
    }


def cmdUpload(args: argparse.Namespace) -> dict:
    body = b"a" * args.bytes
    s = connect(args.port)
    decoder = BodyDecoder()
    buf = bytearray(65536)
    error = None
    t0 = time.perf_counter()
    try:
        s.sendall(request(args.port, {"x-bench-mode": "json"}, body))
        readResponse(s, decoder, buf)
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    elapsed = time.perf_counter() - t0
    s.close()
    return {"status": decoder.status, "seconds": elapsed, "error": error}


def cmdTTFB(args: argparse.Namespace) -> dict:
    s = connect(args.port)
    req = request(args.port, {"x-bench-mode": "json"})
    buf = bytearray(65536)
    view = memoryview(buf)
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    for _ in range(args.count):
        decoder = BodyDecoder()
        t0 = time.perf_counter()
        try:
            s.sendall(req)
            n = s.recv_into(view)
            t1 = time.perf_counter()
            if not n:
                raise ConnectionError("closed")
            decoder.feed(bytes(view[:n]))
            readResponse(s, decoder, buf)
            t2 = time.perf_counter()
        except Exception:  # noqa: BLE001
            errors += 1
            s.close()
            s = connect(args.port)
            continue
        if decoder.status != 200:
            errors += 1
        ttfb.append((t1 - t0) * 1000)
        total.append((t2 - t0) * 1000)
    s.close()
    return {"ttfb_ms": stats(ttfb), "total_ms": stats(total), "errors": errors}


async def _throughput(args: argparse.Namespace) -> dict:
    req = request(args.port, {"x-bench-mode": "json"})
    lat: list[float] = []
    errors = 0
    stopAt = time.perf_counter() + args.seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stopAt:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.perf_counter() < stopAt:
                    t0 = time.perf_counter()
                    writer.write(req)
                    decoder = BodyDecoder()
                    while not decoder.done:
                        data = await reader.read(65536)
                        if not data:
                            raise ConnectionError("closed")
                        decoder.feed(data)
                    if decoder.status != 200:
                        errors += 1
                    lat.append((time.perf_counter() - t0) * 1000)
            except Exception:  # noqa: BLE001
                errors += 1
            finally:
                writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.connections)))
    elapsed = time.perf_counter() - t0
    s = stats(lat)
    return {
        "requests": len(lat),
        "rps": len(lat) / elapsed,
        "p50_ms": s["p50"],
        "p99_ms": s["p99"],
        "errors": errors,
    }


def cmdThroughput(args: argparse.Namespace) -> dict:
    raiseFdLimit()
    return asyncio.run(_throughput(args))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sse")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--interval-ms", type=int, default=20)
    p.add_argument("--connect-parallel", type=int, default=64)
    p.add_argument("--grace", type=float, default=30.0)
    p = sub.add_parser("big")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, default=200 * 1000 * 1000)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--seconds", type=float, default=15)
    p = sub.add_parser("upload")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, default=20 * 1000 * 1000)
    p = sub.add_parser("ttfb")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=300)
    p = sub.add_parser("throughput")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    fn = {
        "sse": cmdSSE,
        "big": cmdBig,
        "upload": cmdUpload,
        "ttfb": cmdTTFB,
        "throughput": cmdThroughput,
    }[args.cmd]
    json.dump(fn(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

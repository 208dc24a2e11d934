# -*- test-case-name: tests.test_fakeupstream -*-
"""
A small fake Responses API upstream: a real twisted.web server for the
demo, the tests and the benchmark.

By default it streams a well-formed Responses SSE answer (C{response.created},
C{output_text} deltas, C{response.completed}). Tests pick other behaviour per
request with headers, which the proxy forwards unchanged:

  - C{x-fake-scenario}: C{sse} (default), C{json}, C{gzip}, C{status},
    C{drop} (abort mid-stream), C{stall} (headers, then silence),
    C{silent} (silence before headers), C{redirect}, C{cookie}, C{big}, C{echo};
  - C{x-fake-events}, C{x-fake-interval-ms}: SSE event count and spacing;
  - C{x-fake-step: manual}: send one SSE event now and each further one
    only when a test calls the stream's C{step()};
  - C{x-fake-status}: the status for C{status}; C{x-fake-bytes}: size for C{big};
  - C{x-fake-delay-ms}: silence length for C{stall} and C{silent};
  - C{x-fake-response-headers}: a JSON list of C{[name, value]} pairs
    added to any scenario's response headers.

Every request is recorded in L{FakeUpstream.requests}, and every streamed
answer's writer in L{FakeUpstream.streams}, so tests can compare what the
upstream has sent with what their client has received.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

DEFAULT_TEXT = "Hello from the fake Responses upstream."


@dataclass
class RecordedRequest:
    """
    What the upstream received, for assertions.
    """

    method: bytes
    uri: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]


def sseEvent(payload: dict[str, Any]) -> bytes:
    """
    One SSE event: C{event:} and C{data:} lines and a blank line.
    """
    return b"event: %s\ndata: %s\n\n" % (
        payload["type"].encode(),
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def _words(text: str, count: int) -> list[str]:
    words = text.split(" ")
    pieces = [(" " if i else "") + w for i, w in enumerate(words)]
    while len(pieces) < count:
        pieces.append(" " + words[len(pieces) % len(words)])
    return pieces[:count] if count > 0 else pieces


def responseEvents(model: str, text: str, deltas: int = 0) -> list[dict[str, Any]]:
    """
    The events of one complete streamed answer whose output text is
    C{text} split into C{deltas} pieces (one per word when 0).
    """
    pieces = _words(text, deltas)
    full = "".join(pieces)
    created = int(time.time())
    base = {
        "id": "resp_fake",
        "object": "response",
        "created_at": created,
        "model": model,
        "output": [],
        "status": "in_progress",
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {
        "id": "msg_fake",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    doneItem = dict(item, status="completed", content=[dict(part, text=full)])
    usage = {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(pieces),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 5 + len(pieces),
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": base},
        {"type": "response.in_progress", "response": base},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
    ]
    events += [
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for piece in pieces
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": full, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": dict(part, text=full)},
        {"type": "response.output_item.done", "output_index": 0, "item": doneItem},
        {
            "type": "response.completed",
            "response": dict(base, status="completed", output=[doneItem], usage=usage),
        },
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def _promptText(body: bytes) -> tuple[str, str]:
    try:
        document = json.loads(body)
    except ValueError:
        return "fake-model", DEFAULT_TEXT
    if not isinstance(document, dict):
        return "fake-model", DEFAULT_TEXT
    return str(document.get("model", "fake-model")), DEFAULT_TEXT


def _intHeader(request: Request, name: bytes, default: int) -> int:
    value = request.getHeader(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _addResponseHeaders(request: Request) -> None:
    extra = request.getHeader(b"x-fake-response-headers")
    if extra is None:
        return
    for name, value in json.loads(extra):
        request.responseHeaders.addRawHeader(
            name.encode("latin-1"), value.encode("latin-1")
        )


@dataclass
class _Stream:
    """
    Writes queued chunks one by one, C{interval} seconds apart; or, when
    C{manual}, one more each time L{step} is called (the first at once).
    """

    request: Request
    chunks: list[bytes]
    interval: float
    reactor: Any
    abortAfter: int | None = None
    manual: bool = False
    call: IDelayedCall | None = None
    gone: bool = False
    sent: int = field(default=0)
    lostAt: float | None = None

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._lost)
        self._next()

    def _lost(self, _: object) -> None:
        # The connection went away before the answer was complete.
        self.gone = True
        self.lostAt = self.reactor.seconds()
        if self.call is not None and self.call.active():
            self.call.cancel()

    def step(self) -> None:
        """
        In C{manual} mode: send the next chunk (or finish the answer).
        """
        self._next()

    def _next(self) -> None:
        self.call = None
        while not self.gone:
            if self.abortAfter is not None and self.sent >= self.abortAfter:
                self.request.channel.transport.abortConnection()
                return
            if not self.chunks:
                self.request.finish()
                return
            self.request.write(self.chunks.pop(0))
            self.sent += 1
            if self.manual:
                return
            if self.interval:
                self.call = self.reactor.callLater(self.interval, self._next)
                return


class FakeUpstream(Resource):
    """
    The fake Responses endpoint; answers at any path, records every request.
    """

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []
        self.streams: list[_Stream | _BigBody] = []
        # Plain-text HTTP bytes received on all connections, even those
        # that never completed a request.
        self.bytesReceived = 0
        self.openStreams = 0

    def render(self, request: Request) -> object:
        body = request.content.read()
        self.requests.append(
            RecordedRequest(
                request.method,
                request.uri,
                [
                    (k, v)
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                    for v in vs
                ],
                body,
            )
        )
        scenario = (request.getHeader(b"x-fake-scenario") or b"sse").decode()
        handler = getattr(self, "scenario_" + scenario.replace("-", "_"), None)
        if handler is None:
            request.setResponseCode(400)
            return b"unknown scenario\n"
        request.setHeader(b"x-request-id", b"req_fake_%d" % len(self.requests))
        _addResponseHeaders(request)
        return handler(request, body)

    def _sse(self, request: Request, body: bytes, abortAfter: int | None) -> object:
        model, text = _promptText(body)
        events = responseEvents(model, text, _intHeader(request, b"x-fake-events", 0))
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"openai-processing-ms", b"12")
        request.setHeader(b"x-ratelimit-remaining-requests", b"99")
        interval = _intHeader(request, b"x-fake-interval-ms", 0) / 1000
        stream = _Stream(
            request,
            [sseEvent(e) for e in events],
            interval,
            self.reactor,
            abortAfter,
            manual=request.getHeader(b"x-fake-step") == b"manual",
        )
        self.streams.append(stream)
        stream.start()
        return NOT_DONE_YET

    def scenario_sse(self, request: Request, body: bytes) -> object:
        return self._sse(request, body, None)

    def scenario_drop(self, request: Request, body: bytes) -> object:
        return self._sse(
            request, body, _intHeader(request, b"x-fake-events-before-drop", 3)
        )

    def scenario_json(self, request: Request, body: bytes) -> bytes:
        model, text = _promptText(body)
        request.setHeader(b"content-type", b"application/json")
        document = responseEvents(model, text)[-1]["response"]
        return json.dumps(document).encode()

    def scenario_gzip(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-encoding", b"gzip")
        payload = gzip.compress(self.scenario_json(request, body))
        request.setHeader(b"content-length", b"%d" % len(payload))
        return payload

    def scenario_status(self, request: Request, body: bytes) -> bytes:
        status = _intHeader(request, b"x-fake-status", 429)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"retry-after", b"7")
        request.setHeader(b"x-ratelimit-limit-requests", b"100")
        return json.dumps(
            {"error": {"message": "fake error", "type": "fake", "code": str(status)}}
        ).encode()

    def scenario_redirect(self, request: Request, body: bytes) -> bytes:
        request.setResponseCode(302)
        request.defaultContentType = None
        request.setHeader(b"location", b"http://127.0.0.1:9/elsewhere")
        return b"redirected\n"

    def scenario_cookie(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"set-cookie", b"session=fake-upstream-cookie; Path=/")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {"cookie": (request.getHeader(b"cookie") or b"").decode()}
        ).encode()

    def scenario_echo(self, request: Request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        recorded = self.requests[-1]
        return json.dumps(
            {
                "method": recorded.method.decode(),
                "uri": recorded.uri.decode(),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")]
                    for k, v in recorded.headers
                ],
                "body_length": len(body),
            }
        ).encode()

    def scenario_stall(self, request: Request, body: bytes) -> object:
        delay = _intHeader(request, b"x-fake-delay-ms", 3000) / 1000
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b": stalling\n\n")
        chunks = [sseEvent(e) for e in responseEvents("fake-model", DEFAULT_TEXT)]
        stream = _Stream(request, chunks, 0, self.reactor)
        self.streams.append(stream)
        request.notifyFinish().addErrback(stream._lost)
        stream.call = self.reactor.callLater(delay, stream._next)
        return NOT_DONE_YET

    def scenario_silent(self, request: Request, body: bytes) -> object:
        delay = _intHeader(request, b"x-fake-delay-ms", 3000) / 1000
        stream = _Stream(request, [b'{"late": true}'], 0, self.reactor)
        self.streams.append(stream)
        request.notifyFinish().addErrback(stream._lost)
        request.setHeader(b"content-type", b"application/json")
        stream.call = self.reactor.callLater(delay, stream._next)
        return NOT_DONE_YET

    def scenario_big(self, request: Request, body: bytes) -> object:
        total = _intHeader(request, b"x-fake-bytes", 10 * 1024 * 1024)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % total)
        producer = _BigBody(request, total)
        self.streams.append(producer)
        request.registerProducer(producer, True)
        return NOT_DONE_YET


class _BigBody:
    """
    A push producer of C{total} bytes that honours pause/resume, so the fake
    upstream itself never buffers more than the socket allows.
    """

    _chunk = b"x" * 65536

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.total = total
        self.remaining = total
        self.paused = False
        self.pauses = 0
        self.stopped = False
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        request.channel.callLater(0, self.resumeProducing)

    @property
    def sentBytes(self) -> int:
        """
        Body bytes handed to the transport so far.
        """
        return self.total - self.remaining

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.remaining > 0:
            chunk = self._chunk[: min(len(self._chunk), self.remaining)]
            self.remaining -= len(chunk)
            self.request.write(chunk)
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class _CountingChannel(HTTPChannel):
    """
    An HTTP channel that adds every byte it receives (after TLS
    decryption) to its L{FakeUpstream}'s C{bytesReceived}.
    """

    def dataReceived(self, data: bytes) -> None:
        self.site.resource.bytesReceived += len(data)
        super().dataReceived(data)


def makeSite(reactor: Any) -> tuple[Site, FakeUpstream]:
    """
    A L{Site} serving a fresh L{FakeUpstream}; returns both.
    """
    upstream = FakeUpstream(reactor)
    site = Site(upstream, reactor=reactor)
    site.protocol = _CountingChannel
    site.log = lambda request: None  # type: ignore[method-assign]
    return site, upstream


def main(argv: list[str] | None = None) -> None:
    """
    Serve the fake upstream on 127.0.0.1 (C{--port N}, default ephemeral)
    and print the port on standard output.
    """
    import argparse

    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description="fake Responses API upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    site, _ = makeSite(reactor)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    sys.stdout.write(f"{port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()

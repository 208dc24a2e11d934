# -*- test-case-name: tests.test_demo -*-
"""
The demo's own upstream: a tiny fake of the Responses API that streams one
well-formed answer (C{response.created}, C{output_text} deltas,
C{response.completed}), so that C{responses-api-proxy-demo} runs offline.

It records the requests it receives, so the demo can show that the key
reached it. C{x-fake-interval-ms} spaces the events out, to make the
streaming visible. The tests' scenario server (tests/fakeupstream.py)
builds on the same answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
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


def modelOf(body: bytes) -> str:
    """
    The C{model} a request body asks for, or C{fake-model}.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return "fake-model"
    if not isinstance(document, dict):
        return "fake-model"
    return str(document.get("model", "fake-model"))


def record(request: Request) -> RecordedRequest:
    """
    Read a request's body and keep what arrived.
    """
    content = request.content
    body = content.read() if content is not None else b""
    headers = [
        (name, value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    return RecordedRequest(request.method, request.uri, headers, body)


class DemoUpstream(Resource):
    """
    Answers every request with a streamed answer, and records it.
    """

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.requests: list[RecordedRequest] = []

    def render(self, request: Request) -> int:
        recorded = record(request)
        self.requests.append(recorded)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"x-request-id", b"req_demo_%d" % len(self.requests))
        chunks = [
            sseEvent(e) for e in responseEvents(modelOf(recorded.body), DEFAULT_TEXT)
        ]
        interval = int(request.getHeader(b"x-fake-interval-ms") or b"0") / 1000
        _send(self.reactor, request, chunks, interval)
        return NOT_DONE_YET


def _send(reactor: Any, request: Request, chunks: list[bytes], interval: float) -> None:
    pending: list[IDelayedCall] = []

    def gone(_: object) -> None:
        for call in pending:
            if call.active():
                call.cancel()
        chunks.clear()

    def step() -> None:
        pending.clear()
        if not chunks:
            request.finish()
            return
        request.write(chunks.pop(0))
        pending.append(reactor.callLater(interval, step))

    request.notifyFinish().addErrback(gone)
    step()


def makeSite(reactor: Any) -> tuple[Site, DemoUpstream]:
    """
    A L{Site} serving a fresh L{DemoUpstream}; returns both.
    """
    upstream = DemoUpstream(reactor)
    site = Site(upstream, reactor=reactor)
    site.log = lambda request: None  # type: ignore[method-assign]
    return site, upstream

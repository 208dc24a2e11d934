# -*- test-case-name: tests.test_usage -*-
"""
The tokens each answer reports, read from beside the relay.

The upstream reports an answer's usage in the C{usage} object of its final
SSE event (C{response.completed}, C{response.incomplete} or
C{response.failed}), or of a non-streaming JSON answer, together with the
C{model} that answered. L{UsageWatcher} is an exchange observer: it sees
each relayed piece after the client has it, and never delays, buffers (for
the client) or changes a byte.

It reads the stream incrementally with bounded memory: only the event
being received is held, and an event larger than L{MAX_EVENT_BYTES} is
skipped, which makes that exchange's usage unknown. Deltas are recognised
by their C{event:} line (or the C{type} at the start of their data) and
never parsed. A missing or malformed usage is recorded as unknown; it is
never an error for the client.

Compressed answers are relayed unchanged. A gzip or deflate answer is
decompressed beside the relay, for accounting only (the client still gets
the compressed bytes); other encodings (br, zstd) leave the usage unknown.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from twisted.web.http_headers import Headers

from responses_proxy.record import ExchangeRecord, Usage

# The largest SSE event (or non-streaming answer) read for its usage.
MAX_EVENT_BYTES = 4 * 1024 * 1024
# Events whose data carries the answer's usage, and the first one, which
# names the model.
_TERMINAL = frozenset(
    {b"response.completed", b"response.incomplete", b"response.failed"}
)
_CREATED = b"response.created"
_TYPE = re.compile(rb'^\s*\{\s*"type"\s*:\s*"([^"]{1,64})"')
_DECOMPRESS_STEP = 256 * 1024


def usageFrom(response: Any) -> Usage | None:
    """
    The L{Usage} of a response object, or L{None} if it has no valid usage.
    """
    if not isinstance(response, dict):
        return None
    usage = response.get("usage")
    model = response.get("model")
    if not isinstance(usage, dict) or not (model is None or isinstance(model, str)):
        return None
    # Details may be absent or null; anything else must be an object.
    inputDetails = usage.get("input_tokens_details")
    outputDetails = usage.get("output_tokens_details")
    inputDetails = {} if inputDetails is None else inputDetails
    outputDetails = {} if outputDetails is None else outputDetails
    if not isinstance(inputDetails, dict) or not isinstance(outputDetails, dict):
        return None
    numbers = [
        usage.get("input_tokens"),
        inputDetails.get("cached_tokens", 0),
        usage.get("output_tokens"),
        outputDetails.get("reasoning_tokens", 0),
    ]
    if not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers
    ):
        return None
    inputTokens, cached, outputTokens, reasoning = numbers
    return Usage(model, inputTokens, cached, outputTokens, reasoning)


class SSEUsage:
    """
    Follow a C{text/event-stream}; keep the usage of its last final event.

    @ivar usage: the usage found so far (the last final event wins).
    @ivar model: the model named by C{response.created}, if any.
    @ivar oversized: an event larger than the bound was skipped.
    """

    def __init__(self, maxEvent: int = MAX_EVENT_BYTES) -> None:
        self._maxEvent = maxEvent
        self._pending = bytearray()
        self._skipping = False
        self.usage: Usage | None = None
        self.model: str | None = None
        self.sawFinal = False
        self.oversized = False

    def feed(self, data: bytes) -> None:
        """
        Look at the next piece of the stream.
        """
        if b"\r" in data or (self._pending and self._pending[-1:] == b"\r"):
            data = bytes(self._pending + data).replace(b"\r\n", b"\n")
            self._pending.clear()
        start = max(0, len(self._pending) - 1)
        self._pending += data
        pending = self._pending
        while True:
            end = pending.find(b"\n\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._event(bytes(pending[:end]))
            del pending[: end + 2]
            start = 0
        if len(pending) > self._maxEvent:
            # Too large to read: drop it, and say so at the end.
            self.oversized = True
            self._skipping = True
            keep = pending[-1:]
            pending.clear()
            pending += keep

    def _event(self, block: bytes) -> None:
        name = b""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
                if name not in _TERMINAL and name != _CREATED:
                    return  # a delta or the like: never parsed
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
        if not data:
            return
        payload = b"\n".join(data)
        if not name:
            kind = _TYPE.match(payload)
            if kind is None:
                return
            name = kind.group(1)
            if name not in _TERMINAL and name != _CREATED:
                return
        try:
            document = json.loads(payload)
        except ValueError:
            if name in _TERMINAL:
                self.sawFinal = True
                self.usage = None
            return
        response = document.get("response") if isinstance(document, dict) else None
        if name == _CREATED:
            if isinstance(response, dict) and isinstance(response.get("model"), str):
                self.model = response["model"]
            return
        self.sawFinal = True
        self.usage = usageFrom(response)


class JSONUsage:
    """
    Collect a non-streaming JSON answer (up to the bound) and read its usage.
    """

    def __init__(self, maxBody: int = MAX_EVENT_BYTES) -> None:
        self._maxBody = maxBody
        self._body = bytearray()
        self.oversized = False

    def feed(self, data: bytes) -> None:
        if self.oversized:
            return
        self._body += data
        if len(self._body) > self._maxBody:
            self.oversized = True
            self._body.clear()

    def result(self) -> Usage | None:
        if self.oversized:
            return None
        try:
            document = json.loads(bytes(self._body))
        except ValueError:
            return None
        return usageFrom(document)


class UsageWatcher:
    """
    An exchange observer that puts the answer's usage on the record.
    """

    def __init__(self, record: ExchangeRecord, maxEvent: int = MAX_EVENT_BYTES) -> None:
        self._record = record
        self._maxEvent = maxEvent
        self._sse: SSEUsage | None = None
        self._json: JSONUsage | None = None
        self._decompressor: Any = None
        self._readable = True

    def responseStarted(self, status: int, headers: Headers) -> None:
        contentType = b",".join(headers.getRawHeaders(b"content-type") or [])
        mediaType = contentType.split(b";", 1)[0].strip().lower()
        encoding = b",".join(headers.getRawHeaders(b"content-encoding") or [])
        encoding = encoding.strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            # gzip or zlib headers are detected (32); a raw deflate stream is
            # not valid HTTP "deflate" and will fail: usage unknown.
            self._decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)
        elif encoding not in (b"", b"identity"):
            self._readable = False
        if mediaType == b"text/event-stream":
            self._sse = SSEUsage(self._maxEvent)
        elif mediaType == b"application/json" or mediaType.endswith(b"+json"):
            self._json = JSONUsage(self._maxEvent)

    def bodyReceived(self, data: bytes) -> None:
        if not self._readable or (self._sse is None and self._json is None):
            return
        if self._decompressor is None:
            self._feed(data)
            return
        try:
            while data:
                piece = self._decompressor.decompress(data, _DECOMPRESS_STEP)
                self._feed(piece)
                data = self._decompressor.unconsumed_tail
        except zlib.error:
            self._readable = False

    def _feed(self, data: bytes) -> None:
        if self._sse is not None:
            self._sse.feed(data)
        elif self._json is not None:
            self._json.feed(data)

    def finished(self, record: ExchangeRecord) -> None:
        if self._sse is not None and self._decompressor is not None and self._readable:
            try:
                self._sse.feed(self._decompressor.flush())
            except zlib.error:
                self._readable = False
        if not self._readable:
            return
        if self._sse is not None:
            sse = self._sse
            record.model = sse.model
            if sse.oversized or not sse.sawFinal:
                return
            record.usage = sse.usage
            if sse.usage is not None and sse.usage.model is not None:
                record.model = sse.usage.model
        elif self._json is not None:
            usage = self._json.result()
            record.usage = usage
            if usage is not None:
                record.model = usage.model


def watchUsage(request: Any, record: ExchangeRecord) -> UsageWatcher:
    """
    The observer factory the forwarder uses for every exchange.
    """
    return UsageWatcher(record)

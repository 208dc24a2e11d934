"""
Reading each answer's token usage from beside the relay: SSE streams split
anywhere, JSON answers, compressed answers, and every way a usage can be
missing, malformed, zero or too large to read.

Unit tests (in memory).
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from responses_proxy import usage as usagemodule
from responses_proxy.record import ExchangeRecord, Usage
from responses_proxy.usage import SSEUsage, UsageWatcher, usageFrom
from tests.fakeupstream import responseEvents, sseEvent

USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 100},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 12},
    "total_tokens": 150,
}


def stream(
    usage: Any = USAGE, model: str = "gpt-test", final: str = "completed"
) -> bytes:
    """
    A whole Responses SSE answer whose final event has C{usage}.
    """
    events = responseEvents(model, "Hello there, general Kenobi.")
    last = events[-1]
    last["type"] = f"response.{final}"
    if usage is None:
        last["response"].pop("usage", None)
    else:
        last["response"]["usage"] = usage
    return b"".join(sseEvent(event) for event in events)


def watch(
    body: bytes,
    contentType: bytes = b"text/event-stream",
    encoding: bytes | None = None,
    pieces: int = 1,
    maxEvent: int = usagemodule.MAX_EVENT_BYTES,
) -> ExchangeRecord:
    """
    Run a watcher over C{body} relayed in C{pieces} pieces; return the record.
    """
    record = ExchangeRecord("POST", "/v1/responses", forwarded=True)
    watcher = UsageWatcher(record, maxEvent=maxEvent)
    headers = Headers({b"content-type": [contentType]})
    if encoding is not None:
        headers.setRawHeaders(b"content-encoding", [encoding])
    watcher.responseStarted(200, headers)
    size = max(1, len(body) // pieces)
    for start in range(0, len(body), size):
        watcher.bodyReceived(body[start : start + size])
    watcher.finished(record)
    return record


EXPECTED = Usage("gpt-test", 120, 100, 30, 12)


class SSETests(SynchronousTestCase):
    """
    The usage of a streamed answer.
    """

    def test_completed(self) -> None:
        """
        The final event's usage and model are recorded.
        """
        record = watch(stream())
        self.assertEqual((record.usage, record.model), (EXPECTED, "gpt-test"))

    def test_incompleteAndFailed(self) -> None:
        """
        C{response.incomplete} and C{response.failed} report usage too.
        """
        for final in ("incomplete", "failed"):
            self.assertEqual(watch(stream(final=final)).usage, EXPECTED, final)

    def test_splitAnywhere(self) -> None:
        """
        However the relayed pieces split the stream (every byte its own
        piece included), the usage is the same.
        """
        body = stream()
        for pieces in (2, 3, 7, 50, len(body)):
            self.assertEqual(watch(body, pieces=pieces).usage, EXPECTED, pieces)

    def test_crlf(self) -> None:
        """
        Events separated by CRLF line endings, split even inside a CRLF.
        """
        body = stream().replace(b"\n", b"\r\n")
        for pieces in (1, 5, len(body)):
            self.assertEqual(watch(body, pieces=pieces).usage, EXPECTED, pieces)

    def test_noEventLines(self) -> None:
        """
        Without C{event:} lines, the data's C{type} says which event it is.
        """
        body = b"".join(
            line + b"\n"
            for line in stream().split(b"\n")
            if not line.startswith(b"event:")
        )
        self.assertEqual(watch(body).usage, EXPECTED)

    def test_zeroUsage(self) -> None:
        """
        A usage of zero tokens is a known usage of zero.
        """
        zero = {"input_tokens": 0, "output_tokens": 0}
        self.assertEqual(watch(stream(usage=zero)).usage, Usage("gpt-test"))

    def test_missingUsage(self) -> None:
        """
        A final event without usage: unknown (the model is still known).
        """
        record = watch(stream(usage=None))
        self.assertEqual((record.usage, record.model), (None, "gpt-test"))

    def test_malformedUsage(self) -> None:
        """
        Negative, fractional, boolean, string or missing counts: unknown.
        """
        for bad in [
            {"input_tokens": -1, "output_tokens": 3},
            {"input_tokens": 1.5, "output_tokens": 3},
            {"input_tokens": True, "output_tokens": 3},
            {"input_tokens": "12", "output_tokens": 3},
            {"output_tokens": 3},
            {"input_tokens": 1, "output_tokens": 3, "input_tokens_details": []},
            "lots",
        ]:
            self.assertIsNone(watch(stream(usage=bad)).usage, bad)

    def test_malformedFinalEvent(self) -> None:
        """
        A final event whose data is not JSON: unknown.
        """
        body = stream() + b"event: response.completed\ndata: {not json\n\n"
        self.assertIsNone(watch(body).usage)

    def test_noFinalEvent(self) -> None:
        """
        A stream cut before its final event: unknown.
        """
        body = stream()
        cut = body[: body.index(b"event: response.completed")]
        self.assertIsNone(watch(cut).usage)

    def test_oversizedEvent(self) -> None:
        """
        An event larger than the bound is skipped: the usage is unknown, and
        memory stays within the bound.
        """
        body = stream()
        self.assertIsNone(watch(body, maxEvent=len(body) // 20, pieces=100).usage)
        sse = SSEUsage(maxEvent=1000)
        sse.feed(b"event: response.output_text.delta\ndata: " + b"x" * 100_000)
        self.assertTrue(sse.oversized)
        self.assertLess(len(sse._pending), 1000)

    def test_deltasNotParsed(self) -> None:
        """
        Only the first and the final event are parsed as JSON.
        """
        with mock.patch.object(usagemodule.json, "loads", wraps=json.loads) as loads:
            watch(stream())
        self.assertEqual(loads.call_count, 2)


class JSONTests(SynchronousTestCase):
    """
    The usage of a non-streaming answer.
    """

    def answer(self, usage: Any = USAGE) -> bytes:
        response = responseEvents("gpt-test", "Hi")[-1]["response"]
        response["usage"] = usage
        return json.dumps(response).encode()

    def test_json(self) -> None:
        """
        The answer's own C{usage} and C{model}.
        """
        record = watch(self.answer(), b"application/json; charset=utf-8", pieces=3)
        self.assertEqual((record.usage, record.model), (EXPECTED, "gpt-test"))

    def test_notJSON(self) -> None:
        """
        A body that is not JSON, or too large to read: unknown.
        """
        self.assertIsNone(watch(b"<html>", b"application/json").usage)
        self.assertIsNone(watch(self.answer(), b"application/json", maxEvent=10).usage)

    def test_otherTypes(self) -> None:
        """
        Other content types are not read.
        """
        self.assertIsNone(watch(self.answer(), b"text/plain").usage)


class CompressedTests(SynchronousTestCase):
    """
    Compressed answers: read beside the relay, which relays them unchanged.
    """

    def test_gzipStream(self) -> None:
        """
        A gzip SSE stream is decompressed for accounting.
        """
        body = gzip.compress(stream())
        self.assertEqual(watch(body, encoding=b"gzip", pieces=9).usage, EXPECTED)

    def test_deflateJSON(self) -> None:
        """
        A deflate (zlib) JSON answer too.
        """
        response = responseEvents("gpt-test", "Hi")[-1]["response"]
        response["usage"] = USAGE
        body = zlib.compress(json.dumps(response).encode())
        record = watch(body, b"application/json", encoding=b"deflate", pieces=4)
        self.assertEqual(record.usage, EXPECTED)

    def test_otherEncodings(self) -> None:
        """
        Brotli, zstd or a broken gzip stream: unknown.
        """
        self.assertIsNone(watch(stream(), encoding=b"br").usage)
        self.assertIsNone(watch(b"not gzip at all", encoding=b"gzip").usage)


class UsageFromTests(SynchronousTestCase):
    """
    L{usageFrom} on response objects.
    """

    def test_detailsOptional(self) -> None:
        """
        Missing details count as zero cached and zero reasoning tokens.
        """
        response = {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 4}}
        self.assertEqual(usageFrom(response), Usage("m", 3, 0, 4, 0))
        self.assertEqual(usageFrom(response).totalTokens, 7)  # type: ignore[union-attr]

    def test_notAnObject(self) -> None:
        """
        Anything but an object with a usage object: L{None}.
        """
        responses: list[Any] = [None, [], {"usage": None}, {"model": 3, "usage": {}}]
        for response in responses:
            self.assertIsNone(usageFrom(response), response)

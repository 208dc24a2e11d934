# -*- test-case-name: tests.test_hostile -*-
"""
Hostile HTTP over raw sockets: only the exact C{POST /v1/responses}, with
what admission wants (a loopback C{Host}, a JSON body, no browser's
headers), is ever forwarded; malformed, ambiguous and smuggling requests
get a 4xx of their own (or a closed connection), reach nobody, and never
disturb the next client. Every corpus request is otherwise what a client
sends, so that it meets the refusal it is there for.

The raw-HTTP helpers here (L{parseResponse}, L{blockingExchange},
L{goodRequest}) are shared with the other adversarial test modules.

Integration tests (loopback): raw sockets against the proxy in-process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.trial.unittest import TestCase

from tests.support import rawExchange, startFakeUpstream, startProxy, waitFor

# Raw HTTP helpers ------------------------------------------------------------


@dataclass
class RawResponse:
    """
    One HTTP/1.1 response parsed from raw bytes, with its framing checked.

    @ivar complete: the body is exactly as long as its framing announced
        (C{Content-Length}, or chunked up to the terminating chunk).
    @ivar framing: C{"length"}, C{"chunked"} or C{"close"}.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool
    framing: str
    rest: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        """
        All values of header C{name} (case-insensitive).
        """
        return [v for k, v in self.headers if k.lower() == name.lower()]


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    body = bytearray()
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end == -1:
            return bytes(body), False, b""
        sizeText = data[position:end].split(b";")[0].strip()
        try:
            size = int(sizeText, 16)
        except ValueError:
            return bytes(body), False, b""
        position = end + 2
        if size == 0:
            trailerEnd = data.find(b"\r\n\r\n", position - 2)
            if trailerEnd == -1:
                return bytes(body), False, b""
            return bytes(body), True, data[trailerEnd + 4 :]
        if len(data) < position + size + 2:
            body += data[position : position + size]
            return bytes(body), False, b""
        body += data[position : position + size]
        if data[position + size : position + size + 2] != b"\r\n":
            return bytes(body), False, b""
        position += size + 2


def parseResponse(data: bytes, *, closed: bool = True) -> RawResponse | None:
    """
    Parse the first response in C{data}; L{None} if not even its head arrived.

    C{closed} says the connection ended after C{data}, which completes a
    response framed by connection close.
    """
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    response = RawResponse(status, headers, b"", False, "close")
    lengths = response.header(b"content-length")
    if any(v.lower() == b"chunked" for v in response.header(b"transfer-encoding")):
        response.framing = "chunked"
        response.body, response.complete, response.rest = _dechunk(rest)
    elif lengths:
        response.framing = "length"
        length = int(lengths[0])
        response.body = rest[:length]
        response.rest = rest[length:]
        response.complete = len(response.body) == length
    elif status in (204, 304) or 100 <= status < 200:
        response.complete = True
        response.rest = rest
    else:
        response.body = rest
        response.complete = closed
    return response


def blockingExchange(
    port: int, payload: bytes, timeout: float = 10.0
) -> tuple[bytes, bool]:
    """
    Send C{payload} on a fresh blocking socket and read until the server
    closes; returns the bytes and whether the close was a reset.

    For use from a thread (L{threads.deferToThread}), never the reactor's.
    """
    received = bytearray()
    reset = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            reset = True
    return bytes(received), reset


def openFDs() -> int:
    """
    How many file descriptors this (test) process has open.
    """
    return len(os.listdir("/proc/self/fd"))


def goodRequest(
    body: bytes = b'{"model": "m", "input": "hi"}', **headers: str
) -> bytes:
    """
    A well-formed C{POST /v1/responses} that closes the connection after.
    """
    extra = b"".join(
        f"{name.replace('_', '-')}: {value}\r\n".encode()
        for name, value in headers.items()
    )
    return (
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n%s\r\n%s"
    ) % (len(body), extra, body)


# Property-based routing ------------------------------------------------------

_TCHARS = (
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))

_methods = st.one_of(
    st.sampled_from(
        [
            "POST",
            "post",
            "Post",
            "GET",
            "HEAD",
            "PUT",
            "DELETE",
            "OPTIONS",
            "PATCH",
            "TRACE",
            "CONNECT",
            "PROPFIND",
            "POSTX",
        ]
    ),
    st.text(_TCHARS, min_size=1, max_size=12),
)

_targetPieces = st.sampled_from(
    [
        "/v1/responses",
        "/v1/responses/",
        "/v1/responses?",
        "/v1/responses?stream=true",
        "/v1/responses#",
        "/v1/responses;x",
        "/v1//responses",
        "//v1/responses",
        "/v1/./responses",
        "/v1/../v1/responses",
        "/v1/%72esponses",
        "/v1/responses%00",
        "/v1/responses%2F",
        "/V1/responses",
        "/v1/Responses",
        "/v1/responses/x",
        "/v1",
        "/",
        "*",
        "/shutdown",
        "/shutdown?x",
        "http://127.0.0.1/v1/responses",
        "http://api.openai.com/v1/responses",
        "/v1/models",
        "/v1/files",
        "/v2/responses",
    ]
)

_targets = st.one_of(
    _targetPieces,
    st.builds(lambda a, b: a + b, _targetPieces, st.text(_VCHARS, max_size=8)),
    st.builds(lambda b: "/" + b, st.text(_VCHARS, max_size=24)),
)

_headerNames = st.one_of(
    st.sampled_from(
        [
            "Authorization",
            "Host",
            "X-Forwarded-For",
            "X-HTTP-Method-Override",
            "X-Original-URL",
            "X-Rewrite-URL",
            "Cookie",
            "Expect",
            "Upgrade",
            "Forwarded",
            "X-Fake-Scenario",
            "Accept",
            # What admission looks at: a browser's marks, a second Host or
            # Content-Type.
            "Origin",
            "Sec-Fetch-Mode",
            "Content-Type",
        ]
    ),
    st.text(_TCHARS, min_size=1, max_size=16),
)
_headerValues = st.text(_VCHARS + " \t", max_size=40).map(str.strip)
_reservedHeaders = {"content-length", "transfer-encoding", "connection", "expect"}
_headerSets = st.lists(
    st.tuples(_headerNames, _headerValues).filter(
        lambda pair: pair[0].lower() not in _reservedHeaders
    ),
    max_size=8,
)


def _request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    body = b'{"input": "x"}'
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _expectedRefusal(
    method: str, target: str, headers: list[tuple[str, str]]
) -> tuple[int, str] | None:
    """
    How the proxy must answer L{_request}C{(method, target, headers)}: the
    status and error code of its refusal, or L{None} when it forwards it.
    Admission comes first (a browser's headers, then a second C{Host},
    then a WebSocket upgrade, then, for what would be forwarded, a second
    C{Content-Type}); what it admits is forwarded only in the exact form.
    """
    names = [name.lower() for name, _ in headers]
    if any(name == "origin" or name.startswith("sec-fetch-") for name in names):
        return 403, "browser_request"
    if "host" in names:
        return 403, "host_not_allowed"
    upgrades = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "upgrade"
        for token in value.split(",")
    }
    if method == "GET" and target == "/v1/responses" and "websocket" in upgrades:
        return 426, "websocket_not_supported"
    if method == "POST" and target == "/v1/responses":
        if "content-type" in names:
            return 415, "unsupported_media_type"
        return None
    return 403, "forbidden"


class RoutingPropertyTests(TestCase):
    """
    Whatever the method, target and headers, only exact C{POST /v1/responses}
    reaches the upstream.
    """

    timeout = 60

    async def test_onlyExactFormForwarded(self) -> None:
        """
        For generated methods, request targets and header sets, the answer is
        a refusal (403 C{forbidden}, or admission's own, see
        L{_expectedRefusal}) and the upstream records nothing, unless the
        method is exactly C{POST} and the target exactly C{/v1/responses}
        and admission lets it through: then it is forwarded once.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--http-shutdown")
        seen = upstream.resource.requests
        stats = {"forwarded": 0, "refused": 0}

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(method=_methods, target=_targets, headers=_headerSets)
        def check(method: str, target: str, headers: list[tuple[str, str]]) -> None:
            # Never send the one request that legitimately stops the proxy.
            if method == "GET" and target == "/shutdown":
                target = "/shutdown/"
            before = len(seen)
            data, _ = blockingExchange(proxy.port, _request(method, target, headers))
            response = parseResponse(data)
            assert response is not None, (method, target, data[:200])
            refusal = _expectedRefusal(method, target, headers)
            if refusal is None:
                assert response.status == 200, (target, headers, response.status)
                assert len(seen) == before + 1
                stats["forwarded"] += 1
            else:
                status, code = refusal
                assert response.status == status, (method, target, headers, data)
                if method != "HEAD":  # a HEAD answer has no body
                    assert response.complete, (method, target, headers, data)
                    error = json.loads(response.body)["error"]
                    assert error["code"] == code, (error, headers)
                assert len(seen) == before, (method, target)
                stats["refused"] += 1

        started = time.monotonic()
        await threads.deferToThread(check)
        self.assertLess(time.monotonic() - started, 30)
        self.assertGreater(stats["refused"], 100)
        self.assertTrue(all(r.uri == b"/v1/responses" for r in seen))


_BASE_REQUEST = (
    b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\n"
    b'Connection: close\r\nContent-Length: 14\r\n\r\n{"input": "x"}'
)
_INTERESTING = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\xff", b"0", b";"]


@st.composite
def _mutatedRequests(draw: st.DrawFn) -> bytes:
    data = bytearray(_BASE_REQUEST)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(
            st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=3))
        )
        if action == "insert":
            data[position:position] = piece
        elif action == "delete":
            del data[position : position + len(piece)]
        else:
            data[position : position + len(piece)] = piece
    return bytes(data)


class MutationFuzzTests(TestCase):
    """
    Byte-level mutations of a valid request never confuse the proxy.
    """

    timeout = 60

    async def test_mutatedRequests(self) -> None:
        """
        For requests made by inserting, deleting or replacing a few bytes of
        a valid one: the answer is a 2xx from the upstream or a 4xx from the
        proxy (or a closed connection), anything forwarded is exactly
        C{POST /v1/responses} with a body the request framed, nothing is
        logged as an error, and the proxy keeps answering.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "0.5")
        seen = upstream.resource.requests
        stats = {"forwarded": 0, "refused": 0, "closed": 0}

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(payload=_mutatedRequests())
        def check(payload: bytes) -> None:
            before = len(seen)
            data, _ = blockingExchange(proxy.port, payload, timeout=5)
            response = parseResponse(data)
            if response is None:
                assert data == b"", (payload, data[:200])
                assert len(seen) == before, payload
                stats["closed"] += 1
                return
            if response.status == 200:
                assert len(seen) == before + 1, payload
                forwarded = seen[-1]
                assert (forwarded.method, forwarded.uri) == (
                    b"POST",
                    b"/v1/responses",
                ), payload
                assert forwarded.body in payload, (payload, forwarded.body)
                stats["forwarded"] += 1
            else:
                assert 400 <= response.status < 500, (payload, data[:200])
                assert len(seen) == before, payload
                stats["refused"] += 1

        await threads.deferToThread(check)
        self.assertGreater(stats["refused"], 50, stats)
        data = await rawExchange(proxy.port, goodRequest())
        good = parseResponse(data)
        assert good is not None, data[:200]
        self.assertEqual(good.status, 200)


def _sendInPieces(port: int, payload: bytes, cuts: list[int]) -> bytes:
    """
    Send C{payload} split at C{cuts} (separate C{send} calls, no Nagle),
    then read until the server closes. Run in a thread.
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        for cut in sorted(set(cuts)) + [len(payload)]:
            if start < cut <= len(payload):
                sock.sendall(payload[start:cut])
                start = cut
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


@st.composite
def _chunkedRequests(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    body = draw(st.binary(max_size=3000))
    sizes = draw(st.lists(st.integers(1, 700), max_size=10))
    pieces, position = [], 0
    for size in sizes:
        if position >= len(body):
            break
        pieces.append(body[position : position + size])
        position += size
    if position < len(body):
        pieces.append(body[position:])
    frames = b""
    for piece in pieces:
        extension = draw(st.sampled_from([b"", b";a=b", b';name="v"', b";x"]))
        frames += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    frames += b"0\r\n\r\n"
    head = (
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"X-Fake-Scenario: json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    payload = head + frames
    cuts = draw(st.lists(st.integers(1, len(payload) - 1), max_size=12))
    return payload, body, cuts


class BodyFramingPropertyTests(TestCase):
    """
    However a valid body is framed and fragmented, the upstream gets it
    byte for byte.
    """

    timeout = 60

    async def test_chunkedBodiesForwardedExactly(self) -> None:
        """
        For generated bodies split into chunks (with chunk extensions) and
        sent in arbitrary TCP fragments, the proxy answers 200 and the
        upstream receives exactly the body, once.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        seen = upstream.resource.requests

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(request=_chunkedRequests())
        def check(request: tuple[bytes, bytes, list[int]]) -> None:
            payload, body, cuts = request
            before = len(seen)
            response = parseResponse(_sendInPieces(proxy.port, payload, cuts))
            assert response is not None and response.status == 200, payload[:200]
            assert len(seen) == before + 1
            assert seen[-1].body == body, (payload[:200], seen[-1].body[:100])

        await threads.deferToThread(check)


# Malformed and smuggling input -----------------------------------------------

_BODY = b'{"model": "m", "input": "hi"}'

# The request line and the headers admission wants (a loopback Host, a JSON
# body): each case below is a request a client could send but for its one
# malformation, so that it meets its own refusal, not admission's.
_POST = (
    b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\n"
)
_JSON = b"Content-Type: application/json\r\n"

# (name, raw bytes): every one of them must be refused without forwarding.
MALFORMED: list[tuple[str, bytes]] = [
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ("missing version", b"POST /v1/responses\r\nHost: 127.0.0.1\r\n" + _JSON + b"\r\n"),
    (
        "HTTP/2.0 version",
        b"POST /v1/responses HTTP/2.0\r\nHost: 127.0.0.1\r\n" + _JSON + b"\r\n",
    ),
    ("HTTP/0.9 style", b"GET /\r\n\r\n"),
    (
        "extra spaces",
        b"POST  /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + _JSON
        + b"Content-Length: 0\r\n\r\n",
    ),
    (
        "tab separator",
        b"POST\t/v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + _JSON
        + b"Content-Length: 0\r\n\r\n",
    ),
    (
        "lowercase version",
        b"POST /v1/responses http/1.1\r\nHost: 127.0.0.1\r\n"
        + _JSON
        + b"Content-Length: 0\r\n\r\n",
    ),
    (
        "bare LF everywhere",
        b"POST /v1/responses HTTP/1.1\nHost: 127.0.0.1\n"
        b"Content-Type: application/json\nContent-Length: %d\n\n%s"
        % (len(_BODY), _BODY),
    ),
    (
        "bare LF in headers",
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\nContent-Length: %d\r\n"
        b"Content-Type: application/json\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "bare CR in header",
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\rX: y\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(_BODY), _BODY),
    ),
    (
        "obs-folded header",
        _POST
        + b"X-Folded: a\r\n b\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "obs-folded content-length",
        _POST + b"Content-Length:\r\n %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "leading whitespace header",
        b"POST /v1/responses HTTP/1.1\r\n Host: 127.0.0.1\r\n"
        + _JSON
        + b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "space before colon",
        _POST + b"Content-Length : %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "header without colon",
        _POST + b"NoColonHere\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "content-length and transfer-encoding (CL.TE)",
        _POST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    ),
    (
        "transfer-encoding and content-length (TE.CL)",
        _POST + b"Transfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    ),
    (
        "two different content-lengths",
        _POST + b"Content-Length: 5\r\nContent-Length: 30\r\n\r\n" + _BODY,
    ),
    (
        "two equal content-lengths",
        _POST
        + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
        % (len(_BODY), len(_BODY), _BODY),
    ),
    (
        "comma-listed content-length",
        _POST + b"Content-Length: %d, %d\r\n\r\n%s" % (len(_BODY), len(_BODY), _BODY),
    ),
    (
        "signed content-length",
        _POST + b"Content-Length: +%d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "negative content-length",
        _POST + b"Content-Length: -1\r\n\r\n" + _BODY,
    ),
    (
        "hex content-length",
        _POST + b"Content-Length: 0x1d\r\n\r\n" + _BODY,
    ),
    (
        "transfer-encoding chunked twice",
        _POST + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding list",
        _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding obfuscated",
        _POST + b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding with trailing garbage",
        _POST + b"Transfer-Encoding: chunked;x\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size with 0x prefix",
        _POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "negative chunk size",
        _POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "non-hex chunk size",
        _POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk shorter than its size",
        _POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size with bare LF",
        _POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ),
    (
        "overlong chunk size line",
        _POST
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"0" * 20000
        + b"5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "NUL in request target",
        b"POST /v1/responses\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + _JSON
        + b"Content-Length: 0\r\n\r\n",
    ),
    (
        "NUL in header value",
        _POST + b"X-A: a\x00b\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "NUL in header name",
        _POST + b"X\x00A: a\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "control character in header value",
        _POST + b"X-A: a\x01b\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "escape sequence in header value",
        _POST
        + b"X-A: \x1b[31mred\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "DEL in header value",
        _POST + b"X-A: a\x7fb\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "non-ASCII in header name",
        _POST + b"X-\xc3\xa9: a\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "one 1 MB header line",
        _POST
        + b"X-Big: "
        + b"a" * (1 << 20)
        + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
    (
        "10,000 headers",
        _POST
        + b"".join(b"X-H%d: v\r\n" % i for i in range(10000))
        + b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
    ),
]

# The error codes of admission's refusals: a malformed request must meet its
# own refusal (a 400, 413, 431 or the resource's 403), never one of these.
_ADMISSION_CODES = {"browser_request", "host_not_allowed", "unsupported_media_type"}


def _errorCode(response: RawResponse) -> str | None:
    """
    The C{code} of a JSON error answer, if it is one.
    """
    try:
        code = json.loads(response.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


_HIDDEN = _POST + b"Content-Length: 0\r\n\r\n"
_CLTE_BODY = b"0\r\n\r\nGET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\r\n"

# Requests that are valid HTTP but carry a second request inside their body
# or right after it: only the first may be forwarded, with exactly its body.
# Both would be admitted, each on its own.
SMUGGLING: list[tuple[str, bytes, bytes]] = [
    (
        "CL.TE: chunked terminator inside a Content-Length body",
        # The Content-Length announces seven bytes more than the body has.
        _POST
        + b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n"
        % (len(_CLTE_BODY) + 7)
        + _CLTE_BODY,
        b"",
    ),
    (
        "request after a zero Content-Length",
        _POST
        + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        + _POST
        + b"Content-Length: 3\r\n\r\nabc",
        b"",
    ),
    (
        "request hidden after the terminating chunk",
        _POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" + _POST + b"Content-Length: 3\r\n\r\nabc",
        b"hello",
    ),
    (
        "request line inside a Content-Length body",
        _POST
        + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(_HIDDEN), _HIDDEN),
        _HIDDEN,
    ),
    (
        "pipelined forbidden request",
        _POST + b"Content-Length: 5\r\n\r\nhello"
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        b"hello",
    ),
]


class MalformedInputTests(TestCase):
    """
    Malformed framing, headers and request lines are refused at the door.
    """

    timeout = 60

    async def test_malformedRefused(self) -> None:
        """
        Each malformed request gets a 4xx for its malformation (not an
        admission refusal), or its connection closed without an answer;
        nothing reaches the upstream, and the proxy answers a good request
        right after it.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "1")
        seen = upstream.resource.requests
        # A first exchange opens what stays open (the pooled upstream
        # connection, the reactor's lazily made pipes): count after it.
        await rawExchange(proxy.port, goodRequest())
        del seen[:]
        before = openFDs()
        for name, payload in MALFORMED:
            started = reactor.seconds()
            data = await rawExchange(proxy.port, payload, timeout=5)
            elapsed = reactor.seconds() - started
            response = parseResponse(data)
            if response is not None:
                self.assertTrue(400 <= response.status < 500, f"{name}: {data[:200]!r}")
                self.assertNotIn(
                    _errorCode(response), _ADMISSION_CODES, f"{name}: {data[:200]!r}"
                )
            self.assertLess(elapsed, 3, f"{name}: not refused promptly")
            self.assertEqual(seen, [], f"{name}: reached the upstream")
            data = await rawExchange(proxy.port, goodRequest())
            good = parseResponse(data)
            self.assertIsNotNone(good, f"after {name}")
            assert good is not None
            self.assertEqual((good.status, good.complete), (200, True), name)
            self.assertEqual([r.body for r in seen], [_BODY], name)
            del seen[:]
        # Every refused connection was closed on the proxy's side too.
        await waitFor(lambda: openFDs() <= before, timeout=5)

    async def test_malformedRefusedPromptly(self) -> None:
        """
        Bare LFs and obs-folding are refused with a 400 right away, not left
        to the request timeout.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url, "--request-timeout", "30")
        for name, payload in MALFORMED:
            if "bare LF" not in name and "folded" not in name:
                continue
            data = await rawExchange(proxy.port, payload, timeout=5)
            response = parseResponse(data)
            self.assertIsNotNone(response, f"{name}: no answer within 5 s")
            assert response is not None
            self.assertEqual(response.status, 400, name)
        self.assertEqual(upstream.resource.requests, [])

    async def test_smugglingForwardsOnlyTheDeclaredBody(self) -> None:
        """
        A second request hidden in or after a body is never forwarded as a
        request: the upstream sees at most the one legitimate request, with
        exactly its declared body, and the proxy keeps serving.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(
            self, upstream.url, "--request-timeout", "1", "--http-shutdown"
        )
        seen = upstream.resource.requests
        for name, payload, body in SMUGGLING:
            data = await rawExchange(proxy.port, payload, timeout=5)
            self.assertLessEqual(len(seen), 1, name)
            for request in seen:
                self.assertEqual(request.uri, b"/v1/responses", name)
                self.assertEqual(request.body, body, name)
            responses = []
            while data:
                response = parseResponse(data)
                if response is None:
                    break
                responses.append(response.status)
                data = response.rest
            self.assertTrue(responses, f"{name}: no answer")
            self.assertNotIn(200, responses[1:], name)
            del seen[:]
            data = await rawExchange(proxy.port, goodRequest())
            good = parseResponse(data)
            assert good is not None, name
            self.assertEqual(good.status, 200, name)
            self.assertEqual([r.body for r in seen], [_BODY], name)
            del seen[:]

    async def test_tabAndObsTextValuesForwarded(self) -> None:
        """
        Header values may hold horizontal tabs and obs-text bytes (RFC 9110
        5.5): those are forwarded unchanged.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        data = await rawExchange(
            proxy.port,
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"X-A: a\tb \xe9\xff\r\nContent-Length: 2\r\n\r\n{}",
        )
        response = parseResponse(data)
        assert response is not None, data[:200]
        self.assertEqual(response.status, 200)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.header(b"x-a"), [b"a\tb \xe9\xff"])

    async def test_errorsAreJSON(self) -> None:
        """
        The proxy's own 400 for a malformed request is a complete JSON error
        that closes the connection.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        data = await rawExchange(
            proxy.port,
            _POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        )
        response = parseResponse(data)
        assert response is not None
        self.assertEqual(response.status, 400)
        self.assertTrue(response.complete)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        self.assertIn("error", json.loads(response.body))

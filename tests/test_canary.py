# -*- test-case-name: tests.test_canary -*-
"""
The canary: a spawned proxy runs on a recognisable key through every kind
of traffic, and the key (in any of the forms it could leak in) appears
nowhere it must not: no log line, no dump file, not the server-info file,
no byte sent to any client, not the process's command line or environment.

Integration tests (processes): spawned proxies, loopback sockets.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import TYPE_CHECKING

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.processes import endWithin, spawnProxy
from tests.support import CANARY_KEY, rawExchange, startFakeUpstream

BODY = json.dumps({"model": "m", "input": "hello", "stream": True}).encode()


def leakForms(key: str) -> list[bytes]:
    """
    The byte strings whose presence would mean the key leaked: the key, a
    distinctive piece of it (a truncated leak), the header value, the key's
    base64 and URL-safe base64 (at any alignment, so also inside an encoded
    C{Bearer <key>} or C{user:key}) and its hex.
    """
    raw = key.encode()
    forms = [raw, raw[8:28], b"Bearer " + raw]
    # base64 depends on where the key starts within the encoded bytes: take
    # the middle of its encoding at each of the three alignments, which is
    # the same whatever surrounds it (a header value, "user:key", JSON...).
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.append(encode(b"\0" * pad + raw)[4:-4])
    forms += [raw.hex().encode(), raw.hex().upper().encode()]
    return forms


def request(
    target: bytes = b"/v1/responses",
    method: bytes = b"POST",
    body: bytes = BODY,
    headers: dict[bytes, bytes] | None = None,
    host: bytes = b"127.0.0.1",
) -> bytes:
    """
    One complete HTTP/1.1 request that asks the server to close afterwards.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host]
    allHeaders = {b"Connection": b"close", b"Content-Type": b"application/json"}
    allHeaders.update(headers or {})
    if body or method == b"POST":
        allHeaders[b"Content-Length"] = b"%d" % len(body)
    lines += [name + b": " + value for name, value in allHeaders.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def scenario(name: bytes, **extra: bytes) -> bytes:
    """
    A POST /v1/responses asking the fake upstream for C{name}.
    """
    headers = {b"X-Fake-Scenario": name}
    headers.update({k.replace("_", "-").encode(): v for k, v in extra.items()})
    return request(headers=headers)


TRAFFIC: list[tuple[str, bytes]] = [
    ("streamed success", request()),
    ("json success", scenario(b"json")),
    ("gzip success", scenario(b"gzip")),
    ("upstream 401", scenario(b"status", X_Fake_Status=b"401")),
    ("upstream 500", scenario(b"status", X_Fake_Status=b"500")),
    ("upstream drops mid-stream", scenario(b"drop")),
    ("upstream redirect", scenario(b"redirect")),
    ("upstream cookie", scenario(b"cookie")),
    ("client sends its own key", request(headers={b"Authorization": b"Bearer x"})),
    ("GET /v1/responses", request(method=b"GET", body=b"")),
    ("query string", request(b"/v1/responses?debug=1")),
    ("other path", request(b"/v1/chat/completions")),
    ("root", request(b"/", method=b"GET", body=b"")),
    ("shutdown disabled", request(b"/shutdown", method=b"GET", body=b"")),
    ("PUT", request(method=b"PUT")),
    ("OPTIONS *", request(b"*", method=b"OPTIONS", body=b"")),
    ("browser", request(headers={b"Origin": b"https://page.example"})),
    ("foreign Host", request(host=b"attacker.example")),
    (
        "form body",
        request(headers={b"Content-Type": b"application/x-www-form-urlencoded"}),
    ),
    (
        "WebSocket upgrade",
        request(
            method=b"GET",
            body=b"",
            headers={b"Connection": b"Upgrade", b"Upgrade": b"websocket"},
        ),
    ),
    ("too large (announced)", request(body=b"x" * 5000)),
    (
        "too large (chunked)",
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"800\r\n" + b"y" * 0x800 + b"\r\n") * 3
        + b"0\r\n\r\n",
    ),
    ("garbage", b"\x00\x01\x02 not http at all\r\n\r\n"),
    ("bad version", b"GET /v1/responses HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n"),
    ("header without colon", b"POST /v1/responses HTTP/1.1\r\nHost x\r\n\r\n"),
    (
        "bad chunk size",
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n\r\n",
    ),
    (
        "two content lengths",
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ),
    ("huge header", request(headers={b"X-Big": b"h" * 70000})),
]


def freePort() -> int:
    """
    A loopback port nothing listens on (it was bound and released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if TYPE_CHECKING:
    # The mixin is only ever mixed into a TestCase (and must not be one
    # itself, or trial would run it without an entry point).
    _MixinBase = TestCase
else:
    _MixinBase = object


class _CanaryTests(_MixinBase):
    """
    Run the traffic through the entry point C{entry}, then search.
    """

    entry: str
    extraArgs: tuple[str, ...] = ()

    def assertNoLeak(self, where: str, data: bytes) -> None:
        """
        None of the L{leakForms} of the key is in C{data}, found C{where}.
        """
        for form in leakForms(CANARY_KEY):
            if form in data:
                self.fail(f"the key leaked ({form!r}) in {where}")

    async def test_keyNeverLeaks(self) -> None:
        """
        After successes, 403s (routing and admission), 415s, 426s, upstream
        errors (refused, dropped), 413s and malformed requests, the key is
        in no output line, dump file,
        server-info file or client-visible byte, nor in /proc cmdline or
        environ; and the upstream did receive it.
        """
        upstream = startFakeUpstream(self)
        dumps = os.path.abspath(self.mktemp())
        proxy = await spawnProxy(
            self,
            "--upstream-url",
            upstream.url,
            "--dump-dir",
            dumps,
            "--max-request-body",
            "4096",
            *self.extraArgs,
            entry=self.entry,
        )
        refusing = await spawnProxy(
            self,
            "--upstream-url",
            f"http://127.0.0.1:{freePort()}/v1/responses",
            "--dump-dir",
            dumps + "-refused",
            entry=self.entry,
        )
        for process in (proxy, refusing):
            for name in ("cmdline", "environ"):
                with open(f"/proc/{process.pid}/{name}", "rb") as f:
                    self.assertNoLeak(f"/proc/PID/{name}", f.read())
        with open(proxy.serverInfoPath, "rb") as f:
            serverInfo = f.read()
        self.assertNoLeak("the server-info file", serverInfo)

        replies = await gatherResults(
            [rawExchange(proxy.port, payload, timeout=5) for _, payload in TRAFFIC]
            + [rawExchange(refusing.port, request(), timeout=5)]
        )
        names = [name for name, _ in TRAFFIC] + ["upstream refused"]
        statuses = {}
        for name, reply in zip(names, replies, strict=True):
            self.assertNoLeak(f"the reply to {name!r}", reply)
            statuses[name] = reply[9:12]
        # The traffic did what it was meant to (so the search means something).
        self.assertEqual(statuses["streamed success"], b"200")
        self.assertEqual(statuses["upstream 401"], b"401")
        self.assertEqual(statuses["GET /v1/responses"], b"403")
        self.assertEqual(statuses["browser"], b"403")
        self.assertEqual(statuses["foreign Host"], b"403")
        self.assertEqual(statuses["form body"], b"415")
        self.assertEqual(statuses["WebSocket upgrade"], b"426")
        self.assertEqual(statuses["too large (announced)"], b"413")
        self.assertEqual(statuses["too large (chunked)"], b"413")
        self.assertEqual(statuses["upstream refused"], b"502")
        self.assertTrue(statuses["garbage"].startswith(b"4"), statuses["garbage"])
        authorizations = {
            value
            for seen in upstream.resource.requests
            for value in seen.header(b"authorization")
        }
        self.assertEqual(authorizations, {b"Bearer " + CANARY_KEY.encode()})

        results = []
        for process in (proxy, refusing):
            process.process.signal("TERM")
            result = await endWithin(process.process, 5)
            self.assertEqual(result.exitCode, 0, result.stderr)
            results.append(result)
        for result in results:
            self.assertNoLeak("stdout", result.stdout)
            self.assertNoLeak("stderr", result.stderr)
        # Logs did record the exchanges (so there was output to search).
        self.assertIn(b"403", b"".join(r.stdout + r.stderr for r in results))

        dumped = []
        for directory in (dumps, dumps + "-refused"):
            for name in sorted(os.listdir(directory)):
                with open(os.path.join(directory, name), "rb") as f:
                    content = f.read()
                self.assertNoLeak(f"dump {name}", content)
                dumped.append(name)
        self.assertTrue(any(n.endswith("-request.json") for n in dumped), dumped)
        self.assertTrue(any(n.endswith("-response.json") for n in dumped), dumped)


class ConsoleScriptCanaryTests(_CanaryTests, TestCase):
    """
    The canary through the console script.
    """

    entry = "console script"


class JSONLogCanaryTests(_CanaryTests, TestCase):
    """
    The canary through the console script logging JSON, which serialises
    whole log events (more fields than the text format shows).
    """

    entry = "console script"
    extraArgs = ("--log-format", "json")


class TwistdCanaryTests(_CanaryTests, TestCase):
    """
    The canary through C{twistd -n}, which logs to stdout.
    """

    entry = "twistd"


class LeakFormsTests(SynchronousTestCase):
    """
    The search itself finds the leaks it is meant to find.
    """

    def test_encodingsDetected(self) -> None:
        """
        The key, a truncated piece of it, and base64/hex encodings of the
        key or of the header value (padded or not, embedded in other text)
        are all among the forms searched for.
        """
        header = b"Bearer " + CANARY_KEY.encode()
        leaks = [
            b"log: key=" + CANARY_KEY.encode()[:30] + b"...",
            b"auth " + base64.b64encode(header) + b" end",
            b'{"h": "' + base64.b64encode(CANARY_KEY.encode()) + b'"}',
            b"basic " + base64.b64encode(b"user:" + CANARY_KEY.encode()),
            CANARY_KEY.encode().hex().encode(),
        ]
        for leak in leaks:
            self.assertTrue(any(form in leak for form in leakForms(CANARY_KEY)), leak)

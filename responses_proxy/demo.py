# -*- test-case-name: tests.test_demo -*-
"""
C{responses-api-proxy-demo}: the whole proxy in one command, offline.

It starts the bundled fake upstream on an ephemeral loopback port, runs the
real proxy in front of it, sends one streaming request through the proxy
and prints the answer's text deltas as they arrive, then stops everything
and exits 0.

The proxy is spawned as its console script with the demo key piped to its
standard input, exactly as an operator would run it, rather than built
in-process with C{makeService}: that way the demo exercises (and shows) the
real start-up path, including hardening, reading the key once from stdin,
the server-info file and C{GET /shutdown}, and the demo's own process is not
made non-dumpable by the proxy's hardening.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from typing import Any, TextIO

import treq
from treq.client import HTTPClient
from twisted.internet import protocol, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from responses_proxy.demoupstream import makeSite

DEMO_KEY = b"sk-demo-key-for-the-fake-upstream"
STARTUP_TIMEOUT = 15.0


class DemoFailed(Exception):
    """
    The demo could not complete; C{str()} says why.
    """


class SSEParser:
    """
    An incremental parser of a C{text/event-stream}: feed it bytes as they
    arrive, it calls C{onEvent(type, data)} for each complete event.
    """

    def __init__(self, onEvent: Callable[[str, Any], None]) -> None:
        self._onEvent = onEvent
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """
        Add C{data}; dispatch every event it completes.
        """
        text = self._buffer + data
        # A CR at the very end may be the first half of a CR LF.
        pending = b"\r" if text.endswith(b"\r") else b""
        text = text[: len(text) - len(pending)].replace(b"\r\n", b"\n")
        while b"\n\n" in text:
            block, text = text.split(b"\n\n", 1)
            self._dispatch(block)
        self._buffer = text + pending

    def _dispatch(self, block: bytes) -> None:
        name = "message"
        dataLines = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.decode("utf-8")
            elif field == b"data":
                dataLines.append(value)
        if not dataLines:
            return
        data = b"\n".join(dataLines)
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data.decode("utf-8", "replace")
        self._onEvent(name, parsed)


class _ProxyProcess(protocol.ProcessProtocol):
    """
    The spawned proxy: writes the key to its stdin, keeps its output.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(DEMO_KEY + b"\n")
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def proxyCommand() -> list[str]:
    """
    The installed console script next to this Python, or the same entry
    point through C{python -m} when the script is not there.
    """
    script = os.path.join(sysconfig.get_path("scripts"), "responses-api-proxy")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "responses_proxy"]


@inlineCallbacks
def _waitForServerInfo(reactor: Any, path: str, process: _ProxyProcess) -> Any:
    deadline = reactor.seconds() + STARTUP_TIMEOUT
    while True:
        try:
            with open(path, "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            pass
        if process.ended.called:
            raise DemoFailed("the proxy exited during start-up")
        if reactor.seconds() > deadline:
            raise DemoFailed(f"the proxy did not start within {STARTUP_TIMEOUT}s")
        yield task.deferLater(reactor, 0.02, lambda: None)


@inlineCallbacks
def streamThroughProxy(
    reactor: Any, url: str, out: TextIO, intervalMS: int = 40
) -> Any:
    """
    POST one streaming Responses request to C{url}; write each output text
    delta to C{out} as it arrives. Fire with the full text.
    """
    client = HTTPClient(
        Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    )
    response = yield client.post(
        url,
        json={"model": "demo-model", "input": "Say hello", "stream": True},
        headers=Headers(
            {
                b"Accept": [b"text/event-stream"],
                # Understood by the fake upstream: space the events out so
                # the streaming is visible.
                b"X-Fake-Interval-MS": [str(intervalMS).encode()],
            }
        ),
        unbuffered=True,
    )
    if response.code != 200:
        body = yield treq.content(response)
        raise DemoFailed(f"the proxy answered {response.code}: {body[:200]!r}")
    pieces: list[str] = []
    completed: list[bool] = []

    def onEvent(name: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if data.get("type") == "response.output_text.delta":
            pieces.append(data["delta"])
            out.write(data["delta"])
            out.flush()
        elif data.get("type") == "response.completed":
            completed.append(True)

    yield treq.collect(response, SSEParser(onEvent).feed)
    out.write("\n")
    out.flush()
    if not completed:
        raise DemoFailed("the stream ended without response.completed")
    return "".join(pieces)


@inlineCallbacks
def runDemo(reactor: Any, out: TextIO, err: TextIO) -> Any:
    """
    The whole demo; fires when everything has stopped.
    """
    site, upstream = makeSite(reactor)
    upstreamPort = reactor.listenTCP(0, site, interface="127.0.0.1")
    upstreamURL = f"http://127.0.0.1:{upstreamPort.getHost().port}/v1/responses"
    err.write(f"fake upstream listening at {upstreamURL}\n")
    directory = tempfile.mkdtemp(prefix="responses-api-proxy-demo-")
    infoPath = os.path.join(directory, "server-info.json")
    process = _ProxyProcess()
    command = proxyCommand()
    reactor.spawnProcess(
        process,
        command[0],
        [
            *command,
            "--server-info",
            infoPath,
            "--http-shutdown",
            "--upstream-url",
            upstreamURL,
        ],
        env=dict(os.environ),
    )
    try:
        info = yield _waitForServerInfo(reactor, infoPath, process)
        base = f"http://127.0.0.1:{info['port']}"
        err.write(f"proxy (pid {info['pid']}) listening at {base}\n")
        yield streamThroughProxy(reactor, f"{base}/v1/responses", out)
        seen = [r.header(b"authorization") for r in upstream.requests]
        if seen != [[b"Bearer " + DEMO_KEY]]:
            raise DemoFailed("the upstream did not receive the demo key")
        err.write("the upstream received the key; the client never sent one\n")
        client = HTTPClient(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        )
        response = yield client.get(f"{base}/shutdown")
        yield treq.content(response)
        code = yield process.ended
        if code != 0:
            raise DemoFailed(f"the proxy exited with status {code}")
        err.write("proxy stopped with GET /shutdown\n")
    except BaseException:
        if not process.ended.called and process.transport is not None:
            process.transport.signalProcess("KILL")
            yield process.ended
        err.write(process.output.decode("utf-8", "replace"))
        raise
    finally:
        yield upstreamPort.stopListening()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def main(argv: list[str] | None = None) -> None:
    """
    Run the demo; exit 0 when the answer streamed through, 1 otherwise.
    """
    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.stderr.write(
            "usage: responses-api-proxy-demo\n"
            "Runs the proxy in front of a local fake upstream and streams one "
            "answer through it.\n"
        )
        sys.exit(0 if args in (["-h"], ["--help"]) else 2)

    def run(reactor: Any) -> Deferred[None]:
        d = runDemo(reactor, sys.stdout, sys.stderr)

        def failed(failure: Any) -> None:
            failure.trap(DemoFailed)
            sys.stderr.write(f"responses-api-proxy-demo: {failure.value}\n")
            raise SystemExit(1)

        return d.addErrback(failed)

    task.react(run)

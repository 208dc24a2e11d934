"""
Starting the implementations (see impls.py) and the upstreams behind them,
each pinned to its CPU, and knowing when one is ready: its server-info file
names a port that accepts connections (nginx: its port accepts).

nginx's configurations are the templates nginx-proxy.conf.template and
nginx-static.conf.template, filled in per process.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _procs import (
    LOAD_CPU,
    PROXY_CPU,
    Processes,
    freePort,
    log,
    measuredPid,
    portAccepts,
    readJSON,
    stopProcess,
    waitFile,
    waitPort,
)
from impls import BENCH, KEY, REPO, Impl


@dataclass
class Running:
    """
    A started implementation: the port its clients use and the process
    whose memory and CPU are measured (C{None} for direct).
    """

    name: str
    proc: subprocess.Popen[bytes] | None
    port: int
    pid: int | None
    readySeconds: float | None = None


@dataclass
class Upstreams:
    """
    Where the proxies forward to: C{python} (upstream.py: SSE, big bodies,
    uploads) and C{static} (nginx's static answer, or the Python one
    without nginx: throughput and ttfb).
    """

    python: str
    static: str


def portOf(url: str) -> int:
    m = re.search(r":(\d+)/", url)
    if not m:
        raise ValueError(f"no port in {url}")
    return int(m.group(1))


def renderTemplate(template: str, values: dict[str, object]) -> str:
    """
    Replace every C{{{name}}} in C{template}; a name without a value is an
    error, not an nginx syntax error later.
    """

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"no value for {{{{{m.group(1)}}}}}")
        return str(values[m.group(1)])

    return re.sub(r"\{\{(\w+)\}\}", one, template)


def nginxConf(runDir: Path, role: str, template: str, **values: object) -> Path:
    """
    Write C{template} (a file in bench/), filled in, as the configuration
    of an nginx whose prefix is its own directory in the run directory.
    """
    prefix = runDir / f"nginx-{role}"
    prefix.mkdir(exist_ok=True)
    text = renderTemplate((BENCH / template).read_text(), {"prefix": prefix, **values})
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def startNginx(
    nginx: str, conf: Path, cpu: str, procs: Processes
) -> subprocess.Popen[bytes]:
    prefix = conf.parent
    with open(prefix / "stderr.log", "wb") as logf:
        return procs.spawn(
            cpu,
            [
                nginx,
                "-p",
                str(prefix),
                "-c",
                str(conf),
                "-e",
                str(prefix / "error.log"),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )


def startUpstreams(
    runDir: Path, procs: Processes, nginx: str | None, note: Callable[[str], None]
) -> Upstreams:
    """
    Start upstream.py and, with nginx, the static upstream, both on the
    load CPU.
    """
    ready = str(runDir / "upstream.json")
    with open(runDir / "upstream.log", "wb") as logf:
        proc = procs.spawn(
            LOAD_CPU,
            [sys.executable, str(BENCH / "upstream.py"), "--ready-file", ready],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    port = waitFile(ready, proc, 10)["port"]
    python = f"http://127.0.0.1:{port}/v1/responses"
    log(f"python upstream on :{port} (cpu {LOAD_CPU})")
    if not nginx:
        note(
            "nginx not installed: the throughput/ttfb upstream is "
            "the Python asyncio upstream"
        )
        return Upstreams(python, python)
    port = freePort()
    conf = nginxConf(runDir, "static", "nginx-static.conf.template", port=port)
    if not waitPort(port, startNginx(nginx, conf, LOAD_CPU, procs), 10):
        note(
            "nginx static upstream failed to start; throughput uses the Python upstream"
        )
        return Upstreams(python, python)
    log(f"nginx static upstream on :{port} (cpu {LOAD_CPU})")
    return Upstreams(python, f"http://127.0.0.1:{port}/v1/responses")


def _expand(args: list[str], runDir: Path, scratch: Path) -> list[str]:
    out = []
    for arg in args:
        if "{scratch}" in arg:
            scratch.mkdir(exist_ok=True)
        out.append(arg.replace("{scratch}", str(scratch)).replace("{run}", str(runDir)))
    return out


def proxyCommand(
    impl: Impl, url: str, info: str, variant: str, extra: list[str]
) -> list[str]:
    if impl.kind == "ours" and variant == "twistd":
        assert impl.twistd is not None
        head = [impl.twistd, "-n", "--pidfile=", "-l", "-", "responses-api-proxy"]
    elif impl.kind in ("ours", "reference"):
        head = impl.argv
    else:
        raise ValueError(impl.kind)
    return [*head, "--server-info", info, "--upstream-url", url, *extra]


def startProxy(
    impl: Impl, url: str, runDir: Path, procs: Processes, variant: str = ""
) -> Running:
    """
    Start C{impl} on the proxy CPU with the key on its stdin, and return it
    once its server-info file names a port that accepts connections
    (nginx: once its port accepts). C{readySeconds} is launch to ready.
    """
    tag = f"{impl.name}{variant}-{int(time.time() * 1000) % 10**8}"
    if impl.kind == "nginx":
        return _startNginxProxy(impl, portOf(url), runDir, procs, tag)
    info = str(runDir / f"{tag}.server-info.json")
    logPath = runDir / f"{tag}.log"
    extra = _expand(impl.extraArgs, runDir, runDir / tag)
    argv = proxyCommand(impl, url, info, variant, extra)
    with open(logPath, "wb") as logf:
        t0 = time.perf_counter()
        proc = procs.spawn(
            PROXY_CPU,
            argv,
            stdin=subprocess.PIPE,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
    assert proc.stdin is not None
    proc.stdin.write(KEY.encode() + b"\n")
    proc.stdin.close()
    port = _waitReady(impl.name, proc, info, logPath)
    ready = time.perf_counter() - t0
    return Running(impl.name, proc, port, measuredPid(proc.pid), ready)


def _waitReady(
    name: str, proc: subprocess.Popen[bytes], info: str, logPath: Path
) -> int:
    end = time.monotonic() + 15
    while time.monotonic() < end:
        data = readJSON(info)
        if data and data.get("port"):
            port: int = data["port"]
            if portAccepts(port):
                return port
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {logPath}")
        time.sleep(0.0005)
    stopProcess(proc)
    raise RuntimeError(f"{name} did not become ready; see {logPath}")


def _startNginxProxy(
    impl: Impl, upstreamPort: int, runDir: Path, procs: Processes, tag: str
) -> Running:
    port = freePort()
    conf = nginxConf(
        runDir,
        f"proxy-{tag}",
        "nginx-proxy.conf.template",
        port=port,
        upstream_port=upstreamPort,
        key=KEY,
    )
    t0 = time.perf_counter()
    proc = startNginx(impl.argv[0], conf, PROXY_CPU, procs)
    if not waitPort(port, proc, 10):
        raise RuntimeError(f"nginx proxy did not start (see {conf.parent})")
    return Running(impl.name, proc, port, proc.pid, time.perf_counter() - t0)

#!/usr/bin/env python3
"""
One-command benchmark of responses-api-proxy against the reference
(codex responses-api-proxy), nginx as a key-injecting proxy, and no proxy.

    bench/run [--quick] [--only SCENARIO[,SCENARIO...]] [--impls a,b,...]

Writes bench/RESULTS.md and bench/results.json; scratch files (configs, logs,
raw loadgen output) go to bench/out/<timestamp>/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = sys.executable
KEY = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"
PROXY_CPU = "0"
LOAD_CPU = "1"
SCENARIOS = [
    "startup",
    "sse_latency",
    "throughput",
    "ttfb",
    "concurrency",
    "big_body",
    "upload",
]
IMPLS = ["direct", "ours", "reference", "nginx"]
# The static upstream's answer to POST /v1/responses.
STATIC_JSON = (
    '{"id":"resp_bench","object":"response","status":"completed",'
    '"model":"gpt-bench","output":[{"type":"message","role":"assistant",'
    '"content":[{"type":"output_text","text":"ok"}]}]}'
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def raiseFdLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", cpu, *argv]
    return argv  # pinning then relies on preexec (see spawn)


def spawn(cpu: str, argv: list[str], **kw: Any) -> subprocess.Popen:
    def pre() -> None:
        os.setsid()
        raiseFdLimit()
        if not shutil.which("taskset"):
            os.sched_setaffinity(0, {int(cpu)})

    return subprocess.Popen(pinned(cpu, argv), preexec_fn=pre, **kw)


def stopProcess(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def portAccepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def readJSON(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- /proc


def procStatus(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpuSeconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def resetPeak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """
    Polls a process's VmRSS every `interval` s; peak = max(polled, VmHWM).
    """

    def __init__(self, pid: int | None, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        if self.pid is None:
            return self
        self.hwmReset = resetPeak(self.pid)
        self.startRSS = procStatus(self.pid).get("VmRSS", 0)
        self.startCPU = cpuSeconds(self.pid)
        self.peak = self.startRSS
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = procStatus(self.pid).get("VmRSS", 0)  # type: ignore[arg-type]
            self.peak = max(self.peak, rss)

    def __exit__(self, *exc: object) -> None:
        if self.pid is None:
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        status = procStatus(self.pid)
        if self.hwmReset and "VmHWM" in status:
            self.peak = max(self.peak, status["VmHWM"])
        self.endRSS = status.get("VmRSS")
        end = cpuSeconds(self.pid)
        self.cpu = (
            (end - self.startCPU)
            if end is not None and self.startCPU is not None
            else None
        )

    def summary(self) -> dict[str, Any]:
        if self.pid is None:
            return {}
        mb = 1024 * 1024
        return {
            "rss_start_mb": self.startRSS / mb,
            "peak_rss_mb": self.peak / mb,
            "peak_growth_mb": (self.peak - self.startRSS) / mb,
            "cpu_s": self.cpu,
        }


# ---------------------------------------------------------------- implementations


def findReference() -> tuple[list[str] | None, str]:
    """
    The native reference binary (preferred: the npm 'codex' launcher is a
    Node.js script that spawns it, and we want to measure the proxy itself).
    """
    override = os.environ.get("BENCH_REFERENCE")
    if override:
        return [override, "responses-api-proxy"], f"BENCH_REFERENCE={override}"
    roots = [os.environ.get("CODEX_NPM_DIR", "/work/codexref")]
    launcher = shutil.which("codex")
    if launcher:
        roots.append(str(Path(os.path.realpath(launcher)).parent.parent.parent))
    for root in roots:
        hits = sorted(
            glob.glob(f"{root}/node_modules/@openai/codex-linux-*/vendor/*/bin/codex")
            + glob.glob(f"{root}/node_modules/@openai/codex/vendor/*/bin/codex")
            + glob.glob(f"{root}/vendor/*/bin/codex")
        )
        if hits:
            return [hits[0], "responses-api-proxy"], hits[0]
    if launcher:
        return [launcher, "responses-api-proxy"], launcher
    return None, (
        "not installed (npm install @openai/codex, then set CODEX_NPM_DIR to "
        "the directory holding node_modules, or BENCH_REFERENCE to the binary)"
    )


def findOurs() -> tuple[list[str] | None, str | None]:
    """
    Our console script (or $BENCH_OURS, a command line, e.g. to try a
    prototype: BENCH_OURS="python bench/experiments.py"), and twistd.
    """
    here = Path(PY).parent
    if os.environ.get("BENCH_OURS"):
        return shlex.split(os.environ["BENCH_OURS"]), None
    script = (
        str(here / "responses-api-proxy")
        if (here / "responses-api-proxy").exists()
        else shutil.which("responses-api-proxy")
    )
    twistd = (
        str(here / "twistd") if (here / "twistd").exists() else shutil.which("twistd")
    )
    return ([script] if script else None), twistd


def addedLatency(byImpl: dict) -> None:
    """
    Added latency = the implementation's figure minus direct's: p50 and p99
    percentile by percentile; max minus direct's p50 (the worst event against
    the typical no-proxy event: two maxima of separate runs are both single
    scheduling hiccups, and their difference means nothing).
    """
    base = byImpl.get("direct")
    if not base:
        return
    for d in byImpl.values():
        for stat, baseStat in (("p50", "p50"), ("p99", "p99"), ("max", "p50")):
            mine, floor = d.get(f"{stat}_ms"), base.get(f"{baseStat}_ms")
            if mine is not None and floor is not None:
                d[f"added_{stat}_ms"] = mine - floor


class Running:
    def __init__(
        self, name: str, proc: subprocess.Popen | None, port: int, pid: int | None
    ):
        self.name = name
        self.proc = proc
        self.port = port
        self.pid = pid  # the process to measure
        self.readySeconds: float | None = None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = BENCH / "out" / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        if not args.results:
            partial = args.quick or args.only or args.impls
            args.results = str(self.out if partial else BENCH)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = list(args.note)
        self.procs: list[subprocess.Popen] = []
        self.ours, self.twistd = findOurs()
        self.reference, self.referenceWhere = findReference()
        self.nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        self.wrk = shutil.which("wrk")
        self.available: dict[str, str | None] = {
            "direct": None,
            "ours": None
            if self.ours
            else "console script responses-api-proxy not found",
            "reference": None if self.reference else self.referenceWhere,
            "nginx": None if self.nginx else "not installed (apt-get install -y nginx)",
        }
        wanted = args.impls.split(",") if args.impls else IMPLS
        self.impls = [i for i in IMPLS if i in wanted and self.available[i] is None]
        for impl, why in self.available.items():
            if why and impl in wanted:
                self.note(f"{impl}: skipped, {why}")
        if not self.wrk:
            self.note(
                "wrk not installed (apt-get install -y wrk): throughput uses the "
                "Python asyncio load generator instead (same for every implementation)"
            )

    def note(self, text: str) -> None:
        log("NOTE " + text)
        self.notes.append(text)

    # -------------------------------------------------------------- upstreams

    def startUpstreams(self) -> None:
        ready = str(self.out / "upstream.json")
        logf = open(self.out / "upstream.log", "wb")
        proc = spawn(
            LOAD_CPU,
            [PY, str(BENCH / "upstream.py"), "--ready-file", ready],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        info = self._waitFile(ready, proc, 10)
        self.upstreamPort = info["port"]
        self.upstreamURL = f"http://127.0.0.1:{self.upstreamPort}/v1/responses"
        log(f"python upstream on :{self.upstreamPort} (cpu {LOAD_CPU})")
        self.staticPort = None
        if self.nginx:
            port = freePort()
            conf = self._nginxConf("static", port, None)
            proc = self._startNginx("static", conf, LOAD_CPU)
            if self._waitPort(port, proc, 10):
                self.staticPort = port
                log(f"nginx static upstream on :{port} (cpu {LOAD_CPU})")
            else:
                self.note(
                    "nginx static upstream failed to start; "
                    "throughput uses the Python upstream"
                )
        else:
            self.note(
                "nginx not installed: the throughput/ttfb upstream is "
                "the Python asyncio upstream"
            )
        self.staticURL = (
            f"http://127.0.0.1:{self.staticPort}/v1/responses"
            if self.staticPort
            else self.upstreamURL
        )

    def _waitFile(self, path: str, proc: subprocess.Popen, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            info = readJSON(path)
            if info:
                return info
            if proc.poll() is not None:
                raise RuntimeError(
                    f"process exited ({proc.returncode}) before writing {path}"
                )
            time.sleep(0.01)
        raise RuntimeError(f"timed out waiting for {path}")

    def _waitPort(self, port: int, proc: subprocess.Popen, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if portAccepts(port):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def _nginxConf(self, role: str, port: int, upstreamPort: int | None) -> Path:
        prefix = self.out / f"nginx-{role}"
        prefix.mkdir(exist_ok=True)
        temp = "\n".join(
            f"  {d}_temp_path {prefix}/{d};"
            for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        common = f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16000; multi_accept on; }}
http {{
  access_log off;
{temp}
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_max_body_size 128m;
"""
        if role == "static":
            body = f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/responses {{
      default_type application/json;
      return 200 '{STATIC_JSON}';
    }}
    location / {{ return 404; }}
  }}
}}
"""
        else:
            body = f"""
  upstream bench_upstream {{
    server 127.0.0.1:{upstreamPort};
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/responses {{
      limit_except POST {{ deny all; }}
      if ($args != "") {{ return 403; }}
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:{upstreamPort};
      proxy_set_header Authorization "Bearer {KEY}";
      proxy_buffering off;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }}
    location / {{ return 403; }}
  }}
}}
"""
        conf = prefix / "nginx.conf"
        conf.write_text(common + body)
        return conf

    def _startNginx(self, role: str, conf: Path, cpu: str) -> subprocess.Popen:
        prefix = conf.parent
        logf = open(prefix / "stderr.log", "wb")
        proc = spawn(
            cpu,
            [
                self.nginx,
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
        self.procs.append(proc)
        return proc

    # -------------------------------------------------------------- proxies

    @contextlib.contextmanager
    def proxy(
        self, impl: str, upstreamURL: str | None = None, variant: str = ""
    ) -> Iterator[Running]:
        """
        Start one implementation pinned to cpu 0 (direct: nothing to start),
        yield it once it accepts connections, stop it afterwards.
        """
        url = upstreamURL or self.upstreamURL
        if impl == "direct":
            port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
            yield Running("direct", None, port, None)
            return
        running = self.startProxy(impl, url, variant)
        try:
            yield running
        finally:
            if running.proc is not None:
                stopProcess(running.proc)
                if running.proc in self.procs:
                    self.procs.remove(running.proc)

    def startProxy(self, impl: str, url: str, variant: str = "") -> Running:
        tag = f"{impl}{variant}-{int(time.time() * 1000) % 10**8}"
        info = str(self.out / f"{tag}.server-info.json")
        logf = open(self.out / f"{tag}.log", "wb")
        t0 = time.perf_counter()
        if impl == "nginx":
            port = freePort()
            conf = self._nginxConf(
                f"proxy-{tag}", port, int(re.search(r":(\d+)/", url).group(1))
            )  # type: ignore[union-attr]
            t0 = time.perf_counter()
            proc = self._startNginx(f"proxy-{tag}", conf, PROXY_CPU)
            if not self._waitPort(port, proc, 10):
                raise RuntimeError(f"nginx proxy did not start (see {conf.parent})")
            r = Running(impl, proc, port, proc.pid)
            r.readySeconds = time.perf_counter() - t0
            return r
        if impl == "ours":
            if variant == "twistd":
                argv = [
                    self.twistd,
                    "-n",
                    "--pidfile=",
                    "-l",
                    "-",
                    "responses-api-proxy",
                    "--server-info",
                    info,
                    "--upstream-url",
                    url,
                ]
            else:
                argv = [*self.ours, "--server-info", info, "--upstream-url", url]
            argv += shlex.split(os.environ.get("BENCH_OURS_ARGS", ""))
        elif impl == "reference":
            argv = [*self.reference, "--server-info", info, "--upstream-url", url]  # type: ignore[misc]
        else:
            raise ValueError(impl)
        proc = spawn(
            PROXY_CPU,
            argv,
            stdin=subprocess.PIPE,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        self.procs.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(KEY.encode() + b"\n")
        proc.stdin.close()
        end = time.monotonic() + 15
        port = None
        while time.monotonic() < end:
            data = readJSON(info)
            if data and data.get("port"):
                port = data["port"]
                if portAccepts(port):
                    break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{impl} exited with {proc.returncode}; see {logf.name}"
                )
            time.sleep(0.0005)
        else:
            stopProcess(proc)
            raise RuntimeError(f"{impl} did not become ready; see {logf.name}")
        ready = time.perf_counter() - t0
        pid = self._measuredPid(proc.pid)
        r = Running(impl, proc, port, pid)
        r.readySeconds = ready
        return r

    def _measuredPid(self, pid: int) -> int:
        """
        The process doing the work: itself, unless it is a launcher (Node.js
        'codex' script) whose single descendant is the real server.
        """
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return pid
        if not os.path.basename(exe).startswith("node"):
            return pid
        for _ in range(50):
            kids = []
            for task in glob.glob(f"/proc/{pid}/task/*/children"):
                with open(task) as f:
                    kids += [int(k) for k in f.read().split()]
            if kids:
                return self._measuredPid(kids[0])
            time.sleep(0.02)
        return pid

    # -------------------------------------------------------------- loadgen

    def loadgen(self, *argv: str, timeout: float = 300) -> dict:
        cmd = pinned(LOAD_CPU, [PY, str(BENCH / "loadgen.py"), *argv])
        proc = subprocess.run(
            cmd, capture_output=True, timeout=timeout, preexec_fn=raiseFdLimit
        )
        if proc.returncode != 0:
            return {
                "error": f"loadgen exit {proc.returncode}: "
                + proc.stderr.decode()[-500:]
            }
        return json.loads(proc.stdout)

    def record(self, scenario: str, impl: str, data: Any) -> None:
        self.results.setdefault(scenario, {})[impl] = data
        self.saveRaw()

    def saveRaw(self) -> None:
        (self.out / "partial-results.json").write_text(
            json.dumps(self.results, indent=1)
        )

    def reps(self, n: int) -> int:
        return 1 if self.quick else n

    def impls_for(self, scenario: str) -> list[str]:
        return self.impls

    # -------------------------------------------------------------- scenarios

    def sc_startup(self) -> None:
        reps = self.reps(5)
        variants = []
        if "ours" in self.impls:
            variants.append(("ours", ""))
            if self.twistd:
                variants.append(("ours", "twistd"))
        for impl in ("reference", "nginx"):
            if impl in self.impls:
                variants.append((impl, ""))
        for impl, variant in variants:
            name = f"{impl}-{variant}" if variant else impl
            times, idles = [], []
            for _ in range(reps):
                with self.proxy(impl, variant=variant) as p:
                    times.append(p.readySeconds)
                    time.sleep(0.5)
                    idles.append(procStatus(p.pid).get("VmRSS", 0) / 2**20)
            data = {
                "ready_ms": median(times) * 1000,  # type: ignore[operator]
                "ready_ms_all": [t * 1000 for t in times],
                "idle_rss_mb": median(idles),
            }
            log(
                f"startup {name}: {data['ready_ms']:.0f} ms, "
                f"idle RSS {data['idle_rss_mb']:.1f} MB"
            )
            self.record("startup", name, data)

    def sc_sse_latency(self) -> None:
        reps = self.reps(3)
        events = 50 if self.quick else 200
        for streams in (1, 10):
            key = f"sse_latency_{streams}"
            for impl in self.impls:
                runs = []
                with self.proxy(impl) as p:
                    self.loadgen(
                        "sse",
                        "--port",
                        str(p.port),
                        "--events",
                        "3",
                        "--interval-ms",
                        "1",
                    )
                    for _ in range(reps):
                        runs.append(
                            self.loadgen(
                                "sse",
                                "--port",
                                str(p.port),
                                "--streams",
                                str(streams),
                                "--events",
                                str(events),
                                "--interval-ms",
                                "20",
                            )
                        )
                lat = [r.get("latency_ms", {}) for r in runs]
                data = {
                    "p50_ms": median([x.get("p50") for x in lat]),
                    "p99_ms": median([x.get("p99") for x in lat]),
                    "max_ms": max([x.get("max") or 0 for x in lat]) if lat else None,
                    "events_delivered": sum(r.get("events_delivered", 0) for r in runs),
                    "events_expected": reps * streams * events,
                    "errors": sum(r.get("errors", 1) for r in runs),
                    "runs": runs,
                }
                self.record(key, impl, data)
                log(
                    f"{key} {impl}: p50 {data['p50_ms']} p99 {data['p99_ms']} ms "
                    f"errors {data['errors']}"
                )
            addedLatency(self.results[key])
            self.saveRaw()

    def wrkRun(self, port: int, connections: int, seconds: float) -> dict:
        if not self.wrk:
            r = self.loadgen(
                "throughput",
                "--port",
                str(port),
                "--connections",
                str(connections),
                "--seconds",
                str(seconds),
                timeout=seconds + 120,
            )
            r["client"] = "python"
            return r
        cmd = pinned(
            LOAD_CPU,
            [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                "-s",
                str(BENCH / "wrk_post.lua"),
                f"http://127.0.0.1:{port}/v1/responses",
            ],
        )
        proc = subprocess.run(
            cmd, capture_output=True, timeout=seconds + 60, preexec_fn=raiseFdLimit
        )
        out = proc.stdout.decode()
        m = re.search(r"^WRKJSON (.*)$", out, re.M)
        if not m:
            return {"error": f"wrk failed: {out[-300:]} {proc.stderr.decode()[-300:]}"}
        w = json.loads(m.group(1))
        errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
        return {
            "client": "wrk",
            "requests": w["requests"],
            "rps": w["requests"] / (w["duration_us"] / 1e6),
            "p50_ms": w["p50"] / 1000,
            "p99_ms": w["p99"] / 1000,
            "errors": errors,
            "error_detail": {
                k: w[k] for k in ("connect", "read", "write", "status", "timeout")
            },
        }

    def sc_throughput(self) -> None:
        seconds = 3 if self.quick else 8
        plan = [(1, 1), (32, self.reps(3)), (256, 1)]
        for impl in self.impls:
            with self.proxy(impl, self.staticURL) as p:
                self.wrkRun(p.port, 32, 1 if self.quick else 2)  # warm-up
                for conns, reps in plan:
                    runs = []
                    cpu = []
                    for _ in range(reps):
                        with Sampler(p.pid) as s:
                            runs.append(self.wrkRun(p.port, conns, seconds))
                        c, n = s.summary().get("cpu_s"), runs[-1].get("requests")
                        cpu.append(c)
                        runs[-1]["proxy_cpu_us_per_req"] = (
                            (c * 1e6 / n) if c is not None and n else None
                        )
                    data = {
                        "rps": median([r.get("rps") for r in runs]),
                        "p50_ms": median([r.get("p50_ms") for r in runs]),
                        "p99_ms": median([r.get("p99_ms") for r in runs]),
                        "errors": sum(r.get("errors", 0) for r in runs)
                        if all("error" not in r for r in runs)
                        else None,
                        "proxy_cpu_s_per_run": median(cpu),
                        "cpu_us_per_req": median(
                            [r.get("proxy_cpu_us_per_req") for r in runs]
                        ),
                        "runs": runs,
                    }
                    self.record(f"throughput_c{conns}", impl, data)
                    log(
                        f"throughput c={conns} {impl}: {data['rps']} req/s, "
                        f"p99 {data['p99_ms']} ms, errors {data['errors']}"
                    )

    def sc_ttfb(self) -> None:
        reps = self.reps(3)
        count = 100 if self.quick else 300
        for impl in self.impls:
            with self.proxy(impl, self.staticURL) as p:
                self.loadgen("ttfb", "--port", str(p.port), "--count", "20")
                runs = [
                    self.loadgen("ttfb", "--port", str(p.port), "--count", str(count))
                    for _ in range(reps)
                ]
            data = {
                "mean_ms": median([r.get("ttfb_ms", {}).get("mean") for r in runs]),
                "p99_ms": median([r.get("ttfb_ms", {}).get("p99") for r in runs]),
                "errors": sum(r.get("errors", 1) for r in runs),
                "runs": runs,
            }
            self.record("ttfb", impl, data)
            log(f"ttfb {impl}: mean {data['mean_ms']} p99 {data['p99_ms']} ms")

    def sc_concurrency(self) -> None:
        levels = [200, 1000] if self.quick else [1000, 4000]
        events = 5 if self.quick else 20
        for n in levels:
            for impl in self.impls:
                with self.proxy(impl) as p:
                    self.loadgen(
                        "sse",
                        "--port",
                        str(p.port),
                        "--events",
                        "2",
                        "--interval-ms",
                        "1",
                    )
                    with Sampler(p.pid) as s:
                        r = self.loadgen(
                            "sse",
                            "--port",
                            str(p.port),
                            "--streams",
                            str(n),
                            "--events",
                            str(events),
                            "--interval-ms",
                            "1000",
                            "--connect-parallel",
                            "64",
                            "--grace",
                            "60",
                            timeout=events + 200,
                        )
                    alive = p.proc is None or p.proc.poll() is None
                data = {
                    "events_expected": r.get("events_expected", n * events),
                    "events_delivered": r.get("events_delivered"),
                    "errors": r.get("errors"),
                    "error_kinds": r.get("error_kinds"),
                    "connect_s": r.get("all_headers_s"),
                    "p50_ms": (r.get("latency_after_all_connected_ms") or {}).get(
                        "p50"
                    ),
                    "p99_ms": (r.get("latency_after_all_connected_ms") or {}).get(
                        "p99"
                    ),
                    "p99_all_ms": (r.get("latency_ms") or {}).get("p99"),
                    "proxy_survived": alive,
                    **s.summary(),
                    "raw": {k: v for k, v in r.items() if k not in ()},
                }
                self.record(f"concurrency_{n}", impl, data)
                log(
                    f"concurrency {n} {impl}: {data['events_delivered']}/"
                    f"{data['events_expected']} events, errors {data['errors']}, "
                    f"p99 {data['p99_ms']} ms, peak RSS {data.get('peak_rss_mb')}"
                )

    def sc_big_body(self) -> None:
        size = 50_000_000 if self.quick else 200_000_000
        reps = self.reps(3)
        slowSeconds = 5 if self.quick else 15
        for impl in self.impls:
            with self.proxy(impl) as p:
                self.loadgen("big", "--port", str(p.port), "--bytes", "1000000")
                runs, peaks = [], []
                for _ in range(reps):
                    with Sampler(p.pid) as s:
                        runs.append(
                            self.loadgen(
                                "big", "--port", str(p.port), "--bytes", str(size)
                            )
                        )
                    peaks.append(s.summary().get("peak_rss_mb"))
            ok = [r for r in runs if not r.get("error") and r.get("bytes") == size]
            data = {
                "mb_per_s": median([r.get("mb_per_s") for r in ok]),
                "errors": len(runs) - len(ok),
                "peak_rss_mb": median(peaks),
                "runs": runs,
            }
            # Slow client, on a fresh process: growth over its idle RSS.
            with self.proxy(impl) as p:
                self.loadgen("big", "--port", str(p.port), "--bytes", "1000000")
                time.sleep(0.3)
                with Sampler(p.pid) as s:
                    slow = self.loadgen(
                        "big",
                        "--port",
                        str(p.port),
                        "--bytes",
                        str(size),
                        "--rate",
                        "2000000",
                        "--seconds",
                        str(slowSeconds),
                    )
                data["slow"] = {**slow, **s.summary()}
                data["slow_growth_mb"] = s.summary().get("peak_growth_mb")
            self.record("big_body", impl, data)
            log(
                f"big_body {impl}: {data['mb_per_s']} MB/s peak {data['peak_rss_mb']} "
                f"MB; slow growth {data['slow_growth_mb']} MB"
            )

    def sc_upload(self) -> None:
        reps = self.reps(3)
        size = 20_000_000
        for impl in self.impls:
            with self.proxy(impl) as p:
                self.loadgen("upload", "--port", str(p.port), "--bytes", "1000")
                runs, peaks = [], []
                for _ in range(reps):
                    with Sampler(p.pid) as s:
                        runs.append(
                            self.loadgen(
                                "upload", "--port", str(p.port), "--bytes", str(size)
                            )
                        )
                    peaks.append(s.summary().get("peak_rss_mb"))
            ok = [r for r in runs if not r.get("error") and r.get("status") == 200]
            data = {
                "seconds": median([r.get("seconds") for r in ok]),
                "errors": len(runs) - len(ok),
                "peak_rss_mb": median(peaks),
                "runs": runs,
            }
            self.record("upload", impl, data)
            log(f"upload {impl}: {data['seconds']} s, peak {data['peak_rss_mb']} MB")

    # -------------------------------------------------------------- profile

    def profile(self) -> None:
        """
        py-spy (sampling, idle frames included) on our proxy
        under the throughput scenario at c=32; writes the raw collapsed
        stacks, a speedscope file and profile-top.md into the run directory.
        """
        pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not os.path.exists(pyspy):
            self.note("py-spy not installed (pip install py-spy): no profile")
            return
        seconds = 5 if self.quick else 15
        raw = self.out / "profile.collapsed.txt"
        speedscope = self.out / "profile.speedscope.json"
        with self.proxy("ours", self.staticURL) as p:
            self.wrkRun(p.port, 32, 2)  # warm-up
            for fmt_, dest, extra in (
                ("raw", raw, ["--idle"]),
                ("speedscope", speedscope, []),
            ):
                spy = subprocess.Popen(
                    pinned(
                        LOAD_CPU,
                        [
                            pyspy,
                            "record",
                            "-r",
                            "250",
                            "-d",
                            str(seconds),
                            "-f",
                            fmt_,
                            "-o",
                            str(dest),
                            "--pid",
                            str(p.pid),
                            *extra,
                        ],
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                time.sleep(0.5)
                w = self.wrkRun(p.port, 32, seconds)
                spy.wait(seconds + 60)
                log(f"profile ({fmt_}): wrk c=32 under py-spy: {w.get('rps')} req/s")
        summary = summarizeCollapsed(raw.read_text())
        (self.out / "profile-top.md").write_text(summary)
        print(summary)
        log(f"profile written to {self.out}")

    # -------------------------------------------------------------- driver

    def run(self) -> None:
        started = time.time()
        self.machine = machineInfo(self)
        self.startUpstreams()
        wanted = SCENARIOS if not self.args.only else self.args.only.split(",")
        for name in wanted:
            if name not in SCENARIOS:
                raise SystemExit(
                    f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}"
                )
        for name in SCENARIOS:
            if name not in wanted:
                continue
            log(f"=== {name}")
            try:
                getattr(self, f"sc_{name}")()
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                self.note(f"{name}: failed with {type(e).__name__}: {e}")
        self.machine["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        self.machine["duration_s"] = round(time.time() - started, 1)
        write_reports(self, wanted)

    def cleanup(self) -> None:
        for proc in list(self.procs):
            stopProcess(proc)


def cmdVersion(argv: list[str]) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=10)
        return (p.stdout + p.stderr).decode().strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def machineInfo(b: Bench) -> dict:
    model = None
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ours = None
    with contextlib.suppress(Exception):
        ours = (
            subprocess.run(
                [
                    PY,
                    "-c",
                    "import importlib.metadata as m; "
                    "print(m.version('responses-api-proxy'))",
                ],
                capture_output=True,
                timeout=10,
            )
            .stdout.decode()
            .strip()
        )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "ours": f"responses-api-proxy {ours} ({' '.join(b.ours)})" if b.ours else None,
        "ours_env": {
            k: os.environ[k]
            for k in ("BENCH_OURS", "BENCH_OURS_ARGS", "BENCH_PATCHES")
            if k in os.environ
        },
        "reference": (
            cmdVersion([b.reference[0], "--version"]) + f" ({b.reference[0]})"
        )
        if b.reference and cmdVersion([b.reference[0], "--version"])
        else None,
        "nginx": cmdVersion([b.nginx, "-v"]) if b.nginx else None,
        "wrk": cmdVersion([b.wrk, "-v"]) if b.wrk else None,
        "git": cmdVersion(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "quick": b.quick,
    }


# ---------------------------------------------------------------- reports


# Inclusive time of the entry points a proxy change would target.
CATEGORIES = [
    (
        "per-exchange log event (Exchange._end: Logger.info, format, write)",
        ["Exchange._end ("],
    ),
    (
        "Agent.request (URI parse, pool lookup, request serialisation)",
        ["Agent.request ("],
    ),
    (
        "new upstream connections (endpoint, connect)",
        ["HostnameEndpoint.connect", "BaseClient._finishInit"],
    ),
    (
        "server request head parsing (HTTPChannel.lineReceived/headerReceived)",
        ["HTTPChannel.lineReceived (", "HTTPChannel.headerReceived ("],
    ),
    ("Request.__init__ (server side)", ["Request.__init__ ("]),
    (
        "Request.process → render (traversal, Server/Date headers, forward)",
        ["Request.process ("],
    ),
    (
        "Exchange.start (headers copy, body producer, Agent.request)",
        ["Exchange.start ("],
    ),
    (
        "Exchange._gotResponse (status, mirror headers, deliverBody)",
        ["Exchange._gotResponse ("],
    ),
    (
        "relay + finish to client (Request.write/finish incl. response head)",
        ["Exchange.relay (", "Exchange.upstreamBodyEnded ("],
    ),
    (
        "upstreamRequestHeaders + mirrorResponseHeaders",
        ["upstreamRequestHeaders (", "mirrorResponseHeaders ("],
    ),
    ("Date header (datetimeToString)", ["datetimeToString ("]),
    (
        "client response parsing (HTTPClientParser, excluding our callbacks)",
        ["HTTPClientParser.dataReceived ("],
    ),
    ("socket send (tcp writeSomeData)", ["writeSomeData ("]),
]


def moduleOf(frame: str) -> str:
    m = re.search(r"\((.*?)(?::\d+)?\)$", frame.strip())
    path = m.group(1) if m else frame
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def summarizeCollapsed(text: str, top: int = 15) -> str:
    """
    Self and inclusive sample counts per function from py-spy's collapsed
    ("raw") stacks: "frame;frame;...;leaf count" per line.
    """
    selfCounts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle = 0
    stacks: list[tuple[str, int]] = []
    modules: dict[str, int] = {}

    def name(frame: str) -> str:
        # "func (path/to/file.py:123)" -> "func (file.py)"
        m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
        if not m:
            return frame.strip()
        func, path = m.groups()
        parts = path.split("/")
        short = "/".join(parts[-2:]) if len(parts) > 1 else path
        return f"{func} ({short})"

    for line in text.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        if "Thread._bootstrap" in stack:
            continue  # idle worker threads (the reactor's threadpool), not the reactor
        frames = [name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        if "doPoll (" in leaf or leaf.startswith(("poll (", "select (")):
            idle += n
            continue
        selfCounts[leaf] = selfCounts.get(leaf, 0) + n
        stacks.append((stack, n))
        mod = moduleOf(stack.split(";")[-1])
        modules[mod] = modules.get(mod, 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    busy = total - idle
    cats = []
    for label, patterns in CATEGORIES:
        n = sum(c for stk, c in stacks if any(pt in stk for pt in patterns))
        cats.append((label, n))
    out = [
        f"Reactor-thread samples: {total} (250 Hz); waiting in epoll: {idle} "
        f"({100 * idle / max(total, 1):.1f}%); busy: {busy}.",
        "",
        "| # | function (file) | self % of busy | inclusive % of busy |",
        "|---|---|---|---|",
    ]
    ranked = sorted(selfCounts.items(), key=lambda kv: -kv[1])[:top]
    for i, (f, n) in enumerate(ranked, 1):
        out.append(
            f"| {i} | `{f}` | {100 * n / max(busy, 1):.1f} | "
            f"{100 * inclusive.get(f, 0) / max(busy, 1):.1f} |"
        )
    out += [
        "",
        "Self time by module (exclusive, sums to 100% of busy):",
        "",
        "| module | self % of busy |",
        "|---|---|",
    ]
    for mod, n in sorted(modules.items(), key=lambda kv: -kv[1])[:20]:
        out.append(f"| `{mod}` | {100 * n / max(busy, 1):.1f} |")
    out += [
        "",
        "Entry points (inclusive: samples whose stack contains the frame; "
        "rows overlap):",
        "",
        "| area | % of busy |",
        "|---|---|",
    ]
    for label, n in cats:
        out.append(f"| {label} | {100 * n / max(busy, 1):.1f} |")
    out += [
        "",
        "Top inclusive (where time goes, callers included):",
        "",
        "| function (file) | inclusive % of busy |",
        "|---|---|",
    ]
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:30]:
        out.append(f"| `{f}` | {100 * n / max(busy, 1):.1f} |")
    return "\n".join(out) + "\n"


from report import write_reports  # noqa: E402


def rereport(args: argparse.Namespace) -> None:
    """Regenerate RESULTS.md/results.json from a saved results.json."""
    data = json.loads(Path(args.rereport).read_text())
    for name in ("sse_latency_1", "sse_latency_10"):
        if name in data["scenarios"]:
            addedLatency(data["scenarios"][name])
    fake = argparse.Namespace(
        args=argparse.Namespace(results=args.results or str(BENCH), only=args.only),
        results=data["scenarios"],
        machine=data["machine"],
        notes=data["notes"] + [n for n in args.note if n not in data["notes"]],
        impls=data["implementations"],
        quick=data["machine"].get("quick"),
        out=Path(args.results or str(BENCH)),
    )
    write_reports(fake, [])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short durations, fewer levels (~3 min)"
    )
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--rereport",
        metavar="RESULTS_JSON",
        help="only rewrite RESULTS.md (into --results, default bench/) "
        "from a results.json",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a note to print in RESULTS.md (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the scenarios: py-spy profile of ours under throughput c=32",
    )
    parser.add_argument(
        "--impls", help=f"comma-separated subset of: {', '.join(IMPLS)}"
    )
    parser.add_argument(
        "--results",
        help="directory for RESULTS.md/results.json [default: bench/ for a full "
        "run, the run's bench/out/<stamp>/ for --quick or --only]",
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 CPUs; proxy and load generator will share a core")
    raiseFdLimit()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    if args.rereport:
        rereport(args)
        return
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.profile:
            bench.startUpstreams()
            bench.profile()
            return
        bench.run()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()

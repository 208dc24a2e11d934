"""
The scenarios: one function per scenario over a L{Context}, each measuring
every selected implementation in turn and recording one result per
implementation (see bench/README.md, "Scenarios", for what each measures).

A new scenario is a function here plus an entry in L{SCENARIOS}; its rows
in RESULTS.md are in report.ROWS.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import Processes, Sampler, log, procStatus
from clients import runLoadgen, runThroughput
from impls import Impl
from launch import Running, Upstreams, portOf, startProxy
from report import addedLatency


def median(values: Sequence[float | None]) -> float | None:
    """
    The median of the values measured (a failed repetition is C{None}).
    """
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Context:
    """
    What a scenario needs: the implementations, the upstreams, the run's
    scratch directory, and where results and notes go.
    """

    quick: bool
    impls: list[Impl]
    upstreams: Upstreams
    runDir: Path
    procs: Processes
    wrk: str | None
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        log("NOTE " + text)
        self.notes.append(text)

    def record(self, scenario: str, impl: str, data: Any) -> None:
        self.results.setdefault(scenario, {})[impl] = data
        self.saveRaw()

    def saveRaw(self) -> None:
        """
        Keep what was measured so far: an interrupted run still has it.
        """
        (self.runDir / "partial-results.json").write_text(
            json.dumps(self.results, indent=1)
        )

    def reps(self, n: int) -> int:
        return 1 if self.quick else n

    @contextlib.contextmanager
    def proxy(
        self, impl: Impl, upstreamURL: str | None = None, variant: str = ""
    ) -> Iterator[Running]:
        """
        Start C{impl} (direct: nothing to start), yield it once it accepts
        connections, stop it afterwards: each measurement gets a fresh
        process.
        """
        url = upstreamURL or self.upstreams.python
        if impl.kind == "direct":
            yield Running(impl.name, None, portOf(url), None)
            return
        running = startProxy(impl, url, self.runDir, self.procs, variant)
        try:
            yield running
        finally:
            if running.proc is not None:
                self.procs.stop(running.proc)

    def loadgen(self, *argv: str, timeout: float = 300) -> dict[str, Any]:
        return runLoadgen(*argv, timeout=timeout)

    def throughput(self, port: int, connections: int, seconds: float) -> dict[str, Any]:
        return runThroughput(self.wrk, port, connections, seconds)


# ---------------------------------------------------------------- startup


def startup(ctx: Context) -> None:
    """
    Launch until ready, and idle RSS: what a socket-activated or
    per-job proxy costs before its first request.
    """
    reps = ctx.reps(5)
    variants: list[tuple[Impl, str]] = []
    for impl in ctx.impls:
        if impl.kind == "direct":
            continue
        variants.append((impl, ""))
        if impl.kind == "ours" and impl.twistd:
            variants.append((impl, "twistd"))
    for impl, variant in variants:
        name = f"{impl.name}-{variant}" if variant else impl.name
        try:
            data = _startupRuns(ctx, impl, variant, reps)
        except RuntimeError as e:
            # e.g. a flag of a defined implementation that only the console
            # script has: the other variants still count.
            ctx.note(f"startup {name}: failed: {e}")
            continue
        log(
            f"startup {name}: {data['ready_ms']:.0f} ms, "
            f"idle RSS {data['idle_rss_mb']:.1f} MB"
        )
        ctx.record("startup", name, data)


def _startupRuns(ctx: Context, impl: Impl, variant: str, reps: int) -> dict[str, Any]:
    times, idles = [], []
    for _ in range(reps):
        with ctx.proxy(impl, variant=variant) as p:
            times.append(p.readySeconds)
            time.sleep(0.5)
            assert p.pid is not None
            idles.append(procStatus(p.pid).get("VmRSS", 0) / 2**20)
    ready = median(times)
    return {
        "ready_ms": ready * 1000 if ready is not None else None,
        "ready_ms_all": [t * 1000 for t in times if t is not None],
        "idle_rss_mb": median(idles),
    }


# ---------------------------------------------------------------- sse_latency


def sseLatency(ctx: Context) -> None:
    """
    Per-event latency of 1 and 10 SSE streams: whether a proxy relays each
    event as it arrives or holds it back.
    """
    reps = ctx.reps(3)
    events = 50 if ctx.quick else 200
    for streams in (1, 10):
        key = f"sse_latency_{streams}"
        for impl in ctx.impls:
            with ctx.proxy(impl) as p:
                port = str(p.port)
                ctx.loadgen(
                    "sse", "--port", port, "--events", "3", "--interval-ms", "1"
                )
                runs = [
                    ctx.loadgen(
                        "sse",
                        "--port",
                        port,
                        "--streams",
                        str(streams),
                        "--events",
                        str(events),
                        "--interval-ms",
                        "20",
                    )
                    for _ in range(reps)
                ]
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
            ctx.record(key, impl.name, data)
            log(
                f"{key} {impl.name}: p50 {data['p50_ms']} p99 {data['p99_ms']} ms "
                f"errors {data['errors']}"
            )
        addedLatency(ctx.results[key])
        ctx.saveRaw()


# ---------------------------------------------------------------- throughput


def _throughputLevel(
    ctx: Context, p: Running, conns: int, reps: int, seconds: float
) -> dict[str, Any]:
    runs, cpu = [], []
    for _ in range(reps):
        with Sampler(p.pid) as s:
            runs.append(ctx.throughput(p.port, conns, seconds))
        c, n = s.summary().get("cpu_s"), runs[-1].get("requests")
        cpu.append(c)
        runs[-1]["proxy_cpu_us_per_req"] = (
            (c * 1e6 / n) if c is not None and n else None
        )
    return {
        "rps": median([r.get("rps") for r in runs]),
        "p50_ms": median([r.get("p50_ms") for r in runs]),
        "p99_ms": median([r.get("p99_ms") for r in runs]),
        "errors": sum(r.get("errors", 0) for r in runs)
        if all("error" not in r for r in runs)
        else None,
        "proxy_cpu_s_per_run": median(cpu),
        "cpu_us_per_req": median([r.get("proxy_cpu_us_per_req") for r in runs]),
        "runs": runs,
    }


def throughput(ctx: Context) -> None:
    """
    Small requests at c=1, 32, 256 against the static upstream: the cost of
    each request in the proxy (req/s, latency, CPU per request).
    """
    seconds = 3 if ctx.quick else 8
    plan = [(1, 1), (32, ctx.reps(3)), (256, 1)]
    for impl in ctx.impls:
        with ctx.proxy(impl, ctx.upstreams.static) as p:
            ctx.throughput(p.port, 32, 1 if ctx.quick else 2)  # warm-up
            for conns, reps in plan:
                data = _throughputLevel(ctx, p, conns, reps, seconds)
                ctx.record(f"throughput_c{conns}", impl.name, data)
                log(
                    f"throughput c={conns} {impl.name}: {data['rps']} req/s, "
                    f"p99 {data['p99_ms']} ms, errors {data['errors']}"
                )


# ---------------------------------------------------------------- ttfb


def ttfb(ctx: Context) -> None:
    """
    Sequential requests on one keep-alive connection: the latency a
    one-request-at-a-time client (an agent) sees.
    """
    reps = ctx.reps(3)
    count = 100 if ctx.quick else 300
    for impl in ctx.impls:
        with ctx.proxy(impl, ctx.upstreams.static) as p:
            ctx.loadgen("ttfb", "--port", str(p.port), "--count", "20")
            runs = [
                ctx.loadgen("ttfb", "--port", str(p.port), "--count", str(count))
                for _ in range(reps)
            ]
        data = {
            "mean_ms": median([r.get("ttfb_ms", {}).get("mean") for r in runs]),
            "p99_ms": median([r.get("ttfb_ms", {}).get("p99") for r in runs]),
            "errors": sum(r.get("errors", 1) for r in runs),
            "runs": runs,
        }
        ctx.record("ttfb", impl.name, data)
        log(f"ttfb {impl.name}: mean {data['mean_ms']} p99 {data['p99_ms']} ms")


# ---------------------------------------------------------------- concurrency


def _concurrencyRun(ctx: Context, impl: Impl, n: int, events: int) -> dict[str, Any]:
    with ctx.proxy(impl) as p:
        port = str(p.port)
        ctx.loadgen("sse", "--port", port, "--events", "2", "--interval-ms", "1")
        with Sampler(p.pid) as s:
            r = ctx.loadgen(
                "sse",
                "--port",
                port,
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
    afterAll = r.get("latency_after_all_connected_ms") or {}
    return {
        "events_expected": r.get("events_expected", n * events),
        "events_delivered": r.get("events_delivered"),
        "errors": r.get("errors"),
        "error_kinds": r.get("error_kinds"),
        "connect_s": r.get("all_headers_s"),
        "p50_ms": afterAll.get("p50"),
        "p99_ms": afterAll.get("p99"),
        "p99_all_ms": (r.get("latency_ms") or {}).get("p99"),
        "proxy_survived": alive,
        **s.summary(),
        "raw": r,
    }


def concurrency(ctx: Context) -> None:
    """
    Many slow SSE streams at once: every event delivered, event latency
    under load, and the memory per open stream.
    """
    levels = [200, 1000] if ctx.quick else [1000, 4000]
    events = 5 if ctx.quick else 20
    for n in levels:
        for impl in ctx.impls:
            data = _concurrencyRun(ctx, impl, n, events)
            ctx.record(f"concurrency_{n}", impl.name, data)
            log(
                f"concurrency {n} {impl.name}: {data['events_delivered']}/"
                f"{data['events_expected']} events, errors {data['errors']}, "
                f"p99 {data['p99_ms']} ms, peak RSS {data.get('peak_rss_mb')}"
            )


# ---------------------------------------------------------------- big_body


def _bigFast(ctx: Context, impl: Impl, size: int, reps: int) -> dict[str, Any]:
    with ctx.proxy(impl) as p:
        ctx.loadgen("big", "--port", str(p.port), "--bytes", "1000000")
        runs, peaks = [], []
        for _ in range(reps):
            with Sampler(p.pid) as s:
                runs.append(
                    ctx.loadgen("big", "--port", str(p.port), "--bytes", str(size))
                )
            peaks.append(s.summary().get("peak_rss_mb"))
    ok = [r for r in runs if not r.get("error") and r.get("bytes") == size]
    return {
        "mb_per_s": median([r.get("mb_per_s") for r in ok]),
        "errors": len(runs) - len(ok),
        "peak_rss_mb": median(peaks),
        "runs": runs,
    }


def _bigSlow(ctx: Context, impl: Impl, size: int, seconds: int) -> dict[str, Any]:
    """
    A client reading at 2 MB/s, on a fresh process: the growth over its idle
    RSS is what a proxy without backpressure buffers.
    """
    with ctx.proxy(impl) as p:
        ctx.loadgen("big", "--port", str(p.port), "--bytes", "1000000")
        time.sleep(0.3)
        with Sampler(p.pid) as s:
            slow = ctx.loadgen(
                "big",
                "--port",
                str(p.port),
                "--bytes",
                str(size),
                "--rate",
                "2000000",
                "--seconds",
                str(seconds),
            )
    return {**slow, **s.summary()}


def bigBody(ctx: Context) -> None:
    """
    A large response read at full speed (MB/s, peak RSS), then read slowly
    (backpressure: memory must stay flat).
    """
    size = 50_000_000 if ctx.quick else 200_000_000
    reps = ctx.reps(3)
    slowSeconds = 5 if ctx.quick else 15
    for impl in ctx.impls:
        data = _bigFast(ctx, impl, size, reps)
        data["slow"] = _bigSlow(ctx, impl, size, slowSeconds)
        data["slow_growth_mb"] = data["slow"].get("peak_growth_mb")
        ctx.record("big_body", impl.name, data)
        log(
            f"big_body {impl.name}: {data['mb_per_s']} MB/s peak "
            f"{data['peak_rss_mb']} MB; slow growth {data['slow_growth_mb']} MB"
        )


# ---------------------------------------------------------------- upload


def upload(ctx: Context) -> None:
    """
    A large request body: time to the answer, and the memory a proxy that
    buffers request bodies needs for it.
    """
    reps = ctx.reps(3)
    size = 20_000_000
    for impl in ctx.impls:
        with ctx.proxy(impl) as p:
            ctx.loadgen("upload", "--port", str(p.port), "--bytes", "1000")
            runs, peaks = [], []
            for _ in range(reps):
                with Sampler(p.pid) as s:
                    runs.append(
                        ctx.loadgen(
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
        ctx.record("upload", impl.name, data)
        log(f"upload {impl.name}: {data['seconds']} s, peak {data['peak_rss_mb']} MB")


# Scenario names (the command line's and results.json's) in running order.
SCENARIOS: dict[str, Callable[[Context], None]] = {
    "startup": startup,
    "sse_latency": sseLatency,
    "throughput": throughput,
    "ttfb": ttfb,
    "concurrency": concurrency,
    "big_body": bigBody,
    "upload": upload,
}

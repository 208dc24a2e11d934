"""
Turn the benchmark's results into bench/RESULTS.md and bench/results.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ["direct", "ours", "reference", "nginx"]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def get(results: dict, scenario: str, impl: str, field: str) -> Any:
    d = results.get(scenario, {}).get(impl)
    if d is None:
        return None
    for part in field.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


# (label, scenario, field, direct-field or None)
ROWS: list[tuple[str, str, str, str | None]] = [
    ("startup: launch → ready, ms (console script)", "startup", "ready_ms", None),
    ("startup: launch → ready, ms (twistd -n)", "startup", "ready_ms@twistd", None),
    ("startup: idle RSS, MB (console script)", "startup", "idle_rss_mb", None),
    ("startup: idle RSS, MB (twistd -n)", "startup", "idle_rss_mb@twistd", None),
    ("sse 1 stream: added p50, ms", "sse_latency_1", "added_p50_ms", "p50_ms"),
    ("sse 1 stream: added p99, ms", "sse_latency_1", "added_p99_ms", "p99_ms"),
    (
        "sse 1 stream: added max (max − direct p50), ms",
        "sse_latency_1",
        "added_max_ms",
        "max_ms",
    ),
    ("sse 10 streams: added p50, ms", "sse_latency_10", "added_p50_ms", "p50_ms"),
    ("sse 10 streams: added p99, ms", "sse_latency_10", "added_p99_ms", "p99_ms"),
    (
        "sse 10 streams: added max (max − direct p50), ms",
        "sse_latency_10",
        "added_max_ms",
        "max_ms",
    ),
    ("throughput c=1: req/s", "throughput_c1", "rps", "rps"),
    (
        "throughput c=1: p50 / p99, ms",
        "throughput_c1",
        "p50_ms|p99_ms",
        "p50_ms|p99_ms",
    ),
    ("throughput c=32: req/s", "throughput_c32", "rps", "rps"),
    (
        "throughput c=32: p50 / p99, ms",
        "throughput_c32",
        "p50_ms|p99_ms",
        "p50_ms|p99_ms",
    ),
    ("throughput c=32: errors", "throughput_c32", "errors", "errors"),
    (
        "throughput c=32: proxy CPU µs per request",
        "throughput_c32",
        "cpu_us_per_req",
        None,
    ),
    ("throughput c=256: req/s", "throughput_c256", "rps", "rps"),
    (
        "throughput c=256: p50 / p99, ms",
        "throughput_c256",
        "p50_ms|p99_ms",
        "p50_ms|p99_ms",
    ),
    ("throughput c=256: errors", "throughput_c256", "errors", "errors"),
    (
        "throughput c=256: proxy CPU µs per request",
        "throughput_c256",
        "cpu_us_per_req",
        None,
    ),
    ("ttfb (300 keep-alive): mean, ms", "ttfb", "mean_ms", "mean_ms"),
    ("ttfb (300 keep-alive): p99, ms", "ttfb", "p99_ms", "p99_ms"),
    (
        "concurrency 1000: events delivered",
        "concurrency_1000",
        "events_delivered",
        "events_delivered",
    ),
    ("concurrency 1000: errors", "concurrency_1000", "errors", "errors"),
    (
        "concurrency 1000: event p99 after all connected, ms",
        "concurrency_1000",
        "p99_ms",
        "p99_ms",
    ),
    (
        "concurrency 1000: event p99 over all events, ms",
        "concurrency_1000",
        "p99_all_ms",
        "p99_all_ms",
    ),
    ("concurrency 1000: peak RSS, MB", "concurrency_1000", "peak_rss_mb", None),
    ("concurrency 1000: CPU s", "concurrency_1000", "cpu_s", None),
    (
        "concurrency 4000: events delivered",
        "concurrency_4000",
        "events_delivered",
        "events_delivered",
    ),
    ("concurrency 4000: errors", "concurrency_4000", "errors", "errors"),
    (
        "concurrency 4000: event p99 after all connected, ms",
        "concurrency_4000",
        "p99_ms",
        "p99_ms",
    ),
    (
        "concurrency 4000: event p99 over all events, ms",
        "concurrency_4000",
        "p99_all_ms",
        "p99_all_ms",
    ),
    (
        "concurrency 4000: all streams connected after, s",
        "concurrency_4000",
        "connect_s",
        "connect_s",
    ),
    ("concurrency 4000: peak RSS, MB", "concurrency_4000", "peak_rss_mb", None),
    ("concurrency 4000: CPU s", "concurrency_4000", "cpu_s", None),
    ("big_body 200 MB: MB/s", "big_body", "mb_per_s", "mb_per_s"),
    ("big_body 200 MB: peak RSS, MB", "big_body", "peak_rss_mb", None),
    (
        "big_body slow client 2 MB/s: peak RSS growth, MB",
        "big_body",
        "slow_growth_mb",
        None,
    ),
    ("upload 20 MB: seconds", "upload", "seconds", "seconds"),
    ("upload 20 MB: peak RSS, MB", "upload", "peak_rss_mb", None),
]

# Fields where lower is better (for the ratio column's reading).
LOWER_BETTER = ("ms", "seconds", "rss", "cpu", "errors", "growth")


def cell(results: dict, scenario: str, impl: str, field: str) -> str:
    if "@" in field:
        field, variant = field.split("@")
        if impl != "ours":
            return "—"
        impl = f"ours-{variant}"
    parts = [get(results, scenario, impl, f) for f in field.split("|")]
    if all(p is None for p in parts):
        return "—"
    return " / ".join(fmt(p) for p in parts)


def ratio(results: dict, scenario: str, field: str) -> str:
    if "|" in field:
        field = field.split("|")[0]
    if "@" in field:
        return "—"
    ours = get(results, scenario, "ours", field)
    ref = get(results, scenario, "reference", field)
    if (
        not isinstance(ours, (int, float))
        or not isinstance(ref, (int, float))
        or not ref
    ):
        return "—"
    if field.startswith("added_") and ref <= 0:
        return "—"
    x = ours / ref
    return "<0.01×" if 0 <= x < 0.01 else f"{x:.3g}×"


Check = Callable[[dict], tuple[Any, str, bool | None]]


def targets(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """
    (target, measured, bound, pass) for every target of the issue.
    """
    out: list[tuple[str, str, str, bool | None]] = []

    def add(name: str, value: Any, bound: Any, ok: bool | None, unit: str = "") -> None:
        out.append((name, fmt(value) + unit if value is not None else "—", bound, ok))

    def le(v: Any, b: Any) -> bool | None:
        return None if v is None or b is None else v <= b

    def ge(v: Any, b: Any) -> bool | None:
        return None if v is None or b is None else v >= b

    for n in (1, 10):
        s = f"sse_latency_{n}"
        v = get(r, s, "ours", "added_p50_ms")
        add(
            f"sse_latency {n} stream(s): added p50 ≤ 0.5 ms",
            v,
            "0.5 ms",
            le(v, 0.5),
            " ms",
        )
        v = get(r, s, "ours", "added_p99_ms")
        add(
            f"sse_latency {n} stream(s): added p99 ≤ 2 ms", v, "2 ms", le(v, 2.0), " ms"
        )
    ref = get(r, "throughput_c32", "reference", "rps")
    v = get(r, "throughput_c32", "ours", "rps")
    add(
        "throughput c=32 ≥ 0.5 × reference req/s",
        v,
        f"{fmt(0.5 * ref)} req/s" if ref else "reference not measured",
        ge(v, 0.5 * ref if ref else None),
        " req/s",
    )
    v = get(r, "throughput_c256", "ours", "errors")
    add("throughput c=256: zero errors", v, "0", None if v is None else v == 0)
    ref = get(r, "ttfb", "reference", "mean_ms")
    v = get(r, "ttfb", "ours", "mean_ms")
    add(
        "ttfb mean ≤ 1.5 × reference",
        v,
        f"{fmt(1.5 * ref)} ms" if ref else "reference not measured",
        le(v, 1.5 * ref if ref else None),
        " ms",
    )
    s = "concurrency_4000"
    deliv = get(r, s, "ours", "events_delivered")
    exp = get(r, s, "ours", "events_expected")
    add(
        "concurrency 4000: every event delivered",
        f"{fmt(deliv)} / {fmt(exp)}" if deliv is not None else None,
        "all",
        None if deliv is None else (deliv == exp and get(r, s, "ours", "errors") == 0),
    )
    v = get(r, s, "ours", "p99_ms")
    add(
        "concurrency 4000: event p99 ≤ 50 ms once all connected",
        v,
        "50 ms",
        le(v, 50),
        " ms",
    )
    v = get(r, s, "ours", "peak_rss_mb")
    add("concurrency 4000: peak RSS ≤ 150 MB", v, "150 MB", le(v, 150), " MB")
    ref = get(r, "big_body", "reference", "mb_per_s")
    v = get(r, "big_body", "ours", "mb_per_s")
    add(
        "big_body ≥ 0.9 × reference MB/s",
        v,
        f"{fmt(0.9 * ref)} MB/s" if ref else "reference not measured",
        ge(v, 0.9 * ref if ref else None),
        " MB/s",
    )
    v = get(r, "big_body", "ours", "slow_growth_mb")
    add("big_body slow client: peak RSS growth ≤ 8 MB", v, "8 MB", le(v, 8), " MB")
    ref = get(r, "upload", "reference", "seconds")
    v = get(r, "upload", "ours", "seconds")
    add(
        "upload time ≤ 1.5 × reference",
        v,
        f"{fmt(1.5 * ref)} s" if ref else "reference not measured",
        le(v, 1.5 * ref if ref else None),
        " s",
    )
    ref = get(r, "upload", "reference", "peak_rss_mb")
    v = get(r, "upload", "ours", "peak_rss_mb")
    add(
        "upload peak RSS ≤ reference",
        v,
        f"{fmt(ref)} MB" if ref else "reference not measured",
        le(v, ref),
        " MB",
    )
    v = get(r, "startup", "ours", "ready_ms")
    add("startup ≤ 500 ms (console script)", v, "500 ms", le(v, 500), " ms")
    v = get(r, "startup", "ours-twistd", "ready_ms")
    add("startup ≤ 500 ms (twistd -n)", v, "500 ms", le(v, 500), " ms")
    return out


def write_reports(bench: Any, scenarios: list[str]) -> None:
    r = bench.results
    m = bench.machine
    dest = Path(bench.args.results)
    impls = [c for c in COLUMNS if c in bench.impls]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bench/run{' --quick' if bench.quick else ''}"
        f"{' --only ' + bench.args.only if bench.args.only else ''}` on {m['date']}"
        f" (git {m.get('git')}); the run took {m.get('duration_s')} s.",
        "",
        "Machine: "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gb']} GiB, "
        f"Linux {m['kernel']}, "
        f"Python {m['python']}; load average at start {' '.join(m['loadavg_start'])}, "
        f"at end {' '.join(m.get('loadavg_end', []))}.",
        "",
        "Pinning: every proxy on CPU 0 (`taskset -c 0`); upstreams and load "
        "generators on CPU 1. 'direct' is the client talking to the upstream "
        "with no proxy (the floor).",
        "",
        "Implementations:",
        f"- ours: {m.get('ours') or 'not measured'}"
        + (f" with {m['ours_env']}" if m.get("ours_env") else ""),
        f"- reference: {m.get('reference') or 'not measured'}",
        f"- nginx: {m.get('nginx') or 'not measured'} (key-injecting reverse proxy, "
        "proxy_buffering off, HTTP/1.1 keep-alive upstream)",
        "- throughput client: "
        + (m.get("wrk") or "Python asyncio load generator (wrk not installed)"),
        "",
    ]
    if bench.notes:
        lines += ["Notes:", *[f"- {n}" for n in bench.notes], ""]
    lines += [
        "Values are medians over repetitions (see bench/README.md). 'Added' SSE "
        "latencies: the implementation's p50/p99 minus direct's p50/p99, and its "
        "max minus direct's p50; the direct column shows the raw floor. "
        "Ratio = ours / reference (of the first figure in 'a / b' cells).",
        "",
        "| metric | " + " | ".join(impls) + " | ours/ref |",
        "|---|" + "---|" * len(impls) + "---|",
    ]
    for label, scenario, field, directField in ROWS:
        if scenario not in r:
            continue
        cells = []
        for impl in impls:
            if impl == "direct":
                cells.append(
                    cell(r, scenario, "direct", directField) if directField else "—"
                )
                if directField and directField != field:
                    cells[-1] = f"({cells[-1]} raw)"
            else:
                cells.append(cell(r, scenario, impl, field))
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {ratio(r, scenario, field)} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| target | ours | bound | result |",
        "|---|---|---|---|",
    ]
    for name, value, bound, ok in targets(r):
        verdict = "not measured" if ok is None else ("pass" if ok else "**MISS**")
        lines.append(f"| {name} | {value} | {bound} | {verdict} |")
    lines += [
        "",
        "Numbers from a shared, busy machine are noisy: compare columns within "
        "one run, not across runs. The load average above says how busy it was.",
        "",
    ]
    (dest / "RESULTS.md").write_text("\n".join(lines))
    payload = {
        "machine": m,
        "notes": bench.notes,
        "implementations": impls,
        "scenarios": r,
        "targets": [
            {"target": n, "ours": v, "bound": b, "pass": ok}
            for n, v, b, ok in targets(r)
        ],
    }
    (dest / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    (bench.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")

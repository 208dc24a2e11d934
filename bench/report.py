# -*- test-case-name: tests.test_benchreport -*-
"""
Turn the benchmark's results into bench/RESULTS.md and bench/results.json.

Pure functions of the results (plus L{writeReports}, which writes them), so
that a saved results.json can be rendered again (C{bench/run --rereport})
and the rendering is unit-tested (tests/test_benchreport.py). Standard
library only, and no imports from bench/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The built-in implementations, in column order; implementations defined on
# the command line (bench/impls.py) go between ours and the reference.
COLUMNS = ["direct", "ours", "reference", "nginx"]


def fmt(value: Any, digits: int = 2) -> str:
    """
    A figure as RESULTS.md shows it: fewer decimals as it grows, "—" for
    not measured, "NO" for a false flag (so that it stands out).
    """
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


def get(results: dict[str, Any], scenario: str, impl: str, field: str) -> Any:
    """
    C{results[scenario][impl][field]}, C{field} dotted for nested values
    (C{"slow.peak_growth_mb"}); C{None} where anything is missing.
    """
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


def addedLatency(byImpl: dict[str, dict[str, Any]]) -> None:
    """
    Add C{added_*_ms} = the implementation's figure minus direct's: p50 and
    p99 percentile by percentile; max minus direct's p50 (the worst event
    against the typical no-proxy event: two maxima of separate runs are
    both single scheduling hiccups, and their difference means nothing).
    """
    base = byImpl.get("direct")
    if not base:
        return
    for d in byImpl.values():
        for stat, baseStat in (("p50", "p50"), ("p99", "p99"), ("max", "p50")):
            mine, floor = d.get(f"{stat}_ms"), base.get(f"{baseStat}_ms")
            if mine is not None and floor is not None:
                d[f"added_{stat}_ms"] = mine - floor


def _variant(impl: str, field: str) -> tuple[str, str]:
    """
    C{"ready_ms@twistd"} of C{ours} is C{"ready_ms"} of C{ours-twistd}: a
    variant of an implementation is recorded under its own name.
    """
    if "@" in field:
        field, variant = field.split("@")
        return f"{impl}-{variant}", field
    return impl, field


def cell(results: dict[str, Any], scenario: str, impl: str, field: str) -> str:
    """
    One table cell: C{field} may be C{"a|b"} (shown C{"a / b"}) and may name
    a variant (C{"field@variant"}); "—" if nothing was measured.
    """
    impl, field = _variant(impl, field)
    parts = [get(results, scenario, impl, f) for f in field.split("|")]
    if all(p is None for p in parts):
        return "—"
    return " / ".join(fmt(p) for p in parts)


def ratio(
    results: dict[str, Any],
    scenario: str,
    field: str,
    impl: str = "ours",
    base: str = "reference",
) -> str:
    """
    C{impl}'s figure over C{base}'s (the first of C{"a|b"}); "—" where one
    is missing or zero, or for an added latency whose base is not positive
    (the quotient would mean nothing).
    """
    field = field.split("|")[0]
    impl, mineField = _variant(impl, field)
    base, baseField = _variant(base, field)
    mine = get(results, scenario, impl, mineField)
    other = get(results, scenario, base, baseField)
    if (
        not isinstance(mine, (int, float))
        or not isinstance(other, (int, float))
        or not other
    ):
        return "—"
    if mineField.startswith("added_") and other <= 0:
        return "—"
    x = mine / other
    return "<0.01×" if 0 <= x < 0.01 else f"{x:.3g}×"


def columnOrder(impls: list[str]) -> list[str]:
    """
    The columns of RESULTS.md: direct, ours, then the implementations
    defined on the command line (next to ours, which they are compared
    with), then the reference and nginx.
    """
    extras = [i for i in impls if i not in COLUMNS]
    head = [c for c in COLUMNS[:2] if c in impls]
    return head + extras + [c for c in COLUMNS[2:] if c in impls]


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """
    (target, measured, bound, pass) for every target of the issue; pass is
    C{None} where it was not measured (so a partial run misses nothing).
    Targets are about ours only.
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


@dataclass
class Report:
    """
    Everything RESULTS.md and results.json are made of.

    @ivar impls: the implementations measured, in any order.
    @ivar only: the C{--only} of the run, for the "Generated by" line.
    """

    results: dict[str, Any]
    machine: dict[str, Any]
    notes: list[str]
    impls: list[str]
    quick: bool = False
    only: str | None = None


def _implementationLines(m: dict[str, Any], impls: list[str]) -> list[str]:
    extra = m.get("extra_impls") or {}
    lines = [
        "Implementations:",
        f"- ours: {m.get('ours') or 'not measured'}"
        # ours_env: the environment overrides of older runs, for --rereport.
        + (f" with {m['ours_env']}" if m.get("ours_env") else ""),
    ]
    lines += [
        f"- {i}: {extra.get(i) or 'not measured'}" for i in impls if i not in COLUMNS
    ]
    return lines + [
        f"- reference: {m.get('reference') or 'not measured'}",
        f"- nginx: {m.get('nginx') or 'not measured'} (key-injecting reverse proxy, "
        "proxy_buffering off, HTTP/1.1 keep-alive upstream)",
        "- throughput client: "
        + (m.get("wrk") or "Python asyncio load generator (wrk not installed)"),
        "",
    ]


def _header(rep: Report, impls: list[str]) -> list[str]:
    m = rep.machine
    return [
        "# Benchmark results",
        "",
        f"Generated by `bench/run{' --quick' if rep.quick else ''}"
        f"{' --only ' + rep.only if rep.only else ''}` on {m['date']}"
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
        *_implementationLines(m, impls),
    ]


def _row(
    r: dict[str, Any],
    impls: list[str],
    extras: list[str],
    row: tuple[str, str, str, str | None],
) -> str:
    label, scenario, field, directField = row
    cells = []
    for impl in impls:
        if impl != "direct":
            cells.append(cell(r, scenario, impl, field))
        elif not directField:
            cells.append("—")
        elif directField != field:
            cells.append(f"({cell(r, scenario, 'direct', directField)} raw)")
        else:
            cells.append(cell(r, scenario, "direct", directField))
    cells.append(ratio(r, scenario, field))
    cells += [ratio(r, scenario, field, extra, "ours") for extra in extras]
    return f"| {label} | " + " | ".join(cells) + " |"


def renderResults(rep: Report) -> str:
    """
    RESULTS.md: the machine, the implementations, one table (metric ×
    implementation, ratio ours / reference, and each defined implementation
    / ours) and the targets.
    """
    r = rep.results
    impls = columnOrder(rep.impls)
    extras = [i for i in impls if i not in COLUMNS] if "ours" in impls else []
    lines = _header(rep, impls)
    if rep.notes:
        lines += ["Notes:", *[f"- {n}" for n in rep.notes], ""]
    lines += [
        "Values are medians over repetitions (see bench/README.md). 'Added' SSE "
        "latencies: the implementation's p50/p99 minus direct's p50/p99, and its "
        "max minus direct's p50; the direct column shows the raw floor. "
        "Ratio = ours / reference (of the first figure in 'a / b' cells)"
        + (", and X/ours the same for X." if extras else "."),
        "",
        "| metric | "
        + " | ".join(impls)
        + " | ours/ref |"
        + "".join(f" {e}/ours |" for e in extras),
        "|---|" + "---|" * (len(impls) + 1 + len(extras)),
    ]
    lines += [_row(r, impls, extras, row) for row in ROWS if row[1] in r]
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
    return "\n".join(lines)


def resultsPayload(rep: Report) -> dict[str, Any]:
    """
    results.json: everything measured, and enough to render RESULTS.md again.
    """
    return {
        "machine": rep.machine,
        "notes": rep.notes,
        "implementations": columnOrder(rep.impls),
        "scenarios": rep.results,
        "targets": [
            {"target": n, "ours": v, "bound": b, "pass": ok}
            for n, v, b, ok in targets(rep.results)
        ],
    }


def writeReports(rep: Report, dest: Path, runDir: Path) -> None:
    """
    Write RESULTS.md and results.json into C{dest}, and a copy of
    results.json into the run's scratch directory C{runDir}.
    """
    (dest / "RESULTS.md").write_text(renderResults(rep))
    payload = json.dumps(resultsPayload(rep), indent=1) + "\n"
    (dest / "results.json").write_text(payload)
    (runDir / "results.json").write_text(payload)

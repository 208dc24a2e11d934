#!/usr/bin/env python3
"""
One-command benchmark of responses-api-proxy against the reference
(codex responses-api-proxy), nginx as a key-injecting proxy, and no proxy.

    bench/run [--quick] [--only SCENARIO[,SCENARIO...]] [--impls a,b,...]
              [--impl 'NAME=BASE[@REV] [ARG ...]' ...]

Writes bench/RESULTS.md and bench/results.json; scratch files (configs, logs,
raw loadgen output) go to bench/out/<timestamp>/. See bench/README.md.

This is the command only: processes and /proc sampling are in _procs.py,
the implementations in impls.py (builds.py: ours at another revision;
launch.py: starting them and the upstreams), the scenarios in scenarios.py,
the load clients in clients.py, profiling in profiling.py and the reports
in report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _procs import LOAD_CPU, Processes, firstLine, log, raiseFdLimit
from impls import (
    BENCH,
    BUILTINS,
    REPO,
    Impl,
    builtinImpls,
    defineImpl,
    describe,
    parseImplSpec,
)
from launch import startUpstreams
from profiling import profile
from report import Report, addedLatency, columnOrder, writeReports
from scenarios import SCENARIOS, Context

# Where builds of ours at other revisions are kept between runs (gitignored).
BUILDS = BENCH / "out" / "builds"


def chooseImpls(
    args: argparse.Namespace, builtins: dict[str, Impl], note: Callable[[str], None]
) -> list[Impl]:
    """
    The implementations to measure, in column order: those of C{--impls}
    (default: the built-in ones and every C{--impl}) that can run; a
    missing one is skipped with a note, never faked. Only wanted
    definitions are built.
    """
    try:
        specs = {s.name: s for s in map(parseImplSpec, args.impl)}
    except ValueError as e:
        raise SystemExit(str(e)) from None
    names = [*BUILTINS, *(n for n in specs if n not in BUILTINS)]
    wanted = args.impls.split(",") if args.impls else names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SystemExit(
            f"unknown implementation {', '.join(unknown)}; "
            f"choose from {', '.join(names)}, or define one with --impl"
        )
    chosen = []
    for name in columnOrder([n for n in names if n in wanted]):
        if name in specs:
            impl = defineImpl(specs[name], builtins, BUILDS)
        else:
            impl = builtins[name]
        if impl.missing:
            note(f"{name}: skipped, {impl.missing}")
        else:
            chosen.append(impl)
    return chosen


def machineInfo(
    builtins: dict[str, Impl], impls: list[Impl], wrk: str | None, quick: bool
) -> dict[str, Any]:
    """
    The machine and the versions measured, for the report's header: results
    are only comparable within one run on one machine state.
    """
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        ),
        "loadavg_start": loadAverage(),
        "ours": describe(builtins["ours"]),
        "reference": describe(builtins["reference"]),
        "nginx": describe(builtins["nginx"]),
        "wrk": firstLine([wrk, "-v"]) if wrk else None,
        "git": firstLine(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "quick": quick,
    }
    extra = {i.name: describe(i) for i in impls if i.name not in BUILTINS}
    if extra:
        info["extra_impls"] = extra
    return info


def loadAverage() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def runScenarios(ctx: Context, wanted: list[str]) -> None:
    """
    Each wanted scenario in turn; one that fails is noted and the others
    still run.
    """
    for name, scenario in SCENARIOS.items():
        if name not in wanted:
            continue
        log(f"=== {name}")
        try:
            scenario(ctx)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            ctx.note(f"{name}: failed with {type(e).__name__}: {e}")


def bench(args: argparse.Namespace, procs: Processes) -> None:
    """
    A run: choose the implementations, start the upstreams, run the
    scenarios (or the profile), write the reports.
    """
    started = time.time()
    wanted = args.only.split(",") if args.only else list(SCENARIOS)
    for name in wanted:
        if name not in SCENARIOS:
            raise SystemExit(
                f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}"
            )
    notes = list(args.note)

    def note(text: str) -> None:
        log("NOTE " + text)
        notes.append(text)

    builtins = builtinImpls()
    impls = chooseImpls(args, builtins, note)
    runDir = BENCH / "out" / time.strftime("%Y%m%d-%H%M%S")
    runDir.mkdir(parents=True, exist_ok=True)
    partial = args.quick or args.only or args.impls or args.impl
    dest = Path(args.results or (runDir if partial else BENCH))
    wrk = shutil.which("wrk")
    if not wrk:
        note(
            "wrk not installed (apt-get install -y wrk): throughput uses the "
            "Python asyncio load generator instead (same for every implementation)"
        )
    nginx = builtins["nginx"].argv[0] if builtins["nginx"].argv else None
    if args.profile:
        upstreams = startUpstreams(runDir, procs, nginx, note)
        profile(Context(args.quick, impls, upstreams, runDir, procs, wrk, notes=notes))
        return
    machine = machineInfo(builtins, impls, wrk, args.quick)
    upstreams = startUpstreams(runDir, procs, nginx, note)
    ctx = Context(args.quick, impls, upstreams, runDir, procs, wrk, notes=notes)
    runScenarios(ctx, wanted)
    machine["loadavg_end"] = loadAverage()
    machine["duration_s"] = round(time.time() - started, 1)
    names = [i.name for i in impls]
    report = Report(ctx.results, machine, ctx.notes, names, args.quick, args.only)
    writeReports(report, dest, runDir)


def rereport(args: argparse.Namespace) -> None:
    """
    Regenerate RESULTS.md/results.json from a saved results.json.
    """
    data = json.loads(Path(args.rereport).read_text())
    for name in ("sse_latency_1", "sse_latency_10"):
        if name in data["scenarios"]:
            addedLatency(data["scenarios"][name])
    dest = Path(args.results or BENCH)
    report = Report(
        data["scenarios"],
        data["machine"],
        data["notes"] + [n for n in args.note if n not in data["notes"]],
        data["implementations"],
        bool(data["machine"].get("quick")),
        args.only,
    )
    writeReports(report, dest, dest)


def parseArgs() -> argparse.Namespace:
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
        "--impls",
        help=f"comma-separated subset of: {', '.join(BUILTINS)} and the --impl names",
    )
    parser.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="'NAME=BASE[@REV] [ARG ...]'",
        help="define an implementation: BASE (ours or reference) plus arguments, "
        "ours optionally built at git revision REV; {scratch} in an argument is "
        "a fresh directory per process, {run} the run directory (repeatable)",
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
        "--results",
        help="directory for RESULTS.md/results.json [default: bench/ for a full "
        "run, the run's bench/out/<stamp>/ for --quick, --only, --impls, --impl]",
    )
    return parser.parse_args()


def main() -> None:
    args = parseArgs()
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 CPUs; proxy and load generator will share a core")
    raiseFdLimit()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    if args.rereport:
        rereport(args)
        return
    procs = Processes()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench(args, procs)
    finally:
        procs.stopAll()


if __name__ == "__main__":
    main()

"""
The load clients, run on the load CPU: C{loadgen.py} (every scenario) and
wrk (throughput, when installed; the Python load generator otherwise, the
same for every implementation but much slower, so ratios compress).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from _procs import LOAD_CPU, runPinned

BENCH = Path(__file__).resolve().parent
# wrk's error counters, summed into "errors".
WRK_ERRORS = ("connect", "read", "write", "status", "timeout")


def runLoadgen(*argv: str, timeout: float = 300) -> dict[str, Any]:
    """
    One C{loadgen.py} subcommand; its JSON summary, or C{{"error": ...}}
    (a failed step is recorded, not fatal: the other figures still count).
    """
    proc = runPinned(
        LOAD_CPU, [sys.executable, str(BENCH / "loadgen.py"), *argv], timeout
    )
    if proc.returncode != 0:
        return {
            "error": f"loadgen exit {proc.returncode}: " + proc.stderr.decode()[-500:]
        }
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def runThroughput(
    wrk: str | None, port: int, connections: int, seconds: float
) -> dict[str, Any]:
    """
    Closed-loop small POSTs on C{connections} connections for C{seconds}:
    requests, req/s, p50/p99 latency (ms) and errors, whichever client.
    """
    if not wrk:
        r = runLoadgen(
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
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / "wrk_post.lua"),
        f"http://127.0.0.1:{port}/v1/responses",
    ]
    proc = runPinned(LOAD_CPU, argv, seconds + 60)
    return parseWrk(proc.stdout.decode(), proc.stderr.decode())


def parseWrk(stdout: str, stderr: str = "") -> dict[str, Any]:
    """
    The figures of wrk_post.lua's C{WRKJSON} summary line (latencies there
    are in microseconds).
    """
    m = re.search(r"^WRKJSON (.*)$", stdout, re.M)
    if not m:
        return {"error": f"wrk failed: {stdout[-300:]} {stderr[-300:]}"}
    w = json.loads(m.group(1))
    return {
        "client": "wrk",
        "requests": w["requests"],
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50_ms": w["p50"] / 1000,
        "p99_ms": w["p99"] / 1000,
        "errors": sum(w[k] for k in WRK_ERRORS),
        "error_detail": {k: w[k] for k in WRK_ERRORS},
    }

"""
C{bench/run --profile}: py-spy on our proxy under the throughput scenario at
c=32, and a summary of where its reactor thread spends its time
(C{profile-top.md}; the analysis is in PROFILE.md).

(Not named C{profile.py}: with bench/ first on C{sys.path} that would hide
the standard library's C{profile} module.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from _procs import LOAD_CPU, log, pinned
from impls import REPO
from scenarios import Context

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
# Where installed and standard-library modules live, whatever the machine
# (in this order: site-packages is inside lib/pythonX.Y/).
_LIBRARIES = (
    re.compile(r"^.*?/(?:site|dist)-packages/"),
    re.compile(r"^.*?/lib/python\d+\.\d+/"),
)


def moduleOf(frame: str, repo: str = str(REPO)) -> str:
    """
    The module path of a py-spy frame C{"func (path:line)"}, relative to
    site-packages, the standard library or the checkout: the same module
    reads the same on every machine.
    """
    m = re.search(r"\((.*?)(?::\d+)?\)$", frame.strip())
    path = m.group(1) if m else frame
    for library in _LIBRARIES:
        m = library.match(path)
        if m:
            return path[m.end() :]
    if path.startswith(repo.rstrip("/") + "/"):
        return path[len(repo.rstrip("/")) + 1 :]
    return path


def shortName(frame: str) -> str:
    """
    C{"func (path/to/file.py:123)"} -> C{"func (to/file.py)"}: line numbers
    would split one function into many rows.
    """
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})"


@dataclass
class Counts:
    """
    Sample counts of the reactor thread from collapsed stacks.
    """

    total: int = 0
    idle: int = 0
    selfCounts: dict[str, int] = field(default_factory=dict)
    inclusive: dict[str, int] = field(default_factory=dict)
    modules: dict[str, int] = field(default_factory=dict)
    stacks: list[tuple[str, int]] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return self.total - self.idle


def _isIdle(leaf: str) -> bool:
    return "doPoll (" in leaf or leaf.startswith(("poll (", "select ("))


def countCollapsed(text: str, repo: str = str(REPO)) -> Counts:
    """
    Count py-spy's collapsed ("raw") stacks, C{"frame;frame;...;leaf count"}
    per line, skipping idle worker threads (the reactor's threadpool) and
    counting the reactor waiting in epoll as idle.
    """
    c = Counts()
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        if "Thread._bootstrap" in stack:
            continue
        frames = [shortName(f) for f in stack.split(";") if f]
        if not frames:
            continue
        c.total += n
        leaf = frames[-1]
        if _isIdle(leaf):
            c.idle += n
            continue
        c.selfCounts[leaf] = c.selfCounts.get(leaf, 0) + n
        c.stacks.append((stack, n))
        mod = moduleOf(stack.split(";")[-1], repo)
        c.modules[mod] = c.modules.get(mod, 0) + n
        for f in set(frames):
            c.inclusive[f] = c.inclusive.get(f, 0) + n
    return c


def _table(title: list[str], header: str, rows: list[str]) -> list[str]:
    cols = header.count("|") - 1
    return ["", *title, "", header, "|" + "---|" * cols, *rows]


def renderCounts(c: Counts, top: int = 15) -> str:
    """
    The summary as markdown: self time per function and per module, the
    entry points' inclusive time (L{CATEGORIES}), and the top inclusive.
    """

    def pct(n: int) -> str:
        return f"{100 * n / max(c.busy, 1):.1f}"

    ranked = sorted(c.selfCounts.items(), key=lambda kv: -kv[1])[:top]
    out = [
        f"Reactor-thread samples: {c.total} (250 Hz); waiting in epoll: {c.idle} "
        f"({100 * c.idle / max(c.total, 1):.1f}%); busy: {c.busy}.",
        "",
        "| # | function (file) | self % of busy | inclusive % of busy |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {i} | `{f}` | {pct(n)} | {pct(c.inclusive.get(f, 0))} |"
        for i, (f, n) in enumerate(ranked, 1)
    ]
    modules = sorted(c.modules.items(), key=lambda kv: -kv[1])[:20]
    out += _table(
        ["Self time by module (exclusive, sums to 100% of busy):"],
        "| module | self % of busy |",
        [f"| `{mod}` | {pct(n)} |" for mod, n in modules],
    )
    cats = [
        (label, sum(n for stk, n in c.stacks if any(pt in stk for pt in patterns)))
        for label, patterns in CATEGORIES
    ]
    out += _table(
        [
            "Entry points (inclusive: samples whose stack contains the frame; "
            "rows overlap):"
        ],
        "| area | % of busy |",
        [f"| {label} | {pct(n)} |" for label, n in cats],
    )
    inclusive = sorted(c.inclusive.items(), key=lambda kv: -kv[1])[:30]
    out += _table(
        ["Top inclusive (where time goes, callers included):"],
        "| function (file) | inclusive % of busy |",
        [f"| `{f}` | {pct(n)} |" for f, n in inclusive],
    )
    return "\n".join(out) + "\n"


def summarizeCollapsed(text: str, top: int = 15) -> str:
    """
    Self and inclusive sample counts per function from py-spy's collapsed
    ("raw") stacks, as markdown.
    """
    return renderCounts(countCollapsed(text), top)


def findPySpy() -> str | None:
    found = shutil.which("py-spy") or str(
        Path(sysconfig.get_path("scripts")) / "py-spy"
    )
    return found if os.path.exists(found) else None


def profile(ctx: Context) -> None:
    """
    py-spy (sampling, idle frames included) on the first selected
    implementation of ours under the throughput scenario at c=32: the raw
    collapsed stacks, a speedscope file and profile-top.md, in the run
    directory.
    """
    pyspy = findPySpy()
    if not pyspy:
        ctx.note("py-spy not installed (pip install py-spy): no profile")
        return
    ours = [i for i in ctx.impls if i.kind == "ours"]
    if not ours:
        ctx.note("no implementation of ours selected: no profile")
        return
    seconds = 5 if ctx.quick else 15
    raw = ctx.runDir / "profile.collapsed.txt"
    speedscope = ctx.runDir / "profile.speedscope.json"
    with ctx.proxy(ours[0], ctx.upstreams.static) as p:
        ctx.throughput(p.port, 32, 2)  # warm-up
        for format_, dest, extra in (
            ("raw", raw, ["--idle"]),
            ("speedscope", speedscope, []),
        ):
            argv = [pyspy, "record", "-r", "250", "-d", str(seconds), "-f", format_]
            argv += ["-o", str(dest), "--pid", str(p.pid), *extra]
            spy = subprocess.Popen(
                pinned(LOAD_CPU, argv),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
            w = ctx.throughput(p.port, 32, seconds)
            spy.wait(seconds + 60)
            log(f"profile ({format_}): wrk c=32 under py-spy: {w.get('rps')} req/s")
    summary = summarizeCollapsed(raw.read_text())
    (ctx.runDir / "profile-top.md").write_text(summary)
    print(summary)
    log(f"profile written to {ctx.runDir}")

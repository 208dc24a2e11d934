"""
Processes for the benchmark: start them pinned to one CPU in a process group
of their own, stop them for sure, and read their memory and CPU time from
/proc.

Standard library only: C{loadgen.py} and C{upstream.py} import
L{raiseFdLimit} from here, and they run as plain scripts in processes of
their own.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

# The proxy under test gets CPU 0 to itself; its client, its upstream and the
# harness share CPU 1.
PROXY_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """
    One timestamped progress line, flushed: a run takes minutes and its
    output is often piped to a file someone is tailing.
    """
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def raiseFdLimit() -> None:
    """
    Raise the soft limit on open files to the hard one: thousands of
    concurrent streams need thousands of descriptors in the proxy, the
    upstream and the client alike.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu: str, argv: list[str]) -> list[str]:
    """
    C{argv} run under C{taskset -c cpu}; without taskset, unchanged (the
    child then pins itself, see L{Processes.spawn}, or inherits the
    harness's own affinity).
    """
    if shutil.which("taskset"):
        return ["taskset", "-c", cpu, *argv]
    return argv


def runPinned(
    cpu: str, argv: list[str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a client (loadgen, wrk, py-spy) to completion on C{cpu}, with its
    output captured and the file limit raised.
    """
    return subprocess.run(
        pinned(cpu, argv),
        capture_output=True,
        timeout=timeout,
        preexec_fn=raiseFdLimit,
    )


def firstLine(argv: list[str], stderr: bool = True) -> str | None:
    """
    The first line a command prints (a version, typically), or C{None} if
    it cannot run: the report says "not measured" rather than fail.
    """
    try:
        p = subprocess.run(argv, capture_output=True, timeout=10)
        return (
            (p.stdout + (p.stderr if stderr else b"")).decode().strip().splitlines()[0]
        )
    except (OSError, subprocess.TimeoutExpired, IndexError, UnicodeDecodeError):
        return None


def _childSetup(cpu: str) -> Callable[[], None]:
    def setup() -> None:
        os.setsid()  # its own process group: stopProcess signals all of it
        raiseFdLimit()
        if not shutil.which("taskset"):
            os.sched_setaffinity(0, {int(cpu)})

    return setup


def stopProcess(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """
    SIGTERM to the process group, then SIGKILL after C{timeout} seconds: a
    launcher's children (Node.js, taskset) must not outlive the run.
    """
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


class Processes:
    """
    Every long-running process the harness started and has not stopped yet,
    so that an interrupted or failed run leaves none behind.
    """

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def spawn(self, cpu: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """
        Start C{argv} pinned to C{cpu}, in a process group of its own.
        """
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            pinned(cpu, argv), preexec_fn=_childSetup(cpu), **kw
        )
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stopProcess(proc)
        if proc in self.live:
            self.live.remove(proc)

    def stopAll(self) -> None:
        for proc in list(self.live):
            self.stop(proc)


def freePort() -> int:
    """
    A loopback port nothing listens on now, for servers (nginx) that cannot
    bind port 0 and report what they got.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def portAccepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def readJSON(path: str) -> dict[str, Any] | None:
    """
    The JSON object in C{path}, or C{None} while it is missing or only half
    written.
    """
    try:
        with open(path) as f:
            data: dict[str, Any] = json.loads(f.read())
            return data
    except (OSError, ValueError):
        return None


def waitFile(
    path: str, proc: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any]:
    """
    Wait for C{proc} to write its ready file; fail early if it exits first.
    """
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


def waitPort(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """
    Wait until C{port} accepts a connection; C{False} if C{proc} exits or
    the time runs out.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if portAccepts(port):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def measuredPid(pid: int) -> int:
    """
    The process doing the work: C{pid} itself, unless it is a launcher
    (the Node.js C{codex} script) whose single descendant is the real
    server, whose memory and CPU are what we want.
    """
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return pid
    if not os.path.basename(exe).startswith("node"):
        return pid
    for _ in range(50):
        kids: list[int] = []
        for task in glob.glob(f"/proc/{pid}/task/*/children"):
            with open(task) as f:
                kids += [int(k) for k in f.read().split()]
        if kids:
            return measuredPid(kids[0])
        time.sleep(0.02)
    return pid


# ---------------------------------------------------------------- /proc


def procStatus(pid: int) -> dict[str, int]:
    """
    C{VmRSS} and C{VmHWM} of C{pid}, in bytes (empty once it is gone).
    """
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
    """
    User + system CPU time of C{pid} so far.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def resetPeak(pid: int) -> bool:
    """
    Reset VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights), so
    that the peak of one measurement is not the peak of an earlier one.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """
    Memory and CPU of one process over a C{with} block: VmRSS polled every
    C{interval} s, peak = max(polled, VmHWM) (polling alone misses short
    spikes; VmHWM alone is unavailable without ptrace rights).
    """

    def __init__(self, pid: int | None, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.startRSS = 0
        self.startCPU: float | None = None
        self.endRSS: int | None = None
        self.cpu: float | None = None
        self.hwmReset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        if self.pid is None:
            return self
        self.hwmReset = resetPeak(self.pid)
        self.startRSS = procStatus(self.pid).get("VmRSS", 0)
        self.startCPU = cpuSeconds(self.pid)
        self.peak = self.startRSS
        self._thread = threading.Thread(target=self._run, args=(self.pid,))
        self._thread.daemon = True
        self._thread.start()
        return self

    def _run(self, pid: int) -> None:
        while not self._stop.wait(self.interval):
            rss = procStatus(pid).get("VmRSS", 0)
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
        """
        The figures the scenarios record (empty for "direct": no proxy).
        """
        if self.pid is None:
            return {}
        mb = 1024 * 1024
        return {
            "rss_start_mb": self.startRSS / mb,
            "peak_rss_mb": self.peak / mb,
            "peak_growth_mb": (self.peak - self.startRSS) / mb,
            "cpu_s": self.cpu,
        }

# -*- test-case-name: tests.test_privsep -*-
"""
Privilege separation, for real: the installed proxy started by root with
the key on stdin and C{CODEX_SECURE_MODE=1}, probed by a separate
unprivileged system user from a small stdlib-only helper process.

Also the server-info path when an attacker controls the directory it lives
in (a world-writable sticky directory): planted symlinks, planted files
owned by other users, symlinked or missing parent directories.

These tests need root (to create the users and switch to them); they skip,
saying so, otherwise.

Integration tests (processes / real users).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import (
    CANARY_KEY,
    SpawnedProcess,
    childEnvironment,
    readServerInfo,
    spawnEntryPoint,
    startFakeUpstream,
    waitFor,
)

PROBE_USER = "rapx-probe"
OTHER_USER = "rapx-other"

# Runs as the unprivileged user: standard library only, so that it needs
# nothing from the (possibly unreadable) virtualenv. Prints one JSON object.
PROBE = r"""
import ctypes, json, os, signal, socket, sys

pid, port, info, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = key.encode()
actions = sys.argv[5:]
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}

def attempt(name, function):
    try:
        out[name] = {"ok": True, "value": function()}
    except OSError as e:
        out[name] = {"ok": False, "errno": e.errno}

def readProc(leaf):
    with open("/proc/%d/%s" % (pid, leaf), "rb") as f:
        data = f.read(1 << 20)
    return {"hasKey": key in data, "length": len(data)}

for leaf in ("environ", "cmdline", "maps", "auxv", "stack", "syscall", "limits"):
    attempt(leaf, lambda leaf=leaf: readProc(leaf))

def openMem():
    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
    try:
        return {"hasKey": key in os.pread(fd, 4096, 0)}
    finally:
        os.close(fd)

attempt("mem", openMem)
attempt("owners", lambda: {
    leaf: os.stat("/proc/%d/%s" % (pid, leaf)).st_uid
    for leaf in ("environ", "mem", "cmdline", "maps")
})

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
result = libc.ptrace(PTRACE_ATTACH, pid, None, None)
out["ptraceAttach"] = {"result": result, "errno": ctypes.get_errno()}
if result == 0:
    libc.ptrace(PTRACE_DETACH, pid, None, None)
result = libc.ptrace(PTRACE_SEIZE, pid, None, None)
out["ptraceSeize"] = {"result": result, "errno": ctypes.get_errno()}
if result == 0:
    libc.ptrace(PTRACE_DETACH, pid, None, None)

for name in () if "nokill" in actions else ("0", "SIGTERM", "SIGSTOP", "SIGKILL"):
    number = 0 if name == "0" else getattr(signal, name)
    attempt("kill" + name, lambda number=number: os.kill(pid, number))

def http(raw):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode("latin-1")
            data += chunk

def readInfo():
    with open(info) as f:
        return f.read()

attempt("serverInfo", readInfo)
attempt("post", lambda: http(
    b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nX-Fake-Scenario: json\r\n"
    b"Content-Length: 2\r\n\r\n{}"))
if "shutdown" in actions:
    attempt("shutdown", lambda: http(
        b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
print(json.dumps(out))
"""


def requireRoot() -> None:
    """
    Skip unless running as root (needed to create users and switch to them).
    """
    if os.geteuid() != 0:
        raise SkipTest("privilege-separation tests need root (to useradd and setuid)")
    if shutil.which("useradd") is None:
        raise SkipTest("useradd is not installed (Debian package 'passwd')")


def systemUser(name: str) -> pwd.struct_passwd:
    """
    The system user C{name}, created (once, idempotently) if missing.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        + [name],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 9):  # 9: it appeared meanwhile
        raise SkipTest(f"cannot create system user {name}: {result.stderr.strip()}")
    return pwd.getpwnam(name)


def _candidateInterpreters() -> list[str]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        os.path.realpath(sys.executable),
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        "/usr/bin/python3",
    ]
    return list(dict.fromkeys(c for c in candidates if os.path.exists(c)))


def _runsAs(user: pwd.struct_passwd, argv: list[str]) -> bool:
    def demote() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    try:
        result = subprocess.run(
            argv, preexec_fn=demote, capture_output=True, timeout=30, cwd="/"
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def probeInterpreter(user: pwd.struct_passwd) -> str:
    """
    A Python interpreter that C{user} can execute (the helper needs only the
    standard library); skip if there is none.
    """
    for candidate in _candidateInterpreters():
        if _runsAs(user, [candidate, "-I", "-c", "import ctypes, json, socket"]):
            return candidate
    raise SkipTest(f"no Python interpreter is executable by {user.pw_name}")


def proxyLauncher(user: pwd.struct_passwd) -> list[str]:
    """
    An argv prefix that starts the proxy as C{user} directly (no uid change
    in the process): an interpreter of this minor version that C{user} can
    run, plus this environment's site-packages (and no other: C{-S}, so a
    system dist-packages cannot shadow them). Skip if C{user} cannot.
    """
    site = sysconfig.get_path("purelib")
    code = (
        "import site, sys; site.addsitedir(sys.argv.pop(1)); "
        "sys.argv[0] = 'responses-api-proxy'; "
        "from responses_proxy.cli import main; main()"
    )
    check = f"import site; site.addsitedir({site!r}); import responses_proxy.cli"
    for candidate in _candidateInterpreters():
        if _runsAs(user, [candidate, "-I", "-S", "-c", check]):
            return [candidate, "-I", "-S", "-c", code, site]
    raise SkipTest(
        f"{user.pw_name} cannot run this Python with {site} "
        "(the virtualenv is not readable by other users)"
    )


def stickyDirectory(testCase: TestCase) -> str:
    """
    A fresh mode-1777 directory (like /tmp), removed after the test.
    """
    path = tempfile.mkdtemp(prefix="rapx-sticky-")
    os.chmod(path, 0o1777)
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


def privateDirectory(testCase: TestCase, mode: int = 0o755) -> str:
    """
    A fresh root-owned directory with C{mode}, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="rapx-")
    os.chmod(path, mode)
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


def procFields(pid: int, leaf: str) -> dict[str, str]:
    """
    C{/proc/PID/status}-style C{Name: value} lines as a dict.
    """
    fields = {}
    with open(f"/proc/{pid}/{leaf}") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def coreLimit(pid: int) -> str:
    """
    The C{Max core file size} line of C{/proc/PID/limits}.
    """
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max core file size"):
                return " ".join(line.split()[4:6])
    raise AssertionError("no core limit line")


def leftovers(directory: str) -> list[str]:
    """
    Temporary files the server-info writer may have left in C{directory}.
    """
    return sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(".server-info") or name.endswith(".tmp")
    )


class _Base(TestCase):
    """
    Root, a probe user and a fake upstream; helpers to start the proxy and
    run the probe.
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        self.probe = systemUser(PROBE_USER)
        self.other = systemUser(OTHER_USER)
        self.upstream = startFakeUpstream(self)

    async def startProxy(
        self,
        *args: str,
        serverInfo: str,
        launcher: list[str] | None = None,
        uid: int | None = None,
        gid: int | None = None,
        cwd: str | None = None,
    ) -> tuple[SpawnedProcess, dict[str, Any]]:
        """
        Spawn the installed proxy with the key on stdin, secure mode on, and
        wait for its server-info file.
        """
        argv = launcher or ["responses-api-proxy"]
        process = spawnEntryPoint(
            self,
            [
                *argv,
                "--server-info",
                serverInfo,
                "--upstream-url",
                self.upstream.url,
                *args,
            ],
            stdin=CANARY_KEY.encode() + b"\n",
            env=childEnvironment(CODEX_SECURE_MODE="1"),
            uid=uid,
            gid=gid,
            path=cwd or "/",
        )

        def started() -> dict[str, Any] | None:
            if process.ended.called:
                raise AssertionError("the proxy exited before listening")
            try:
                info = readServerInfo(serverInfo)
            except ValueError:  # a planted file, not ours yet
                return None
            if isinstance(info, dict) and info.get("pid") == process.pid:
                return info
            return None

        info = await waitFor(started, timeout=20)
        assert info is not None
        return process, info

    async def runProbe(
        self, pid: int, port: int, serverInfo: str, *actions: str
    ) -> dict[str, Any]:
        """
        Run L{PROBE} as the probe user against C{pid}; its JSON findings.
        """
        interpreter = probeInterpreter(self.probe)
        helper = spawnEntryPoint(
            self,
            [interpreter, "-I", "-c", PROBE, str(pid), str(port), serverInfo]
            + [CANARY_KEY, *actions],
            stdin=None,
            env={"PATH": "/usr/bin:/bin"},
            uid=self.probe.pw_uid,
            gid=self.probe.pw_gid,
            path="/",
        )
        result = await helper.ended
        self.assertEqual(result.exitCode, 0, result.stderr.decode())
        findings: dict[str, Any] = json.loads(result.stdout)
        return findings


class PrivilegeSeparationTests(_Base):
    """
    An unprivileged user can use the proxy, and nothing else.
    """

    def assertRefused(self, findings: dict[str, Any], name: str, errno: int) -> None:
        """
        The probe's attempt C{name} failed with C{errno}.
        """
        self.assertEqual(findings[name], {"ok": False, "errno": errno}, name)

    async def test_unprivilegedUserGetsServiceButNotKey(self) -> None:
        """
        Against the proxy started by root: the probe user cannot read
        C{environ}, C{mem} or C{maps}, finds no key in C{cmdline}, cannot
        ptrace or signal the process, but can read the server-info file,
        get an answer from C{POST /v1/responses} and stop the proxy with
        C{GET /shutdown} (C{--http-shutdown} given), which exits 0.
        """
        import errno

        directory = privateDirectory(self)
        info = os.path.join(directory, "server-info.json")
        process, serverInfo = await self.startProxy("--http-shutdown", serverInfo=info)
        self.assertEqual(serverInfo["pid"], process.pid)
        status = procFields(process.pid, "status")
        self.assertEqual(status["Uid"].split()[0], "0")
        self.assertEqual(coreLimit(process.pid), "0 0")
        if resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] != 0 or os.geteuid() == 0:
            self.assertGreater(int(status["VmLck"].split()[0]), 0, status["VmLck"])

        findings = await self.runProbe(
            process.pid, serverInfo["port"], info, "shutdown"
        )
        self.assertEqual(findings["uid"], self.probe.pw_uid)
        self.assertNotIn(0, findings["groups"])
        for leaf in ("environ", "mem", "maps", "auxv", "stack", "syscall"):
            self.assertRefused(findings, leaf, errno.EACCES)
        self.assertEqual(set(findings["owners"]["value"].values()), {0})
        self.assertTrue(findings["cmdline"]["ok"])
        self.assertFalse(findings["cmdline"]["value"]["hasKey"])
        self.assertEqual(findings["ptraceAttach"], {"result": -1, "errno": errno.EPERM})
        self.assertEqual(findings["ptraceSeize"], {"result": -1, "errno": errno.EPERM})
        for name in ("kill0", "killSIGTERM", "killSIGSTOP", "killSIGKILL"):
            self.assertRefused(findings, name, errno.EPERM)
        self.assertEqual(
            json.loads(findings["serverInfo"]["value"])["port"], serverInfo["port"]
        )
        self.assertTrue(findings["post"]["ok"], findings["post"])
        self.assertTrue(findings["post"]["value"].startswith("HTTP/1.1 200 "))
        self.assertNotIn(CANARY_KEY, findings["post"]["value"])
        [seen] = self.upstream.resource.requests
        self.assertEqual(
            seen.header(b"authorization"), [b"Bearer " + CANARY_KEY.encode()]
        )
        self.assertTrue(findings["shutdown"]["value"].startswith("HTTP/1.1 200 "))
        result = await process.ended
        self.assertEqual((result.exitCode, result.signal), (0, None))
        self.assertFalse(os.path.exists(info))

    async def test_shutdownOnlyWithFlag(self) -> None:
        """
        Without C{--http-shutdown}, the probe user's C{GET /shutdown} is a 403
        and the proxy keeps running and serving.
        """
        directory = privateDirectory(self)
        info = os.path.join(directory, "server-info.json")
        process, serverInfo = await self.startProxy(serverInfo=info)
        findings = await self.runProbe(
            process.pid, serverInfo["port"], info, "shutdown"
        )
        self.assertTrue(findings["shutdown"]["value"].startswith("HTTP/1.1 403 "))
        self.assertFalse(process.ended.called)
        findings = await self.runProbe(process.pid, serverInfo["port"], info)
        self.assertTrue(findings["post"]["value"].startswith("HTTP/1.1 200 "))
        self.assertFalse(process.ended.called)

    async def test_sameUserCannotReadOwnProxy(self) -> None:
        """
        Even when the proxy runs as the probe user itself (so only
        C{PR_SET_DUMPABLE=0} stands between them), the user cannot read its
        C{environ} or C{mem}, nor ptrace it: its /proc files belong to root.
        """
        import errno

        launcher = proxyLauncher(self.probe)
        directory = privateDirectory(self, 0o777)
        info = os.path.join(directory, "server-info.json")
        process, serverInfo = await self.startProxy(
            serverInfo=info,
            launcher=launcher,
            uid=self.probe.pw_uid,
            gid=self.probe.pw_gid,
        )
        status = procFields(process.pid, "status")
        self.assertEqual(status["Uid"].split()[0], str(self.probe.pw_uid))
        findings = await self.runProbe(process.pid, serverInfo["port"], info, "nokill")
        for leaf in ("environ", "mem", "maps"):
            self.assertRefused(findings, leaf, errno.EACCES)
        self.assertEqual(set(findings["owners"]["value"].values()), {0})
        self.assertEqual(findings["ptraceAttach"], {"result": -1, "errno": errno.EPERM})
        self.assertTrue(findings["post"]["value"].startswith("HTTP/1.1 200 "))

    async def test_noCoreDump(self) -> None:
        """
        Even with the core limit raised before it starts, the proxy's own
        limit is 0, and a SIGSEGV leaves no core file in its working
        directory (a control process in the same place does dump core, when
        the kernel writes cores to files at all).
        """
        cwd = privateDirectory(self)
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        unlimited = resource.RLIM_INFINITY
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (unlimited, unlimited))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_CORE, (soft, hard))
        raised = resource.getrlimit(resource.RLIMIT_CORE)[0] != 0
        with open("/proc/sys/kernel/core_pattern") as f:
            pattern = f.read().strip()
        control = spawnEntryPoint(
            self, ["/bin/sh", "-c", "kill -SEGV $$"], stdin=None, path=cwd
        )
        await control.ended
        controlDumped = bool(glob.glob(os.path.join(cwd, "core*")))
        for path in glob.glob(os.path.join(cwd, "core*")):
            os.unlink(path)
        info = os.path.join(cwd, "server-info.json")
        process, _ = await self.startProxy(serverInfo=info, cwd=cwd)
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
        self.assertEqual(coreLimit(process.pid), "0 0")
        os.kill(process.pid, signal.SIGSEGV)
        result = await process.ended
        self.assertEqual(result.signal, signal.SIGSEGV)
        self.assertEqual(glob.glob(os.path.join(cwd, "core*")), [])
        # Only a plain file name pattern writes cores into the cwd; then the
        # control must have dumped, or this test could not see a core.
        plainName = not pattern.startswith("|") and "/" not in pattern
        if raised and plainName and not controlDumped:
            self.fail(f"control process did not dump core with pattern {pattern!r}")


class ServerInfoAttackTests(_Base):
    """
    The server-info path inside a directory an attacker can write to.
    """

    def assertOurInfo(self, path: str, port: int, owner: int = 0) -> None:
        """
        C{path} is a regular file (not a link) owned by C{owner}, holding one
        JSON line with C{port}.
        """
        stat = os.lstat(path)
        self.assertTrue(os.path.isfile(path) and not os.path.islink(path))
        self.assertEqual(stat.st_uid, owner)
        with open(path, "rb") as f:
            content = f.read()
        self.assertTrue(content.endswith(b"\n") and content.count(b"\n") == 1)
        self.assertEqual(json.loads(content)["port"], port)

    async def stopProxy(self, process: SpawnedProcess) -> None:
        """
        SIGTERM the proxy and wait for a clean exit.
        """
        process.signal("TERM")
        result = await process.ended
        self.assertEqual(result.exitCode, 0, result.stderr.decode())

    async def test_plantedSymlinkNotFollowed(self) -> None:
        """
        A symlink planted at the server-info path by another user, pointing
        at a root-owned file, is replaced; the victim is untouched.
        """
        sticky = stickyDirectory(self)
        victimDirectory = privateDirectory(self, 0o700)
        victim = os.path.join(victimDirectory, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious\n")
        before = os.stat(victim)
        info = os.path.join(sticky, "server-info.json")
        os.symlink(victim, info)
        os.lchown(info, self.probe.pw_uid, self.probe.pw_gid)
        process, serverInfo = await self.startProxy(serverInfo=info)
        self.assertOurInfo(info, serverInfo["port"])
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        after = os.stat(victim)
        self.assertEqual(
            (after.st_mtime_ns, after.st_mode), (before.st_mtime_ns, before.st_mode)
        )
        self.assertEqual(leftovers(sticky), [])
        await self.stopProxy(process)
        self.assertFalse(os.path.lexists(info))
        self.assertEqual(leftovers(sticky), [])

    async def test_plantedFileReplacedAtomically(self) -> None:
        """
        A stale file planted by another user is replaced by a new root-owned
        file (a rename, not a write through the old inode, which keeps its
        content).
        """
        sticky = stickyDirectory(self)
        info = os.path.join(sticky, "server-info.json")
        with open(info, "wb") as f:
            f.write(b'{"port": 1}\n')
        os.chown(info, self.other.pw_uid, self.other.pw_gid)
        os.chmod(info, 0o666)
        planted = os.open(info, os.O_RDONLY)
        self.addCleanup(os.close, planted)
        process, serverInfo = await self.startProxy(serverInfo=info)
        self.assertOurInfo(info, serverInfo["port"])
        self.assertEqual(os.pread(planted, 100, 0), b'{"port": 1}\n')
        self.assertEqual(os.stat(info).st_mode & 0o777, 0o644)
        self.assertEqual(leftovers(sticky), [])
        await self.stopProxy(process)

    async def test_unprivilegedProxyCannotReplaceOthersFile(self) -> None:
        """
        The proxy running as the probe user (twistd C{--uid}) cannot replace
        a file another user owns in the sticky directory: it exits 1 with one
        clear line, the file is untouched and no temporary file is left.
        """
        sticky = stickyDirectory(self)
        info = os.path.join(sticky, "server-info.json")
        with open(info, "wb") as f:
            f.write(b"theirs\n")
        os.chown(info, self.other.pw_uid, self.other.pw_gid)
        process = spawnEntryPoint(
            self,
            [
                "twistd",
                "-n",
                "--pidfile=",
                f"--uid={self.probe.pw_uid}",
                f"--gid={self.probe.pw_gid}",
                "responses-api-proxy",
                "--server-info",
                info,
                "--upstream-url",
                self.upstream.url,
            ],
            stdin=CANARY_KEY.encode() + b"\n",
            env=childEnvironment(CODEX_SECURE_MODE="1"),
            path="/",
        )
        result = await process.ended
        self.assertEqual(result.exitCode, 1, result.stderr.decode())
        lines = result.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cannot write server-info file", lines[0])
        self.assertIn(info, lines[0])
        self.assertIn("Operation not permitted", lines[0])
        with open(info, "rb") as f:
            self.assertEqual(f.read(), b"theirs\n")
        self.assertEqual(os.stat(info).st_uid, self.other.pw_uid)
        self.assertEqual(leftovers(sticky), [])

    async def test_missingParentsCreated(self) -> None:
        """
        Missing parent directories are created (by root, not writable by
        others) and the file written there.
        """
        sticky = stickyDirectory(self)
        info = os.path.join(sticky, "a", "b", "server-info.json")
        process, serverInfo = await self.startProxy(serverInfo=info)
        self.assertOurInfo(info, serverInfo["port"])
        for directory in (os.path.join(sticky, "a"), os.path.join(sticky, "a", "b")):
            stat = os.lstat(directory)
            self.assertEqual((stat.st_uid, stat.st_mode & 0o022), (0, 0))
        await self.stopProxy(process)

    async def test_plantedParentSymlinkRefused(self) -> None:
        """
        A missing parent directory that another user pre-planted as a symlink
        to a root-only directory is not followed: the proxy exits 1 with one
        clear line and writes nothing into the victim directory.
        """
        sticky = stickyDirectory(self)
        victimDirectory = privateDirectory(self, 0o700)
        link = os.path.join(sticky, "proxy")
        os.symlink(victimDirectory, link)
        os.lchown(link, self.probe.pw_uid, self.probe.pw_gid)
        info = os.path.join(link, "server-info.json")
        process = spawnEntryPoint(
            self,
            ["responses-api-proxy", "--server-info", info, "--upstream-url"]
            + [self.upstream.url],
            stdin=CANARY_KEY.encode() + b"\n",
            env=childEnvironment(CODEX_SECURE_MODE="1"),
            path="/",
        )
        await waitFor(
            lambda: process.ended.called or os.listdir(victimDirectory), timeout=20
        )
        self.assertEqual(os.listdir(victimDirectory), [])
        result = await process.ended
        self.assertEqual(result.exitCode, 1, result.stderr.decode())
        # The console script logs to stderr too; the error is its own line.
        lines = [
            line
            for line in result.stderr.decode().splitlines()
            if line.startswith("responses-api-proxy: ")
        ]
        self.assertEqual(len(lines), 1, result.stderr.decode())
        self.assertIn("cannot write server-info file", lines[0])
        self.assertIn(f"{link} is owned by another user", lines[0])
        self.assertEqual(leftovers(sticky), [])

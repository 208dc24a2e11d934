# -*- test-case-name: tests.test_apikey -*-
"""
The API key: read once from standard input, validated without ever being
echoed, and kept as one C{Bearer <key>} buffer that is C{mlock}ed.

Integration tests (processes): the installed entry points reading the key
(L{SpawnedKeyTests}); the reading itself runs in this process, on real
pipes (L{ReadAuthHeaderTests}).
"""

from __future__ import annotations

import errno
import os
import resource
import select
import tempfile
from functools import partial
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from responses_proxy import _libc, apikey
from responses_proxy.apikey import MAX_KEY_LENGTH, AuthHeader, InvalidKey
from tests.processes import (
    ENTRY_POINTS,
    endWithin,
    inParallel,
    procStatus,
    restrictedArgv,
    spawnOnTerminal,
    spawnProxy,
)
from tests.support import (
    CANARY_KEY,
    childEnvironment,
    httpClient,
    jsonHeaders,
    readServerInfo,
    scriptPath,
    spawnEntryPoint,
    startFakeUpstream,
    waitFor,
)


def pipeWith(data: bytes) -> int:
    """
    The read end of a pipe holding C{data}, write end closed (EOF after it).
    """
    readFD, writeFD = os.pipe()
    os.write(writeFD, data)
    os.close(writeFD)
    return readFD


def countInMemory(pid: int, needle: bytes) -> int:
    """
    How many times C{needle} occurs in the readable memory of process
    C{pid} (needs root, or ptrace rights over it).
    """
    count = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("r") or line.rstrip().endswith(
                ("[vvar]", "[vsyscall]", "[vvar_vclock]")
            ):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                count += mem.read(end - start).count(needle)
            except OSError:
                continue
    return count


def canLock() -> bool:
    """
    Whether this process may lock a page: root, or a non-zero memlock limit.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft >= 2 * os.sysconf("SC_PAGE_SIZE")


class ReadAuthHeaderTests(SynchronousTestCase):
    """
    L{apikey.readAuthHeader} on real file descriptors.
    """

    def read(self, data: bytes, **kwargs: Any) -> AuthHeader:
        """
        The header L{apikey.readAuthHeader} reads from a pipe holding
        C{data}; wiped after the test.
        """
        fd = pipeWith(data)
        self.addCleanup(os.close, fd)
        header = apikey.readAuthHeader(fd, **kwargs)
        self.addCleanup(header.wipe)
        return header

    def assertRejected(self, data: bytes, reason: str) -> InvalidKey:
        """
        Reading C{data} raises L{InvalidKey} saying C{reason}, without the
        key in the message.
        """
        fd = pipeWith(data)
        self.addCleanup(os.close, fd)
        error: InvalidKey = self.assertRaises(InvalidKey, apikey.readAuthHeader, fd)
        self.assertIn(reason, str(error))
        key = data.strip()
        if len(key) >= 3:
            self.assertNotIn(key.decode("latin-1"), str(error))
        return error

    def test_lineEndings(self) -> None:
        """
        One trailing C{\\n} or C{\\r\\n} is trimmed; a key without a newline
        at EOF is fine too.
        """
        for data in (b"sk-abc_123", b"sk-abc_123\n", b"sk-abc_123\r\n"):
            self.assertEqual(self.read(data).value, b"Bearer sk-abc_123", data)

    def test_longestKey(self) -> None:
        """
        A key of exactly 1016 characters (with or without CR LF) is accepted.
        """
        key = b"k" * MAX_KEY_LENGTH
        self.assertEqual(self.read(key).value, b"Bearer " + key)
        self.assertEqual(self.read(key + b"\r\n").value, b"Bearer " + key)

    def test_tooLong(self) -> None:
        """
        1017 characters is too long, with or without a newline.
        """
        for data in (b"k" * 1017, b"k" * 1017 + b"\n", b"k" * 1017 + b"\r\n"):
            self.assertRejected(data, "longer than 1016 characters")

    def test_hugeInput(self) -> None:
        """
        A megabyte of input is refused without reading it all into memory.
        """
        with tempfile.TemporaryFile() as f:
            f.write(b"k" * 1024 * 1024)
            f.seek(0)
            error = self.assertRaises(InvalidKey, apikey.readAuthHeader, f.fileno())
            self.assertIn("longer than", str(error))
            self.assertLess(f.tell(), 2048)

    def test_empty(self) -> None:
        """
        Empty input, or only a line ending, says the key is missing.
        """
        for data in (b"", b"\n", b"\r\n"):
            self.assertRejected(data, "no API key on standard input (it was empty)")

    def test_otherCharacters(self) -> None:
        """
        Spaces, punctuation, NUL, control characters, non-ASCII and invalid
        UTF-8 are refused with a message that does not contain the key.
        """
        for data in (
            b"sk-has space",
            b"sk-bang!",
            b"sk-nul\x00key",
            b"sk-tab\tkey",
            b"sk-caf\xc3\xa9",
            b"sk-bad\xff\xfe",
            b"sk-cr-only\r",
            b"sk-two-lines\n\n",
            b" sk-leading-space",
            b"sk-a\nsk-b",
        ):
            self.assertRejected(data, "contains characters other than")

    def test_closedStdin(self) -> None:
        """
        A closed descriptor is "standard input is closed", not a raw errno.
        """
        readFD, writeFD = os.pipe()
        os.close(readFD)
        os.close(writeFD)
        error = self.assertRaises(InvalidKey, apikey.readAuthHeader, readFD)
        self.assertIn("standard input is closed", str(error))

    def test_descriptorReused(self) -> None:
        """
        When stdin was closed at start-up, fd 0 may be the reactor's epoll by
        the time the key is read; that is reported as a closed stdin too.
        """
        poller = select.epoll()
        self.addCleanup(poller.close)
        error = self.assertRaises(InvalidKey, apikey.readAuthHeader, poller.fileno())
        self.assertIn("standard input is closed", str(error))

    def test_nonBlockingDescriptor(self) -> None:
        """
        An inherited non-blocking stdin that is not readable yet (EAGAIN) is
        waited on, not reported as "Resource temporarily unavailable".
        """
        readFD, writeFD = os.pipe()
        self.addCleanup(os.close, readFD)
        os.set_blocking(readFD, False)
        realReadv = os.readv
        calls: list[int] = []

        def readv(fd: int, buffers: Any) -> int:
            calls.append(fd)
            if len(calls) == 1:
                # Nothing written yet: what the kernel answers is EAGAIN.
                self.assertRaises(BlockingIOError, realReadv, fd, buffers)
                os.write(writeFD, b"sk-later\n")
                os.close(writeFD)
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return realReadv(fd, buffers)

        self.patch(os, "readv", readv)
        header = apikey.readAuthHeader(readFD)
        self.addCleanup(header.wipe)
        self.assertEqual(header.value, b"Bearer sk-later")
        self.assertGreater(len(calls), 1)

    def test_regularFileAndDevNull(self) -> None:
        """
        A regular file holding the key works; /dev/null is an empty key.
        """
        with tempfile.TemporaryFile() as f:
            f.write(b"sk-from-file\n")
            f.seek(0)
            header = apikey.readAuthHeader(f.fileno())
            self.addCleanup(header.wipe)
            self.assertEqual(header.value, b"Bearer sk-from-file")
        fd = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        error = self.assertRaises(InvalidKey, apikey.readAuthHeader, fd)
        self.assertIn("it was empty", str(error))

    def test_locked(self) -> None:
        """
        Where the limits allow it, the header's pages are locked.
        """
        if not canLock():
            raise self.skipTest("RLIMIT_MEMLOCK does not allow locking a page")
        self.assertTrue(self.read(b"sk-lock-me\n").locked)

    def test_lockFailureWarns(self) -> None:
        """
        Without secure mode a failed C{mlock} is a warning and the key is
        still usable; the warning does not contain the key.
        """

        def refuse(address: int, length: int) -> None:
            raise OSError(errno.EPERM, "mlock: Operation not permitted")

        self.patch(_libc, "mlock", refuse)
        with capturedLogs() as events:
            header = self.read(b"sk-secret-value\n")
        self.assertFalse(header.locked)
        self.assertEqual(header.value, b"Bearer sk-secret-value")
        [event] = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertIn("mlock", event["log_format"])
        self.assertNotIn("sk-secret-value", repr(event))

    def test_lockFailureFatalWhenRequired(self) -> None:
        """
        With C{requireLock} (secure mode) a failed C{mlock} raises.
        """

        def refuse(address: int, length: int) -> None:
            raise OSError(errno.EPERM, "mlock: Operation not permitted")

        self.patch(_libc, "mlock", refuse)
        fd = pipeWith(b"sk-secret-value\n")
        self.addCleanup(os.close, fd)
        self.assertRaises(OSError, apikey.readAuthHeader, fd, requireLock=True)

    def test_scratchBuffersZeroed(self) -> None:
        """
        The read buffer and the header's scratch copy are zeroed once the
        header is built, whether or not the key was valid.
        """
        made: list[bytearray] = []

        class Tracking(bytearray):
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                made.append(self)

        # apikey looks bytearray up in its globals before the builtins.
        namespace = vars(apikey)
        namespace["bytearray"] = Tracking
        self.addCleanup(namespace.pop, "bytearray")
        self.read(b"sk-zero-me\n")
        self.assertRaises(InvalidKey, self.read, b"sk-bad key\n")
        self.assertTrue(made)
        for buffer in made:
            self.assertEqual(bytes(buffer), bytes(len(buffer)))

    def _forkAndReport(self, header: AuthHeader) -> tuple[int, bytes]:
        """
        Fork; the child reports its VmLck line and the header's lock state
        (its stderr goes to the same pipe), then exits. Return the child's
        exit status and report.
        """
        readFD, writeFD = os.pipe()
        savedStderr = os.dup(2)
        os.dup2(writeFD, 2)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover (child)
                try:
                    vmLck = procStatus(os.getpid())["VmLck"]
                    os.write(writeFD, f"{vmLck}|{header.locked}".encode())
                finally:
                    os._exit(0)
        finally:
            os.dup2(savedStderr, 2)
            os.close(savedStderr)
            os.close(writeFD)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(readFD, "rb") as f:
            report = f.read()
        return os.waitstatus_to_exitcode(status), report

    def test_lockedAgainAfterFork(self) -> None:
        """
        Locks are not inherited across C{fork} (twistd forks to daemonize
        after the key was read): a locked header locks itself again in the
        child.
        """
        if not canLock():
            raise self.skipTest("RLIMIT_MEMLOCK does not allow locking a page")
        header = self.read(b"sk-fork-me\n")
        self.assertTrue(header.locked)
        code, report = self._forkAndReport(header)
        self.assertEqual(code, 0, report)
        vmLck, locked = report.decode().split("|")
        self.assertGreater(int(vmLck.split()[0]), 0, report)
        self.assertEqual(locked, "True")

    def test_relockFailureAfterForkFatalWhenRequired(self) -> None:
        """
        With C{requireLock}, a child that cannot lock the header again exits
        1 at once with one line; without it, it carries on unlocked.
        """
        if not canLock():
            raise self.skipTest("RLIMIT_MEMLOCK does not allow locking a page")

        def refuse(address: int, length: int) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        strict = self.read(b"sk-strict\n", requireLock=True)
        self.patch(_libc, "mlock", refuse)
        code, report = self._forkAndReport(strict)
        self.assertEqual(code, 1)
        self.assertEqual(
            report,
            b"responses-api-proxy: cannot lock the API key again after fork: "
            b"Operation not permitted\n",
        )
        strict.wipe()
        relaxed = AuthHeader(b"Bearer sk-relaxed", locked=True)
        relaxed._forkHook = False
        self.patch(_libc, "mlock", lambda address, length: None)
        relaxed.lock()
        self.patch(_libc, "mlock", refuse)
        code, report = self._forkAndReport(relaxed)
        self.assertEqual(code, 0)
        self.assertTrue(report.endswith(b"|False"), report)

    def test_reprRedacted(self) -> None:
        """
        The header's repr never shows the key.
        """
        header = self.read(b"sk-not-in-repr")
        self.assertNotIn("sk-not-in-repr", repr(header))

    def test_wipe(self) -> None:
        """
        L{AuthHeader.wipe} zeroes the buffer in place and unlocks it.
        """
        fd = pipeWith(b"sk-wipe-me")
        self.addCleanup(os.close, fd)
        header = apikey.readAuthHeader(fd)
        value = header.value
        header.wipe()
        self.assertEqual(value, bytes(len(b"Bearer sk-wipe-me")))
        self.assertFalse(header.locked)


class SpawnedKeyTests(TestCase):
    """
    The key as the installed entry points read it.
    """

    async def _refused(self, entry: str, stdin: bytes | None, shell: str = "") -> str:
        """
        Start C{entry} with C{stdin} (through C{sh -c "exec ... shell"} when
        C{shell} redirects it); check it exits 1 with one line, before
        listening; that line.
        """
        info = os.path.join(self.mktemp(), "info.json")
        argv = [*ENTRY_POINTS[entry], "--server-info", info]
        if shell:
            command = " ".join(
                [scriptPath(argv[0]) if not os.path.isabs(argv[0]) else argv[0]]
                + [f"'{a}'" for a in argv[1:]]
            )
            argv = ["/bin/sh", "-c", f"exec {command} {shell}"]
        process = spawnEntryPoint(self, argv, stdin=stdin)
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 1, result.stderr)
        lines = [line for line in result.stderr.decode().splitlines() if line]
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("responses-api-proxy: "), lines)
        self.assertIsNone(readServerInfo(info))
        return lines[0]

    async def test_badKeys(self) -> None:
        """
        Through both the console script and twistd, each bad input ends the
        process with exit 1 and one line naming the problem (never the key),
        before anything listens.
        """
        cases = [
            (b"", "it was empty"),
            (b"\n", "it was empty"),
            (CANARY_KEY.encode() + b" trailing\n", "characters other than"),
            (CANARY_KEY.encode() + b"!\n", "characters other than"),
            (CANARY_KEY.encode() + b"\x00\n", "characters other than"),
            (CANARY_KEY.encode() + b"\xff\n", "characters other than"),
            (b"k" * 1017 + b"\n", "longer than 1016"),
        ]
        # twistd shares the code path; a few of its cases are enough.
        runs = [("console script", stdin, reason) for stdin, reason in cases]
        runs += [("twistd", stdin, reason) for stdin, reason in cases[::3]]
        lines = await inParallel([partial(self._refused, e, s) for e, s, _ in runs])
        for (entry, stdin, reason), line in zip(runs, lines, strict=True):
            self.assertIn(reason, line, (entry, stdin))
            self.assertNotIn(CANARY_KEY, line)

    async def test_noStdin(self) -> None:
        """
        Started with stdin closed or from /dev/null, both entry points say
        clearly that there is no key.
        """
        entries = ("console script", "twistd")
        closed, devNull = await gatherResults(
            [
                gatherResults(
                    [
                        Deferred.fromCoroutine(self._refused(e, None, shell=shell))
                        for e in entries
                    ]
                )
                for shell in ("<&-", "</dev/null")
            ]
        )
        for line in closed:
            self.assertIn("standard input is closed", line)
        for line in devNull:
            self.assertIn("it was empty", line)

    async def test_keyFromTerminal(self) -> None:
        """
        With a terminal as stdin the proxy says it is waiting for the key
        (and how to end it), reads what is typed up to Ctrl-D without
        echoing it, then serves.
        """
        info = os.path.join(os.path.abspath(self.mktemp()), "info.json")
        terminal = spawnOnTerminal(self, ["responses-api-proxy", "--server-info", info])
        await waitFor(lambda: b"end it with Ctrl-D" in terminal.output)
        self.assertIsNone(readServerInfo(info))
        terminal.type(CANARY_KEY.encode() + b"\n\x04")
        await waitFor(lambda: readServerInfo(info) or terminal.ended.called)
        self.assertIsNotNone(readServerInfo(info), bytes(terminal.output))
        self.assertNotIn(CANARY_KEY.encode()[:12], bytes(terminal.output))

    async def test_interruptWhileTyping(self) -> None:
        """
        Ctrl-C (SIGINT) while the proxy waits for the key at a terminal
        ends it with status 130 and one line, no traceback.
        """
        terminal = spawnOnTerminal(self, ["responses-api-proxy"])
        await waitFor(lambda: b"end it with Ctrl-D" in terminal.output)
        terminal.transport.signalProcess("INT")
        code = await terminal.ended
        self.assertEqual(code, 130, bytes(terminal.output))
        self.assertNotIn(b"Traceback", terminal.output)
        self.assertIn(b"responses-api-proxy: interrupted", terminal.output)

    async def test_keyOnceInMemory(self) -> None:
        """
        After start-up and after traffic, the key is in the proxy's memory
        once (the locked header buffer): no forgotten copies from reading,
        validating or per-request header building. (At most one transient
        copy is tolerated; one has always been measured.)
        """
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(self, "--upstream-url", upstream.url)
        needle = CANARY_KEY.encode()[3:]
        try:
            atStart = countInMemory(proxy.pid, needle)
        except PermissionError:
            raise self.skipTest("cannot read another process's memory here") from None
        client = httpClient(self)
        for _ in range(5):
            response = await client.post(
                proxy.url, data=b'{"model": "m", "stream": true}', headers=jsonHeaders()
            )
            await treq.content(response)
        self.assertEqual(len(upstream.resource.requests), 5)
        self.assertEqual(atStart, 1)
        self.assertIn(countInMemory(proxy.pid, needle), (1, 2))

    async def test_keyLockedInRunningProxy(self) -> None:
        """
        A running proxy has locked memory (VmLck > 0) for the key buffer.
        """
        if not canLock():
            raise self.skipTest("RLIMIT_MEMLOCK does not allow locking a page")
        proxy = await spawnProxy(self)
        locked = procStatus(proxy.pid)["VmLck"]
        self.assertGreater(int(locked.split()[0]), 0, locked)

    async def test_lockFailureWarns(self) -> None:
        """
        When C{mlock} is refused (no CAP_IPC_LOCK, RLIMIT_MEMLOCK 0) the proxy
        warns and still serves.
        """
        wrap = lambda argv: restrictedArgv(argv, memlock=0, dropIpcLock=True)  # noqa
        proxy = await spawnProxy(self, wrap=wrap)
        self.assertEqual(procStatus(proxy.pid)["VmLck"].split()[0], "0")
        proxy.process.signal("TERM")
        result = await proxy.process.ended
        self.assertIn(b"Could not mlock the API key buffer", result.stderr)

    async def test_lockFailureFatalInSecureMode(self) -> None:
        """
        With CODEX_SECURE_MODE=1 a refused C{mlock} is fatal: exit 1, one
        line, nothing listening.
        """
        info = os.path.join(self.mktemp(), "info.json")
        argv = restrictedArgv(
            [*ENTRY_POINTS["console script"], "--server-info", info],
            memlock=0,
            dropIpcLock=True,
        )
        process = spawnEntryPoint(
            self,
            argv,
            stdin=CANARY_KEY.encode(),
            env=childEnvironment(CODEX_SECURE_MODE="1"),
        )
        result = await endWithin(process, 10)
        if result.exitCode == 97:
            raise self.skipTest("cannot drop CAP_IPC_LOCK here")
        self.assertEqual(result.exitCode, 1, result.stderr)
        self.assertIn(b"cannot read or lock the API key", result.stderr)
        self.assertIsNone(readServerInfo(info))

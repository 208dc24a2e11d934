# -*- test-case-name: tests.test_hardening -*-
"""
Process hardening before the key is read: non-dumpable, no core files, no
C{LD_*} variables; a failed step is fatal only with C{CODEX_SECURE_MODE=1}.

Unit tests (in memory) of the steps and their order, and integration
tests (processes) of a spawned proxy (L{SpawnedHardeningTests}).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from responses_proxy import apikey, hardening
from responses_proxy.apikey import AuthHeader
from responses_proxy.hardening import (
    HardeningFailed,
    harden,
    removeLoaderVariables,
    secureModeRequested,
)
from responses_proxy.startup import StartupError
from tests.processes import endWithin, procLimits, restrictedArgv, spawnProxy
from tests.support import (
    CANARY_KEY,
    childEnvironment,
    readServerInfo,
    spawnEntryPoint,
    waitFor,
)


def failingStep() -> None:
    """
    A hardening step that fails as a refused system call does.
    """
    raise OSError(1, "Operation not permitted")


class HardenTests(SynchronousTestCase):
    """
    L{harden} with fake steps, in both modes.
    """

    def test_allSucceed(self) -> None:
        """
        When every step succeeds there are no warnings and all steps ran.
        """
        ran: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            (n, partial(ran.append, n)) for n in ("a", "b", "c")
        ]
        self.assertEqual(harden(False, steps), [])
        self.assertEqual(harden(True, steps), [])
        self.assertEqual(ran, ["a", "b", "c"] * 2)

    def test_failureWarnsWithoutSecureMode(self) -> None:
        """
        Without secure mode a failed step is logged as a warning naming the
        step and the error, and the later steps still run.
        """
        ran: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("first", lambda: ran.append("first")),
            ("broken step", failingStep),
            ("last", lambda: ran.append("last")),
        ]
        with capturedLogs() as events:
            warnings = harden(False, steps)
        self.assertEqual(ran, ["first", "last"])
        [warning] = warnings
        self.assertIn("broken step", warning)
        self.assertIn("Operation not permitted", warning)
        logged = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual([formatEvent(e) for e in logged], warnings)

    def test_failureFatalInSecureMode(self) -> None:
        """
        In secure mode the first failed step raises L{HardeningFailed} and
        nothing after it runs.
        """
        ran: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("first", lambda: ran.append("first")),
            ("broken step", failingStep),
            ("last", lambda: ran.append("last")),
        ]
        error = self.assertRaises(HardeningFailed, harden, True, steps)
        self.assertIn("broken step", str(error))
        self.assertEqual(ran, ["first"])

    def test_secureModeVariable(self) -> None:
        """
        Only C{CODEX_SECURE_MODE=1} turns secure mode on.
        """
        self.assertTrue(secureModeRequested({"CODEX_SECURE_MODE": "1"}))
        for value in ("0", "", "true", "yes", " 1"):
            self.assertFalse(secureModeRequested({"CODEX_SECURE_MODE": value}))
        self.assertFalse(secureModeRequested({}))

    def test_realSteps(self) -> None:
        """
        The real steps succeed (in a child Python, since a lowered hard core
        limit cannot be raised again): afterwards the process is not
        dumpable and its core limit is 0.
        """
        script = (
            "import resource\n"
            "from responses_proxy import _libc, hardening\n"
            "print(hardening.harden(True), _libc.isDumpable(),\n"
            "      resource.getrlimit(resource.RLIMIT_CORE))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True
        ).stdout
        self.assertEqual(output, b"[] False (0, 0)\n")


class LoaderVariableTests(SynchronousTestCase):
    """
    L{removeLoaderVariables}.
    """

    def test_removesOnlyLoaderVariables(self) -> None:
        """
        Every C{LD_*} name goes; names that merely contain C{LD} stay.
        """
        environ = {
            "LD_PRELOAD": "/tmp/evil.so",
            "LD_LIBRARY_PATH": "/tmp",
            "LD_AUDIT": "x",
            "LD_": "x",
            "OLD_LD_PRELOAD": "kept",
            "LDFLAGS": "kept",
            "PATH": "/usr/bin",
        }
        removed = removeLoaderVariables(environ)
        self.assertEqual(
            sorted(removed), ["LD_", "LD_AUDIT", "LD_LIBRARY_PATH", "LD_PRELOAD"]
        )
        self.assertEqual(
            environ,
            {"OLD_LD_PRELOAD": "kept", "LDFLAGS": "kept", "PATH": "/usr/bin"},
        )

    def test_childrenDoNotInherit(self) -> None:
        """
        Removing from L{os.environ} also removes from the C environment, so
        a child process started afterwards does not see the variable.
        """
        os.environ["LD_RESPONSES_PROXY_TEST"] = "1"
        self.addCleanup(os.environ.pop, "LD_RESPONSES_PROXY_TEST", None)
        self.assertIn("LD_RESPONSES_PROXY_TEST", removeLoaderVariables())
        self.assertNotIn("LD_RESPONSES_PROXY_TEST", os.environ)
        output = subprocess.run(
            ["env"], check=True, capture_output=True, close_fds=True
        ).stdout
        self.assertNotIn(b"LD_RESPONSES_PROXY_TEST", output)


class LoadKeyTests(SynchronousTestCase):
    """
    L{apikey.loadKey}: hardening first, then the key; failures are one
    L{StartupError} whose message is the line to show.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        readFD, writeFD = os.pipe()
        os.write(writeFD, b"sk-not-read-yet\n")
        os.close(writeFD)
        self.fd = readFD
        self.addCleanup(os.close, readFD)

    def test_secureModeFailureStopsBeforeTheKey(self) -> None:
        """
        In secure mode a failed step is a start-up error naming the step, and
        the key is never read (it is still in the pipe).
        """
        self.patch(hardening, "STEPS", [("broken step", failingStep)])
        self.patch(apikey, "secureModeRequested", lambda: True)
        error = self.assertRaises(StartupError, apikey.loadKey, self.fd)
        [line] = str(error).splitlines()
        self.assertIn("broken step", line)
        self.assertIn("CODEX_SECURE_MODE=1", line)
        self.assertEqual(os.read(self.fd, 100), b"sk-not-read-yet\n")

    def test_failureWarnsOtherwise(self) -> None:
        """
        Without secure mode the key is read despite a failed step.
        """
        self.patch(hardening, "STEPS", [("broken step", failingStep)])
        self.patch(apikey, "secureModeRequested", lambda: False)
        header = apikey.loadKey(self.fd)
        self.addCleanup(header.wipe)
        self.assertEqual(header.value, b"Bearer sk-not-read-yet")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_hardenedBeforeReading(self) -> None:
        """
        The hardening steps run before the first read of the key.
        """
        order: list[str] = []
        self.patch(hardening, "STEPS", [("record", lambda: order.append("harden"))])
        self.patch(apikey, "secureModeRequested", lambda: True)
        original = apikey.readAuthHeader

        def reading(*args: Any, **kwargs: Any) -> AuthHeader:
            order.append("read")
            return original(*args, **kwargs)

        self.patch(apikey, "readAuthHeader", reading)
        header = apikey.loadKey(self.fd)
        self.addCleanup(header.wipe)
        self.assertEqual(order, ["harden", "read"])


_WITH_FAILING_STEP = """
import os, sys
from responses_proxy import hardening

def refuse():
    raise OSError(1, "refused by the test")

hardening.STEPS.insert(0, ("injected step", refuse))
from responses_proxy.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    sys.stderr.write("unread stdin: %r\\n" % os.read(0, 100))
    raise
"""


class SpawnedHardeningTests(TestCase):
    """
    The hardening as seen from outside a running proxy.
    """

    async def test_noCoreFiles(self) -> None:
        """
        A running proxy's core file limit is 0 (soft and hard).
        """
        proxy = await spawnProxy(self)
        self.assertEqual(procLimits(proxy.pid)["Max core file size"][:2], ["0", "0"])

    async def test_notDumpable(self) -> None:
        """
        A running proxy is not dumpable: its /proc files belong to root
        instead of its own group. (Checked against a control process started
        the same way, which shows the group.)
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to start processes in another group")
        nobody = 65534
        control = spawnEntryPoint(
            self, restrictedArgv(["/bin/sleep", "30"], gid=nobody), stdin=None
        )
        proxy = await spawnProxy(
            self,
            wrap=lambda argv: restrictedArgv(argv, gid=nobody),
            serverInfoPath=os.path.join(self.mktemp(), "info.json"),
        )
        self.assertEqual(os.stat(f"/proc/{control.pid}/status").st_gid, nobody)
        self.assertEqual(os.stat(f"/proc/{proxy.pid}/status").st_gid, 0)
        self.assertEqual(os.stat(f"/proc/{proxy.pid}/environ").st_gid, 0)
        control.signal("KILL")
        await control.ended

    async def test_loaderVariablesGoneBeforeTheKey(self) -> None:
        """
        In a fresh process, after L{apikey.loadKey} (hardening, then the key),
        an executed child no longer sees C{LD_*} variables set at start.
        """
        script = (
            "import os\n"
            "from responses_proxy.apikey import loadKey\n"
            "loadKey(0)\n"
            "os.execvp('env', ['env'])\n"
        )
        process = spawnEntryPoint(
            self,
            [sys.executable, "-c", script],
            stdin=CANARY_KEY.encode(),
            env=childEnvironment(LD_RESPONSES_PROXY_TEST="1", LD_BIND_NOW="1"),
        )
        result = await endWithin(process, 10)
        self.assertEqual(result.exitCode, 0, result.stderr)
        self.assertIn(b"PATH=", result.stdout)
        self.assertNotIn(b"LD_", result.stdout)

    async def test_failedStepFatalInSecureMode(self) -> None:
        """
        The console script with a failing step and CODEX_SECURE_MODE=1
        exits 1 with one line before reading the key or listening.
        """
        info = os.path.join(self.mktemp(), "info.json")
        process = spawnEntryPoint(
            self,
            [sys.executable, "-c", _WITH_FAILING_STEP, "--server-info", info],
            stdin=CANARY_KEY.encode(),
            env=childEnvironment(CODEX_SECURE_MODE="1"),
        )
        result = await endWithin(process, 10)
        self.assertEqual(result.exitCode, 1, result.stderr)
        first, unread = result.stderr.decode().splitlines()
        self.assertIn("hardening step injected step failed", first)
        self.assertIn("CODEX_SECURE_MODE=1", first)
        self.assertEqual(unread, f"unread stdin: {CANARY_KEY.encode()!r}")
        self.assertIsNone(readServerInfo(info))

    async def test_failedStepWarnsOtherwise(self) -> None:
        """
        Without secure mode the same failure is a warning and the proxy
        serves.
        """
        info = os.path.join(self.mktemp(), "info.json")
        process = spawnEntryPoint(
            self,
            [sys.executable, "-c", _WITH_FAILING_STEP, "--server-info", info],
            stdin=CANARY_KEY.encode(),
            env=childEnvironment(CODEX_SECURE_MODE="0"),
        )
        await waitFor(lambda: readServerInfo(info) or process.ended.called)
        self.assertIsNotNone(readServerInfo(info), process.capture.err)
        process.signal("TERM")
        result = await process.ended
        self.assertEqual(result.exitCode, 0)
        self.assertIn(b"hardening step injected step failed", result.stderr)

# -*- test-case-name: tests.test_serverinfo -*-
"""
The server-info file: one JSON line, written atomically once the port is
listening, never through a planted symlink, removed again on clean shutdown.

Unit tests (real files, in this process) of the writer, and integration
tests (processes) of a spawned proxy (L{SpawnedServerInfoTests}).
"""

from __future__ import annotations

import json
import os
import socket
import stat

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from responses_proxy.serverinfo import (
    ServerInfoError,
    removeServerInfo,
    serverInfoLine,
    writeServerInfo,
)
from tests.processes import ENTRY_POINTS, endWithin, listening, spawnProxy
from tests.support import (
    CANARY_KEY,
    readServerInfo,
    spawnEntryPoint,
    waitFor,
)


def leftovers(directory: str) -> list[str]:
    """
    Temporary files the writer left behind in C{directory}.
    """
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def freePort() -> int:
    """
    A loopback port that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerInfoFileTests(SynchronousTestCase):
    """
    L{writeServerInfo} and L{removeServerInfo} on a real file system.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "server-info.json")

    def test_line(self) -> None:
        """
        The content is exactly one JSON object line and a newline.
        """
        self.assertEqual(serverInfoLine(8080, 123), b'{"port": 8080, "pid": 123}\n')

    def test_writeWithMode(self) -> None:
        """
        The file holds the line and is mode 0644 even under umask 077; no
        temporary file is left behind.
        """
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        writeServerInfo(self.path, b'{"port": 1, "pid": 2}\n')
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b'{"port": 1, "pid": 2}\n')
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
        self.assertEqual(leftovers(self.directory), [])

    def test_parentsCreated(self) -> None:
        """
        Missing parent directories are created.
        """
        path = os.path.join(self.directory, "a", "b", "c", "info.json")
        writeServerInfo(path, b"{}\n")
        self.assertTrue(os.path.isfile(path))

    def test_parentsReadableUnderStrictUmask(self) -> None:
        """
        Parents created under umask 077 are still 0755 (the file is meant
        for other users); an existing parent's mode is not changed.
        """
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        os.chmod(self.directory, 0o711)
        path = os.path.join(self.directory, "a", "b", "info.json")
        writeServerInfo(path, b"{}\n")
        for created in ("a", os.path.join("a", "b")):
            mode = os.stat(os.path.join(self.directory, created)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o755, created)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o711)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    def test_relativePath(self) -> None:
        """
        A relative path is relative to the working directory at write time.
        """
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)
        writeServerInfo("relative.json", b"{}\n")
        self.assertTrue(os.path.isfile(os.path.join(self.directory, "relative.json")))

    def test_symlinkReplacedNotFollowed(self) -> None:
        """
        A symlink planted at the path is replaced by a regular file; its
        target is left untouched.
        """
        victim = os.path.join(self.directory, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious\n")
        os.chmod(victim, 0o600)
        os.symlink(victim, self.path)
        writeServerInfo(self.path, b'{"port": 1, "pid": 2}\n')
        self.assertFalse(os.path.islink(self.path))
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        self.assertEqual(stat.S_IMODE(os.stat(victim).st_mode), 0o600)

    def test_danglingSymlinkReplaced(self) -> None:
        """
        A dangling symlink is replaced too; nothing is created at its target.
        """
        target = os.path.join(self.directory, "not-created")
        os.symlink(target, self.path)
        writeServerInfo(self.path, b"{}\n")
        self.assertFalse(os.path.islink(self.path))
        self.assertFalse(os.path.exists(target))

    def test_symlinkToDirectoryReplaced(self) -> None:
        """
        A symlink to a directory is replaced, not written into.
        """
        target = os.path.join(self.directory, "dir")
        os.mkdir(target)
        os.symlink(target, self.path)
        writeServerInfo(self.path, b"{}\n")
        self.assertTrue(os.path.isfile(self.path))
        self.assertFalse(os.path.islink(self.path))
        self.assertEqual(os.listdir(target), [])

    def test_existingFileReplaced(self) -> None:
        """
        An old file at the path is replaced by a new inode (atomic rename).
        """
        with open(self.path, "wb") as f:
            f.write(b'{"port": 9, "pid": 9}\n')
        before = os.stat(self.path).st_ino
        writeServerInfo(self.path, b'{"port": 1, "pid": 2}\n')
        self.assertNotEqual(os.stat(self.path).st_ino, before)
        self.assertEqual(readServerInfo(self.path), {"port": 1, "pid": 2})

    def test_directoryAtPath(self) -> None:
        """
        A directory at the path is an error naming the path.
        """
        os.mkdir(self.path)
        error = self.assertRaises(ServerInfoError, writeServerInfo, self.path, b"")
        self.assertIn(self.path, str(error))
        self.assertEqual(leftovers(self.directory), [])

    def test_unwritableLocation(self) -> None:
        """
        A path below a regular file cannot be written: one-line error with
        the path and the reason.
        """
        blocker = os.path.join(self.directory, "file")
        with open(blocker, "wb"):
            pass
        path = os.path.join(blocker, "sub", "info.json")
        error = self.assertRaises(ServerInfoError, writeServerInfo, path, b"")
        self.assertIn(path, str(error))
        self.assertIn("Not a directory", str(error))
        self.assertNotIn("\n", str(error))

    def test_removeOwnFileOnly(self) -> None:
        """
        L{removeServerInfo} removes the file it wrote, but not a file that
        replaced it since, and tolerates a missing file.
        """
        identity = writeServerInfo(self.path, b"{}\n")
        self.assertTrue(removeServerInfo(self.path, identity))
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(removeServerInfo(self.path, identity))
        identity = writeServerInfo(self.path, b"{}\n")
        os.unlink(self.path)
        with open(self.path, "wb") as f:
            f.write(b"someone else's\n")
        self.assertFalse(removeServerInfo(self.path, identity))
        self.assertTrue(os.path.exists(self.path))


class SpawnedServerInfoTests(TestCase):
    """
    The server-info file as written by a running proxy.
    """

    async def test_appearsOnlyWhenListening(self) -> None:
        """
        The moment the file appears, connecting works; it is one line
        C{{"port": N, "pid": P}} with the process's pid, mode 0644.
        """
        path = os.path.join(self.mktemp(), "deep", "info.json")
        process = spawnEntryPoint(
            self,
            [*ENTRY_POINTS["console script"], "--server-info", path],
            stdin=CANARY_KEY.encode(),
        )
        await waitFor(lambda: os.path.exists(path), interval=0.001)
        with open(path, "rb") as f:
            content = f.read()
        info = json.loads(content)
        self.assertTrue(listening(info["port"]))
        self.assertEqual(
            content, b'{"port": %d, "pid": %d}\n' % (info["port"], process.pid)
        )
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        process.signal("TERM")
        result = await process.ended
        self.assertEqual(result.exitCode, 0)
        self.assertFalse(os.path.exists(path))

    async def test_plantedSymlink(self) -> None:
        """
        A symlink planted at the server-info path is replaced; the victim
        file it pointed to is untouched, and shutdown removes only our file.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        victim = os.path.join(directory, "victim")
        with open(victim, "wb") as f:
            f.write(b"do not touch\n")
        path = os.path.join(directory, "info.json")
        os.symlink(victim, path)
        proxy = await spawnProxy(self, serverInfoPath=path)
        self.assertFalse(os.path.islink(path))
        self.assertEqual(proxy.info["pid"], proxy.pid)
        proxy.process.signal("TERM")
        await proxy.process.ended
        self.assertFalse(os.path.lexists(path))
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"do not touch\n")

    async def test_unwritable(self) -> None:
        """
        For both entry points, an unwritable server-info location is one
        line on stderr, exit 1, and nothing is left listening.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "wb"):
            pass
        path = os.path.join(blocker, "sub", "info.json")
        ports = {entry: freePort() for entry in ("console script", "twistd")}
        results = await gatherResults(
            [
                endWithin(
                    spawnEntryPoint(
                        self,
                        [
                            *ENTRY_POINTS[entry],
                            "--server-info",
                            path,
                            "--port",
                            str(port),
                        ],
                        stdin=CANARY_KEY.encode(),
                    ),
                    5,
                )
                for entry, port in ports.items()
            ]
        )
        for (entry, port), result in zip(ports.items(), results, strict=True):
            self.assertEqual(result.exitCode, 1, (entry, result.stderr))
            # The console script logs to stderr; the error is its last line.
            lines = [x for x in result.stderr.decode().splitlines() if x]
            self.assertEqual(
                lines[-1],
                f"responses-api-proxy: cannot write server-info file {path}: "
                "Not a directory",
                entry,
            )
            self.assertNotIn(b"Traceback", result.stderr + result.stdout)
            self.assertFalse(listening(port), entry)

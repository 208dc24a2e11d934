# -*- test-case-name: tests.test_serverinfo -*-
"""
The server-info file: one JSON line telling clients where the proxy listens.

Written atomically: a fresh temporary file in the same directory (created
with C{O_EXCL}, so it never follows a planted link), then C{rename(2)} over
the path, which replaces a symlink there instead of writing through it. A
reader sees the old file or the complete new one, never a partial write.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


class ServerInfoError(OSError):
    """
    The server-info file could not be written; the message says why and where.
    """


def serverInfoLine(port: int | None, pid: int, **extra: Any) -> bytes:
    """
    The file's content: C{{"port": N, "pid": P}} and a newline.
    """
    info: dict[str, Any] = {"port": port, "pid": pid}
    info.update(extra)
    return json.dumps(info).encode("ascii") + b"\n"


def writeServerInfo(path: str, content: bytes, mode: int = 0o644) -> tuple[int, int]:
    """
    Atomically replace C{path} with C{content}; return the new file's
    C{(st_dev, st_ino)} so that only our own file is removed later.

    @raise ServerInfoError: with a message naming the path and the reason.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path} is a directory")
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=".server-info.", suffix=".tmp"
        )
    except OSError as e:
        raise ServerInfoError(
            f"cannot write server-info file {path}: {e.strerror or e}"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            stat = os.fstat(f.fileno())
        os.rename(temporary, path)
    except OSError as e:
        os.unlink(temporary)
        raise ServerInfoError(
            f"cannot write server-info file {path}: {e.strerror or e}"
        ) from e
    return stat.st_dev, stat.st_ino


def removeServerInfo(path: str, identity: tuple[int, int]) -> bool:
    """
    Remove C{path} if it is still the file we wrote (same device and inode).
    """
    try:
        stat = os.lstat(path)
        if (stat.st_dev, stat.st_ino) != identity:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False

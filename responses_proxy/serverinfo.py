# -*- test-case-name: tests.test_serverinfo -*-
"""
The server-info file: one JSON line telling clients where the proxy listens.

Written atomically: a fresh temporary file in the same directory (created
with C{O_EXCL}, so it never follows a planted link), then C{rename(2)} over
the path, which replaces a symlink there instead of writing through it. A
reader sees the old file or the complete new one, never a partial write.
A parent directory another user could redirect (their symlink or
directory inside a sticky world-writable one) is refused.
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


def untrustedComponent(directory: str) -> str | None:
    """
    The first existing component of C{directory} that another user could
    redirect, or L{None}.

    That is an entry of a sticky world-writable directory (like C{/tmp})
    owned by neither us nor that directory's owner: the kernel's
    C{fs.protected_symlinks} rule, which is often off, applied in userspace
    and to directories as well as symlinks (another user's directory in
    C{/tmp} is theirs to fill with links).
    """
    me = os.geteuid()
    current = "/"
    for part in directory.strip("/").split("/"):
        candidate = os.path.join(current, part)
        try:
            parent = os.stat(current)
            entry = os.lstat(candidate)
        except OSError:  # missing, or not a directory: makedirs will say
            return None
        shared = parent.st_mode & 0o1002 == 0o1002
        if shared and entry.st_uid not in (me, parent.st_uid):
            return candidate
        current = os.path.realpath(candidate)
    return None


def _refuseUntrusted(path: str, directory: str) -> None:
    component = untrustedComponent(directory)
    if component is not None:
        raise ServerInfoError(
            f"cannot write server-info file {path}: {component} is owned by "
            f"another user in a world-writable directory; refusing to use it"
        )


def _makeParents(directory: str) -> None:
    """
    Create the missing directories of C{directory}, each mode 0755 whatever
    the umask: the file is 0644 so that other users (the proxy's clients)
    can read it, which they cannot through a 0700 parent made under umask
    077. Directories that already exist are left as they are.
    """
    missing = []
    current = directory
    while not os.path.isdir(current) and current != os.path.dirname(current):
        missing.append(current)
        current = os.path.dirname(current)
    for name in reversed(missing):
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:
            continue
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    # The inode number alone is not enough: a file created after ours was
    # removed often gets the same one back.
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def writeServerInfo(path: str, content: bytes, mode: int = 0o644) -> tuple[int, ...]:
    """
    Atomically replace C{path} with C{content}; return the new file's
    identity (device, inode, size, mtime) so that only our own file is
    removed later.

    @raise ServerInfoError: with a message naming the path and the reason.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    _refuseUntrusted(path, directory)
    try:
        _makeParents(directory)
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
        # Again, now that the directory exists: a component planted since the
        # first check must not receive our file.
        _refuseUntrusted(path, directory)
    except ServerInfoError:
        os.close(fd)
        os.unlink(temporary)
        raise
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
    return _identity(stat)


def removeServerInfo(path: str, identity: tuple[int, ...]) -> bool:
    """
    Remove C{path} if it is still the file we wrote (same identity).
    """
    try:
        stat = os.lstat(path)
        if _identity(stat) != identity:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False

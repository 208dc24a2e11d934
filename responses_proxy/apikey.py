# -*- test-case-name: tests.test_apikey -*-
"""
Read the API key from standard input and keep it in one locked buffer.

The key is read once, before anything listens, with C{os.read} into a
C{bytearray} we can zero afterwards. The only long-lived copy is the
C{Bearer <key>} header value, a single C{bytes} object whose pages we try to
C{mlock(2)} so they are never swapped out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from twisted.logger import Logger

from responses_proxy import _libc

MAX_KEY_LENGTH = 1016
_KEY_PATTERN = re.compile(rb"[A-Za-z0-9_-]+")
_log = Logger()


class InvalidKey(ValueError):
    """
    The key read from standard input is unusable; the message never contains it.
    """


@dataclass(eq=False, repr=False)
class AuthHeader:
    """
    The C{Authorization} header value, built once.

    @ivar value: C{b"Bearer " + key}; the one buffer the proxy sends upstream.
    @ivar locked: whether C{mlock(2)} succeeded for C{value}'s pages.
    """

    value: bytes
    locked: bool = False

    def __repr__(self) -> str:
        return "<AuthHeader [REDACTED]>"

    def lock(self) -> None:
        """
        Lock the header's pages into RAM; raises L{OSError} if the kernel refuses.
        """
        _libc.mlock(_libc.bufferAddress(self.value), len(self.value))
        self.locked = True

    def wipe(self) -> None:
        """
        Zero and unlock the buffer at shutdown. The object must not be used after.
        """
        address = _libc.bufferAddress(self.value)
        _libc.zeroMemory(address, len(self.value))
        if self.locked:
            _libc.munlock(address, len(self.value))
            self.locked = False


def _readAll(fd: int, limit: int) -> bytearray:
    """
    Read from C{fd} until EOF or until more than C{limit} bytes arrived.

    C{os.readv} fills one preallocated buffer, so no intermediate C{bytes}
    copies of the key are left behind for the garbage collector.
    """
    buffer = bytearray(limit + 1)
    view = memoryview(buffer)
    filled = 0
    while filled <= limit:
        count = os.readv(fd, [view[filled:]])
        if not count:
            break
        filled += count
    view.release()
    del buffer[filled:]
    return buffer


def _validate(key: bytearray) -> None:
    if not key:
        raise InvalidKey("no API key on standard input (it was empty)")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"the API key on standard input is longer than {MAX_KEY_LENGTH} characters"
        )
    if _KEY_PATTERN.fullmatch(key) is None:
        raise InvalidKey(
            "the API key on standard input contains characters other than "
            "A-Z, a-z, 0-9, '_' and '-'"
        )


def _stripLineEnd(raw: bytearray) -> None:
    if raw.endswith(b"\r\n"):
        del raw[-2:]
    elif raw.endswith(b"\n"):
        del raw[-1:]


def readAuthHeader(fd: int = 0, *, requireLock: bool = False) -> AuthHeader:
    """
    Read the key from C{fd} and build the locked C{Bearer <key>} header value.

    @raise InvalidKey: the input is empty, too long or has other characters.
    @raise OSError: C{requireLock} is set and C{mlock} failed.
    """
    raw = _readAll(fd, MAX_KEY_LENGTH + 2)
    scratch = bytearray()
    try:
        _stripLineEnd(raw)
        _validate(raw)
        scratch = bytearray(b"Bearer ") + raw
        header = AuthHeader(bytes(scratch))
    finally:
        raw[:] = bytes(len(raw))
        scratch[:] = bytes(len(scratch))
    try:
        header.lock()
    except OSError as e:
        if requireLock:
            raise
        _log.warn("Could not mlock the API key buffer: {error}", error=str(e))
    return header

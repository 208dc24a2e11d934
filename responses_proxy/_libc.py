# -*- test-case-name: tests.test_apikey -*-
"""
The few libc calls the standard library does not expose: prctl and mlock.

They live here so that the rest of the code never touches ctypes directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def setDumpable(dumpable: bool) -> None:
    """
    Mark the process (non-)dumpable: no core dumps, no ptrace by other users,
    and /proc/PID files owned by root.
    """
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    _check(_libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0), "prctl(PR_SET_DUMPABLE)")


def isDumpable() -> bool:
    """
    Report the current dumpable flag (for tests and diagnostics).
    """
    return bool(_libc.prctl(PR_GET_DUMPABLE, 0, 0))


def bufferAddress(data: bytes) -> int:
    """
    Return the address of the bytes object's own storage (no copy is made).
    """
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


def _pageSpan(address: int, length: int) -> tuple[int, int]:
    page = os.sysconf("SC_PAGE_SIZE")
    start = address - (address % page)
    end = address + length
    return start, end - start


def mlock(address: int, length: int) -> None:
    """
    Lock the pages covering C{[address, address + length)} into RAM.
    """
    start, size = _pageSpan(address, length)
    _libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _check(_libc.mlock(ctypes.c_void_p(start), ctypes.c_size_t(size)), "mlock")


def munlock(address: int, length: int) -> None:
    """
    Undo L{mlock}.
    """
    start, size = _pageSpan(address, length)
    _libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _libc.munlock(ctypes.c_void_p(start), ctypes.c_size_t(size))


def zeroMemory(address: int, length: int) -> None:
    """
    Overwrite C{length} bytes at C{address} with zeros.
    """
    ctypes.memset(ctypes.c_void_p(address), 0, length)

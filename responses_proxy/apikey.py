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
import select
import stat
import sys
import termios
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from twisted.logger import Logger

from responses_proxy import _libc
from responses_proxy.hardening import HardeningFailed, harden, secureModeRequested
from responses_proxy.startup import StartupError

MAX_KEY_LENGTH = 1016
_KEY_PATTERN = re.compile(rb"[A-Za-z0-9_-]+")
MAX_REQUEST_TOKEN_LENGTH = 16384
_PREFIX = b"Bearer "
_log = Logger()


class InvalidKey(ValueError):
    """
    The key read from standard input is unusable; the message never contains it.
    """


@dataclass(eq=False, repr=False)
class AuthHeader:
    """
    The C{Authorization} header value, built once.

    Memory locks are not inherited by a forked child, and twistd forks
    (twice) to daemonize after the key was read; so a locked header locks
    itself again in every child of a C{fork}, and in secure mode a child
    that cannot do so exits at once.

    @ivar value: C{b"Bearer " + key}; the one buffer the proxy sends upstream.
    @ivar locked: whether C{mlock(2)} succeeded for C{value}'s pages.
    @ivar requireLock: whether a failure to lock after a fork is fatal.
    """

    value: bytes
    locked: bool = False
    requireLock: bool = False
    _forkHook: bool = field(default=False, init=False)

    def __repr__(self) -> str:
        return "<AuthHeader [REDACTED]>"

    def currentHeader(self) -> bytes:
        """
        The C{Authorization} value to send (a key never changes).
        """
        return self.value

    def lock(self) -> None:
        """
        Lock the header's pages into RAM; raises L{OSError} if the kernel refuses.
        """
        _libc.mlock(_libc.bufferAddress(self.value), len(self.value))
        self.locked = True
        if not self._forkHook:
            self._forkHook = True
            reference = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _relockInChild(reference))

    def wipe(self) -> None:
        """
        Zero and unlock the buffer at shutdown. The object must not be used after.
        """
        address = _libc.bufferAddress(self.value)
        _libc.zeroMemory(address, len(self.value))
        if self.locked:
            _libc.munlock(address, len(self.value))
            self.locked = False


def _relockInChild(reference: weakref.ref[AuthHeader]) -> None:
    """
    After C{fork}, in the child: lock a header again that was locked before.
    """
    header = reference()
    if header is None or not header.locked:
        return
    try:
        _libc.mlock(_libc.bufferAddress(header.value), len(header.value))
    except OSError as e:
        header.locked = False
        if header.requireLock:
            os.write(
                2,
                f"responses-api-proxy: cannot lock the API key again after "
                f"fork: {e.strerror or e}\n".encode(),
            )
            os._exit(1)
        _log.warn("Could not mlock the API key buffer after fork: {error}", error=e)


def checkReadable(fd: int) -> None:
    """
    Refuse a standard input that is closed, or whose descriptor number was
    reused by something the process opened itself (e.g. the reactor's epoll
    when the proxy was started with C{<&-}): reading that is meaningless.

    @raise InvalidKey: C{fd} is not an open pipe, file, socket or terminal.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise InvalidKey(
            "no API key: standard input is closed (pipe the key in)"
        ) from None
    if not (
        stat.S_ISFIFO(mode)
        or stat.S_ISREG(mode)
        or stat.S_ISCHR(mode)
        or stat.S_ISSOCK(mode)
    ):
        raise InvalidKey("no API key: standard input is closed (pipe the key in)")


@contextmanager
def _echoOff(fd: int) -> Iterator[None]:
    """
    While reading from a terminal, do not echo what is typed (as getpass
    does), so the key does not end up on the screen or in a scrollback.
    """
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _readAll(fd: int, buffer: bytearray) -> int:
    """
    Read from C{fd} into C{buffer} until EOF or until it is full; return how
    many bytes arrived.

    C{os.readv} fills the one preallocated buffer, so no intermediate
    C{bytes} copies of the key are left behind for the garbage collector.
    The buffer is never resized either: shrinking a C{bytearray} may
    C{realloc} it and free the old block without zeroing it.
    """
    view = memoryview(buffer)
    filled = 0
    try:
        while filled < len(buffer):
            try:
                count = os.readv(fd, [view[filled:]])
            except BlockingIOError:
                # An inherited non-blocking descriptor: wait until readable.
                select.select([fd], [], [])
                continue
            if not count:
                break
            filled += count
    finally:
        view.release()
    return filled


@dataclass(frozen=True)
class SecretFormat:
    """
    What a secret read from standard input must look like.

    @ivar what: its name in messages (which never show the secret).
    @ivar firstLineOnly: only the first line counts (what follows it is
        ignored), as the reference reads a GitHub request token.
    """

    what: str
    maxLength: int
    pattern: re.Pattern[bytes]
    alphabet: str
    firstLineOnly: bool = False


API_KEY = SecretFormat(
    "API key", MAX_KEY_LENGTH, _KEY_PATTERN, "A-Z, a-z, 0-9, '_' and '-'"
)
REQUEST_TOKEN = SecretFormat(
    "GitHub OIDC request token",
    MAX_REQUEST_TOKEN_LENGTH,
    re.compile(rb"[A-Za-z0-9._~+/=-]+"),
    "A-Z, a-z, 0-9 and '-._~+/='",
    firstLineOnly=True,
)


def _keyLength(raw: bytearray, filled: int, format: SecretFormat = API_KEY) -> int:
    """
    The secret's length once one trailing C{\\n} or C{\\r\\n} is left out
    (compared byte by byte: slicing would make another copy of it); for a
    first-line-only secret, the length of its first line.
    """
    if format.firstLineOnly:
        newline = raw.find(b"\n", 0, filled)
        if newline < 0:
            return filled
        filled = newline + 1
    if filled >= 1 and raw[filled - 1] == 0x0A:
        if filled >= 2 and raw[filled - 2] == 0x0D:
            return filled - 2
        return filled - 1
    return filled


def _validate(key: memoryview, format: SecretFormat = API_KEY) -> None:
    what = format.what
    if not len(key):
        raise InvalidKey(f"no {what} on standard input (it was empty)")
    if len(key) > format.maxLength:
        raise InvalidKey(
            f"the {what} on standard input is longer than {format.maxLength} characters"
        )
    if format.pattern.fullmatch(key) is None:
        raise InvalidKey(
            f"the {what} on standard input contains characters other than "
            f"{format.alphabet}"
        )


def readAuthHeader(
    fd: int = 0,
    *,
    requireLock: bool = False,
    prompt: Callable[[], object] | None = None,
    format: SecretFormat = API_KEY,
) -> AuthHeader:
    """
    Read the key (or another bearer secret of C{format}) from C{fd} and
    build the locked C{Bearer <secret>} header value.

    When C{fd} is a terminal, echo is turned off while reading and then
    C{prompt} (if given) is called to tell the person at it what to do.

    @raise InvalidKey: the input is closed, empty, too long or has other
        characters.
    @raise OSError: reading failed, or C{requireLock} is set and C{mlock}
        failed.
    """
    checkReadable(fd)
    # Room for the longest key, its CR LF, and one byte to detect "longer".
    raw = bytearray(format.maxLength + 3)
    scratch = bytearray()
    try:
        if os.isatty(fd):
            with _echoOff(fd):
                if prompt is not None:
                    prompt()
                filled = _readAll(fd, raw)
        else:
            filled = _readAll(fd, raw)
        length = _keyLength(raw, filled, format)
        with memoryview(raw) as view:
            _validate(view[:length], format)
            scratch = bytearray(len(_PREFIX) + length)
            scratch[: len(_PREFIX)] = _PREFIX
            scratch[len(_PREFIX) :] = view[:length]
        header = AuthHeader(bytes(scratch), requireLock=requireLock)
    finally:
        raw[:] = bytes(len(raw))
        scratch[:] = bytes(len(scratch))
    try:
        header.lock()
    except OSError as e:
        if requireLock:
            header.wipe()
            raise
        _log.warn(
            "Could not mlock the {what} buffer: {error}", what=format.what, error=str(e)
        )
    return header


def _terminalPrompt() -> None:
    stream = sys.__stderr__ or sys.stderr
    stream.write(
        "responses-api-proxy: reading the API key from the terminal, not echoed "
        "(end it with Ctrl-D; better: pipe it in)\n"
    )
    stream.flush()


def loadKey(stdinFD: int, format: SecretFormat = API_KEY) -> AuthHeader:
    """
    Harden the process, then read the key (or a request token: C{format})
    from C{stdinFD}.

    @raise StartupError: hardening failed in secure mode, or the key is
        missing, malformed or cannot be locked in secure mode.
    """
    secure = secureModeRequested()
    try:
        harden(secure)
        return readAuthHeader(
            stdinFD, requireLock=secure, prompt=_terminalPrompt, format=format
        )
    except HardeningFailed as e:
        raise StartupError(f"{e} (CODEX_SECURE_MODE=1 makes this fatal)") from None
    except InvalidKey as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(
            f"cannot read or lock the {format.what}: {e.strerror or e}"
        ) from None

# -*- test-case-name: tests.test_peers -*-
"""
Who is on the other end of an accepted connection: the local user (uid),
and the process (pid) where the kernel gives it.

The question is asked once per connection, when it is accepted, and the
answer is the kernel's or nothing: an identity that cannot be determined is
a L{Peer} with C{uid=None} and the reason, never a guess.

  - Unix sockets: C{SO_PEERCRED}, the credentials the client had when it
    called C{connect()} (uid and pid).
  - TCP: the owner of the I{client's} socket in the kernel's socket table,
    looked up by its exact 4-tuple over netlink (L{responses_proxy.sockdiag},
    which says how the answer is checked, and why it is done without
    pyroute2 over one kept socket). TCP gives no pid.

In a user namespace, a uid that is not mapped there arrives as the overflow
uid (65534), whichever way it was learnt: that is unknown too, not "nobody".
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from responses_proxy import sockdiag

# Reasons (Peer.unknownReason) that callers and tests may compare with: the
# socket table's (defined where they are given) and UNMAPPED.
from responses_proxy.sockdiag import (
    CLOSED,
    LISTENER_ONLY,
    NO_ANSWER,
    NOT_FOUND,
    NOT_LOCAL,
    OTHER_NAMESPACE,
)

UNMAPPED = "uid not mapped in this user namespace"

__all__ = [
    "CLOSED",
    "LISTENER_ONLY",
    "NOT_FOUND",
    "NOT_LOCAL",
    "NO_ANSWER",
    "OTHER_NAMESPACE",
    "UNMAPPED",
    "Peer",
    "UserNames",
    "peerOf",
    "peerOfSocket",
]

_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_WRAPPERS_MAX = 8


@dataclass(frozen=True, slots=True)
class Peer:
    """
    The local user on the other end of a connection, as the kernel told it.

    @ivar uid: the peer's uid, or C{None} when it could not be determined.
    @ivar pid: the peer's pid where the kernel gives it (Unix sockets; the
        process that called C{connect()}), else C{None}.
    @ivar unknownReason: why C{uid} is C{None}; C{None} when it is known.
    """

    uid: int | None
    pid: int | None
    unknownReason: str | None = None

    @property
    def known(self) -> bool:
        """
        Whether the uid is known (a caller whose uid is not must be treated
        as nobody in particular: refused where access is restricted).
        """
        return self.uid is not None


def _unknown(reason: str) -> Peer:
    return Peer(None, None, reason)


# User namespaces --------------------------------------------------------------

_overflow: list[int | None] = []  # one item once computed, per process


def _overflowUid() -> int | None:
    """
    The uid the kernel reports for one that is not mapped into this user
    namespace, or C{None} in the initial namespace, where every uid is
    mapped. Outside it, the overflow uid (65534 by default) would otherwise
    pass for the real user of that uid.
    """
    if not _overflow:
        value: int | None = None
        try:
            with open("/proc/self/uid_map") as f:
                initial = f.read().split() == ["0", "0", "4294967295"]
            if not initial:
                with open("/proc/sys/kernel/overflowuid") as f:
                    value = int(f.read())
        except (OSError, ValueError):
            value = None  # no user namespaces: every uid is what it says
        _overflow.append(value)
    return _overflow[0]


# A forked child may have moved to another user namespace: it asks again.
os.register_at_fork(after_in_child=_overflow.clear)


def _owner(uid: int, pid: int | None) -> Peer:
    if uid == _overflowUid():
        return _unknown(UNMAPPED)
    return Peer(uid, pid)


# Public entry points ----------------------------------------------------------


def _peerOfTCP(sock: socket.socket) -> Peer:
    """
    The socket table's owner of C{sock}'s client socket, as a L{Peer} (an
    unmapped uid is unknown here too).
    """
    owner = sockdiag.ownerOfPeer(sock)
    if owner.uid is None:
        return Peer(None, None, owner.reason)
    return _owner(owner.uid, None)


def _peerCredentials(sock: socket.socket) -> Peer:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as e:
        if e.errno in (errno.EBADF, errno.ENOTCONN):
            return _unknown(CLOSED)
        return _unknown(f"SO_PEERCRED failed: {e.strerror}")
    pid, uid, _ = _UCRED.unpack(raw)
    if uid == 0xFFFFFFFF:
        return _unknown("no peer credentials (not connected)")
    # pid 0: the client is in a PID namespace this process cannot see.
    return _owner(uid, pid or None)


def peerOfSocket(sock: socket.socket) -> Peer:
    """
    The local user at the other end of the accepted connection C{sock}.
    """
    family = sock.family
    if family == socket.AF_UNIX:
        return _peerCredentials(sock)
    if (
        family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto in (0, socket.IPPROTO_TCP)
    ):
        return _peerOfTCP(sock)
    return _unknown(NOT_LOCAL)


def peerOf(transport: object) -> Peer:
    """
    The local user at the other end of a connected Twisted transport
    (C{tcp.Server}, C{unix.Server}, or a protocol wrapper such as TLS
    around one); anything without a socket is L{NOT_LOCAL}.
    """
    for _ in range(_WRAPPERS_MAX):
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is None:
            break
        try:
            handle = getHandle()
        except AttributeError:  # Twisted deletes the socket when it is lost
            return _unknown(CLOSED)
        if isinstance(handle, socket.socket):
            return peerOfSocket(handle)
        # TLSMemoryBIOProtocol's handle is its OpenSSL connection: look under.
        transport = getattr(transport, "transport", None)
    return _unknown(NOT_LOCAL)


def _passwdName(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


class UserNames:
    """
    User names of uids, each resolved once and cached for the life of the
    process: the lookup goes through NSS (perhaps LDAP or sssd) and must not
    be repeated for every connection on the reactor thread. A uid without a
    passwd entry is C{None}, and stays C{None}: the cache holds no more
    entries than there are users that connected.
    """

    def __init__(self, lookup: Callable[[int], str | None] = _passwdName) -> None:
        """
        @param lookup: uid to name, C{None} when there is none (tests give
            another).
        """
        self._lookup = lookup
        self._names: dict[int, str | None] = {}

    def nameOf(self, uid: int | None) -> str | None:
        """
        The name of C{uid}, or C{None} for no uid or one without a name.
        """
        if uid is None:
            return None
        try:
            return self._names[uid]
        except KeyError:
            name = self._names[uid] = self._lookup(uid)
            return name

# -*- test-case-name: tests.test_peers -*-
"""
The owner of the client socket of an accepted TCP connection, from the
kernel's socket table (for L{responses_proxy.peers}).

The table is asked over netlink C{NETLINK_SOCK_DIAG} (C{SOCK_DIAG_BY_FAMILY}
with an C{inet_diag_req_v2}) for the I{client's} socket by its exact
4-tuple: its local address is our peer address, its remote address is our
local one. The request is not a dump, so the kernel does one hash lookup.
The uid is the owner of the client socket (whoever created it); TCP gives no
pid. The answer is an L{Owner}: the uid as the kernel reported it, or why
there is none.

The kernel answers an exact request with the lookup that routes incoming
packets (C{inet_diag_find_one_icsk} -> C{inet_lookup}): when no connected
socket has the 4-tuple it falls back to a I{listening} socket on the
client's port, which may belong to anyone. So every answer is checked: its
4-tuple must be the one asked for, and its state one in which a socket has
an owner (not LISTEN; not TIME_WAIT or a request socket, whose uid 0 means
"none"). And the same 4-tuple can exist in another network namespace and
belong to someone else there, so before asking, the accepted socket's
namespace is compared with the netlink socket's (C{SO_NETNS_COOKIE}).

Why stdlib and not pyroute2: pyroute2 (0.9.7) can send the exact request
(C{nlm_request(inet_diag_req, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST)}), but
the exchange costs about 170 us through it against 8.5 us here (median,
C{bench/peerlookup.py}), its diag marshal drops the errno of an
C{NLMSG_ERROR} answer (ENOENT cannot be told from other failures), and it
is a 5 MB dependency that takes 150 ms to import, for one fixed 72-byte
request and the first 88 bytes of the answer.

Why one netlink socket kept open: a whole lookup costs 12 us with it,
19 us with a new socket per lookup. It is opened on first use, replaced
after a fork and after any error, and a lock keeps one exchange at a time
on it: the reactor thread is the expected user, the lock makes any other
safe too.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

# Reasons (Owner.reason) that callers and tests may compare with;
# responses_proxy.peers gives them as Peer.unknownReason.
NOT_LOCAL = "not a local socket"
CLOSED = "connection already closed"
OTHER_NAMESPACE = "in another network namespace"
NOT_FOUND = "not found in this network namespace (closed, or not on this host)"
LISTENER_ONLY = "connection already closed (the kernel found only a listener)"
NO_ANSWER = "no answer from the socket table"

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: do not check the socket cookie
_ALL_STATES = 0xFFFFFFFF
# Not in the socket module before Python 3.13 (asm-generic value, Linux 5.14).
_SO_NETNS_COOKIE: int = getattr(socket, "SO_NETNS_COOKIE", 71)

# TCP states (include/net/tcp_states.h).
_STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
_LISTEN = 10
# The client socket of an accepted connection has completed the handshake:
# it is a full socket, with its owner's uid, in one of these states.
# SYN_SENT cannot be that client (but can be an IP_FREEBIND impostor of a
# remote one); TIME_WAIT and CLOSE are what is left of a closed one (uid 0).
_OWNED_STATES = frozenset({1, 4, 5, 8, 9, 11})
_CLOSED_STATES = frozenset({6, 7})

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
# nlmsghdr + inet_diag_req_v2: family, protocol, ext, pad, states, then
# inet_diag_sockid: sport, dport (network order), src, dst, if, cookie[2].
_REQUEST = struct.Struct("=IHHIIBBBxIHH16s16sIII")
# nlmsghdr + inet_diag_msg: family, state, timer, retrans, sockid,
# expires, rqueue, wqueue, uid, inode.
_ANSWER = struct.Struct("=IHHIIBBBBHH16s16sIIIIIIII")
_ERROR = struct.Struct("=IHHIIi")  # nlmsghdr + nlmsgerr.error
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_STALE_ANSWERS_MAX = 8


class Owner(NamedTuple):
    """
    What the socket table says about the owner of a client socket.

    @ivar uid: the owner's uid as the kernel reported it (in a user
        namespace, perhaps the overflow uid of an unmapped one), or C{None}
        when the table cannot say.
    @ivar reason: why C{uid} is C{None}; C{None} when it is known.
    """

    uid: int | None
    reason: str | None = None


def _unknown(reason: str) -> Owner:
    return Owner(None, reason)


# Addresses --------------------------------------------------------------------


class _Endpoint(NamedTuple):
    """
    One side of a TCP connection as the socket table stores it; a
    v4-mapped IPv6 address is its IPv4 address (the kernel looks those up,
    and reports sockets bound to them, as IPv4).
    """

    family: int
    address: bytes  # 4 or 16 bytes
    port: int
    scope: int


def _endpoint(sockaddr: Any) -> _Endpoint:
    """
    Convert a socket module address: C{(host, port)} for IPv4, C{(host,
    port, flowinfo, scope_id)} for IPv6.
    """
    host, port = sockaddr[0], sockaddr[1]
    if len(sockaddr) == 2:
        return _Endpoint(socket.AF_INET, socket.inet_aton(host), port, 0)
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    if packed[:12] == _V4_MAPPED:
        return _Endpoint(socket.AF_INET, packed[12:], port, 0)
    return _Endpoint(socket.AF_INET6, packed, port, sockaddr[3])


def _answerAddress(family: int, raw: bytes) -> bytes:
    if family == socket.AF_INET:
        return raw[:4]
    if raw[:12] == _V4_MAPPED:
        return raw[12:]
    return raw


def _loopbackIndex() -> int:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return 0


_LOOPBACK_INDEX = _loopbackIndex()


def _netnsCookie(sock: socket.socket) -> int | None:
    """
    The network namespace of C{sock}, or C{None} where the kernel cannot
    say (before Linux 5.14).
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int.from_bytes(raw, sys.byteorder)


# The socket table -------------------------------------------------------------


class _Answer(NamedTuple):
    """
    The fixed part of an C{inet_diag_msg}, as the kernel sent it.
    """

    family: int
    state: int
    sport: int
    dport: int
    src: bytes
    dst: bytes
    uid: int
    inode: int


class _NoAnswer(Exception):
    """
    The exchange with the kernel failed; the argument says how.
    """


def openDiagSocket() -> socket.socket:
    """
    A non-blocking C{NETLINK_SOCK_DIAG} socket. Non-blocking: the kernel
    answers while handling the request, so the answer is queued before
    C{send} returns and a missing one is a failure, not a wait.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    sock.setblocking(False)
    return sock


class SocketTable:
    """
    Exact lookups in the kernel's TCP socket table over one netlink socket,
    kept open between lookups (see the module docstring for why).

    The netlink socket looks in the network namespace it was created in;
    L{ownerOfPeer} checks that the connection is in that one too.
    """

    def __init__(
        self, openSocket: Callable[[], socket.socket] = openDiagSocket
    ) -> None:
        """
        @param openSocket: makes the netlink socket (tests give another).
        """
        self._openSocket = openSocket
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._cookie: int | None = None
        self._sequence = 0
        self._buffer = bytearray(8192)

    def close(self) -> None:
        """
        Close the netlink socket; the next lookup opens another.
        """
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._cookie = None

    def _ensureOpen(self) -> socket.socket:
        if self._socket is None:
            try:
                self._socket = self._openSocket()
            except OSError as e:
                raise _NoAnswer(f"socket table unavailable: {e.strerror}") from e
            self._cookie = _netnsCookie(self._socket)
        return self._socket

    def _ask(self, client: _Endpoint, server: _Endpoint) -> _Answer | int:
        """
        Ask for the socket whose local end is C{client} and remote end is
        C{server}; return the kernel's answer (unchecked) or its errno.
        Call with the lock held.

        @raise _NoAnswer: if the exchange itself failed.
        """
        sock = self._ensureOpen()
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        sequence = self._sequence
        request = _REQUEST.pack(
            _REQUEST.size,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,  # and not NLM_F_DUMP: one exact lookup
            sequence,
            0,
            client.family,
            socket.IPPROTO_TCP,
            0,
            _ALL_STATES,
            socket.htons(client.port),
            socket.htons(server.port),
            client.address,
            server.address,
            client.scope or _LOOPBACK_INDEX,  # where the client's packets arrive
            _NO_COOKIE,
            _NO_COOKIE,
        )
        try:
            sock.send(request)
            for _ in range(_STALE_ANSWERS_MAX):
                # EINTR is retried by Python (PEP 475); MSG_TRUNC makes the
                # result the datagram's full length, even if it is longer.
                length = sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
                answer = self._parse(sequence, min(length, len(self._buffer)))
                if answer is not None:
                    return answer
            failure = _NoAnswer(NO_ANSWER)
        except BlockingIOError:
            failure = _NoAnswer(NO_ANSWER)
        except OSError as e:
            failure = _NoAnswer(f"socket table lookup failed: {e.strerror}")
        except _NoAnswer as e:
            failure = e
        # Whatever is left on the socket is of no use to the next question.
        self._drop()
        raise failure

    def _parse(self, sequence: int, available: int) -> _Answer | int | None:
        """
        Parse one received datagram: the answer, an errno, or C{None} for
        an answer to an earlier question that was given up on.
        """
        buffer = self._buffer
        if available < _HEADER.size:
            raise _NoAnswer(f"short answer from the socket table ({available} bytes)")
        size, kind, _, answerSequence, _ = _HEADER.unpack_from(buffer)
        if answerSequence != sequence:
            return None
        if kind == NLMSG_ERROR and available >= _ERROR.size:
            code: int = _ERROR.unpack_from(buffer)[5]
            return -code
        if kind != SOCK_DIAG_BY_FAMILY or min(size, available) < _ANSWER.size:
            raise _NoAnswer(
                f"short or unexpected answer from the socket table "
                f"(type {kind}, {available} bytes)"
            )
        f = _ANSWER.unpack_from(buffer)
        ntohs = socket.ntohs
        # family, state, sport, dport, src, dst, uid, inode
        return _Answer(
            f[5], f[6], ntohs(f[9]), ntohs(f[10]), f[11], f[12], f[19], f[20]
        )

    def ownerOf(self, client: Any, server: Any) -> Owner:
        """
        The owner of the TCP socket whose local address is C{client} and
        whose remote address is C{server} (socket module addresses, IPv4 or
        IPv6), checked against the kernel's listener fallback.
        The network namespace is this table's; see L{ownerOfPeer}.
        """
        clientEnd = _endpoint(client)
        serverEnd = _endpoint(server)
        with self._lock:
            try:
                answer = self._ask(clientEnd, serverEnd)
            except _NoAnswer as e:
                return _unknown(str(e))
        return _checked(answer, clientEnd, serverEnd)

    def ownerOfPeer(self, sock: socket.socket) -> Owner:
        """
        The owner of the client socket of the accepted TCP connection
        C{sock}.
        """
        try:
            peer = sock.getpeername()
            local = sock.getsockname()
        except OSError:
            return _unknown(CLOSED)
        client = _endpoint(peer)
        server = _endpoint(local)
        if client.family != server.family:
            return _unknown(NOT_LOCAL)
        cookie = _netnsCookie(sock)
        with self._lock:
            try:
                self._ensureOpen()
                if cookie is None or self._cookie is None:
                    if not self._sameNamespace(sock, client, server):
                        return _unknown(NOT_FOUND)
                elif cookie != self._cookie:
                    return _unknown(OTHER_NAMESPACE)
                answer = self._ask(client, server)
            except _NoAnswer as e:
                return _unknown(str(e))
        return _checked(answer, client, server)

    def _sameNamespace(
        self, sock: socket.socket, client: _Endpoint, server: _Endpoint
    ) -> bool:
        """
        Without namespace cookies (before Linux 5.14): whether the table
        sees C{sock} itself, by its inode. One more lookup, on old kernels
        only.
        """
        answer = self._ask(server, client)
        if isinstance(answer, int):
            return False
        return answer.inode == os.fstat(sock.fileno()).st_ino


def _checked(answer: _Answer | int, client: _Endpoint, server: _Endpoint) -> Owner:
    """
    What the kernel's answer says about the owner of the client socket.
    """
    if isinstance(answer, int):
        if answer == errno.ENOENT:
            return _unknown(NOT_FOUND)
        return _unknown(f"socket table lookup failed: {os.strerror(answer)}")
    if answer.state == _LISTEN:
        return _unknown(LISTENER_ONLY)
    exact = (
        answer.sport == client.port
        and answer.dport == server.port
        and _answerAddress(answer.family, answer.src) == client.address
        and _answerAddress(answer.family, answer.dst) == server.address
    )
    if not exact:
        return _unknown("the socket table answered for another socket")
    if answer.state in _CLOSED_STATES:
        return _unknown(CLOSED)
    if answer.state not in _OWNED_STATES:
        name = _STATE_NAMES.get(answer.state, str(answer.state))
        return _unknown(f"client socket in state {name}, without an owner")
    return Owner(answer.uid)


# One table per process ---------------------------------------------------------

_tables: list[SocketTable] = []


def _table() -> SocketTable:
    if not _tables:
        _tables.append(SocketTable())
    return _tables[0]


def ownerOfPeer(sock: socket.socket) -> Owner:
    """
    L{SocketTable.ownerOfPeer} on this process's table, whose netlink
    socket is opened on first use and kept.
    """
    return _table().ownerOfPeer(sock)


def _afterFork() -> None:
    """
    In a forked child: forget the parent's table (its lock may be held, and
    answers on the shared socket could go to either process).
    """
    for table in _tables:
        if table._socket is not None:
            table._socket.close()
    _tables.clear()


os.register_at_fork(after_in_child=_afterFork)

# -*- test-case-name: tests.test_peers -*-
"""
Integration tests (loopback / processes / real users) for
L{responses_proxy.peers} and the socket table under it
(L{responses_proxy.sockdiag}): real sockets, real uids (helper processes
that become another user), real network and user namespaces; a few use
the global reactor for real Twisted transports. CI runs them as root; a test
that needs root (to switch uid or make namespaces) skips without it and
says so. L{FakeKernelTests} alone is in memory: it plays the kernel's side
of the netlink exchange to reach the answers a real kernel rarely gives.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError
from typing import Any

from twisted.internet import protocol
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from responses_proxy import peers, sockdiag
from responses_proxy.peers import Peer, UserNames, peerOf, peerOfSocket
from responses_proxy.sockdiag import Owner, SocketTable
from tests.support import makeTestPKI, serverContext

OTHER_UID = 65534  # nobody on Debian; the kernel needs no passwd entry
THIRD_UID = 65533
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
DEADLINE = 30.0
reactor: Any = _globalReactor  # for the listen* methods its stub lacks


def requireRoot(why: str) -> None:
    """
    Skip unless root, saying what for.
    """
    if os.geteuid() != 0:
        raise SkipTest(f"needs root ({why})")


def closeLater(testCase: SynchronousTestCase, *socks: socket.socket) -> None:
    """
    Close C{socks} at cleanup.
    """
    for sock in socks:
        testCase.addCleanup(sock.close)


def listenOn(
    testCase: SynchronousTestCase, family: int, host: str, dualStack: bool = False
) -> socket.socket:
    """
    A listening socket on C{host}, port 0, closed at cleanup.
    """
    listener = socket.socket(family, socket.SOCK_STREAM)
    closeLater(testCase, listener)
    if dualStack:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        listener.bind((host, 0))
    except OSError as e:
        raise SkipTest(f"cannot listen on {host}: {e}") from e
    listener.listen()
    listener.settimeout(DEADLINE)
    return listener


def accepted(testCase: SynchronousTestCase, listener: socket.socket) -> socket.socket:
    """
    Our side of the next connection to C{listener} (with a deadline).
    """
    server, _ = listener.accept()
    closeLater(testCase, server)
    server.settimeout(DEADLINE)
    return server


def connectedPair(
    testCase: SynchronousTestCase,
    family: int = socket.AF_INET,
    host: str = "127.0.0.1",
    prepare: Callable[[socket.socket], None] = lambda client: None,
) -> tuple[socket.socket, socket.socket]:
    """
    A loopback TCP connection made by this process: (client, server side).
    """
    listener = listenOn(testCase, family, host)
    client = socket.socket(family, socket.SOCK_STREAM)
    closeLater(testCase, client)
    prepare(client)
    client.connect(listener.getsockname())
    return client, accepted(testCase, listener)


def resetAndClose(sock: socket.socket) -> None:
    """
    Close with an RST (SO_LINGER 0): the socket is gone at once, no
    TIME_WAIT.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def pollUntil(predicate: Callable[[], Any], what: str) -> Any:
    """
    Poll C{predicate} (a kernel state change) with a generous deadline.
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def rawAnswer(client: Any, server: Any) -> Any:
    """
    The kernel's unchecked answer for the socket whose local end is
    C{client} and remote end C{server}: an errno or a C{sockdiag._Answer}.
    """
    table = SocketTable()
    try:
        with table._lock:
            return table._ask(sockdiag._endpoint(client), sockdiag._endpoint(server))
    finally:
        table.close()


def ownerOf(client: Any, server: Any) -> Owner:
    """
    L{SocketTable.ownerOf} on a table of its own (no namespace check).
    """
    table = SocketTable()
    try:
        return table.ownerOf(client, server)
    finally:
        table.close()


def fields(peer: Peer) -> dict[str, Any]:
    """
    C{peer} as the helper processes report it (JSON).
    """
    return {"uid": peer.uid, "pid": peer.pid, "reason": peer.unknownReason}


# Helper processes -------------------------------------------------------------

# Every helper starts as root in a fresh interpreter (the virtualenv may not
# be readable by other users), imports what it needs, then becomes its user.
_PRELUDE = """
import ctypes, fcntl, json, os, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from responses_proxy import peers, sockdiag
job = json.loads(sys.argv[2])

def say(**fields):
    sys.stdout.write(json.dumps(fields) + "\\n")
    sys.stdout.flush()

def become(uid):
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

def commands():
    for line in sys.stdin:
        yield line.strip()

def fields(peer):
    return {"uid": peer.uid, "pid": peer.pid, "reason": peer.unknownReason}

def unshare(flags):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        say(unshareFailed=os.strerror(ctypes.get_errno()))
        sys.exit(0)
"""

CONNECT_TCP = """
become(job.get("uid"))
address = tuple(job["address"])
client = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
if job.get("bind"):
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind(tuple(job["bind"]))
client.connect(address)
say(address=client.getsockname()[:2], pid=os.getpid())
for command in commands():
    if command == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    say(done=command)
"""

LISTEN_TCP = """
become(job["uid"])
listener = socket.socket(socket.AF_INET)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(tuple(job["address"]))
listener.listen()
say(address=listener.getsockname())
for command in commands():
    pass
"""

CONNECT_UNIX = """
become(job["uid"])
client = socket.socket(socket.AF_UNIX)
client.connect(job["path"])
say(pid=os.getpid())
for command in commands():
    pass
"""

LOOKUP_IN_NETNS = """
unshare(job["flags"])
server = socket.socket(fileno=job["fd"])
result = {"peer": fields(peers.peerOfSocket(server))}
result["before"] = result["peer"]
if job.get("impostor"):
    # The same 4-tuple, owned by another uid, in this namespace's loopback.
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack_from("H", fcntl.ioctl(control, 0x8913, request), 16)[0]
    fcntl.ioctl(control, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
    os.seteuid(job["impostorUid"])
    listener = socket.socket(socket.AF_INET)
    listener.bind(tuple(job["server"]))
    listener.listen()
    impostor = socket.socket(socket.AF_INET)
    impostor.bind(tuple(job["client"]))
    impostor.connect(tuple(job["server"]))
    os.seteuid(0)
    table = sockdiag.SocketTable()
    owner = table.ownerOf(tuple(job["client"]), tuple(job["server"]))
    result["byTuple"] = owner._asdict()
    if job.get("noCookies"):
        sockdiag._netnsCookie = lambda sock: None
    result["peer"] = fields(peers.peerOfSocket(server))
say(**result)
"""

LOOKUP_IN_USERNS = """
unshare(0x10000000)
with open("/proc/self/uid_map", "w") as f:
    f.write("0 0 1\\n")
say(**{
    name: fields(peers.peerOfSocket(socket.socket(fileno=fd)))
    for name, fd in job["fds"].items()
})
"""


class Helper:
    """
    A helper process running one of the scripts above; it reports JSON
    lines and ends when its stdin is closed (at cleanup at the latest).
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        script: str,
        job: dict[str, Any],
        passFds: Sequence[int] = (),
    ) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(peers.__file__)))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _PRELUDE + script,
                root,
                json.dumps(job),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            pass_fds=tuple(passFds),
            cwd="/",
        )
        self.errors = ""
        testCase.addCleanup(self.stop)

    def receive(self) -> dict[str, Any]:
        """
        The next report (with a deadline); fail with the helper's stderr if
        it ended without one.
        """
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], DEADLINE)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.stop(readErrors=True)
            raise AssertionError(f"helper gave no report: {self.errors}")
        report: dict[str, Any] = json.loads(line)
        if "unshareFailed" in report:
            raise SkipTest(f"unshare() refused: {report['unshareFailed']}")
        return report

    def send(self, command: str) -> dict[str, Any]:
        """
        Send a command; return the report that it was done.
        """
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        return self.receive()

    def stop(self, readErrors: bool = False) -> None:
        """
        Close its stdin and wait for it to end (killed past the deadline);
        keep its stderr in C{self.errors} if asked to.
        """
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        stderr = self.process.stderr
        if readErrors and stderr is not None and not stderr.closed:
            self.errors = stderr.read().decode(errors="replace")
        for stream in (self.process.stdout, stderr):
            if stream is not None and not stream.closed:
                stream.close()


def otherUserClient(
    testCase: SynchronousTestCase,
    listener: socket.socket,
    uid: int = OTHER_UID,
    bind: tuple[str, int] | None = None,
) -> tuple[Helper, dict[str, Any], socket.socket]:
    """
    A connection to C{listener} from a helper running as C{uid}: the
    helper, its report and our side of the connection.
    """
    helper = Helper(
        testCase,
        CONNECT_TCP,
        {"uid": uid, "address": listener.getsockname()[:2], "bind": bind},
    )
    report = helper.receive()
    return helper, report, accepted(testCase, listener)


# Tests ------------------------------------------------------------------------


class PeerTests(SynchronousTestCase):
    """
    L{Peer}, the value.
    """

    def test_known(self) -> None:
        """
        A peer is known exactly when its uid is; uid 0 is known.
        """
        self.assertTrue(Peer(0, None).known)
        self.assertTrue(Peer(1000, 42).known)
        self.assertFalse(Peer(None, None, peers.CLOSED).known)

    def test_frozen(self) -> None:
        """
        A peer cannot be changed after the fact.
        """
        peer = Peer(1000, None)
        with self.assertRaises(FrozenInstanceError):
            peer.uid = 0  # type: ignore[misc]


class TCPTests(SynchronousTestCase):
    """
    TCP over loopback: the client's socket, found by its exact 4-tuple.
    """

    def assertOurs(self, server: socket.socket) -> None:
        """
        The connection C{server} is this process's uid's, without a pid.
        """
        self.assertEqual(peerOfSocket(server), Peer(os.getuid(), None))

    def test_ipv4(self) -> None:
        """
        A connection this process made over 127.0.0.1 is ours; TCP gives no
        pid.
        """
        _, server = connectedPair(self)
        self.assertOurs(server)

    def test_ipv6(self) -> None:
        """
        Over ::1 too.
        """
        _, server = connectedPair(self, socket.AF_INET6, "::1")
        self.assertOurs(server)

    def test_otherLoopbackAddress(self) -> None:
        """
        From another address of 127.0.0.0/8 (the client's local address is
        not ours).
        """

        def bind(client: socket.socket) -> None:
            client.bind(("127.0.0.2", 0))

        _, server = connectedPair(self, prepare=bind)
        self.assertEqual(server.getpeername()[0], "127.0.0.2")
        self.assertOurs(server)

    def test_ipv4MappedOnDualStackListener(self) -> None:
        """
        An IPv4 client of a dual-stack (::) listener appears as
        ::ffff:127.0.0.1; the kernel keeps the client's socket as IPv4.
        """
        listener = listenOn(self, socket.AF_INET6, "::", dualStack=True)
        client = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
        closeLater(self, client)
        server = accepted(self, listener)
        self.assertEqual(server.getpeername()[0], "::ffff:127.0.0.1")
        self.assertOurs(server)

    def test_ipv6ClientOfIPv4Listener(self) -> None:
        """
        An IPv6 socket connected to ::ffff:127.0.0.1: the kernel reports it
        as IPv6 with mapped addresses, for an IPv4 question.
        """
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        client = socket.socket(socket.AF_INET6)
        closeLater(self, client)
        client.connect(("::ffff:127.0.0.1", listener.getsockname()[1]))
        self.assertOurs(accepted(self, listener))

    def test_clientBoundToLoopbackDevice(self) -> None:
        """
        A client bound to C{lo} (SO_BINDTODEVICE, as C{curl --interface lo}
        does) is found: the question names the interface its packets
        arrive on.
        """

        def bind(client: socket.socket) -> None:
            try:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
            except PermissionError as e:
                raise SkipTest(f"SO_BINDTODEVICE refused: {e}") from e

        _, server = connectedPair(self, prepare=bind)
        self.assertOurs(server)

    def test_otherUser(self) -> None:
        """
        A connection made by another uid is that uid's.
        """
        requireRoot("to connect as another uid")
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        _, _, server = otherUserClient(self, listener)
        self.assertEqual(peerOfSocket(server), Peer(OTHER_UID, None))

    def test_otherUserIPv6(self) -> None:
        """
        And over ::1.
        """
        requireRoot("to connect as another uid")
        listener = listenOn(self, socket.AF_INET6, "::1")
        _, _, server = otherUserClient(self, listener)
        self.assertEqual(peerOfSocket(server), Peer(OTHER_UID, None))

    def test_listenerOnClientPortIsNotTheClient(self) -> None:
        """
        Another uid listening on the client's port (on the wildcard address,
        or on the client's own once it is free) is never taken for the
        client: while the client lives, the kernel finds the client; once it
        is gone, it falls back to the listener, and that answer is refused.
        """
        requireRoot("to connect and listen as other uids")
        # Hold the client's port on every address (bound, not listening), so
        # that no other socket on the host takes it meanwhile.
        reserve = socket.socket(socket.AF_INET)
        closeLater(self, reserve)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.bind(("0.0.0.0", 0))
        port = reserve.getsockname()[1]
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        client, report, server = otherUserClient(
            self, listener, uid=THIRD_UID, bind=("127.0.0.2", port)
        )
        clientAddress = ("127.0.0.2", port)
        self.assertEqual(tuple(report["address"]), clientAddress)
        serverAddress = server.getsockname()
        wildcard = Helper(
            self, LISTEN_TCP, {"uid": OTHER_UID, "address": ("0.0.0.0", port)}
        )
        wildcard.receive()
        self.assertEqual(peerOfSocket(server), Peer(THIRD_UID, None))

        client.send("reset")
        self.assertFalse(peerOfSocket(server).known)
        for address in ["0.0.0.0", "127.0.0.2"]:
            if address == "0.0.0.0":
                helper = wildcard
            else:
                helper = Helper(
                    self, LISTEN_TCP, {"uid": OTHER_UID, "address": (address, port)}
                )
                helper.receive()
            answer = rawAnswer(clientAddress, serverAddress)
            self.assertEqual((answer.state, answer.uid), (10, OTHER_UID), address)
            self.assertEqual(
                ownerOf(clientAddress, serverAddress),
                Owner(None, sockdiag.LISTENER_ONLY),
            )
            helper.stop()

    def test_clientReset(self) -> None:
        """
        A client that is gone (reset) before the lookup is unknown.
        """
        client, server = connectedPair(self)
        resetAndClose(client)
        peer = peerOfSocket(server)
        self.assertIsNone(peer.uid)
        self.assertIn(peer.unknownReason, (peers.CLOSED, peers.NOT_FOUND))

    def test_clientClosedFirst(self) -> None:
        """
        A client that closed its end (its socket now an orphan in FIN_WAIT2)
        is still its uid's, or unknown; never anyone else's.
        """
        requireRoot("to connect as another uid")
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        client, _, server = otherUserClient(self, listener)
        client.send("close")
        self.assertEqual(server.recv(1), b"")
        self.assertIn(peerOfSocket(server).uid, (OTHER_UID, None))

    def test_timeWait(self) -> None:
        """
        A client in TIME_WAIT is reported with uid 0, which would be root:
        it is refused as closed.
        """
        requireRoot("to connect as another uid")
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        client, report, server = otherUserClient(self, listener)
        clientAddress = tuple(report["address"])
        serverAddress = server.getsockname()
        client.send("close")
        self.assertEqual(server.recv(1), b"")
        server.close()

        def timeWait() -> Any:
            answer = rawAnswer(clientAddress, serverAddress)
            return not isinstance(answer, int) and answer.state == 6 and answer

        self.assertEqual(pollUntil(timeWait, "TIME_WAIT").uid, 0)
        self.assertEqual(
            ownerOf(clientAddress, serverAddress), Owner(None, sockdiag.CLOSED)
        )

    def test_otherNetworkNamespace(self) -> None:
        """
        Looked up from another network namespace, the connection is unknown,
        and said to be elsewhere.
        """
        _, server = connectedPair(self)
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        helper = Helper(
            self,
            LOOKUP_IN_NETNS,
            {"flags": flags, "fd": server.fileno()},
            passFds=[server.fileno()],
        )
        expected = peers.OTHER_NAMESPACE
        if sockdiag._netnsCookie(server) is None:
            expected = peers.NOT_FOUND
        self.assertEqual(helper.receive()["peer"], fields(Peer(None, None, expected)))

    def assertImpostorRefused(self, noCookies: bool) -> str:
        """
        Make an impostor of C{client} in another namespace; return why our
        connection's lookup from there was refused.
        """
        requireRoot("to make a network namespace with another uid's sockets")
        client, server = connectedPair(self)
        helper = Helper(
            self,
            LOOKUP_IN_NETNS,
            {
                "flags": CLONE_NEWNET,
                "fd": server.fileno(),
                "impostor": True,
                "impostorUid": OTHER_UID,
                "client": client.getsockname(),
                "server": server.getsockname(),
                "noCookies": noCookies,
            },
            passFds=[server.fileno()],
        )
        report = helper.receive()
        self.assertEqual(report["byTuple"], Owner(OTHER_UID)._asdict())
        self.assertIsNone(report["before"]["uid"])
        self.assertIsNone(report["peer"]["uid"])
        self.assertEqual(peerOfSocket(server), Peer(os.getuid(), None))
        reason: str = report["peer"]["reason"]
        return reason

    def test_impostorInOtherNetworkNamespace(self) -> None:
        """
        Another network namespace can hold a socket with the very same
        4-tuple, owned by another uid: our connection is not its.
        """
        if sockdiag._netnsCookie(socket.socket()) is None:
            raise SkipTest("the kernel has no SO_NETNS_COOKIE (before Linux 5.14)")
        self.assertEqual(self.assertImpostorRefused(False), peers.OTHER_NAMESPACE)

    def test_impostorWithoutNamespaceCookies(self) -> None:
        """
        On kernels without namespace cookies, the table must see our own
        socket (by inode) before it is believed about the client's.
        """
        self.assertEqual(self.assertImpostorRefused(True), peers.NOT_FOUND)

    def test_unmappedUids(self) -> None:
        """
        In a user namespace, a uid that is not mapped there arrives as the
        overflow uid (65534): unknown, not nobody. A mapped one stays known.
        """
        requireRoot("to connect as another uid")
        listener = listenOn(self, socket.AF_INET, "127.0.0.1")
        _, _, otherServer = otherUserClient(self, listener)
        _, rootServer = connectedPair(self)
        unixServer = unixConnection(self, OTHER_UID)[1]
        fds = {
            "other": otherServer.fileno(),
            "root": rootServer.fileno(),
            "unix": unixServer.fileno(),
        }
        helper = Helper(
            self, LOOKUP_IN_USERNS, {"fds": fds}, passFds=list(fds.values())
        )
        report = helper.receive()
        unmapped = fields(Peer(None, None, peers.UNMAPPED))
        self.assertEqual(report["other"], unmapped)
        self.assertEqual(report["unix"], unmapped)
        self.assertEqual(report["root"], fields(Peer(0, None)))


def unixConnection(
    testCase: SynchronousTestCase, uid: int
) -> tuple[dict[str, Any], socket.socket]:
    """
    A Unix-socket connection from a helper running as C{uid}: its report
    and our side.
    """
    directory = tempfile.mkdtemp()
    testCase.addCleanup(shutil.rmtree, directory)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "socket")
    listener = socket.socket(socket.AF_UNIX)
    closeLater(testCase, listener)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen()
    listener.settimeout(DEADLINE)
    helper = Helper(testCase, CONNECT_UNIX, {"uid": uid, "path": path})
    return helper.receive(), accepted(testCase, listener)


class UnixTests(SynchronousTestCase):
    """
    Unix sockets: C{SO_PEERCRED}.
    """

    def test_sameProcess(self) -> None:
        """
        Our own connection: our uid and pid.
        """
        one, other = socket.socketpair()
        closeLater(self, one, other)
        self.assertEqual(peerOfSocket(one), Peer(os.getuid(), os.getpid()))

    def test_otherUser(self) -> None:
        """
        A client running as another uid: that uid and its pid.
        """
        requireRoot("to connect as another uid")
        report, server = unixConnection(self, OTHER_UID)
        self.assertEqual(peerOfSocket(server), Peer(OTHER_UID, report["pid"]))

    def test_notConnected(self) -> None:
        """
        A socket without a peer has no credentials.
        """
        sock = socket.socket(socket.AF_UNIX)
        closeLater(self, sock)
        peer = peerOfSocket(sock)
        self.assertIsNone(peer.uid)
        self.assertIn("no peer credentials", peer.unknownReason or "")

    def test_closed(self) -> None:
        """
        A closed socket is a closed connection.
        """
        one, other = socket.socketpair()
        closeLater(self, other)
        one.close()
        self.assertEqual(peerOfSocket(one), Peer(None, None, peers.CLOSED))


class OtherSocketTests(SynchronousTestCase):
    """
    Sockets that are neither Unix nor TCP.
    """

    def test_udp(self) -> None:
        """
        A UDP socket is not a local connection this module can attribute.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closeLater(self, sock)
        self.assertEqual(peerOfSocket(sock), Peer(None, None, peers.NOT_LOCAL))

    def test_closedTCP(self) -> None:
        """
        Our side of a TCP connection, already closed: closed.
        """
        _, server = connectedPair(self)
        server.close()
        self.assertEqual(peerOfSocket(server), Peer(None, None, peers.CLOSED))


# The kernel's side, played by the test ----------------------------------------


class FakeKernel:
    """
    The other end of an C{AF_UNIX} datagram pair given to L{SocketTable} as
    its netlink socket: it records requests and returns queued answers
    (queued before the question: the real kernel answers within C{send}).
    """

    def __init__(self) -> None:
        self.ends: list[socket.socket] = []

    def open(self) -> socket.socket:
        kernel, table = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        table.setblocking(False)
        self.ends.append(kernel)
        return table

    def queue(self, datagram: bytes) -> None:
        self.ends[-1].send(datagram)

    def requests(self) -> list[bytes]:
        kernel = self.ends[-1]
        kernel.setblocking(False)
        received = []
        while True:
            try:
                received.append(kernel.recv(4096))
            except BlockingIOError:
                return received

    def close(self) -> None:
        for end in self.ends:
            end.close()


CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)


def answer(
    sequence: int = 1,
    state: int = 1,
    uid: int = 1000,
    client: tuple[str, int] = CLIENT,
    server: tuple[str, int] = SERVER,
    family: int = socket.AF_INET,
) -> bytes:
    """
    An C{inet_diag_msg} answer as the kernel sends it.
    """

    def packed(host: str) -> bytes:
        if family == socket.AF_INET:
            return socket.inet_aton(host).ljust(16, b"\0")
        return socket.inet_pton(socket.AF_INET6, host)

    body = sockdiag._ANSWER.pack(
        sockdiag._ANSWER.size + 8,
        sockdiag.SOCK_DIAG_BY_FAMILY,
        0,
        sequence,
        0,
        family,
        state,
        0,
        0,
        socket.htons(client[1]),
        socket.htons(server[1]),
        packed(client[0]),
        packed(server[0]),
        0,
        0,
        0,
        0,
        0,
        0,
        uid,
        12345,
    )
    return body + b"\x05\x00\x08\x00\x00\x00\x00\x00"  # an attribute, ignored


def error(code: int, sequence: int = 1) -> bytes:
    """
    An C{NLMSG_ERROR} answer with C{code} (positive; sent negated).
    """
    return sockdiag._ERROR.pack(
        36, sockdiag.NLMSG_ERROR, 0, sequence, 0, -code
    ) + bytes(16)


class FakeKernelTests(SynchronousTestCase):
    """
    The exchange and the checks, against answers played by the test (unit
    tests, in memory: no real netlink socket).
    """

    def setUp(self) -> None:
        self.kernel = FakeKernel()
        self.addCleanup(self.kernel.close)
        self.table = SocketTable(self.kernel.open)
        self.addCleanup(self.table.close)
        self.table._ensureOpen()

    def lookup(self, *answers: bytes) -> Owner:
        """
        Queue C{answers}, then look up L{CLIENT} -> L{SERVER}.
        """
        for datagram in answers:
            self.kernel.queue(datagram)
        return self.table.ownerOf(CLIENT, SERVER)

    def test_requestIsExactNotDump(self) -> None:
        """
        The question is one C{inet_diag_req_v2} for the client's socket:
        its local end is our peer, its remote end us, with no dump flag,
        no cookie check, and the loopback interface.
        """
        self.assertEqual(self.lookup(answer()), Owner(1000))
        [request] = self.kernel.requests()
        f = sockdiag._REQUEST.unpack(request)
        self.assertEqual(
            f[:5], (72, sockdiag.SOCK_DIAG_BY_FAMILY, sockdiag.NLM_F_REQUEST, 1, 0)
        )
        self.assertEqual(f[5:9], (socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFFFFF))
        self.assertEqual((socket.ntohs(f[9]), socket.ntohs(f[10])), (40000, 8080))
        self.assertEqual(f[11][:4], socket.inet_aton("127.0.0.1"))
        self.assertEqual(f[12][:4], socket.inet_aton("127.0.0.1"))
        self.assertEqual(f[13], socket.if_nametoindex("lo"))
        self.assertEqual(f[14:], (0xFFFFFFFF, 0xFFFFFFFF))

    def test_sequenceNumbersAdvance(self) -> None:
        """
        Each question has its own sequence number.
        """
        self.lookup(answer(sequence=1))
        self.assertEqual(self.lookup(answer(sequence=2, uid=1001)), Owner(1001))

    def test_staleAnswerSkipped(self) -> None:
        """
        An answer left over from an earlier question is not taken for this
        one's.
        """
        self.assertEqual(
            self.lookup(answer(sequence=77, uid=4242), answer(uid=1000)),
            Owner(1000),
        )

    def test_notFound(self) -> None:
        """
        ENOENT: the client's socket is not in this namespace's table.
        """
        self.assertEqual(
            self.lookup(error(errno.ENOENT)), Owner(None, sockdiag.NOT_FOUND)
        )

    def test_otherError(self) -> None:
        """
        Another errno is reported as such.
        """
        owner = self.lookup(error(errno.EPERM))
        self.assertIsNone(owner.uid)
        self.assertIn(os.strerror(errno.EPERM), owner.reason or "")

    def test_shortAnswer(self) -> None:
        """
        A datagram shorter than a header: unknown, and a fresh socket next
        time.
        """
        owner = self.lookup(b"\x01" * 10)
        self.assertIn("short answer", owner.reason or "")
        self.assertIsNone(self.table._socket)
        self.table._ensureOpen()
        self.assertEqual(self.lookup(answer(sequence=2)), Owner(1000))

    def test_truncatedAnswer(self) -> None:
        """
        An answer cut short of the fixed C{inet_diag_msg}: unknown.
        """
        owner = self.lookup(answer()[:60])
        self.assertIsNone(owner.uid)
        self.assertIn("short or unexpected", owner.reason or "")

    def test_noAnswer(self) -> None:
        """
        No answer at all: unknown at once, no waiting.
        """
        self.assertEqual(self.lookup(), Owner(None, "no answer from the socket table"))

    def test_listener(self) -> None:
        """
        The kernel's fallback, a listener on the client's port: refused.
        """
        listener = answer(
            state=10, uid=4242, client=("0.0.0.0", 40000), server=("0.0.0.0", 0)
        )
        self.assertEqual(self.lookup(listener), Owner(None, sockdiag.LISTENER_ONLY))

    def test_otherSocket(self) -> None:
        """
        An answer for any other 4-tuple: refused.
        """
        for client, server in [
            (("127.0.0.1", 40001), SERVER),
            (CLIENT, ("127.0.0.1", 8081)),
            (("127.0.0.2", 40000), SERVER),
            (CLIENT, ("127.0.0.3", 8080)),
        ]:
            owner = self.lookup(
                answer(sequence=self.table._sequence + 1, client=client, server=server)
            )
            self.assertIsNone(owner.uid, (client, server))

    def test_stateWithoutOwner(self) -> None:
        """
        TIME_WAIT and CLOSE are closed; SYN_SENT and request sockets have no
        owner to speak of: all unknown.
        """
        for state in (2, 3, 6, 7, 12):
            owner = self.lookup(
                answer(sequence=self.table._sequence + 1, state=state, uid=0)
            )
            self.assertIsNone(owner.uid, state)

    def test_ownedStates(self) -> None:
        """
        The states of a connected client socket, closing or not, give its
        owner.
        """
        for state in (1, 4, 5, 8, 9, 11):
            owner = self.lookup(answer(sequence=self.table._sequence + 1, state=state))
            self.assertEqual(owner, Owner(1000), state)

    def test_mappedAnswer(self) -> None:
        """
        An IPv6 socket with v4-mapped addresses answers an IPv4 question.
        """
        mapped = answer(
            family=socket.AF_INET6,
            client=("::ffff:127.0.0.1", 40000),
            server=("::ffff:127.0.0.1", 8080),
        )
        self.assertEqual(self.lookup(mapped), Owner(1000))

    def test_unavailable(self) -> None:
        """
        Without netlink (a sandbox that forbids C{AF_NETLINK}): unknown,
        with the reason.
        """

        def refuse() -> socket.socket:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))

        owner = SocketTable(refuse).ownerOf(CLIENT, SERVER)
        self.assertEqual(
            owner,
            Owner(
                None,
                f"socket table unavailable: {os.strerror(errno.EAFNOSUPPORT)}",
            ),
        )


class KeptSocketTests(SynchronousTestCase):
    """
    One netlink socket serves every lookup of a table.
    """

    def test_openedOnce(self) -> None:
        """
        Many lookups, one socket.
        """
        opened: list[socket.socket] = []

        def openSocket() -> socket.socket:
            opened.append(sockdiag.openDiagSocket())
            return opened[-1]

        table = SocketTable(openSocket)
        self.addCleanup(table.close)
        _, server = connectedPair(self)
        for _ in range(3):
            self.assertEqual(table.ownerOfPeer(server), Owner(os.getuid()))
        self.assertEqual(len(opened), 1)

    def test_forkedChildHasItsOwn(self) -> None:
        """
        A forked child does not share the parent's netlink socket: it opens
        its own, in its own network namespace if it moved to another one
        (root only), and the parent's keeps working.
        """
        _, server = connectedPair(self)
        self.assertTrue(peerOfSocket(server).known)
        parentSocket = sockdiag._table()._socket
        readEnd, writeEnd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave, whatever happens
            try:
                report: dict[str, Any] = {"tables": len(sockdiag._tables)}
                if os.geteuid() == 0:
                    libc = ctypes.CDLL(None, use_errno=True)
                    report["moved"] = libc.unshare(CLONE_NEWNET) == 0
                report["peer"] = fields(peerOfSocket(server))
            except BaseException as e:
                report = {"error": repr(e)}
            finally:
                os.write(writeEnd, json.dumps(report).encode())
                os._exit(0)
        os.close(writeEnd)
        self.addCleanup(os.close, readEnd)
        ready, _, _ = select.select([readEnd], [], [], DEADLINE)
        report = json.loads(os.read(readEnd, 65536) if ready else b"{}")
        os.waitpid(pid, 0)
        self.assertNotIn("error", report)
        self.assertEqual(report["tables"], 0)
        if report.get("moved"):
            expected = Peer(None, None, peers.OTHER_NAMESPACE)
        else:
            expected = Peer(os.getuid(), None)
        self.assertEqual(report["peer"], fields(expected))
        self.assertEqual(peerOfSocket(server), Peer(os.getuid(), None))
        self.assertIs(sockdiag._table()._socket, parentSocket)


# Twisted transports -----------------------------------------------------------


class _Recorder(protocol.Protocol):
    """
    Tells when it is connected (with itself) and when it is lost.
    """

    def __init__(self, made: Deferred[_Recorder]) -> None:
        self.made = made
        self.gone = False
        self.waiting: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.made.callback(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        for waiting in self.waiting:
            waiting.callback(None)

    def whenLost(self) -> Deferred[None]:
        if self.gone:
            return succeed(None)
        self.waiting.append(Deferred())
        return self.waiting[-1]


class TransportTests(TestCase):
    """
    L{peerOf} on the transports Twisted gives protocols (global reactor,
    real sockets).
    """

    async def serve(
        self,
        listen: Callable[[Any], Any],
        connect: Callable[[Any], socket.socket],
        wrap: Callable[[Any], Any] = lambda f: f,
    ) -> tuple[_Recorder, socket.socket]:
        """
        Listen, connect a plain socket, and return the server-side
        protocol (its transport is the one Twisted gave it) and the client.
        """
        made: Deferred[_Recorder] = Deferred()
        factory = protocol.Factory()
        factory.buildProtocol = lambda addr: _Recorder(made)  # type: ignore[method-assign]
        port = listen(wrap(factory))
        self.addCleanup(port.stopListening)
        client = connect(port.getHost())
        server = await made

        def close() -> Deferred[None]:
            client.close()
            assert server.transport is not None
            server.transport.loseConnection()
            return server.whenLost()

        self.addCleanup(close)
        return server, client

    async def serveTCP(
        self, interface: str = "127.0.0.1", wrap: Callable[[Any], Any] = lambda f: f
    ) -> Any:
        """
        The transport of a TCP connection to a port on C{interface}.
        """

        def connect(host: Any) -> socket.socket:
            return socket.create_connection((host.host, host.port))

        server, _ = await self.serve(
            lambda f: reactor.listenTCP(0, f, interface=interface), connect, wrap
        )
        return server.transport

    async def test_tcpServer(self) -> None:
        """
        A C{tcp.Server} over 127.0.0.1: ours, no pid.
        """
        self.assertEqual(peerOf(await self.serveTCP()), Peer(os.getuid(), None))

    async def test_tcpServerIPv6(self) -> None:
        """
        A C{tcp.Server} over ::1.
        """
        listenOn(self, socket.AF_INET6, "::1")  # or skip: no IPv6 loopback
        transport = await self.serveTCP("::1")
        self.assertEqual(peerOf(transport), Peer(os.getuid(), None))

    async def test_unixServer(self) -> None:
        """
        A C{unix.Server}: our uid and pid.
        """
        path = os.path.join(tempfile.mkdtemp(), "socket")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))

        def connect(host: Any) -> socket.socket:
            client = socket.socket(socket.AF_UNIX)
            client.connect(host.name)
            return client

        server, _ = await self.serve(lambda f: reactor.listenUNIX(path, f), connect)
        self.assertEqual(peerOf(server.transport), Peer(os.getuid(), os.getpid()))

    async def test_wrappedTransport(self) -> None:
        """
        Under a protocol wrapper (C{WrappingFactory}), the socket beneath.
        """
        transport = await self.serveTCP(wrap=WrappingFactory)
        self.assertEqual(peerOf(transport), Peer(os.getuid(), None))

    async def test_tlsTransport(self) -> None:
        """
        Under TLS, whose handle is its OpenSSL connection, the socket
        beneath.
        """
        pki = makeTestPKI(self.mktemp())
        context = serverContext(pki.serverCert, pki.serverKey)
        transport = await self.serveTCP(
            wrap=lambda f: TLSMemoryBIOFactory(context, False, f)
        )
        self.assertEqual(peerOf(transport), Peer(os.getuid(), None))

    async def test_afterConnectionLost(self) -> None:
        """
        Once Twisted has let go of the socket, the connection is closed.
        """
        server, client = await self.serve(
            lambda f: reactor.listenTCP(0, f, interface="127.0.0.1"),
            lambda host: socket.create_connection((host.host, host.port)),
        )
        client.close()
        await server.whenLost()
        self.assertEqual(peerOf(server.transport), Peer(None, None, peers.CLOSED))

    def test_stringTransport(self) -> None:
        """
        A StringTransport has no socket: not a local socket.
        """
        self.assertEqual(peerOf(StringTransport()), Peer(None, None, peers.NOT_LOCAL))

    def test_otherObjects(self) -> None:
        """
        Neither has anything else.
        """
        for thing in (None, object(), "tcp.Server"):
            self.assertEqual(peerOf(thing), Peer(None, None, peers.NOT_LOCAL))


# User names -------------------------------------------------------------------


class UserNamesTests(SynchronousTestCase):
    """
    L{UserNames}: uid to name, once per uid.
    """

    def test_resolvedOnce(self) -> None:
        """
        The second question about a uid does not look it up again.
        """
        calls: list[int] = []

        def lookup(uid: int) -> str | None:
            calls.append(uid)
            return f"user{uid}"

        names = UserNames(lookup)
        self.assertEqual(names.nameOf(1000), "user1000")
        self.assertEqual(names.nameOf(1000), "user1000")
        self.assertEqual(names.nameOf(1001), "user1001")
        self.assertEqual(calls, [1000, 1001])

    def test_nameless(self) -> None:
        """
        A uid without a name is C{None}, also cached.
        """
        calls: list[int] = []

        def lookup(uid: int) -> str | None:
            calls.append(uid)
            return None

        names = UserNames(lookup)
        self.assertIsNone(names.nameOf(4242))
        self.assertIsNone(names.nameOf(4242))
        self.assertEqual(calls, [4242])

    def test_noUid(self) -> None:
        """
        An unknown peer has no name, and nothing is looked up.
        """
        names = UserNames(lambda uid: self.fail("looked up"))
        self.assertIsNone(names.nameOf(None))

    def test_passwd(self) -> None:
        """
        By default, the passwd database: our own name, and C{None} for a
        uid without an entry.
        """
        names = UserNames()
        self.assertEqual(names.nameOf(os.getuid()), pwd.getpwuid(os.getuid()).pw_name)
        taken = {entry.pw_uid for entry in pwd.getpwall()}
        unused = next(uid for uid in range(123456789, 2**32) if uid not in taken)
        self.assertIsNone(names.nameOf(unused))

#!/usr/bin/env python3
"""
Micro-benchmark: what attributing a connection to its user costs
(L{responses_proxy.peers}, L{responses_proxy.sockdiag}), next to what
accepting the connection costs.

  .venv/bin/python bench/peerlookup.py [--count 20000] [--accepts 5000]

Every call is timed on its own (perf_counter_ns); the table gives the median
and the 99th percentile in microseconds. Rows:

  - TCP v4 / v6 with the netlink socket kept open (what the proxy does),
    TCP v4 with a new netlink socket per lookup (the alternative), and the
    netlink exchange alone (without reading the socket's addresses and
    namespace: what the pyroute2 row does);
  - Unix sockets (SO_PEERCRED);
  - pyroute2's exact lookup, if pyroute2 is importable (it is not a
    dependency: run this script with an interpreter that has it to compare);
  - accepting a connection: the kernel alone (connect + accept + close), and
    Twisted's listening port handing it to an HTTP channel (C{doRead}).

The lookup runs once per new connection, so the last lines compare it with
an accept.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responses_proxy import peers, sockdiag  # noqa: E402


def timed(call: Callable[[], object], count: int) -> list[float]:
    """
    Microseconds taken by each of C{count} calls (after a short warm-up).
    """
    for _ in range(min(count, 200)):
        call()
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        for _ in range(count):
            start = clock()
            call()
            samples.append((clock() - start) / 1000)
    finally:
        gc.enable()
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def tcpPair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2])
    server, _ = listener.accept()
    listener.close()
    return client, server


def checked(peer: peers.Peer | sockdiag.Owner) -> object:
    if peer.uid != os.getuid():
        raise SystemExit(f"lookup failed: {peer}")
    return peer


def perLookupSocket(server: socket.socket) -> Callable[[], object]:
    def lookup() -> object:
        table = sockdiag.SocketTable()
        try:
            return checked(table.ownerOfPeer(server))
        finally:
            table.close()

    return lookup


def pyroute2Lookup(server: socket.socket) -> Callable[[], object] | str:
    """
    The same exact (not dump) request through pyroute2, or why not.
    """
    try:
        from pyroute2.netlink import NLM_F_REQUEST  # type: ignore[import-not-found,unused-ignore]
        from pyroute2.netlink.diag import (  # type: ignore[import-not-found,unused-ignore]
            SOCK_DIAG_BY_FAMILY,
            DiagSocket,
            inet_diag_req,
        )
    except ImportError:
        return "pyroute2 not installed"
    diag = DiagSocket()
    diag.bind()
    peer, local = server.getpeername(), server.getsockname()

    def address(host: str) -> tuple[int, int, int, int]:
        return (struct.unpack("!I", socket.inet_aton(host))[0], 0, 0, 0)

    def lookup() -> object:
        request = inet_diag_req()
        request["sdiag_family"] = socket.AF_INET
        request["sdiag_protocol"] = socket.IPPROTO_TCP
        request["idiag_ext"] = 0
        request["idiag_states"] = 0xFFFFFFFF
        request["idiag_sport"] = peer[1]
        request["idiag_dport"] = local[1]
        request["idiag_src"] = address(peer[0])
        request["idiag_dst"] = address(local[0])
        request["idiag_if"] = 0
        request["idiag_cookie"] = 0xFFFFFFFFFFFFFFFF
        answers = tuple(diag.nlm_request(request, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST))
        if answers[0]["idiag_uid"] != os.getuid():
            raise SystemExit(f"pyroute2 lookup failed: {answers}")
        return answers

    return lookup


def kernelAccept(count: int) -> list[float]:
    """
    connect + accept + close (client resets: no TIME_WAIT piles up).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    address = listener.getsockname()
    linger = struct.pack("ii", 1, 0)

    def once() -> None:
        client = socket.socket()
        client.connect(address)
        server, _ = listener.accept()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        client.close()
        server.close()

    try:
        return timed(once, count)
    finally:
        listener.close()


def twistedAccept(count: int) -> list[float] | str:
    """
    Twisted's port accepting a connection and making an HTTPChannel for it
    (C{doRead}, without the reactor loop), plus the same connect and close.
    """
    try:
        from twisted.internet import reactor
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.resource import Resource
        from twisted.web.server import Site
    except ImportError:
        return "Twisted not installed"
    made: list[Any] = []
    site = Site(Resource())
    original = site.buildProtocol

    def buildProtocol(addr: Any) -> Any:
        protocol = original(addr)
        made.append(protocol)
        return protocol

    site.buildProtocol = buildProtocol  # type: ignore[method-assign]
    listening: Any = reactor  # its stub lacks listenTCP
    port = listening.listenTCP(0, site, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    linger = struct.pack("ii", 1, 0)
    done = Failure(ConnectionDone())

    def once() -> None:
        client = socket.socket()
        client.connect(address)
        port.doRead()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        client.close()
        protocol = made.pop()
        # The HTTP channel is behind Twisted's protocol-negotiation wrapper.
        getattr(protocol, "_channel", protocol).transport.connectionLost(done)

    try:
        return timed(once, count)
    finally:
        port.stopListening()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="lookups per row")
    parser.add_argument("--accepts", type=int, default=5000, help="accepts per row")
    options = parser.parse_args()
    count = options.count

    rows: list[tuple[str, list[float] | str]] = []
    v4client, v4server = tcpPair(socket.AF_INET, "127.0.0.1")
    rows.append(
        (
            "TCP v4, kept netlink socket",
            timed(lambda: checked(peers.peerOfSocket(v4server)), count),
        )
    )
    rows.append(
        ("TCP v4, netlink socket per lookup", timed(perLookupSocket(v4server), count))
    )
    table = sockdiag.SocketTable()
    ends = (v4client.getsockname(), v4server.getsockname())
    rows.append(
        (
            "TCP v4, the exchange alone (ownerOf)",
            timed(lambda: checked(table.ownerOf(*ends)), count),
        )
    )
    try:
        v6client, v6server = tcpPair(socket.AF_INET6, "::1")
    except OSError as e:
        rows.append(("TCP v6, kept netlink socket", f"no ::1 ({e})"))
    else:
        rows.append(
            (
                "TCP v6, kept netlink socket",
                timed(lambda: checked(peers.peerOfSocket(v6server)), count),
            )
        )
    one, other = socket.socketpair()
    rows.append(("Unix, SO_PEERCRED", timed(lambda: peers.peerOfSocket(one), count)))
    viaPyroute2 = pyroute2Lookup(v4server)
    if isinstance(viaPyroute2, str):
        rows.append(("TCP v4, pyroute2 exact lookup", viaPyroute2))
    else:
        rows.append(
            ("TCP v4, pyroute2 exact lookup", timed(viaPyroute2, max(count // 10, 1)))
        )
    kernel = kernelAccept(options.accepts)
    rows.append(("accept: kernel (connect+accept+close)", kernel))
    twisted = twistedAccept(options.accepts)
    rows.append(("accept: Twisted port -> HTTPChannel", twisted))

    print(f"peer lookup cost, microseconds per call ({count} lookups per row)")
    print(f"{'what':<40} {'median':>8} {'p99':>8} {'calls':>7}")
    medians: dict[str, float] = {}
    for name, samples in rows:
        if isinstance(samples, str):
            print(f"{name:<40} {'-':>8} {'-':>8}   ({samples})")
            continue
        median, p99 = summary(samples)
        medians[name] = median
        print(f"{name:<40} {median:8.2f} {p99:8.2f} {len(samples):7d}")
    lookup = medians["TCP v4, kept netlink socket"]
    print()
    for name, samples in rows[-2:]:
        if not isinstance(samples, str):
            print(f"TCP v4 lookup = {100 * lookup / medians[name]:.0f} % of {name}")
    for sock in (v4client, v4server, one, other):
        sock.close()


if __name__ == "__main__":
    main()

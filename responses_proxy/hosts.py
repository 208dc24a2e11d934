# -*- test-case-name: tests.test_admission -*-
"""
The Host check: a request must name the loopback host it was sent to.

A DNS-rebinding page makes the browser send requests to 127.0.0.1 under
the page's own name (C{Host: attacker.example:PORT}), and some of them (a
page's favicon, say) carry neither C{Origin} nor C{Sec-Fetch-*}. The
proxy's clients address it as 127.0.0.1, C{[::1]} or C{localhost}, so
anything else is refused (403 C{host_not_allowed}) before a byte is
forwarded; C{--allow-host NAME} admits other names for setups that need
them (e.g. a name in /etc/hosts).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from responses_proxy.admission import Refusal, RequestHead

_PORT = re.compile(rb"[0-9]{1,5}")


def _hostName(value: bytes) -> bytes | None:
    """
    The host part of a C{Host} value (lower case, brackets kept for IPv6),
    or L{None} when the value is malformed.
    """
    value = value.strip().lower()
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, _, port = value.partition(b":")
        rest = b":" + port if _ else b""
    if rest and not (rest.startswith(b":") and _PORT.fullmatch(rest[1:])):
        return None
    return host or None


def isLoopbackName(host: bytes) -> bool:
    """
    An IPv4 literal in 127.0.0.0/8, C{[::1]}, or C{localhost}.
    """
    if host == b"localhost":
        return True
    if host == b"[::1]":
        return True
    try:
        address = ipaddress.IPv4Address(host.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return address.is_loopback


# How many Host values' verdicts are remembered: clients use one or two.
MAX_REMEMBERED = 64


class HostCheck:
    """
    Admit a request whose single C{Host} names loopback or an allowed name.

    The verdict on each admitted value is remembered (a few of them): the
    same client sends the same C{Host} every time, and parsing an address
    is most of the check's cost. Refused values are not remembered, so a
    stream of made-up names cannot push the real ones out.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = {name.lower().encode("idna") for name in allowed}
        self._admitted: set[bytes] = set()

    def __call__(self, head: RequestHead) -> Refusal | None:
        values = head.headers.getRawHeaders(b"host") or []
        if len(values) != 1:
            return self._refuse("the request must have exactly one Host header")
        if values[0] in self._admitted:
            return None
        host = _hostName(values[0])
        if host is not None and (isLoopbackName(host) or host in self._allowed):
            if len(self._admitted) < MAX_REMEMBERED:
                self._admitted.add(values[0])
            return None
        shown = values[0][:100].decode("latin-1")
        return self._refuse(
            f"Host {shown!r} is not this proxy's loopback address (use 127.0.0.1 "
            "or localhost; --allow-host admits other names)"
        )

    def _refuse(self, why: str) -> Refusal:
        return Refusal(403, "host_not_allowed", f"Refused: {why}.")

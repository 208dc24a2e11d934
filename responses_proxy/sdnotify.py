# -*- test-case-name: tests.test_systemd -*-
"""
systemd's readiness protocol (sd_notify), in the few lines it takes.

A datagram to the C{AF_UNIX} socket named by C{$NOTIFY_SOCKET}; a leading
C{@} means the abstract namespace. No socket, no notification: running
outside systemd is not an error.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """
    Send C{message} (e.g. C{"READY=1\\nSTATUS=..."}); return whether it was sent.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError:
            return False
    return True

"""
Reading the exchange events of a spawned proxy's JSON log (C{--log-format
json}, on its standard error).
"""

from __future__ import annotations

import json
from typing import Any

from tests.processes import SpawnedProxy


def exchangeEvents(proxy: SpawnedProxy) -> list[dict[str, Any]]:
    """
    The exchange events the proxy has logged so far.
    """
    events = []
    for line in bytes(proxy.process.capture.err).split(b"\x1e"):
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("exchange"):
            events.append(event)
    return events

# -*- test-case-name: tests.test_logtext -*-
"""
The console script's text log: Twisted's classic line format, cheaper.

C{textFileLogObserver} formats the timestamp (time zone included) and the
message through Twisted's own formatter for every event, and writes each
line with its own system call; with one event per exchange that was a
fifth of the proxy's CPU per request (bench/PROFILE.md). This observer
writes the same lines (C{2026-11-26T05:55:09+0000 [namespace#level] text})
but formats the timestamp once per second, formats plain messages with
C{str.format_map} (falling back to Twisted's formatter, tracebacks
included, for anything else), and, on the reactor thread, writes the lines
of one reactor turn together.
"""

from __future__ import annotations

import threading
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText
from twisted.logger import formatTime as twistedFormatTime
from zope.interface import implementer


@implementer(ILogObserver)
class TextLogObserver:
    """
    Classic text log lines to C{stream}, batched per reactor turn.
    """

    def __init__(self, stream: IO[str], reactor: Any) -> None:
        self._stream = stream
        self._reactor = reactor
        self._thread = threading.get_ident()
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def _timestamp(self, when: float | None) -> str:
        if when is None:
            # What Twisted's own formatTime shows for an event without a time.
            return "-"
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = twistedFormatTime(second)
        return self._stamp

    def _line(self, event: LogEvent) -> str | None:
        template = event.get("log_format")
        if template is None or "log_failure" in event or "log_system" in event:
            return formatEventAsClassicLogText(event, formatTime=self._timestamp)
        try:
            text = template.format_map(event)
        except Exception:
            return formatEventAsClassicLogText(event, formatTime=self._timestamp)
        if not text:
            return None
        namespace = event.get("log_namespace", "-")
        level = event.get("log_level")
        system = f"{namespace}#{level.name}" if level is not None else namespace
        text = text.replace("\n", "\n\t")
        return f"{self._timestamp(event['log_time'])} [{system}] {text}\n"

    def __call__(self, event: LogEvent) -> None:
        line = self._line(event)
        if not line:
            return
        if threading.get_ident() != self._thread:
            self._stream.write(line)
            self._stream.flush()
            return
        if not self._pending:
            self._reactor.callLater(0, self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        """
        Write the lines collected so far.
        """
        if self._pending:
            lines, self._pending = self._pending, []
            self._stream.write("".join(lines))
            self._stream.flush()

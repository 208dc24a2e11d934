# -*- test-case-name: tests.test_record -*-
"""
What one exchange was, once it is over: the record every part of the proxy
that cares about finished exchanges sees (the log, the usage ledger, the
limits, the metrics), and the one log event it becomes.

The log event's fields are defined here and nowhere else (L{EXCHANGE_FIELDS}).
Every client request, forwarded or refused, ends as exactly one event with
C{exchange=True}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

# The structured fields of the exchange log event, in this order.
EXCHANGE_FIELDS = (
    "method",
    "path",
    "status",
    "outcome",
    "code",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "request_id",
    "uid",
    "user",
    "pid",
    "model",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)

EXCHANGE_FORMAT = "{method} {path} -> {status} ({summary})"

_log = Logger(namespace="responses_proxy.exchange")


def printable(raw: bytes, limit: int = 200) -> str:
    """
    C{raw} as text safe for a log line: at most C{limit} bytes, escaped.
    """
    text = raw[:limit].decode("latin-1")
    return text.encode("unicode_escape").decode("ascii")


@dataclass(frozen=True)
class Usage:
    """
    The tokens one answer reported (its C{usage} object) and its model.

    C{cachedInputTokens} is part of C{inputTokens} and C{reasoningTokens}
    part of C{outputTokens}, as in the API.
    """

    model: str | None
    inputTokens: int = 0
    cachedInputTokens: int = 0
    outputTokens: int = 0
    reasoningTokens: int = 0

    @property
    def totalTokens(self) -> int:
        """
        What counts against a budget: input plus output.
        """
        return self.inputTokens + self.outputTokens


@dataclass(frozen=True)
class Caller:
    """
    Who made the request: the local user on the other end of its
    connection, determined once when the connection was accepted.

    @ivar uid: L{None} when it could not be determined (never a guess).
    @ivar pid: the peer process, where the kernel tells (Unix sockets).
    @ivar user: the name of C{uid}, when it has one.
    @ivar unknownReason: why C{uid} is unknown.
    """

    uid: int | None
    pid: int | None = None
    user: str | None = None
    unknownReason: str | None = None

    def describe(self) -> str:
        """
        C{alice (uid 1000)}, C{uid 1234} or C{unknown (why)}, for log lines.
        """
        if self.uid is None:
            return f"unknown ({self.unknownReason or 'no reason given'})"
        if self.user is None:
            return f"uid {self.uid}"
        return f"{self.user} (uid {self.uid})"


UNKNOWN_CALLER = Caller(None, unknownReason="not identified")


@dataclass
class ExchangeRecord:
    """
    One client request and how it ended.

    @ivar outcome: C{complete}, C{upstream_error}, C{upstream_aborted},
        C{client_gone}, C{proxy_error}, C{drain_aborted}, or C{rejected}
        for a request the proxy refused itself.
    @ivar code: the proxy's own error code, when it answered itself
        (e.g. C{browser_request}, C{upstream_timeout}).
    @ivar model: the model that answered, when the answer said.
    @ivar usage: what the upstream reported; L{None} when unknown.
    @ivar ttfbMS: milliseconds from the request to the first byte of the
        answer relayed to the client (L{None} if none was).
    """

    method: str
    path: str
    caller: Caller = UNKNOWN_CALLER
    status: int | None = None
    outcome: str = ""
    code: str | None = None
    upstreamStatus: int | None = None
    bytesIn: int = 0
    bytesOut: int = 0
    durationMS: float = 0.0
    requestID: str | None = None
    model: str | None = None
    usage: Usage | None = None
    ttfbMS: float | None = None
    forwarded: bool = False

    def logFields(self) -> dict[str, Any]:
        """
        The structured fields of the log event (L{EXCHANGE_FIELDS}).
        """
        usage = self.usage
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "code": self.code,
            "upstream_status": self.upstreamStatus,
            "bytes_in": self.bytesIn,
            "bytes_out": self.bytesOut,
            "duration_ms": self.durationMS,
            "request_id": self.requestID,
            "uid": self.caller.uid,
            "user": self.caller.user,
            "pid": self.caller.pid,
            "model": self.model,
            "input_tokens": usage.inputTokens if usage else None,
            "cached_input_tokens": usage.cachedInputTokens if usage else None,
            "output_tokens": usage.outputTokens if usage else None,
            "reasoning_tokens": usage.reasoningTokens if usage else None,
            "total_tokens": usage.totalTokens if usage else None,
        }


def _tokensText(record: ExchangeRecord) -> str:
    usage = record.usage
    if usage is None:
        if not record.forwarded:
            return "no usage"
        return f"model {record.model}, usage unknown"
    return (
        f"model {record.model}, {usage.inputTokens} tokens in "
        f"({usage.cachedInputTokens} cached), {usage.outputTokens} out "
        f"({usage.reasoningTokens} reasoning)"
    )


def _summaryText(record: ExchangeRecord) -> str:
    """
    The text log line's details: how it ended (with the proxy's own error
    code, if it answered itself), the upstream's part, sizes, time, caller
    and tokens. What is unknown is C{-}, never C{None}.
    """
    outcome = record.outcome
    if record.code is not None:
        outcome = f"{outcome} {record.code}"
    upstream = "-" if record.upstreamStatus is None else record.upstreamStatus
    return (
        f"{outcome}, upstream {upstream}, {record.bytesIn} B in, "
        f"{record.bytesOut} B out, {record.durationMS:.1f} ms, "
        f"x-request-id {record.requestID or '-'}, "
        f"caller {record.caller.describe()}, {_tokensText(record)}"
    )


def logExchange(record: ExchangeRecord) -> None:
    """
    Emit the one log event of a finished exchange.
    """
    _log.info(
        EXCHANGE_FORMAT,
        summary=_summaryText(record),
        exchange=True,
        **record.logFields(),
    )


Listener = Callable[[ExchangeRecord], object]


@dataclass
class Exchanges:
    """
    The exchanges in flight, and who is told when each one ends.

    Per-caller counts serve the concurrency limit, the total serves the
    drain and the health check.
    """

    listeners: list[Listener] = field(default_factory=lambda: [logExchange])
    _perUID: dict[int | None, int] = field(default_factory=dict)
    _active: set[Any] = field(default_factory=set)
    _idle: list[Callable[[], object]] = field(default_factory=list)

    def begin(self, exchange: Any, caller: Caller) -> None:
        """
        An exchange was admitted.
        """
        self._active.add(exchange)
        self._perUID[caller.uid] = self._perUID.get(caller.uid, 0) + 1

    def end(self, exchange: Any, record: ExchangeRecord) -> None:
        """
        An admitted exchange ended; tell every listener.
        """
        if exchange in self._active:
            self._active.discard(exchange)
            uid = record.caller.uid
            left = self._perUID.get(uid, 1) - 1
            if left:
                self._perUID[uid] = left
            else:
                self._perUID.pop(uid, None)
        self.told(record)
        if not self._active:
            waiting, self._idle = self._idle, []
            for callback in waiting:
                callback()

    def told(self, record: ExchangeRecord) -> None:
        """
        Tell every listener about C{record} (also for refused requests,
        which were never in flight).
        """
        for listener in self.listeners:
            listener(record)

    @property
    def inFlight(self) -> int:
        """
        How many exchanges are in flight.
        """
        return len(self._active)

    def inFlightFor(self, uid: int | None) -> int:
        """
        How many exchanges of the caller with C{uid} are in flight.
        """
        return self._perUID.get(uid, 0)

    def active(self) -> Iterable[Any]:
        """
        The exchanges in flight (a copy: they may end while one iterates).
        """
        return list(self._active)

    def whenIdle(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} once no exchange is in flight (at once if none is).
        """
        if not self._active:
            callback()
        else:
            self._idle.append(callback)

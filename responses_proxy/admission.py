# -*- test-case-name: tests.test_admission -*-
"""
Admission: the one step between the resource tree and the forwarder that
decides whether a request may spend the key.

Each check is a small function of its own module that says yes (L{None})
or why not (a L{Refusal}). They run in two places:

  - on the request's head, as soon as its headers are complete and before
    any byte of its body is read (L{Admission.checkHead}): the browser
    defence, the Host check, the callers root allows, WebSocket probes, the
    body's declared type and size. A refusal there answers and closes the
    connection;
  - on the whole request, just before it is forwarded (L{Admission.admit}):
    the limits and the request policy, which need the caller's usage so
    far or the body. A refusal there is an ordinary answer.

Every refusal is an OpenAI-style JSON error and is recorded like an
exchange (outcome C{rejected}, with its C{code}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.web.http_headers import Headers

from responses_proxy.record import Caller


@dataclass(frozen=True)
class Refusal:
    """
    Why a request is not forwarded, and how to answer it.
    """

    status: int
    code: str
    message: str
    type: str = "invalid_request_error"
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class RequestHead:
    """
    What is known of a request once its headers are complete.

    @ivar forwarded: the method and target are ones the proxy forwards
        (C{POST} to C{/v1/responses} or an allowed sub-path).
    """

    method: bytes
    target: bytes
    headers: Headers
    caller: Caller
    forwarded: bool


HeadCheck = Callable[[RequestHead], "Refusal | None"]
ExchangeCheck = Callable[[Any, Caller], "Refusal | None"]


@dataclass
class Admission:
    """
    The checks, in the order they run.

    @ivar headChecks: for every request, on its head.
    @ivar forwardedHeadChecks: on the head of requests that would be forwarded.
    @ivar exchangeChecks: on a whole request about to be forwarded (the
        request object, and its caller).
    """

    headChecks: Sequence[HeadCheck] = ()
    forwardedHeadChecks: Sequence[HeadCheck] = ()
    exchangeChecks: list[ExchangeCheck] = field(default_factory=list)

    def checkHead(self, head: RequestHead) -> Refusal | None:
        """
        The first refusal of the head checks, or L{None}.
        """
        for check in self.headChecks:
            refusal = check(head)
            if refusal is not None:
                return refusal
        if head.forwarded:
            for check in self.forwardedHeadChecks:
                refusal = check(head)
                if refusal is not None:
                    return refusal
        return None

    def admit(self, request: Any, caller: Caller) -> Refusal | None:
        """
        The first refusal of the exchange checks, or L{None}.
        """
        for check in self.exchangeChecks:
            refusal = check(request, caller)
            if refusal is not None:
                return refusal
        return None

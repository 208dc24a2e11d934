# -*- test-case-name: tests.test_admission -*-
"""
WebSocket probes: C{GET /v1/responses} with C{Upgrade: websocket}.

Codex can talk to a provider over WebSockets (C{supports_websockets}); it
first asks for an upgrade on the Responses path, and falls back to HTTPS at
once when the answer is 426 Upgrade Required, rather than retrying (as it
does after a 403). The proxy forwards only HTTP, so that is its answer;
nothing is forwarded.
"""

from __future__ import annotations

from collections.abc import Container

from responses_proxy.admission import Refusal, RequestHead


class WebSocketRefusal:
    """
    Answer 426 to a WebSocket upgrade of a forwarded path.
    """

    def __init__(self, paths: Container[bytes]) -> None:
        self._paths = paths

    def __call__(self, head: RequestHead) -> Refusal | None:
        if head.method != b"GET" or head.target not in self._paths:
            return None
        upgrade = b",".join(head.headers.getRawHeaders(b"upgrade") or [])
        tokens = {token.strip().lower() for token in upgrade.split(b",")}
        if b"websocket" not in tokens:
            return None
        return Refusal(
            426,
            "websocket_not_supported",
            "This proxy forwards the Responses API over HTTP only; use "
            "POST instead of a WebSocket.",
        )

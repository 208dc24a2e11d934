# -*- test-case-name: tests.test_routing -*-
"""
OpenAI-style JSON error bodies for the answers the proxy gives itself.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest


def errorBody(message: str, type: str, code: str) -> bytes:
    """
    Serialise C{{"error": {"message", "type", "code"}}} the way OpenAI does.
    """
    error = {"message": message, "type": type, "code": code}
    return json.dumps({"error": error}).encode("utf-8") + b"\n"


def respondWithError(
    request: IRequest, status: int, message: str, type: str, code: str
) -> bytes:
    """
    Set the status and JSON headers on C{request} and return the body to render.
    """
    body = errorBody(message, type, code)
    # Twisted has no reason phrase for some codes (429: "Unknown Status").
    request.setResponseCode(status, HTTPStatus(status).phrase.encode("ascii"))
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    request.responseHeaders.setRawHeaders(b"date", [datetimeToString()])
    return body


def rawErrorResponse(
    status: int,
    message: str,
    type: str,
    code: str,
    extraHeaders: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """
    A complete C{Connection: close} HTTP/1.1 response, for errors raised while
    the request is still being read (no L{IRequest} can answer yet).
    """
    body = errorBody(message, type, code)
    reason = HTTPStatus(status).phrase.encode("ascii")
    extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in extraHeaders)
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: no-store\r\n"
        b"%s"
        b"Connection: close\r\n\r\n"
    ) % (status, reason, len(body), extra)
    return head + body

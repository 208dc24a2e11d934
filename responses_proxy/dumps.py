# -*- test-case-name: tests.test_dumps -*-
"""
Optional request/response dumps for debugging (C{--dump-dir}).

Each exchange writes C{NNNNNN-<ms>-request.json} when it starts and
C{NNNNNN-<ms>-response.json} when the stream ends or is aborted (both name
the caller: C{uid} and C{user}); the
sequence number makes them sort in order, and each file appears complete
(written under a hidden temporary name, then renamed). Files are written from a thread,
never on the reactor, so dumping cannot delay the stream. Secrets are
redacted by header name; bodies are kept (they are the point of a dump),
so the directory is created 0700 and the files 0600.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from responses_proxy.record import ExchangeRecord
from responses_proxy.startup import StartupError

REDACTED = "[REDACTED]"
# A response dump keeps at most this much body: dumping must not undo the
# bounded memory that flow control gives a long or huge stream.
MAX_DUMPED_RESPONSE_BODY = 16 * 1024 * 1024
_SECRET_NAME_PARTS = ("authorization", "cookie", "api-key")


def redactedHeaders(headers: Headers) -> list[dict[str, str]]:
    """
    Headers as C{[{"name", "value"}]}, secret values replaced by C{[REDACTED]}.
    """
    result = []
    for name, values in headers.getAllRawHeaders():
        text = name.decode("latin-1")
        secret = any(part in text.lower() for part in _SECRET_NAME_PARTS)
        for value in values:
            shown = REDACTED if secret else value.decode("latin-1")
            result.append({"name": text, "value": shown})
    return result


def bodyForDump(body: bytes) -> Any:
    """
    The body as JSON when it parses, else as text.
    """
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def _startingSequence(directory: str) -> int:
    highest = 0
    for name in os.listdir(directory):
        prefix = name.split("-", 1)[0]
        if prefix.isdigit():
            highest = max(highest, int(prefix))
    return highest + 1


def _writeDump(path: str, document: dict[str, Any], body: bytes) -> None:
    # Parsing and serialising happen here, in the thread, not on the reactor.
    document["body"] = bodyForDump(body)
    data = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    # Written under a hidden name, then renamed: whoever watches the
    # directory only ever sees complete files.
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class DumpWriter:
    """
    Numbers exchanges and writes their dumps off the reactor thread.
    """

    _log = Logger()

    def __init__(
        self,
        directory: str,
        reactor: Any,
        threadpool: ThreadPool | None = None,
    ) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self._reactor = reactor
        self._threadpool = threadpool
        self._sequence = itertools.count(_startingSequence(directory))

    @classmethod
    def forDirectory(cls, directory: str, reactor: Any) -> DumpWriter:
        """
        The writer for C{--dump-dir}.

        @raise StartupError: the directory cannot be made or read.
        """
        try:
            return cls(directory, reactor)
        except OSError as e:
            raise StartupError(f"--dump-dir {directory}: {e.strerror or e}") from None

    def inThread(self, function: Callable[..., None], *args: Any) -> None:
        """
        Run C{function(*args)} in the thread pool; log, never raise, a failure.
        """
        pool = self._threadpool or self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, function, *args)
        d.addErrback(
            lambda f: self._log.error(
                "Could not write dump: {error}", error=f.getErrorMessage()
            )
        )

    def startExchange(
        self, request: Request, record: ExchangeRecord | None = None
    ) -> ExchangeDump:
        """
        Dump the request now and return the handle that collects the response
        (an L{responses_proxy.forward.ExchangeObserver}).
        """
        prefix = os.path.join(
            self.directory, f"{next(self._sequence):06d}-{int(time.time() * 1000)}"
        )
        content = request.content
        assert content is not None
        content.seek(0)
        body = content.read()
        content.seek(0)
        caller = _callerFields(record)
        document = {
            "method": request.method.decode("latin-1"),
            "url": request.uri.decode("latin-1"),
            **caller,
            "headers": redactedHeaders(request.requestHeaders),
        }
        self.inThread(_writeDump, prefix + "-request.json", document, body)
        return ExchangeDump(self, prefix + "-response.json", caller=caller)


class ExchangeDump:
    """
    Collects one response (status, headers, body) and writes it at the end.

    Only the first C{maxBody} bytes of the body are kept; the dump then
    says how long the body really was (C{body_bytes}, C{body_truncated}).
    """

    def __init__(
        self,
        writer: DumpWriter,
        path: str,
        maxBody: int = MAX_DUMPED_RESPONSE_BODY,
        caller: dict[str, Any] | None = None,
    ) -> None:
        self._writer = writer
        self._caller = caller or {}
        self._path = path
        self._maxBody = maxBody
        self._kept = 0
        self._total = 0
        self._status: int | None = None
        self._headers: list[dict[str, str]] = []
        self._chunks: list[bytes] = []

    def responseStarted(self, status: int, headers: Headers) -> None:
        self._status = status
        self._headers = redactedHeaders(headers)

    def bodyReceived(self, data: bytes) -> None:
        self._total += len(data)
        room = self._maxBody - self._kept
        if room > 0:
            kept = data[:room]
            self._kept += len(kept)
            self._chunks.append(kept)

    def finished(self, record: ExchangeRecord) -> None:
        """
        Write the response dump; C{record} says how the stream ended.
        """
        outcome = record.outcome
        body = b"".join(self._chunks)
        self._chunks = []
        document = {
            "status": self._status,
            "outcome": outcome,
            **self._caller,
            "headers": self._headers,
            "body_bytes": self._total,
            "body_truncated": self._total > self._kept,
        }
        self._writer.inThread(_writeDump, self._path, document, body)


def _callerFields(record: ExchangeRecord | None) -> dict[str, Any]:
    if record is None:
        return {"uid": None, "user": None}
    return {"uid": record.caller.uid, "user": record.caller.user}

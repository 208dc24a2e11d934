# -*- test-case-name: tests.test_logtext -*-
"""
The console script's text log observer writes what Twisted's
C{textFileLogObserver} writes, batched per reactor turn.

Unit tests (in memory).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy.logtext import TextLogObserver


class _Reactor(Clock):
    """
    A Clock that records system event triggers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Callable[[], object]]] = []

    def addSystemEventTrigger(
        self, phase: str, event: str, f: Callable[[], object]
    ) -> None:
        """
        Record the trigger instead of registering it.
        """
        self.triggers.append((phase, event, f))


def _event(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "log_time": time.time(),
        "log_namespace": "responses_proxy.forward.Exchange",
        "log_level": LogLevel.info,
    }
    event.update(fields)
    return event


def _failure() -> Failure:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        return Failure()


class TextLogObserverTests(SynchronousTestCase):
    """
    Same lines as Twisted's classic format; fewer writes.
    """

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.reactor = _Reactor()
        self.observer = TextLogObserver(self.stream, self.reactor)

    def assertSameAsTwisted(self, event: dict[str, object]) -> None:
        expected = formatEventAsClassicLogText(event, formatTime=formatTime) or ""
        self.observer(event)
        self.reactor.advance(0)
        self.assertEqual(self.stream.getvalue(), expected)

    def test_exchangeEvent(self) -> None:
        """
        An exchange event with format specs renders exactly as Twisted does.
        """
        self.assertSameAsTwisted(
            _event(
                log_format="{method} {path} -> {status} ({duration_ms:.1f} ms, "
                "x-request-id {request_id})",
                method="POST",
                path="/v1/responses",
                status=200,
                duration_ms=1.23456,
                request_id=None,
            )
        )

    def test_multiLineMessage(self) -> None:
        """
        Continuation lines are indented with a tab, as Twisted does.
        """
        self.assertSameAsTwisted(_event(log_format="one\ntwo {x}", x="three"))

    def test_failure(self) -> None:
        """
        An event with a failure keeps Twisted's traceback rendering.
        """
        self.assertSameAsTwisted(
            _event(log_format="Forwarding failed", log_failure=_failure())
        )

    def test_legacySystem(self) -> None:
        """
        Events from the legacy log system keep their C{log_system}.
        """
        self.assertSameAsTwisted(
            _event(log_format="{log_text}", log_text="legacy", log_system="-")
        )

    def test_unformattable(self) -> None:
        """
        A format Twisted understands but C{str.format} does not (a call) falls
        back to Twisted's formatter.
        """
        self.assertSameAsTwisted(_event(log_format="{value()}", value=lambda: "called"))

    def test_emptyMessageNotWritten(self) -> None:
        """
        An event whose text is empty writes nothing.
        """
        self.assertSameAsTwisted(_event(log_format=""))
        self.assertEqual(self.stream.getvalue(), "")

    def test_batchedPerTurn(self) -> None:
        """
        Lines logged in one reactor turn are written together at its end.
        """
        self.observer(_event(log_format="first"))
        self.observer(_event(log_format="second"))
        self.assertEqual(self.stream.getvalue(), "")
        self.reactor.advance(0)
        lines = self.stream.getvalue().splitlines()
        self.assertEqual(
            [line.split("] ", 1)[1] for line in lines], ["first", "second"]
        )

    def test_flushedAtShutdown(self) -> None:
        """
        Lines still pending when the reactor shuts down are written then.
        """
        [(phase, event, flush)] = self.reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        self.observer(_event(log_format="last words"))
        flush()
        self.assertIn("last words", self.stream.getvalue())

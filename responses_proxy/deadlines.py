# -*- test-case-name: tests.test_site,tests.test_slowclients -*-
"""
The two clocks that keep a client from holding a connection, for
L{responses_proxy.channel.ProxyChannel}: both run for the site's
C{requestTimeout} seconds.

  - A request must arrive completely within C{requestTimeout} seconds of
    its first byte (or of the connection, or of the previous response), so
    a client that never finishes cannot hold a connection; once the request
    is complete the clock stops, and a slow upstream never trips it. (The
    channel says when a request starts and when it is complete.)
  - A client that stops reading its answer (its socket stays full, nothing
    drains) for C{requestTimeout} seconds is disconnected, which also
    closes the upstream connection it was holding; a slow but reading
    client is never cut.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.web import http


class _TimedSite(Protocol):
    """
    What the clocks need to know of the site.
    """

    requestTimeout: float


class DeadlineChannel(http.HTTPChannel):
    """
    An HTTP channel with a request deadline and a stalled-reader cut.
    """

    site: _TimedSite
    _deadline: IDelayedCall | None = None
    _stalled: IDelayedCall | None = None

    def _startDeadline(self) -> None:
        self._cancelDeadline()
        timeout = self.site.requestTimeout
        if timeout:
            self._deadline = self.callLater(timeout, self._requestTimedOut)

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _requestTimedOut(self) -> None:
        self._deadline = None
        self._abort()

    # A client that stops reading. The transport pauses us when its send
    # buffer is full and resumes us when it drains.

    def pauseProducing(self) -> None:
        super().pauseProducing()
        timeout = self.site.requestTimeout
        if timeout and self._stalled is None and self.transport is not None:
            self._stalled = self.callLater(timeout, self._readerStalled)

    def resumeProducing(self) -> None:
        self._cancelStalled()
        super().resumeProducing()

    def _cancelStalled(self) -> None:
        if self._stalled is not None and self._stalled.active():
            self._stalled.cancel()
        self._stalled = None

    def _readerStalled(self) -> None:
        self._stalled = None
        self._abort()

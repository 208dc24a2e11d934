# -*- test-case-name: tests.test_forwarding -*-
"""
Request bodies for the upstream, from the client's buffered body.
"""

from __future__ import annotations

import io
from typing import IO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

# Bodies up to this size are sent in one write; larger ones are streamed
# from the spooled file with flow control.
ONE_WRITE_LIMIT = 1 << 20


@implementer(IBodyProducer)
class BytesBodyProducer:
    """
    Send a small, already complete body in one write (no cooperator ticks).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def bodyLength(content: IO[bytes]) -> int:
    """
    The size of a buffered body.
    """
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    return length


def bodyProducer(content: IO[bytes]) -> IBodyProducer:
    """
    A producer of the whole of C{content}, from its start (so the same body
    can be produced again for a retry).
    """
    length = bodyLength(content)
    if length <= ONE_WRITE_LIMIT:
        return BytesBodyProducer(content.read())
    return FileBodyProducer(content)

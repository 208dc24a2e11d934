# -*- test-case-name: tests.test_site -*-
"""
The declared sizes of a chunked request body, seen as soon as they arrive.

twisted.web decodes a chunked body itself and hands over only the data, so
a chunk-size line announcing more than the body limit (2^64, say) would
leave the connection waiting for bytes that never come, until the request
deadline. L{ChunkSizes} follows the framing beside Twisted's decoder, on
the same bytes, and reports the moment the sizes declared so far exceed
the limit (even while a size line is still arriving). Malformed framing is
left to Twisted's decoder, which refuses it.
"""

from __future__ import annotations

import re

_HEX = re.compile(rb"[0-9a-fA-F]*")
# Twisted's own limit on a chunk-size line (maxChunkSizeLineLength).
_MAX_SIZE_LINE = 1024


class ChunkSizes:
    """
    Follow one chunked body; see L{feed}.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._declared = 0
        self._line = b""
        self._remaining = 0  # data and CRLF still to skip
        self._watching = True

    def _exceeds(self, size: int | None) -> bool:
        return size is not None and self._declared + size > self._limit

    def feed(self, data: bytes) -> bool:
        """
        Look at the next body bytes; return C{False} once the declared sizes
        exceed the limit.
        """
        position, end = 0, len(data)
        while self._watching and position < end:
            if self._remaining:
                step = min(self._remaining, end - position)
                self._remaining -= step
                position += step
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                # A size line still arriving may already say too much.
                self._line += data[position:]
                if self._exceeds(_size(self._line)):
                    return False
                if len(self._line) > _MAX_SIZE_LINE:
                    self._watching = False
                return True
            line = self._line + data[position:newline]
            self._line = b""
            position = newline + 1
            size = _size(line)
            if size is None:
                self._watching = False  # Twisted's decoder refuses it
                return True
            if self._exceeds(size):
                return False
            if size == 0:
                self._watching = False  # trailers follow; nothing more to count
                return True
            self._declared += size
            self._remaining = size + 2  # the data, then its CRLF
        return True


def _size(sizeLine: bytes) -> int | None:
    """
    The chunk size a (possibly partial) size line declares, or L{None} when
    it starts with no hex digit.
    """
    digits = _HEX.match(sizeLine.lstrip(b" \t"))
    if digits is None or not digits.group():
        return None
    return int(digits.group(), 16)

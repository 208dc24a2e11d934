# -*- test-case-name: tests.test_jsonlog -*-
"""
JSON logs for twistd: one JSON object per line on standard output.

    twistd -n --logger responses_proxy.jsonlog.observer responses-api-proxy ...

Every event becomes one line (Twisted's L{eventAsJSON}, without the
RFC 7464 record separator that L{jsonFileLogObserver} puts first by
default, so C{jq} and journald read the lines as they are). Each
client exchange is exactly one event with C{"exchange": true} and the
fields C{method}, C{path}, C{status}, C{outcome}, C{upstream_status},
C{bytes_in}, C{bytes_out}, C{duration_ms} and C{request_id} (the upstream's
C{x-request-id}); select them with
C{jq -c 'select(.exchange)'}. Under systemd, standard output goes to the
journal, one journal entry per line.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def observer() -> FileLogObserver:
    """
    The log observer factory for C{twistd --logger}: JSON lines on the
    process's real standard output (twistd later redirects C{sys.stdout}
    into the log, which must not feed back into it).
    """
    return jsonFileLogObserver(sys.__stdout__ or sys.stdout, recordSeparator="")

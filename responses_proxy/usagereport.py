# -*- test-case-name: tests.test_ledger -*-
"""
C{responses-api-proxy usage}: what the ledger says, as a table or JSON.

    responses-api-proxy usage [--state-dir DIR] [--since YYYY-MM-DD]
                              [--by user|model|day] [--json]

It only reads the ledger (the proxy may be running), from C{--state-dir},
else C{$STATE_DIRECTORY} (set by systemd for the unit's
C{StateDirectory=}), else C{/var/lib/responses-api-proxy}.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import sys
from typing import IO, Any

from twisted.python import usage

from responses_proxy.ledger import LEDGER_FILE, UNKNOWN_UID, openLedgerFile
from responses_proxy.startup import StartupError

DEFAULT_STATE_DIR = "/var/lib/responses-api-proxy"
_COLUMNS = (
    "exchanges",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "unknown_usage",
)
_GROUPS = {
    "user": ("uid", "user"),
    "model": ("model",),
    "day": ("day",),
}


class UsageOptions(usage.Options):
    """
    Options of C{responses-api-proxy usage}.
    """

    synopsis = (
        "Usage: responses-api-proxy usage [--state-dir DIR] [--since YYYY-MM-DD] "
        "[--by user|model|day] [--json]"
    )
    longdesc = (
        "Print the tokens recorded in the usage ledger, summed by user, model or day."
    )
    optFlags = [["json", None, "Print JSON (one object) instead of a table."]]
    optParameters = [
        ["state-dir", None, None, "The proxy's --state-dir."],
        ["since", None, None, "Only UTC days from this one (YYYY-MM-DD) on."],
        ["by", None, "user", "Sum by 'user', 'model' or 'day'."],
    ]

    def postOptions(self) -> None:
        if self["by"] not in _GROUPS:
            raise usage.UsageError("--by must be 'user', 'model' or 'day'")
        if self["since"] is not None:
            try:
                datetime.date.fromisoformat(self["since"])
            except ValueError:
                raise usage.UsageError(
                    f"--since must be a date YYYY-MM-DD, not {self['since']!r}"
                ) from None
        if self["state-dir"] is None:
            self["state-dir"] = os.environ.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR


def summarize(
    connection: sqlite3.Connection, by: str, since: str | None
) -> list[dict[str, Any]]:
    """
    The ledger's rows summed by C{by}, from day C{since} on.
    """
    keys = _GROUPS[by]
    query = (
        f"SELECT {', '.join(keys)}, sum(exchanges), sum(input_tokens),"
        " sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens),"
        " sum(input_tokens + output_tokens), sum(unknown_usage)"
        " FROM usage WHERE day >= ?"
        f" GROUP BY {', '.join(key for key in keys if key != 'user')}"
        f" ORDER BY {', '.join(key for key in keys if key != 'user')}"
    )
    rows = []
    for values in connection.execute(query, (since or "0000-00-00",)):
        row = dict(zip((*keys, *_COLUMNS), values, strict=True))
        if row.get("uid") == UNKNOWN_UID:
            row["uid"] = None
            row["user"] = "(unknown)"
        rows.append(row)
    return rows


def printTable(rows: list[dict[str, Any]], by: str, out: IO[str]) -> None:
    """
    The rows as an aligned table, with a total line.
    """
    headers = ["user" if by == "user" else by, *_COLUMNS]
    lines = []
    for row in rows:
        key = row[by] if by != "user" else _userLabel(row)
        lines.append([str(key), *(f"{row[c]:,}" for c in _COLUMNS)])
    lines.append(["total", *(f"{sum(r[c] for r in rows):,}" for c in _COLUMNS)])
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)
    ]

    def format(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (
            cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)
        )
        return "  ".join([first, *rest])

    out.write(format(headers) + "\n")
    for line in lines[:-1]:
        out.write(format(line) + "\n")
    out.write(format(lines[-1]) + "\n")


def _userLabel(row: dict[str, Any]) -> str:
    if row["uid"] is None:
        return "(unknown)"
    return f"{row['user'] or '?'} (uid {row['uid']})"


def run(argv: list[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """
    Run the command; return the exit status (0, 1 for an unusable ledger,
    2 for bad options).
    """
    options = UsageOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write(f"{options.getSynopsis()}\nresponses-api-proxy usage: {e}\n")
        return 2
    path = os.path.join(options["state-dir"], LEDGER_FILE)
    if not os.path.exists(path):
        err.write(f"responses-api-proxy usage: no ledger at {path} (see --state-dir)\n")
        return 1
    try:
        connection = openLedgerFile(path, create=False)
        rows = summarize(connection, options["by"], options["since"])
        connection.close()
    except StartupError as e:
        err.write(f"responses-api-proxy usage: {e}\n")
        return 1
    except sqlite3.Error as e:
        err.write(f"responses-api-proxy usage: cannot read {path}: {e}\n")
        return 1
    if options["json"]:
        document = {"by": options["by"], "since": options["since"], "rows": rows}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        printTable(rows, options["by"], out)
    return 0

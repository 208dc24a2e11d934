# -*- test-case-name: tests.test_process -*-
"""
The C{responses-api-proxy} console script: the twistd plugin's service,
run in the foreground without twistd (no pidfile, no daemonizing).

Exit status: 0 after SIGTERM, SIGINT, SIGHUP or C{GET /shutdown}; 1 when
the key, the options' files, the listening port or the server-info file are
unusable; 2 for bad options; 130 for Ctrl-C while the key is being typed.

C{responses-api-proxy usage ...} prints the usage ledger instead
(L{responses_proxy.usagereport}).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, globalLogBeginner, jsonFileLogObserver
from twisted.python import usage

from responses_proxy.logtext import TextLogObserver
from responses_proxy.options import ProxyOptions


class CLIOptions(ProxyOptions):
    """
    The plugin's options plus how to log.
    """

    synopsis = "Usage: responses-api-proxy [options] < api-key"

    optParameters = [
        *ProxyOptions.optParameters,
        ["log-format", None, "text", "Log as 'text' or 'json' (one object per line)."],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")
        super().postOptions()


def main(argv: list[str] | None = None) -> None:
    """
    Parse options, read the key, listen, and run until told to stop.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["usage"]:
        from responses_proxy.usagereport import run

        sys.exit(run(args[1:]))
    config = CLIOptions()
    try:
        config.parseOptions(args)
    except usage.UsageError as e:
        sys.stderr.write(
            f"{config.getSynopsis()}\nresponses-api-proxy: {e}\n"
            "Run 'responses-api-proxy --help' for the options.\n"
        )
        sys.exit(2)

    from twisted.internet import reactor

    from responses_proxy.tap import makeService

    observer: ILogObserver
    if config["log-format"] == "json":
        observer = jsonFileLogObserver(sys.stderr)
    else:
        observer = TextLogObserver(sys.stderr, reactor)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        # No reactor given: a process, as under twistd (start-up failures
        # are one line and exit 1, signals drain).
        service = makeService(config)
    except KeyboardInterrupt:
        # Ctrl-C while the key is typed at a terminal: no traceback.
        sys.stderr.write("\nresponses-api-proxy: interrupted\n")
        sys.exit(130)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    sys.exit(0)

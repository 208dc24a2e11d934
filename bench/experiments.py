#!/usr/bin/env python3
"""
Prototypes of the hot-path changes suggested in bench/PROFILE.md, applied as
runtime patches around the unmodified console script, so that each
suggestion's gain can be measured with the real harness before anyone
changes responses_proxy/. NOT part of the product.

    BENCH_OURS="python bench/experiments.py" BENCH_PATCHES=endpoint,uri,fastlog \\
        bench/run --only throughput --impls ours

Patches (comma-separated in $BENCH_PATCHES):
  nolog     drop the per-exchange log event (upper bound of logging's cost)
  fastlog   keep the event, but format exchange events with one %-format and a
            per-second cached timestamp, instead of textFileLogObserver
  endpoint  cache the upstream endpoint per (scheme, host, port) instead of
            building a HostnameEndpoint (IDNA-encoding the host) per request
  uri       cache URI.fromBytes() of the (constant) upstream URL
  gethost   cache the channel's getHost() (one getsockname(2) per request)
  gc        gc.freeze() after start-up and a higher gen-0 threshold
  pool      maxPersistentPerHost 1024 instead of 64
  gcstats   measure every garbage-collector pause; print a summary to the log
            at shutdown (diagnostic, not an optimisation)
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time


def patch(names: set[str]) -> None:
    if "nolog" in names:
        from twisted.logger import Logger

        from responses_proxy import forward

        forward.Exchange._log = Logger(observer=lambda event: None)

    if "fastlog" in names:
        from twisted.logger import formatEvent

        from responses_proxy import cli

        def fastTextObserver(stream):  # type: ignore[no-untyped-def]
            cache = [-1, ""]

            def observe(event: dict) -> None:
                t = event.get("log_time") or time.time()
                second = int(t)
                if second != cache[0]:
                    cache[0] = second
                    cache[1] = time.strftime(
                        "%Y-%m-%dT%H:%M:%S%z", time.localtime(second)
                    )
                if event.get("exchange") and "duration_ms" in event:
                    text = (
                        "%s %s -> %s (%s, upstream %s, %s B in, %s B out, "  # noqa: UP031
                        "%.1f ms, x-request-id %s)"
                        % (
                            event["method"],
                            event["path"],
                            event["status"],
                            event["outcome"],
                            event["upstream_status"],
                            event["bytes_in"],
                            event["bytes_out"],
                            event["duration_ms"],
                            event["request_id"],
                        )
                    )
                else:
                    text = formatEvent(event)
                ns = event.get("log_namespace", "-")
                stream.write(f"{cache[1]} [{ns}] {text}\n")

            return observe

        cli.textFileLogObserver = fastTextObserver

    if "endpoint" in names:
        from twisted.web.client import Agent

        original = Agent._getEndpoint

        def cachedEndpoint(self, uri):  # type: ignore[no-untyped-def]
            cache = self.__dict__.setdefault("_benchEndpoints", {})
            key = (uri.scheme, uri.host, uri.port)
            endpoint = cache.get(key)
            if endpoint is None:
                endpoint = cache[key] = original(self, uri)
            return endpoint

        Agent._getEndpoint = cachedEndpoint

    if "uri" in names:
        from twisted.web import client

        client.URI.fromBytes = classmethod(  # type: ignore[method-assign]
            functools.lru_cache(maxsize=16)(client.URI.fromBytes.__func__)
        )

    if "gethost" in names:
        from twisted.web import http

        def getHost(self):  # type: ignore[no-untyped-def]
            host = self.__dict__.get("_benchHost")
            if host is None:
                host = self._benchHost = self.transport.getHost()
            return host

        http.HTTPChannel.getHost = getHost

    if "pool" in names:
        from responses_proxy import upstream

        original_make = upstream.makeUpstreamClient

        def make(*a, **kw):  # type: ignore[no-untyped-def]
            kw["maxPersistentPerHost"] = 1024
            return original_make(*a, **kw)

        upstream.makeUpstreamClient = make
        import responses_proxy.tap as tap

        tap.makeUpstreamClient = make

    if "gcstats" in names:
        import atexit
        import json

        pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        started = [0.0]

        def onGC(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses[info["generation"]].append(
                    (time.perf_counter() - started[0]) * 1000
                )

        gc.callbacks.append(onGC)

        def report() -> None:
            summary = {
                g: {
                    "count": len(p),
                    "max_ms": round(max(p), 2) if p else 0,
                    "total_ms": round(sum(p), 1),
                    "over_10ms": sum(1 for x in p if x > 10),
                }
                for g, p in pauses.items()
            }
            sys.stderr.write("GCSTATS " + json.dumps(summary) + "\n")
            sys.stderr.flush()

        atexit.register(report)

    if "gc" in names:
        from twisted.internet import reactor

        gc.set_threshold(20_000, 50, 100)
        reactor.callWhenRunning(gc.freeze)


def main() -> None:
    names = {n for n in os.environ.get("BENCH_PATCHES", "").split(",") if n}
    patch(names)
    from responses_proxy.cli import main as cliMain

    sys.argv[0] = "responses-api-proxy"
    cliMain()


if __name__ == "__main__":
    main()

# -*- test-case-name: tests.test_browser -*-
"""
Integration tests: a real headless Chromium against the real proxy.

A web page must not be able to spend the key. Each test opens one attack
page in a fresh headless Chromium (L{tests.browser}); the page is served
from an origin that is not the proxy's, tries one way of making the browser
send C{POST /v1/responses} to the proxy, and reports what it could observe.
The test then records what reached the proxy (as the browser sent it, and as
the proxy logged it) and what reached the fake upstream, and asserts that
nothing reached the upstream, that the proxy logged each request as refused,
and that where the page can read a status, it is not a success.

The rebinding tests serve the page from C{attacker.example}, which Chromium
resolves to 127.0.0.1 (C{--host-resolver-rules}), as a DNS-rebinding
attacker's name would resolve once rebound.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.browser import (
    REBINDING_HOST,
    AttackerServer,
    AttackRecord,
    Chromium,
    Wiretap,
    exchanges,
    jsonLogEvents,
    launchChromium,
    startAttacker,
)
from tests.processes import spawnProxy
from tests.support import (
    RunningProxy,
    RunningUpstream,
    httpClient,
    startFakeUpstream,
    startProxy,
    waitFor,
)

DEADLINE = 30.0
REFUSED = (403, 415)

_log = Logger()


class BrowserAttackCase(TestCase):
    """
    Run attack pages and judge what got through (no tests of its own).
    """

    timeout = 120

    async def settle(
        self, tap: Wiretap, events: EventLoggingObserver, expected: int
    ) -> None:
        """
        Wait until C{expected} requests for C{/v1/responses} reached the
        proxy and the proxy logged an exchange for every request that did
        (a beacon may arrive after the page has reported).
        """

        def settled() -> bool:
            seen = tap.requests()
            attacks = [r for r in seen if r.target == "/v1/responses"]
            return len(attacks) >= expected and len(exchanges(events)) >= len(seen)

        try:
            await waitFor(settled, DEADLINE)
        except AssertionError:
            seen = "\n".join(f"  {r.method} {r.target}" for r in tap.requests())
            logged = "\n".join(
                f"  {e.get('method')} {e.get('path')} -> {e.get('status')}"
                for e in exchanges(events)
            )
            raise AssertionError(
                f"within {DEADLINE} s, {expected} request(s) for /v1/responses "
                f"did not reach the proxy, or were not all logged; at the "
                f"proxy:\n{seen}\nlogged:\n{logged}"
            ) from None

    def record(
        self,
        name: str,
        page: dict[str, Any],
        tap: Wiretap,
        events: EventLoggingObserver,
        upstream: RunningUpstream,
    ) -> AttackRecord:
        """
        Gather what attack C{name} did, and write it to the test log.
        """
        record = AttackRecord(
            name,
            page,
            tap.requests(),
            exchanges(events),
            list(upstream.resource.requests),
        )
        _log.info("{record}", record=record.describe())
        return record

    def assertNothingSpent(self, record: AttackRecord, expected: int) -> None:
        """
        The fixed product's answer to an attack that sends C{expected}
        requests: each reached the proxy and was logged as refused; none
        reached the upstream; a status the page could read is no success.
        """
        message = record.describe()
        if record.atUpstream:
            self.fail(f"a web page spent the key\n{message}")
        self.assertGreaterEqual(len(record.logged), expected, message)
        for event in record.logged:
            self.assertIn(event.get("status"), REFUSED, message)
            self.assertIsNone(event.get("upstream_status"), message)
        if record.page.get("outcome") == "readable":
            self.assertNotEqual(record.page.get("status"), 200, message)
            self.assertIn(record.page.get("status"), REFUSED, message)


class CrossOriginPageTests(BrowserAttackCase):
    """
    A page on C{http://127.0.0.2:A} (another site, as far as the browser is
    concerned) attacks C{http://127.0.0.1:P/v1/responses}.
    """

    async def attack(self, attack: str, expected: int) -> AttackRecord:
        """
        Run C{attack} against a fresh proxy; wait for the page's report, for
        C{expected} requests at the proxy and for the proxy's log of them.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        tap = Wiretap(proxy.site)
        attacker = startAttacker(self, "127.0.0.2")
        # Launched last, so stopped first: its idle keep-alive connections
        # then never hold up the servers' cleanup.
        browser = await launchChromium(self)
        await browser.open(attacker.addPage(attack, attack, proxy.url))
        page = await attacker.report(attack, timeout=DEADLINE)
        await self.settle(tap, events, expected)
        return self.record(attack, page, tap, events, upstream)

    async def test_noCorsFetch(self) -> None:
        """
        C{fetch(..., {mode: "no-cors"})} with a C{text/plain} body is a CORS
        "simple request": the browser sends it without a preflight. The
        proxy refuses it; nothing reaches the upstream.
        """
        record = await self.attack("noCorsFetch", 1)
        self.assertNothingSpent(record, 1)

    async def test_beaconString(self) -> None:
        """
        C{navigator.sendBeacon(url, string)} sends a C{text/plain} POST with
        no preflight; the proxy refuses it.
        """
        record = await self.attack("beaconString", 1)
        self.assertNothingSpent(record, 1)

    async def test_beaconJSONBlob(self) -> None:
        """
        C{navigator.sendBeacon(url, Blob([...], {type: "application/json"}))}:
        whatever the browser does with a non-simple beacon (refuse it, or
        preflight it), nothing reaches the upstream.
        """
        record = await self.attack("beaconBlob", 1)
        self.assertNothingSpent(record, 1)

    async def test_formTextPlain(self) -> None:
        """
        An auto-submitted C{<form method=post enctype="text/plain">}
        (targeting an iframe) whose one field spells a JSON body: the
        proxy refuses it; the page cannot read the frame.
        """
        record = await self.attack("formTextPlain", 1)
        self.assertNothingSpent(record, 1)
        self.assertEqual(
            record.page.get("readable"), "no (cross-origin frame)", record.describe()
        )

    async def test_corsJSONFetch(self) -> None:
        """
        A CORS C{fetch} with C{Content-Type: application/json} needs a
        preflight: C{OPTIONS} is refused, so the browser never sends the
        POST, and the page sees a network error.
        """
        record = await self.attack("corsJSONFetch", 1)
        self.assertNothingSpent(record, 1)
        message = record.describe()
        self.assertEqual(
            [(r.method, r.target) for r in record.atProxy],
            [("OPTIONS", "/v1/responses")],
            message,
        )
        self.assertEqual([e.get("status") for e in record.logged], [403], message)
        self.assertEqual(record.page.get("outcome"), "network error", message)


class ShutdownFromPageTests(TestCase):
    """
    A page must not stop the proxy: C{GET /shutdown} (with
    C{--http-shutdown}) from a cross-origin CORS C{fetch}, a simple request.
    The proxy is a real process here, since on success it stops its reactor.
    """

    timeout = 120

    async def test_corsGetShutdown(self) -> None:
        """
        A page's C{fetch("http://127.0.0.1:P/shutdown")} is refused: the
        proxy logs a refusal, not a shutdown, keeps running and answers
        the next request; nothing reaches the upstream.
        """
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(
            self,
            "--upstream-url",
            upstream.url,
            "--http-shutdown",
            "--log-format",
            "json",
        )
        attacker = startAttacker(self, "127.0.0.2")
        browser = await launchChromium(self)
        await browser.open(
            attacker.addPage("corsGet", "corsGet", f"{proxy.base}/shutdown")
        )
        page = await attacker.report("corsGet", timeout=DEADLINE)

        def events() -> list[dict[str, Any]]:
            logged = jsonLogEvents(bytes(proxy.process.capture.err))
            return [e for e in logged if e.get("exchange") or e.get("outcome")]

        await waitFor(events, DEADLINE)
        seen = events()
        message = f"the page saw: {json.dumps(page)}\nthe proxy logged:" + "".join(
            f"\n  {e.get('log_format')!r}: status {e.get('status')}, "
            f"outcome {e.get('outcome')}"
            for e in seen
        )
        _log.info("attack corsGet /shutdown:\n{message}", message=message)
        self.assertEqual(upstream.resource.requests, [], message)
        if "shutdown" in [e.get("outcome") for e in seen]:
            self.fail(f"a web page stopped the proxy\n{message}")
        for event in seen:
            self.assertIn(event.get("status"), REFUSED, message)
        self.assertFalse(proxy.process.ended.called, f"the proxy stopped\n{message}")
        response = await httpClient(self).get(f"{proxy.base}/")
        await response.content()
        self.assertEqual(response.code, 403, message)


class RebindingTests(BrowserAttackCase):
    """
    DNS rebinding: the page's origin is C{http://attacker.example:PORT}, a
    name that resolves to 127.0.0.1, so the browser sends
    C{Host: attacker.example:PORT} to the proxy.
    """

    async def test_otherPort(self) -> None:
        """
        A page on C{attacker.example:A} sends a no-cors C{text/plain} POST to
        C{attacker.example:P} (the proxy): the proxy refuses it for its
        C{Host} (or as a browser's request); nothing reaches the upstream.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        tap = Wiretap(proxy.site)
        attacker = startAttacker(self, "127.0.0.1", hostname=REBINDING_HOST)
        browser = await launchChromium(self)
        target = f"http://{REBINDING_HOST}:{proxy.port}/v1/responses"
        await browser.open(attacker.addPage("otherPort", "noCorsFetch", target))
        page = await attacker.report("otherPort", timeout=DEADLINE)
        await self.settle(tap, events, 1)
        record = self.record("rebinding, other port", page, tap, events, upstream)
        self.assertNothingSpent(record, 1)
        self.assertEqual(
            [r.header("Host") for r in record.atProxy],
            [f"{REBINDING_HOST}:{proxy.port}"],
            record.describe(),
        )

    async def rebind(
        self, browser: Chromium, upstream: RunningUpstream
    ) -> tuple[dict[str, Any], RunningProxy, Wiretap, EventLoggingObserver]:
        """
        Serve the rebinding page from C{attacker.example:P}, then stop that
        server and start the proxy on the same port P: the page's same-origin
        requests now reach the proxy, and their answers are the page's to
        read.
        """
        reporter = startAttacker(self, "127.0.0.2")
        rebinder: AttackerServer = startAttacker(
            self, "127.0.0.1", hostname=REBINDING_HOST
        )
        port = rebinder.port
        url = rebinder.addPage("sameOrigin", "rebind", "/v1/responses", reporter)
        await browser.open(url)
        await reporter.report("sameOrigin", "loaded", timeout=DEADLINE)
        await rebinder.stop()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proxy = startProxy(self, upstream.url, "--port", str(port))
        # The browser (keeping connections to the proxy open) stops first.
        self.addCleanup(browser.stop)
        tap = Wiretap(proxy.site)
        page = await reporter.report("sameOrigin", timeout=DEADLINE)
        return page, proxy, tap, events

    async def test_sameOrigin(self) -> None:
        """
        After the rebinding the page is same-origin with the proxy: its
        C{fetch} with C{Content-Type: application/json} needs no preflight
        and it may read the answer. The proxy refuses it (403, for its
        C{Host} or its C{Origin}); the page reads the refusal, not an
        answer; nothing reaches the upstream.
        """
        browser = await launchChromium(self)
        upstream = startFakeUpstream(self)
        page, proxy, tap, events = await self.rebind(browser, upstream)
        await self.settle(tap, events, 1)
        record = self.record("rebinding, same origin", page, tap, events, upstream)
        self.assertNothingSpent(record, 1)
        message = record.describe()
        self.assertEqual(page.get("outcome"), "readable", message)
        self.assertEqual(page.get("status"), 403, message)
        code = json.loads(page["body"])["error"]["code"]
        self.assertIn(code, ("browser_request", "host_not_allowed"), message)
        self.assertEqual(
            {r.header("Host") for r in record.atProxy},
            {f"{REBINDING_HOST}:{proxy.port}"},
            message,
        )

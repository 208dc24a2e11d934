"""
The admission checks of a request's head: browser defence, Host, callers,
WebSocket probes, the declared body type, and the order they run in.

Unit tests (in memory).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from responses_proxy import hosts
from responses_proxy.admission import Admission, Refusal, RequestHead
from responses_proxy.browsers import refuseBrowsers, requireJSON
from responses_proxy.callers import MEMBERSHIP_TTL, CallerIdentity, CallerPolicy
from responses_proxy.hosts import HostCheck, isLoopbackName
from responses_proxy.peers import Peer
from responses_proxy.record import Caller
from responses_proxy.upgrades import WebSocketRefusal

ALICE = Caller(1000, user="alice")


def head(
    *pairs: tuple[bytes, bytes],
    method: bytes = b"POST",
    target: bytes = b"/v1/responses",
    caller: Caller = ALICE,
) -> RequestHead:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return RequestHead(method, target, headers, caller, method == b"POST")


class BrowserTests(SynchronousTestCase):
    """
    L{refuseBrowsers}: C{Origin} and C{Sec-Fetch-*} mark a browser.
    """

    def test_nonBrowserAdmitted(self) -> None:
        """
        What the SDKs, Codex and curl send passes.
        """
        self.assertIsNone(
            refuseBrowsers(
                head(
                    (b"Host", b"127.0.0.1:8080"),
                    (b"User-Agent", b"codex_exec/0.171.0"),
                    (b"Content-Type", b"application/json"),
                    (b"Accept", b"text/event-stream"),
                )
            )
        )

    def test_originRefused(self) -> None:
        """
        Any C{Origin}, even C{null}, in any case, is a browser's: 403
        C{browser_request}, naming the header.
        """
        for name, value in [
            (b"Origin", b"http://127.0.0.2:9000"),
            (b"origin", b"null"),
            (b"ORIGIN", b""),
        ]:
            refusal = refuseBrowsers(head((name, value)))
            assert refusal is not None
            self.assertEqual((refusal.status, refusal.code), (403, "browser_request"))
            self.assertIn(name.decode().lower(), refusal.message.lower())

    def test_secFetchRefused(self) -> None:
        """
        Each C{Sec-Fetch-*} header alone is enough.
        """
        for name in [b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"sec-fetch-dest"]:
            refusal = refuseBrowsers(head((name, b"cross-site")))
            assert refusal is not None
            self.assertEqual(refusal.code, "browser_request")


class ContentTypeTests(SynchronousTestCase):
    """
    L{requireJSON}: a forwarded body must be declared JSON.
    """

    def test_json(self) -> None:
        """
        C{application/json} in any case, with parameters, passes.
        """
        for value in [
            b"application/json",
            b"Application/JSON",
            b"application/json; charset=utf-8",
            b" application/json ;charset=UTF-8",
        ]:
            self.assertIsNone(requireJSON(head((b"Content-Type", value))), value)

    def test_otherTypes(self) -> None:
        """
        Missing, simple-request types, lookalikes and two headers get 415.
        """
        cases: list[list[tuple[bytes, bytes]]] = [
            [],
            [(b"Content-Type", b"text/plain")],
            [(b"Content-Type", b"text/plain;charset=UTF-8")],
            [(b"Content-Type", b"application/x-www-form-urlencoded")],
            [(b"Content-Type", b"multipart/form-data; boundary=x")],
            [(b"Content-Type", b"application/jsonx")],
            [(b"Content-Type", b"application/json+evil")],
            [(b"Content-Type", b"application/json"), (b"Content-Type", b"text/plain")],
        ]
        for pairs in cases:
            refusal = requireJSON(head(*pairs))
            assert refusal is not None, pairs
            self.assertEqual(
                (refusal.status, refusal.code), (415, "unsupported_media_type")
            )


class HostTests(SynchronousTestCase):
    """
    L{HostCheck}: the Host header must name loopback.
    """

    def test_loopbackNames(self) -> None:
        """
        127.0.0.0/8 literals, C{[::1]} and C{localhost}, with or without a
        port, in any case.
        """
        check = HostCheck()
        for value in [
            b"127.0.0.1",
            b"127.0.0.1:8080",
            b"127.1.2.3:1",
            b"[::1]",
            b"[::1]:8080",
            b"localhost",
            b"LocalHost:65535",
        ]:
            self.assertIsNone(check(head((b"Host", value))), value)

    def test_othersRefused(self) -> None:
        """
        Other names, other addresses, malformed values, none and two Host
        headers get 403 C{host_not_allowed}.
        """
        check = HostCheck()
        cases: list[list[tuple[bytes, bytes]]] = [
            [(b"Host", b"attacker.example:8080")],
            [(b"Host", b"localhost.attacker.example")],
            [(b"Host", b"127.0.0.1.nip.io")],
            [(b"Host", b"10.0.0.1")],
            [(b"Host", b"0.0.0.0")],
            [(b"Host", b"[::2]")],
            [(b"Host", b"::1")],
            [(b"Host", b"127.0.0.1:port")],
            [(b"Host", b"127.0.0.1:")],
            [(b"Host", b"127.0.0.1:123456")],
            [(b"Host", b"")],
            [],
            [(b"Host", b"127.0.0.1"), (b"Host", b"attacker.example")],
        ]
        for pairs in cases:
            refusal = check(head(*pairs))
            assert refusal is not None, pairs
            self.assertEqual((refusal.status, refusal.code), (403, "host_not_allowed"))

    def test_allowHost(self) -> None:
        """
        C{--allow-host} admits a name, any case, any port; not its
        subdomains.
        """
        check = HostCheck(["proxy.internal"])
        self.assertIsNone(check(head((b"Host", b"Proxy.Internal:8080"))))
        self.assertIsNotNone(check(head((b"Host", b"evil.proxy.internal"))))

    def test_verdictsRemembered(self) -> None:
        """
        An admitted value is admitted again without being parsed again;
        refused values are never remembered, and the memory is bounded.
        """
        check = HostCheck()
        self.assertIsNone(check(head((b"Host", b"127.0.0.1:8080"))))
        self.patch(hosts, "isLoopbackName", lambda host: False)
        self.assertIsNone(check(head((b"Host", b"127.0.0.1:8080"))))
        self.assertIsNotNone(check(head((b"Host", b"127.0.0.2"))))
        self.patch(hosts, "isLoopbackName", lambda host: True)
        for port in range(2 * hosts.MAX_REMEMBERED):
            self.assertIsNone(check(head((b"Host", b"127.0.0.1:%d" % port))))
        self.patch(hosts, "isLoopbackName", lambda host: False)
        self.assertIsNotNone(check(head((b"Host", b"attacker.example"))))
        remembered = sum(
            check(head((b"Host", b"127.0.0.1:%d" % port))) is None
            for port in range(2 * hosts.MAX_REMEMBERED)
        )
        self.assertLessEqual(remembered, hosts.MAX_REMEMBERED)

    def test_isLoopbackName(self) -> None:
        """
        Only loopback literals and C{localhost} count as loopback.
        """
        self.assertTrue(isLoopbackName(b"127.255.255.254"))
        self.assertFalse(isLoopbackName(b"128.0.0.1"))
        self.assertFalse(isLoopbackName(b"localhost6"))


class WebSocketTests(SynchronousTestCase):
    """
    L{WebSocketRefusal}: a WebSocket probe of a forwarded path gets 426.
    """

    def test_upgradeRefused(self) -> None:
        """
        C{GET /v1/responses} with C{Upgrade: websocket} (any case, among
        other tokens) gets 426.
        """
        check = WebSocketRefusal({b"/v1/responses"})
        for value in [b"websocket", b"WebSocket", b"h2c, websocket"]:
            refusal = check(
                head((b"Upgrade", value), method=b"GET", target=b"/v1/responses")
            )
            assert refusal is not None
            self.assertEqual(
                (refusal.status, refusal.code), (426, "websocket_not_supported")
            )

    def test_othersLeftAlone(self) -> None:
        """
        Without the upgrade, on another path or another method, it is left
        to routing (403).
        """
        check = WebSocketRefusal({b"/v1/responses"})
        self.assertIsNone(check(head(method=b"GET")))
        self.assertIsNone(
            check(head((b"Upgrade", b"websocket"), method=b"GET", target=b"/v1/x"))
        )
        self.assertIsNone(check(head((b"Upgrade", b"h2c"), method=b"GET")))
        self.assertIsNone(check(head((b"Upgrade", b"websocket"))))


class CallerPolicyTests(SynchronousTestCase):
    """
    L{CallerPolicy}: only the users and groups root allows.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.lookups: list[int] = []
        self.memberships = {1000: frozenset({1000, 27}), 1001: frozenset({1001})}

    def groups(self, uid: int) -> frozenset[int]:
        self.lookups.append(uid)
        return self.memberships.get(uid, frozenset())

    def policy(self, uids: list[int], gids: list[int]) -> CallerPolicy:
        return CallerPolicy(uids, gids, self.clock, groups=self.groups)

    def test_allowedUser(self) -> None:
        """
        A listed uid is admitted; another gets 403 C{caller_not_allowed}
        naming the caller.
        """
        policy = self.policy([1000], [])
        self.assertIsNone(policy(head()))
        refusal = policy(head(caller=Caller(1001, user="bob")))
        assert refusal is not None
        self.assertEqual((refusal.status, refusal.code), (403, "caller_not_allowed"))
        self.assertIn("bob (uid 1001)", refusal.message)

    def test_group(self) -> None:
        """
        A member of an allowed group (supplementary here) is admitted.
        """
        policy = self.policy([], [27])
        self.assertIsNone(policy(head()))
        self.assertIsNotNone(policy(head(caller=Caller(1001))))

    def test_unknownRefused(self) -> None:
        """
        A caller whose identity is unknown is refused (fail closed).
        """
        policy = self.policy([1000], [27])
        refusal = policy(head(caller=Caller(None, unknownReason="gone")))
        assert refusal is not None
        self.assertEqual(refusal.code, "caller_not_allowed")

    def test_membershipCached(self) -> None:
        """
        Membership is looked up once per uid, then again after the TTL.
        """
        policy = self.policy([], [27])
        policy(head())
        policy(head())
        self.assertEqual(self.lookups, [1000])
        self.clock.advance(MEMBERSHIP_TTL)
        self.memberships[1000] = frozenset({1000})
        self.assertIsNotNone(policy(head()))
        self.assertEqual(self.lookups, [1000, 1000])


class CallerIdentityTests(SynchronousTestCase):
    """
    L{CallerIdentity}: a transport's peer, with its user name.
    """

    def test_named(self) -> None:
        """
        The peer's uid and pid, and the name of the uid.
        """
        identify = CallerIdentity(peer=lambda transport: Peer(0, 42))
        self.assertEqual(identify(object()), Caller(0, 42, "root"))

    def test_unknown(self) -> None:
        """
        An unknown peer stays unknown, with its reason.
        """
        identify = CallerIdentity(peer=lambda transport: Peer(None, None, "gone"))
        self.assertEqual(identify(object()), Caller(None, unknownReason="gone"))


class OrderTests(SynchronousTestCase):
    """
    L{Admission.checkHead}: the first refusal wins; forwarded-only checks
    apply only to forwarded requests.
    """

    def test_order(self) -> None:
        """
        Checks run in order and stop at the first refusal.
        """
        seen: list[str] = []

        def check(name: str, refuse: bool) -> object:
            def run(head: RequestHead) -> Refusal | None:
                seen.append(name)
                return Refusal(403, name, name) if refuse else None

            return run

        admission = Admission(
            [check("a", False), check("b", True), check("c", True)],  # type: ignore[list-item]
            [check("d", True)],  # type: ignore[list-item]
        )
        refusal = admission.checkHead(head())
        assert refusal is not None
        self.assertEqual((refusal.code, seen), ("b", ["a", "b"]))

    def test_forwardedOnly(self) -> None:
        """
        The forwarded-only checks do not run for a request that is not
        forwarded.
        """
        admission = Admission([], [requireJSON])
        self.assertIsNone(admission.checkHead(head(method=b"GET")))
        self.assertIsNotNone(admission.checkHead(head()))

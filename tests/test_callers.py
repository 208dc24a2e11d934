"""
Who is calling, and whom root allows: real local users against the real
proxy, over loopback TCP and over a Unix-socket listener.

Integration tests (spawned proxy as root, system users and a group made with
useradd/groupadd, a standard-library client run as each user).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import TestCase

from tests.jsonlogs import exchangeEvents
from tests.processes import SpawnedProxy, spawnProxy
from tests.support import startFakeUpstream, waitFor
from tests.users import Answer, requestAs, requireRoot, systemGroup, systemUser

ALLOWED = "rapx-allowed"
REFUSED = "rapx-refused"
MEMBER = "rapx-member"
GROUP = "rapx-clients"


class _Users(TestCase):
    timeout = 120

    def setUp(self) -> None:
        requireRoot()
        systemGroup(GROUP)
        self.allowed = systemUser(ALLOWED)
        self.refused = systemUser(REFUSED)
        self.member = systemUser(MEMBER, groups=(GROUP,))
        self.upstream = startFakeUpstream(self)

    async def proxy(self, *args: str) -> SpawnedProxy:
        proxy: SpawnedProxy = await spawnProxy(
            self,
            "--upstream-url",
            self.upstream.url,
            "--log-format",
            "json",
            *args,
        )
        return proxy

    async def eventFor(self, proxy: SpawnedProxy, count: int) -> list[dict[str, Any]]:
        await waitFor(lambda: len(exchangeEvents(proxy)) >= count)
        return exchangeEvents(proxy)


class AccessControlTests(_Users):
    """
    C{--allow-user} and C{--allow-group}: only those callers may use the key.
    """

    async def test_tcp(self) -> None:
        """
        Over loopback TCP: the allowed user and a member of the allowed group
        are forwarded; another user, and root, get 403 C{caller_not_allowed}
        and nothing reaches the upstream for them. Each exchange is logged
        with the caller's uid and name.
        """
        proxy = await self.proxy("--allow-user", ALLOWED, "--allow-group", GROUP)
        where = f"127.0.0.1:{proxy.port}"
        answers = {
            ALLOWED: await requestAs(self, self.allowed, where),
            MEMBER: await requestAs(self, self.member, where),
            REFUSED: await requestAs(self, self.refused, where),
            "root": await requestAs(self, None, where),
        }
        self.assertEqual(
            answers,
            {
                ALLOWED: Answer(200, None),
                MEMBER: Answer(200, None),
                REFUSED: Answer(403, "caller_not_allowed"),
                "root": Answer(403, "caller_not_allowed"),
            },
        )
        self.assertEqual(len(self.upstream.resource.requests), 2)
        events = await self.eventFor(proxy, 4)
        self.assertEqual(
            [(e["user"], e["uid"], e["status"]) for e in events],
            [
                (ALLOWED, self.allowed.pw_uid, 200),
                (MEMBER, self.member.pw_uid, 200),
                (REFUSED, self.refused.pw_uid, 403),
                ("root", 0, 403),
            ],
        )
        # TCP gives no pid.
        self.assertEqual({e["pid"] for e in events}, {None})

    async def test_unixSocket(self) -> None:
        """
        Over a Unix-socket listener (the caller from SO_PEERCRED, with its
        pid): the allowed user is forwarded, another is refused.
        """
        # Somewhere the users can reach (the checkout may be under /root).
        directory = tempfile.mkdtemp(prefix="rapx-callers-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "proxy.sock")
        proxy = await self.proxy(
            "--listen", f"unix:{path}:mode=666", "--allow-user", ALLOWED
        )
        allowed = await requestAs(self, self.allowed, path)
        refused = await requestAs(self, self.refused, path)
        self.assertEqual(
            (allowed, refused), (Answer(200, None), Answer(403, "caller_not_allowed"))
        )
        self.assertEqual(len(self.upstream.resource.requests), 1)
        events = await self.eventFor(proxy, 2)
        self.assertEqual(
            [(e["user"], e["uid"]) for e in events],
            [(ALLOWED, self.allowed.pw_uid), (REFUSED, self.refused.pw_uid)],
        )
        self.assertTrue(all(isinstance(e["pid"], int) for e in events), events)

    async def test_shutdownAllowedOnly(self) -> None:
        """
        With C{--http-shutdown}, C{GET /shutdown} is subject to the callers
        too: a refused user gets 403 and the proxy keeps serving; the
        allowed user stops it.
        """
        proxy = await self.proxy("--http-shutdown", "--allow-user", ALLOWED)
        where = f"127.0.0.1:{proxy.port}"
        refused = await requestAs(self, self.refused, where, "/shutdown", method="GET")
        self.assertEqual(refused, Answer(403, "caller_not_allowed"))
        self.assertEqual(await requestAs(self, self.allowed, where), Answer(200, None))
        allowed = await requestAs(self, self.allowed, where, "/shutdown", method="GET")
        self.assertEqual(allowed.status, 200)
        result = await proxy.process.ended
        self.assertEqual(result.exitCode, 0)

    async def test_numericUid(self) -> None:
        """
        C{--allow-user} takes a uid too.
        """
        proxy = await self.proxy("--allow-user", str(self.refused.pw_uid))
        answer = await requestAs(self, self.refused, f"127.0.0.1:{proxy.port}")
        self.assertEqual(answer, Answer(200, None))


class EveryoneTests(_Users):
    """
    Without allow flags every local user may use the key, and is logged.
    """

    async def test_everyoneLogged(self) -> None:
        """
        Two users are both forwarded, and each exchange names its caller.
        """
        proxy = await self.proxy()
        where = f"127.0.0.1:{proxy.port}"
        self.assertEqual(
            [
                await requestAs(self, self.allowed, where),
                await requestAs(self, self.refused, where),
            ],
            [Answer(200, None), Answer(200, None)],
        )
        events = await self.eventFor(proxy, 2)
        self.assertEqual(
            [(e["user"], e["uid"]) for e in events],
            [(ALLOWED, self.allowed.pw_uid), (REFUSED, self.refused.pw_uid)],
        )


class StartupTests(_Users):
    """
    An allow flag naming nobody is a clear start-up error.
    """

    async def test_noSuchUser(self) -> None:
        """
        An unknown user or group name: exit 1 with one line naming it.
        """
        from tests.processes import ProxyDidNotStart

        for flag, name in [
            ("--allow-user", "rapx-nobody"),
            ("--allow-group", "rapx-no"),
        ]:
            try:
                await self.proxy(flag, name)
            except ProxyDidNotStart as e:
                self.assertIn(f"{flag} {name}: no such", str(e))
            else:
                self.fail(f"{flag} {name} started")

"""
Accounting for real: the ledger of a spawned proxy across a restart and a
kill, the C{usage} command, budgets and concurrency limits between two
real local users, and the start-up errors of a bad ledger.

Integration tests (spawned proxies, the installed console script, system
users made with useradd for the per-user limits).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from responses_proxy.ledger import LEDGER_FILE
from tests.processes import ProxyDidNotStart, SpawnedProxy, endWithin, spawnProxy
from tests.support import spawnEntryPoint, startFakeUpstream, waitFor
from tests.users import Answer, requestAs, requireRoot, systemUser

# What the fake upstream reports for one answer (tests/fakeupstream.py):
# 5 input tokens, one output token per word of its 6-word text.
TOKENS_PER_ANSWER = 11


async def post(proxy: SpawnedProxy, **fields: str) -> tuple[int, Any]:
    headers: dict[bytes | str, bytes | str] = {}
    headers.update(fields)
    response = await treq.post(
        proxy.url,
        json={"model": "gpt-test", "input": "hi", "stream": True},
        headers=headers,
        persistent=False,
    )
    body = await treq.content(response)
    return response.code, body


def committedExchanges(stateDir: str) -> int:
    """
    The exchanges committed to the ledger file, as another reader sees them.
    """
    path = os.path.join(stateDir, LEDGER_FILE)
    if not os.path.exists(path):
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        [(count,)] = connection.execute(
            "SELECT coalesce(sum(exchanges), 0) FROM usage"
        ).fetchall()
    except sqlite3.OperationalError:
        count = 0
    finally:
        connection.close()
    return int(count)


class LedgerTests(TestCase):
    """
    The ledger of a real proxy process.
    """

    timeout = 120

    def setUp(self) -> None:
        self.upstream = startFakeUpstream(self)
        self.stateDir = os.path.abspath(self.mktemp())

    async def proxy(self, *args: str) -> SpawnedProxy:
        proxy: SpawnedProxy = await spawnProxy(
            self,
            "--upstream-url",
            self.upstream.url,
            "--state-dir",
            self.stateDir,
            *args,
        )
        return proxy

    async def usage(self, *args: str) -> Any:
        process = spawnEntryPoint(
            self,
            ["responses-api-proxy", "usage", "--state-dir", self.stateDir, *args],
            stdin=None,
        )
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 0, result.stderr)
        return result.stdout.decode()

    async def test_acrossRestart(self) -> None:
        """
        Two exchanges, a clean stop, a new process: the budget counts all of
        them, and C{responses-api-proxy usage} shows them by user and model.
        """
        proxy = await self.proxy()
        self.assertEqual((await post(proxy))[0], 200)
        self.assertEqual((await post(proxy))[0], 200)
        proxy.process.signal("TERM")
        await endWithin(proxy.process, 30)
        limit = str(3 * TOKENS_PER_ANSWER)
        proxy = await self.proxy("--max-tokens-per-day", limit)
        self.assertEqual((await post(proxy))[0], 200)
        status, body = await post(proxy)
        self.assertEqual(status, 429, body)
        self.assertEqual(json.loads(body)["error"]["code"], "insufficient_quota")
        document = json.loads(await self.usage("--json", "--by", "model"))
        [row] = document["rows"]
        self.assertEqual(
            (row["model"], row["exchanges"], row["total_tokens"]),
            ("gpt-test", 3, 3 * TOKENS_PER_ANSWER),
        )
        table = await self.usage()
        self.assertRegex(table, r"root \(uid 0\)\s+3\s")

    async def test_killed(self) -> None:
        """
        A proxy killed with SIGKILL loses none of the exchanges that had
        finished: they were committed as they ended.
        """
        proxy = await self.proxy()
        for _ in range(3):
            self.assertEqual((await post(proxy))[0], 200)
        await waitFor(lambda: committedExchanges(self.stateDir) == 3)
        proxy.process.signal("KILL")
        await proxy.process.ended
        proxy = await self.proxy()
        self.assertEqual(committedExchanges(self.stateDir), 3)
        self.assertIn("3", await self.usage())

    async def test_corruptLedger(self) -> None:
        """
        A corrupt ledger file: the proxy does not start; exit 1, one line.
        """
        os.makedirs(self.stateDir, mode=0o700)
        with open(os.path.join(self.stateDir, LEDGER_FILE), "wb") as f:
            f.write(b"garbage " * 1000)
        try:
            await self.proxy()
        except ProxyDidNotStart as e:
            message = str(e)
        else:
            self.fail("the proxy started on a corrupt ledger")
        self.assertIn("exited (1,", message)
        self.assertIn("is not a usable SQLite database", message)
        self.assertNotIn("Traceback", message)

    async def test_limitNeedsStateDir(self) -> None:
        """
        A limit flag without C{--state-dir} is a usage error (exit 2).
        """
        process = spawnEntryPoint(
            self, ["responses-api-proxy", "--max-tokens-per-day", "100"], stdin=b"k\n"
        )
        result = await endWithin(process, 30)
        self.assertEqual(result.exitCode, 2)
        self.assertIn(b"--max-tokens-per-day needs --state-dir", result.stderr)


class ConcurrencyTests(TestCase):
    """
    C{--max-concurrent-per-user} on real streams.
    """

    timeout = 120

    async def test_secondStreamRefused(self) -> None:
        """
        With a stream of ours in flight and a limit of one, a second request
        gets 429 C{rate_limit_exceeded} with C{Retry-After}; once the first
        ends, requests are admitted again. The stream in flight is not cut.
        """
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(
            self,
            "--upstream-url",
            upstream.url,
            "--state-dir",
            os.path.abspath(self.mktemp()),
            "--max-concurrent-per-user",
            "1",
        )
        manual: dict[bytes | str, bytes | str] = {"x-fake-step": "manual"}
        first = treq.post(
            proxy.url,
            json={"model": "gpt-test", "input": "hi", "stream": True},
            headers=manual,
            persistent=False,
            unbuffered=True,
        )
        await waitFor(lambda: upstream.resource.streams)
        response = await treq.post(
            proxy.url, json={"model": "gpt-test"}, persistent=False
        )
        body = json.loads(await treq.content(response))
        self.assertEqual((response.code, response.phrase), (429, b"Too Many Requests"))
        self.assertEqual(body["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        stream: Any = upstream.resource.streams[0]
        while stream.chunks:
            stream.step()
        stream.step()
        answer = await first
        self.assertEqual(answer.code, 200)
        self.assertIn(b"response.completed", await treq.content(answer))
        self.assertEqual((await post(proxy))[0], 200)


class TwoUsersTests(TestCase):
    """
    Per-user budgets between two real local users.
    """

    timeout = 120

    async def test_budgetPerUser(self) -> None:
        """
        One user who has used up the daily budget gets 429
        C{insufficient_quota}; the other user still gets answers.
        """
        requireRoot()
        alice = systemUser("rapx-allowed")
        bob = systemUser("rapx-refused")
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(
            self,
            "--upstream-url",
            upstream.url,
            "--state-dir",
            os.path.abspath(self.mktemp()),
            "--max-tokens-per-day",
            str(TOKENS_PER_ANSWER),
        )
        where = f"127.0.0.1:{proxy.port}"
        body = b'{"model": "gpt-test", "input": "hi", "stream": true}'
        # The exchange is counted as it ends, in the same reactor turn as its
        # last bytes are sent, so before the next request is read.
        self.assertEqual(
            await requestAs(self, alice, where, body=body), Answer(200, None)
        )
        self.assertEqual(
            await requestAs(self, alice, where, body=body),
            Answer(429, "insufficient_quota"),
        )
        self.assertEqual(
            await requestAs(self, bob, where, body=body), Answer(200, None)
        )
        self.assertEqual(len(upstream.resource.requests), 2)

# -*- test-case-name: tests.test_codex -*-
"""
End to end with the real Codex CLI: C{codex exec} completes a turn through
the spawned proxy, which injects our key towards the fake upstream.

The binary comes from C{$CODEX_BIN}; failing that, C{.ci/node} in the
checkout (where C{.ci/run} installs C{@openai/codex} with npm), then
C{codex} on C{$PATH}.

Integration tests (processes): the real Codex CLI and a spawned proxy.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from tests.codex import requireCodex
from tests.fakeupstream import DEFAULT_TEXT
from tests.processes import endWithin, spawnProxy
from tests.support import (
    CANARY_KEY,
    childEnvironment,
    spawnEntryPoint,
    startFakeUpstream,
)


class CodexTests(TestCase):
    """
    The real Codex CLI against the proxy.
    """

    timeout = 120

    async def test_codexCompletesATurn(self) -> None:
        """
        C{codex exec 'Say hello'} with a provider pointing at the proxy
        exits 0 and prints the fake upstream's answer; the upstream saw our
        key (and only ours) on C{POST /v1/responses}.
        """
        codex = requireCodex(self)
        upstream = startFakeUpstream(self)
        proxy = await spawnProxy(self, "--upstream-url", upstream.url)
        home = os.path.abspath(self.mktemp())
        codexHome = os.path.join(home, ".codex")
        os.makedirs(codexHome)
        provider = (
            "model_providers.openai-proxy={ name = 'OpenAI Proxy', "
            f"base_url = '{proxy.base}/v1', wire_api='responses' }}"
        )
        env = childEnvironment(HOME=home, CODEX_HOME=codexHome, NO_COLOR="1")
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_API_KEY"):
            env.pop(name, None)
        process = spawnEntryPoint(
            self,
            [
                codex,
                "exec",
                "--skip-git-repo-check",
                "-c",
                provider,
                "-c",
                'model_provider="openai-proxy"',
                "Say hello",
            ],
            stdin=None,
            env=env,
            path=home,
        )
        result = await endWithin(process, 90)
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.exitCode, 0, output)
        self.assertIn(DEFAULT_TEXT, result.stdout.decode("utf-8", "replace"), output)
        posts = [r for r in upstream.resource.requests if r.method == b"POST"]
        self.assertTrue(posts, "the upstream saw no request")
        for seen in upstream.resource.requests:
            self.assertEqual(seen.uri, b"/v1/responses")
            self.assertEqual(
                seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
            )
        self.assertNotIn(CANARY_KEY, output)

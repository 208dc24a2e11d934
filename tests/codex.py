"""
Running the real Codex CLI (C{codex exec}) against the proxy.

The binary comes from C{$CODEX_BIN}; failing that, C{.ci/node} in the
checkout (where C{.ci/run} installs C{@openai/codex} with npm), then
C{codex} on C{$PATH}. Tests skip, saying so, when there is none.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from twisted.trial.unittest import TestCase

from tests.processes import endWithin
from tests.support import ProcessResult, childEnvironment, spawnEntryPoint

CHECKOUT_CODEX = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".ci",
    "node",
    "node_modules",
    ".bin",
    "codex",
)


def codexBinary() -> str | None:
    """
    The Codex CLI to run: C{$CODEX_BIN}, else the checkout's C{.ci/node}
    copy, else C{codex} on C{$PATH}, else None.
    """
    configured = os.environ.get("CODEX_BIN")
    if configured:
        return configured
    if os.path.exists(CHECKOUT_CODEX):
        return CHECKOUT_CODEX
    return shutil.which("codex")


def requireCodex(testCase: TestCase) -> str:
    """
    The Codex CLI, or skip the test saying how to get one.
    """
    codex = codexBinary()
    if codex is None:
        raise testCase.skipTest(
            "no Codex CLI: set CODEX_BIN, put codex on PATH, or run "
            "npm install --prefix .ci/node @openai/codex"
        )
    if not os.path.exists(codex):
        testCase.fail(f"CODEX_BIN={codex} does not exist")
    return codex


@dataclass
class CodexRun:
    """
    How one C{codex exec} ended.
    """

    result: ProcessResult

    @property
    def output(self) -> str:
        return (self.result.stdout + self.result.stderr).decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        return self.result.stdout.decode("utf-8", "replace")


async def runCodex(
    testCase: TestCase,
    baseURL: str,
    prompt: str = "Say hello",
    provider: str = "openai-proxy",
    providerName: str = "OpenAI Proxy",
    extra: str = "",
    config: tuple[str, ...] = (),
    timeout: float = 90,
) -> CodexRun:
    """
    Run C{codex exec PROMPT} with a provider named C{providerName} whose
    C{base_url} is C{baseURL} (C{extra}: more TOML keys for the provider),
    in a fresh C{CODEX_HOME}, without any OpenAI key in its environment.
    """
    codex = requireCodex(testCase)
    home = os.path.abspath(testCase.mktemp())
    codexHome = os.path.join(home, ".codex")
    os.makedirs(codexHome)
    table = (
        f"model_providers.{provider}={{ name = '{providerName}', "
        f"base_url = '{baseURL}', wire_api='responses'{extra} }}"
    )
    env = childEnvironment(HOME=home, CODEX_HOME=codexHome, NO_COLOR="1")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_API_KEY"):
        env.pop(name, None)
    argv = [codex, "exec", "--skip-git-repo-check", "-c", table]
    argv += ["-c", f'model_provider="{provider}"']
    for setting in config:
        argv += ["-c", setting]
    process = spawnEntryPoint(testCase, [*argv, prompt], stdin=None, env=env, path=home)
    return CodexRun(await endWithin(process, timeout))

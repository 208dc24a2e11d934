# -*- test-case-name: tests.test_packaging -*-
"""
The twistd plugin is shipped the way Twisted finds it, and every entry point
answers. (The built wheel itself is checked by C{.ci/check-wheel}.)

These run against whatever is installed: the editable install in
development, the wheel in CI.

Integration tests (processes).
"""

from __future__ import annotations

import os
import sys

import twisted.plugins
from twisted.application.service import IServiceMaker
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import childEnvironment, scriptPath

TAPNAME = "responses-api-proxy"
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginDiscoveryTests(SynchronousTestCase):
    """
    C{twisted.plugin.getPlugins} finds exactly one plugin of ours.
    """

    def test_discoverable(self) -> None:
        """
        One L{IServiceMaker} has tapname C{responses-api-proxy}, and it builds
        our options and service.
        """
        found = [p for p in getPlugins(IServiceMaker) if p.tapname == TAPNAME]
        self.assertEqual(len(found), 1)
        [plugin] = found
        from responses_proxy import tap

        self.assertIs(plugin.options, tap.Options)
        self.assertIs(plugin.makeService, tap.makeService)

    def test_noInitInNamespace(self) -> None:
        """
        Neither C{twisted/} nor C{twisted/plugins/} of ours has an
        C{__init__.py}: installed, it would replace Twisted's own.
        """
        for directory in ["twisted", os.path.join("twisted", "plugins")]:
            path = os.path.join(SOURCE_ROOT, directory, "__init__.py")
            self.assertFalse(os.path.exists(path), path)
        self.assertTrue(
            os.path.exists(
                os.path.join(
                    SOURCE_ROOT, "twisted", "plugins", "responses_api_proxy.py"
                )
            )
        )

    def test_dropinOnPluginPath(self) -> None:
        """
        The directory holding our dropin is on C{twisted.plugins.__path__},
        which is how Twisted's own C{__init__.py} extends the namespace.
        """
        directories = [os.path.realpath(p) for p in twisted.plugins.__path__]
        self.assertTrue(
            any(
                os.path.exists(os.path.join(d, "responses_api_proxy.py"))
                for d in directories
            ),
            directories,
        )


class EntryPointTests(TestCase):
    """
    The installed commands answer C{--help} with exit status 0.
    """

    async def runCommand(self, executable: str, *args: str) -> str:
        """
        Run C{executable} with C{args}; check it exits 0; its output.
        """
        out, err, code = await getProcessOutputAndValue(
            executable, args, env=childEnvironment(), path="/"
        )
        self.assertEqual(code, 0, err.decode())
        text: str = out.decode()
        return text

    async def test_twistdListsPlugin(self) -> None:
        """
        C{twistd --help} lists the plugin among its commands.
        """
        out = await self.runCommand(scriptPath("twistd"), "--help")
        self.assertRegex(out, r"(?m)^\s+responses-api-proxy\s+Strict proxy")

    async def test_twistdPluginHelp(self) -> None:
        """
        C{twistd responses-api-proxy --help} shows the plugin's options.
        """
        out = await self.runCommand(scriptPath("twistd"), TAPNAME, "--help")
        for option in ["--listen", "--port", "--server-info", "--upstream-ca"]:
            self.assertIn(option, out)

    async def test_consoleScriptHelp(self) -> None:
        """
        The C{responses-api-proxy} console script answers C{--help}.
        """
        out = await self.runCommand(scriptPath(TAPNAME), "--help")
        self.assertIn("--server-info", out)

    async def test_moduleHelp(self) -> None:
        """
        C{python -m responses_proxy --help} works from any directory.
        """
        out = await self.runCommand(sys.executable, "-m", "responses_proxy", "--help")
        self.assertIn("--listen", out)

    async def test_pluginImportIsLazy(self) -> None:
        """
        Importing the dropin (as C{twistd --help} does) does not import the
        proxy itself.
        """
        await self.runCommand(
            sys.executable,
            "-c",
            "import sys, twisted.plugins.responses_api_proxy; "
            "assert 'responses_proxy.tap' not in sys.modules, 'imported eagerly'",
        )

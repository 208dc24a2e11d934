# -*- test-case-name: tests.test_options -*-
"""
Unit tests (in memory) for L{responses_proxy.options} and the console
script's L{CLIOptions}: every flag, every default, every usage error, and
how little parsing options loads (the one test that looks at a fresh
interpreter runs one in a subprocess).

The spawned entry points' own handling of a usage error (exit status, the
one line on standard error) is in C{tests.test_process}.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from responses_proxy import __version__
from responses_proxy.cli import CLIOptions
from responses_proxy.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_REQUEST_TIMEOUT,
)
from responses_proxy.oidcurls import DEFAULT_TOKEN_URL
from responses_proxy.options import ProxyOptions, checkLoopbackListen
from responses_proxy.target import DEFAULT_UPSTREAM_URL, UpstreamTarget


def parse(*args: str) -> ProxyOptions:
    """
    The options parsed from C{args}.
    """
    config = ProxyOptions()
    config.parseOptions(list(args))
    return config


class DefaultsTests(SynchronousTestCase):
    """
    What the options are when none is given.
    """

    def test_allDefaults(self) -> None:
        """
        Without arguments every option has its documented default.
        """
        self.assertEqual(
            dict(parse()),
            {
                "http-shutdown": 0,
                "github-oidc": 0,
                "port": None,
                "listen": None,
                "server-info": None,
                "upstream-url": DEFAULT_UPSTREAM_URL,
                "upstream-ca": None,
                "dump-dir": None,
                "max-request-body": 64 * 1024 * 1024,
                "request-timeout": 60.0,
                "connect-timeout": 30.0,
                "drain-timeout": 20.0,
                "state-dir": None,
                "max-concurrent-per-user": None,
                "max-tokens-per-day": None,
                "max-tokens-per-day-total": None,
                "admin-socket": None,
                "allow-host": [],
                "allow-user": [],
                "allow-group": [],
                "allow-path": [],
                "allow-model": [],
                "oidc-audience": None,
                "identity-provider-id": None,
                "service-account-id": None,
                "github-oidc-request-url": None,
                "oidc-token-url": DEFAULT_TOKEN_URL,
                "upstream": UpstreamTarget.fromString(DEFAULT_UPSTREAM_URL),
            },
        )

    def test_sharedDefaults(self) -> None:
        """
        The limits' defaults are those of L{responses_proxy.defaults}, which
        the server side uses too.
        """
        config = parse()
        self.assertEqual(
            (
                config["max-request-body"],
                config["request-timeout"],
                config["connect-timeout"],
                config["drain-timeout"],
            ),
            (
                DEFAULT_MAX_REQUEST_BODY,
                DEFAULT_REQUEST_TIMEOUT,
                DEFAULT_CONNECT_TIMEOUT,
                DEFAULT_DRAIN_TIMEOUT,
            ),
        )

    def test_defaultUpstream(self) -> None:
        """
        The upstream is OpenAI's Responses endpoint over HTTPS.
        """
        target = parse()["upstream"]
        self.assertEqual(
            (target.url, target.scheme, target.host, target.port, target.hostHeader),
            (
                b"https://api.openai.com/v1/responses",
                "https",
                "api.openai.com",
                443,
                b"api.openai.com",
            ),
        )


class FlagTests(SynchronousTestCase):
    """
    Each flag, given, lands in the options converted.
    """

    def test_allGiven(self) -> None:
        """
        The listening, upstream, dump and limit flags at once, each
        converted to its type. (The admission and accounting flags,
        C{--allow-*}, C{--state-dir}, C{--max-*-per-*}, C{--admin-socket},
        are tested with their checks.)
        """
        config = parse(
            "--http-shutdown",
            "--port",
            "8080",
            "--server-info",
            "/run/info.json",
            "--upstream-url",
            "http://127.0.0.1:9000/v1/responses?api-version=1",
            "--upstream-ca",
            "/etc/ca.pem",
            "--dump-dir",
            "/var/dumps",
            "--max-request-body",
            "1000",
            "--request-timeout",
            "2.5",
            "--connect-timeout",
            "3",
            "--drain-timeout",
            "0",
        )
        self.assertEqual(
            {key: config[key] for key in config if key != "upstream"},
            {
                "http-shutdown": 1,
                "github-oidc": 0,
                "port": 8080,
                "listen": None,
                "server-info": "/run/info.json",
                "upstream-url": "http://127.0.0.1:9000/v1/responses?api-version=1",
                "upstream-ca": "/etc/ca.pem",
                "dump-dir": "/var/dumps",
                "max-request-body": 1000,
                "request-timeout": 2.5,
                "connect-timeout": 3.0,
                "drain-timeout": 0.0,
                "state-dir": None,
                "max-concurrent-per-user": None,
                "max-tokens-per-day": None,
                "max-tokens-per-day-total": None,
                "admin-socket": None,
                "allow-host": [],
                "allow-user": [],
                "allow-group": [],
                "allow-path": [],
                "allow-model": [],
                "oidc-audience": None,
                "identity-provider-id": None,
                "service-account-id": None,
                "github-oidc-request-url": None,
                "oidc-token-url": DEFAULT_TOKEN_URL,
            },
        )
        self.assertEqual(
            config["upstream"],
            UpstreamTarget(
                url=b"http://127.0.0.1:9000/v1/responses?api-version=1",
                scheme="http",
                host="127.0.0.1",
                port=9000,
                hostHeader=b"127.0.0.1:9000",
            ),
        )

    def test_types(self) -> None:
        """
        Sizes are integers, times are floats (fractions allowed).
        """
        config = parse(
            "--max-request-body",
            "7",
            "--request-timeout",
            "0.25",
            "--connect-timeout",
            "1",
            "--drain-timeout",
            "1.5",
        )
        self.assertIsInstance(config["max-request-body"], int)
        for key, value in (
            ("request-timeout", 0.25),
            ("connect-timeout", 1.0),
            ("drain-timeout", 1.5),
        ):
            self.assertIsInstance(config[key], float)
            self.assertEqual(config[key], value)

    def test_portBounds(self) -> None:
        """
        C{--port} takes 0 (ephemeral) up to 65535.
        """
        self.assertEqual(parse("--port", "0")["port"], 0)
        self.assertEqual(parse("--port", "65535")["port"], 65535)

    def test_listen(self) -> None:
        """
        C{--listen} keeps the endpoint string as given.
        """
        description = "unix:/run/responses-api-proxy.sock:mode=660"
        self.assertEqual(parse("--listen", description)["listen"], description)

    def test_help(self) -> None:
        """
        The usage text names every flag and says where the key comes from.
        """
        text = " ".join(str(ProxyOptions()).split())
        for flag in (
            "--port=",
            "--listen=",
            "--server-info=",
            "--http-shutdown",
            "--upstream-url=",
            "--upstream-ca=",
            "--dump-dir=",
            "--max-request-body=",
            "--request-timeout=",
            "--connect-timeout=",
            "--drain-timeout=",
            "--state-dir=",
            "--max-concurrent-per-user=",
            "--max-tokens-per-day=",
            "--max-tokens-per-day-total=",
            "--admin-socket=",
            "--allow-host=",
            "--allow-user=",
            "--allow-group=",
            "--allow-path=",
            "--allow-model=",
            "--github-oidc",
            "--oidc-audience=",
            "--identity-provider-id=",
            "--service-account-id=",
            "--github-oidc-request-url=",
            "--oidc-token-url=",
            "--version",
        ):
            self.assertIn(flag, text)
        self.assertIn("Reads the API key from standard input", text)

    def test_helpWrapsMethodFlags(self) -> None:
        """
        The repeatable flags' help comes from their C{opt_*} docstrings; it is
        wrapped like the rest, not printed with the docstrings' indentation.
        """
        lines = str(ProxyOptions()).splitlines()
        start = next(i for i, line in enumerate(lines) if "--allow-user=" in line)
        helpColumn = lines[start].index("Let only")
        for line in lines[start : start + 4]:
            self.assertNotIn("  ", line[helpColumn:])

    def test_version(self) -> None:
        """
        C{--version} prints the proxy's version and Twisted's, and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as raised:
            parse("--version")
        self.assertEqual(raised.exception.code, 0)
        self.assertRegex(
            out.getvalue(),
            rf"^responses-api-proxy {__version__} \(Twisted [0-9][^)]*\)\n$",
        )


class UsageErrorTests(SynchronousTestCase):
    """
    Each bad value is a L{usage.UsageError} naming the option.
    """

    def assertUsageError(self, args: list[str], message: str) -> None:
        """
        Parsing C{args} fails with exactly C{message}.
        """
        with self.assertRaises(usage.UsageError) as raised:
            parse(*args)
        self.assertEqual(str(raised.exception), message)

    def test_portNotANumber(self) -> None:
        """
        C{--port x}.
        """
        self.assertUsageError(["--port", "x"], "--port must be a number, not 'x'")

    def test_portOutOfRange(self) -> None:
        """
        C{--port} over 65535, or negative.
        """
        self.assertUsageError(
            ["--port", "70000"], "--port must be between 0 and 65535, not 70000"
        )
        self.assertUsageError(
            ["--port", "-1"], "--port must be between 0 and 65535, not -1"
        )

    def test_portAndListen(self) -> None:
        """
        C{--port} and C{--listen} together.
        """
        self.assertUsageError(
            ["--port", "1", "--listen", "tcp:0:interface=127.0.0.1"],
            "give --port or --listen, not both",
        )

    def test_notPositive(self) -> None:
        """
        C{--max-request-body}, C{--request-timeout} and C{--connect-timeout}
        must be greater than 0.
        """
        for name in ("--max-request-body", "--request-timeout", "--connect-timeout"):
            for value in ("0", "-1"):
                self.assertUsageError([name, value], f"{name} must be greater than 0")

    def test_notANumber(self) -> None:
        """
        Each numeric option refuses text (and the size refuses fractions).
        """
        for name, value in (
            ("--max-request-body", "1.5"),
            ("--max-request-body", "big"),
            ("--request-timeout", "soon"),
            ("--connect-timeout", "later"),
            ("--drain-timeout", "x"),
        ):
            self.assertUsageError(
                [name, value], f"{name} must be a number, not {value!r}"
            )

    def test_notANumberNaN(self) -> None:
        """
        C{nan} is not a number of seconds: a NaN deadline would sit in the
        reactor's heap of timed calls, where no comparison can order it.
        """
        accepted = []
        for name in ("--request-timeout", "--connect-timeout", "--drain-timeout"):
            try:
                parse(name, "nan")
            except usage.UsageError:
                continue
            accepted.append(name)
        self.assertEqual(accepted, [])

    def test_drainTimeoutNegative(self) -> None:
        """
        C{--drain-timeout} may be 0, not negative.
        """
        self.assertUsageError(
            ["--drain-timeout", "-1"], "--drain-timeout must not be negative"
        )

    def test_upstreamURL(self) -> None:
        """
        C{--upstream-url} must be an absolute http(s) URL without
        credentials or fragment.
        """
        for url, reason in (
            (
                "ftp://example.com/v1/responses",
                "upstream URL must be an absolute http:// or https:// URL: "
                "'ftp://example.com/v1/responses'",
            ),
            (
                "/v1/responses",
                "upstream URL must be an absolute http:// or https:// URL: "
                "'/v1/responses'",
            ),
            ("https://u:p@example.com/", "upstream URL must not contain credentials"),
            (
                "https://example.com/v1#x",
                "upstream URL must not have a fragment: 'https://example.com/v1#x'",
            ),
        ):
            self.assertUsageError(["--upstream-url", url], f"--upstream-url: {reason}")

    def test_unknownFlag(self) -> None:
        """
        An unknown flag is refused.
        """
        self.assertUsageError(
            ["--no-such-flag"], "option --no-such-flag not recognized"
        )

    def test_extraArgument(self) -> None:
        """
        Positional arguments are refused (the key comes on standard input).
        """
        self.assertUsageError(["sk-oops"], "Wrong number of arguments.")


class LoopbackListenTests(SynchronousTestCase):
    """
    L{checkLoopbackListen}: a TCP C{--listen} must name a loopback interface.
    """

    def assertAccepted(self, description: str) -> None:
        """
        C{description} is accepted, by the check and by the options.
        """
        checkLoopbackListen(description)
        self.assertEqual(parse("--listen", description)["listen"], description)

    def assertRefused(self, description: str, message: str) -> None:
        """
        C{description} is refused with C{message}, by the check and by the
        options.
        """
        with self.assertRaises(usage.UsageError) as raised:
            checkLoopbackListen(description)
        self.assertEqual(str(raised.exception), message)
        self.assertRaises(usage.UsageError, parse, "--listen", description)

    def test_loopbackIPv4(self) -> None:
        """
        127.0.0.1, and any address of 127.0.0.0/8, is loopback.
        """
        self.assertAccepted("tcp:8080:interface=127.0.0.1")
        self.assertAccepted("tcp:0:interface=127.9.9.9")
        self.assertAccepted("tcp:interface=127.0.0.1:port=0")

    def test_loopbackIPv6Escaped(self) -> None:
        """
        C{::1} with its colons escaped, as endpoint strings need.
        """
        self.assertAccepted(r"tcp6:8080:interface=\:\:1")

    def test_ipv6Unescaped(self) -> None:
        """
        C{::1} unescaped is not read as an address (nor would Twisted read
        it as one).
        """
        self.assertRefused(
            "tcp6:8080:interface=::1",
            "--listen interface '' is not a loopback address "
            "(the proxy serves loopback only)",
        )

    def test_localhost(self) -> None:
        """
        The name C{localhost} is loopback.
        """
        self.assertAccepted("tcp:0:interface=localhost")

    def test_noInterface(self) -> None:
        """
        Without C{interface=} Twisted binds every interface.
        """
        self.assertRefused(
            "tcp:8080",
            "--listen 'tcp:8080' would listen on every interface; add "
            "interface=127.0.0.1 (the proxy serves loopback only)",
        )

    def test_typeCaseInsensitive(self) -> None:
        """
        The endpoint type is recognised whatever its case.
        """
        self.assertRefused(
            "TCP:8080",
            "--listen 'TCP:8080' would listen on every interface; add "
            "interface=127.0.0.1 (the proxy serves loopback only)",
        )

    def test_nonLoopback(self) -> None:
        """
        Wildcard, private, IPv6 wildcard and host names are refused.
        """
        for interface, shown in (
            ("0.0.0.0", "0.0.0.0"),
            ("192.168.1.10", "192.168.1.10"),
            (r"\:\:", "::"),
            ("example.com", "example.com"),
            ("LOCALHOST", "LOCALHOST"),
        ):
            self.assertRefused(
                f"tcp:0:interface={interface}",
                f"--listen interface {shown!r} is not a loopback address "
                "(the proxy serves loopback only)",
            )

    def test_tlsAndIPv6Types(self) -> None:
        """
        C{ssl:} and C{tcp6:} are checked like C{tcp:}.
        """
        self.assertRefused(
            "ssl:443:privateKey=k.pem:interface=0.0.0.0",
            "--listen interface '0.0.0.0' is not a loopback address "
            "(the proxy serves loopback only)",
        )
        self.assertRefused(
            "tcp6:443",
            "--listen 'tcp6:443' would listen on every interface; add "
            "interface=127.0.0.1 (the proxy serves loopback only)",
        )
        checkLoopbackListen("ssl:443:privateKey=k.pem:interface=127.0.0.1")

    def test_lastInterfaceCounts(self) -> None:
        """
        With C{interface=} given twice, the last one is checked: the one
        Twisted uses.
        """
        self.assertAccepted("tcp:0:interface=0.0.0.0:interface=127.0.0.1")
        self.assertRefused(
            "tcp:0:interface=127.0.0.1:interface=0.0.0.0",
            "--listen interface '0.0.0.0' is not a loopback address "
            "(the proxy serves loopback only)",
        )

    def test_otherTypesLeftAlone(self) -> None:
        """
        C{unix:} and C{systemd:} endpoints are whoever set them up's business.
        """
        self.assertAccepted("unix:/run/responses-api-proxy.sock:mode=660")
        self.assertAccepted("systemd:domain=INET:index=0")


class ListenDescriptionTests(SynchronousTestCase):
    """
    L{ProxyOptions.listenDescription}: the endpoint string, and its name
    for error messages.
    """

    def test_default(self) -> None:
        """
        Without C{--port} or C{--listen}: an ephemeral loopback port, with a
        backlog of 511.
        """
        self.assertEqual(
            parse().listenDescription(),
            ("tcp:0:interface=127.0.0.1:backlog=511", "127.0.0.1:0"),
        )

    def test_port(self) -> None:
        """
        C{--port N}: 127.0.0.1:N.
        """
        self.assertEqual(
            parse("--port", "8080").listenDescription(),
            ("tcp:8080:interface=127.0.0.1:backlog=511", "127.0.0.1:8080"),
        )

    def test_listen(self) -> None:
        """
        C{--listen}: as given, and named as given.
        """
        description = "unix:/run/p.sock:mode=660"
        self.assertEqual(
            parse("--listen", description).listenDescription(),
            (description, description),
        )


class CLIOptionsTests(SynchronousTestCase):
    """
    The console script's options: the plugin's, plus C{--log-format}.
    """

    def test_logFormatDefault(self) -> None:
        """
        Logs are text by default.
        """
        config = CLIOptions()
        config.parseOptions([])
        self.assertEqual(config["log-format"], "text")

    def test_logFormatJSON(self) -> None:
        """
        C{--log-format json} is accepted.
        """
        config = CLIOptions()
        config.parseOptions(["--log-format", "json"])
        self.assertEqual(config["log-format"], "json")

    def test_logFormatBad(self) -> None:
        """
        Any other log format is a usage error.
        """
        config = CLIOptions()
        with self.assertRaises(usage.UsageError) as raised:
            config.parseOptions(["--log-format", "xml"])
        self.assertEqual(str(raised.exception), "--log-format must be 'text' or 'json'")

    def test_pluginOptionsChecked(self) -> None:
        """
        The plugin's own checks still run.
        """
        config = CLIOptions()
        self.assertRaises(usage.UsageError, config.parseOptions, ["--port", "x"])
        config = CLIOptions()
        config.parseOptions(["--port", "8080"])
        self.assertEqual(config.listenDescription()[1], "127.0.0.1:8080")

    def test_synopsis(self) -> None:
        """
        The synopsis names the console script.
        """
        self.assertIn(
            "Usage: responses-api-proxy [options] < api-key", str(CLIOptions())
        )


_LOADED = """
import json, sys
from responses_proxy.options import ProxyOptions
ProxyOptions().parseOptions(["--port", "8080"])
json.dump(sorted(sys.modules), sys.stdout)
"""


class LightnessTests(SynchronousTestCase):
    """
    Parsing options (and so C{--help} and every usage error) loads neither
    the HTTP stack nor OpenSSL.
    """

    def test_modulesLoaded(self) -> None:
        """
        A fresh interpreter that parses options has loaded no module of
        twisted.web, twisted.internet's reactor, treq, pyOpenSSL or
        cryptography, and under 250 modules in all (about 170 today; the
        whole proxy loads over 450).
        """
        output = subprocess.run(
            [sys.executable, "-c", _LOADED],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        modules: list[str] = json.loads(output)
        heavy = [
            name
            for name in modules
            if name.split(".")[0] in ("OpenSSL", "cryptography", "treq")
            or name.startswith(("twisted.web", "twisted.internet"))
        ]
        self.assertEqual(heavy, [])
        self.assertLess(len(modules), 250, modules)

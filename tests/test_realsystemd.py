# -*- test-case-name: tests.test_realsystemd -*-
"""
Integration tests under a real systemd booted in a container.

A Debian root (C{.ci/container-root}) is booted with C{systemd-nspawn}
once per test process (L{tests.container}); the README's "Operating it"
commands are then run inside it as they are written, with the checkout's
wheel installed offline. Every test starts from the same state: the units
stopped, no drop-ins, the original key in C{/etc/credstore}.

Inside the container, C{127.0.0.1} is the container's own loopback: the
proxy listens on port 8080 there (as the units say) and a small HTTPS
upstream (L{FAKE_UPSTREAM}, trusted with the README's C{--upstream-ca}
example path) on port 8443. Clients are C{curl} inside the container.

Things the tests add to the units, always as drop-ins (what C{systemctl
edit} writes, which needs a terminal): options in C{ExecStart=} (the
README's way of adding them), and an C{ExecStartPre=} that holds a start
until the test lets it go, so that a connection is provably made while no
proxy process runs (L{RealSystemdTestCase.holdNextStart}).

The tests skip only where no container can be booted: not root, no
C{systemd-nspawn}, no root file system and no C{mmdebstrap} to build one,
or a boot that fails. C{_trial_temp/realsystemd/} keeps what they saw
(C{systemctl status}, C{systemd-analyze security}).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.container import (
    CHECKOUT,
    CannotBoot,
    Container,
    Result,
    buildWheels,
    containerRoot,
    poll,
    readmeShellBlocks,
    substitute,
)
from tests.support import makeTestPKI

SERVICE = "responses-api-proxy.service"
SOCKET = "responses-api-proxy-activated.socket"
ACTIVATED = "responses-api-proxy-activated.service"
UNITS = [SERVICE, ACTIVATED, SOCKET]

KEY = "sk-realsystemd-" + secrets.token_hex(20)
NEW_KEY = "sk-realsystemd-rotated-" + secrets.token_hex(20)
KEY_PATH = "/etc/credstore/openai-api-key"

PROXY = "http://127.0.0.1:8080"
UPSTREAM_PORT = 8443
UPSTREAM_URL = f"https://127.0.0.1:{UPSTREAM_PORT}/v1/responses"
# The README's example path for --upstream-ca.
CA_PATH = "/etc/responses-api-proxy/ca.pem"
UPSTREAM_OPTIONS = ["--upstream-url", UPSTREAM_URL, "--upstream-ca", CA_PATH]
JSON_LOGGER = ["--logger", "responses_proxy.jsonlog.observer"]
REQUESTS_LOG = "/srv/fake-upstream/requests.jsonl"

RUNTIME_DIRECTORY = "/run/responses-api-proxy"
STATE_DIRECTORY = "/var/lib/responses-api-proxy"
ADMIN_SOCKET = RUNTIME_DIRECTORY + "/admin.sock"
# Where the service may write, and why.
WRITABLE = {
    RUNTIME_DIRECTORY: "RuntimeDirectory=",
    STATE_DIRECTORY: "StateDirectory= (the usage ledger)",
    "/tmp": "PrivateTmp= (private to the service)",
    "/var/tmp": "PrivateTmp= (private to the service)",
    "/dev/mqueue": "PrivateIPC= (the service's own POSIX message queues)",
}
PROBED = [
    "/",
    "/etc",
    "/etc/credstore",
    "/etc/systemd/system",
    "/opt/responses-api-proxy",
    "/opt/responses-api-proxy/lib/python3.11/site-packages/twisted/plugins",
    "/usr",
    "/usr/local",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/tmp",
    "/run",
    RUNTIME_DIRECTORY,
    STATE_DIRECTORY,
    "/run/credentials",
    "/dev",
    "/dev/shm",
    "/dev/mqueue",
    "/root",
    "/home",
    "/srv",
]
# DynamicUser= picks uids from this range (systemd.exec(5)).
DYNAMIC_UIDS = range(61184, 65520)
HOLD_FILE = "/run/responses-api-proxy-test-go"

# Probes run as the service (SandboxTests.asService); each prints JSON.
WRITE_PROBE = """
import errno, json, os
outcomes = {}
for path in %r:
    name = os.path.join(path, ".probe-%%d" %% os.getpid())
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        outcomes[path] = errno.errorcode.get(e.errno, str(e.errno))
    else:
        os.unlink(name)
        outcomes[path] = "written"
print(json.dumps(outcomes))
"""
PROC_PROBE = """
import json, os
processes = {}
for name in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open("/proc/%s/status" % name) as f:
            processes[name] = f.read().split("Uid:")[1].split()[0]
    except (OSError, IndexError):
        pass
exists = {key: os.path.exists("/proc/" + key) for key in ("sys", "meminfo")}
print(json.dumps({"processes": processes, **exists}))
"""
# What a process under the units' sandbox may do (SYSCALL_PROBE, run by
# systemd-run with the unit's own settings): the outcome of each attempt.
# (AF_NETLINK: the kernel's socket table, for each caller's uid.)
SYSCALLS = {
    "AF_INET": "allowed",
    "AF_INET6": "allowed",
    "AF_UNIX": "allowed",
    "AF_NETLINK": "allowed",
    "AF_PACKET": "EAFNOSUPPORT",
    "mlock": "allowed",
    "write+execute mapping": "allowed",
    "unshare(CLONE_NEWUSER)": "EPERM",
    "personality(READ_IMPLIES_EXEC)": "EPERM",
    "setgroups": "EPERM",
}
SYSCALL_PROBE = """
import ctypes, errno, json, mmap, socket
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def attempt(name, call):
    try:
        result = call()
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
        return
    if result == -1:
        out[name] = errno.errorcode.get(ctypes.get_errno(), "?")
    else:
        out[name] = "allowed"
for family in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"):
    raw = family in ("AF_NETLINK", "AF_PACKET")
    kind = socket.SOCK_RAW if raw else socket.SOCK_STREAM
    attempt(family, lambda: socket.socket(getattr(socket, family), kind).close())
buffer = ctypes.create_string_buffer(4096)
attempt("mlock", lambda: libc.mlock(buffer, 4096))
rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
attempt("write+execute mapping", lambda: mmap.mmap(-1, 4096, prot=rwx).close())
attempt("unshare(CLONE_NEWUSER)", lambda: libc.unshare(0x10000000))
attempt("personality(READ_IMPLIES_EXEC)", lambda: libc.personality(0x0400000))
attempt("setgroups", lambda: libc.setgroups(0, None))
print(json.dumps(out))
"""
# The unit settings that are about the proxy's process and life cycle, not
# its sandbox: left out when systemd-run applies a unit's sandbox to a probe.
NOT_SANDBOX = {
    "ExecStart",
    "Type",
    "NotifyAccess",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "TimeoutStopSec",
    "SyslogIdentifier",
}

# The upstream inside the container: stdlib only (the container's
# python3), HTTPS with the test CA's certificate. It records each request's
# path, Authorization header and the x-request-id it answers with in
# REQUESTS_LOG, logs nothing, and answers
# an SSE stream (x-fake-events events, x-fake-interval-ms apart: a stream
# that can be in flight during a restart). Type=notify: READY=1 once it
# listens, so systemd-run returns only then.
FAKE_UPSTREAM = r"""
import json, os, socket, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = "/srv/fake-upstream/requests.jsonl"
counter = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global counter
        counter += 1
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        requestID = f"req_realsystemd_{counter}"
        with open(LOG, "a") as f:
            record = {
                "path": self.path,
                "authorization": self.headers["Authorization"],
                "request_id": requestID,
            }
            f.write(json.dumps(record) + "\n")
        events = int(self.headers.get("x-fake-events", "3"))
        interval = int(self.headers.get("x-fake-interval-ms", "0")) / 1000
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", requestID)
        self.end_headers()
        for i in range(events):
            last = i == events - 1
            kind = "response.completed" if last else "response.output_text.delta"
            event = {"type": kind, "sequence_number": i, "bytes": len(body)}
            if last:
                usage = {"input_tokens": 5, "output_tokens": 7}
                event["response"] = {"model": "test", "usage": usage}
            data = json.dumps(event)
            chunk = f"event: {kind}\ndata: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if interval and i < events - 1:
                time.sleep(interval)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
server.serve_forever()
"""


def artefact(name: str, text: str) -> str:
    """
    Keep C{text} as C{_trial_temp/realsystemd/NAME} (trial runs in
    C{_trial_temp}), for the record of what the real systemd said.
    """
    directory = os.path.abspath("realsystemd")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def expectations(block: str) -> list[tuple[str, list[str]]]:
    """
    A README block of commands, each followed by the output it shows as
    C{# ...} comment lines: C{(command, [expected line, ...])} pairs.
    """
    pairs: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("#"):
            pairs[-1][1].append(line[1:].strip())
        elif line.strip():
            pairs.append((line, []))
    return pairs


def expectedPattern(example: str) -> re.Pattern[str]:
    """
    The README's example output line as a pattern: C{...} stands for
    anything, and each number for any number (ports, sizes and pids are
    examples; the tests check the values that matter on their own).
    """
    parts = re.split(r"(\.\.\.|\d+(?:\.\d+)*)", example)
    pattern = ""
    for part in parts:
        if part == "...":
            pattern += ".*"
        elif re.fullmatch(r"\d+(?:\.\d+)*", part):
            pattern += r"[0-9.]+"
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


def sandboxProperties(unit: str) -> list[str]:
    """
    The C{[Service]} settings of a unit file that make up its sandbox, as
    C{systemd-run --property} arguments: all of them but those about the
    process and its life cycle (L{NOT_SANDBOX}) and the directories systemd
    makes for it (which belong to the real service).
    """
    properties = []
    section = ""
    for line in unit.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section != "[Service]" or key in NOT_SANDBOX:
            continue
        if key.endswith(("Directory", "DirectoryMode")):
            continue
        properties.append(f"--property={key}={value}")
    return properties


def restated(execStart: str, twistd: list[str], proxy: list[str]) -> str:
    """
    A unit's C{ExecStart=} line with C{twistd} options added before the
    C{responses-api-proxy} plugin name and C{proxy} options after it.
    """
    return substitute(
        execStart,
        " responses-api-proxy ",
        " " + " ".join([*twistd, "responses-api-proxy", *proxy]) + " ",
    )


# The shared container -----------------------------------------------------------


@dataclass
class Installed:
    """
    The booted container with the proxy installed as the README says.

    @ivar installed: the output of the README's install block.
    @ivar afterInstall: C{systemctl is-enabled} and C{is-active} of the
        service right after that block, and its journal up to then.
    """

    container: Container
    installed: Result
    afterInstall: dict[str, str]


_shared: Installed | None = None
_cannotBoot: str | None = None


async def installedContainer() -> Installed:
    """
    Boot the container and install the proxy, once per test process.

    @raise SkipTest: where no container can be booted here.
    """
    global _shared, _cannotBoot
    if _shared is not None and _shared.container.process.poll() is None:
        return _shared
    if _cannotBoot is not None:
        raise SkipTest(_cannotBoot)
    try:
        container = await Container.boot(containerRoot())
    except CannotBoot as e:
        _cannotBoot = str(e)
        raise SkipTest(_cannotBoot) from None
    try:
        wheels = os.path.abspath("realsystemd-wheels")
        buildWheels(wheels)
        _shared = await install(container, wheels)
    except BaseException:
        container.shutdown()
        raise
    return _shared


async def install(container: Container, wheels: str) -> Installed:
    """
    Follow the README's "Install under systemd" as root with the key in
    C{$OPENAI_API_KEY}, from a copy of the checkout's C{contrib/} in
    C{/root/src}; then start the fake upstream.
    """
    container.copyTree(wheels, "/root/wheels")
    container.copyTree(os.path.join(CHECKOUT, "contrib"), "/root/src/contrib")
    [block, _] = readmeShellBlocks("### Install under systemd")
    # Offline: the wheels built and downloaded on the host.
    block = substitute(
        block,
        "/opt/responses-api-proxy/bin/pip install responses-api-proxy ",
        "/opt/responses-api-proxy/bin/pip install --no-index --find-links "
        "/root/wheels responses-api-proxy ",
    )
    installed = await container.sh(
        block, env={"OPENAI_API_KEY": KEY}, cwd="/root/src", timeout=300
    )
    artefact("readme-install.txt", installed.out + installed.err)
    states = {}
    for what in ("is-enabled", "is-active"):
        states[what] = (
            await container.run(["systemctl", what, SERVICE], check=False)
        ).out.strip()

    async def journal() -> str:
        await container.run(["journalctl", "--sync"])
        text = (await container.run(["journalctl", "-u", SERVICE, "-o", "cat"])).out
        return text if "listening on" in text else ""

    try:
        states["journal"] = await poll(journal, 20, what="the service's start")
    except AssertionError:
        states["journal"] = (await container.run(["journalctl", "-u", SERVICE])).out

    pki = makeTestPKI(os.path.abspath("realsystemd-pki"))
    with open(pki.caCert, "rb") as f:
        container.writeFile(CA_PATH, f.read())
    for source, inside in [
        (pki.serverCert, "/srv/fake-upstream/server.pem"),
        (pki.serverKey, "/srv/fake-upstream/server-key.pem"),
    ]:
        with open(source, "rb") as f:
            container.writeFile(inside, f.read(), 0o600)
    container.writeFile("/srv/fake-upstream/upstream.py", FAKE_UPSTREAM)
    container.writeFile(REQUESTS_LOG, "")
    await container.run(
        [
            "systemd-run",
            "--unit=fake-upstream",
            "--property=Type=notify",
            "--property=NotifyAccess=main",
            "python3",
            "/srv/fake-upstream/upstream.py",
            str(UPSTREAM_PORT),
            "/srv/fake-upstream/server.pem",
            "/srv/fake-upstream/server-key.pem",
        ]
    )
    return Installed(container, installed, states)


# The tests' base ---------------------------------------------------------------------


class RealSystemdTestCase(TestCase):
    """
    Tests against the shared container, each from the same state.
    """

    timeout = 240
    container: Container
    installed: Installed
    cursor: str

    def setUp(self) -> Any:
        return Deferred.fromCoroutine(self.prepare())

    async def prepare(self) -> None:
        """
        The shared container, reset (L{reset}); subclasses add their own
        starting state.
        """
        self.installed = await installedContainer()
        self.container = self.installed.container
        await self.reset()

    async def reset(self) -> None:
        """
        Stop every proxy unit, drop the drop-ins, failed states and the
        usage ledger, put the original key back, empty the upstream's
        record; remember the journal's position.
        """
        c = self.container
        await c.sh(
            f"systemctl stop {' '.join(UNITS)} 2>/dev/null || true\n"
            "rm -rf /etc/systemd/system/responses-api-proxy*.d\n"
            # The usage ledger (StateDirectory=, under DynamicUser=).
            "rm -rf /var/lib/private/responses-api-proxy\n"
            f"rm -f {HOLD_FILE}\n"
            "systemctl reset-failed\n"
            "systemctl daemon-reload\n"
        )
        c.writeFile(KEY_PATH, KEY + "\n", 0o600)
        c.writeFile(REQUESTS_LOG, "")
        shown = await c.run(["journalctl", "--show-cursor", "-n", "0", "-q"])
        self.cursor = shown.out.strip().removeprefix("-- cursor: ")

    # Units

    async def configure(
        self, unit: str, twistd: list[str] | None = None, proxy: list[str] | None = None
    ) -> None:
        """
        Clear and restate C{unit}'s C{ExecStart=} with more options, in the
        drop-in that C{systemctl edit} would write, and reload.
        """
        text = self.container.readFile(f"/etc/systemd/system/{unit}")
        [execStart] = [
            line for line in text.splitlines() if line.startswith("ExecStart=")
        ]
        self.container.writeFile(
            f"/etc/systemd/system/{unit}.d/override.conf",
            "[Service]\nExecStart=\n"
            f"{restated(execStart, twistd or [], proxy or [])}\n",
        )
        await self.container.run(["systemctl", "daemon-reload"])

    async def holdNextStart(self, unit: str) -> None:
        """
        Make C{unit}'s next start wait (in C{ExecStartPre=}, before the
        proxy runs) until L{releaseStart}.
        """
        self.container.writeFile(
            f"/etc/systemd/system/{unit}.d/hold.conf",
            "[Service]\nExecStartPre=/bin/sh -c "
            f"'while [ ! -e {HOLD_FILE} ]; do sleep 0.02; done'\n",
        )
        await self.container.run(["systemctl", "daemon-reload"])

    async def releaseStart(self) -> None:
        """
        Let the start held by L{holdNextStart} go on.
        """
        await self.container.run(["touch", HOLD_FILE])

    async def show(self, unit: str, *properties: str) -> dict[str, str]:
        """
        C{systemctl show} of these properties of C{unit}.
        """
        shown = await self.container.run(
            ["systemctl", "show", unit, *(f"--property={p}" for p in properties)]
        )
        return dict(
            line.split("=", 1) for line in shown.out.splitlines() if "=" in line
        )

    async def mainPID(self, unit: str) -> int:
        """
        C{unit}'s main process (its PID in the container); it must have one.
        """
        pid = int((await self.show(unit, "MainPID"))["MainPID"])
        self.assertNotEqual(pid, 0, f"{unit} has no main process")
        return pid

    async def waitForActive(self, unit: str) -> None:
        """
        Wait (with a deadline) until C{unit} is active.
        """

        async def active() -> bool:
            return (await self.show(unit, "ActiveState"))["ActiveState"] == "active"

        await poll(active, 30, what=f"{unit} to be active")

    async def procStatus(self, pid: int) -> dict[str, str]:
        """
        C{/proc/PID/status} of a process in the container (its own PID).
        """
        status = await self.container.run(["cat", f"/proc/{pid}/status"])
        return {
            key: value.strip()
            for key, _, value in (
                line.partition(":") for line in status.out.splitlines()
            )
        }

    # Journal

    async def journal(self, unit: str) -> list[dict[str, Any]]:
        """
        C{unit}'s journal entries since the test began, as JSON objects.
        """
        await self.container.run(["journalctl", "--sync"])
        shown = await self.container.run(
            ["journalctl", "-u", unit, "--after-cursor", self.cursor, "-o", "json"]
        )
        return [json.loads(line) for line in shown.out.splitlines() if line.strip()]

    async def ownLines(self, unit: str) -> list[str]:
        """
        What C{unit}'s processes wrote to the journal since the test began
        (not systemd's own messages about the unit).
        """
        return [
            str(entry.get("MESSAGE"))
            for entry in await self.journal(unit)
            if entry.get("_PID") != "1"
        ]

    # Clients

    async def post(
        self, *headers: str, timeout: float = 30.0, user: str | None = None
    ) -> tuple[int, str]:
        """
        POST a small Responses request to the proxy from inside the
        container (as root, or as C{user}): the status and the body.
        """
        argv = [] if user is None else ["runuser", "-u", user, "--"]
        argv += ["curl", "-sS", "--max-time", str(timeout), "-w", "\n%{http_code}"]
        for header in ["Content-Type: application/json", *headers]:
            argv += ["-H", header]
        argv += ["--data-binary", '{"model": "test", "input": "hi", "stream": true}']
        result = await self.container.run([*argv, f"{PROXY}/v1/responses"])
        body, _, status = result.out.rpartition("\n")
        return int(status), body

    async def get(self, path: str = "/") -> Result:
        """
        C{curl} GET from inside the container, printing only the status
        (exit code 7: nothing listens).
        """
        return await self.container.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "20",
                PROXY + path,
            ],
            check=False,
        )

    async def upstreamRequests(self) -> list[dict[str, str]]:
        """
        What the upstream recorded of each request it received since the
        test began: C{path}, C{authorization}, C{request_id}.
        """
        text = self.container.readFile(REQUESTS_LOG)
        return [json.loads(line) for line in text.splitlines()]

    async def upstreamKeys(self) -> list[str]:
        """
        The C{Authorization} header of each request the upstream received
        since the test began.
        """
        return [request["authorization"] for request in await self.upstreamRequests()]

    async def waitForListeningQueue(self, timeout: float = 20.0) -> None:
        """
        Wait until a connection to port 8080 is established on the server
        side (in the listening socket's queue, or accepted).
        """

        async def established() -> bool:
            table = (await self.container.run(["cat", "/proc/net/tcp"])).out
            return any(
                fields[1].endswith(":1F90") and fields[3] == "01"
                for fields in (line.split() for line in table.splitlines()[1:])
            )

        await poll(established, timeout, what="a connection to 127.0.0.1:8080")


# The plain service ----------------------------------------------------------------


class PlainServiceTests(RealSystemdTestCase):
    """
    C{responses-api-proxy.service}: C{LoadCredential=}, C{DynamicUser=},
    C{Type=notify}, installed and checked as the README says.
    """

    async def test_readmeInstall(self) -> None:
        """
        The README's install block, run as written (offline pip aside),
        leaves the service enabled and running; its plugin-cache step means
        the sandboxed twistd never tries to write one, and nothing failed.
        """
        after = self.installed.afterInstall
        self.assertEqual(
            (after["is-enabled"], after["is-active"]), ("enabled", "active")
        )
        self.assertIn("listening on 127.0.0.1:8080", after["journal"])
        self.assertNotIn("plugin cache", after["journal"])
        self.assertNotIn("Traceback", after["journal"])

    async def test_startReturnsOnceListening(self) -> None:
        """
        C{systemctl start} returns only once the proxy has sent C{READY=1}:
        at that moment the port already answers and server-info exists.
        """
        result = await self.container.sh(
            f"systemctl start {SERVICE}\n"
            f"cat {RUNTIME_DIRECTORY}/server-info.json\n"
            f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 {PROXY}/\n"
        )
        info, status = result.out.splitlines()
        self.assertEqual(status, "403")
        self.assertEqual(json.loads(info)["port"], 8080)

    async def test_statusLine(self) -> None:
        """
        C{systemctl status responses-api-proxy} shows what the README
        shows: active (running), and the proxy's own C{STATUS=} line.
        """
        await self.container.run(["systemctl", "start", SERVICE])
        [block, _] = readmeShellBlocks("### Is it healthy?")
        [(command, expected)] = expectations(block)
        status = await self.container.sh(command)
        artefact("systemctl-status.txt", status.out)
        for line in expected:
            self.assertRegex(status.out, expectedPattern(line))
        self.assertIn('Status: "listening on 127.0.0.1:8080"', status.out)

    async def test_healthChecks(self) -> None:
        """
        The README's liveness checks answer what it shows: 403 for C{GET /}
        (refused locally, the key unused) and server-info with the port and
        the main PID.
        """
        await self.container.run(["systemctl", "start", SERVICE])
        [_, block] = readmeShellBlocks("### Is it healthy?")
        for command, expected in expectations(block):
            result = await self.container.sh(command)
            self.assertRegex(result.out.strip(), expectedPattern("\n".join(expected)))
        shown = await self.container.run(
            ["cat", f"{RUNTIME_DIRECTORY}/server-info.json"]
        )
        self.assertEqual(
            json.loads(shown.out), {"port": 8080, "pid": await self.mainPID(SERVICE)}
        )
        self.assertEqual(await self.upstreamKeys(), [])

    async def test_keyReachesUpstream(self) -> None:
        """
        With C{--upstream-url} and C{--upstream-ca} added to C{ExecStart=},
        a request reaches the HTTPS upstream (trusted through the CA file
        alone) with the key from C{LoadCredential=}, and the stream comes back.
        """
        await self.configure(SERVICE, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])
        status, body = await self.post()
        self.assertEqual(status, 200, body)
        self.assertIn("event: response.completed", body)
        self.assertEqual(await self.upstreamKeys(), [f"Bearer {KEY}"])

    async def test_keyNotExposed(self) -> None:
        """
        After the key was used, it is in no C{systemctl show} property, no
        process's environment or command line in the container, and no
        journal field of any unit.
        """
        await self.configure(SERVICE, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])
        status, body = await self.post()
        self.assertEqual((status, await self.upstreamKeys()), (200, [f"Bearer {KEY}"]))
        shown = await self.container.run(["systemctl", "show", "--all", SERVICE])
        self.assertNotIn(KEY, shown.out)
        mainPID = await self.mainPID(SERVICE)
        processes = self.container.processes()
        self.assertIn(
            mainPID, processes.values(), "the proxy is not among the processes"
        )
        for hostPID, pid in processes.items():
            for name in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{hostPID}/{name}", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                self.assertNotIn(KEY.encode(), data, f"/proc/{pid}/{name}")
        journal = await self.container.run(["journalctl", "--output=export", "--all"])
        self.assertIn("POST /v1/responses -> 200", journal.out)
        self.assertNotIn(KEY, journal.out)
        self.assertNotIn(KEY[len("sk-") :], journal.out)

    async def test_emptyCredential(self) -> None:
        """
        An empty key file: C{systemctl start} fails, the unit is left
        I{failed} (not restarted in a loop), and the journal has one line
        from the proxy saying why.
        """
        self.container.writeFile(KEY_PATH, "", 0o600)
        started = await self.container.run(["systemctl", "start", SERVICE], check=False)
        self.assertNotEqual(started.exitCode, 0)
        state = await self.show(
            SERVICE, "ActiveState", "SubState", "Result", "NRestarts"
        )
        self.assertEqual(
            state,
            {
                "ActiveState": "failed",
                "SubState": "failed",
                "Result": "exit-code",
                "NRestarts": "0",
            },
        )
        [line] = await poll(lambda: self.ownLines(SERVICE), 20, what="the proxy's line")
        self.assertRegex(line, r"^responses-api-proxy: .*API key.*empty")

    async def test_crashRestarts(self) -> None:
        """
        A proxy killed by a signal is restarted (C{Restart=on-failure}),
        with the same key.
        """
        await self.container.run(["systemctl", "start", SERVICE])
        before = await self.mainPID(SERVICE)
        await self.container.run(["systemctl", "kill", "--signal=KILL", SERVICE])

        async def restarted() -> bool:
            state = await self.show(SERVICE, "ActiveState", "MainPID", "NRestarts")
            return state["ActiveState"] == "active" and state["MainPID"] not in (
                "0",
                str(before),
            )

        await poll(restarted, 30, what="the automatic restart")
        self.assertEqual((await self.show(SERVICE, "NRestarts"))["NRestarts"], "1")
        self.assertEqual((await self.get()).out, "403")

    async def test_restartRefusesConnections(self) -> None:
        """
        As the README says of the plain service: between the old process's
        exit and the new one's start, nothing listens, so a new connection
        is refused.
        """
        await self.container.run(["systemctl", "start", SERVICE])
        before = await self.mainPID(SERVICE)
        await self.holdNextStart(SERVICE)
        await self.container.run(["systemctl", "restart", "--no-block", SERVICE])

        async def held() -> bool:
            state = await self.show(SERVICE, "ActiveState", "SubState")
            return state == {"ActiveState": "activating", "SubState": "start-pre"}

        await poll(held, 30, what="the restart to reach ExecStartPre=")
        refused = await self.get()
        self.assertEqual((refused.exitCode, refused.out), (7, "000"))
        await self.releaseStart()
        await self.waitForActive(SERVICE)
        self.assertNotEqual(await self.mainPID(SERVICE), before)
        self.assertEqual((await self.get()).out, "403")

    async def test_keyRotation(self) -> None:
        """
        The README's rotation steps, as written: the restarted proxy sends
        the new key, and the new key file is private.
        """
        await self.configure(SERVICE, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])
        self.assertEqual((await self.post())[0], 200)
        [block] = readmeShellBlocks("### Rotating the key")
        await self.container.sh(block, env={"NEW_OPENAI_API_KEY": NEW_KEY})
        self.assertEqual((await self.post())[0], 200)
        self.assertEqual(
            await self.upstreamKeys(), [f"Bearer {KEY}", f"Bearer {NEW_KEY}"]
        )
        mode = await self.container.run(["stat", "-c", "%a %U", KEY_PATH])
        self.assertEqual(mode.out.strip(), "600 root")


class JournalTests(RealSystemdTestCase):
    """
    The README's journal examples, in text and in JSON.
    """

    async def test_textLog(self) -> None:
        """
        C{journalctl -u responses-api-proxy -f}, as written, shows each
        exchange as the README's example line does, as it happens.
        """
        await self.configure(SERVICE, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])
        [block, _] = readmeShellBlocks("### Logs")
        [(command, [example])] = expectations(block)
        follow = self.container.spawn(["sh", "-c", f"exec {command}"])
        self.addCleanup(follow.kill)
        await poll(lambda: "listening on" in follow.out, 20, what="journalctl -f")
        seen = len(follow.out)
        status, _ = await self.post()
        self.assertEqual(status, 200)
        [request] = await self.upstreamRequests()
        pattern = expectedPattern(example)
        line = await poll(lambda: pattern.search(follow.out, seen), 20, what=example)
        self.assertIn(
            "POST /v1/responses -> 200 (complete, upstream 200,", line.group(0)
        )
        self.assertRegex(line.group(0), f"x-request-id {request['request_id']}[,)]")

    async def test_jsonLog(self) -> None:
        """
        With C{--logger responses_proxy.jsonlog.observer} in the twistd
        options, the README's C{jq} command, as written, prints one object
        per exchange with the fields it lists, even with systemd's own lines
        and earlier text lines in the unit's journal.
        """
        await self.configure(SERVICE, twistd=JSON_LOGGER, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])
        status, _ = await self.post()
        self.assertEqual(status, 200)
        [request] = await self.upstreamRequests()
        [_, block] = readmeShellBlocks("### Logs")
        [(command, _)] = expectations(block)

        async def exchanges() -> list[dict[str, Any]]:
            result = await self.container.sh(command)
            return [
                record
                for record in map(json.loads, result.out.splitlines())
                if record.get("request_id") == request["request_id"]
            ]

        [record] = await poll(exchanges, 20, what="the exchange in the JSON log")
        fields = {
            key: record[key]
            for key in (
                "exchange",
                "method",
                "path",
                "status",
                "outcome",
                "upstream_status",
            )
        }
        self.assertEqual(
            fields,
            {
                "exchange": True,
                "method": "POST",
                "path": "/v1/responses",
                "status": 200,
                "outcome": "complete",
                "upstream_status": 200,
            },
        )
        self.assertGreater(record["bytes_in"], 0)
        self.assertGreater(record["bytes_out"], 0)
        self.assertGreaterEqual(record["duration_ms"], 0)
        # The caller (root's curl in the container) is known: the socket
        # table lookup works under the unit's sandbox (AF_NETLINK allowed).
        self.assertEqual((record["uid"], record["user"]), (0, "root"))


# Socket activation ---------------------------------------------------------------


class SocketActivationTests(RealSystemdTestCase):
    """
    C{responses-api-proxy-activated.socket} and its service, set up as the
    README says (after the plain service's install, as an operator
    switching would).
    """

    async def prepare(self) -> None:
        await super().prepare()
        await self.container.run(["systemctl", "start", SERVICE])
        [_, block] = readmeShellBlocks("### Install under systemd")
        await self.container.sh(block, cwd="/root/src")

    async def test_switchFromPlainService(self) -> None:
        """
        Enabling the socket while the plain service runs (the README's
        steps after its install) stops the service first and then listens:
        the two setups never hold the port at once. Switching back works too.
        """
        states = await self.container.run(
            ["systemctl", "is-active", SOCKET, SERVICE, ACTIVATED], check=False
        )
        self.assertEqual(states.out.split(), ["active", "inactive", "inactive"])
        self.assertEqual((await self.get()).out, "403")
        await self.container.run(["systemctl", "enable", "--now", SERVICE])
        states = await self.container.run(
            ["systemctl", "is-active", SOCKET, SERVICE, ACTIVATED], check=False
        )
        self.assertEqual(states.out.split(), ["inactive", "active", "inactive"])
        self.assertEqual((await self.get()).out, "403")

    async def test_firstConnectionStarts(self) -> None:
        """
        Before any connection only the socket is listening; the first
        connection starts the service, and is answered.
        """
        status = await self.container.run(["systemctl", "status", SOCKET], check=False)
        self.assertIn("Active: active (listening)", status.out)
        self.assertIn("Listen: 127.0.0.1:8080 (Stream)", status.out)
        self.assertEqual(
            (await self.show(ACTIVATED, "ActiveState"))["ActiveState"], "inactive"
        )
        self.assertEqual((await self.get()).out, "403")
        state = await self.show(ACTIVATED, "ActiveState", "SubState", "StatusText")
        self.assertEqual(
            state,
            {
                "ActiveState": "active",
                "SubState": "running",
                "StatusText": "listening on 127.0.0.1:8080",
            },
        )

    async def test_keyReachesUpstream(self) -> None:
        """
        The socket-activated service gets the key through its own
        C{LoadCredential=} and forwards with it.
        """
        await self.configure(ACTIVATED, proxy=UPSTREAM_OPTIONS)
        status, body = await self.post()
        self.assertEqual(status, 200, body)
        self.assertEqual(await self.upstreamKeys(), [f"Bearer {KEY}"])

    async def test_keyRotation(self) -> None:
        """
        The README's rotation steps, restarting the socket-activated
        service as its comment says: the new process sends the new key.
        """
        await self.configure(ACTIVATED, proxy=UPSTREAM_OPTIONS)
        self.assertEqual((await self.post())[0], 200)
        [block] = readmeShellBlocks("### Rotating the key")
        block = substitute(
            block,
            "systemctl restart responses-api-proxy ",
            f"systemctl restart {ACTIVATED} ",
        )
        await self.container.sh(block, env={"NEW_OPENAI_API_KEY": NEW_KEY})
        self.assertEqual((await self.post())[0], 200)
        self.assertEqual(
            await self.upstreamKeys(), [f"Bearer {KEY}", f"Bearer {NEW_KEY}"]
        )

    async def test_restartQueuesConnections(self) -> None:
        """
        The socket keeps listening across C{systemctl restart}: a
        connection made while no proxy process runs (the new one held
        before it starts) is queued, then answered by the new process.
        """
        self.assertEqual((await self.get()).out, "403")
        before = await self.mainPID(ACTIVATED)
        await self.holdNextStart(ACTIVATED)
        await self.container.run(["systemctl", "restart", "--no-block", ACTIVATED])

        async def held() -> bool:
            state = await self.show(ACTIVATED, "ActiveState", "SubState")
            return state == {"ActiveState": "activating", "SubState": "start-pre"}

        await poll(held, 30, what="the restart to reach ExecStartPre=")
        client = self.container.spawn(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "30",
                PROXY + "/",
            ]
        )
        await self.waitForListeningQueue()
        self.assertFalse(client.output.ended.called, "answered while no proxy ran")
        self.assertEqual(
            (await self.show(ACTIVATED, "SubState"))["SubState"], "start-pre"
        )
        await self.releaseStart()
        answered = await client.result()
        self.assertEqual((answered.exitCode, answered.out), (0, "403"))
        self.assertNotEqual(await self.mainPID(ACTIVATED), before)


# The sandbox ------------------------------------------------------------------------


class SandboxTests(RealSystemdTestCase):
    """
    The units' sandbox as systemd applies it, seen from inside the
    running service's own namespaces.
    """

    async def prepare(self) -> None:
        await super().prepare()
        await self.container.run(["systemctl", "start", SERVICE])
        self.pid = await self.mainPID(SERVICE)
        self.uid = int((await self.procStatus(self.pid))["Uid"].split()[0])

    async def asService(self, probe: str) -> Any:
        """
        Run the Python C{probe} (it prints one JSON value) in the running
        service's mount namespace, as its uid and gid and so without
        capabilities: what the proxy itself could do with files and
        C{/proc}. Returns the value.
        """
        result = await self.container.run(
            [
                "nsenter",
                f"--target={self.pid}",
                "--mount",
                f"--setuid={self.uid}",
                f"--setgid={self.uid}",
                "--",
                "python3",
                "-c",
                probe,
            ]
        )
        return json.loads(result.out)

    async def test_securityScore(self) -> None:
        """
        C{systemd-analyze security} rates both services as the README says.
        """
        with open(os.path.join(CHECKOUT, "README.md"), encoding="utf-8") as f:
            [claimed] = re.findall(r"rates the unit (\d+\.\d+)", f.read())
        await self.container.sh(
            f"install -m 0644 contrib/systemd/{ACTIVATED} /etc/systemd/system/\n"
            "systemctl daemon-reload",
            cwd="/root/src",
        )
        for unit in (SERVICE, ACTIVATED):
            result = await self.container.run(["systemd-analyze", "security", unit])
            artefact(f"systemd-analyze-security-{unit}.txt", result.out)
            [score] = re.findall(
                r"Overall exposure level for \S+: (\d+\.\d+)", result.out
            )
            self.assertEqual(score, claimed, unit)

    async def test_systemCalls(self) -> None:
        """
        Under the unit's own sandbox settings, applied by systemd to a
        probe (C{systemd-run}): only IP and Unix sockets, C{mlock} and
        write+execute memory allowed, no new namespaces, personality or
        privileged calls.
        """
        unit = self.container.readFile(f"/etc/systemd/system/{SERVICE}")
        result = await self.container.run(
            [
                *("systemd-run", "--wait", "--pipe", "--quiet", "--collect"),
                *sandboxProperties(unit),
                *("python3", "-c", SYSCALL_PROBE),
            ]
        )
        outcomes = json.loads(result.out)
        artefact("system-calls.json", json.dumps(outcomes, indent=2))
        self.assertEqual(outcomes, SYSCALLS)

    async def test_credentials(self) -> None:
        """
        The proxy runs as a dynamic uid with no capabilities at all, with
        C{NoNewPrivs}, a seccomp filter, umask 0077 and the limits of the
        unit.
        """
        status = await self.procStatus(self.pid)
        self.assertIn(self.uid, DYNAMIC_UIDS)
        self.assertEqual(status["Uid"].split(), [str(self.uid)] * 4)
        self.assertEqual(status["Gid"].split(), [str(self.uid)] * 4)
        for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(status[name], 16), 0, name)
        self.assertEqual(
            (status["NoNewPrivs"], status["Seccomp"], status["Umask"]),
            ("1", "2", "0077"),
        )
        limits = (await self.container.run(["cat", f"/proc/{self.pid}/limits"])).out
        self.assertRegex(limits, r"Max locked memory\s+8388608\s+8388608")
        self.assertRegex(limits, r"Max core file size\s+0\s+0")
        mounts = (await self.container.run(["cat", "/proc/self/mountinfo"])).out
        [credentials] = [
            line
            for line in mounts.splitlines()
            if " /run/credentials/responses-api-proxy.service " in line
        ]
        self.assertIn(" - ramfs ", credentials)
        listing = await self.container.run(
            ["stat", "-c", "%a %u", f"/run/credentials/{SERVICE}/openai-api-key"]
        )
        self.assertEqual(listing.out.split(), ["400", str(self.uid)])

    async def test_writablePaths(self) -> None:
        """
        The service can write only to its runtime and state directories and
        to its own private C{/tmp}, C{/var/tmp} and C{/dev/mqueue} (what it
        writes there is invisible to everyone else).
        """
        outcomes = await self.asService(WRITE_PROBE % (PROBED,))
        artefact("writable-paths.json", json.dumps(outcomes, indent=2))
        writable = sorted(
            path for path, outcome in outcomes.items() if outcome == "written"
        )
        self.assertEqual(writable, sorted(WRITABLE), outcomes)
        for path in set(WRITABLE) - {RUNTIME_DIRECTORY, STATE_DIRECTORY}:
            await self.asService(
                f"open('{path}/private-probe', 'w').close(); print('true')"
            )
            seen = await self.container.run(
                ["test", "-e", f"{path}/private-probe"], check=False
            )
            self.assertEqual(seen.exitCode, 1, f"{path} is not private to the service")

    async def test_otherProcessesInvisible(self) -> None:
        """
        C{ProtectProc=invisible} and C{ProcSubset=pid}: in the service's
        C{/proc} there is no other user's process (not even PID 1) and no
        system information.
        """
        mountinfo = (
            await self.container.run(["cat", f"/proc/{self.pid}/mountinfo"])
        ).out
        [proc] = [line for line in mountinfo.splitlines() if line.split()[4] == "/proc"]
        self.assertIn("hidepid=invisible", proc)
        self.assertIn("subset=pid", proc)
        seen = await self.asService(PROC_PROBE)
        artefact("proc-as-the-service.json", json.dumps(seen, indent=2))
        self.assertNotIn("1", seen["processes"])
        self.assertEqual(set(seen["processes"].values()), {str(self.uid)}, seen)
        self.assertEqual((seen["sys"], seen["meminfo"]), (False, False))


# Restarts, accounting and the admin socket ------------------------------------------


class DrainTests(RealSystemdTestCase):
    """
    C{systemctl restart} of the socket-activated service with a stream in
    flight: the old process drains (the stream finishes), while systemd's
    socket queues the connections that arrive, for the new process.
    """

    async def prepare(self) -> None:
        await super().prepare()
        [_, block] = readmeShellBlocks("### Install under systemd")
        await self.container.sh(block, cwd="/root/src")
        await self.configure(ACTIVATED, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "restart", SOCKET])

    async def test_restartFinishesStream(self) -> None:
        """
        A 3 s stream in flight when C{systemctl restart} begins arrives
        whole; a connection made during the drain is answered by the new
        process; the journal shows the drain.
        """
        self.assertEqual((await self.get()).out, "403")
        before = await self.mainPID(ACTIVATED)
        stream = self.container.spawn(
            [
                "curl",
                "-sSN",  # -N: what arrives is written at once, not buffered
                "--max-time",
                "60",
                "-H",
                "Content-Type: application/json",
                "-H",
                "x-fake-events: 30",
                "-H",
                "x-fake-interval-ms: 100",
                "--data-binary",
                '{"model": "test", "input": "hi", "stream": true}',
                PROXY + "/v1/responses",
            ]
        )
        await poll(
            lambda: "response.output_text.delta" in stream.out, 30, what="a stream"
        )
        restart = self.container.spawn(["systemctl", "restart", ACTIVATED])

        async def draining() -> bool:
            state = await self.show(ACTIVATED, "ActiveState")
            return state["ActiveState"] == "deactivating"

        try:
            await poll(draining, 30, what="the old process to drain")
        except AssertionError:
            lines = "\n".join(await self.ownLines(ACTIVATED))
            state = await self.show(ACTIVATED, "ActiveState", "SubState", "MainPID")
            raise AssertionError(f"{state}\n{stream.out}\n{lines}") from None
        during = self.container.spawn(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "60",
                PROXY + "/",
            ]
        )
        finished = await stream.result()
        await restart.result()
        answered = await during.result()
        self.assertEqual(finished.exitCode, 0, finished.err)
        self.assertEqual(finished.out.count("event: response.output_text.delta"), 29)
        self.assertIn("event: response.completed", finished.out)
        self.assertEqual((answered.exitCode, answered.out), (0, "403"))
        self.assertNotEqual(await self.mainPID(ACTIVATED), before)
        lines = "\n".join(await self.ownLines(ACTIVATED))
        self.assertIn("Draining: 1 exchanges in flight", lines)
        self.assertIn("POST /v1/responses -> 200 (complete,", lines)


class AccountingTests(RealSystemdTestCase):
    """
    The ledger in C{StateDirectory=} and the admin socket in
    C{RuntimeDirectory=}, as the units set them up.
    """

    async def prepare(self) -> None:
        await super().prepare()
        await self.configure(SERVICE, proxy=UPSTREAM_OPTIONS)
        await self.container.run(["systemctl", "start", SERVICE])

    async def test_usageSurvivesRestart(self) -> None:
        """
        Exchanges before and after a restart are in the ledger, which root
        reads with the README's C{responses-api-proxy usage} command; its
        directory is 0700 and its file 0600, owned by the dynamic user.
        """
        self.assertEqual((await self.post())[0], 200)
        await self.container.run(["systemctl", "restart", SERVICE])
        self.assertEqual((await self.post())[0], 200)
        [block] = readmeShellBlocks("### Usage ledger")
        [(command, [header])] = expectations(block)
        table = await self.container.sh(command)
        artefact("usage-by-model.txt", table.out)
        self.assertRegex(table.out.splitlines()[0], expectedPattern(header))
        self.assertRegex(table.out, r"(?m)^test +2 ")
        shown = await self.container.sh(command + " --json")
        [row] = json.loads(shown.out)["rows"]
        self.assertEqual(
            (row["model"], row["exchanges"], row["total_tokens"]), ("test", 2, 24)
        )
        listing = await self.container.run(
            [
                "sh",
                "-c",
                f"stat -L -c '%a %U' {STATE_DIRECTORY} {STATE_DIRECTORY}/usage.sqlite3",
            ]
        )
        [directory, ledger] = listing.out.splitlines()
        self.assertEqual(directory.split()[0], "700")
        self.assertEqual(ledger.split()[0], "600")

    async def test_adminSocket(self) -> None:
        """
        The admin socket is 0600, owned by the dynamic user; root reads
        C{/healthz} and C{/metrics} through it with the README's commands.
        """
        self.assertEqual((await self.post())[0], 200)
        pid = await self.mainPID(SERVICE)
        uid = (await self.procStatus(pid))["Uid"].split()[0]
        listing = await self.container.run(["stat", "-c", "%a %u %F", ADMIN_SOCKET])
        self.assertEqual(listing.out.split(), ["600", uid, "socket"])
        [block] = readmeShellBlocks("### Metrics and health")
        [(health, expectedHealth), (metrics, expectedMetrics)] = expectations(block)
        self.assertIn(ADMIN_SOCKET, health)
        shown = await self.container.sh(health)
        self.assertEqual(json.loads(shown.out)["status"], "serving")
        for line in expectedHealth:
            self.assertRegex(shown.out, expectedPattern(line))
        shown = await self.container.sh(metrics)
        self.assertEqual(
            shown.out.strip(),
            'responses_proxy_exchanges_total{outcome="complete",status="200"} 1.0',
        )
        for line in expectedMetrics:
            self.assertRegex(shown.out, expectedPattern(line))


class CallerTests(RealSystemdTestCase):
    """
    The README's "Who may use it": C{--allow-group} in a drop-in, under the
    real unit's sandbox (whose C{RestrictAddressFamilies=} must let the
    netlink caller lookup through).
    """

    async def test_allowGroup(self) -> None:
        """
        After the README's steps, the group's member (alice) is served, and
        another user (mallory) and root get 403 C{caller_not_allowed}; each
        exchange is logged with its caller.
        """
        await self.container.sh(
            "id alice >/dev/null 2>&1 || useradd --system alice\n"
            "id mallory >/dev/null 2>&1 || useradd --system mallory\n"
            "getent group codex-users >/dev/null && groupdel codex-users || true"
        )
        [block] = readmeShellBlocks("### Who may use it")
        [dropIn] = readmeShellBlocks("### Who may use it", language="ini")
        # The second line is C{systemctl edit}, which is interactive: the test
        # writes the drop-in it would, with the README's contents plus the
        # fake upstream's options.
        [create, edit] = block.strip().splitlines()
        self.assertEqual(edit, f"systemctl edit {SERVICE}")
        await self.container.sh(create)
        [section, clear, execStart] = dropIn.strip().splitlines()
        self.assertEqual((section, clear), ("[Service]", "ExecStart="))
        self.container.writeFile(
            f"/etc/systemd/system/{SERVICE}.d/override.conf",
            f"{section}\n{clear}\n{restated(execStart, [], UPSTREAM_OPTIONS)}\n",
        )
        await self.container.run(["systemctl", "daemon-reload"])
        await self.container.run(["systemctl", "restart", SERVICE])
        self.assertEqual((await self.post(user="alice"))[0], 200)
        for user in ("mallory", None):
            status, body = await self.post(user=user)
            self.assertEqual(status, 403, body)
            self.assertEqual(json.loads(body)["error"]["code"], "caller_not_allowed")
        lines = "\n".join(await self.ownLines(SERVICE))
        self.assertRegex(lines, r"-> 200 \(complete, .*caller alice \(uid \d+\)")
        self.assertRegex(
            lines, r"-> 403 \(rejected caller_not_allowed, .*caller mallory \(uid"
        )
        self.assertIn("caller root (uid 0)", lines)

"""
Real local users for the integration tests: create system users and groups
(as root), and run a small standard-library HTTP client as one of them.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import TestCase

from tests.support import spawnEntryPoint

# The client, run by the Debian python3 (a user cannot reach a virtualenv
# under /root): one request over TCP or a Unix socket, the answer as JSON.
CLIENT = r"""
import http.client, json, socket, sys
where, path, body, method = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4]
class UnixConnection(http.client.HTTPConnection):
    def __init__(self, socketPath):
        super().__init__("localhost")
        self.socketPath = socketPath
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.socketPath)
if where.startswith("/"):
    connection = UnixConnection(where)
else:
    host, port = where.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
if method == "POST":
    connection.request("POST", path, body, {"Content-Type": "application/json"})
else:
    connection.request(method, path)
response = connection.getresponse()
data = response.read()
try:
    code = json.loads(data).get("error", {}).get("code")
except ValueError:
    code = None
print(json.dumps({"status": response.status, "code": code}))
"""


def requireRoot() -> None:
    """
    Skip unless running as root with useradd available.
    """
    if os.geteuid() != 0:
        raise SkipTest("these tests need root (to create users and switch to them)")
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        raise SkipTest("useradd/groupadd are not installed (Debian package 'passwd')")


def systemGroup(name: str) -> grp.struct_group:
    """
    The system group C{name}, created if missing.
    """
    try:
        return grp.getgrnam(name)
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", name], capture_output=True)
    try:
        return grp.getgrnam(name)
    except KeyError:
        raise SkipTest(f"cannot create the system group {name}") from None


def systemUser(name: str, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
    """
    The system user C{name} (created if missing), a supplementary member of
    C{groups}.
    """
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            + [name],
            capture_output=True,
        )
    for group in groups:
        systemGroup(group)
        subprocess.run(["usermod", "-a", "-G", group, name], capture_output=True)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise SkipTest(f"cannot create the system user {name}") from None


def clientInterpreter() -> str:
    """
    A Python that any user can run (the client needs only the stdlib).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise SkipTest("no system Python that other users can run")


@dataclass
class Answer:
    """
    What the client saw.
    """

    status: int
    code: str | None


async def requestAs(
    testCase: TestCase,
    user: pwd.struct_passwd | None,
    where: str,
    path: str = "/v1/responses",
    body: bytes = b'{"model": "m", "input": "hi"}',
    method: str = "POST",
) -> Answer:
    """
    POST C{body} (or send a bodiless C{method}) to C{where} (C{host:port}
    or a Unix socket path) as C{user} (L{None}: as ourselves), and return
    the answer.
    """
    argv = [clientInterpreter(), "-I", "-c", CLIENT, where, path, body.decode()]
    argv.append(method)
    process = spawnEntryPoint(
        testCase,
        argv,
        stdin=None,
        env={"PATH": "/usr/bin:/bin"},
        uid=None if user is None else user.pw_uid,
        gid=None if user is None else user.pw_gid,
        path="/",
    )
    result = await process.ended
    try:
        answer: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        testCase.fail(f"the client failed: {result.stderr!r}")
    return Answer(answer["status"], answer["code"])

# -*- test-case-name: tests.test_routing -*-
"""
What is forwarded where: C{POST /v1/responses}, and the sub-paths of it
that C{--allow-path} names, each to the upstream URL's path with the same
suffix (the upstream URL's query string kept, e.g. Azure's C{api-version}).

Targets are compared byte for byte with the raw request target: no query
string, no percent-encoding, no case or slash variants.
"""

from __future__ import annotations

from collections.abc import Iterable

from responses_proxy.target import UpstreamTarget

RESPONSES_PATH = b"/v1/responses"


class BadAllowedPath(ValueError):
    """
    A C{--allow-path} that is not a sub-path of C{/v1/responses}.
    """


def checkAllowedPath(path: str) -> bytes:
    """
    C{path} as bytes, if it is an exact sub-path of C{/v1/responses}.

    @raise BadAllowedPath: it is not.
    """
    prefix = RESPONSES_PATH.decode() + "/"
    if not path.startswith(prefix) or len(path) == len(prefix):
        raise BadAllowedPath(
            f"{path!r} is not a sub-path of /v1/responses (e.g. /v1/responses/compact)"
        )
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")
    if any(c not in allowed for c in path) or "//" in path or "/." in path:
        raise BadAllowedPath(
            f"{path!r} may contain only letters, digits, '-', '_', '.' and single "
            "'/', and no dot segments"
        )
    if path.endswith("/"):
        raise BadAllowedPath(f"{path!r} must not end with '/'")
    return path.encode("ascii")


class Routes:
    """
    The forwarded targets and where each one goes upstream.
    """

    def __init__(self, upstream: UpstreamTarget, allowed: Iterable[bytes] = ()) -> None:
        self.upstream = upstream
        self._targets = {RESPONSES_PATH: upstream}
        for path in allowed:
            suffix = path[len(RESPONSES_PATH) :].decode("ascii")
            self._targets[path] = upstream.withPathSuffix(suffix)

    def __contains__(self, target: object) -> bool:
        return target in self._targets

    def upstreamFor(self, target: bytes) -> UpstreamTarget | None:
        """
        Where a forwarded target goes, or L{None} if it is not forwarded.
        """
        return self._targets.get(target)

    def forwards(self, method: bytes, target: bytes) -> bool:
        """
        Whether C{method target} is forwarded.
        """
        return method == b"POST" and target in self._targets

    @property
    def subPaths(self) -> list[bytes]:
        """
        The allowed sub-paths of C{/v1/responses}, in order.
        """
        return [path for path in self._targets if path != RESPONSES_PATH]

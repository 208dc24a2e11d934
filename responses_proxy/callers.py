# -*- test-case-name: tests.test_callers -*-
"""
Who may use the key: the local users and groups root allows.

Each connection's caller is determined once, when it is accepted
(L{responses_proxy.peers}: C{SO_PEERCRED} for Unix sockets, the kernel's
socket table for loopback TCP), and its user name resolved once per uid.

With C{--allow-user NAME|UID} or C{--allow-group NAME|GID} (both
repeatable), only those callers are admitted; everyone else gets 403
C{caller_not_allowed}, and a caller whose identity could not be determined
is refused too (fail closed). A group admits its members, primary or
supplementary, as the group database says: the user's primary group from
the passwd entry plus C{getgrouplist(3)} (so NSS sources such as LDAP
count), resolved on the caller's first connection and cached for
L{MEMBERSHIP_TTL} seconds, so a change to the groups takes effect within a
minute without a restart. A uid with no passwd entry belongs to no group.
Without these flags every local user may use the key, and each exchange is
still logged with its caller.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Iterable
from typing import Any

from responses_proxy.admission import Refusal, RequestHead
from responses_proxy.peers import UserNames, peerOf
from responses_proxy.record import Caller
from responses_proxy.startup import StartupError

MEMBERSHIP_TTL = 60.0


class CallerIdentity:
    """
    Turns an accepted transport into its L{Caller}.
    """

    def __init__(
        self,
        names: UserNames | None = None,
        peer: Callable[[object], Any] = peerOf,
    ) -> None:
        self._names = names or UserNames()
        self._peer = peer

    def __call__(self, transport: object) -> Caller:
        peer = self._peer(transport)
        return Caller(
            uid=peer.uid,
            pid=peer.pid,
            user=self._names.nameOf(peer.uid),
            unknownReason=peer.unknownReason,
        )


def resolveUser(value: str) -> int:
    """
    A uid from C{--allow-user}: a number, or a user name.

    @raise StartupError: no such user.
    """
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise StartupError(f"--allow-user {value}: no such user") from None


def resolveGroup(value: str) -> int:
    """
    A gid from C{--allow-group}: a number, or a group name.

    @raise StartupError: no such group.
    """
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise StartupError(f"--allow-group {value}: no such group") from None


def groupsOf(uid: int) -> frozenset[int]:
    """
    The groups C{uid} belongs to by the group database: its primary group
    and its supplementary ones; none without a passwd entry.
    """
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    return frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))


class CallerPolicy:
    """
    Admit only the allowed users and the members of the allowed groups.
    """

    def __init__(
        self,
        uids: Iterable[int],
        gids: Iterable[int],
        clock: Any,
        groups: Callable[[int], frozenset[int]] = groupsOf,
    ) -> None:
        self._uids = frozenset(uids)
        self._gids = frozenset(gids)
        self._clock = clock
        self._groups = groups
        self._memberships: dict[int, tuple[float, frozenset[int]]] = {}

    def _groupsOf(self, uid: int) -> frozenset[int]:
        now = self._clock.seconds()
        cached = self._memberships.get(uid)
        if cached is not None and now - cached[0] < MEMBERSHIP_TTL:
            return cached[1]
        groups = self._groups(uid)
        self._memberships[uid] = (now, groups)
        return groups

    def allows(self, caller: Caller) -> bool:
        """
        Whether C{caller} may use the key.
        """
        uid = caller.uid
        if uid is None:
            return False
        if uid in self._uids:
            return True
        return bool(self._gids) and not self._gids.isdisjoint(self._groupsOf(uid))

    def __call__(self, head: RequestHead) -> Refusal | None:
        caller = head.caller
        if self.allows(caller):
            return None
        return Refusal(
            403,
            "caller_not_allowed",
            f"This proxy is not available to {caller.describe()}: root "
            "allows only some local users to use its key.",
        )

# -*- test-case-name: tests.test_oidc -*-
"""
The access token of C{--github-oidc}, renewed in the background.

  - The first token is obtained before anything listens (in makeService).
  - Each token is renewed once L{RENEW_AT} of its lifetime has passed, in
    the background: requests never wait for a renewal while a valid token
    exists. A renewal that fails is retried with backoff (1 s, doubling,
    at most 30 s) and logged, and the current token is used meanwhile.
  - A token is used until shortly before it expires (L{validUntil}); with
    none valid, a request gets 503 C{upstream_auth_unavailable}
    (L{responses_proxy.forward}) and is never sent unauthorised.
  - An upstream 401 (the token was revoked) renews at once.
  - Each token lives in one locked buffer (L{responses_proxy.apikey.AuthHeader}).
    An exchange in flight keeps the header value it started with; a
    replaced token is wiped after L{WIPE_DELAY} seconds, time enough for
    every request that took it to have been written out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from responses_proxy.apikey import AuthHeader
from responses_proxy.oidc import AccessToken
from responses_proxy.record import ExchangeRecord

RENEW_AT = 0.8
WIPE_DELAY = 60.0
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


def validUntil(receivedAt: float, lifetime: float) -> float:
    """
    When a token received at C{receivedAt} stops being sent: a little before
    it expires (5 %, at most 5 s), so it is not refused on the way.
    """
    return receivedAt + lifetime - min(5.0, lifetime * 0.05)


def headerFor(token: AccessToken, requireLock: bool) -> AuthHeader:
    """
    The locked C{Bearer <access token>} value.
    """
    header = AuthHeader(b"Bearer " + token.value, requireLock=requireLock)
    try:
        header.lock()
    except OSError:
        if requireLock:
            header.wipe()
            raise
    return header


class RenewingCredential:
    """
    An L{responses_proxy.forward.Credential} whose value is renewed.

    @param fetch: gets a new token (in a thread, for real); fails with
        L{responses_proxy.oidc.WorkloadIdentityError}.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        first: AccessToken,
        fetch: Callable[[], Deferred[AccessToken]],
        requestToken: AuthHeader | None = None,
        requireLock: bool = False,
    ) -> None:
        self._clock = clock
        self._fetch = fetch
        self._requestToken = requestToken
        self._requireLock = requireLock
        self._header: AuthHeader | None = None
        self._validUntil = 0.0
        self._renewal: IDelayedCall | None = None
        self._renewing: Deferred[AccessToken] | None = None
        self._backoff = FIRST_BACKOFF
        self._retired: list[tuple[IDelayedCall, AuthHeader]] = []
        self._stopped = False
        self._install(first)

    def currentHeader(self) -> bytes | None:
        """
        The C{Authorization} value to send now, or L{None} when no valid
        token exists.
        """
        if self._header is None or self._clock.seconds() >= self._validUntil:
            return None
        return self._header.value

    def _install(self, token: AccessToken) -> None:
        now = self._clock.seconds()
        old = self._header
        self._header = headerFor(token, self._requireLock)
        self._validUntil = validUntil(now, token.lifetime)
        self._backoff = FIRST_BACKOFF
        if old is not None:
            self._retire(old)
        self._schedule(max(0.0, token.lifetime * RENEW_AT))

    def _retire(self, header: AuthHeader) -> None:
        def wipe() -> None:
            self._retired = [(c, h) for c, h in self._retired if h is not header]
            header.wipe()

        self._retired.append((self._clock.callLater(WIPE_DELAY, wipe), header))

    def _schedule(self, delay: float) -> None:
        if self._stopped:
            return
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = self._clock.callLater(delay, self.renew)

    def renew(self) -> Deferred[AccessToken] | None:
        """
        Get a new token now (unless a renewal is already under way).
        """
        if self._stopped or self._renewing is not None:
            return self._renewing
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
        renewing = self._fetch()
        self._renewing = renewing
        renewing.addCallbacks(self._renewed, self._failed)
        return renewing

    def _renewed(self, token: AccessToken) -> AccessToken:
        self._renewing = None
        if not self._stopped:
            self._install(token)
            self._log.info(
                "Renewed the upstream access token (valid {lifetime:.0f} s)",
                lifetime=token.lifetime,
            )
        return token

    def _failed(self, failure: Failure) -> None:
        self._renewing = None
        delay = self._backoff
        self._backoff = min(MAX_BACKOFF, self._backoff * 2)
        left = self._validUntil - self._clock.seconds()
        self._log.warn(
            "Renewing the upstream access token failed: {reason}; retrying in "
            "{delay:.0f} s ({state})",
            reason=failure.getErrorMessage(),
            delay=delay,
            state=f"the current token is valid {left:.0f} s more"
            if left > 0
            else "no valid token: requests get 503",
        )
        self._schedule(delay)

    def exchangeEnded(self, record: ExchangeRecord) -> None:
        """
        An upstream 401 means the token was revoked: renew at once (an
        L{responses_proxy.record.Exchanges} listener).
        """
        if record.upstreamStatus == 401:
            self._log.warn("The upstream refused the access token (401): renewing")
            self.renew()

    def start(self) -> None:
        """
        Nothing to do: renewals were scheduled with the first token.
        """

    def stop(self) -> Deferred[None]:
        """
        Stop renewing; wipe every token and the request token.
        """
        self._stopped = True
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self.wipe()
        return succeed(None)

    def wipe(self) -> None:
        """
        Zero every buffer this credential holds.
        """
        for call, header in self._retired:
            if call.active():
                call.cancel()
            header.wipe()
        self._retired = []
        if self._header is not None:
            self._header.wipe()
            self._header = None
        if self._requestToken is not None:
            self._requestToken.wipe()
            self._requestToken = None

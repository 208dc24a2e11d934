# -*- test-case-name: tests.test_upstream_faults -*-
"""
Which answer a failure to reach the upstream gets.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.python.failure import Failure

from responses_proxy.egress import EgressProxyError
from responses_proxy.upstreamconn import UpstreamAnswerInvalid


def _flattenReasons(failure: Failure) -> list[Failure]:
    reasons = getattr(failure.value, "reasons", None)
    if not reasons:
        return [failure]
    flat: list[Failure] = []
    for reason in reasons:
        flat.extend(_flattenReasons(reason))
    return flat


def classifyUpstreamFailure(failure: Failure) -> tuple[int, str, str]:
    """
    Map a failure to reach the upstream to C{(status, message, code)}.

    The messages name the kind of fault only: never a header, never the key.
    """
    for reason in [failure, *_flattenReasons(failure)]:
        if reason.check(UpstreamAnswerInvalid):
            return (
                502,
                f"the upstream's answer was refused: {reason.value}",
                ("upstream_bad_response"),
            )
        if reason.check(error.TimeoutError):
            return 504, "connecting to the upstream timed out", "upstream_timeout"
        if reason.check(VerificationError, SSL.Error):
            return (
                502,
                "the upstream's TLS certificate failed verification",
                "upstream_tls_error",
            )
        if reason.check(error.DNSLookupError):
            return 502, "the upstream host name could not be resolved", "upstream_dns"
        if reason.check(error.ConnectionRefusedError):
            return 502, "the upstream refused the connection", "upstream_refused"
        if reason.check(EgressProxyError):
            return 502, "the egress proxy failed or refused", "egress_proxy_error"
    return 502, "the upstream connection failed", "upstream_unavailable"

# -*- test-case-name: tests.test_admission,tests.test_browser -*-
"""
The browser defence: a web page open on this host must not be able to
spend the key.

A page can make the browser send a request to 127.0.0.1 without the user's
knowledge: a "simple" cross-origin request (no-cors C{fetch},
C{navigator.sendBeacon}, a submitted C{<form>}) goes out without any CORS
preflight, and a DNS-rebinding page (its own host name made to resolve to
127.0.0.1) even reads the answer. Browsers mark their requests: every
cross-origin request, and every same-origin one but C{GET}/C{HEAD}, carries
C{Origin}, and current browsers add C{Sec-Fetch-*} headers to (almost)
everything. The clients this proxy is for (the OpenAI SDKs, Codex, curl)
send neither. So:

  - a request with C{Origin} or any C{Sec-Fetch-*} header is a browser's:
    403 C{browser_request};
  - a forwarded request must declare a JSON body (C{Content-Type:
    application/json}, parameters allowed), else 415: no form, beacon or
    no-cors C{fetch} can send that type without a preflight, and the
    preflight (C{OPTIONS}) is refused like everything that is not
    C{POST /v1/responses}.

The Host check (L{responses_proxy.hosts}) stops what is left of DNS
rebinding.
"""

from __future__ import annotations

from responses_proxy.admission import Refusal, RequestHead

_SEC_FETCH = b"sec-fetch-"


def refuseBrowsers(head: RequestHead) -> Refusal | None:
    """
    Refuse a request that carries C{Origin} or a C{Sec-Fetch-*} header.
    """
    for name, _ in head.headers.getAllRawHeaders():
        lower = name.lower()
        if lower == b"origin" or lower.startswith(_SEC_FETCH):
            return Refusal(
                403,
                "browser_request",
                f"Browsers may not use this proxy: the request carries the "
                f"{name.decode('latin-1')} header, which only browsers send "
                "(a web page could otherwise spend the API key).",
            )
    return None


def _isJSON(value: bytes) -> bool:
    mediaType = value.split(b";", 1)[0].strip().lower()
    return mediaType == b"application/json"


def requireJSON(head: RequestHead) -> Refusal | None:
    """
    Refuse a forwarded request whose body is not declared
    C{application/json} (exactly one C{Content-Type}).
    """
    values = head.headers.getRawHeaders(b"content-type") or []
    if len(values) == 1 and _isJSON(values[0]):
        return None
    given = "none" if not values else ", ".join(v.decode("latin-1") for v in values)
    return Refusal(
        415,
        "unsupported_media_type",
        f"The request body must be declared Content-Type: application/json "
        f"(got {given}).",
    )

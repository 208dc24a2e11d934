"""
The twistd dropin: C{twistd -n responses-api-proxy ...}.

Only a L{ServiceMaker}: it names the module lazily, so C{twistd --help}
does not import the proxy.
"""

from twisted.application.service import ServiceMaker

responsesAPIProxy = ServiceMaker(
    "responses-api-proxy",
    "responses_proxy.tap",
    "Strict proxy forwarding only POST /v1/responses with an API key read "
    "from standard input.",
    "responses-api-proxy",
)

# -*- test-case-name: tests.test_lifecycle,tests.test_tap -*-
"""
The one exception a failed start-up raises.
"""


class StartupError(Exception):
    """
    The proxy cannot start; C{str()} is the one line to show the operator.

    Raised while the service is built (L{responses_proxy.tap.makeService})
    and while it starts; both entry points report it the same way
    (L{responses_proxy.lifecycle}): one line on standard error, exit 1.
    """

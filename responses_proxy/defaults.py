# -*- test-case-name: tests.test_options -*-
"""
Default limits, shared by the options (their defaults) and the server side.

A leaf module with no imports, so that parsing options (and C{--help}) does
not load the HTTP stack.
"""

DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 30.0
# Comfortably below the units' TimeoutStopSec=30s.
DEFAULT_DRAIN_TIMEOUT = 20.0
# The request line plus all header lines, and the number of header lines;
# the upstream's answer head is held to the same limits.
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 500

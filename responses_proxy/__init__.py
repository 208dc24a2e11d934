"""
A strict HTTP proxy that forwards only C{POST /v1/responses} to the OpenAI
Responses API, injecting an API key that the proxy's clients never see.
"""

__version__ = "0.1.0"

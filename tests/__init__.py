"""
Trial tests for responses-api-proxy.
"""

"""
Forwarding over real loopback: the body and headers reach the upstream
unchanged, the key is injected, and the answer comes back as sent.
"""

from __future__ import annotations

import json

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import CANARY_KEY, httpClient, startFakeUpstream, startProxy


class ForwardingTests(TestCase):
    """
    C{POST /v1/responses} reaches the upstream with our key and nothing else
    changed.
    """

    @inlineCallbacks
    def test_streamedAnswerRelayed(self) -> None:
        """
        The fake upstream's SSE answer arrives complete, with its status and
        end-to-end headers, and the upstream saw the body byte for byte and
        exactly one Authorization, ours.
        """
        upstream = startFakeUpstream(self)
        proxy = startProxy(self, upstream.url)
        body = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
        response = yield httpClient(self).post(
            proxy.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer client-supplied",
                "X-Custom": "kept as is",
            },
        )
        text = yield treq.text_content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream"]
        )
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), ["req_fake_1"])
        self.assertIn("event: response.completed", text)
        [seen] = upstream.resource.requests
        self.assertEqual(seen.body, body)
        self.assertEqual(
            seen.header(b"authorization"), [f"Bearer {CANARY_KEY}".encode()]
        )
        self.assertEqual(seen.header(b"x-custom"), [b"kept as is"])
        host = f"127.0.0.1:{upstream.port}".encode()
        self.assertEqual(seen.header(b"host"), [host])

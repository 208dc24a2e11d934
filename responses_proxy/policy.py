# -*- test-case-name: tests.test_budgets -*-
"""
Request policy: which models callers may ask for (C{--allow-model GLOB}).

The body is parsed only when a policy is set; the bytes forwarded are the
client's, byte for byte. A body that is not a JSON object gets 400
C{invalid_json}; a C{model} that matches none of the patterns (shell-style,
case-sensitive, e.g. C{gpt-5*}) gets 400 C{model_not_allowed}, naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from responses_proxy.admission import Refusal
from responses_proxy.record import Caller


class ModelPolicy:
    """
    Admit only requests for an allowed model.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = list(patterns)

    def __call__(self, request: Any, caller: Caller) -> Refusal | None:
        content = request.content
        content.seek(0)
        try:
            document = json.load(content)
        except (ValueError, UnicodeDecodeError):
            document = None
        finally:
            content.seek(0)
        if not isinstance(document, dict):
            return Refusal(
                400,
                "invalid_json",
                "The request body must be a JSON object (this proxy checks the "
                "model it asks for).",
            )
        model = document.get("model")
        if isinstance(model, str) and any(
            fnmatchcase(model, pattern) for pattern in self._patterns
        ):
            return None
        shown = json.dumps(model)[:100]
        return Refusal(
            400,
            "model_not_allowed",
            f"The model {shown} is not allowed through this proxy (allowed: "
            f"{', '.join(self._patterns)}).",
        )

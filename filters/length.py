"""Minimum length: documents too short to teach anything (or empty after extraction)."""

from __future__ import annotations


class MinLengthFilter:
    """Drop documents with fewer than `min_chars` characters, or (another instance) fewer than
    `min_tokens` dolma2 tokens.

    Token length uses the build's `token_ids` when present (no second tokenization);
    otherwise whitespace-separated words stand in for tokens.
    """

    name = "min_length"

    def __init__(self, min_chars: int = 0, min_tokens: int = 0):
        for field, value in (("min_chars", min_chars), ("min_tokens", min_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
        if min_chars and min_tokens:
            # One filter decides at one stage: with a token minimum the character minimum waited for the
            # tokens too, after the filters below it in the chain, which were credited its removals (found by
            # a tester).
            raise ValueError("min_tokens cannot be given with min_chars: characters are decided before sampling, "
                             "in chain order, tokens on the documents the mix tokenizes; give them as two "
                             "min_length filters")
        self.min_chars = min_chars
        self.min_tokens = min_tokens
        # A token minimum is decided on the build's token ids, i.e. after sampling (filters/base.py).
        self.needs_tokens = min_tokens > 0

    def reject_reason(self, doc: dict) -> str | None:
        text = doc.get("text", "")
        if len(text) < self.min_chars:
            return f"chars<{self.min_chars}"
        if self.min_tokens:
            tokens = doc.get("token_ids")
            n = len(tokens) if tokens is not None else len(text.split())
            if n < self.min_tokens:
                return f"tokens<{self.min_tokens}"
        return None

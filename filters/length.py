"""Minimum length: documents too short to teach anything (or empty after extraction)."""

from __future__ import annotations


class MinLengthFilter:
    """Drop documents with fewer than `min_chars` characters or `min_tokens` dolma2 tokens.

    Token length uses the build's `token_ids` when present (no second tokenization);
    otherwise whitespace-separated words stand in for tokens.
    """

    name = "min_length"

    def __init__(self, min_chars: int = 0, min_tokens: int = 0):
        for field, value in (("min_chars", min_chars), ("min_tokens", min_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
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

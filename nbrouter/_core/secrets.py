"""Removing secrets (API keys, bearer tokens, `key=` query parameters) from any text we show or store."""

from __future__ import annotations

import re

_PATTERNS = [
    # bearer tokens and x-api-key style header values
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:x-api-key|x-goog-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{6,}"), r"\1[redacted]"),
    (re.compile(r"(?i)([?&]key=)[^&\s\"']+"), r"\1[redacted]"),
    # well-known key shapes: sk-..., sk-ant-..., sk-or-..., AIza..., gsk_..., xai-...
    (re.compile(r"\b(sk-(?:ant-|or-|proj-)?[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{20,}|gsk_[A-Za-z0-9]{10,}|xai-[A-Za-z0-9]{10,})"), "[redacted]"),
]

_known: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Register a key value so that `scrub` removes it wherever it appears, whatever its shape."""
    if value and len(value) >= 4:
        _known.add(value)


def scrub(text: str | None) -> str:
    """The text with every known key and every key-shaped token replaced by `[redacted]`."""
    if not text:
        return text or ""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text

"""Estimating prompt tokens without a tokenizer: providers.md section 7's character heuristic."""

from __future__ import annotations

from typing import Any, Iterable


def estimate_text(text: str) -> int:
    """ascii characters / 4 + non-ascii characters (about right for prose, high for code, low for JSON)."""
    if not text:
        return 0
    if text.isascii():
        return (len(text) + 3) // 4
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return (len(text) - non_ascii + 3) // 4 + non_ascii


def estimate_prompt(messages: Iterable[dict[str, Any]], system: str | None, *, margin: float = 1.2, per_message: int = 4) -> int:
    """Estimated prompt tokens of a chat request, with the safety margin and the per-message overhead."""
    total = 0
    count = 0
    for message in messages:
        count += 1
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_text(part["text"])
    if system:
        count += 1
        total += estimate_text(system)
    return int(total * margin) + per_message * count

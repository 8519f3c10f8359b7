"""Estimating prompt tokens without a tokenizer: providers.md section 7's character heuristic."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from ..._core.content import Tool, image_of

#: an image's tokens when nothing better is known: about what Anthropic counts for its largest unscaled
#: image (width x height / 750 at 1.15 megapixels); OpenAI's high detail counts less
IMAGE_TOKENS = 1600


def estimate_text(text: str) -> int:
    """ascii characters / 4 + non-ascii characters (about right for prose, high for code, low for JSON)."""
    if not text:
        return 0
    if text.isascii():
        return (len(text) + 3) // 4
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    return (len(text) - non_ascii + 3) // 4 + non_ascii


def estimate_prompt(messages: Iterable[dict[str, Any]], system: str | None, *, margin: float = 1.2, per_message: int = 4,
                    per_image: int = IMAGE_TOKENS) -> int:
    """Estimated prompt tokens of a chat request, with the safety margin and the per-message overhead; an
    image counts `per_image` (its base64 text is not read as text)."""
    total = 0
    count = 0
    for message in messages:
        count += 1
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    total += estimate_text(part)
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_text(part["text"])
                elif isinstance(part, dict) and image_of(part) is not None:
                    total += per_image
    if system:
        count += 1
        total += estimate_text(system)
    return int(total * margin) + per_message * count


def estimate_tools(tools: Sequence[Tool] | None) -> int:
    """Estimated prompt tokens of the tool declarations (their names, descriptions and schemas as JSON)."""
    if not tools:
        return 0
    return sum(estimate_text(json.dumps({"name": t.name, "description": t.description, "parameters": t.schema()}))
               for t in tools)

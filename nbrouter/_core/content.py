"""The portable shapes of what a chat carries besides text: images, tool declarations, the tool calls a
model makes and the results sent back. Each protocol module translates them to its own wire shape
(multimodal_tools.md); callers write them once.

Messages stay plain dicts (they are hashed for the response cache and stored as JSON), in the OpenAI chat
form the router already speaks, with these additions:

    {"role": "user", "content": ["What is this?", image_part(png_bytes, "image/png")]}
    {"role": "assistant", "content": "", "tool_calls": [call.as_dict() for call in completion.tool_calls]}
    tool_result(call, "12 C")          # {"role": "tool", "tool_call_id": ..., "name": ..., "content": ...}

A protocol's own shapes (OpenAI's `image_url` parts, `tool_calls` with a `function`) are read as well.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

#: the portable `tool_choice` values besides a tool's name
TOOL_CHOICES = frozenset({"auto", "required", "none"})
#: `response_format="json"`: any JSON object, no schema
JSON_MODE = "json"

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[^,]*)?,", re.A)


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it is for, and its arguments as a JSON Schema."""

    name: str
    description: str = ""
    #: a JSON Schema of the arguments object (empty: no arguments)
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """The arguments' JSON Schema, an empty object schema when none was given."""
        return dict(self.parameters) if self.parameters else {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: the call's id, the tool's name and its arguments (a JSON object)."""

    id: str
    name: str
    arguments: dict[str, Any]
    #: an opaque token the provider wants back with the call (Gemini's `thoughtSignature`)
    signature: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` item (portable, JSON-serialisable)."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.signature is not None:
            out["signature"] = self.signature
        return out


def image_part(data: bytes | str, media_type: str) -> dict[str, Any]:
    """An image content part from its bytes (or their base64 text) and its media type (`image/png`)."""
    text = base64.b64encode(data).decode("ascii") if isinstance(data, bytes) else data
    return {"type": "image", "media_type": media_type, "data": text}


def image_url_part(url: str) -> dict[str, Any]:
    """An image content part from a URL: `https://...`, or a `data:image/png;base64,...` URL."""
    return {"type": "image", "url": url}


def tool_result(call: ToolCall, content: str, *, is_error: bool = False) -> dict[str, Any]:
    """The message that answers `call` with `content` (text); `is_error` says the tool failed."""
    message: dict[str, Any] = {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}
    if is_error:
        message["is_error"] = True
    return message


@dataclass(frozen=True)
class Image:
    """An image part read from a message: inline base64 `data` with its `media_type`, or a `url`."""

    media_type: str | None
    data: str | None
    url: str | None

    def data_url(self) -> str:
        """The image as one URL: its own, or a base64 data URL."""
        return self.url if self.url is not None else f"data:{self.media_type or 'application/octet-stream'};base64,{self.data}"


def image_of(part: Mapping[str, Any]) -> Image | None:
    """The image a content part holds (portable, or OpenAI's `image_url`), a data URL split into its media
    type and data; None for a part that is no image."""
    kind = part.get("type")
    if kind == "image":
        url = part.get("url")
        if isinstance(url, str):
            return _from_url(url)
        data = part.get("data")
        media = part.get("media_type")
        return Image(media if isinstance(media, str) else None, data if isinstance(data, str) else "", None)
    if kind == "image_url":
        inner = part.get("image_url")
        url = inner.get("url") if isinstance(inner, Mapping) else inner
        return _from_url(url) if isinstance(url, str) else None
    return None


def _from_url(url: str) -> Image:
    match = _DATA_URL.match(url)
    if match and (match.group(2) or "").endswith(";base64"):
        return Image(match.group(1), url[match.end():], None)
    return Image(None, None, url)


def calls_of(message: Mapping[str, Any]) -> list[ToolCall]:
    """The tool calls of an assistant message: portable items, or OpenAI's `{"function": {...}}` ones
    (whose `arguments` is JSON text)."""
    raw = message.get("tool_calls")
    if not isinstance(raw, list):
        return []
    calls = []
    for item in raw:
        if isinstance(item, ToolCall):
            calls.append(item)
        elif isinstance(item, Mapping):
            calls.append(_call_of(item))
    return calls


def _call_of(item: Mapping[str, Any]) -> ToolCall:
    fn = item.get("function")
    if isinstance(fn, Mapping):
        args: Any = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {}
        return ToolCall(str(item.get("id") or ""), str(fn.get("name") or ""), args if isinstance(args, dict) else {})
    args = item.get("arguments")
    signature = item.get("signature")
    return ToolCall(str(item.get("id") or ""), str(item.get("name") or ""), dict(args) if isinstance(args, Mapping) else {},
                    signature if isinstance(signature, str) else None)


def text_parts(content: Any) -> str:
    """The text of a message's content: a string, or its text parts (and bare strings) joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text") or "") for p in content
                       if isinstance(p, str) or (isinstance(p, Mapping) and p.get("type") in (None, "text")))
    return "" if content is None else str(content)

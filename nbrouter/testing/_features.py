"""What a model call carries beyond text, read from each protocol's body: images, tools, the tool choice,
JSON mode and tool results (multimodal_tools.md sections 1-3), and the mistakes a provider refuses.

`read(protocol, body)` never raises on a strange body: whatever it cannot read is simply not counted.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

#: the image types each protocol takes inline (Anthropic's list is enforced; the others are recorded)
ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: leading bytes of each image type, to tell a declared type from the actual one
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass
class Image:
    """One image part: where it sits, its declared type, its bytes (inline) or its URL (a reference)."""

    #: the request path the provider's errors quote (`messages.[0].content.[1]`, `messages.0.content.1`, ...)
    where: str
    media_type: str
    data: bytes | None = None
    url: str | None = None
    #: why the inline data cannot be read (not base64), or None
    bad: str | None = None


@dataclass
class Tool:
    name: str
    #: the JSON schema of the arguments (OpenAPI-style for Gemini's `parameters`)
    schema: Any = None


@dataclass
class Features:
    """What one request carries, in the protocol's own terms reduced to one shape."""

    images: list[Image] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    #: "auto" | "none" | "required" | a tool's name; None when the request says nothing
    tool_choice: str | None = None
    #: "json_object" (any JSON) | "json_schema" (JSON matching `schema`) | None
    json_mode: str | None = None
    schema: Any = None
    tool_results: int = 0
    #: characters of tool results kept outside the messages' text (Anthropic blocks, Gemini parts), counted
    #: into the prompt's size
    tool_result_chars: int = 0
    #: a tool-call sequence the provider refuses: (message, path or param), or None
    sequence_error: tuple[str, str] | None = None
    #: the tools a required call may use (Gemini's `allowedFunctionNames`; empty: any declared)
    allowed: list[str] = field(default_factory=list)

    @property
    def image_bytes(self) -> int:
        return sum(len(i.data) for i in self.images if i.data is not None)

    def forced_tool(self) -> Tool | None:
        """The tool a reply must call: the named one, or the first declared when a call is required."""
        if not self.tools or self.tool_choice in (None, "auto", "none"):
            return None
        if self.tool_choice == "required":
            declared = {t.name: t for t in self.tools}
            return next((declared[n] for n in self.allowed if n in declared), self.tools[0])
        return next((t for t in self.tools if t.name == self.tool_choice), None)


def read(protocol: str, body: Any) -> Features:
    """The features of a chat body in `protocol`'s shape."""
    if not isinstance(body, dict):
        return Features()
    if protocol == "gemini":
        return _gemini(body)
    if protocol == "anthropic":
        return _anthropic(body)
    return _openai(body)


def sniffed_type(data: bytes) -> str | None:
    """The image type the bytes themselves say (PNG, JPEG, GIF, WEBP), or None."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _decode(data: Any) -> tuple[bytes | None, str | None]:
    if not isinstance(data, str):
        return None, "the image data is not a base64 string"
    try:
        return base64.b64decode(data, validate=True), None
    except (binascii.Error, ValueError):
        return None, "the image data is not valid base64"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _either(d: dict[str, Any], camel: str, snake: str) -> Any:
    """Gemini's REST accepts camelCase and snake_case field names alike."""
    return d.get(camel, d.get(snake))


def _text_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_size(part.get("text") if isinstance(part, dict) else None) for part in content)
    return 0


# -- OpenAI (and OpenRouter) --------------------------------------------------------------------


def _openai(body: dict[str, Any]) -> Features:
    f = Features()
    messages = _list(body.get("messages"))
    for i, message in enumerate(messages):
        message = _dict(message)
        if message.get("role") == "tool":  # its text is a message's content, counted with the prompt already
            f.tool_results += 1
        for j, part in enumerate(_list(message.get("content"))):
            part = _dict(part)
            if part.get("type") == "image_url":
                f.images.append(_openai_image(f"messages.[{i}].content.[{j}]", part.get("image_url")))
    f.sequence_error = _openai_sequence(messages)
    for tool in _list(body.get("tools")):
        tool = _dict(tool)
        spec = _dict(tool.get("function") or tool.get("custom"))
        if isinstance(spec.get("name"), str):
            f.tools.append(Tool(spec["name"], spec.get("parameters")))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        f.tool_choice = choice
    elif isinstance(choice, dict):
        if choice.get("type") == "allowed_tools":
            allowed = _dict(choice.get("allowed_tools"))
            f.tool_choice = "required" if allowed.get("mode") == "required" else "auto"
        else:
            named = _dict(choice.get("function") or choice.get("custom")).get("name")
            f.tool_choice = named if isinstance(named, str) else None
    form = _dict(body.get("response_format"))
    if form.get("type") == "json_object":
        f.json_mode = "json_object"
    elif form.get("type") == "json_schema":
        f.json_mode, f.schema = "json_schema", _dict(form.get("json_schema")).get("schema")
    return f


def _openai_image(where: str, spec: Any) -> Image:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        return Image(where, "", bad="image_url.url is missing")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0]
        decoded, bad = _decode(data) if head.endswith(";base64") else (None, "the data URL is not base64")
        return Image(where, media_type, decoded, bad=bad)
    return Image(where, "url", url=url)


def _openai_sequence(messages: list[Any]) -> tuple[str, str] | None:
    """An assistant message with `tool_calls` must be followed by a tool message for each of its ids."""
    for i, message in enumerate(messages):
        calls = _list(_dict(message).get("tool_calls")) if _dict(message).get("role") == "assistant" else []
        wanted = [str(_dict(c).get("id")) for c in calls]
        if not wanted:
            continue
        answered = set()
        for later in messages[i + 1 :]:
            if _dict(later).get("role") != "tool":
                break
            answered.add(str(_dict(later).get("tool_call_id")))
        missing = [w for w in wanted if w not in answered]
        if missing:
            message_text = (
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(missing)}"
            )
            return message_text, f"messages.[{i + 1}].role"
    return None


# -- Anthropic -----------------------------------------------------------------------------------


def _anthropic(body: dict[str, Any]) -> Features:
    f = Features()
    messages = _list(body.get("messages"))
    for i, message in enumerate(messages):
        for j, block in enumerate(_list(_dict(message).get("content"))):
            block = _dict(block)
            if block.get("type") == "image":
                f.images.append(_anthropic_image(f"messages.{i}.content.{j}", block.get("source")))
            elif block.get("type") == "tool_result":
                f.tool_results += 1
                f.tool_result_chars += _text_size(block.get("content"))
                for k, inner in enumerate(_list(block.get("content"))):
                    if _dict(inner).get("type") == "image":
                        f.images.append(_anthropic_image(f"messages.{i}.content.{j}.content.{k}", _dict(inner).get("source")))
    f.sequence_error = _anthropic_sequence(messages)
    for tool in _list(body.get("tools")):
        tool = _dict(tool)
        if isinstance(tool.get("name"), str):
            f.tools.append(Tool(tool["name"], tool.get("input_schema")))
    choice = _dict(body.get("tool_choice"))
    kind = choice.get("type")
    if kind in ("auto", "none"):
        f.tool_choice = str(kind)
    elif kind == "any":
        f.tool_choice = "required"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        f.tool_choice = choice["name"]
    form = _dict(_dict(body.get("output_config")).get("format")) or _dict(body.get("output_format"))
    if form.get("type") == "json_schema":
        f.json_mode, f.schema = "json_schema", form.get("schema")
    return f


def _anthropic_image(where: str, source: Any) -> Image:
    source = _dict(source)
    kind = source.get("type")
    if kind == "base64":
        decoded, bad = _decode(source.get("data"))
        return Image(where + ".image.source.base64", str(source.get("media_type") or ""), decoded, bad=bad)
    if kind == "url":
        return Image(where + ".image.source.url", "url", url=str(source.get("url")))
    return Image(where + ".image.source", str(kind or ""), url=str(source.get("file_id") or ""))


def _anthropic_sequence(messages: list[Any]) -> tuple[str, str] | None:
    """Every `tool_use` needs a `tool_result` block at the start of the next message."""
    for i, message in enumerate(messages):
        message = _dict(message)
        if message.get("role") != "assistant":
            continue
        wanted = [str(_dict(b).get("id")) for b in _list(message.get("content")) if _dict(b).get("type") == "tool_use"]
        if not wanted:
            continue
        following = _list(_dict(messages[i + 1]).get("content")) if i + 1 < len(messages) else []
        answered = set()
        for block in following:
            if _dict(block).get("type") != "tool_result":
                break
            answered.add(str(_dict(block).get("tool_use_id")))
        missing = [w for w in wanted if w not in answered]
        if missing:
            text = (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the next message."
            )
            return text, f"messages.{i}"
    return None


# -- Gemini --------------------------------------------------------------------------------------


def _gemini(body: dict[str, Any]) -> Features:
    f = Features()
    for i, content in enumerate(_list(body.get("contents"))):
        for j, part in enumerate(_list(_dict(content).get("parts"))):
            part = _dict(part)
            inline = _dict(_either(part, "inlineData", "inline_data"))
            ref = _dict(_either(part, "fileData", "file_data"))
            where = f"contents[{i}].parts[{j}]"
            if inline:
                media_type = str(_either(inline, "mimeType", "mime_type") or "")
                if media_type.startswith("image/"):
                    decoded, bad = _decode(inline.get("data"))
                    f.images.append(Image(where, media_type, decoded, bad=bad))
            elif ref:
                media_type = str(_either(ref, "mimeType", "mime_type") or "")
                if media_type.startswith("image/"):
                    f.images.append(Image(where, media_type, url=str(_either(ref, "fileUri", "file_uri"))))
            response = _either(part, "functionResponse", "function_response")
            if isinstance(response, dict):
                f.tool_results += 1
                f.tool_result_chars += len(json.dumps(response.get("response")))
    for tool in _list(body.get("tools")):
        for spec in _list(_either(_dict(tool), "functionDeclarations", "function_declarations")):
            spec = _dict(spec)
            if isinstance(spec.get("name"), str):
                schema = _either(spec, "parametersJsonSchema", "parameters_json_schema") or spec.get("parameters")
                f.tools.append(Tool(spec["name"], schema))
    config = _dict(_either(_dict(_either(body, "toolConfig", "tool_config")), "functionCallingConfig", "function_calling_config"))
    mode = str(config.get("mode") or "").upper()
    allowed = [n for n in _list(_either(config, "allowedFunctionNames", "allowed_function_names")) if isinstance(n, str)]
    if mode == "ANY":
        f.tool_choice = allowed[0] if len(allowed) == 1 else "required"
        f.allowed = allowed
    elif mode in ("AUTO", "VALIDATED", "NONE"):
        f.tool_choice = "none" if mode == "NONE" else "auto"
    generation = _dict(_either(body, "generationConfig", "generation_config"))
    if _either(generation, "responseMimeType", "response_mime_type") == "application/json":
        schema = (
            _either(generation, "responseJsonSchema", "response_json_schema")
            or _either(generation, "responseSchema", "response_schema")
        )
        f.json_mode, f.schema = ("json_schema", schema) if schema else ("json_object", None)
    return f


# -- example values -----------------------------------------------------------------------------


def example(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value that fits a JSON schema (or Gemini's OpenAPI subset): what a synthesized tool call or JSON
    answer carries. Required properties only, the first enum or choice, `example` for strings."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return {}
    if "$ref" in schema and isinstance(schema["$ref"], str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for step in schema["$ref"][2:].split("/"):
            target = _dict(target).get(step)
        return example(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if _list(schema.get("enum")):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if _list(schema.get(key)):
            return example(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    if kind == "object":
        props = _dict(schema.get("properties"))
        names = [n for n in _list(schema.get("required")) if n in props] or list(props)
        return {name: example(props[name], root, depth + 1) for name in names}
    if kind == "array":
        return [example(schema.get("items"), root, depth + 1)] if isinstance(schema.get("items"), dict) else []
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "example")


__all__ = ["Features", "Image", "Tool", "example", "read", "sniffed_type"]

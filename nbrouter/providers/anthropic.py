"""The Anthropic Messages wire protocol: `POST {base_url}/v1/messages`, named SSE events ending in `message_stop`.

Facts encoded here come from providers.md section 2 (wire format) and the Anthropic table of section 8
(classification). Anthropic's error types "may grow over time": an unknown type is classified by status.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Mapping

from .._core import ErrorKind, Usage
from .._core.clock import Clock
from .._core.content import JSON_MODE, Tool, ToolCall, calls_of, image_of
from .._core.secrets import excerpt
from .base import (
    UNSUPPORTED_TEXT,
    ChatRequest,
    Completion,
    Endpoint,
    ProviderFailure,
    RateLimits,
    SSEEvent,
    StreamDecoder,
    WireProtocol,
    arr,
    clean_id,
    count,
    json_value,
    loose_text,
    names_model,
    obj,
    reasoning_budget,
    string,
    tool_arguments,
    wrong_url_message,
)
from .openai import MAX_MESSAGE_CHARS, header_int, retry_after

API_VERSION = "2023-06-01"
#: `max_tokens` is required by the Messages API; used when the request leaves it open
DEFAULT_MAX_TOKENS = 1024

#: error.type -> kind, for the types whose meaning does not depend on the message (providers.md §8)
_TYPE_KINDS = {
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.ACCOUNT_LOCKED,
    "not_found_error": ErrorKind.MODEL_NOT_FOUND,
    "billing_error": ErrorKind.QUOTA_EXCEEDED,
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "overloaded_error": ErrorKind.OVERLOADED,
    "api_error": ErrorKind.SERVER_ERROR,
    "conflict_error": ErrorKind.SERVER_ERROR,
    "timeout_error": ErrorKind.TIMEOUT,
    "request_too_large": ErrorKind.INVALID_REQUEST,
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
}
#: `error.details.error_code` values that are the account's spend limit: a quota on the whole account,
#: lifted when the month (enforced_*) or the contract (contract_*) allows, never by a retry
SPEND_LIMIT_CODES = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached"})
#: `error_code` values saying the organization itself is disabled: the account is locked, the next
#: provider is still worth trying
LOCKED_CODES = frozenset({"organization_on_hold"})
_LOCKED_TEXT = re.compile(r"this organization has been disabled", re.I)
_SPEND_LIMIT_TEXT = re.compile(r"you have reached your specified .*api usage limits", re.I | re.S)
_CONTEXT_TEXT = re.compile(r"prompt is too long|exceed context limit|exceeds? the context window", re.I)
_RESUME_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\s*(?:at\s*)?(\d{1,2}:\d{2}))?")
_FRACTION = re.compile(r"\.(\d+)")


def parse_rfc3339(value: str | None) -> float | None:
    """An RFC 3339 timestamp (`2026-11-03T12:00:30Z`, any fraction length) as epoch seconds."""
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # fromisoformat wants at most 6 fraction digits
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        when = datetime.fromisoformat(text[:64])
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def next_month_utc(now: float) -> float:
    """00:00 UTC on the 1st of the month after `now`: when a monthly spend cap is lifted (providers.md §2)."""
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _resume_time(message: str) -> float | None:
    """When a "you have reached your specified API usage limits" message says access resumes."""
    match = _RESUME_DATE.search(message)
    if not match:
        return None
    return parse_rfc3339(f"{match.group(1)}T{(match.group(2) or '00:00').zfill(5)}:00Z")


def usage_from(raw: Any) -> Usage | None:
    """Usage with the cache parts added back: Anthropic's `input_tokens` leaves them out."""
    if raw is None:
        return None
    raw = obj(raw, "usage")
    written = count(raw.get("cache_creation_input_tokens"), "usage.cache_creation_input_tokens")
    read = count(raw.get("cache_read_input_tokens"), "usage.cache_read_input_tokens")
    return Usage(
        input_tokens=count(raw.get("input_tokens"), "usage.input_tokens") + written + read,
        output_tokens=count(raw.get("output_tokens"), "usage.output_tokens"),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def error_parts(body: Any) -> tuple[str, str, dict[str, Any], str | None]:
    """(error.type, message, details, request_id) of an Anthropic error body."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", {}, None
    err = body.get("error")
    request_id = clean_id(body.get("request_id"))
    if isinstance(err, str):
        return "", excerpt(err, MAX_MESSAGE_CHARS), {}, request_id
    if not isinstance(err, dict):
        return "", "", {}, request_id
    raw_details = err.get("details")
    details = dict(raw_details) if isinstance(raw_details, dict) else {}
    # `error_code` has been seen both in `details` and beside `type`: one place to read it
    if "error_code" not in details and isinstance(err.get("error_code"), str):
        details["error_code"] = err["error_code"]
    return excerpt(loose_text(err.get("type")), 200), excerpt(loose_text(err.get("message")), MAX_MESSAGE_CHARS), details, request_id


class AnthropicProtocol(WireProtocol):
    """Messages API: system as a top-level field, `max_tokens` required, usage split by cache."""

    name = "anthropic"

    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        system_parts = [request.system] if request.system else []
        messages: list[dict[str, Any]] = []
        #: the `tool_result` blocks of the user message being gathered: every result of a turn goes in one
        results: list[dict[str, Any]] | None = None
        for message in request.messages:
            role = message.get("role")
            if role in ("system", "developer"):
                content = message.get("content")
                system_parts.append(content if isinstance(content, str) else _text_of(content))
            elif role == "tool":
                if results is None:
                    results = []
                    messages.append({"role": "user", "content": results})
                results.append(_result_block(message))
            else:
                results = None
                plain = type(message.get("content")) is str and "tool_calls" not in message
                messages.append(message if plain else _wire_message(message))
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": messages,
        }
        if system_parts:
            body["system"] = "\n\n".join(p for p in system_parts if p)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.response_format is not None:
            body["output_config"] = {"format": _output_format(request.response_format)}
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = [_wire_tool(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.reasoning is not None:
            budget = reasoning_budget(request.reasoning)
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            body["max_tokens"] = max(body["max_tokens"], budget + 1)  # the answer's limit includes the thinking
        if request.stream:
            body["stream"] = True
        if request.extra_body:
            body.update(request.extra_body)
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION, **endpoint.headers}
        if endpoint.api_key:
            headers["x-api-key"] = endpoint.api_key
        base = endpoint.base_url.rstrip("/")
        url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        return url, headers, body

    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, *, now: float) -> Completion:
        body = obj(body, "the response")
        if body.get("type") == "error" or "error" in body:
            raise self.failure(endpoint, status, headers, body, now=now, in_stream=True)
        blocks = arr(body.get("content"), "content")
        text = "".join(
            string(block.get("text"), "content[].text") or ""
            for block in blocks
            if isinstance(block, dict) and block.get("type") == "text"
        )
        calls = [_reply_call(block, f"content[{i}]") for i, block in enumerate(blocks)
                 if isinstance(block, dict) and block.get("type") == "tool_use"]
        usage = usage_from(body.get("usage"))
        model = string(body.get("model"), "model")
        stop = string(body.get("stop_reason"), "stop_reason")
        _check_stop(stop, body.get("stop_details"), text, usage, model, status)
        if not text and not stop and not calls:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "200 with no text and no stop reason", status=status, usage=usage)
        return Completion(
            text=text, model=model, finish_reason=stop, usage=usage,
            served_model=None if endpoint.local else model, tool_calls=calls,
        )

    def decoder(self, endpoint: Endpoint, request: ChatRequest, *, clock: Clock) -> StreamDecoder:
        return _AnthropicStream(self, endpoint, clock)

    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str, *, now: float
    ) -> ProviderFailure:
        return self.failure(endpoint, status, headers, body, now=now, raw=text)

    def rate_limits(self, headers: Mapping[str, str], *, now: float) -> RateLimits | None:
        # Anthropic's resets are absolute times (RFC 3339): `now` is not needed to date them
        prefix = "anthropic-ratelimit-"
        if not any(name.lower().startswith(prefix) for name in headers):
            return None
        limits = RateLimits(
            limit_requests=header_int(headers.get(prefix + "requests-limit")),
            remaining_requests=header_int(headers.get(prefix + "requests-remaining")),
            reset_requests_at=parse_rfc3339(headers.get(prefix + "requests-reset")),
        )
        # The combined token headers describe the most restrictive token limit in effect; without
        # them, the input or output limit with less room left is the one that binds.
        families = [f for f in ("tokens", "input-tokens", "output-tokens") if headers.get(f"{prefix}{f}-remaining")]
        if families:
            if "tokens" in families:
                family = "tokens"
            else:
                family = min(families, key=lambda f: header_int(headers.get(f"{prefix}{f}-remaining")) or 0)
            limits.limit_tokens = header_int(headers.get(f"{prefix}{family}-limit"))
            limits.remaining_tokens = header_int(headers.get(f"{prefix}{family}-remaining"))
            limits.reset_tokens_at = parse_rfc3339(headers.get(f"{prefix}{family}-reset"))
        return None if limits.is_empty() else limits

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        return clean_id(headers.get("request-id")) or super().request_id(headers)

    # -- classification --------------------------------------------------------------------

    def failure(
        self,
        endpoint: Endpoint,
        status: int,
        headers: Mapping[str, str],
        body: Any,
        *,
        now: float,
        in_stream: bool = False,
        raw: str = "",
    ) -> ProviderFailure:
        """A ProviderFailure for an error body (an HTTP error, or an `error` event after a 200); `now` is
        the clock's time it came at."""
        etype, message, details, body_request_id = error_parts(body)
        if not message:
            message = excerpt(raw, 300) if raw else f"HTTP {status}"
        wait = retry_after(headers, now)
        kind = self.kind_for(status, etype, message, details, in_stream=in_stream)
        reset_at = None
        if kind is ErrorKind.QUOTA_EXCEEDED:
            if details.get("error_code") == "enforced_spend_limit_reached":
                reset_at = next_month_utc(now)
            elif _SPEND_LIMIT_TEXT.search(message):
                reset_at = _resume_time(message)
        label = f"{status} {etype}" if etype else f"{status}"
        text = wrong_url_message(endpoint, status, excerpt(message, 200)) if kind is ErrorKind.ENDPOINT_NOT_FOUND else f"{label}: {message}"
        return ProviderFailure(
            kind,
            excerpt(text, 500),
            status=status,
            retry_after_s=wait if kind in (ErrorKind.RATE_LIMIT, ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR) else None,
            reset_at=reset_at,
            request_id=self.request_id(headers) or body_request_id,
            rate_limits=self.rate_limits(headers, now=now),
        )

    @staticmethod
    def kind_for(
        status: int,
        etype: str,
        message: str,
        details: Mapping[str, Any],
        *,
        in_stream: bool = False,
    ) -> ErrorKind:
        """The Anthropic table of providers.md section 8: the error code, error.type, then the status."""
        code = details.get("error_code")
        if code in SPEND_LIMIT_CODES:
            return ErrorKind.QUOTA_EXCEEDED
        if code in LOCKED_CODES or _LOCKED_TEXT.search(message):
            return ErrorKind.ACCOUNT_LOCKED
        if etype == "invalid_request_error" or (not etype and status == 400):
            if _SPEND_LIMIT_TEXT.search(message):
                return ErrorKind.QUOTA_EXCEEDED
            if _CONTEXT_TEXT.search(message):
                return ErrorKind.CONTEXT_OVERFLOW
        if etype == "invalid_request_error" and UNSUPPORTED_TEXT.search(message):
            return ErrorKind.UNSUPPORTED
        kind = _TYPE_KINDS.get(etype) or _status_kind(status, in_stream=in_stream)
        if kind is ErrorKind.MODEL_NOT_FOUND or status == 404:
            # a model that is not there is named ("model: claude-x"); a bare "Not Found", or any 404 naming no
            # model (a proxy's own error shape), is the URL's fault
            return ErrorKind.MODEL_NOT_FOUND if names_model(message) else ErrorKind.ENDPOINT_NOT_FOUND
        return kind


def _status_kind(status: int, *, in_stream: bool) -> ErrorKind:
    if in_stream and status < 300:
        # an error event of a type we do not know, after a 200: the server failed mid-answer
        return ErrorKind.SERVER_ERROR
    if status == 402:
        return ErrorKind.QUOTA_EXCEEDED
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status == 401:
        return ErrorKind.AUTH
    if status == 403:
        return ErrorKind.ACCOUNT_LOCKED
    if status == 404:
        return ErrorKind.MODEL_NOT_FOUND
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if status >= 500 or status == 409:
        return ErrorKind.SERVER_ERROR
    if 400 <= status < 500:
        return ErrorKind.INVALID_REQUEST
    return ErrorKind.SERVER_ERROR


def _check_stop(stop: Any, details: Any, text: str, usage: Usage | None, model: Any, status: int | None) -> None:
    """Raise for the stop reasons that are failures although the status was 200."""
    if stop == "refusal":
        why = ""
        if isinstance(details, dict):
            why = loose_text(details.get("explanation")) or loose_text(details.get("category")) or loose_text(details.get("type"))
        raise ProviderFailure(
            ErrorKind.CONTENT_FILTER, excerpt(f"the model declined (stop_reason refusal){': ' + why if why else ''}", 500),
            status=status, usage=usage, model=model, partial_text=text,
        )
    if stop == "model_context_window_exceeded":
        raise ProviderFailure(
            ErrorKind.CONTEXT_OVERFLOW, "the answer was cut off: the model's context window is full",
            status=status, usage=usage, model=model, partial_text=text,
        )


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _output_format(response_format: dict[str, Any] | str) -> dict[str, Any]:
    """`output_config.format` for a JSON schema; OpenAI-shaped response_format values are unwrapped, and
    "json" (Anthropic has no JSON mode without a schema) asks for any object."""
    if isinstance(response_format, str):
        if response_format != JSON_MODE:
            raise ValueError(f"response_format {response_format!r}: give a JSON Schema, or {JSON_MODE!r} for any JSON object")
        return {"type": "json_schema", "schema": {"type": "object"}}
    if response_format.get("type") == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema") or {"type": "object"}
    elif response_format.get("type") == "json_schema" and isinstance(response_format.get("schema"), dict):
        schema = response_format["schema"]
    elif response_format.get("type") == "json_object":
        schema = {"type": "object"}
    else:
        schema = response_format
    return {"type": "json_schema", "schema": schema}


# -- images and tools (multimodal_tools.md section 2) --------------------------------------------


def _wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """A user or assistant message in Anthropic's shape: parts as blocks (images as `image` blocks),
    an assistant's tool calls as `tool_use` blocks after its text."""
    content = message.get("content")
    blocks = [_block(p) for p in content] if isinstance(content, list) else (
        [{"type": "text", "text": content}] if isinstance(content, str) and content else []
    )
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    calls = calls_of(message)
    if calls:
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in calls]
    out["content"] = blocks if (calls or isinstance(content, list)) else content
    return out


def _block(part: Any) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, dict):
        image = image_of(part)
        if image is not None:
            if image.url is not None:
                return {"type": "image", "source": {"type": "url", "url": image.url}}
            return {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}
    return part


def _result_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": [_block(p) for p in content] if isinstance(content, list) else ("" if content is None else content),
    }
    if message.get("is_error"):
        block["is_error"] = True
    return block


def _wire_tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "input_schema": tool.schema()}
    if tool.description:
        out["description"] = tool.description
    return out


#: the portable tool_choice values in Anthropic's words
_TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


def _tool_choice(choice: str) -> dict[str, Any]:
    return dict(_TOOL_CHOICES[choice]) if choice in _TOOL_CHOICES else {"type": "tool", "name": choice}


def _reply_call(value: Any, where: str) -> ToolCall:
    """A `tool_use` block of a reply (its `input` is an object already)."""
    block = obj(value, where)
    name = string(block.get("name"), where + ".name")
    if not name:
        raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"{where} is a tool_use block naming no tool")
    return ToolCall(string(block.get("id"), where + ".id") or "", name, obj(block.get("input"), where + ".input"))


class _AnthropicStream(StreamDecoder):
    """Reads `message_start` .. `message_stop`; `ping` and non-text deltas are skipped."""

    def __init__(self, protocol: AnthropicProtocol, endpoint: Endpoint, clock: Clock) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.clock = clock
        self.done = False
        self.model: str | None = None
        self.message_id: str | None = None
        self.stop_reason: str | None = None
        self.stop_details: Any = None
        self.usage_raw: dict[str, Any] = {}
        self.any_text = False
        #: streamed tool_use blocks by their index: the call as its start said, and the pieces of its input's JSON
        self.calls: dict[int, tuple[ToolCall, list[str]]] = {}

    def feed(self, event: SSEEvent) -> str | None:
        name = event.event
        if name == "ping":
            return None
        if name == "raw":
            # not an SSE field: noise, unless it is a bare JSON error object
            try:
                data = json.loads(event.data)
            except (ValueError, RecursionError):
                return None
        else:
            data = json_value(event.data, f"stream event {excerpt(name, 40)!r}") if event.data else {}
        if not isinstance(data, dict):
            return None
        kind = data.get("type") if name in ("", "raw") else name
        if kind == "error":
            raise self.protocol.failure(self.endpoint, 200, {}, data, now=self.clock.time(), in_stream=True)
        if kind == "message_start":
            message = obj(data.get("message"), "message_start.message")
            self.model = string(message.get("model"), "message_start.message.model") or self.model
            self.message_id = clean_id(message.get("id")) or self.message_id
            self._merge_usage(message.get("usage"))
        elif kind == "content_block_start":
            block = obj(data.get("content_block"), "content_block_start.content_block")
            if block.get("type") == "tool_use":
                call = _reply_call(block, "content_block_start.content_block")
                self.calls[_index(data)] = (call, [])
                return None
            text = string(block.get("text"), "content_block_start.content_block.text")
            if block.get("type") == "text" and text:
                self.any_text = True
                return text
        elif kind == "content_block_delta":
            delta = obj(data.get("delta"), "content_block_delta.delta")
            if delta.get("type") == "input_json_delta":
                pending = self.calls.get(_index(data))
                piece = string(delta.get("partial_json"), "content_block_delta.delta.partial_json")
                if pending is None:
                    raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, "an input_json_delta for a block that is no tool_use")
                if piece:
                    pending[1].append(piece)
                return None
            text = string(delta.get("text"), "content_block_delta.delta.text")
            if delta.get("type") == "text_delta" and text:
                self.any_text = True
                return text
        elif kind == "message_delta":
            delta = obj(data.get("delta"), "message_delta.delta")
            stop = string(delta.get("stop_reason"), "message_delta.delta.stop_reason")
            if stop:
                self.stop_reason = stop
            if delta.get("stop_details"):
                self.stop_details = delta["stop_details"]
            self._merge_usage(data.get("usage"))
        elif kind == "message_stop":
            self.done = True
        return None

    def _merge_usage(self, raw: Any) -> None:
        # message_delta counts are cumulative: a field it carries replaces the message_start value
        if raw is not None:
            self.usage_raw.update({k: v for k, v in obj(raw, "usage").items() if v is not None})

    def finish(self) -> Completion:
        usage = usage_from(self.usage_raw) if self.usage_raw else None
        if not self.done:
            raise ProviderFailure(ErrorKind.STREAM_INTERRUPTED, "stream ended without message_stop", usage=usage, model=self.model)
        _check_stop(self.stop_reason, self.stop_details, "", usage, self.model, None)
        # the input comes in input_json_delta pieces; the start block's own (an empty object) when none came
        calls = [ToolCall(start.id, start.name, tool_arguments("".join(pieces), f"streamed tool_use {i} input")) if pieces else start
                 for i, (start, pieces) in sorted(self.calls.items())]
        if not self.any_text and not self.stop_reason and not calls:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "stream with no text and no stop reason", usage=usage)
        return Completion(
            text="", model=self.model, finish_reason=self.stop_reason, usage=usage,
            served_model=None if self.endpoint.local else self.model, tool_calls=calls,
        )


def _index(data: dict[str, Any]) -> int:
    """A stream event's content block index."""
    index = data.get("index", 0)
    if type(index) is not int or not 0 <= index < 1024:
        raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"a stream event's content block index is {excerpt(repr(index), 40)}")
    return index

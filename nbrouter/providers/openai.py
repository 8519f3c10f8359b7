"""The OpenAI chat-completions wire protocol (also OpenRouter, Groq, DeepSeek, local servers...)."""

from __future__ import annotations

import email.utils
import json
import math
import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from .._core import ErrorKind, Usage
from .._core.clock import Clock
from .._core.content import JSON_MODE, TOOL_CHOICES, Tool, ToolCall, calls_of, image_of, text_parts
from .._core.secrets import excerpt
from .base import (
    FEATURE_MISSING_TEXT,
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
    count,
    json_value,
    loose_text,
    names_model,
    obj,
    reasoning_effort,
    string,
    tool_arguments,
    wrong_url_message,
)

QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
RATE_CODES = frozenset({"rate_limit_exceeded", "slow_down"})
_CONTEXT_TEXT = re.compile(
    r"maximum context length|context length is only|exceeds the available context size|context_length_exceeded"
    r"|prompt is too long|too many tokens|ContextWindowExceededError",
    re.I,
)
#: an OpenAI 429 about a per-day limit ("... on requests per day (RPD): Limit 10000, Used 10000 ..."):
#: a quota held until the day's reset, not a rate limit retried every minute and a half all day
_PER_DAY_TEXT = re.compile(r"\b(?:requests|tokens) per day\b|\((?:RPD|TPD)\)", re.I)
#: LiteLLM's proxy naming a model it does not serve
_UNKNOWN_MODEL_TEXT = re.compile(r"invalid model name passed in model=", re.I)
#: error codes of a 404 for a model that is not there (Azure names its models deployments)
MODEL_NOT_FOUND_CODES = frozenset({"model_not_found", "DeploymentNotFound"})
#: Azure OpenAI's inner error code when its content filter refused the prompt
AZURE_FILTER_CODES = frozenset({"ResponsibleAIPolicyViolation"})
#: the hour (UTC) a daily quota resets when the provider names no reset: OpenAI's days are UTC days
DAILY_RESET_HOUR_UTC = 0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
#: the longest provider error message classified and quoted (the rest is noise, and regexes stay cheap)
MAX_MESSAGE_CHARS = 4000
#: the longest wait a header or body is believed to name (a year): a reset duration beyond it is garbage,
#: and a Retry-After beyond it (`inf`, `1e30`) is taken as this long (the router caps it further, by policy)
MAX_WAIT_S = 366 * 86400.0


def finite(value: float) -> float | None:
    """`value` when it is a real number of seconds we can wait (0 .. MAX_WAIT_S), else None."""
    return value if math.isfinite(value) and 0.0 <= value <= MAX_WAIT_S else None


def capped_wait(value: float) -> float | None:
    """A wait a server asked for, as it is honoured: NaN asks for nothing (None: the policy's default
    applies), a negative wait is 0, and one past MAX_WAIT_S (`inf`, `1e30`) is MAX_WAIT_S: a server that
    asks for forever gets the longest wait, not none."""
    if math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_WAIT_S)


def parse_duration(value: str | None) -> float | None:
    """A Go-style duration (`6ms`, `1m30s`, `2.5s`) in seconds."""
    if not value:
        return None
    total = 0.0
    found = False
    for number, unit in _DURATION.findall(value[:100]):
        found = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if not found:
        try:
            return finite(float(value))
        except ValueError:
            return None
    return finite(total)


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait, from `retry-after-ms`, then `retry-after` (seconds, or an HTTP date counted from `now`)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            wait = capped_wait(float(ms) / 1000.0)
            if wait is not None:
                return wait
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return capped_wait(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return capped_wait(when.timestamp() - now)
    except Exception:  # the email parser raises several kinds on garbage (TypeError, IndexError, OverflowError...)
        return None


def header_int(value: str | None) -> int | None:
    """A numeric header value as an int; None when absent or not a number."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # "1e400" is inf, and int(inf) raises; a negative count or one past 2**53 is no count at all
    return int(number) if math.isfinite(number) and 0 <= number <= 2**53 else None


def is_openrouter(endpoint: Endpoint) -> bool:
    """OpenRouter has its own error rules (status in `error.code`, budgets in `metadata`)."""
    return endpoint.preset == "openrouter" or "openrouter.ai" in endpoint.base_url


def error_parts(body: Any) -> tuple[str, str, str, Any]:
    """(type, code, message, metadata) of an OpenAI-shaped error body, tolerant of its variants."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", "", None
    err = body.get("error", body)
    if isinstance(err, str):
        return "", "", excerpt(err, MAX_MESSAGE_CHARS), None
    if not isinstance(err, dict):
        return "", "", "", None
    # every field as text or nothing: an error body of odd types is still classified by its status
    etype = loose_text(err.get("type")) or loose_text(body.get("object"))
    # scrubbed before they are cut (a key cut in two no longer matches), like every excerpt
    message = excerpt(loose_text(err.get("message")), MAX_MESSAGE_CHARS)
    return excerpt(etype, 200), excerpt(loose_text(err.get("code")), 200), message, err.get("metadata")


class OpenAIProtocol(WireProtocol):
    """Chat completions: `POST {base_url}/chat/completions`, SSE ending in `[DONE]`."""

    name = "openai"

    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        messages = wire_messages(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.models:
            body["models"] = request.models
        if request.max_tokens is not None:
            # OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens);
            # every compatible server still reads max_tokens.
            key = "max_completion_tokens" if endpoint.preset == "openai" else "max_tokens"
            body[key] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.response_format is not None:
            body["response_format"] = _response_format(request.response_format)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop
        if request.reasoning is not None:
            body["reasoning_effort"] = reasoning_effort(request.reasoning)
        if request.tools:
            body["tools"] = [_wire_tool(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if request.extra_body:
            body.update(request.extra_body)
        headers = {"content-type": "application/json", **endpoint.headers}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return endpoint.base_url.rstrip("/") + "/chat/completions", headers, body

    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, *, now: float) -> Completion:
        body = obj(body, "the response")
        if body.get("error") or body.get("object") == "error":
            raise self._failure_from_body(endpoint, status, headers, body, in_stream=False, now=now)
        choices = arr(body.get("choices"), "choices")
        choice = obj(choices[0], "choices[0]") if choices else {}
        message = obj(choice.get("message"), "choices[0].message")
        text = _content_text(message.get("content"), "choices[0].message.content")
        finish = string(choice.get("finish_reason"), "choices[0].finish_reason")
        refusal = string(message.get("refusal"), "choices[0].message.refusal")
        calls = [_reply_call(c, f"choices[0].message.tool_calls[{i}]")
                 for i, c in enumerate(arr(message.get("tool_calls"), "choices[0].message.tool_calls"))]
        usage, cost = self._usage(body.get("usage"))
        model = string(body.get("model"), "model")
        if finish == "content_filter" or refusal:
            raise ProviderFailure(
                ErrorKind.CONTENT_FILTER,
                excerpt(f"the model declined: {refusal or finish}", 500),
                status=status, usage=usage, model=model,
            )
        if not text and not finish and not calls:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "200 with no text and no finish reason", status=status, usage=usage)
        return Completion(
            text=text, model=model, finish_reason=finish, usage=usage, reported_cost=cost,
            served_model=_price_model(endpoint, model), tool_calls=calls,
        )

    def decoder(self, endpoint: Endpoint, request: ChatRequest, *, clock: Clock) -> StreamDecoder:
        return _OpenAIStream(self, endpoint, clock)

    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str, *, now: float
    ) -> ProviderFailure:
        return self._failure_from_body(endpoint, status, headers, body, in_stream=False, raw=text, now=now)

    def rate_limits(self, headers: Mapping[str, str], *, now: float) -> RateLimits | None:
        if "x-ratelimit-remaining-requests" not in headers and "x-ratelimit-remaining-tokens" not in headers:
            return None
        reset_r = parse_duration(headers.get("x-ratelimit-reset-requests"))
        reset_t = parse_duration(headers.get("x-ratelimit-reset-tokens"))
        return RateLimits(
            limit_requests=header_int(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=header_int(headers.get("x-ratelimit-remaining-requests")),
            reset_requests_at=now + reset_r if reset_r is not None else None,
            limit_tokens=header_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=header_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens_at=now + reset_t if reset_t is not None else None,
        )

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _usage(raw: Any) -> tuple[Usage | None, Decimal | None]:
        if raw is None:
            return None, None
        raw = obj(raw, "usage")
        pdet = obj(raw.get("prompt_tokens_details"), "usage.prompt_tokens_details")
        cdet = obj(raw.get("completion_tokens_details"), "usage.completion_tokens_details")
        usage = Usage(
            input_tokens=count(raw.get("prompt_tokens"), "usage.prompt_tokens"),
            output_tokens=count(raw.get("completion_tokens"), "usage.completion_tokens"),
            cached_tokens=count(pdet.get("cached_tokens"), "usage.prompt_tokens_details.cached_tokens"),
            cache_write_tokens=count(pdet.get("cache_write_tokens"), "usage.prompt_tokens_details.cache_write_tokens"),
            reasoning_tokens=count(cdet.get("reasoning_tokens"), "usage.completion_tokens_details.reasoning_tokens"),
        )
        return usage, _cost(raw.get("cost"))

    def _failure_from_body(
        self,
        endpoint: Endpoint,
        status: int,
        headers: Mapping[str, str],
        body: Any,
        *,
        in_stream: bool,
        now: float,
        raw: str = "",
    ) -> ProviderFailure:
        etype, code, message, metadata = error_parts(body)
        if not message:
            message = excerpt(raw, 300) if raw else f"HTTP {status}"
        # An error object inside a 200 (a stream chunk, or OpenRouter's and vLLM's bodies) carries
        # the real status as a numeric `code`: classify by it (ASCII digits only: "²".isdigit() is True)
        judged = int(code) if status < 300 and code.isascii() and code.isdecimal() and len(code) == 3 else status
        kind = self.kind_for(endpoint, judged, etype, code, message, metadata, headers, in_stream=in_stream, inner=_inner_code(body))
        # a quota does not come back after a Retry-After (providers.md section 8): only its reset counts
        quota = kind is ErrorKind.QUOTA_EXCEEDED
        wait = None if quota else retry_after(headers, now)
        reset_at = _reset_at(metadata) if quota else None
        if quota and reset_at is None and judged == 429 and _PER_DAY_TEXT.search(message):
            reset_at = _daily_reset(message, headers, now)
        label = " ".join(p for p in (str(status), etype, code if code != str(status) else "") if p)
        text = wrong_url_message(endpoint, status, excerpt(message, 200)) if kind is ErrorKind.ENDPOINT_NOT_FOUND else f"{label}: {message}"
        return ProviderFailure(
            kind,
            excerpt(text, 500),
            status=status,
            retry_after_s=wait,
            reset_at=reset_at,
            request_id=self.request_id(headers),
            rate_limits=self.rate_limits(headers, now=now),
        )

    def kind_for(
        self,
        endpoint: Endpoint,
        status: int,
        etype: str,
        code: str,
        message: str,
        metadata: Any,
        headers: Mapping[str, str],
        *,
        in_stream: bool = False,
        inner: str = "",
    ) -> ErrorKind:
        """The classification table of providers.md section 8 for OpenAI-shaped servers (`inner`: Azure's
        `innererror.code`)."""
        low = message.lower()
        meta = metadata if isinstance(metadata, dict) else {}
        if is_openrouter(endpoint):
            kind = _openrouter_kind(status, low, meta, headers)
            if kind is not None:
                return kind
        if etype == "insufficient_quota" or code in QUOTA_CODES or "exceeded your current quota" in low:
            return ErrorKind.QUOTA_EXCEEDED
        if status == 429 and _PER_DAY_TEXT.search(message):
            return ErrorKind.QUOTA_EXCEEDED
        if status == 429 or code in RATE_CODES or etype == "rate_limit_error":
            return ErrorKind.RATE_LIMIT
        if status == 401 or etype == "authentication_error" or code == "invalid_api_key":
            return ErrorKind.AUTH
        if status == 403 or etype == "permission_error":
            return ErrorKind.ACCOUNT_LOCKED
        if FEATURE_MISSING_TEXT.search(message):
            return ErrorKind.UNSUPPORTED
        if code in MODEL_NOT_FOUND_CODES or "does not exist or you do not have access" in low or _UNKNOWN_MODEL_TEXT.search(message):
            return ErrorKind.MODEL_NOT_FOUND
        if status == 404:
            # a 404 speaking of a model: that model is missing here. One naming none (nginx's page, FastAPI's
            # {"detail":"Not Found"}, OpenAI's "Unknown request URL") is the base_url's fault, for every model
            if names_model(message) and code != "unknown_url":
                return ErrorKind.MODEL_NOT_FOUND
            return ErrorKind.ENDPOINT_NOT_FOUND
        if code == "context_length_exceeded" or etype == "exceed_context_size_error" or _CONTEXT_TEXT.search(message):
            return ErrorKind.CONTEXT_OVERFLOW
        if code in ("invalid_prompt", "content_filter") or inner in AZURE_FILTER_CODES or "flagged as potentially violating" in low:
            return ErrorKind.CONTENT_FILTER
        if status == 408 or etype == "timeout_error":
            return ErrorKind.TIMEOUT
        if status in (503, 529) or code == "server_is_overloaded" or etype in ("service_unavailable_error", "unavailable_error", "overloaded_error"):
            return ErrorKind.OVERLOADED
        if status >= 500:
            return ErrorKind.SERVER_ERROR
        if 400 <= status < 500 and (code in ("unsupported_parameter", "unsupported_value") or UNSUPPORTED_TEXT.search(message)):
            return ErrorKind.UNSUPPORTED
        if status in (400, 413, 422) or 400 <= status < 500:
            return ErrorKind.INVALID_REQUEST
        # an error object with no status information (mid-stream): the server failed
        return ErrorKind.SERVER_ERROR


def _openrouter_kind(status: int, low: str, meta: dict[str, Any], headers: Mapping[str, str]) -> ErrorKind | None:
    source = loose_text(meta.get("limit_source"))
    if source == "openrouter_credits":
        return ErrorKind.QUOTA_EXCEEDED
    if status == 402:
        # only the in-flight budget (sent with Retry-After) frees itself; credits do not come back
        if headers.get("retry-after") or source == "openrouter_in_flight_budget":
            return ErrorKind.RATE_LIMIT
        return ErrorKind.QUOTA_EXCEEDED
    if status == 403:
        if source in ("openrouter_guardrail_budget", "openrouter_workspace_budget", "openrouter_key_limit"):
            return ErrorKind.QUOTA_EXCEEDED
        if meta.get("reasons") or meta.get("flagged_input"):
            return ErrorKind.CONTENT_FILTER
        return ErrorKind.ACCOUNT_LOCKED
    if status == 404:
        if "guardrail" in low or "data policy" in low:
            return ErrorKind.ACCOUNT_LOCKED
        if FEATURE_MISSING_TEXT.search(low):
            # "No endpoints found that support image input": the model is there, without the feature
            return ErrorKind.UNSUPPORTED
        return ErrorKind.MODEL_NOT_FOUND
    if status == 400 and "not a valid model id" in low:
        return ErrorKind.MODEL_NOT_FOUND
    if status == 502:
        return ErrorKind.SERVER_ERROR
    if status == 503:
        return ErrorKind.OVERLOADED
    return None


def _reset_at(metadata: Any) -> float | None:
    """OpenRouter's budget `metadata.resets_at` (an ISO timestamp, or epoch seconds or milliseconds)."""
    value = metadata.get("resets_at") if isinstance(metadata, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) / 1000.0 if value > 1e11 else float(value)
        return seconds if math.isfinite(seconds) and seconds > 0 else None
    if isinstance(value, str) and value:
        text = value.strip()[:64]
        text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            when = datetime.fromisoformat(text)
            return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _inner_code(body: Any) -> str:
    """Azure OpenAI's `error.innererror.code`, or ""."""
    err = body.get("error") if isinstance(body, dict) else None
    inner = err.get("innererror") if isinstance(err, dict) else None
    return loose_text(inner.get("code"))[:100] if isinstance(inner, dict) else ""


def next_utc_reset(now: float, hour: int = DAILY_RESET_HOUR_UTC) -> float:
    """The next `hour`:00 UTC after `now` (epoch seconds): when a daily quota with no named reset frees up."""
    day = datetime.fromtimestamp(now, timezone.utc).replace(hour=hour, minute=0, second=0, microsecond=0)
    reset = day.timestamp()
    return reset if reset > now else reset + 86400.0


def _daily_reset(message: str, headers: Mapping[str, str], now: float) -> float:
    """When a per-day limit frees up: the reset header of the limit the message names (counted from
    `now`), else the next UTC reset hour after `now`."""
    name = "x-ratelimit-reset-tokens" if re.search(r"tokens per day|\(TPD\)", message, re.I) else "x-ratelimit-reset-requests"
    wait = parse_duration(headers.get(name))
    return now + wait if wait is not None else next_utc_reset(now)


def _cost(value: Any) -> Decimal | None:
    """A cost the provider reported (OpenRouter's `usage.cost`): a finite, non-negative number, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        cost = Decimal(str(value)[:40])
    except InvalidOperation:
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def _content_text(content: Any, where: str) -> str:
    """A message's `content`: a string, or a list of parts whose `text` ones are joined."""
    if isinstance(content, list):
        return "".join(string(obj(p, where + "[]").get("text"), where + "[].text") or "" for p in content)
    return string(content, where) or ""


def _price_model(endpoint: Endpoint, model: Any) -> str | None:
    """The served model, as a price key. Local servers report their own alias or GGUF file name,
    never a priceable id (providers.md section 5), so they get None."""
    if endpoint.local or not isinstance(model, str) or not model:
        return None
    return model


def _response_format(schema: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(schema, str):
        if schema != JSON_MODE:
            raise ValueError(f"response_format {schema!r}: give a JSON Schema, or {JSON_MODE!r} for any JSON object")
        return {"type": "json_object"}
    if schema.get("type") in ("json_schema", "json_object"):
        return schema
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "response"))[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


# -- images and tools (multimodal_tools.md section 1) --------------------------------------------


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages in OpenAI's shape: portable image parts as `image_url` parts, portable tool calls with a
    `function` whose arguments are JSON text, tool results with only what OpenAI reads. A message of plain
    text (the common case) is passed as it is."""
    out = []
    for m in messages:
        if type(m.get("content")) is str and "tool_calls" not in m and m.get("role") != "tool":
            out.append(m)
        else:
            out.append(_wire_message(m))
    return out


def _wire_message(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    if m.get("role") == "tool":
        # OpenAI has no error flag on a result: the text says it
        text = text_parts(content)
        return {"role": "tool", "tool_call_id": m.get("tool_call_id"), "content": f"error: {text}" if m.get("is_error") else text}
    msg = dict(m)
    if isinstance(content, list):
        msg["content"] = [_wire_part(p) for p in content]
    if "tool_calls" in m:
        calls = calls_of(m)
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for c in calls
        ]
        if not calls:
            del msg["tool_calls"]
    return msg


def _wire_part(part: Any) -> Any:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, dict) and part.get("type") == "image":
        image = image_of(part)
        if image is not None:
            return {"type": "image_url", "image_url": {"url": image.data_url()}}
    return part


def _wire_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.schema()}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    return choice if choice in TOOL_CHOICES else {"type": "function", "function": {"name": choice}}


def _reply_call(value: Any, where: str) -> ToolCall:
    """One `tool_calls` item of a reply (untrusted: a wrong type is malformed, arguments that are no JSON
    object are invalid_output)."""
    item = obj(value, where)
    fn = obj(item.get("function"), where + ".function")
    name = string(fn.get("name"), where + ".function.name")
    if not name:
        raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"{where} names no function")
    args = tool_arguments(string(fn.get("arguments"), where + ".function.arguments") or "", where + ".function.arguments")
    return ToolCall(string(item.get("id"), where + ".id") or "", name, args)


class _CallPieces:
    """One streamed tool call as its chunks build it: the id and name come first, the arguments in pieces."""

    __slots__ = ("id", "name", "arguments")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class _OpenAIStream(StreamDecoder):
    def __init__(self, protocol: OpenAIProtocol, endpoint: Endpoint, clock: Clock) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.clock = clock
        self.done = False
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.cost: Decimal | None = None
        self.refusal = ""
        self.any_text = False
        #: streamed tool calls by their `index`
        self.calls: dict[int, _CallPieces] = {}

    def feed(self, event: SSEEvent) -> str | None:
        data = event.data
        if event.event == "raw":
            # Not an SSE field. llama-server writes a failure as a bare `error: {...}` line; any
            # other bare line is noise (a missing [DONE] is still caught by finish()).
            data = data[6:] if data.startswith("error:") else data
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                return None
            if isinstance(chunk, dict) and "error" not in chunk and chunk.get("object") != "error" and "code" in chunk:
                chunk = {"error": chunk}
            if not isinstance(chunk, dict):
                return None
            return self._chunk(chunk)
        if data.startswith("[DONE]"):
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            chunk = json_value(data, "a stream chunk")  # raises malformed_response, quoting an excerpt
        if type(chunk) is not dict:
            chunk = obj(chunk, "a stream chunk")
        if event.event == "error" and "error" not in chunk:
            chunk = {"error": chunk}
        return self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> str | None:
        # every field type-checked, the well-formed case (str, dict, list) in place: this runs per chunk
        if chunk.get("error") or chunk.get("object") == "error":
            raise self.protocol._failure_from_body(self.endpoint, 200, {}, chunk, in_stream=True, now=self.clock.time())
        model = chunk.get("model")
        if model is not None:
            if type(model) is not str:
                model = string(model, "a stream chunk's model")
            if model:
                self.model = model
        if chunk.get("usage"):
            self.usage, self.cost = OpenAIProtocol._usage(chunk["usage"])
        choices = chunk.get("choices")
        if type(choices) is not list:
            choices = arr(choices, "a stream chunk's choices")
        text = None
        for choice in choices:
            if type(choice) is not dict:
                choice = obj(choice, "a stream chunk's choice")
            delta = choice.get("delta")
            if delta is not None:
                if type(delta) is not dict:
                    delta = obj(delta, "a stream chunk's delta")
                content = delta.get("content")
                piece = content if type(content) is str else _content_text(content, "a stream chunk's delta.content")
                if piece:
                    text = piece if text is None else text + piece
                refusal = delta.get("refusal")
                if refusal is not None:
                    refusal = string(refusal, "a stream chunk's delta.refusal")
                    if refusal:
                        self.refusal += refusal
                if delta.get("tool_calls") is not None:
                    self._call_deltas(delta["tool_calls"])
            finish = choice.get("finish_reason")
            if finish is not None:
                if type(finish) is not str:
                    finish = string(finish, "a stream chunk's finish_reason")
                if finish:
                    self.finish_reason = finish
        if text:
            self.any_text = True
        return text

    def _call_deltas(self, value: Any) -> None:
        """Gather `delta.tool_calls` items by their index: the first brings id and name, the rest arguments."""
        for item in arr(value, "a stream chunk's delta.tool_calls"):
            item = obj(item, "a stream chunk's tool call")
            index = item.get("index", 0)
            if type(index) is not int or not 0 <= index < 1024:
                raise ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"a stream chunk's tool call index is {excerpt(repr(index), 40)}")
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = _CallPieces()
            call.id = string(item.get("id"), "a stream chunk's tool call id") or call.id
            fn = obj(item.get("function"), "a stream chunk's tool call function")
            name = string(fn.get("name"), "a stream chunk's tool call name")
            if name and name != call.name:  # the name comes once; a server that repeats it is not doubled
                call.name += name
            piece = string(fn.get("arguments"), "a stream chunk's tool call arguments")
            if piece:
                call.arguments.append(piece)

    def finish(self) -> Completion:
        if not self.done:
            raise ProviderFailure(ErrorKind.STREAM_INTERRUPTED, "stream ended without [DONE]", usage=self.usage)
        if self.finish_reason == "content_filter" or self.refusal:
            raise ProviderFailure(ErrorKind.CONTENT_FILTER, excerpt(f"the model declined: {self.refusal or self.finish_reason}", 500), usage=self.usage)
        calls = [ToolCall(c.id, c.name, tool_arguments("".join(c.arguments), f"streamed tool call {i} arguments"))
                 for i, c in sorted(self.calls.items())]
        if not self.any_text and not self.finish_reason and not calls:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "stream with no text and no finish reason", usage=self.usage)
        return Completion(
            text="", model=self.model, finish_reason=self.finish_reason, usage=self.usage,
            reported_cost=self.cost, served_model=_price_model(self.endpoint, self.model), tool_calls=calls,
        )

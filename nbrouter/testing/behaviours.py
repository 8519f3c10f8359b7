"""What the simulator does with one request: a success, a provider error, or a transport fault.

Behaviours are plain data. Each one renders in every protocol's own wire format (see the `_*_wire`
modules), so one script such as `[RateLimited(retry_after=30), Reply("hi")]` exercises OpenAI,
Anthropic, Gemini and OpenRouter clients alike.

    Behaviour
     ├── Reply                 200, the protocol's full body or SSE stream
     ├── Empty                 200 with no text and no finish reason
     ├── ContentFilter         200 that the provider's safety layer stopped
     ├── Malformed             200 whose body (or an SSE event) is not valid JSON
     ├── Failure               an HTTP error in the protocol's error shape
     │    ├── RateLimited, QuotaExceeded, Unauthorized, Forbidden, NotFound
     │    └── ServerError, Overloaded, ContextOverflow
     ├── Hang, Drop, CutStream transport faults
     └── Raw                   exactly the given status, body and headers (or SSE events)
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Mapping, Sequence

#: the fields `Reply(rate_limit=...)` understands
RATE_LIMIT_FIELDS = frozenset(
    {"remaining_requests", "remaining_tokens", "limit_requests", "limit_tokens", "reset_s", "reset_requests_s", "reset_tokens_s"}
)
#: the fields `Reply(usage=...)` understands
USAGE_FIELDS = frozenset({"input_tokens", "output_tokens", "cached_tokens"})
#: the in-stream errors `CutStream(error=...)` can send
STREAM_ERRORS = frozenset({"overloaded", "server_error", "rate_limit"})


@dataclass(frozen=True)
class ToolCall:
    """A tool call in a scripted reply: `Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo"})])`.

    Args:
        name: the tool's name.
        arguments: a dict, or a str sent exactly as given where the wire carries a string (OpenAI's
            `arguments`, Anthropic's streamed `partial_json`; parsed elsewhere, `{}` if it is not JSON),
            for tests of arguments that are not valid JSON.
        id: the call's id (default: one in the protocol's style, `call_...` or `toolu_...`).
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a model accepts (`sim.capabilities(model, vision=False)`); a model not named accepts everything.

    A request with something its model lacks is refused with the provider's own error: images without
    `vision`, tools without `tools`, JSON mode or a JSON schema without `json_schema`. `context_window`
    (tokens) is what the model listings say of its window (None: they say nothing); requests are not held
    to it.
    """

    vision: bool = True
    tools: bool = True
    json_schema: bool = True
    context_window: int | None = None


@dataclass(frozen=True)
class Behaviour:
    """Base of everything the simulator can do with a request; `delay_s` waits before responding."""

    delay_s: float = field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class Reply(Behaviour):
    """A successful completion, as a full body or (when the request streams) the protocol's SSE events.

    Args:
        text: the reply; None echoes `Simulated reply from {model}: {last user message[:60]}`.
        chunks: the exact stream pieces (their concatenation is the non-stream text).
        tokens_per_s: stream pacing, one chunk per token; None uses the simulator's setting.
        usage: `{"input_tokens", "output_tokens", "cached_tokens"}`; missing counts are estimated.
        headers: extra response headers.
        rate_limit: `{remaining_requests, remaining_tokens, limit_requests, limit_tokens, reset_s}`
            (optionally `reset_requests_s` / `reset_tokens_s`), sent as the protocol's rate-limit headers.
        finish_reason: overrides the finish reason; `stop`, `length` and `content_filter` (or any
            protocol's own spelling of them) are translated to each protocol's word.
        model: the `model` the response reports (local servers answer with their own alias).
        cost: OpenRouter's `usage.cost`; default 0.000001 per token.
        tool_calls: tool calls the reply makes (`ToolCall(name, arguments)`), in each protocol's shape,
            plain and streamed; with no `text` the reply has none, and the finish reason is the
            protocol's tool-call one (`tool_calls`, `tool_use`, Gemini `STOP`).

    Unscripted parts follow the request: a `tool_choice` that requires a call (OpenAI `required` or a
    named function, Anthropic `any` or `tool`, Gemini mode `ANY`) gets one, to the named or first
    declared tool with arguments that fit its schema; JSON mode (`json_object`, a JSON schema,
    `responseMimeType: application/json`) gets JSON text that fits the schema.
    """

    text: str | None = None
    _: KW_ONLY
    chunks: Sequence[str] | None = None
    tokens_per_s: float | None = None
    usage: Mapping[str, int] | None = None
    headers: Mapping[str, str] | None = None
    rate_limit: Mapping[str, float] | None = None
    finish_reason: str | None = None
    model: str | None = None
    cost: float | None = None
    tool_calls: Sequence[ToolCall] | None = None

    def __post_init__(self) -> None:
        if self.tool_calls is not None:
            calls = tuple(self.tool_calls)
            if not all(isinstance(c, ToolCall) for c in calls):
                raise TypeError("Reply tool_calls must be ToolCall values")
            object.__setattr__(self, "tool_calls", calls)
        if self.usage is not None and not set(self.usage) <= USAGE_FIELDS:
            raise ValueError(f"unknown usage fields {sorted(set(self.usage) - USAGE_FIELDS)}; use {sorted(USAGE_FIELDS)}")
        if self.rate_limit is not None and not set(self.rate_limit) <= RATE_LIMIT_FIELDS:
            unknown = sorted(set(self.rate_limit) - RATE_LIMIT_FIELDS)
            raise ValueError(f"unknown rate_limit fields {unknown}; use {sorted(RATE_LIMIT_FIELDS)}")
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(self.chunks))


@dataclass(frozen=True)
class Empty(Behaviour):
    """A 200 with no text and no finish reason (a stream ends with the protocol's terminator only)."""


@dataclass(frozen=True)
class ContentFilter(Behaviour):
    """A 200 the provider's safety layer stopped: OpenAI `content_filter`, Anthropic `refusal`,
    Gemini no candidates and `promptFeedback.blockReason: SAFETY`."""


@dataclass(frozen=True)
class Malformed(Behaviour):
    """A 200 whose body is not valid JSON (a stream: one `data:` line of broken JSON)."""


@dataclass(frozen=True)
class Failure(Behaviour):
    """Base of the behaviours that answer with an HTTP error in the protocol's error shape."""


@dataclass(frozen=True)
class RateLimited(Failure):
    """A 429 per-minute rate limit; `retry_after` (s) / `retry_after_ms` become the protocol's hint.

    Anthropic always sends `retry-after` and Gemini always a `RetryInfo` (that is how their rate
    limits differ from their quotas on the wire): without a value given they say 20 s. `limit`, `used`
    and `requested` of `metric` ("requests" or "tokens") per `window_s` are what the error message quotes
    (the simulator's own limiter fills them in; a script may leave them to the protocol's sample wording).
    """

    retry_after: float | None = None
    retry_after_ms: float | None = None
    _: KW_ONLY
    limit: float | None = None
    used: float | None = None
    requested: float | None = None
    metric: str = "requests"
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.metric not in ("requests", "tokens"):
            raise ValueError(f"RateLimited metric must be 'requests' or 'tokens', not {self.metric!r}")


@dataclass(frozen=True)
class QuotaExceeded(Failure):
    """Out of quota or credits, which retrying never fixes (OpenAI `insufficient_quota`, Anthropic
    `enforced_spend_limit_reached`, Gemini a per-day quota, OpenRouter 402)."""


@dataclass(frozen=True)
class Unauthorized(Failure):
    """A rejected credential (Gemini sends it as 400 `API_KEY_INVALID`, the others as 401)."""


@dataclass(frozen=True)
class Forbidden(Failure):
    """A 403: region not supported, key lacks permission, OpenRouter guardrail block."""


@dataclass(frozen=True)
class NotFound(Failure):
    """A 404 naming the requested model."""


@dataclass(frozen=True)
class ServerError(Failure):
    """A 5xx server failure; 504 renders as the protocol's timeout error."""

    status: int = 500


@dataclass(frozen=True)
class Overloaded(Failure):
    """Capacity trouble: OpenAI 503, Anthropic 529, Gemini 503 UNAVAILABLE, OpenRouter 503."""


@dataclass(frozen=True)
class ContextOverflow(Failure):
    """A 400 saying the prompt does not fit `limit` tokens; `tokens` is the size it reports
    (default: the prompt's estimate, at least limit + 1)."""

    limit: int = 8192
    tokens: int | None = None


@dataclass(frozen=True)
class Hang(Behaviour):
    """Accept the request and send nothing for `seconds`, then close the connection."""

    seconds: float = 30.0


@dataclass(frozen=True)
class Drop(Behaviour):
    """Close the TCP connection without sending any response."""


@dataclass(frozen=True)
class CutStream(Behaviour):
    """Break a reply part-way.

    A stream sends `after_chunks` text chunks and closes the connection without the terminator; with
    `error` ("overloaded" | "server_error" | "rate_limit") it sends the protocol's in-stream error event
    instead and ends the response there. A non-stream request gets headers announcing a longer
    Content-Length than the bytes that follow before the connection closes.
    """

    after_chunks: int = 2
    error: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.error not in STREAM_ERRORS:
            raise ValueError(f"CutStream error must be one of {sorted(STREAM_ERRORS)}, not {self.error!r}")


@dataclass(frozen=True)
class Raw(Behaviour):
    """Exactly this response, for classification-table tests.

    `body` as a dict or list is sent as JSON, a str or bytes as is. With `sse=[(event, data), ...]`
    the response is an SSE stream of exactly those events (event None: a `data:`-only event).
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"
    _: KW_ONLY
    sse: Sequence[tuple[str | None, str]] | None = None


def is_failure(behaviour: Behaviour) -> bool:
    """Whether OpenRouter's `models` fallback moves past this behaviour to the next model."""
    if isinstance(behaviour, Failure):
        return True
    return isinstance(behaviour, Raw) and behaviour.sse is None and behaviour.status >= 400

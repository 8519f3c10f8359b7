"""What every protocol renderer shares: the parsed call, the outcome to render, and the renderer base.

A renderer turns an `Outcome` (text, finish reason, token counts) into one protocol's body or SSE
events, and a `Failure` behaviour into that protocol's error status, body and headers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from ._features import Features
from .behaviours import (
    ContextOverflow,
    Failure,
    Forbidden,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Unauthorized,
)

#: the retry hint Anthropic and Gemini rate limits carry when the script names none
IMPLIED_RETRY_S = 20
#: characters per estimated token, for prompt and output counts
CHARS_PER_TOKEN = 4
#: characters per stream chunk when the reply gives no `chunks`
CHUNK_CHARS = 4
#: OpenRouter's default `usage.cost` per token
COST_PER_TOKEN = 0.000001

# One row per finish reason: (canonical, OpenAI, Anthropic, Gemini). Any spelling maps to its row; a
# spelling in two rows (Gemini's STOP) maps to the later one.
_FINISH_ROWS = (
    ("tool_calls", "tool_calls", "tool_use", "STOP"),
    ("stop", "stop", "end_turn", "STOP"),
    ("length", "length", "max_tokens", "MAX_TOKENS"),
    ("content_filter", "content_filter", "refusal", "SAFETY"),
)
_FINISH_CANONICAL = {spelling: row[0] for row in _FINISH_ROWS for spelling in row}
_FINISH_COLUMN = {"openai": 1, "openrouter": 1, "anthropic": 2, "gemini": 3}
_FINISH_BY_CANONICAL = {row[0]: row for row in _FINISH_ROWS}


def canonical_finish(reason: str | None) -> str | None:
    """`stop`, `length` or `content_filter` for any protocol's spelling of them; others unchanged."""
    if reason is None:
        return None
    return _FINISH_CANONICAL.get(reason, reason)


def protocol_finish(protocol: str, reason: str | None) -> str | None:
    """The protocol's own word for a canonical finish reason."""
    if reason is None:
        return None
    row = _FINISH_BY_CANONICAL.get(reason)
    return row[_FINISH_COLUMN[protocol]] if row else reason


def dumps(value: Any) -> str:
    """Compact JSON, as the providers send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def go_duration(seconds: float) -> str:
    """A Go-style duration as OpenAI's `x-ratelimit-reset-*` headers write it: `6ms`, `20s`, `1m30s`."""
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{int(hours)}h" if hours else ""
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{round(secs, 3):g}s"


def rfc3339_in(seconds: float, now: float | None = None) -> str:
    """The UTC time `seconds` after `now` (default: the wall clock), as Anthropic's `*-reset` headers write it."""
    return rfc3339(math.ceil((time.time() if now is None else now) + seconds))


def rfc3339(stamp: float) -> str:
    """A Unix time as RFC 3339 in UTC, to the second."""
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_text(value: float) -> str:
    """A number of seconds without a needless `.0`."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def per_window(window_s: float) -> str:
    """How an error message names a limit's window: `minute`, `day`, or `N seconds`."""
    if window_s == 60:
        return "minute"
    if window_s == 86400:
        return "day"
    return f"{seconds_text(window_s)} seconds"


def amount_text(value: float) -> str:
    """A count as error messages quote it: whole numbers without a fraction."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def masked(key: str | None) -> str:
    """A credential as error messages quote it: enough to recognise, not enough to use."""
    if not key:
        return ""
    return f"{key[:3]}***{key[-4:]}" if len(key) > 10 else "***"


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the `text` of its parts or blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    if isinstance(content, dict):
        return text_of(content.get("parts")) or str(content.get("text") or "")
    return ""


@dataclass
class Call:
    """One model call as the simulator understood it: who asked for what, and how to answer."""

    protocol: str
    model: str
    key: str | None
    stream: bool
    body: Any
    #: the suffix every id of this call shares (`chatcmpl-<id>`, `msg_<id>`, `gen-<id>`)
    id: str
    #: the characters of every message, system text included
    prompt_chars: int
    last_user: str
    #: OpenAI `stream_options.include_usage`
    include_usage: bool = False
    created: int = 0
    #: images, tools, the tool choice, JSON mode and tool results the body carries
    features: Features = field(default_factory=Features)

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_chars // CHARS_PER_TOKEN + 1


@dataclass(frozen=True)
class RenderedTool:
    """A tool call ready for the wire: its id, name, and arguments as a JSON string and as an object."""

    id: str
    name: str
    #: exactly what OpenAI's `arguments` (and Anthropic's streamed `partial_json`) carry
    text: str
    #: what Anthropic's `input` and Gemini's `args` carry
    value: dict[str, Any]
    #: whether the caller gave the id (Gemini sends ids only then)
    given_id: bool = False


def argument_pieces(text: str, size: int = 12) -> list[str]:
    """A tool call's arguments as a stream sends them: in small pieces, never none."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Outcome:
    """A successful answer, independent of protocol: what the renderers turn into bodies and events."""

    model: str
    text: str
    chunks: tuple[str, ...]
    #: canonical finish reason (`stop`, `length`, `content_filter`, ...) or None
    finish: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float | None = None
    tool_calls: tuple[RenderedTool, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Wire:
    """One protocol's renderer; subclasses fill in the bodies, events and error shapes."""

    name = ""
    #: the response header that carries the request id
    request_id_header = ""
    json_type = "application/json"
    sse_type = "text/event-stream"

    def __init__(self) -> None:
        #: the wall clock that dated headers read (the simulator's clock)
        self.wall: Callable[[], float] = time.time
        self._failures: dict[type, Callable[[Call, Any], tuple[int, Any, dict[str, str]]]] = {
            RateLimited: self.rate_limited,
            QuotaExceeded: self.quota_exceeded,
            Unauthorized: self.unauthorized,
            Forbidden: self.forbidden,
            NotFound: self.not_found,
            ServerError: self.server_error,
            Overloaded: self.overloaded,
            ContextOverflow: self.context_overflow,
        }

    # -- headers ----------------------------------------------------------------------------

    def headers(self, call: Call) -> dict[str, str]:
        """Headers every response of this protocol carries."""
        return {self.request_id_header: self.request_id(call)} if self.request_id_header else {}

    def request_id(self, call: Call) -> str:
        return "req_" + call.id

    def rate_limit_headers(self, limits: Mapping[str, float]) -> dict[str, str]:
        """The protocol's rate-limit headers for `Reply(rate_limit=...)`; none by default."""
        return {}

    # -- success ----------------------------------------------------------------------------

    def body(self, call: Call, outcome: Outcome) -> Any:
        raise NotImplementedError

    def stream_head(self, call: Call, outcome: Outcome) -> str:
        """Events before the first text chunk."""
        return ""

    def stream_piece(self, call: Call, outcome: Outcome, piece: str, final: bool) -> str:
        """The event carrying one text chunk; `final` when no terminator follows it in `stream_tail`."""
        raise NotImplementedError

    def stream_tools(self, call: Call, outcome: Outcome) -> str:
        """The events of the outcome's tool calls, after the text chunks and before the tail."""
        return ""

    def stream_tail(self, call: Call, outcome: Outcome) -> str:
        """Events after the last text chunk (and tool call), terminator included."""
        return ""

    # -- faults -----------------------------------------------------------------------------

    def failure(self, call: Call, behaviour: Failure) -> tuple[int, Any, dict[str, str]]:
        """(status, body, extra headers) of a Failure behaviour in this protocol's error shape."""
        return self._failures[type(behaviour)](call, behaviour)

    def stream_error(self, call: Call, kind: str) -> str:
        """The in-stream error event for `overloaded`, `server_error` or `rate_limit`."""
        raise NotImplementedError

    def malformed_body(self, call: Call) -> str:
        raise NotImplementedError

    def malformed_event(self, call: Call) -> str:
        raise NotImplementedError

    def rate_limited(self, call: Call, b: RateLimited) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def quota_exceeded(self, call: Call, b: QuotaExceeded) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def unauthorized(self, call: Call, b: Unauthorized) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def forbidden(self, call: Call, b: Forbidden) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def not_found(self, call: Call, b: NotFound) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def server_error(self, call: Call, b: ServerError) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def overloaded(self, call: Call, b: Overloaded) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def context_overflow(self, call: Call, b: ContextOverflow) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def bad_request(self, call: Call, message: str, param: str | None = None) -> tuple[int, Any]:
        """A 400 for a body the provider refuses to read (not JSON, no model, a broken tool sequence or image)."""
        raise NotImplementedError

    def unsupported(self, call: Call, feature: str, where: str) -> tuple[int, Any]:
        """(status, body) refusing a feature the model lacks: `vision` (`where`: the image's path),
        `tools`, `json_object` or `json_schema`."""
        raise NotImplementedError


def overflow_tokens(call: Call, b: ContextOverflow) -> int:
    """The prompt size a context-overflow error reports: as scripted, else the estimate, above the limit."""
    return b.tokens if b.tokens is not None else max(call.prompt_tokens, b.limit + 1)


def retry_hint_s(b: RateLimited) -> float | None:
    """The scripted retry hint in seconds, from `retry_after` or `retry_after_ms`."""
    if b.retry_after is not None:
        return float(b.retry_after)
    if b.retry_after_ms is not None:
        return b.retry_after_ms / 1000.0
    return None

"""What every wire protocol module provides, and the values it hands back to the router.

A protocol module knows how to build a request, parse a response or a stream, read rate-limit headers
and classify a failure into an :class:`~nbrouter._core.ErrorKind`. It never decides what to do
about a failure: that is the router's policy.

A protocol never reads the system clock: whatever it dates (a reset in N seconds, a Retry-After date, the
next daily reset) is counted from the `now` it is given, the router's Clock read by the Sender.
"""

from __future__ import annotations

import abc
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping

# re-exported for the protocol modules (the `X as X` form says so to a type checker)
from .._core import ErrorKind as ErrorKind
from .._core import ProviderFailure as ProviderFailure
from .._core import RateLimits as RateLimits
from .._core import Usage as Usage
from .._core.content import Tool, ToolCall
from .._core.clock import Clock
from .._core.secrets import excerpt

#: the longest request id kept from a response (a proxy can echo anything into `x-request-id`)
MAX_REQUEST_ID_CHARS = 128
#: the largest token count believed (beyond it a number is garbage, and SQLite's INTEGER overflows)
MAX_COUNT = 2**53


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to send: one provider account, resolved at call time."""

    provider: str
    protocol: str
    base_url: str
    #: never in the repr: an Endpoint printed in a traceback or a log must not show the key
    api_key: str | None = field(default=None, repr=False)
    preset: str | None = None
    local: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the environment variable the key was read from, named (never the value) when the key is unusable
    key_env: str | None = None
    #: the account's name, for the router's own messages
    account: str | None = None


@dataclass
class ChatRequest:
    """A provider-neutral chat request."""

    model: str
    messages: list[dict[str, Any]]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    #: an OpenAI-style `response_format` or a bare JSON Schema (mapped per protocol), or "json": any JSON object
    response_format: dict[str, Any] | str | None = None
    stream: bool = False
    #: OpenRouter only: the whole fallback list, sent as one request with the `models` array.
    models: list[str] | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    #: one portable reasoning setting: "low" | "medium" | "high", or a budget in tokens; each protocol maps
    #: it (`reasoning_effort`, Anthropic's `thinking` budget, Gemini's `thinkingConfig`)
    reasoning: str | int | None = None
    #: anything else, merged into the JSON body as given (the step's or the call's own)
    extra_body: dict[str, Any] | None = None
    #: functions the model may call (`nbrouter._core.content.Tool`)
    tools: list[Tool] | None = None
    #: "auto" | "required" | "none", or the name of the one tool the model must call
    tool_choice: str | None = None


#: the thinking budget (tokens) of each portable reasoning effort, for protocols that take a budget
REASONING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}


def reasoning_effort(value: str | int) -> str:
    """The effort ("low", "medium", "high") of a portable reasoning setting (a budget maps to the nearest)."""
    if isinstance(value, str):
        return value
    return "low" if value <= REASONING_BUDGETS["low"] * 2 else "medium" if value <= REASONING_BUDGETS["medium"] * 2 else "high"


def reasoning_budget(value: str | int) -> int:
    """The budget in tokens of a portable reasoning setting."""
    return REASONING_BUDGETS[value] if isinstance(value, str) else int(value)


@dataclass
class Completion:
    """A successful answer as the wire gave it."""

    text: str
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    rate_limits: RateLimits | None = None
    #: a cost the provider itself reported (OpenRouter's `usage.cost`)
    reported_cost: Decimal | None = None
    warning: str | None = None
    #: set when the provider routed internally (OpenRouter `models`): which model served
    served_model: str | None = None
    #: the tools the model asked to call, in order (its text may be empty then)
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class SSEEvent:
    """One server-sent event: its name (may be empty) and its data lines joined."""

    event: str
    data: str


class StreamDecoder(abc.ABC):
    """Turns one response's SSE events into text deltas; keeps what the final Completion needs."""

    #: True once the protocol's terminator (or final chunk) has been seen
    done: bool = False

    @abc.abstractmethod
    def feed(self, event: SSEEvent) -> str | None:
        """Take one event; return new text or None. Raise ProviderFailure for an error event."""

    @abc.abstractmethod
    def finish(self) -> Completion:
        """The completed answer. Raise ProviderFailure when the stream ended without its terminator."""


class WireProtocol(abc.ABC):
    """One wire protocol (OpenAI chat completions, Anthropic messages, Gemini generateContent)."""

    name: str = ""

    @abc.abstractmethod
    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        """URL, headers and JSON body for this request."""

    @abc.abstractmethod
    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, *, now: float) -> Completion:
        """Parse a 2xx JSON body (`now`: the clock's time when it came). Raise ProviderFailure when the body
        says it failed."""

    @abc.abstractmethod
    def decoder(self, endpoint: Endpoint, request: ChatRequest, *, clock: Clock) -> StreamDecoder:
        """A fresh decoder for one streamed response; an error event is dated on `clock`."""

    @abc.abstractmethod
    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str, *, now: float
    ) -> ProviderFailure:
        """Classify a non-2xx response (`body` is the parsed JSON or None, `text` the raw body, `now` the
        clock's time when it came)."""

    def rate_limits(self, headers: Mapping[str, str], *, now: float) -> RateLimits | None:
        """Quota headroom from response headers (resets counted from `now`); None when the provider sent none."""
        return None

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        """The response's request id (scrubbed and capped), from the first id header present."""
        for name in ("x-request-id", "request-id", "x-generation-id"):
            value = headers.get(name)
            if value:
                return clean_id(value)
        return None


# -- reading what a provider sent ----------------------------------------------------------------
#
# Everything in a response is untrusted. In a 2xx body or a stream event, a field of the wrong type means
# the answer cannot be read: `malformed_response`. In an error body the status still classifies, so the
# readers there (`loose_text`) drop a wrong-typed field instead.


def malformed(message: str, **kw: Any) -> ProviderFailure:
    """A `malformed_response` failure: a reply that cannot be read (its message is scrubbed)."""
    return ProviderFailure(ErrorKind.MALFORMED_RESPONSE, excerpt(message, 500), **kw)


def _what(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def obj(value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object (null as an empty one)."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    raise malformed(f"{where} is a {_what(value)}, not an object")


def arr(value: Any, where: str) -> list[Any]:
    """`value` as a JSON array (null as an empty one)."""
    if isinstance(value, list):
        return value
    if value is None:
        return []
    raise malformed(f"{where} is a {_what(value)}, not an array")


def string(value: Any, where: str) -> str | None:
    """`value` as a string, or None for null."""
    if value is None or isinstance(value, str):
        return value
    raise malformed(f"{where} is a {_what(value)}, not a string")


def count(value: Any, where: str) -> int:
    """A token count: a non-negative whole number (null as 0); an integral float or a string of ASCII
    digits is accepted, since some servers send those."""
    if type(value) is int and 0 <= value <= MAX_COUNT:  # the common case, first
        return value
    if value is None:
        return 0
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 16:
        number = int(value)
    if number is None or not 0 <= number <= MAX_COUNT:
        raise malformed(f"{where} is {excerpt(repr(value), 40)}, not a token count")
    return number


def tool_arguments(text: str, where: str) -> dict[str, Any]:
    """A tool call's arguments from the JSON text a model wrote: an object (empty text: none). Anything else
    is `invalid_output`: the model's own output is wrong, and it may get it right when asked again."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ProviderFailure(ErrorKind.INVALID_OUTPUT, f"{where} is not a JSON object: {excerpt(text, 120)!r}")
    return value


def json_value(data: str | bytes, where: str) -> Any:
    """The JSON value `data` spells; `malformed_response` (quoting a scrubbed excerpt) when it spells none."""
    try:
        return json.loads(data)
    except RecursionError:
        raise malformed(f"{where} is JSON nested too deep") from None
    except ValueError:  # UnicodeDecodeError is a ValueError
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
        raise malformed(f"{where} is not valid JSON: {excerpt(text, 120)!r}") from None


def loose_text(value: Any) -> str:
    """A field of an error body as text: a string, or a number's digits; anything else is dropped."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**6:
        return str(value)
    return ""


def clean_id(value: Any) -> str | None:
    """A request id as stored: a string, scrubbed, capped at MAX_REQUEST_ID_CHARS, printable."""
    if not isinstance(value, str) or not value:
        return None
    value = excerpt(value, MAX_REQUEST_ID_CHARS)
    return value if value.isprintable() else "".join(c if c.isprintable() else "?" for c in value)


#: a 404 whose message names a model (or a model id, as Google's `models/x` does): that model is missing
_MODEL_TEXT = re.compile(r"\bmodels?\b", re.I)


def names_model(message: str) -> bool:
    """Whether a 404's message speaks of a model; one that does not is taken for a wrong URL."""
    return _MODEL_TEXT.search(message) is not None


def shown_url(url: str) -> str:
    """A URL as a message may name it: no user or password, no query (where a key can ride), scrubbed."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return excerpt(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")), 300)


def wrong_url_message(endpoint: Endpoint, status: int, said: str) -> str:
    """The message of an `endpoint_not_found` failure: the base_url, named, looks wrong (`said`: what the
    server answered, already scrubbed)."""
    return excerpt(
        f"the base_url {shown_url(endpoint.base_url)} of {endpoint.provider!r} looks wrong: a {status} naming no model ({said})", 500
    )


#: a 4xx whose message says the model refuses a feature the request uses (streaming, a JSON schema, a
#: parameter): the kind `unsupported`, which falls back (another model may support it), not a stop
UNSUPPORTED_TEXT = re.compile(
    r"(?:does not|doesn't|do not) support|(?:is|are) not supported|not supported (?:by|for|with) (?:this|the) model"
    r"|unsupported (?:parameter|value|model feature)|unrecognized request argument|is only supported by certain models"
    r"|(?:function calling|json mode|image input modality)(?: mode `?\w+`?)? is not enabled for",
    re.I,
)
#: a model or server without images or tools, in words that mean it whatever the status (llama.cpp without
#: its mmproj answers 500, OpenRouter 404, vLLM without its tool parser 400): `unsupported` before any rule
#: of the status (multimodal_tools.md, "Errors when unsupported")
FEATURE_MISSING_TEXT = re.compile(
    r"image input is not supported|does not support (?:tools|image input|images|vision)"
    r"|no endpoints found that support (?:image input|tool use|the requested output modalities)"
    r"|tool choice requires --enable-auto-tool-choice|image_url is only supported by certain models",
    re.I,
)

"""One call's inputs, as every public method takes them and the loop reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Generic, Protocol, TypedDict, TypeVar, overload

from .._core.content import JSON_MODE, Tool, text_parts
from .media import ImageInfo, Sent, image_inputs, images_in, sent_of, size_text, with_images
from .model import Combo
from .structured import OutputSchema, SchemaSpec, output_schema
from .tools import check_tool_choice, tools_of

T = TypeVar("T")
V = TypeVar("V")


class _once(Generic[V]):
    """A value computed on first read and kept in the instance (functools.cached_property without its lock,
    which Python 3.11 takes on every first read: these are read once per call, on every call)."""

    def __init__(self, compute: Callable[[Any], V]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _once[V]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> V: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> V | _once[V]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.compute(obj)
        return value


class Pacing(Protocol):
    """How a call is paced (`state.pacing.Lanes` is one; `Router.map` sets it on each item's request): the
    lane it takes from shared limits in ("interactive" or "batch"), how long it may wait for headroom, and
    a limit on calls in flight per account."""

    @property
    def lane(self) -> str:
        """"interactive" (a cell, `complete`: ahead of batches) or "batch"."""

    @property
    def max_wait_s(self) -> float:
        """The longest wait for headroom before the call fails as usual."""

    def concurrency(self, account_key: str) -> int | None:
        """At most this many calls in flight on the account (None: no limit but the rates)."""


@dataclass
class CallRequest:
    """One call's inputs, as the loop sees them."""

    #: a combo name, a `provider/model` target, or a Combo object (a draft that is not saved)
    combo: str | Combo
    messages: list[dict[str, Any]]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None
    seed: int | None = None
    stream: bool = False
    #: an OpenAI-style `response_format` or a JSON Schema (mapped per protocol), or "json": any JSON object
    response_format: dict[str, Any] | str | None = None
    strategy: str | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    reasoning: str | int | None = None
    extra_body: dict[str, Any] | None = None
    # ---- issue 17 (batch work): a response cache, pacing, structured output ----
    #: answer from / store in the response cache (`Router.cache`)
    cache: bool = False
    #: how the call is paced (set by `Router.map`: the batch lane); None: an interactive call
    pacer: Pacing | None = None
    #: the answer must be JSON matching this schema (sent as `response_format`; `result.parsed` holds it)
    schema: OutputSchema | None = None
    # ---- issue 25: tools (images travel in the messages, as content parts) ----
    #: functions the model may call
    tools: list[Tool] | None = None
    #: "auto" | "required" | "none", or the name of the one tool the model must call
    tool_choice: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a pickled copy holds (a batch's items go to a cluster's workers): everything but the pacer,
        which paces this process's sends (its lock does not pickle; a worker paces with its own), and the
        prompt text, worked out again where it is read."""
        state = dict(self.__dict__)
        state["pacer"] = None
        state.pop("prompt_text", None)
        return state

    @_once  # read by the decision and again by the call log
    def prompt_text(self) -> str:
        """The prompt as text: the system prompt and each message's text, an image as `[image]` (the call
        log keeps this; never an image's bytes)."""
        parts = [self.system or ""] + [c if isinstance(c := m.get("content", ""), str) else _message_text(m) for m in self.messages]
        return "\n".join(p for p in parts if p)

    @_once
    def plain(self) -> bool:
        """Text messages only (no parts, no tool turns), and no tools, schema or response format: what most
        calls are, told apart in one pass so that they pay for nothing else."""
        if self.tools is not None or self.schema is not None or self.response_format is not None:
            return False
        for m in self.messages:
            if type(m.get("content")) is not str or m.get("role") not in _PLAIN_ROLES or "tool_calls" in m:
                return False
        return True

    @_once
    def images(self) -> list[ImageInfo]:
        """Every image the messages carry (its type and size; the limits of each protocol read them)."""
        return [] if self.plain else images_in(self.messages)

    @_once
    def needs(self) -> frozenset[str]:
        """The capabilities a target needs to take this call: `vision` (an image in the messages), `tools`
        (tools declared, or tool calls and results in the history), `json_schema` (a schema or JSON mode)."""
        if self.plain:
            return _NOTHING
        out = set()
        if self.images:
            out.add("vision")
        if self.tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in self.messages):
            out.add("tools")
        if self.schema is not None or self.response_format is not None:
            out.add("json_schema")
        return frozenset(out)

    @_once
    def sent(self) -> Sent:
        """What the call sends besides text (images: how many, their bytes; tools: how many)."""
        if self.plain:
            return _TEXT_ONLY
        return sent_of(self.images, len(self.tools or ()))


#: the roles of a plain text conversation, and what such a call needs
_PLAIN_ROLES = frozenset({"system", "user", "assistant", "developer"})
_NOTHING: frozenset[str] = frozenset()
#: what a plain call sends besides text: nothing (frozen: shared)
_TEXT_ONLY = Sent()


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    text = text_parts(content)
    images = images_in([message])
    if images:
        sizes = [size_text(i.size) if i.size is not None else "URL" for i in images]
        text = f"{text} [image: {', '.join(sizes)}]".strip()
    return text


#: the keyword arguments every call method accepts (the fields of CallRequest after `combo` and `messages`,
#: and `images`, which go into the last user message)
OPTIONS = (frozenset(f.name for f in fields(CallRequest)) | {"images"}) - {"combo", "messages", "stream", "pacer"}
#: what `response_format="json"` is checked against: any JSON object (as `schema=` is checked)
JSON_OBJECT = OutputSchema({"type": "object"})


class CallOptions(TypedDict, total=False):
    """The keyword arguments of `Router.complete`, `stream`, `astream` and `explain`, as `Router.acomplete`
    describes them (`OPTIONS` and `messages`): typed, so that a checker catches a misspelt one."""

    messages: list[dict[str, Any]] | None
    system: str | None
    max_tokens: int | None
    temperature: float | None
    max_cost_usd: float | None
    timeout_s: float | None
    seed: int | None
    response_format: dict[str, Any] | str | None
    strategy: str | None
    top_p: float | None
    stop: list[str] | None
    reasoning: str | int | None
    extra_body: dict[str, Any] | None
    schema: SchemaSpec | None
    cache: bool
    images: Any
    tools: Any
    tool_choice: str | None


#: the numeric call options, and whether zero is allowed (a zero timeout is refused, as the config refuses it,
#: rather than read as "no timeout"; a zero budget means only free calls)
NUMERIC_OPTIONS = {"timeout_s": False, "max_tokens": False, "max_cost_usd": True}


def _check_number(name: str, value: Any, zero_ok: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not zero_ok):
        wanted = "a number of at least 0" if zero_ok else "a number above 0"
        raise ValueError(f"{name} must be {wanted}, not {value!r}")


def build_request(combo: str | Combo, prompt: str | None, *, stream: bool, messages: list[dict[str, Any]] | None = None,
                  **options: Any) -> CallRequest:
    """A CallRequest from a public method's arguments; an unknown keyword is a TypeError naming it.

    Args:
        combo: a combo name, a virtual `auto...` name, a target, or a draft Combo.
        prompt: the user message, appended after `messages` when both are given.
        stream: whether the answer is streamed.
        messages: the conversation so far, as chat messages.
        **options: any of `OPTIONS` (system, max_tokens, temperature, max_cost_usd, timeout_s, seed,
            response_format, strategy, cache, schema, images, tools, tool_choice).

    Raises:
        TypeError: an unknown keyword, or neither prompt nor messages.
        ValueError: an image, a tool or the tool choice is not valid (the message says which).
    """
    if not OPTIONS.issuperset(options):
        raise TypeError(f"unexpected arguments: {', '.join(sorted(set(options) - OPTIONS))}")
    for name, zero_ok in NUMERIC_OPTIONS.items():
        _check_number(name, options.get(name), zero_ok)
    if messages is None:
        if prompt is None:
            raise TypeError("give a prompt or messages")
        messages = [{"role": "user", "content": prompt}]
    elif prompt is not None:
        messages = [*messages, {"role": "user", "content": prompt}]
    messages = with_images(messages, image_inputs(options.pop("images", None)))
    if options.get("tools") is not None or options.get("tool_choice") is not None:
        options["tools"] = tools_of(options.get("tools"))
        options["tool_choice"] = check_tool_choice(options.get("tool_choice"), options["tools"])
    if options.get("response_format") == JSON_MODE and options.get("schema") is None:
        options["schema"] = JSON_OBJECT  # JSON mode is checked as a schema is: not JSON is invalid_output
    elif isinstance(options.get("response_format"), str):
        raise ValueError(f"response_format is {JSON_MODE!r} (any JSON object) or a dict, not {options['response_format']!r}")
    if options.get("schema") is not None:
        options["schema"] = output_schema(options["schema"])
        if options.get("response_format") is None:
            options["response_format"] = options["schema"].json_schema
    return CallRequest(combo=combo, messages=messages, stream=stream, **options)

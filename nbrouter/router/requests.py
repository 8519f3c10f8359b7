"""One call's inputs, as every public method takes them and the loop reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Awaitable, Protocol, TypedDict, TypeVar

from .model import Combo
from .structured import OutputSchema, SchemaSpec, output_schema
from .types import Candidate

T = TypeVar("T")


class Pacing(Protocol):
    """The buckets a batch paces its calls with (`state.pacing.Pacer` is one): asked before a candidate is
    tried, and told around each attempt's send."""

    max_wait_s: float

    def skip(self, c: Candidate, tokens: int, now: float) -> tuple[str, float] | None:
        """None when `c` has headroom now, else (the reason, when the bucket refills)."""

    def around(self, c: Candidate, tokens: int, now: float, sending: Awaitable[T]) -> Awaitable[T]:
        """Await one attempt's send, taking from the buckets first and learning from how it ended."""


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
    response_format: dict[str, Any] | None = None
    strategy: str | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    reasoning: str | int | None = None
    extra_body: dict[str, Any] | None = None
    # ---- issue 17 (batch work): a response cache, pacing, structured output ----
    #: answer from / store in the response cache (`Router.cache`)
    cache: bool = False
    #: the buckets a batch paces its calls with (set by `Router.map`; the skip check "paced" reads it)
    pacer: Pacing | None = None
    #: the answer must be JSON matching this schema (sent as `response_format`; `result.parsed` holds it)
    schema: OutputSchema | None = None

    @cached_property  # read by the decision and again by the call log
    def prompt_text(self) -> str:
        parts = [self.system or ""] + [m.get("content", "") if isinstance(m.get("content"), str) else str(m.get("content")) for m in self.messages]
        return "\n".join(p for p in parts if p)


#: the keyword arguments every call method accepts (the fields of CallRequest after `combo` and `messages`)
OPTIONS = frozenset(f.name for f in fields(CallRequest)) - {"combo", "messages", "stream", "pacer"}


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
    response_format: dict[str, Any] | None
    strategy: str | None
    top_p: float | None
    stop: list[str] | None
    reasoning: str | int | None
    extra_body: dict[str, Any] | None
    schema: SchemaSpec | None
    cache: bool


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
            response_format, strategy, cache, schema).
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
    if options.get("schema") is not None:
        options["schema"] = output_schema(options["schema"])
        if options.get("response_format") is None:
            options["response_format"] = options["schema"].json_schema
    return CallRequest(combo=combo, messages=messages, stream=stream, **options)

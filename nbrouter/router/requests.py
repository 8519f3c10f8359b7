"""One call's inputs, as every public method takes them and the loop reads them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Protocol

from .model import Combo
from .structured import OutputSchema, output_schema
from .types import Candidate

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
    response_format: dict[str, Any] | None = None
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

    def __getstate__(self) -> dict[str, Any]:
        """What a pickled copy holds (a batch's items go to a cluster's workers): everything but the pacer,
        which paces this process's sends (its lock does not pickle; a worker paces with its own), and the
        prompt text, worked out again where it is read."""
        state = dict(self.__dict__)
        state["pacer"] = None
        state.pop("prompt_text", None)
        return state

    @cached_property  # read by the decision and again by the call log
    def prompt_text(self) -> str:
        parts = [self.system or ""] + [m.get("content", "") if isinstance(m.get("content"), str) else str(m.get("content")) for m in self.messages]
        return "\n".join(p for p in parts if p)


#: the keyword arguments every call method accepts (the fields of CallRequest after `combo` and `messages`)
OPTIONS = frozenset(f.name for f in fields(CallRequest)) - {"combo", "messages", "stream", "pacer"}


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

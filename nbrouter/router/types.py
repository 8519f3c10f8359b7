"""The values the router hands back: error kinds, candidates, attempts, results and stream events."""

from __future__ import annotations

import datetime
import enum
import functools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Union

from .._core import ErrorKind, Usage
from .._core.text import dollars
from .views import attempt_table, decision_html, decision_text, footer


class Action(str, enum.Enum):
    """What the loop did with one candidate."""

    SERVED = "served"
    ADVANCE = "advance"
    RETRY = "retry"
    STOP = "stop"
    SKIPPED = "skipped"
    CACHED = "cached"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Candidate:
    """One (provider, account, model): the unit of routing state."""

    provider: str
    account: str
    model: str
    path: tuple[str, ...] = field(default=(), compare=False)
    weight: float = field(default=1.0, compare=False)
    #: index of the step it came from in the resolved combo (accounts of one target share it)
    step: int = field(default=0, compare=False)
    #: the request options its step sets (`{ target = "p/m", temperature = 0.2 }`); a call's own win
    options: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # computed once: the loop looks these up for every filter, state change and log row
        object.__setattr__(self, "key", f"{self.provider}#{self.account}/{self.model}")
        object.__setattr__(self, "account_key", f"{self.provider}#{self.account}")

    #: `provider#account/model`, the name used in logs, state and results
    key: str = field(init=False, repr=False, compare=False)
    #: `provider#account`, the key of account-wide state (quota cooldowns, locks)
    account_key: str = field(init=False, repr=False, compare=False)

    @property
    def target(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def path_text(self) -> str:
        return " > ".join((*self.path, self.key))

    def __str__(self) -> str:
        return self.key


@dataclass
class Attempt:
    """One try of one candidate (or a skip), as the attempt log shows it."""

    candidate: str
    path: str
    action: Action
    started_at: float
    kind: ErrorKind | None = None
    status: int | None = None
    message: str = ""
    latency_s: float | None = None
    ttft_s: float | None = None
    hold: str | None = None
    hold_until: float | None = None
    usage: Usage | None = None
    cost_usd: Decimal | None = None
    cost_known: bool = True
    request_id: str | None = None
    warning: str | None = None
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "path": self.path,
            "action": self.action.value,
            "started_at": self.started_at,
            "kind": self.kind.value if self.kind else None,
            "status": self.status,
            "message": self.message,
            "latency_s": self.latency_s,
            "ttft_s": self.ttft_s,
            "hold": self.hold,
            "hold_until": self.hold_until,
            "usage": self.usage.as_dict() if self.usage else None,
            "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
            "request_id": self.request_id,
            "warning": self.warning,
        }


@dataclass
class DecisionRow:
    """One candidate in a decision: where it stands and why."""

    candidate: Candidate
    position: int | None  # order of trying; None when filtered out
    reason: str
    skipped: bool = False
    hold_until: float | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    """What the router will do (or did) for one call: strategy, seed, the ordered candidates."""

    combo: str
    strategy: str
    account_strategy: str
    seed: int
    #: the candidates in the order they are (or were) tried
    order: list[Candidate]
    #: the candidates left out, each with why (and until when)
    skipped: list[DecisionRow] = field(default_factory=list)
    config_hash: str = ""
    explored: bool = False
    notes: list[str] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    #: what the strategy based the order on, per candidate key (explain() shows it)
    inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the reason of a position in `order` other than "first" / "next" (the emergency tier's)
    reasons: dict[int, str] = field(default_factory=dict)
    #: the exclusions `auto` proposes, {candidate key: seconds}; the loop records them
    exclusions: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def rows(self) -> list[DecisionRow]:
        """Every candidate with where it stands and why: the order, then the skipped (laid out when read)."""
        reasons, inputs = self.reasons, self.inputs
        ordered = [DecisionRow(c, i, reasons.get(i) or ("first" if i == 0 else "next"), inputs=inputs.get(c.key) or {})
                   for i, c in enumerate(self.order)]
        return ordered + self.skipped

    def table(self) -> str:
        """The whole decision as plain text: the order, the skips and why, every input, every policy constant."""
        return decision_text(self, full=True)

    def __str__(self) -> str:
        """The decision as a screen shows it: the order and why, the inputs cut short, no policy dump."""
        return decision_text(self)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return decision_html(self)


@dataclass(frozen=True)
class CacheInfo:
    """Where a cached answer came from: who served it, when, and what it cost then (it costs $0 now)."""

    served_by: str
    served_at: float
    cost_usd: Decimal | None
    usage: Usage

    def footer(self) -> str:
        """`cached · served by X on 2026-11-30 · $0 now ($0.0012 then)`."""
        day = datetime.datetime.fromtimestamp(self.served_at).date().isoformat()
        then = "unknown" if self.cost_usd is None else "$" + (f"{self.cost_usd:.6f}".rstrip("0").rstrip(".") or "0")
        return f"cached · served by {self.served_by} on {day} · $0 now ({then} then)"


@dataclass
class RouteResult:
    """The answer of one routed call and the honest account of how it was obtained."""

    text: str
    served_by: str
    model: str
    combo: str
    attempts: list[Attempt]
    usage: Usage
    cost_usd: Decimal | None
    latency_s: float
    ttft_s: float | None
    partial: bool = False
    error: str | None = None
    decision: Decision | None = None
    finish_reason: str | None = None
    cost_unknown_attempts: int = 0
    #: False when the serving provider reported no token usage (the token count is then not the truth)
    usage_known: bool = True
    #: the validated answer of a call with `schema=` (a dict, or an instance of the pydantic model given)
    parsed: Any = None
    #: set when the answer came from the response cache (`complete(..., cache=True)`, `map`)
    cached: CacheInfo | None = None
    #: how the shared state stood when the call ended, when it was not answering ("shared state down:
    #: paced here alone"); None while it answers
    store: str | None = None

    @property
    def cost_text(self) -> str:
        """The call's cost in dollars, `unknown` when no price is known, `+ unknown` when part of it is not."""
        text = dollars(self.cost_usd)
        return text + " + unknown" if self.cost_usd is not None and self.cost_unknown_attempts else text

    def footer(self) -> str:
        """One line: who served, how many attempts, tokens, cost, time."""
        if self.cached is not None:
            return self.cached.footer()
        return footer(self)

    def attempt_table(self) -> str:
        """Every attempt as a plain-text table."""
        return attempt_table(self.attempts).text()

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"RouteResult(served_by={self.served_by!r}, text={self.text[:60]!r}, attempts={len(self.attempts)}, cost_usd={self.cost_usd})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # IPython's Out[] for `%llm COMBO PROMPT` (its answer is shown already): one short line, not the text again
        text = f"<RouteResult of {self.combo}: {self.footer()}>"
        p.text(text if len(text) <= RESULT_PRETTY_WIDTH else text[:RESULT_PRETTY_WIDTH - 2] + "…>")


#: the widest Out[] line of a RouteResult (IPython prefixes `Out[n]: `; a terminal is 80 columns)
RESULT_PRETTY_WIDTH = 70


# ---- stream events -------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptStarted:
    """A candidate is being tried."""

    candidate: str
    path: str
    number: int


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, as it arrives."""

    text: str
    candidate: str


@dataclass(frozen=True)
class AttemptFinished:
    """An attempt ended (served, failed or skipped)."""

    attempt: Attempt


@dataclass(frozen=True)
class Done:
    """The call ended; `result` is the RouteResult, `error` the RouteError if it failed."""

    result: RouteResult | None
    error: BaseException | None = None


RouteEvent = Union[AttemptStarted, TextDelta, AttemptFinished, Done]

"""The values the router hands back (error kinds, candidates, attempts, decisions, results and stream
events) and how one call's values look: the footer, the attempt table and the decision table.

Every table is a `report.Table`, so it shows as plain text in a terminal and as HTML or Markdown in a
notebook from the same rows; the values' render methods (`RouteResult.footer()`, `attempt_table()`,
`Decision.table()`, `str(decision)`, its HTML) and the notebook's displays call the functions at the end
of this module. The tables of the pool's health and of the call log are views.py's.
"""

from __future__ import annotations

import datetime
import enum
import functools
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, List, Mapping, Protocol, Sequence, Union

from .._core import ErrorKind, Usage
from .._core.content import ToolCall
from .._core.text import dollars, duration, ms, span
from ..report import Table, html_text
from .media import Sent


class Action(str, enum.Enum):
    """What the loop did with one candidate."""

    SERVED = "served"
    ADVANCE = "advance"
    RETRY = "retry"
    STOP = "stop"
    SKIPPED = "skipped"
    CACHED = "cached"
    #: a row of a batch job: sent through a provider's batch API (the message names the job and the line's status)
    BATCHED = "batched"

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
        return PATH_STEP.join((*self.path, self.key))

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
    #: the usage is nbrouter's estimate (a stream cut after text, with no usage from the provider): the
    #: provider billed it, so it is charged, but its numbers are not the provider's
    usage_estimated: bool = False

    def __repr__(self) -> str:
        # one readable line, not the fields with epoch floats and Decimals (as_dict() has every field)
        return f"<Attempt {attempt_line(self)}>"

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
            "usage_estimated": self.usage_estimated,
        }


class Attempts(List[Attempt]):
    """A call's attempts: a list that shows itself as the attempt table (text fitted to the output's
    width; HTML in a notebook)."""

    def __repr__(self) -> str:
        return attempt_text(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text("[...]" if cycle else repr(self))

    def _repr_html_(self) -> str:
        return attempt_table(self).html()


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
    #: part of the usage and cost is nbrouter's estimate (an attempt cut after text, with no usage reported)
    cost_estimated: bool = False
    #: the tools the model asked to call (`.id`, `.name`, `.arguments`); answer each with `tool_result(call, text)`
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: what the call sent besides text: images (how many, their bytes) and tools (how many)
    sent: Sent = field(default_factory=Sent)
    #: `Router.run_tools`: the turns of the tool loop after the prompt (the assistant's calls and the results)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    #: how the shared state stood when the call ended, when it was not answering ("shared state down:
    #: paced here alone"); None while it answers
    store: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, Attempts):
            self.attempts = Attempts(self.attempts)

    @property
    def sent_text(self) -> str:
        """`1 image (34 KB), 2 tools`: what the call sent besides text (empty for text only)."""
        return self.sent.text()

    def as_message(self) -> dict[str, Any]:
        """The answer as the assistant turn of the next request's `messages` (with its tool calls, if any)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [c.as_dict() for c in self.tool_calls]
        return message

    @property
    def cost_text(self) -> str:
        """The call's cost in dollars, `unknown` when no price is known, `+ unknown` when part of it is not,
        `~$0.0012 (estimated)` when part of it is an estimate."""
        text = dollars(self.cost_usd)
        if self.cost_usd is not None and self.cost_estimated:
            text = f"~{text} (estimated)"
        return text + " + unknown" if self.cost_usd is not None and self.cost_unknown_attempts else text

    def footer(self) -> str:
        """One line: who served, how many attempts, tokens, cost, time."""
        if self.cached is not None:
            return self.cached.footer()
        return footer(self)

    def attempt_table(self, width: int | None = None) -> str:
        """Every attempt as a plain-text table fitted to `width` columns (the output's width by default)."""
        return attempt_text(self.attempts, width)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"RouteResult(served_by={self.served_by!r}, text={self.text[:60]!r}, attempts={len(self.attempts)}, cost_usd={self.cost_usd})"

    def _repr_pretty_(self, p: _Printer, cycle: bool) -> None:
        # IPython's Out[] for `%llm COMBO PROMPT` (its answer is shown already): one short line, not the text again
        text = f"<RouteResult of {self.combo}: {self.footer()}>"
        p.text(text if len(text) <= RESULT_PRETTY_WIDTH else text[:RESULT_PRETTY_WIDTH - 2] + "…>")


class _Printer(Protocol):
    """What `_repr_pretty_` uses of IPython's pretty printer (the router never imports IPython)."""

    def text(self, obj: str) -> None: ...


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
class ToolCalled:
    """The model asked to call a tool (sent when the attempt that asked has ended, with every call it made)."""

    call: ToolCall
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


RouteEvent = Union[AttemptStarted, TextDelta, ToolCalled, AttemptFinished, Done]


# ---- one call: the footer and the attempt table -------------------------------------------


#: the width plain text is fitted to where no terminal says its own (a kernel's text/plain, a pipe)
TEXT_WIDTH = 120


def output_width() -> int:
    """The columns plain text is fitted to: the terminal's (or COLUMNS when set), else TEXT_WIDTH."""
    return shutil.get_terminal_size((TEXT_WIDTH, 24)).columns


def footer(result: RouteResult) -> str:
    """One line: who served, how many attempts, what was sent besides text (images, tools), tokens, cost, time."""
    tries = sum(1 for a in result.attempts if a.action.value != "skipped")
    parts = [
        f"served by {result.served_by}",
        f"{tries} attempt{'s' if tries != 1 else ''}",
        *([result.sent_text] if result.sent_text else []),
        _tokens_text(result),
        result.cost_text,
        duration(result.latency_s),
    ]
    if result.partial:
        parts.append("PARTIAL")
    if result.store:
        parts.append(result.store)
    return " · ".join(parts)


def _tokens_text(result: RouteResult) -> str:
    # a partial answer whose provider reported no usage before it stopped used tokens nobody counted: not 0
    if result.usage_known and not (result.partial and result.usage.total_tokens == 0):
        return f"{result.usage.total_tokens} tokens"
    if result.cost_estimated:
        return f"~{result.usage.total_tokens} tokens (estimated)"
    return "tokens unknown"


ATTEMPT_HEADERS = ["#", "candidate", "action", "kind", "status", "latency", "tokens", "cost", "note"]
#: a note longer than this is cut in the attempt table (HTML shows the rest on demand; the Attempt keeps it all)
NOTE_WIDTH = 120
#: what separates the steps of a candidate's path (`everyday > fast > openai#default/gpt-4o-mini`)
PATH_STEP = " > "


def tried_text(attempts: Sequence[Attempt]) -> str:
    """`2 tried, 1 skipped`: what was sent and what was not, in words."""
    skipped = sum(1 for a in attempts if a.action.value == "skipped")
    tried = len(attempts) - skipped
    if not tried:
        return f"nothing sent, {skipped} skipped" if skipped else "nothing to try"
    return f"{tried} tried" + (f", {skipped} skipped" if skipped else "")


def combo_path(attempts: Sequence[Attempt]) -> list[str]:
    """The combo steps every attempt's path starts with (`["everyday"]`), shown once above the rows."""
    return shared_steps([a.path for a in attempts])


def shared_steps(path_texts: Sequence[str]) -> list[str]:
    """The combo steps that every `combo > step > candidate` path starts with."""
    paths = [p.split(PATH_STEP)[:-1] for p in path_texts]
    if not paths:
        return []
    common = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(common), len(path)) and common[n] == path[n]:
            n += 1
        common = common[:n]
    return common


def attempt_rows(attempts: Sequence[Attempt], now: float | None = None) -> list[list[str]]:
    """The cells of the attempt table, one row per attempt (skips included); the combo path that every
    row shares is left out (attempt_table names it once)."""
    now = time.time() if now is None else now
    shared = len(combo_path(attempts))
    rows = []
    for i, a in enumerate(attempts, 1):
        note = a.message
        if a.hold:
            left = f" {span(max(0.0, a.hold_until - now))}" if a.hold_until else ""
            note = f"[{a.hold}{left}] {note}".strip()
        if a.warning:
            note = f"{note} (warning: {a.warning})".strip()
        tokens = f"{a.usage.input_tokens}+{a.usage.output_tokens}" if a.usage else ""
        cost = "" if a.usage is None and a.cost_usd is None else dollars(a.cost_usd)
        rows.append([str(i), PATH_STEP.join(a.path.split(PATH_STEP)[shared:]), a.action.value, a.kind.value if a.kind else "",
                     "" if a.status is None else str(a.status), ms(a.latency_s), tokens, cost, note])
    return rows


def _outcome(action: str, kind: str, status: str) -> str:
    """`served`, `advance (rate_limit 429)`."""
    why = " ".join(x for x in (kind, status) if x)
    return f"{action} ({why})" if why else action


#: the columns a narrow (terminal) attempt table keeps: candidate, outcome, latency, note
COMPACT_ATTEMPT_HEADERS = ["candidate", "outcome", "latency", "note"]


def attempt_table(attempts: Sequence[Attempt], now: float | None = None, *, compact: bool = False) -> Table:
    """Every attempt of one call: candidate, what the loop did, the error kind, latency, tokens, cost, and
    a note cut at NOTE_WIDTH (whole in the HTML, on demand).

    Args:
        attempts: the call's attempts, skips included.
        now: the wall clock, for the time left on a hold.
        compact: four columns (candidate, outcome, latency, note) for a terminal.
    """
    path = combo_path(attempts)
    rows = attempt_rows(attempts, now)
    headers = list(ATTEMPT_HEADERS)
    if compact:
        headers = list(COMPACT_ATTEMPT_HEADERS)
        rows = [[r[1], _outcome(r[2], r[3], r[4]), r[5], r[8]] for r in rows]
    candidate = headers.index("candidate")
    if path:
        headers[candidate] = f"candidate (of {PATH_STEP.join(path)})"
    return Table(headers, rows, empty="(no attempts)", cut=NOTE_WIDTH)


# ---- a decision ---------------------------------------------------------------------------

def attempt_text(attempts: Sequence[Attempt], width: int | None = None, now: float | None = None) -> str:
    """The attempt table as plain text fitted to `width` (the output's, by default): every column when
    they fit, the four of the compact table when they do not."""
    width = output_width() if width is None else width
    full = attempt_table(attempts, now).text(width)
    if max(map(len, full.splitlines()), default=0) <= width:
        return full
    return attempt_table(attempts, now, compact=True).text(width)


def attempt_line(a: Attempt, now: float | None = None, *, cut: int | None = None) -> str:
    """One attempt in a line: `sim#default/model-a: advance (rate_limit 429) · 120 ms · 12+30 tokens · $0.000123`,
    and its note (cut at `cut` characters when given)."""
    row = attempt_rows([a], now)[0]
    note = row[8] if cut is None or len(row[8]) <= cut else row[8][: max(1, cut - 1)] + "…"
    parts = [f"{a.candidate}: {_outcome(row[2], row[3], row[4])}", row[5], f"{row[6]} tokens" if row[6] else "", row[7], note]
    return " · ".join(p for p in parts if p)


DECISION_HEADERS = ["order", "candidate", "", "why", "inputs"]


#: the inputs of a decision row are cut here in text (the HTML shows them all on demand)
INPUTS_WIDTH = 60
_POINTS = "_pts"


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def inputs_text(inputs: Mapping[str, Any], full: bool = False) -> str:
    """What went into a candidate's place, most telling first: an `auto` score and the factors that gave it
    the most points (`score 0.887: health 0.22, quota 0.17, ...`), then everything else; `full`: every
    input as `name=value`, as the scoring wrote them."""
    if full:
        return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in inputs.items())
    points = sorted(((k[: -len(_POINTS)], v) for k, v in inputs.items() if k.endswith(_POINTS) and isinstance(v, (int, float))),
                    key=lambda kv: -kv[1])
    shown = {"score", *(k + _POINTS for k, _ in points)}
    head = f"score {_value(inputs['score'])}: " if "score" in inputs else ""
    parts = [f"{k} {_value(v)}" for k, v in points]
    parts += [f"{k}={_value(v)}" for k, v in inputs.items() if k not in shown]
    return head + ", ".join(parts)


def decision_table(decision: Decision, full: bool = False) -> Table:
    """The candidates in the order they are tried (skipped ones last, with why), under a line naming the
    combo, strategy, seed and config; `full`: every input of every row, uncut."""
    head = (
        f"combo {decision.combo!r} · strategy {decision.strategy} · accounts {decision.account_strategy} · "
        f"seed {decision.seed}" + (" · explored" if decision.explored else "") + f" · config {decision.config_hash}"
    )
    ranked = sorted(decision.rows, key=lambda r: (r.position is None, r.position or 0))
    shared = shared_steps([r.candidate.path_text for r in ranked])
    headers = list(DECISION_HEADERS)
    if shared:
        headers[1] = f"candidate (of {PATH_STEP.join(shared)})"
    rows = [["-" if r.position is None else str(r.position + 1), PATH_STEP.join(r.candidate.path_text.split(PATH_STEP)[len(shared):]),
             "skipped" if r.skipped else "try", r.reason, inputs_text(r.inputs, full)] for r in ranked]
    return Table(headers, rows, title=head, notes=decision.notes, wrap=[3, 4], cut=None if full else INPUTS_WIDTH)


def decision_text(decision: Decision, width: int | None = None, full: bool = False) -> str:
    """The decision table as plain text, and one line saying where the policy constants it used are (all
    of them are a screenful: `decision.constants` holds them, the HTML shows them on demand); `full`:
    every input uncut, and every constant."""
    text = decision_table(decision, full).text(width)
    if decision.constants:
        text += "\n" + (constants_text(decision.constants) if full else
                        f"policy: {len(decision.constants)} constants, in decision.constants")
    return text


def decision_html(decision: Decision) -> str:
    """The decision table as HTML, with the policy constants folded away under it."""
    html = decision_table(decision).html()
    if decision.constants:
        html += (f"<details><summary>policy: {len(decision.constants)} constants</summary>"
                 f"<div style='white-space:pre-wrap'>{html_text(constants_text(decision.constants))}</div></details>")
    return html


def constants_text(constants: Mapping[str, Any], width: int = 110) -> str:
    """The policy constants as `name=value` pairs, wrapped."""
    pairs = []
    for key, value in constants.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items()) + "}"
        elif isinstance(value, float):
            value = f"{value:g}"
        pairs.append(f"{key}={value}")
    return textwrap.fill("policy: " + "; ".join(pairs), width=width, subsequent_indent="  ")

"""How the router's values look: the footer and the attempt, decision, status and log tables.

Every table is a `report.Table`, so it shows as plain text in a terminal and as HTML or Markdown in a
notebook from the same rows. The render methods of types.py (`RouteResult.footer()`,
`RouteResult.attempt_table()`, `Decision.table()`) and of status.py's `Status` delegate here, and the
live status board builds its rows from the same functions. This module reads those values through
their attributes only (the small Protocols below), so types.py can import it without a cycle.
"""

from __future__ import annotations

import textwrap
import time
from decimal import Decimal
from typing import Any, Mapping, Protocol, Sequence

from .._core.text import dollars, duration, ms, span
from ..report import TONE_MARKS, Table, Tables, html_text

# ---- what the views read (read-only: a value's own attribute may be narrower) --------------


class _Valued(Protocol):
    @property
    def value(self) -> str: ...



class _UsageLike(Protocol):
    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def total_tokens(self) -> int: ...



class AttemptLike(Protocol):
    """The fields of an Attempt that its row shows."""

    @property
    def candidate(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def action(self) -> _Valued: ...

    @property
    def kind(self) -> _Valued | None: ...

    @property
    def status(self) -> int | None: ...

    @property
    def message(self) -> str: ...

    @property
    def latency_s(self) -> float | None: ...

    @property
    def hold(self) -> str | None: ...

    @property
    def hold_until(self) -> float | None: ...

    @property
    def usage(self) -> _UsageLike | None: ...

    @property
    def cost_usd(self) -> Any: ...

    @property
    def warning(self) -> str | None: ...



class ResultLike(Protocol):
    """The fields of a RouteResult that its footer shows."""

    @property
    def served_by(self) -> str: ...

    @property
    def attempts(self) -> Sequence[AttemptLike]: ...

    @property
    def usage(self) -> _UsageLike: ...

    @property
    def usage_known(self) -> bool: ...

    @property
    def latency_s(self) -> float: ...

    @property
    def partial(self) -> bool: ...

    @property
    def store(self) -> str | None: ...

    @property
    def cost_text(self) -> str: ...


class _CandidateLike(Protocol):
    @property
    def path_text(self) -> str: ...


class DecisionRowLike(Protocol):
    """The fields of a DecisionRow that its row shows."""

    @property
    def candidate(self) -> _CandidateLike: ...

    @property
    def position(self) -> int | None: ...

    @property
    def reason(self) -> str: ...

    @property
    def skipped(self) -> bool: ...

    @property
    def inputs(self) -> Mapping[str, Any]: ...



class DecisionLike(Protocol):
    """The fields of a Decision that its table shows."""

    @property
    def combo(self) -> str: ...

    @property
    def strategy(self) -> str: ...

    @property
    def account_strategy(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def rows(self) -> Sequence[DecisionRowLike]: ...

    @property
    def config_hash(self) -> str: ...

    @property
    def explored(self) -> bool: ...

    @property
    def notes(self) -> Sequence[str]: ...

    @property
    def constants(self) -> Mapping[str, Any]: ...



class StatusLike(Protocol):
    """The rows of a Status (dicts, as `Router.status()` builds them)."""

    @property
    def candidates(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def accounts(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def warning(self) -> str | None: ...



# ---- one call: the footer and the attempt table -------------------------------------------


def footer(result: ResultLike) -> str:
    """One line: who served, how many attempts, tokens, cost, time (and the shared store's state when it is
    not answering)."""
    tries = sum(1 for a in result.attempts if a.action.value != "skipped")
    parts = [
        f"served by {result.served_by}",
        f"{tries} attempt{'s' if tries != 1 else ''}",
        f"{result.usage.total_tokens} tokens" if result.usage_known else "tokens unknown",
        result.cost_text,
        duration(result.latency_s),
    ]
    if result.partial:
        parts.append("PARTIAL")
    if result.store:
        parts.append(result.store)
    return " · ".join(parts)


ATTEMPT_HEADERS = ["#", "candidate", "action", "kind", "status", "latency", "tokens", "cost", "note"]
#: a note longer than this is cut in the attempt table (HTML shows the rest on demand; the Attempt keeps it all)
NOTE_WIDTH = 120
_STEP = " > "


def tried_text(attempts: Sequence[AttemptLike]) -> str:
    """`2 tried, 1 skipped`: what was sent and what was not, in words."""
    skipped = sum(1 for a in attempts if a.action.value == "skipped")
    tried = len(attempts) - skipped
    if not tried:
        return f"nothing sent, {skipped} skipped" if skipped else "nothing to try"
    return f"{tried} tried" + (f", {skipped} skipped" if skipped else "")


def combo_path(attempts: Sequence[AttemptLike]) -> list[str]:
    """The combo steps every attempt's path starts with (`["everyday"]`), shown once above the rows."""
    return shared_steps([a.path for a in attempts])


def shared_steps(path_texts: Sequence[str]) -> list[str]:
    """The combo steps that every `combo > step > candidate` path starts with."""
    paths = [p.split(_STEP)[:-1] for p in path_texts]
    if not paths:
        return []
    common = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(common), len(path)) and common[n] == path[n]:
            n += 1
        common = common[:n]
    return common


def attempt_rows(attempts: Sequence[AttemptLike], now: float | None = None) -> list[list[str]]:
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
        rows.append([str(i), _STEP.join(a.path.split(_STEP)[shared:]), a.action.value, a.kind.value if a.kind else "",
                     "" if a.status is None else str(a.status), ms(a.latency_s), tokens, cost, note])
    return rows


def _outcome(action: str, kind: str, status: str) -> str:
    """`served`, `advance (rate_limit 429)`."""
    why = " ".join(x for x in (kind, status) if x)
    return f"{action} ({why})" if why else action


#: the columns a narrow (terminal) attempt table keeps: candidate, outcome, latency, note
COMPACT_ATTEMPT_HEADERS = ["candidate", "outcome", "latency", "note"]


def attempt_table(attempts: Sequence[AttemptLike], now: float | None = None, *, compact: bool = False) -> Table:
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
        headers[candidate] = f"candidate (of {_STEP.join(path)})"
    return Table(headers, rows, empty="(no attempts)", cut=NOTE_WIDTH)


# ---- a decision ---------------------------------------------------------------------------

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


def decision_table(decision: DecisionLike, full: bool = False) -> Table:
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
        headers[1] = f"candidate (of {_STEP.join(shared)})"
    rows = [["-" if r.position is None else str(r.position + 1), _STEP.join(r.candidate.path_text.split(_STEP)[len(shared):]),
             "skipped" if r.skipped else "try", r.reason, inputs_text(r.inputs, full)] for r in ranked]
    return Table(headers, rows, title=head, notes=decision.notes, wrap=[3, 4], cut=None if full else INPUTS_WIDTH)


def decision_text(decision: DecisionLike, width: int | None = None, full: bool = False) -> str:
    """The decision table as plain text, and one line saying where the policy constants it used are (all
    of them are a screenful: `decision.constants` holds them, the HTML shows them on demand); `full`:
    every input uncut, and every constant."""
    text = decision_table(decision, full).text(width)
    if decision.constants:
        text += "\n" + (constants_text(decision.constants) if full else
                        f"policy: {len(decision.constants)} constants, in decision.constants")
    return text


def decision_html(decision: DecisionLike) -> str:
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


# ---- the pool's health: Status and the live board -----------------------------------------

#: a candidate whose recent error rate is at least this is shown as "flaky"
FLAKY_ERROR_RATE = 0.25
#: an account with less than this share of its quota left is shown as "low quota"
LOW_HEADROOM = 0.1

CANDIDATE_COLUMNS = ["candidate", "health", "breaker", "cooldown / lock", "p50", "p95", "requests", "errors", "cost",
                     "last error"]
ACCOUNT_COLUMNS = ["account", "health", "key", "tier", "cooldown / lock", "used (min/day)", "quota", "remaining", "headroom"]


def candidate_health(row: Mapping[str, Any]) -> tuple[str, str]:
    """(words, tone) for one candidate row of Router.status(): the words say it, a colour may repeat it.

    The tone is one of `ok`, `warn`, `bad`, `idle`."""
    hold = row.get("hold")
    if hold == "disabled":
        return "disabled", "bad"
    if hold == "lock":
        return "locked", "bad"
    if row.get("breaker") == "open":
        return "breaker open", "bad"
    if hold:
        return "cooling down", "warn"
    if row.get("breaker") == "half_open":
        return "probing (half open)", "warn"
    if row.get("errors") and float(row.get("error_rate") or 0.0) >= FLAKY_ERROR_RATE:
        return "flaky", "warn"
    if not row.get("requests"):
        return "no calls yet", "idle"
    return "healthy", "ok"


def account_health(row: Mapping[str, Any]) -> tuple[str, str]:
    """(words, tone) for one account row of Router.status()."""
    hold = row.get("hold")
    if hold == "disabled":
        return "disabled (key refused)", "bad"
    if hold == "lock":
        return "locked", "bad"
    if hold:
        return "cooling down", "warn"
    if row.get("key_set") is False:
        return "key missing", "bad"
    headroom = row.get("headroom")
    if headroom is not None and headroom < LOW_HEADROOM:
        return "low quota", "warn"
    return "healthy", "ok"


def countdown(seconds: float | None) -> str:
    """`0:42`, `12:05`, `3:02:10` (a hold's time left)."""
    if seconds is None:
        return ""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _hold_text(row: Mapping[str, Any]) -> str:
    if not row.get("hold"):
        return ""
    left = row.get("hold_left_s")
    text = f"{row['hold']}: {row.get('hold_reason') or ''}".strip()
    return f"{text} · {countdown(left)} left" if left is not None else f"{text} · until the key changes"


def _count(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1_000_000:.1f}M" if value >= 1_000_000 else f"{value / 1000:.0f}k" if value >= 10_000 else str(value)


def _quota_text(quota: Mapping[str, Any]) -> str:
    short = {"requests_per_minute": "req/min", "requests_per_day": "req/day", "tokens_per_minute": "tok/min", "tokens_per_day": "tok/day"}
    return " · ".join(f"{_count(v)} {short.get(k, k)}" for k, v in quota.items()) or "not set"


def _health_text(words: str, tone: str) -> str:
    """`✓ healthy`: a mark that says the tone in a character, for those who do not see the colour."""
    return f"{TONE_MARKS[tone]} {words}"


def cost_so_far(row: Mapping[str, Any]) -> str:
    """A candidate's cost so far: `unknown` when its calls had no known price (never a silent `$0.000000`).

    A row may say how many of its calls had tokens at an unknown price (`cost_unknown`); without it, the
    known sum is all there is to show."""
    unknown = int(row.get("cost_unknown") or 0)
    known = float(row.get("cost_usd") or 0.0)
    if unknown:
        return "unknown" if not known else f"${known:.6f} + unknown"
    return f"${known:.6f}"


def candidate_cells(row: Mapping[str, Any]) -> list[str]:
    """One candidate row of Router.status() as the cells of CANDIDATE_COLUMNS (health first)."""
    words, tone = candidate_health(row)
    return [row["candidate"], _health_text(words, tone), row.get("breaker") or "", _hold_text(row), ms(row.get("p50_s")),
            ms(row.get("p95_s")), str(row.get("requests", 0)), f"{float(row.get('error_rate') or 0.0):.0%}",
            cost_so_far(row), row.get("last_error") or ""]


def account_cells(row: Mapping[str, Any]) -> list[str]:
    """One account row of Router.status() as the cells of ACCOUNT_COLUMNS (health first)."""
    words, tone = account_health(row)
    key = {True: "set", False: "MISSING", None: "-"}[row.get("key_set")]
    used = (f"{row.get('requests_minute', 0)}/{row.get('requests_day', 0)} req · "
            f"{_count(row.get('tokens_minute', 0))}/{_count(row.get('tokens_day', 0))} tok")
    remaining = ""
    if row.get("remaining_requests") is not None or row.get("remaining_tokens") is not None:
        remaining = f"{_count(row.get('remaining_requests'))} req · {_count(row.get('remaining_tokens'))} tok"
        reset = row.get("reset_requests_in_s") or row.get("reset_tokens_in_s")
        if reset is not None:
            remaining += f" (resets in {countdown(reset)})"
    headroom = "" if row.get("headroom") is None else f"{row['headroom']:.0%}"
    return [row["account"], _health_text(words, tone), key, row.get("tier") or "", _hold_text(row), used,
            _quota_text(row.get("quota") or {}), remaining, headroom]


def candidate_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The candidates of Router.status(), each row tinted with its health."""
    return Table(CANDIDATE_COLUMNS, [candidate_cells(r) for r in rows], tones=[candidate_health(r)[1] for r in rows],
                 title="candidates", cut=NOTE_WIDTH)


def account_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The accounts of Router.status(), each row tinted with its health."""
    return Table(ACCOUNT_COLUMNS, [account_cells(r) for r in rows], tones=[account_health(r)[1] for r in rows],
                 title="accounts", wrap=[])


def status_tables(status: StatusLike) -> Tables:
    """The candidates table and the accounts table of a Status, and its warning if any."""
    return Tables([candidate_table(status.candidates), account_table(status.accounts)],
                  notes=[f"warning: {status.warning}"] if status.warning else [])


# ---- the call log -------------------------------------------------------------------------

LOG_HEADERS = ["time", "combo", "candidate", "action", "kind", "status", "latency", "tokens", "cost", "message"]
#: a log message longer than this is cut in the table
LOG_MESSAGE_WIDTH = 100


def _log_candidate(row: Mapping[str, Any]) -> str:
    """The candidate and any nested combos it came through; the combo itself has its own column."""
    path = (row.get("path") or row.get("candidate") or "").split(_STEP)
    if row.get("combo") and len(path) > 1 and path[0] == row["combo"]:
        path = path[1:]
    return _STEP.join(path)


def log_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> Table:
    """Rows of `Router.log()` (newest last) as a table."""
    cells = []
    for r in rows:
        tokens = "" if r.get("input_tokens") is None else f"{r['input_tokens']}+{r.get('output_tokens') or 0}"
        cost = r.get("cost_usd")
        cost_text = "" if tokens == "" and cost is None else dollars(None if cost is None else Decimal(str(cost)))
        cells.append([
            time.strftime("%H:%M:%S", time.localtime(r["ts"])) if r.get("ts") else "", r.get("combo") or "",
            _log_candidate(r), r.get("action") or "", r.get("kind") or "",
            "" if r.get("status") is None else str(r["status"]), ms(r.get("latency_s")), tokens, cost_text,
            (r.get("message") or "")[:LOG_MESSAGE_WIDTH],
        ])
    return Table(LOG_HEADERS, cells, title=title)

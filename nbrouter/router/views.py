"""How the pool's health and the call log look: the rows and tables of `Router.status()`, shared with the
live status board, and the table of `Router.log()`.

Every table is a `report.Table`, so it shows as plain text in a terminal and as HTML or Markdown in a
notebook from the same rows. One call's values (the footer, the attempt and decision tables) render with
their types, in types.py.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any, Mapping, Sequence

from .._core.text import dollars, ms
from ..report import TONE_MARKS, Table
from .types import NOTE_WIDTH, PATH_STEP

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


def health_text(words: str, tone: str) -> str:
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
    return [row["candidate"], health_text(words, tone), row.get("breaker") or "", _hold_text(row), ms(row.get("p50_s")),
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
    return [row["account"], health_text(words, tone), key, row.get("tier") or "", _hold_text(row), used,
            _quota_text(row.get("quota") or {}), remaining, headroom]


def candidate_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The candidates of Router.status(), each row tinted with its health."""
    return Table(CANDIDATE_COLUMNS, [candidate_cells(r) for r in rows], tones=[candidate_health(r)[1] for r in rows],
                 title="candidates", cut=NOTE_WIDTH)


def account_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The accounts of Router.status(), each row tinted with its health."""
    return Table(ACCOUNT_COLUMNS, [account_cells(r) for r in rows], tones=[account_health(r)[1] for r in rows],
                 title="accounts", wrap=[])


# ---- the call log -------------------------------------------------------------------------

LOG_HEADERS = ["time", "combo", "candidate", "action", "kind", "status", "latency", "tokens", "cost", "message"]
#: a log message longer than this is cut in the table
LOG_MESSAGE_WIDTH = 100


def _log_candidate(row: Mapping[str, Any]) -> str:
    """The candidate and any nested combos it came through; the combo itself has its own column."""
    path = (row.get("path") or row.get("candidate") or "").split(PATH_STEP)
    if row.get("combo") and len(path) > 1 and path[0] == row["combo"]:
        path = path[1:]
    return PATH_STEP.join(path)


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

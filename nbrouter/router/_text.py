"""Readable tables of attempts and decisions (plain text with tabulate, and HTML)."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .types import Attempt, Decision


def span(seconds: float | None) -> str:
    """`42 s`, `3 min`, `1.5 h`."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value * 1000:.0f} ms"


def attempt_rows(attempts: Sequence[Attempt], now: float | None = None) -> list[list[str]]:
    now = time.time() if now is None else now
    rows = []
    for i, a in enumerate(attempts, 1):
        note = a.message
        if a.hold:
            left = f" {span(max(0.0, a.hold_until - now))}" if a.hold_until else ""
            note = f"[{a.hold}{left}] {note}".strip()
        if a.warning:
            note = f"{note} (warning: {a.warning})".strip()
        tokens = f"{a.usage.input_tokens}+{a.usage.output_tokens}" if a.usage else ""
        cost = "" if a.usage is None and a.cost_usd is None else ("unknown" if a.cost_usd is None else f"${a.cost_usd:.6f}")
        rows.append(
            [
                str(i),
                a.path,
                a.action.value,
                a.kind.value if a.kind else "",
                "" if a.status is None else str(a.status),
                _ms(a.latency_s),
                tokens,
                cost,
                note[:120],
            ]
        )
    return rows


ATTEMPT_HEADERS = ["#", "candidate", "action", "kind", "status", "latency", "tokens", "cost", "note"]


def attempt_table(attempts: Sequence[Attempt]) -> str:
    from tabulate import tabulate

    if not attempts:
        return "(no attempts)"
    return tabulate(attempt_rows(attempts), headers=ATTEMPT_HEADERS, tablefmt="simple")


def attempt_html(attempts: Sequence[Attempt]) -> str:
    return html_table(ATTEMPT_HEADERS, attempt_rows(attempts))


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='nbrouter-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inputs_text(inputs: dict[str, Any]) -> str:
    parts = []
    for key, value in inputs.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def decision_rows(decision: Decision) -> list[list[str]]:
    rows = []
    ranked = sorted(decision.rows, key=lambda r: (r.position is None, r.position or 0))
    for r in ranked:
        rows.append(
            [
                "-" if r.position is None else str(r.position + 1),
                r.candidate.path_text,
                "skipped" if r.skipped else "try",
                r.reason,
                _inputs_text(r.inputs),
            ]
        )
    return rows


DECISION_HEADERS = ["order", "candidate", "", "why", "inputs"]


def decision_table(decision: Decision) -> str:
    from tabulate import tabulate

    head = (
        f"combo {decision.combo!r} · strategy {decision.strategy} · accounts {decision.account_strategy} · "
        f"seed {decision.seed}" + (" · explored" if decision.explored else "") + f" · config {decision.config_hash}"
    )
    lines = [head, tabulate(decision_rows(decision), headers=DECISION_HEADERS, tablefmt="simple")]
    lines.extend(decision.notes)
    if decision.constants:
        lines.append(constants_text(decision.constants))
    return "\n".join(lines)


def constants_text(constants: dict[str, Any], width: int = 110) -> str:
    """The policy constants as `name=value` pairs, wrapped."""
    import textwrap

    pairs = []
    for key, value in constants.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items()) + "}"
        elif isinstance(value, float):
            value = f"{value:g}"
        pairs.append(f"{key}={value}")
    return textwrap.fill("policy: " + "; ".join(pairs), width=width, subsequent_indent="  ")


def decision_html(decision: Decision) -> str:
    head = html.escape(decision_table(decision).splitlines()[0])
    notes = "".join(f"<div>{html.escape(n)}</div>" for n in decision.notes)
    return f"<div class='nbrouter-decision'><div><b>{head}</b></div>{html_table(DECISION_HEADERS, decision_rows(decision))}{notes}</div>"

"""What `Router.status()` returns: the health of every candidate and account, printable as tables."""

from __future__ import annotations

from typing import Any

from .._core.text import ms as _ms
from . import _text


class Status:
    """What `Router.status()` returns: candidate rows and account rows, printable as tables."""

    def __init__(self, candidates: list[dict[str, Any]], accounts: list[dict[str, Any]], warning: str | None) -> None:
        self.candidates = candidates
        self.accounts = accounts
        self.warning = warning

    def candidate(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.candidates if r["candidate"] == key), None)

    def account(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.accounts if r["account"] == key), None)

    def _candidate_rows(self) -> list[list[str]]:
        out = []
        for r in self.candidates:
            hold = ""
            if r["hold"]:
                hold = f"{r['hold']}: {r['hold_reason']}" + (f" ({_text.span(r['hold_left_s'])} left)" if r["hold_left_s"] is not None else "")
            out.append([r["candidate"], r["breaker"], hold, _ms(r["p50_s"]), _ms(r["p95_s"]), str(r["requests"]),
                        f"{r['error_rate']:.0%}", f"${r['cost_usd']:.6f}", r["last_error"] or ""])
        return out

    def _account_rows(self) -> list[list[str]]:
        out = []
        for r in self.accounts:
            hold = ""
            if r["hold"]:
                hold = f"{r['hold']}: {r['hold_reason']}" + (f" ({_text.span(r['hold_left_s'])} left)" if r["hold_left_s"] is not None else "")
            remaining = ""
            if r["remaining_requests"] is not None or r["remaining_tokens"] is not None:
                remaining = f"{r['remaining_requests'] if r['remaining_requests'] is not None else '?'} req / {r['remaining_tokens'] if r['remaining_tokens'] is not None else '?'} tok"
            headroom = "" if r["headroom"] is None else f"{r['headroom']:.0%}"
            key = {True: "set", False: "MISSING", None: "-"}[r["key_set"]]
            out.append([r["account"], key, r["tier"] or "", hold, f"{r['requests_minute']}/{r['requests_day']}", remaining, headroom])
        return out

    CANDIDATE_HEADERS = ["candidate", "breaker", "cooldown / lock", "p50", "p95", "requests", "errors", "cost", "last error"]
    ACCOUNT_HEADERS = ["account", "key", "tier", "cooldown / lock", "req min/day", "remaining", "headroom"]

    def __str__(self) -> str:
        from tabulate import tabulate

        parts = [tabulate(self._candidate_rows(), headers=self.CANDIDATE_HEADERS, tablefmt="simple"), "",
                 tabulate(self._account_rows(), headers=self.ACCOUNT_HEADERS, tablefmt="simple")]
        if self.warning:
            parts.append(f"warning: {self.warning}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        html = _text.html_table(self.CANDIDATE_HEADERS, self._candidate_rows()) + "<br>" + _text.html_table(self.ACCOUNT_HEADERS, self._account_rows())
        if self.warning:
            html += f"<div>warning: {self.warning}</div>"
        return html

    def __repr__(self) -> str:
        return str(self)

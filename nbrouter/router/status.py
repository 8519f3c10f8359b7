"""What `Router.status()` returns: the health of every candidate and account, printable as tables."""

from __future__ import annotations

from typing import Any

from .._core.text import ms as _ms
from . import _text
from .combos import resolve
from .model import QUOTA_FIELDS
from .decide import Decider
from .errors import ComboConfigError
from .state import StateStore
from .types import Candidate


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


def collect_status(decider: Decider, state: StateStore, now: float) -> Status:
    """The rows of `Router.status()`: every configured or remembered candidate, and every account."""
    config = decider.config
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    keys: list[Candidate] = []
    for provider in config.providers.values():
        for acc in provider.accounts:
            for model in provider.models:
                keys.append(Candidate(provider.name, acc.name, model))
    for combo in config.combos.values():
        try:
            keys.extend(resolve(config, combo))
        except ComboConfigError:
            continue
    for key in list(state.latency) + list(state.breakers) + [k for k in state.holds if "/" in k]:
        head, _, model = key.partition("/")
        prov, _, acc_name = head.partition("#")
        if prov in config.providers:
            keys.append(Candidate(prov, acc_name, model))
    for c in keys:
        if c.key in seen:
            continue
        seen.add(c.key)
        s = state.latency.get(c.key)
        b = state.breaker(c.key, now) if c.key in state.breakers else None
        h = state.hold(c.key, now)
        rows.append({
            "candidate": c.key,
            "breaker": b.state if b else "closed",
            **_hold_fields(h, now),
            "p50_s": s.percentile(0.5) if s else None,
            "p95_s": s.percentile(0.95) if s else None,
            "ewma_s": s.ewma_total if s else None,
            "requests": s.requests if s else 0,
            "errors": s.errors if s else 0,
            "error_rate": s.error_rate() if s else 0.0,
            "cost_usd": s.cost_usd if s else 0.0,
            "last_error": s.last_error if s else None,
        })
    accounts = []
    for provider in config.providers.values():
        for acc in provider.accounts:
            key = f"{provider.name}#{acc.name}"
            w = state.usage_window(key, now)
            r = state.ratelimit(key, now)
            share, _ = decider.headroom(Candidate(provider.name, acc.name, ""), now)
            accounts.append({
                "account": key,
                "key_set": (acc.api_key() is not None) if acc.api_key_env else None,
                "tier": acc.tier,
                **_hold_fields(state.hold(key, now), now),
                "requests_minute": w.minute_requests,
                "tokens_minute": w.minute_tokens,
                "requests_day": w.day_requests,
                "tokens_day": w.day_tokens,
                "quota": {k: getattr(acc.quota, k) for k in QUOTA_FIELDS if getattr(acc.quota, k) is not None},
                "remaining_requests": r.remaining_requests if r else None,
                "remaining_tokens": r.remaining_tokens if r else None,
                "reset_requests_in_s": (r.reset_requests_at - now if r and r.reset_requests_at else None),
                "reset_tokens_in_s": (r.reset_tokens_at - now if r and r.reset_tokens_at else None),
                "headroom": share,
            })
    return Status(rows, accounts, state.warning)


def _hold_fields(h: Any, now: float) -> dict[str, Any]:
    return {
        "hold": h.kind if h else None,
        "hold_reason": h.reason if h else None,
        "hold_left_s": (h.until - now if h and h.kind != "disabled" else None),
    }

"""What `Router.status()` returns: the health of every candidate and account, printable as tables."""

from __future__ import annotations

from typing import Any

from ..report import Tables
from .views import account_table, candidate_table
from .decide.combos import resolve
from .decide.decider import Decider
from .errors import ComboConfigError
from .model import QUOTA_FIELDS, Config
from .state.health import Hold
from .state.store import StateStore
from .types import Candidate


class Status:
    """What `Router.status()` returns: candidate rows and account rows, printable as tables."""

    def __init__(self, candidates: list[dict[str, Any]], accounts: list[dict[str, Any]], warning: str | None,
                 store: dict[str, Any] | None = None, budget: str | None = None) -> None:
        self.candidates = candidates
        self.accounts = accounts
        self.warning = warning
        #: a shared budget, as every process spent it (`shared budget 'team': spent $0.42 of $5.00 (stop)`), or None
        self.budget = budget
        #: the shared state: `kind` ("memory", "sqlite", "redis"), `mode` ("shared"; "local" or "wait"
        #: while it is down), `warning` (why it is not answering, or None)
        self.store: dict[str, Any] = store or {"kind": "memory", "mode": "shared", "warning": None}

    def candidate(self, key: str) -> dict[str, Any] | None:
        """The row of one candidate, or None.

        Args:
            key: `provider#account/model`.
        """
        return next((r for r in self.candidates if r["candidate"] == key), None)

    def account(self, key: str) -> dict[str, Any] | None:
        """The row of one account, or None.

        Args:
            key: `provider#account`.
        """
        return next((r for r in self.accounts if r["account"] == key), None)

    def tables(self) -> Tables:
        """The candidates and accounts tables (the same rows the live status board shows)."""
        return status_tables(self)

    def __str__(self) -> str:
        return self.tables().text()

    def _repr_html_(self) -> str:
        return self.tables().html()

    def __repr__(self) -> str:
        return str(self)


def status_tables(status: Status) -> Tables:
    """The candidates table and the accounts table of a Status, and its warning if any."""
    notes = [status.budget] if status.budget else []
    if status.warning:
        notes.append(f"warning: {status.warning}")
    return Tables([candidate_table(status.candidates), account_table(status.accounts)], notes=notes)


def collect_status(decider: Decider, state: StateStore, now: float, shared_usage: dict[str, dict[str, float]] | None = None,
                   shared_holds: dict[str, Hold] | None = None) -> Status:
    """The rows of `Router.status()`: every configured or remembered candidate, and every account (an
    account with a quota counted by every process, from `shared_usage`, when it is given), with the holds
    every process sees (`shared_holds`, read from the store; else as its mirror last read them)."""
    config = decider.config
    mirror = decider.pacer.shared.mirror_holds() if shared_holds is None else shared_holds
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
        h = _later(state.hold(c.key, now), mirror.get(c.key), now)
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
            "cost_unknown": s.cost_unknown if s else 0,
            "last_error": s.last_error if s else None,
        })
    accounts = []
    for provider in config.providers.values():
        for acc in provider.accounts:
            key = f"{provider.name}#{acc.name}"
            w = state.usage_window(key, now)
            r = state.ratelimit(key, now)
            share, _ = decider.headroom(Candidate(provider.name, acc.name, ""), now)
            counted = (shared_usage or {}).get(key)
            accounts.append({
                "account": key,
                "key_set": (acc.api_key() is not None) if acc.api_key_env else None,
                "tier": acc.tier,
                **_hold_fields(_later(state.hold(key, now), mirror.get(key), now), now),
                "requests_minute": int(counted["requests_minute"]) if counted else w.minute_requests,
                "tokens_minute": int(counted["tokens_minute"]) if counted else w.minute_tokens,
                "requests_day": int(counted["requests_day"]) if counted else w.day_requests,
                "tokens_day": int(counted["tokens_day"]) if counted else w.day_tokens,
                "sent": int(counted["sent"]) if counted else None,
                "quota": {k: getattr(acc.quota, k) for k in QUOTA_FIELDS if getattr(acc.quota, k) is not None},
                "remaining_requests": r.remaining_requests if r else None,
                "remaining_tokens": r.remaining_tokens if r else None,
                "reset_requests_in_s": (r.reset_requests_at - now if r and r.reset_requests_at else None),
                "reset_tokens_in_s": (r.reset_tokens_at - now if r and r.reset_tokens_at else None),
                "headroom": share,
            })
    shared = decider.pacer.shared
    store = {"kind": getattr(shared, "kind", "memory"), "mode": shared.mode, "warning": shared.warning}
    warning = "; ".join(w for w in (state.warning, shared.warning) if w) or None
    budget = decider.budget
    return Status(rows, accounts, warning, store, f"{budget.label}: {budget.text()}" if budget.shared is not None else None)


def reset_matches(config: Config, target: str | None) -> list[str | None]:
    """The key patterns a reset of `target` clears: itself (None: everything), or for a `provider/model`
    target that model on every account of the provider."""
    if target and "/" in target and "#" not in target:
        name, _, model = target.partition("/")
        provider = config.providers.get(name)
        return [f"{name}#{acc.name}/{model}" for acc in (provider.accounts if provider else [])]
    return [target]


def reset_holds(config: Config, state: StateStore, target: str | None) -> int:
    """Clear cooldowns, locks and breakers of keys containing `target` (all when None); a `provider/model`
    target means that model on every account of the provider. Returns how many were cleared."""
    return sum(state.reset(match) for match in reset_matches(config, target))


def _later(mine: Hold | None, shared: Hold | None, now: float) -> Hold | None:
    """This process's hold on a key or the shared store's, whichever ends later (an ended one is none)."""
    if shared is None or not shared.active(now):
        return mine
    return shared if mine is None or shared.until > mine.until else mine


def _hold_fields(h: Hold | None, now: float) -> dict[str, Any]:
    return {
        "hold": h.kind if h else None,
        "hold_reason": h.reason if h else None,
        "hold_left_s": (h.until - now if h and h.kind != "disabled" else None),
    }

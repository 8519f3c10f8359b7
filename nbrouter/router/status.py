"""What `Router.status()` returns: the health of every candidate and account, printable as tables."""

from __future__ import annotations

from typing import Any

from ..report import Tables
from .views import status_tables
from .decide.combos import resolve
from .decide.decider import Decider
from .errors import ComboConfigError
from .model import QUOTA_FIELDS, Config
from .state.store import StateStore
from .types import Candidate


class Status:
    """What `Router.status()` returns: candidate rows and account rows, printable as tables."""

    def __init__(self, candidates: list[dict[str, Any]], accounts: list[dict[str, Any]], warning: str | None) -> None:
        self.candidates = candidates
        self.accounts = accounts
        self.warning = warning

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


def _hold_fields(h: Any, now: float) -> dict[str, Any]:
    return {
        "hold": h.kind if h else None,
        "hold_reason": h.reason if h else None,
        "hold_left_s": (h.until - now if h and h.kind != "disabled" else None),
    }

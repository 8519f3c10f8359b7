"""Every number of routing.md in one place, and what each error kind does.

`Policy` holds the named constants; the config file's `[policy]` table overrides any of them and
`Router.explain()` prints them all. `ACTIONS` maps each error kind to its default action.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .types import Action, ErrorKind


@dataclass(frozen=True)
class Policy:
    """The router's constants (seconds unless the name says otherwise)."""

    # the loop
    max_attempts: int = 10
    max_depth: int = 3
    attempt_timeout_s: float = 60.0
    max_wait_s: float = 0.0
    # cooldowns and locks (routing.md section 5)
    rate_limit_cooldown_s: float = 90.0
    rate_limit_cooldown_cap_s: float = 3600.0
    quota_cooldown_s: float = 1800.0
    account_lock_s: float = 86400.0
    model_not_found_lock_s: float = 1800.0
    server_error_backoff_s: float = 0.25
    # circuit breaker
    breaker_failures: int = 5
    breaker_window_s: float = 60.0
    breaker_open_s: float = 30.0
    breaker_max_multiplier: int = 16
    # latency statistics
    latency_ewma_alpha: float = 0.3
    latency_samples: int = 100
    # token estimate (providers.md section 7)
    token_safety_margin: float = 1.2
    tokens_per_message: int = 4
    default_max_tokens_estimate: int = 1024
    # local servers: reported prompt tokens below this share of the estimate = silent truncation
    truncation_ratio: float = 0.5
    # state store: how often another process's writes are looked for
    state_refresh_s: float = 1.0
    # auto scoring (routing.md section 4)
    auto_explore_rate: float = 0.05
    auto_smart_explore_rate: float = 0.10
    auto_min_score: float = 0.2
    auto_exclude_s: float = 300.0
    auto_exclude_cap_s: float = 1800.0
    auto_incident_open_share: float = 0.5
    auto_weights: dict[str, float] = field(
        default_factory=lambda: {
            "health": 0.22,
            "quota": 0.17,
            "cost": 0.17,
            "latency": 0.13,
            "task_fit": 0.08,
            "specificity": 0.08,
            "stability": 0.05,
            "tier": 0.05,
            "tier_affinity": 0.05,
        }
    )
    cost_blend_input: float = 0.6
    cost_blend_output: float = 0.4
    # auto factor values (routing.md section 4)
    auto_health_scores: dict[str, float] = field(default_factory=lambda: {"closed": 1.0, "half_open": 0.5, "open": 0.0})
    auto_tier_scores: dict[str, float] = field(default_factory=lambda: {"free": 0.0, "standard": 0.33, "pro": 0.67, "ultra": 1.0})
    auto_unknown_tier_score: float = 0.33  # an account without a tier counts as standard
    auto_unknown_quota_score: float = 1.0  # nothing tracked: nothing known to be short
    auto_unknown_task_fit: float = 0.5  # no task guessed: every candidate fits alike
    auto_stability_spread_share: float = 0.5  # stability = share x low spread + rest x low error rate
    auto_task_scan_chars: int = 4000  # the task is guessed from the prompt's first and last 2000 characters

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def with_overrides(self, overrides: dict[str, Any]) -> Policy:
        return replace(self, **overrides)


#: the default action of each kind (routing.md section 5); `fallback_on` replaces the advancing set
ACTIONS: dict[ErrorKind, Action] = {
    ErrorKind.RATE_LIMIT: Action.ADVANCE,
    ErrorKind.QUOTA_EXCEEDED: Action.ADVANCE,
    ErrorKind.AUTH: Action.ADVANCE,
    ErrorKind.ACCOUNT_LOCKED: Action.ADVANCE,
    ErrorKind.MODEL_NOT_FOUND: Action.ADVANCE,
    ErrorKind.SERVER_ERROR: Action.ADVANCE,
    ErrorKind.OVERLOADED: Action.ADVANCE,
    ErrorKind.TIMEOUT: Action.ADVANCE,
    ErrorKind.NETWORK: Action.ADVANCE,
    ErrorKind.STREAM_INTERRUPTED: Action.ADVANCE,
    ErrorKind.EMPTY_RESPONSE: Action.ADVANCE,
    ErrorKind.CONTEXT_OVERFLOW: Action.ADVANCE,
    ErrorKind.CONTENT_FILTER: Action.STOP,
    ErrorKind.INVALID_REQUEST: Action.STOP,
    ErrorKind.CANCELLED: Action.STOP,
}

DEFAULT_FALLBACK_ON: frozenset[ErrorKind] = frozenset(k for k, a in ACTIONS.items() if a is Action.ADVANCE)

#: kinds that count toward a candidate's circuit breaker
BREAKER_KINDS: frozenset[ErrorKind] = frozenset(
    {
        ErrorKind.SERVER_ERROR,
        ErrorKind.OVERLOADED,
        ErrorKind.TIMEOUT,
        ErrorKind.NETWORK,
        ErrorKind.STREAM_INTERRUPTED,
        ErrorKind.EMPTY_RESPONSE,
    }
)

#: kinds after which the loop waits `server_error_backoff_s` before the next try
BACKOFF_KINDS: frozenset[ErrorKind] = frozenset({ErrorKind.SERVER_ERROR, ErrorKind.OVERLOADED})

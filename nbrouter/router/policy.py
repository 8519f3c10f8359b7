"""Every number of routing.md in one place, and what each error kind does.

`Policy` holds the named constants; the config file's `[policy]` table overrides any of them and
`Router.explain()` prints them all. `RULES` is the one table of what happens after a failure: per error
kind, the default action, what is remembered (a hold on the candidate or its account, for how long),
whether it counts toward the circuit breaker, whether the loop backs off first. The loop applies a row;
it has no special case of its own per kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

from .._core import ErrorKind, ProviderFailure
from .types import Action


@dataclass(frozen=True)
class Policy:
    """The router's constants (seconds unless the name says otherwise)."""

    # the loop
    max_attempts: int = 10
    max_depth: int = 3
    attempt_timeout_s: float = 60.0
    # a stream fails as a timeout when no event came for this long; an SSE line (or event) longer than
    # this many bytes fails the attempt as malformed
    stream_idle_timeout_s: float = 30.0
    sse_max_line_bytes: int = 8 * 1024 * 1024
    max_wait_s: float = 0.0
    # cooldowns and locks (routing.md section 5)
    rate_limit_cooldown_s: float = 90.0
    rate_limit_cooldown_cap_s: float = 3600.0
    quota_cooldown_s: float = 1800.0
    account_lock_s: float = 86400.0
    model_not_found_lock_s: float = 1800.0
    server_error_backoff_s: float = 0.25
    # a managed local server that failed to start is not started again for this long
    managed_start_retry_s: float = 30.0
    # zero-config (no config file): how often the key variables are looked at again (a key set during the
    # session is noticed), and how old a probe of the local servers' ports may get before the next call
    # probes again
    env_recheck_s: float = 1.0
    local_probe_refresh_s: float = 30.0
    # an account's `api_key_command` may run this long
    key_command_timeout_s: float = 30.0
    # context-relay: a history above this share of the next candidate's context window is compacted to fit;
    # up to relay_summary_messages of the oldest turns are summarised (in at most relay_summary_max_tokens)
    relay_threshold: float = 0.85
    relay_summary_messages: int = 30
    relay_summary_max_tokens: int = 512
    # same-target retries before moving on, per error kind (a combo's `retries` overrides), and their
    # jittered exponential backoff: retry_backoff_s x 2^(n-1), at most retry_backoff_cap_s, times a
    # factor drawn from [1 - retry_jitter, 1 + retry_jitter]; a Retry-After longer than that is honoured
    retries: dict[str, float] = field(default_factory=lambda: {
        "rate_limit": 0, "server_error": 0, "overloaded": 0, "timeout": 0, "network": 0, "stream_interrupted": 0,
        "empty_response": 0, "malformed_response": 0, "invalid_output": 1,
    })
    retry_backoff_s: float = 0.5
    retry_backoff_cap_s: float = 8.0
    retry_jitter: float = 0.25
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
    # an image's prompt tokens in an estimate (the providers count them by its size, after sending)
    image_tokens_estimate: int = 1600
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


#: how long a disabled account stays disabled when its key never changes (auth): shown as "until its key changes"
DISABLED_FOR_S = 10 * 365 * 86400.0


@dataclass(frozen=True)
class HoldRule:
    """What a failure puts on hold, on which key, and until when."""

    #: "candidate" (provider#account/model) or "account" (provider#account)
    scope: str
    #: the stored hold kind: "cooldown", "lock" or "disabled"
    kind: str
    #: how the attempt log names it ("cooldown", "account cooldown", "account lock", "lock")
    label: str
    #: the reason stored with the hold; `{status}` is filled in
    reason: str
    #: until when, from (the failure, the policy, now); None: the rule does not apply to this failure
    until: Callable[[ProviderFailure, Policy, float], float | None]
    #: on disk before the call returns (the holds that protect an account for long)
    durable: bool = False


@dataclass(frozen=True)
class Rule:
    """One row of the failure policy: what the loop does after an attempt failed with `kind`."""

    kind: ErrorKind
    #: the default action; a combo's `fallback_on` replaces the set of kinds that advance
    action: Action
    #: what is remembered (routing.md section 5); several rows may apply (first that applies wins)
    holds: tuple[HoldRule, ...] = ()
    #: counts toward the candidate's circuit breaker
    breaker: bool = False
    #: a refused connection to a local server opens the breaker at once
    breaker_at_once_when_local_refuses: bool = False
    #: wait `server_error_backoff_s` before the next try
    backoff: bool = False
    #: re-read the account's key: changed since the request went out -> retry the same candidate once
    retry_when_key_changed: bool = False
    #: after it the loop only moves to a candidate with a larger known context window
    needs_larger_window: bool = False
    #: the target lacks what the call needed and the answer names (images, tools, JSON schema): remembered for
    #: the session, so that the next call that needs it skips the target before sending
    marks_capability: bool = False


def spent_window_reset(failure: ProviderFailure, now: float) -> float | None:
    """Seconds until the windows that rate-limit headers report as spent (remaining 0) reset, if known."""
    limits = failure.rate_limits
    if limits is None:
        return None
    resets = [
        reset - now
        for remaining, reset in ((limits.remaining_requests, limits.reset_requests_at), (limits.remaining_tokens, limits.reset_tokens_at))
        if remaining == 0 and reset is not None and reset > now
    ]
    return max(resets) if resets else None


def _rate_limit_until(failure: ProviderFailure, policy: Policy, now: float) -> float:
    wait = failure.retry_after_s
    if wait is None:
        wait = spent_window_reset(failure, now)
    if wait is None:
        wait = policy.rate_limit_cooldown_s
    return now + min(wait, policy.rate_limit_cooldown_cap_s)


def _quota_until(failure: ProviderFailure, policy: Policy, now: float) -> float:
    return failure.reset_at if failure.reset_at and failure.reset_at > now else now + policy.quota_cooldown_s


def _managed_start_until(failure: ProviderFailure, policy: Policy, now: float) -> float | None:
    return now + policy.managed_start_retry_s if failure.start_failed else None


RULES: dict[ErrorKind, Rule] = {
    r.kind: r
    for r in (
        Rule(ErrorKind.RATE_LIMIT, Action.ADVANCE, holds=(
            HoldRule("candidate", "cooldown", "cooldown", "rate limited ({status})", _rate_limit_until),)),
        Rule(ErrorKind.QUOTA_EXCEEDED, Action.ADVANCE, holds=(
            HoldRule("account", "cooldown", "account cooldown", "quota exceeded", _quota_until, durable=True),)),
        Rule(ErrorKind.AUTH, Action.ADVANCE, retry_when_key_changed=True, holds=(
            HoldRule("account", "disabled", "account disabled", "key refused ({status})", lambda f, p, now: now + DISABLED_FOR_S, durable=True),)),
        Rule(ErrorKind.ACCOUNT_LOCKED, Action.ADVANCE, holds=(
            HoldRule("account", "lock", "account lock", "account locked or forbidden ({status})",
                     lambda f, p, now: now + p.account_lock_s, durable=True),)),
        Rule(ErrorKind.MODEL_NOT_FOUND, Action.ADVANCE, holds=(
            HoldRule("candidate", "lock", "lock", "model not found", lambda f, p, now: now + p.model_not_found_lock_s, durable=True),)),
        # a 404 naming no model: the account's base_url looks wrong, so every model of it is held at once
        Rule(ErrorKind.ENDPOINT_NOT_FOUND, Action.ADVANCE, holds=(
            HoldRule("account", "lock", "account lock", "base_url looks wrong ({status})",
                     lambda f, p, now: now + p.model_not_found_lock_s, durable=True),)),
        Rule(ErrorKind.SERVER_ERROR, Action.ADVANCE, breaker=True, backoff=True),
        Rule(ErrorKind.OVERLOADED, Action.ADVANCE, breaker=True, backoff=True),
        Rule(ErrorKind.TIMEOUT, Action.ADVANCE, breaker=True),
        Rule(ErrorKind.NETWORK, Action.ADVANCE, breaker=True, breaker_at_once_when_local_refuses=True, holds=(
            HoldRule("account", "lock", "server start failed", "the managed local server did not start", _managed_start_until),)),
        Rule(ErrorKind.STREAM_INTERRUPTED, Action.ADVANCE, breaker=True),
        Rule(ErrorKind.EMPTY_RESPONSE, Action.ADVANCE, breaker=True),
        Rule(ErrorKind.CONTEXT_OVERFLOW, Action.ADVANCE, needs_larger_window=True),
        Rule(ErrorKind.CONTENT_FILTER, Action.STOP),
        Rule(ErrorKind.INVALID_REQUEST, Action.STOP),
        Rule(ErrorKind.CANCELLED, Action.STOP),
        Rule(ErrorKind.MALFORMED_RESPONSE, Action.ADVANCE, breaker=True),
        Rule(ErrorKind.UNSUPPORTED, Action.ADVANCE, marks_capability=True),
        # retried once on the same target first: the policy's `retries` table says invalid_output = 1
        Rule(ErrorKind.INVALID_OUTPUT, Action.ADVANCE, breaker=True),
    )
}

#: the default action of each kind (routing.md section 5), read off the table
ACTIONS: dict[ErrorKind, Action] = {kind: rule.action for kind, rule in RULES.items()}

DEFAULT_FALLBACK_ON: frozenset[ErrorKind] = frozenset(k for k, a in ACTIONS.items() if a is Action.ADVANCE)

#: a kind the table has no row for (one added to ErrorKind later): advance and count toward the breaker
FALLBACK_RULE = Rule(ErrorKind.NETWORK, Action.ADVANCE, breaker=True)


def retry_wait(policy: Policy, failure: ProviderFailure, n: int, draw: float) -> float:
    """How long to wait before the `n`-th retry of one candidate (`draw` uniform in [0, 1))."""
    wait = min(policy.retry_backoff_cap_s, policy.retry_backoff_s * 2.0 ** (n - 1))
    wait *= 1.0 - policy.retry_jitter + 2.0 * policy.retry_jitter * draw
    if failure.retry_after_s is not None:
        wait = max(wait, failure.retry_after_s)
    return wait


def rule_for(kind: ErrorKind) -> Rule:
    """The policy row of `kind`."""
    return RULES.get(kind) or replace(FALLBACK_RULE, kind=kind)

"""What the router remembers about candidates and accounts, in memory: holds, circuit breakers, latency,
usage windows and rate-limit headroom.

Every rule that depends on time takes the time as an argument (`now`, wall-clock seconds), so a test can
drive it with any clock. Nothing here knows about files: `encode()` and `decode()` turn a value into the
JSON text the store keeps and back.

    closed --(breaker_failures counted failures within breaker_window_s, or open_now)--> open
    open   --(open_for seconds pass)------------------------------------------------> half_open
    half_open --(the probe succeeds)--> closed        half_open --(the probe fails)--> open, twice as long
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from ..._core import ErrorKind, RateLimits
from ..policy import Policy

__all__ = ["FOREVER", "KINDS", "Breaker", "BreakerState", "Hold", "HoldKind", "LatencyStats", "RateLimitState", "UsageWindow",
           "decode", "encode"]

#: a hold that ends when something changes (a new key), not at a time
FOREVER = 10 * 365 * 86400.0


class _TextEnum(str, Enum):
    """An Enum whose members are their string values: stored rows, JSON and status tables see "open"."""

    def __str__(self) -> str:
        return str(self.value)


class HoldKind(_TextEnum):
    """Why a key may not be tried: a timed cooldown, a longer lock, or disabled until something changes."""

    COOLDOWN = "cooldown"
    LOCK = "lock"
    DISABLED = "disabled"


class BreakerState(_TextEnum):
    """Where a candidate's circuit breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Hold:
    """A cooldown, lock or disablement of a candidate or an account, until a wall-clock time."""

    kind: HoldKind = HoldKind.COOLDOWN
    until: float = 0.0
    reason: str = ""
    detail: str = ""
    updated: float = 0.0

    def __post_init__(self) -> None:
        self.kind = HoldKind(self.kind)

    def active(self, now: float) -> bool:
        """Is the hold still in force at `now`?"""
        return self.until > now


@dataclass
class Breaker:
    """A candidate's circuit breaker; the transitions are methods that take the time they happen at."""

    state: BreakerState = BreakerState.CLOSED
    failures: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    open_for: float = 0.0
    multiplier: int = 1
    probing: bool = False
    updated: float = 0.0

    def __post_init__(self) -> None:
        self.state = BreakerState(self.state)

    @property
    def open_until(self) -> float:
        """When an open breaker lets a probe through."""
        return self.opened_at + self.open_for

    def at(self, now: float) -> BreakerState:
        """The state at `now`: an open breaker whose time is up becomes half-open (no probe running yet)."""
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        return self.state

    def admits(self, now: float) -> tuple[bool, float | None]:
        """May the candidate be tried at `now`? Half-open admits one probe at a time. Returns (ok, open until)."""
        state = self.at(now)
        if state is BreakerState.OPEN:
            return False, self.open_until
        if state is BreakerState.HALF_OPEN and self.probing:
            return False, None
        return True, None

    def begin_probe(self, now: float) -> None:
        """A half-open breaker's one probe starts."""
        if self.at(now) is BreakerState.HALF_OPEN:
            self.probing = True

    def end_probe(self) -> None:
        """The probe ended without a verdict (a kind that does not count): let the next one in."""
        self.probing = False

    def trip(self, now: float, open_s: float) -> None:
        """Open the breaker at `now` for `open_s` times the current multiplier."""
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.open_for = open_s * self.multiplier
        self.failures = []
        self.probing = False

    def failure(self, now: float, policy: Policy, *, open_now: bool = False) -> None:
        """A counted failure at `now`: a failed probe reopens for twice as long (up to the cap); enough
        failures within the window (or `open_now`) open a closed breaker."""
        state = self.at(now)
        if state is BreakerState.HALF_OPEN:
            self.multiplier = min(policy.breaker_max_multiplier, self.multiplier * 2)
            self.trip(now, policy.breaker_open_s)
        elif state is BreakerState.CLOSED:
            self.failures = [t for t in self.failures if now - t < policy.breaker_window_s]
            self.failures.append(now)
            if open_now or len(self.failures) >= policy.breaker_failures:
                self.trip(now, policy.breaker_open_s)

    def success(self) -> bool:
        """A success closes the breaker and forgets failures and the multiplier; False if nothing changed."""
        if self.state is BreakerState.CLOSED and not self.failures and self.multiplier == 1:
            return False
        self.state = BreakerState.CLOSED
        self.failures = []
        self.opened_at = self.open_for = 0.0
        self.multiplier = 1
        self.probing = False
        return True


@dataclass
class LatencyStats:
    """Recent latency and outcomes of a candidate (bounded)."""

    ewma_total: float | None = None
    ewma_ttft: float | None = None
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    outcomes: deque[int] = field(default_factory=lambda: deque(maxlen=100))
    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    #: attempts charged at a price nobody knows (tokens used, or an answer served, with no price)
    cost_unknown: int = 0
    last_error: str | None = None
    last_used: float = 0.0
    hour_buckets: dict[int, int] = field(default_factory=dict)
    updated: float = 0.0

    def percentile(self, q: float) -> float | None:
        """The `q` quantile (0..1) of the recent latencies, None without samples."""
        # worked out once per new sample, not once per read: every decision reads every candidate
        memo = self.__dict__.get("_quantiles")
        if memo is None:
            memo = self.__dict__["_quantiles"] = {}
        elif q in memo:
            return memo[q]  # type: ignore[no-any-return]
        if not self.samples:
            value = None
        else:
            ordered = sorted(self.samples)
            value = ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
        memo[q] = value
        return value

    def spread(self) -> float | None:
        """p95 - p50 of the recent latencies (None with fewer than two samples)."""
        if len(self.samples) < 2:
            return None
        low, high = self.percentile(0.5), self.percentile(0.95)
        return None if low is None or high is None else high - low

    def reading(self) -> tuple[float | None, float | None, float]:
        """(p95, spread, error rate): what `auto` reads of every candidate, once per new sample."""
        memo = self.__dict__.get("_reading")
        if memo is None:
            memo = self.__dict__["_reading"] = (self.percentile(0.95), self.spread(), self.error_rate())
        return memo

    def requests_last_hour(self, now: float) -> int:
        """Requests in the 60 minutes up to `now`."""
        minute = int(now // 60)
        return sum(c for m, c in self.hour_buckets.items() if minute - m < 60)

    def error_rate(self) -> float:
        """Share of failures among the recent outcomes."""
        rate = self.__dict__.get("_error_rate")
        if rate is None:
            rate = self.__dict__["_error_rate"] = (len(self.outcomes) - sum(self.outcomes)) / len(self.outcomes) if self.outcomes else 0.0
        return rate

    def record(self, now: float, *, ok: bool, latency_s: float | None, ttft_s: float | None, streamed: bool,
               cost: float | None, error: ErrorKind | None, alpha: float, charged_unknown: bool = False) -> None:
        """Count one attempt that ended at `now`; `alpha` weighs the new latency in the moving averages;
        `charged_unknown`: it was charged at an unknown price."""
        self.requests += 1
        self.last_used = now
        self.__dict__.pop("_quantiles", None)  # the memos of percentile(), error_rate() and reading()
        self.__dict__.pop("_error_rate", None)
        self.__dict__.pop("_reading", None)
        minute = int(now // 60)
        buckets = self.hour_buckets
        buckets[minute] = buckets.get(minute, 0) + 1
        if len(buckets) > 61:
            for m in [m for m in buckets if minute - m >= 60]:
                del buckets[m]
        self.outcomes.append(1 if ok else 0)
        if ok:
            if latency_s is not None:
                self.samples.append(latency_s)
                self.ewma_total = latency_s if self.ewma_total is None else alpha * latency_s + (1 - alpha) * self.ewma_total
            if streamed and ttft_s is not None:
                self.ewma_ttft = ttft_s if self.ewma_ttft is None else alpha * ttft_s + (1 - alpha) * self.ewma_ttft
        else:
            self.errors += 1
            self.last_error = error.value if error else None
        if cost:
            self.cost_usd += cost
        elif cost is None and charged_unknown:
            self.cost_unknown += 1


@dataclass
class UsageWindow:
    """Requests and tokens an account used in the current minute and day (by our own count)."""

    minute: int = 0
    minute_requests: int = 0
    minute_tokens: int = 0
    day: int = 0
    day_requests: int = 0
    day_tokens: int = 0
    updated: float = 0.0

    def roll(self, now: float) -> None:
        """Start a new minute or day if `now` is in a later one."""
        minute, day = int(now // 60), int(now // 86400)
        if minute != self.minute:
            self.minute, self.minute_requests, self.minute_tokens = minute, 0, 0
        if day != self.day:
            self.day, self.day_requests, self.day_tokens = day, 0, 0

    def add(self, now: float, tokens: int) -> None:
        """Count one request of `tokens` tokens at `now`."""
        self.roll(now)
        self.minute_requests += 1
        self.minute_tokens += tokens
        self.day_requests += 1
        self.day_tokens += tokens


_RATELIMIT_FIELDS = tuple(f.name for f in fields(RateLimits))


@dataclass
class RateLimitState:
    """The last rate-limit headers an account's provider sent (merged field by field), and when."""

    limits: RateLimits = field(default_factory=RateLimits)
    updated: float = 0.0

    def observe(self, limits: Any) -> None:
        """Take the fields a reply's headers set; the others keep what an earlier reply said."""
        for name in _RATELIMIT_FIELDS:
            value = getattr(limits, name, None)
            if value is not None:
                setattr(self.limits, name, value)

    def at(self, now: float) -> RateLimits:
        """The headroom at `now`: a window whose reset time has passed counts as refilled."""
        r = self.limits
        if r.reset_requests_at is not None and r.reset_requests_at <= now and r.remaining_requests is not None:
            r.remaining_requests = r.limit_requests
        if r.reset_tokens_at is not None and r.reset_tokens_at <= now and r.remaining_tokens is not None:
            r.remaining_tokens = r.limit_tokens
        return r


#: the kinds of value the store keeps as JSON, by the name a stored row carries
KINDS: dict[str, type] = {"hold": Hold, "breaker": Breaker, "latency": LatencyStats, "usage": UsageWindow,
                          "ratelimit": RateLimitState}


def encode(obj: Any) -> str:
    """The JSON text the store keeps for a health value."""
    # copies made in C (list(deque), dict(dict)) are atomic under the GIL, so the loop thread may go on
    # changing the object while the writer thread encodes it
    data = {k: v for k, v in dict(obj.__dict__).items() if not k.startswith("_")}  # not the memos
    for key, value in list(data.items()):
        if isinstance(value, deque):
            data[key] = list(value)
        elif isinstance(value, dict):
            data[key] = {str(k): v for k, v in dict(value).items()}
        elif isinstance(value, RateLimits):
            data[key] = dict(value.__dict__)
    if isinstance(obj, RateLimitState):  # kept flat, as the rows of earlier versions are
        data.update(data.pop("limits"))
    return json.dumps(data)


def decode(kind: str, blob: str) -> Any:
    """A health value from its stored JSON text; unknown fields are ignored, bad ones raise ValueError."""
    cls = KINDS[kind]
    data = json.loads(blob)
    if not isinstance(data, dict):
        raise ValueError(f"a stored {kind} is not an object")
    obj = cls()
    target: Any = obj.limits if isinstance(obj, RateLimitState) else None
    for key, value in data.items():
        if target is not None and key in _RATELIMIT_FIELDS:
            setattr(target, key, value)
            continue
        if key.startswith("_") or not hasattr(obj, key) or key == "limits":
            continue
        current = getattr(obj, key)
        if isinstance(current, deque):
            current.extend(value)
        elif key == "hour_buckets":
            setattr(obj, key, {int(k): v for k, v in value.items()})
        else:
            setattr(obj, key, value)
    if isinstance(obj, Hold):
        obj.kind = HoldKind(obj.kind)
    elif isinstance(obj, Breaker):
        obj.state = BreakerState(obj.state)
    return obj

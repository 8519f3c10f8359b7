"""Per-key rate limits for the simulator, as providers enforce them: token buckets or sliding windows.

    sim.rate_limits.set("key-a", KeyLimits(requests_per_minute=300, tokens_per_minute=40_000))
    sim.rate_limits.set("key-b", WindowLimits(requests=120, window_s=60))    # a sliding window
    sim.rate_limits.set_default(WindowLimits(requests=120))                  # every other key, each its own

`KeyLimits` gives a key token buckets that refill continuously (OpenAI and Anthropic describe theirs so:
the capacity is replenished up to the limit, not reset at fixed intervals). `WindowLimits` admits at most
`requests` requests (and `tokens` tokens) in any `window_s` seconds, counted from the arrival times of
what it let through. A request takes one request and its tokens (the prompt's estimate plus `max_tokens`,
as OpenAI counts them); one that does not fit is answered 429 in the protocol's own shape with
`retry-after` (the time until it would fit) and the rate-limit headers, and every answer carries the
headers (limit, remaining, time until the allowance is whole again). The limiter counts what it let
through and refused per key, with the times, so tests check pacing against what the "provider" saw.

`start_full=False` starts a key already in steady use: its buckets empty, or its window holding a full
allowance spread evenly over the last window, so the rate is all there is (a benchmark's theoretical
minimum, items / sum of the limits, assumes that).
"""

from __future__ import annotations

import math
import threading
import time as _time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Union

#: the metrics a limit counts, in the order headers and refusals name them
METRICS = ("requests", "tokens")


@dataclass(frozen=True)
class KeyLimits:
    """Token-bucket limits of one key (None: not limited).

    Args:
        requests_per_minute: requests per minute.
        tokens_per_minute: tokens per minute (prompt estimate + max_tokens per request).
        start_full: the buckets start full (a fresh key) or empty (a key already in steady use).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    start_full: bool = True


@dataclass(frozen=True)
class WindowLimits:
    """Sliding-window limits of one key: at most `requests` requests and `tokens` tokens in any `window_s`
    seconds of the simulator's clock (None: that metric is not limited).

    Args:
        requests: requests per window.
        tokens: tokens per window (prompt estimate + max_tokens per request).
        window_s: the window's length in seconds.
        start_full: the whole allowance is free (a fresh key), or already used by earlier requests spread
            evenly over the last window (a key in steady use, freeing one request every window_s / requests).
    """

    requests: int | None = None
    tokens: int | None = None
    window_s: float = 60.0
    start_full: bool = True

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")
        for name in METRICS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (None: not limited)")


Limits = Union[KeyLimits, WindowLimits]


@dataclass
class _Refusal:
    """Why a request does not fit: the metric, its limit, what the window or bucket holds, what was asked."""

    wait_s: float
    metric: str
    limit: float
    used: float
    requested: float
    window_s: float


class _Bucket:
    """One continuously refilling bucket: `limit` per 60 s."""

    def __init__(self, limit: float, full: bool, now: float) -> None:
        self.limit = limit
        self.level = limit if full else 0.0
        self.stamp = now

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def refresh(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        need = min(amount, self.limit)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.level -= amount

    def used(self) -> float:
        return self.limit - self.level

    def remaining(self) -> float:
        return max(0, int(self.level))

    def until_whole(self, now: float) -> float:
        return max(0.0, (self.limit - self.level) / self.rate)


class _Window:
    """One sliding window: what was taken at which time, forgotten `window_s` after it was taken."""

    def __init__(self, limit: float, window_s: float, full: bool, now: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.entries: deque[tuple[float, float]] = deque()
        self.total = 0.0
        if not full:  # steady use: the allowance already taken, evenly, over the last window
            steps = max(1, int(limit)) if limit <= 10_000 else 10_000
            for i in range(steps):
                self.take(limit / steps, now - window_s + (i + 1) * window_s / steps)

    def refresh(self, now: float) -> None:
        # an entry taken at t counts while now - t < window_s (the window is the half-open (now - w, now])
        while self.entries and now - self.entries[0][0] >= self.window_s:
            self.total -= self.entries.popleft()[1]
        if not self.entries:
            self.total = 0.0  # no drift from float sums once the window is empty

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` more fits (an amount over the limit fits only an empty window)."""
        excess = self.total + min(amount, self.limit) - self.limit
        if excess <= 1e-9:
            return 0.0
        freed = 0.0
        for stamp, taken in self.entries:
            freed += taken
            if freed >= excess - 1e-9:
                return max(0.0, stamp + self.window_s - now)
        return self.window_s

    def take(self, amount: float, now: float) -> None:
        self.entries.append((now, amount))
        self.total += amount

    def used(self) -> float:
        return self.total

    def remaining(self) -> float:
        return max(0, int(self.limit - self.total + 1e-9))

    def until_whole(self, now: float) -> float:
        """Seconds until the window is empty again (what `x-ratelimit-reset-*` means: back to its initial state)."""
        return max(0.0, self.entries[-1][0] + self.window_s - now) if self.entries else 0.0


_Meter = Union[_Bucket, _Window]


def _meters(limits: Limits, now: float) -> dict[str, _Meter]:
    """The bucket or window of each limited metric."""
    meters: dict[str, _Meter] = {}
    if isinstance(limits, KeyLimits):
        for what, limit in (("requests", limits.requests_per_minute), ("tokens", limits.tokens_per_minute)):
            if limit:
                meters[what] = _Bucket(float(limit), limits.start_full, now)
    else:
        for what, count in (("requests", limits.requests), ("tokens", limits.tokens)):
            if count:
                meters[what] = _Window(float(count), limits.window_s, limits.start_full, now)
    return meters


def window_of(limits: Limits | None) -> float:
    """The window a key's limit counts over, in seconds (a token bucket's rate is per minute)."""
    return limits.window_s if isinstance(limits, WindowLimits) else 60.0


@dataclass
class KeyCounts:
    """What the limiter did for one key."""

    accepted: int = 0
    refused: int = 0
    #: arrival times (the limiter's clock) of the accepted requests
    times: list[float] = field(default_factory=list)

    def most_in(self, seconds: float) -> int:
        """The most accepted requests in any window of `seconds`."""
        return most_in(self.times, seconds)


def most_in(times: list[float], seconds: float) -> int:
    """The most of these (sorted) times in any half-open window of `seconds`."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class Verdict:
    """The limiter's answer to one request: let through or refused, and the header fields to send."""

    ok: bool
    #: the fields of `Reply(rate_limit=...)` (limit_requests, remaining_requests, reset_requests_s, ...)
    fields: dict[str, float]
    retry_after_s: float | None = None
    #: the limiter's clock when it decided
    at: float = 0.0
    #: for a refusal: the metric that did not fit ("requests" | "tokens"), its limit, what was used, what was asked
    metric: str | None = None
    limit: float | None = None
    used: float | None = None
    requested: float | None = None
    #: the window of the refusing limit, in seconds (60 for a token bucket)
    window_s: float = 60.0


class RateLimiter:
    """Token buckets or sliding windows per key; the simulator asks it about every model call.

    Args:
        time: the clock the limits run on (seconds; `time.monotonic` by default, or a ManualClock's).
    """

    def __init__(self, time: Callable[[], float] = _time.monotonic) -> None:
        self._time = time
        self._lock = threading.Lock()
        self._limits: dict[str, Limits] = {}
        self._default: Limits | None = None
        self._meters: dict[str, dict[str, _Meter]] = {}
        self.counts: dict[str, KeyCounts] = {}

    def now(self) -> float:
        """The limiter's clock."""
        return self._time()

    def set(self, key: str, limits: Limits | None) -> None:
        """Limit requests sent with credential `key` (None lifts its own limits; the default still applies)."""
        with self._lock:
            self._meters.pop(key, None)
            if limits is None:
                self._limits.pop(key, None)
            else:
                self._limits[key] = limits
                self._meters[key] = _meters(limits, self._time())

    def set_default(self, limits: Limits | None) -> None:
        """Limit every key without limits of its own, each key separately (None: no default)."""
        with self._lock:
            self._default = limits
            for key in [k for k in self._meters if k not in self._limits]:
                del self._meters[key]

    def limits_of(self, key: str | None) -> Limits | None:
        """The limits that apply to `key` (its own, else the default)."""
        if key is None:
            return None
        with self._lock:
            return self._limits.get(key, self._default)

    def clear(self) -> None:
        """Forget every limit and count."""
        with self._lock:
            self._limits.clear()
            self._default = None
            self._meters.clear()
            self.counts.clear()

    def admit(self, key: str | None, body: Any, prompt_tokens: int) -> Verdict | None:
        """Take one request of this body from `key`'s allowance; None when the key is not limited."""
        if key is None or (self._default is None and key not in self._limits):
            return None
        tokens = float(prompt_tokens + _max_tokens(body))
        with self._lock:
            now = self._time()
            meters = self._meters.get(key)
            if meters is None:
                limits = self._limits.get(key, self._default)
                if limits is None:
                    return None
                meters = self._meters[key] = _meters(limits, now)
            counts = self.counts.setdefault(key, KeyCounts())
            refusal = _refusal(meters, tokens, now)
            if refusal is None:
                for what, meter in meters.items():
                    meter.take(1.0 if what == "requests" else tokens, now)
                counts.accepted += 1
                counts.times.append(now)
            else:
                counts.refused += 1
            fields = _fields(meters, now)
        if refusal is None:
            return Verdict(True, fields, at=now)
        # rounded up to the millisecond: a client that waits exactly this long finds room
        wait = math.ceil(refusal.wait_s * 1000) / 1000
        return Verdict(False, fields, wait, now, refusal.metric, refusal.limit, refusal.used, refusal.requested, refusal.window_s)


def _refusal(meters: dict[str, _Meter], tokens: float, now: float) -> _Refusal | None:
    """Why this request does not fit now (the metric that frees last), or None when it fits."""
    worst: _Refusal | None = None
    for what, meter in meters.items():
        meter.refresh(now)
        amount = 1.0 if what == "requests" else tokens
        wait = meter.wait_for(amount, now)
        if wait > 0 and (worst is None or wait > worst.wait_s):
            window = meter.window_s if isinstance(meter, _Window) else 60.0
            worst = _Refusal(wait, what, meter.limit, meter.used(), amount, window)
    return worst


def _fields(meters: dict[str, _Meter], now: float) -> dict[str, float]:
    fields: dict[str, float] = {}
    for what, meter in meters.items():
        fields[f"limit_{what}"] = meter.limit
        fields[f"remaining_{what}"] = meter.remaining()
        fields[f"reset_{what}_s"] = meter.until_whole(now)
    return fields


def _max_tokens(body: Any) -> int:
    """The answer's limit a request asks for, in any protocol's spelling (0 when it names none)."""
    if not isinstance(body, dict):
        return 0
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            return int(body[name])
    config = body.get("generationConfig")
    if isinstance(config, dict) and isinstance(config.get("maxOutputTokens"), int):
        return int(config["maxOutputTokens"])
    return 0


__all__ = ["KeyCounts", "KeyLimits", "Limits", "RateLimiter", "Verdict", "WindowLimits", "most_in", "window_of"]

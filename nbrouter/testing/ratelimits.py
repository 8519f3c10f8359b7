"""Per-key rate limits for the simulator: requests and tokens per minute, as providers enforce them.

    sim.rate_limits.set("key-a", KeyLimits(requests_per_minute=300, tokens_per_minute=40_000))

Each key gets token buckets that refill continuously (OpenAI and Anthropic describe theirs so: the
capacity is replenished up to the limit, not reset at fixed intervals). A request takes one request and
its tokens (the prompt's estimate plus `max_tokens`, as OpenAI counts them); one that does not fit is
answered 429 in the protocol's own shape with `retry-after` and the `x-ratelimit-*` headers, and every
answer carries the headers (limit, remaining, time until the bucket is full again). The limiter counts
what it let through and refused per key, with the times, so tests check pacing against what the
"provider" saw.

`start_full=False` starts a key's buckets empty: an account already in steady use, where the rate is
all there is (a benchmark's theoretical minimum, items / sum of the limits, assumes that).
"""

from __future__ import annotations

import threading
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class KeyLimits:
    """The limits of one key (None: not limited).

    Args:
        requests_per_minute: requests per minute.
        tokens_per_minute: tokens per minute (prompt estimate + max_tokens per request).
        start_full: the buckets start full (a fresh key) or empty (a key already in steady use).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    start_full: bool = True


@dataclass
class _Bucket:
    limit: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def until_full(self) -> float:
        return max(0.0, (self.limit - self.level) / self.rate)


@dataclass
class KeyCounts:
    """What the limiter did for one key."""

    accepted: int = 0
    refused: int = 0
    #: arrival times (the limiter's clock) of the accepted requests
    times: list[float] = field(default_factory=list)

    def most_in(self, seconds: float) -> int:
        """The most accepted requests in any window of `seconds`."""
        best, start = 0, 0
        for end, t in enumerate(self.times):
            while t - self.times[start] >= seconds:
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


class RateLimiter:
    """Token buckets per key; the simulator asks it about every chat request.

    Args:
        time: the clock the buckets refill on (seconds; `time.monotonic` by default).
    """

    def __init__(self, time: Callable[[], float] = _time.monotonic) -> None:
        self._time = time
        self._lock = threading.Lock()
        self._limits: dict[str, KeyLimits] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.counts: dict[str, KeyCounts] = {}

    def set(self, key: str, limits: KeyLimits | None) -> None:
        """Limit requests sent with credential `key` (None lifts the limits)."""
        with self._lock:
            for what in ("requests", "tokens"):
                self._buckets.pop((key, what), None)
            if limits is None:
                self._limits.pop(key, None)
                return
            self._limits[key] = limits
            now = self._time()
            for what, limit in (("requests", limits.requests_per_minute), ("tokens", limits.tokens_per_minute)):
                if limit:
                    self._buckets[(key, what)] = _Bucket(float(limit), float(limit) if limits.start_full else 0.0, now)

    def clear(self) -> None:
        """Forget every limit and count."""
        with self._lock:
            self._limits.clear()
            self._buckets.clear()
            self.counts.clear()

    def admit(self, key: str | None, body: Any, prompt_tokens: int) -> Verdict | None:
        """Take one request of this body from `key`'s buckets; None when the key is not limited."""
        if not self._limits or key not in self._limits:
            return None
        tokens = prompt_tokens + _max_tokens(body)
        with self._lock:
            now = self._time()
            counts = self.counts.setdefault(key, KeyCounts())
            buckets = [(what, b) for what in ("requests", "tokens") if (b := self._buckets.get((key, what))) is not None]
            short = 0.0
            for what, b in buckets:
                b.refill(now)
                need = 1.0 if what == "requests" else float(min(tokens, b.limit))
                if b.level < need:
                    short = max(short, (need - b.level) / b.rate)
            if not short:
                for what, b in buckets:
                    b.level -= 1.0 if what == "requests" else float(tokens)
                counts.accepted += 1
                counts.times.append(now)
            else:
                counts.refused += 1
            fields: dict[str, float] = {}
            for what, b in buckets:
                fields[f"limit_{what}"] = b.limit
                fields[f"remaining_{what}"] = max(0, int(b.level))
                fields[f"reset_{what}_s"] = b.until_full()
            return Verdict(not short, fields, retry_after_s=round(short, 3) if short else None)


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


__all__ = ["KeyCounts", "KeyLimits", "RateLimiter", "Verdict"]

"""Pacing: token buckets per account and per candidate, so a batch uses each account up to its limit and no further.

    config quota (per account)  ─┐
                                 ├─> buckets: requests and tokens, per minute and per day
    rate-limit headers (per      │     (level refills at limit / window; a request takes 1, its tokens
    candidate, as replies come) ─┘      take the estimate, corrected when the reply reports usage)

A call that carries a `Pacer` (`CallRequest.pacer`, set by `Router.map`) is asked about through the skip
check "paced" (decide.py): a candidate whose buckets have no headroom now is skipped with the time of its
next refill, and when every candidate is paced the loop waits on the router's clock for the earliest
refill instead of sending into a 429. The pacer learns while the call is on the wire (`Pacer.around`):
a reply's headers set the level and the rate, a 429 empties the buckets of that candidate and account.

A minute bucket holds at most `BURST_S` seconds of refill, so a batch is spread evenly over the minute
(providers enforce per-minute limits over shorter periods too); a day bucket holds the day's limit.
Everything here is bookkeeping behind one lock: the same pacer may be used by calls on several loops.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Mapping, TypeVar

from ..._core import Clock, ErrorKind, ProviderFailure, RateLimits
from ..._core.clock import SYSTEM_CLOCK
from ..._core.text import span
from ..model import Config
from ..types import Candidate

T = TypeVar("T")

MINUTE_S = 60.0
DAY_S = 86400.0
#: a minute bucket holds this many seconds of refill (a burst no larger than a provider's shortest window)
BURST_S = 1.0
#: the share of a limit the pacer aims at: our clock and the provider's see each request at slightly
#: different moments, so pacing at exactly the limit would meet an occasional 429
PACING_MARGIN = 0.99
#: a bucket seen for the first time holds this many requests until headers say more: an account's
#: state at the provider is unknown (it may be in use elsewhere), so the pacer probes before it bursts
PROBE_REQUESTS = 1.0
#: a header whose implied window (limit x reset / used) is longer than this describes a per-day limit
#: (Groq's x-ratelimit-limit-requests is requests per day); shorter, a per-minute one
DAY_WINDOW_AFTER_S = 600.0
#: the shortest wait the pacer asks for (a shorter one may vanish in the rounding of epoch seconds)
MIN_WAIT_S = 0.001
#: how soon an account at its concurrency limit is looked at again
RECHECK_S = 0.02
#: a paced call waits at most this long for a candidate to free up before it fails as usual
MAX_WAIT_S = 120.0
#: the prefix of the skip reason (the loop and the batch know a paced skip by it)
PACED = "paced"


@dataclass
class Bucket:
    """A token bucket: `level` refills at `rate` per second up to `capacity`; a take may go below zero."""

    what: str  # "requests" | "tokens"
    window_s: float
    limit: float
    margin: float = PACING_MARGIN
    level: float = 0.0
    stamp: float = 0.0
    #: nothing is taken before this time (a 429's retry-after)
    blocked_until: float = 0.0
    rate: float = field(init=False)
    capacity: float = field(init=False)

    def __post_init__(self) -> None:
        self.set_limit(self.limit)

    def set_limit(self, limit: float) -> None:
        self.limit = float(limit)
        self.rate = max(self.limit * self.margin / self.window_s, 1e-9)
        self.capacity = max(1.0, self.limit if self.window_s >= DAY_S else self.rate * BURST_S)
        self.level = min(self.level, self.capacity)

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0: now). An amount above the capacity needs a full bucket."""
        self.refill(now)
        need = min(amount, self.capacity) - self.level
        wait = need / self.rate if need > 1e-6 else 0.0
        return max(wait, self.blocked_until - now)

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def set_remaining(self, remaining: float, now: float) -> None:
        # only ever down: a provider's bucket may hold a whole minute, ours holds BURST_S of it, and
        # a reply's count was taken before the requests we sent since (those are subtracted by the caller)
        self.refill(now)
        self.level = min(self.level, float(remaining))

    def empty(self, now: float, until: float | None) -> None:
        self.refill(now)
        self.level = min(self.level, 0.0)
        if until is not None:
            self.blocked_until = max(self.blocked_until, until)

    def describe(self) -> str:
        per = "min" if self.window_s < DAY_S else "day"
        return f"{self.limit:g} {self.what}/{per}"


def _window_of(limit: float, remaining: float | None, reset_at: float | None, now: float) -> float:
    """The window a rate-limit header describes: a bucket refilling `limit - remaining` in `reset_at - now`
    refills `limit` in limit x reset / used seconds (about 60 for a minute limit, 86400 for a day)."""
    if remaining is None or reset_at is None or remaining >= limit or reset_at <= now:
        return MINUTE_S
    implied = limit * (reset_at - now) / (limit - remaining)
    return DAY_S if implied > DAY_WINDOW_AFTER_S else MINUTE_S


class Pacer:
    """Per-account and per-candidate buckets, consulted before each attempt of a paced call.

    Args:
        config: the router's configuration (the accounts' `quota` tables seed the account buckets).
        clock: the router's clock (a reply is learned from at the time it arrives).
        account_concurrency: at most this many requests in flight per account (an int for all, or a
            mapping `provider#account -> int`); None: no limit but the rates.
        margin: the share of each limit to pace at.
        max_wait_s: how long a paced call may wait for headroom before it fails as usual.
    """

    def __init__(self, config: Config, *, clock: Clock = SYSTEM_CLOCK, account_concurrency: int | Mapping[str, int] | None = None,
                 margin: float = PACING_MARGIN, max_wait_s: float = MAX_WAIT_S) -> None:
        self.config = config
        self.clock = clock
        self.margin = margin
        self.max_wait_s = max_wait_s
        self.account_concurrency = account_concurrency
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[tuple[str, float], Bucket]] = {}
        self._in_flight: dict[str, int] = {}
        #: candidates that have answered at least once (before that, one request at a time probes them)
        self._answered: set[str] = set()
        #: requests sent and 429s met, per candidate key (what the batch summary shows)
        self.sent: dict[str, int] = {}
        self.limited: dict[str, int] = {}

    # ---- the buckets of a candidate ----------------------------------------------------------

    def _account_buckets(self, c: Candidate, now: float) -> dict[tuple[str, float], Bucket]:
        buckets = self._buckets.get(c.account_key)
        if buckets is None:
            buckets = self._buckets[c.account_key] = {}
            acc = self.config.providers[c.provider].account(c.account) if c.provider in self.config.providers else None
            if acc is not None and not acc.quota.is_empty():
                q = acc.quota
                for what, window, limit in (("requests", MINUTE_S, q.requests_per_minute), ("tokens", MINUTE_S, q.tokens_per_minute),
                                            ("requests", DAY_S, q.requests_per_day), ("tokens", DAY_S, q.tokens_per_day)):
                    if limit:
                        buckets[(what, window)] = self._new(what, window, limit, now)
        return buckets

    def _new(self, what: str, window: float, limit: float, now: float) -> Bucket:
        b = Bucket(what, window, limit, self.margin, stamp=now)
        # a day bucket starts full (the day's limit is counted by the quota check as well); a minute
        # bucket probes until the provider's headers say how much is left
        b.level = b.capacity if window >= DAY_S else min(b.capacity, PROBE_REQUESTS if what == "requests" else b.capacity)
        return b

    def _all(self, c: Candidate, now: float) -> list[Bucket]:
        return [*self._account_buckets(c, now).values(), *self._buckets.get(c.key, {}).values()]

    def _concurrency_limit(self, c: Candidate) -> int | None:
        limit = self.account_concurrency
        if isinstance(limit, Mapping):
            return limit.get(c.account_key)
        return limit

    # ---- asked by the skip check -------------------------------------------------------------

    def wait_s(self, c: Candidate, tokens: int, now: float) -> tuple[float, str]:
        """Seconds until `c` may be sent a request of `tokens` (0: now), and what it waits for."""
        with self._lock:
            limit = self._concurrency_limit(c)
            if limit is not None and self._in_flight.get(c.account_key, 0) >= limit:
                return RECHECK_S, f"{limit} in flight on {c.account_key}"
            buckets = self._all(c, now)
            if not buckets and c.key not in self._answered and self._in_flight.get(c.key, 0) >= 1:
                # nothing known of its limits yet: one request finds them out (its reply's headers) first
                return RECHECK_S, "the first request is finding out its limits"
            worst, why = 0.0, ""
            for b in buckets:
                w = b.wait_s(1.0 if b.what == "requests" else float(tokens), now)
                if w > worst:
                    worst, why = w, b.describe()
            return worst, why

    def skip(self, c: Candidate, tokens: int, now: float) -> tuple[str, float] | None:
        """The skip check's answer: None when there is headroom now, else (reason, time of the refill)."""
        wait, why = self.wait_s(c, tokens, now)
        if wait <= 0:
            return None
        # at least a millisecond: `now + wait` must be later than `now` in an epoch float
        wait = max(wait, MIN_WAIT_S)
        return f"{PACED}: no headroom now ({why}; next in {span(wait) if wait >= 1 else f'{wait * 1000:.0f} ms'})", now + wait

    # ---- told by the loop around each attempt ------------------------------------------------

    async def around(self, c: Candidate, tokens: int, now: float, sending: Awaitable[T]) -> T:
        """Await one attempt's send: take its request and tokens first, then learn from how it ended."""
        self.take(c, tokens, now)
        try:
            completion = await sending
        except ProviderFailure as failure:
            self.failed(c, tokens, failure, self.clock.time())
            raise
        except BaseException:
            self.release(c)
            raise
        self.served(c, tokens, completion, self.clock.time())
        return completion

    def take(self, c: Candidate, tokens: int, now: float) -> None:
        with self._lock:
            for b in self._all(c, now):
                b.take(1.0 if b.what == "requests" else float(tokens), now)
            self._in_flight[c.account_key] = self._in_flight.get(c.account_key, 0) + 1
            self._in_flight[c.key] = self._in_flight.get(c.key, 0) + 1
            self.sent[c.key] = self.sent.get(c.key, 0) + 1

    def release(self, c: Candidate) -> None:
        with self._lock:
            self._release(c)

    def _release(self, c: Candidate) -> None:
        for key in (c.account_key, c.key):
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def served(self, c: Candidate, tokens: int, completion: Any, now: float) -> None:
        """A reply: correct the token estimate by the reported usage, and learn from its headers."""
        with self._lock:
            self._release(c)
            self._answered.add(c.key)
            usage = getattr(completion, "usage", None)
            if usage is not None and usage.total_tokens:
                for b in self._all(c, now):
                    if b.what == "tokens":
                        b.give_back(float(tokens - usage.total_tokens), now)
            limits = getattr(completion, "rate_limits", None)
            if limits is not None:
                self._learn(c, limits, now)

    def failed(self, c: Candidate, tokens: int, failure: ProviderFailure, now: float) -> None:
        """A failure: a 429 empties the candidate's and account's buckets (until its retry-after)."""
        with self._lock:
            self._release(c)
            self._answered.add(c.key)
            if failure.rate_limits is not None:
                self._learn(c, failure.rate_limits, now)
            if failure.kind is ErrorKind.RATE_LIMIT:
                self.limited[c.key] = self.limited.get(c.key, 0) + 1
                until = now + failure.retry_after_s if failure.retry_after_s else None
                # with no limit known (no quota, no headers) the loop's cooldown of the candidate paces it
                for b in self._all(c, now):
                    if b.what == "requests" or failure.rate_limits is None or failure.rate_limits.remaining_tokens == 0:
                        b.empty(now, until)

    def learn(self, c: Candidate, limits: RateLimits, now: float) -> None:
        """Set the candidate's buckets from a reply's rate-limit headers (limit, remaining, reset)."""
        with self._lock:
            self._learn(c, limits, now)

    def _learn(self, c: Candidate, limits: RateLimits, now: float) -> None:
        buckets = self._buckets.setdefault(c.key, {})
        for what, limit, remaining, reset_at in (
            ("requests", limits.limit_requests, limits.remaining_requests, limits.reset_requests_at),
            ("tokens", limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens_at),
        ):
            if not limit:
                continue
            window = _window_of(limit, remaining, reset_at, now)
            b = buckets.get((what, window))
            if b is None:
                b = buckets[(what, window)] = self._new(what, window, limit, now)
            elif b.limit != limit:
                b.set_limit(limit)
            if remaining is not None:
                # what the provider had left when it answered, less what we sent since that it has not seen
                in_flight = self._in_flight.get(c.key, 0)
                b.set_remaining(remaining - (in_flight if what == "requests" else 0), now)

    # ---- reading ------------------------------------------------------------------------------

    def limits(self) -> dict[str, list[str]]:
        """What each account and candidate is paced at (`{"openai#main": ["500 requests/min"], ...}`)."""
        with self._lock:
            return {key: [b.describe() for b in buckets.values()] for key, buckets in self._buckets.items() if buckets}


__all__ = ["BURST_S", "Bucket", "MAX_WAIT_S", "PACED", "PACING_MARGIN", "Pacer"]

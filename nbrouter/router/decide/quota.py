"""What every process used of a quota account, for the quota skip check: the store's counts, mirrored.

The skip check runs inside a decision (sync, no round trip), but an account's `requests_per_minute` or
per-day quota is used by every kernel and machine that shares it. The pacer counts each process's uses in
the store (`usage:ACCOUNT|requests`, per calendar minute and day: `Pacer.usage`); `SharedUsage` keeps the
last reading of those counts, read again before a call at most once per `USAGE_MIRROR_S`, and adds the
requests this process sent since, so that between two readings its own uses are not missed:

    requests used = max(this process's own count,  the store's count as read + this process's requests since)
    tokens used   = max(this process's own count,  the store's count as read)

(The tokens a process used since the reading are not added: its own token count is merged with the other
processes' through the state file, last writer wins, so a difference of it could count another's twice.)

A reading of an earlier minute (or day) counts nothing in the current one: the process's own count stands
alone until the next reading.

The check runs for every call of a quota account, so it costs O(1): the account's configured windows are
worked out once per configuration (`quota_plan`), this process's requests per account are counted as they
are sent (`Pacer.sent_accounts`), and the four counts are read without building a window object (`used`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._core import Clock
from ..model import Quota
from ..state.health import UsageWindow
from ..state.pacing import Pacer
from ..state.shared import StoreDown

__all__ = ["MINUTE_REQUESTS", "MINUTE_TOKENS", "DAY_REQUESTS", "DAY_TOKENS", "USAGE_MIRROR_S", "QuotaWindow", "SharedUsage",
           "quota_plan"]

#: the store's usage counts are read again at most this often (the same age as the mirror of holds)
USAGE_MIRROR_S = 1.0

#: where each count is in what `SharedUsage.used` returns
MINUTE_REQUESTS, MINUTE_TOKENS, DAY_REQUESTS, DAY_TOKENS = range(4)

#: one configured quota window: (limit, index of its count in `SharedUsage.used`, what it counts, per day?)
QuotaWindow = tuple[int, int, str, bool]


def quota_plan(quota: Quota) -> tuple[QuotaWindow, ...]:
    """The windows an account's quota sets a limit for, in the order the skip check names them (requests
    then tokens per minute, then per day): worked out once per configuration, not per call."""
    windows: tuple[tuple[int | None, int, str, bool], ...] = (
        (quota.requests_per_minute, MINUTE_REQUESTS, "requests this minute", False),
        (quota.tokens_per_minute, MINUTE_TOKENS, "tokens this minute", False),
        (quota.requests_per_day, DAY_REQUESTS, "requests today", True),
        (quota.tokens_per_day, DAY_TOKENS, "tokens today", True),
    )
    return tuple((limit, index, what, day) for limit, index, what, day in windows if limit is not None)


@dataclass(frozen=True)
class _Reading:
    """One account's counts as the store gave them, and what this process had sent when they were read."""

    minute: int
    day: int
    requests_minute: float
    tokens_minute: float
    requests_day: float
    tokens_day: float
    sent: int


class SharedUsage:
    """The store's usage counts of the quota accounts, as last read, for the quota skip check and `headroom`.

    Args:
        clock: the router's clock (its monotonic time spaces the readings; its wall time names the windows).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._read_at = -math.inf
        self._readings: dict[str, _Reading] = {}
        #: readings asked of the store so far (what a test counts)
        self.reads = 0

    def due(self) -> bool:
        """Is the last reading older than `USAGE_MIRROR_S`?"""
        return self.clock.monotonic() >= self._read_at + USAGE_MIRROR_S

    def forget(self) -> None:
        """Drop the readings (a new configuration: other accounts may have quotas now)."""
        self._readings.clear()
        self._read_at = -math.inf

    async def refresh(self, pacer: Pacer, *, force: bool = False) -> None:
        """Read the store's counts of every quota account (unless read less than `USAGE_MIRROR_S` ago).

        Args:
            pacer: whose `usage()` reads the counts, and whose `sent` says what this process sent.
            force: read now, however recent the last reading is.
        """
        if not pacer.quota_accounts or not (force or self.due()):
            return
        self._read_at = self.clock.monotonic()  # before the await: the calls meanwhile do not read again
        # what this process had sent before the read: a request sent during it is counted twice at worst
        sent = dict(pacer.sent_accounts)
        try:
            counts = await pacer.usage()
        except StoreDown:  # a store without its guard: the last reading stays (the own count still holds)
            return
        self.reads += 1
        now = self.clock.time()
        minute, day = int(now // 60), int(now // 86400)
        for account, c in counts.items():
            self._readings[account] = _Reading(minute, day, c.get("requests_minute", 0.0), c.get("tokens_minute", 0.0),
                                               c.get("requests_day", 0.0), c.get("tokens_day", 0.0),
                                               sent.get(account, 0))

    def used(self, account: str, local: UsageWindow | None, pacer: Pacer, now: float) -> tuple[int, int, int, int]:
        """The account's requests and tokens this minute and today (indexed by `MINUTE_REQUESTS` ...): this
        process's own count (`local`, as the state store keeps it: a count of an earlier minute or day is
        none in this one), or the store's as read plus this process's requests since, whichever is larger."""
        minute, day = int(now // 60), int(now // 86400)
        if local is None:
            minute_requests = minute_tokens = day_requests = day_tokens = 0
        else:
            if local.minute == minute:
                minute_requests, minute_tokens = local.minute_requests, local.minute_tokens
            else:
                minute_requests = minute_tokens = 0
            if local.day == day:
                day_requests, day_tokens = local.day_requests, local.day_tokens
            else:
                day_requests = day_tokens = 0
        r = self._readings.get(account)
        if r is not None and (r.minute == minute or r.day == day):
            sent = max(pacer.sent_accounts.get(account, 0) - r.sent, 0)
            if r.minute == minute:
                minute_requests = max(minute_requests, int(r.requests_minute) + sent)
                minute_tokens = max(minute_tokens, int(r.tokens_minute))
            if r.day == day:
                day_requests = max(day_requests, int(r.requests_day) + sent)
                day_tokens = max(day_tokens, int(r.tokens_day))
        return minute_requests, minute_tokens, day_requests, day_tokens

    def window(self, account: str, local: UsageWindow, pacer: Pacer, now: float) -> UsageWindow:
        """The account's usage in the minute and day of `now` as a window (`used`, for `headroom`)."""
        minute_requests, minute_tokens, day_requests, day_tokens = self.used(account, local, pacer, now)
        return UsageWindow(minute=int(now // 60), minute_requests=minute_requests, minute_tokens=minute_tokens,
                           day=int(now // 86400), day_requests=day_requests, day_tokens=day_tokens, updated=local.updated)

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._core import Clock
from ..state.health import UsageWindow
from ..state.pacing import Pacer
from ..state.shared import StoreDown, tag_of

__all__ = ["USAGE_MIRROR_S", "SharedUsage"]

#: the store's usage counts are read again at most this often (the same age as the mirror of holds)
USAGE_MIRROR_S = 1.0


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
        sent = self.sent_by_account(pacer)
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

    @staticmethod
    def sent_by_account(pacer: Pacer) -> dict[str, int]:
        """The requests this process sent so far, by account (the pacer counts them by candidate)."""
        out: dict[str, int] = {}
        for key, n in pacer.sent.items():
            account = tag_of(key)
            out[account] = out.get(account, 0) + n
        return out

    def window(self, account: str, local: UsageWindow, pacer: Pacer, now: float) -> UsageWindow:
        """The account's usage in the minute and day of `now`: this process's own count (`local`), or the
        store's as read (plus this process's requests since), whichever is larger."""
        r = self._readings.get(account)
        if r is None:
            return local
        minute, day = int(now // 60), int(now // 86400)
        if r.minute != minute and r.day != day:
            return local
        sent = max(sum(n for key, n in pacer.sent.items() if tag_of(key) == account) - r.sent, 0)
        out = UsageWindow(minute=local.minute, minute_requests=local.minute_requests, minute_tokens=local.minute_tokens,
                          day=local.day, day_requests=local.day_requests, day_tokens=local.day_tokens, updated=local.updated)
        if r.minute == minute:
            out.minute_requests = max(out.minute_requests, int(r.requests_minute) + sent)
            out.minute_tokens = max(out.minute_tokens, int(r.tokens_minute))
        if r.day == day:
            out.day_requests = max(out.day_requests, int(r.requests_day) + sent)
            out.day_tokens = max(out.day_tokens, int(r.tokens_day))
        return out

"""A clock that tests turn by hand, for time rules (cooldowns, breakers, windows, backoffs) without sleeping.

    clock = ManualClock()
    router = Router(config, persist=False, clock=clock)
    ...                      # a 429 sets a 30 s cooldown
    clock.advance(31)        # the cooldown is over, at once

`sleep()` moves the clock forward by the asked time and yields to the event loop once, so a backoff of
250 ms takes no real time and the time it "took" is visible as `clock.slept`.
"""

from __future__ import annotations

import asyncio
import threading


class ManualClock:
    """Wall and monotonic time that move only when told (or when the router sleeps on it)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._lock = threading.Lock()
        self._wall = float(start)
        self._mono = 1000.0
        #: every sleep the router asked for, in order
        self.slept: list[float] = []

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(time={self._wall:.3f})"

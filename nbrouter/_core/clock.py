"""The one clock of a Router: wall time for holds and windows, a monotonic time for deadlines, and the
waits of backoffs and `when_all_cooling = "wait"`. Tests pass a clock they turn by hand
(`nbrouter.testing.ManualClock`) so that time rules are checked without sleeping.
"""

from __future__ import annotations

import asyncio
import time as _time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the router asks of time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: when a hold ends, which minute or day a window is in."""

    def monotonic(self) -> float:
        """Seconds that never go back: call deadlines."""

    async def sleep(self, seconds: float) -> None:
        """Wait (a backoff, or for a cooling candidate to free up)."""


class SystemClock:
    """The real clock."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

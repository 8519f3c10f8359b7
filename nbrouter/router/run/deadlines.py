"""Wall-clock limits on attempts: `start(seconds)` on the current task, with one timer per 10 ms of deadlines.

An attempt is bounded from connect to its last byte by one wall-clock limit. A timer per attempt
(`loop.call_later`, as `asyncio.timeout` makes) costs a handle, a heap push and a cancel on every request;
here the attempts whose deadlines fall in the same 10 ms share one timer, so a busy router pays for a set
insertion instead. A limit therefore fires up to `GRAIN_S` late, never early.

The timers run on the event loop's time, not the router's `Clock`: a limit cancels a wait for bytes from a
socket, and real I/O takes real time, which a test's ManualClock never sees pass (a limit on it would
never fire, or fire at once). What the router records about an attempt, its latency and when it started,
it reads from its Clock (`Loop`), so those agree with its holds and windows.
"""

from __future__ import annotations

import asyncio
import math
import weakref

#: deadlines are rounded up to a multiple of this (seconds): the attempts in one slot share a timer
GRAIN_S = 0.01


class Limit:
    """One running limit (`start`): whether it has cancelled its task, and `stop()` once the bounded work
    is over, whichever way it ended."""

    __slots__ = ("task", "expired", "_slot", "_absorbed")

    def __init__(self, task: asyncio.Task[object], slot: set[Limit]) -> None:
        self.task = task
        #: the limit passed and cancelled the task
        self.expired = False
        self._slot = slot
        self._absorbed = False

    def stop(self) -> None:
        """The bounded work is over: the limit no longer applies. A cancellation it asked for that the work
        turned into something else (a failure it raised) is taken back too."""
        self._slot.discard(self)
        if self.expired:
            self.absorb()

    def absorb(self) -> None:
        """Take back the cancellation the limit asked for (once), so the task goes on normally."""
        if self.expired and not self._absorbed:
            self._absorbed = True
            if hasattr(self.task, "uncancel"):
                self.task.uncancel()


class _Slots:
    """The pending limits of one event loop, by deadline slot; a slot's timer cancels what is left in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[Limit]] = {}

    def start(self, seconds: float, task: asyncio.Task[object]) -> Limit:
        slot = math.ceil((self.loop.time() + seconds) / GRAIN_S)
        limits = self.slots.get(slot)
        if limits is None:
            limits = self.slots[slot] = set()
            self.loop.call_at(slot * GRAIN_S, self._expire, slot)
        limit = Limit(task, limits)
        limits.add(limit)
        return limit

    def _expire(self, slot: int) -> None:
        for w in self.slots.pop(slot, ()):
            if not w.task.done():
                w.expired = True
                w.task.cancel()


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


def start(seconds: float) -> Limit:
    """Start a limit of `seconds` on the current task: once it passes (up to `GRAIN_S` later), the task is
    cancelled and the limit's `expired` is set, so that the task can tell it from any other cancellation.
    Call `stop()` when the bounded work ends, and on a CancelledError while `expired` is set, `absorb()` it
    and treat it as the timeout it is (`Loop._attempt` does).

    Args:
        seconds: the limit.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    slots = _by_loop.get(loop)
    if slots is None:
        slots = _by_loop[loop] = _Slots(loop)
    return slots.start(seconds, task)


__all__ = ["GRAIN_S", "Limit", "start"]

"""Wall-clock limits on attempts: `within(seconds, awaitable)`, with one timer per 10 ms of deadlines.

An attempt is bounded from connect to its last byte by one wall-clock limit. A timer per attempt
(`loop.call_later`, as `asyncio.timeout` makes) costs a handle, a heap push and a cancel on every request;
here the attempts whose deadlines fall in the same 10 ms share one timer, so a busy router pays for a set
insertion instead. A limit therefore fires up to `GRAIN_S` late, never early.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Awaitable, TypeVar

T = TypeVar("T")

#: deadlines are rounded up to a multiple of this (seconds): the attempts in one slot share a timer
GRAIN_S = 0.01


class _Watch:
    """One attempt's limit: its task, and whether the limit cancelled it."""

    __slots__ = ("task", "expired")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.expired = False


class _Slots:
    """The pending limits of one event loop, by deadline slot; a slot's timer cancels what is left in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[_Watch]] = {}

    def watch(self, seconds: float, task: asyncio.Task[object]) -> tuple[set[_Watch], _Watch]:
        slot = math.ceil((self.loop.time() + seconds) / GRAIN_S)
        watches = self.slots.get(slot)
        if watches is None:
            watches = self.slots[slot] = set()
            self.loop.call_at(slot * GRAIN_S, self._expire, slot)
        w = _Watch(task)
        watches.add(w)
        return watches, w

    def _expire(self, slot: int) -> None:
        for w in self.slots.pop(slot, ()):
            if not w.task.done():
                w.expired = True
                w.task.cancel()


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """`awaitable`, cancelled and turned into a TimeoutError once `seconds` of wall-clock time have passed
    (up to `GRAIN_S` later). A cancellation from anywhere else stays a cancellation.

    Args:
        seconds: the limit.
        awaitable: what to bound; it runs in the current task.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    slots = _by_loop.get(loop)
    if slots is None:
        slots = _by_loop[loop] = _Slots(loop)
    watches, w = slots.watch(seconds, task)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if w.expired:
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise TimeoutError from None
        raise
    finally:
        watches.discard(w)


__all__ = ["GRAIN_S", "within"]

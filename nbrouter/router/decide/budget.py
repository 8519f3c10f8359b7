"""A session budget in dollars, kept by the Router for every call it makes (the magics use the same one).

What has been spent is counted from every attempt that was charged: known costs add up in `spent`, and an
attempt charged at an unknown price counts in `unknown_calls` (shown as "$0.0123 + 2 calls at unknown
price", never as a silent 0). Before a call is sent, each candidate's estimated cost is held against
what is left (`Budget.check`, one of the loop's named skip checks):

- `on_budget = "stop"`: the call is refused before anything is sent when its first choice does not fit;
- `on_budget = "cheapest"`: candidates that do not fit are skipped, and the ones that fit are tried
  cheapest first;
- `strict = True`: a candidate whose price is unknown is skipped too (its cost could not be held against
  the budget).

**A shared budget** (`[budget] shared = "NAME"` in the config, `Budget.share`): the spending is counted in
the state store every kernel and machine shares (the state file on one machine, Redis across machines),
under that name and `[budget] per` window ("total", or "day": the UTC calendar day), so every Router
configured with the same name on the same store spends from one budget. Each call's cost goes to the
store behind the call (at most one write per `SHARED_BUDGET_GATHER_S`, with the costs of every call that
ended meanwhile); what the other processes spent is read before a call at most once per
`SHARED_BUDGET_READ_S` (as the quota accounts' usage is), so `spent` is

    max(this process's spending in the window,
        the store's count as read + what this process spent that the store had not confirmed then)

which never counts short (a cost written while the count was read is counted twice until the next
reading), and another kernel's spending is seen within about a second: calls that several kernels send in
that second can pass the limit together, by what they cost. While the store is down, the last reading
stands and this process's spending adds to it; the guard writes its counts to the store when it returns.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
import asyncio
from typing import Callable, Iterable

from ..._core import Clock
from ..state.shared import AddCount, SharedState, StoreDown, Window, Write
from ..types import Action, Attempt

ON_BUDGET = ("stop", "cheapest")
#: how the reason of a candidate skipped for the budget begins (`Budget.check`), a session's or a shared one's
BUDGET_REASONS = ("session budget:", "shared budget ")
#: the windows a shared budget is counted in: since it was first counted, or per UTC calendar day
BUDGET_PER = ("total", "day")
#: the store's count of a shared budget is read again before a call at most this often
SHARED_BUDGET_READ_S = 1.0
#: the costs recorded within this long of the first one are written to the store together (one write for
#: many calls when calls follow each other; small beside how often the others read it)
SHARED_BUDGET_GATHER_S = 0.05
#: a shared budget is counted in the store in billionths of a dollar (whole numbers: exact in any store)
NANO = Decimal(10) ** 9
#: the store's counters of a shared budget: `budget:NAME|usd` (nano-dollars) and `budget:NAME|unknown`
BUDGET_PREFIX = "budget:"

_WINDOWS = {"total": Window.forever(), "day": Window.day()}


@dataclass(frozen=True)
class _Reading:
    """The store's count of a shared budget as last read, and what of this process's spending the store
    had confirmed before it was read."""

    slot: int
    nanos: int
    unknown: int
    own_nanos: int
    own_unknown: int


class SharedBudget:
    """Where a budget's spending is counted for every process that names it (see the module's text).

    Args:
        name: the budget's name in the store (`[budget] shared`).
        per: "total" or "day".
        sink: starts `Budget.flush` on an event loop (called from whatever thread recorded a cost, only
            when no flush is running).
        clock: the router's clock (its monotonic time spaces the readings; its wall time names the day).
    """

    def __init__(self, name: str, per: str, sink: Callable[[], None], clock: Clock) -> None:
        if per not in BUDGET_PER:
            raise ValueError(f"per must be one of {', '.join(BUDGET_PER)}, not {per!r}")
        self.name, self.per, self.sink, self.clock = name, per, sink, clock
        self.window = _WINDOWS[per]
        self.usd_key, self.unknown_key = f"{BUDGET_PREFIX}{name}|usd", f"{BUDGET_PREFIX}{name}|unknown"
        self._read_at = -math.inf
        self.reading: _Reading | None = None
        #: readings asked of the store so far (what a test counts)
        self.reads = 0

    def slot(self, now: float) -> int:
        """The window `now` falls in (always 0 for "total")."""
        return 0 if math.isinf(self.window.seconds) else int(now // self.window.seconds)

    def due(self) -> bool:
        return self.clock.monotonic() >= self._read_at + SHARED_BUDGET_READ_S

    @property
    def label(self) -> str:
        """`shared budget 'team' (today)`: how the budget is named in texts."""
        return f"shared budget {self.name!r}" + (" (today)" if self.per == "day" else "")


class Budget:
    """The session's spending limit and what has been spent against it (by this process, or by every
    process that shares it: `share`).

    Args:
        limit_usd: the limit in dollars; None for no limit (spending is still counted).
        on_budget: "stop" (refuse a call whose first choice does not fit) or "cheapest" (move to the
            cheapest candidate whose estimate fits what is left).
        strict: skip candidates with an unknown price while a limit is set.
    """

    def __init__(self, limit_usd: float | Decimal | None = None, *, on_budget: str = "stop", strict: bool = False) -> None:
        if on_budget not in ON_BUDGET:
            raise ValueError(f"on_budget must be one of {', '.join(ON_BUDGET)}, not {on_budget!r}")
        if limit_usd is not None and Decimal(str(limit_usd)) < 0:
            raise ValueError("a budget cannot be negative")
        self._lock = threading.Lock()
        self.limit: Decimal | None = None if limit_usd is None else Decimal(str(limit_usd))
        self.on_budget = on_budget
        self.strict = strict
        #: where the spending is counted for every process that names the budget (None: this process only)
        self.shared: SharedBudget | None = None
        self._spent = Decimal(0)
        self._unknown = 0
        # a shared budget's own spending: in all (nano-dollars, unknown calls), in the current window, not
        # yet sent to the store, and confirmed by it; and whether a flush is running
        self._nanos = self._unknowns = 0
        self._slot, self._slot_nanos, self._slot_unknowns = 0, 0, 0
        self._unsent_nanos = self._unsent_unknowns = 0
        self._confirmed_nanos = self._confirmed_unknowns = 0
        self._flushing = False

    def set_limit(self, limit_usd: float | Decimal | None) -> None:
        """Change the limit (None: no limit); what was spent stays."""
        if limit_usd is not None and Decimal(str(limit_usd)) < 0:
            raise ValueError("a budget cannot be negative")
        self.limit = None if limit_usd is None else Decimal(str(limit_usd))

    def share(self, shared: SharedBudget | None) -> None:
        """Count the spending for every process that names the same budget (None: this process only). A
        change of name or window starts this process's count of it afresh."""
        with self._lock:
            old = self.shared
            if shared is not None and old is not None and (old.name, old.per) == (shared.name, shared.per):
                shared.reading, shared.reads = old.reading, old.reads
            else:
                self._forget_own()
            self.shared = shared

    def _forget_own(self) -> None:
        """Start this process's count of a shared budget afresh (what is unsent is dropped with it)."""
        self._nanos = self._unknowns = self._slot_nanos = self._slot_unknowns = 0
        self._unsent_nanos = self._unsent_unknowns = self._confirmed_nanos = self._confirmed_unknowns = 0

    @property
    def spent(self) -> Decimal:
        """What has been spent at known prices: by this process in this session; with a shared budget,
        by every process that shares it in the window of now (see the module's text)."""
        shared = self.shared
        if shared is None:
            return self._spent
        return Decimal(self._counted(shared)[0]) / NANO

    @property
    def unknown_calls(self) -> int:
        """The attempts charged at an unknown price (likewise this process's, or every sharer's)."""
        shared = self.shared
        return self._unknown if shared is None else self._counted(shared)[1]

    def _counted(self, shared: SharedBudget) -> tuple[int, int]:
        """A shared budget's (nano-dollars, unknown calls) in the window of now."""
        slot = shared.slot(shared.clock.time())
        nanos, unknowns = (self._slot_nanos, self._slot_unknowns) if self._slot == slot else (0, 0)
        r = shared.reading
        if r is not None and r.slot == slot:
            nanos = max(nanos, r.nanos + self._nanos - r.own_nanos)
            unknowns = max(unknowns, r.unknown + self._unknowns - r.own_unknown)
        return nanos, unknowns

    @property
    def unsent(self) -> bool:
        """Is some of this process's spending not yet confirmed by the store (or a flush running)?"""
        return bool(self._unsent_nanos or self._unsent_unknowns or self._flushing)

    @property
    def remaining(self) -> Decimal | None:
        """What is left of the limit after the known costs (None: no limit)."""
        return None if self.limit is None else self.limit - self.spent

    def record(self, attempts: Iterable[Attempt]) -> None:
        """Count one call's charged attempts (with a shared budget: in the store too, behind the call)."""
        shared = self.shared
        cost, unknown = Decimal(0), 0
        for a in attempts:
            if a.cost_usd is not None:
                cost += a.cost_usd
            elif a.usage is not None or a.action is Action.SERVED or not a.cost_known:
                unknown += 1
        if not cost and not unknown:
            return
        with self._lock:
            self._spent += cost
            self._unknown += unknown
            if shared is None:
                return
            nanos = int((cost * NANO).to_integral_value(ROUND_CEILING))  # (never counted short)
            slot = shared.slot(shared.clock.time())
            if slot != self._slot:
                self._slot, self._slot_nanos, self._slot_unknowns = slot, 0, 0
            self._nanos += nanos
            self._unknowns += unknown
            self._slot_nanos += nanos
            self._slot_unknowns += unknown
            self._unsent_nanos += nanos
            self._unsent_unknowns += unknown
            start, self._flushing = not self._flushing, True
        if start:
            shared.sink()

    async def flush(self, store: SharedState) -> None:
        """Write what this process spends to the store behind its calls, one write per
        `SHARED_BUDGET_GATHER_S` with everything spent meanwhile, until nothing is left unsent (started by
        `record` through the sink: it owns the flush while it runs)."""
        try:
            while True:
                await asyncio.sleep(SHARED_BUDGET_GATHER_S)
                if not await self._write(store, last=True):
                    return
        except BaseException:  # (a cancel; a store without its guard): what was not written stays unsent
            with self._lock:
                self._flushing = False
            raise

    async def drain(self, store: SharedState) -> None:
        """Write what is unsent now, without waiting (status, sync_budget, close). A write a flush has out
        is not waited for: until the store confirms it, a reading adds it (so nothing is counted short)."""
        await self._write(store, last=False)

    async def _write(self, store: SharedState, *, last: bool) -> bool:
        """One write of what is unsent; False when there was nothing (and, for the flush, `last`: it ends)."""
        shared = self.shared
        with self._lock:
            nanos, unknowns = self._unsent_nanos, self._unsent_unknowns
            if shared is None or not (nanos or unknowns):
                if last:
                    self._flushing = False
                return False
            self._unsent_nanos = self._unsent_unknowns = 0
        writes: list[Write] = []
        if nanos:
            writes.append(AddCount(shared.usd_key, float(nanos), shared.window))
        if unknowns:
            writes.append(AddCount(shared.unknown_key, float(unknowns), shared.window))
        try:
            await store.apply(writes)
        except BaseException:
            with self._lock:
                self._unsent_nanos += nanos
                self._unsent_unknowns += unknowns
            raise
        with self._lock:
            self._confirmed_nanos += nanos
            self._confirmed_unknowns += unknowns
        return True

    async def refresh(self, store: SharedState, *, force: bool = False) -> None:
        """Read a shared budget's count in the store (unless read less than `SHARED_BUDGET_READ_S` ago).
        A store that is down keeps the last reading: what it answers meanwhile is this process's alone."""
        shared = self.shared
        if shared is None or not (force or shared.due()):
            return
        shared._read_at = shared.clock.monotonic()  # before the await: the calls meanwhile do not read again
        # what the store had confirmed before the read: the rest is added to the reading (counted twice at
        # worst, if it lands while the count is read; never missed)
        with self._lock:
            own_nanos, own_unknowns = self._confirmed_nanos, self._confirmed_unknowns
        if store.mode != "shared":  # (a verb that finds it back starts the write-back of what was kept)
            return
        try:
            nanos = await store.count(shared.usd_key, shared.window)
            unknowns = await store.count(shared.unknown_key, shared.window)
        except StoreDown:
            return
        if store.mode != "shared":
            return
        shared.reads += 1
        shared.reading = _Reading(shared.slot(shared.clock.time()), int(nanos), int(unknowns), own_nanos, own_unknowns)

    def check(self, estimate: Decimal | None) -> str | None:
        """Why a candidate with this estimated cost may not be sent now, or None."""
        left = self.remaining
        if left is None:
            return None
        if estimate is None:
            return f"{self.label}: unknown price (the budget is strict)" if self.strict else None
        if estimate > left:
            return f"{self.label}: estimated ${estimate:.6f} > ${max(left, Decimal(0)):.6f} left"
        return None

    @property
    def label(self) -> str:
        """`session budget`, or `shared budget 'team' (today)` (every reason of `check` begins with it)."""
        return "session budget" if self.shared is None else self.shared.label

    def text(self) -> str:
        """`spent $0.012300 + 2 calls at unknown price`, with the limit when one is set."""
        shared = self.shared
        if shared is None:
            spent_usd, unknown = self._spent, self._unknown
        else:  # (read once for both)
            nanos, unknown = self._counted(shared)
            spent_usd = Decimal(nanos) / NANO
        spent = f"${spent_usd:.6f}"
        if unknown:
            spent += f" + {unknown} call{'s' if unknown != 1 else ''} at unknown price"
        if self.limit is None:
            return f"spent {spent} (no budget)"
        return f"spent {spent} of ${self.limit:.6f} ({self.on_budget}{', strict' if self.strict else ''})"

    def reset(self) -> None:
        """Forget what this process spent (the limit stays). A shared budget's count is the store's, and
        stays: it is read again before the next call, and starts again with its window (`per = "day"`) or
        under a new name."""
        with self._lock:
            self._spent = Decimal(0)
            self._unknown = 0
            if self.shared is not None:
                self.shared.reading, self.shared._read_at = None, -math.inf

    def __repr__(self) -> str:
        return f"Budget({self.text()})" if self.shared is None else f"Budget({self.label}: {self.text()})"

"""Leases: the takes of a process's next few calls of one candidate, taken from the shared buckets at once
and spent here, so that a busy account's calls cost no store round trip each.

    admission asked of the store ── takes this call's share + k calls' more ──> the lease (k calls)
    the next k calls ── taken from the lease, here (no round trip) ──> sent
    the lease down to half ── k calls' more asked beside the calls (a task: no call waits for it)
    what is left after `LEASE_TTL_S` ── given back to the buckets (one write, sent behind the calls)

Exact as the store is: a lease's units were taken from the shared buckets before any call spends them, so
every process together never sends more than the limits admit; a unit unspent goes back (never more than
was taken, and never above a bucket's capacity). What a lease costs the others: its units are out of the
buckets while it lasts, so a lease holds at most `LEASE_S` seconds of a bucket's refill (an account paced
below `MIN_LEASE / LEASE_S` requests a second is never leased: its calls each ask the store, and they are
few), and only about a lease's time of calls at the rate this process sent them lately (a call now and
then is not leased for). A hold or a breaker another process sets is heard by the next top-up (within a
lease of calls, about `2 * DEMAND_S`): the lease is given back and the calls ask the store again; a
candidate or account that met a 429, a hold or a breaker here is never leased for again in this process
(`Pacer.watching`): each of its calls asks.
"""

from __future__ import annotations

import math
from typing import Sequence

from .shared import AdjustBucket, BucketSpec

__all__ = ["DEMAND_S", "LEASE_S", "LEASE_TTL_S", "MAX_LEASE", "MIN_LEASE", "Lease", "lease_size"]

#: a lease holds at most this many seconds of each bucket's refill
LEASE_S = 0.02
#: a lease covers at most this many calls
MAX_LEASE = 512
#: a lease for fewer calls is not worth taking (the call asks the store for itself)
MIN_LEASE = 2
#: what a lease holds unspent this long after its last fill goes back to the buckets (a process that
#: stopped calling, or stalled, holds no takes longer)
LEASE_TTL_S = 0.25
#: the calls of a candidate are counted over windows this long; a lease holds twice that many (it is
#: topped up at half: its rest lasts while the top-up is asked)
DEMAND_S = 0.05
#: a bucket that refused a lease is not leased from again for this long (it is near its limit)
LEASE_PAUSE_S = 0.05


def lease_size(specs: Sequence[BucketSpec], taken: Sequence[float], demand: int) -> int:
    """How many calls like `specs` a lease may take beside `taken` (what the admission takes already):
    within `LEASE_S` of each bucket's refill, what each bucket holds for the lane, the calls of a lease's
    time at the rate sent lately (`demand`, per `DEMAND_S`: it is topped up at half, so its rest lasts while
    the top-up is asked, a file busy with another writer included) and `MAX_LEASE`; 0 when fewer than
    `MIN_LEASE`."""
    k = float(min(2 * demand, MAX_LEASE))
    for spec, total in zip(specs, taken):
        if spec.amount <= 0:
            return 0
        room = min(spec.rate * LEASE_S, spec.capacity * (1.0 - spec.reserve) - total)
        k = min(k, math.floor(room / spec.amount + 1e-9))
    return int(k) if k >= MIN_LEASE else 0


class Lease:
    """The units this process holds of an account's buckets for the calls of one candidate in one lane,
    and how many calls it sent lately (the size of its next lease).

    Args:
        account: the account key (the buckets' owner in the store).
    """

    __slots__ = ("account", "specs", "left", "filled", "topping", "until", "paused_until", "window_start", "count", "last_count",
                 "generation")

    def __init__(self, account: str) -> None:
        self.account = account
        #: the buckets the units were taken from (their numbers, to give them back), and what is left of each
        self.specs: tuple[BucketSpec, ...] = ()
        self.left: list[float] = []
        #: what the last fill added to each (the lease is topped up when it is down to half of that), and
        #: whether a top-up is being asked for
        self.filled: list[float] = []
        self.topping = False
        #: when the units stop being spent (the router clock's monotonic seconds)
        self.until = -math.inf
        self.paused_until = -math.inf
        self.window_start = -math.inf
        self.count = 0
        self.last_count = 0
        #: bumped at each fill and each return: a timer set for an older fill does nothing
        self.generation = 0

    def note(self, now: float) -> None:
        """Count one call of this candidate and lane (leased or asked) in the current window."""
        if now - self.window_start >= DEMAND_S:
            self.last_count = self.count if now - self.window_start < 2 * DEMAND_S else 0
            self.window_start, self.count = now, 0
        self.count += 1

    @property
    def demand(self) -> int:
        """The calls sent in the last window or this one (whichever had more)."""
        return max(self.count, self.last_count)

    def spend(self, specs: Sequence[BucketSpec], now: float) -> int:
        """Count one call (`note`) and spend its takes from the lease (`take`): what `take` says."""
        if now - self.window_start >= DEMAND_S:
            self.note(now)
        else:
            self.count += 1
        return self.take(specs, now)

    def take(self, specs: Sequence[BucketSpec], now: float) -> int:
        """Spend one call's takes (`specs`' amounts) from the lease, if it holds them for these buckets:
        0 when it does not, 1 when taken, 2 when taken and the lease is down to half of its last fill (time
        to ask for more, before it runs dry)."""
        left = self.left
        if now >= self.until or len(specs) != len(left):
            return 0
        if specs is not self.specs:  # (the same tuple, nearly always: the pacer keeps each call's specs)
            for spec, held in zip(specs, self.specs):
                if spec.scope != held.scope or spec.name != held.name:
                    return 0
        for i, spec in enumerate(specs):
            if spec.amount > left[i] + 1e-9:
                return 0
        taken = 1
        filled = self.filled
        for i, spec in enumerate(specs):
            left[i] -= spec.amount
            if left[i] * 2 < filled[i]:
                taken = 2
        return taken

    def fill(self, specs: Sequence[BucketSpec], amounts: Sequence[float], until: float) -> list[AdjustBucket]:
        """Hold `amounts` more of these buckets until `until`; returns what an older lease on other buckets
        held (to give back)."""
        back: list[AdjustBucket] = []
        same = len(specs) == len(self.specs) and all(a.field == b.field for a, b in zip(specs, self.specs))
        if same:
            self.left = [have + amount for have, amount in zip(self.left, amounts)]
        else:
            back = self.give_back()
            self.left = list(amounts)
        self.specs = tuple(specs)
        self.filled = list(amounts)
        self.until = until
        self.generation += 1
        return back

    def give_back(self) -> list[AdjustBucket]:
        """Empty the lease: what it held unspent, as writes that put it back in the buckets."""
        back = [AdjustBucket(self.account, _with_amount(spec, have)) for spec, have in zip(self.specs, self.left) if have > 1e-9]
        self.drop()
        return back

    def drop(self) -> None:
        """Empty the lease without giving anything back (a 429 emptied the buckets anyway)."""
        self.specs, self.left, self.filled, self.until = (), [], [], -math.inf
        self.generation += 1

    def held(self, field: str) -> float:
        """What the lease holds unspent of one bucket."""
        return sum(have for spec, have in zip(self.specs, self.left) if spec.field == field)


def _with_amount(spec: BucketSpec, amount: float) -> BucketSpec:
    return BucketSpec(spec.scope, spec.name, spec.rate, spec.capacity, spec.initial, amount, spec.reserve)

"""Pacing: every call on an account whose limits are known is admitted by the shared store before it is
sent, so that the kernels and machines sharing an account share its limits exactly.

    config quota (per account)  ─┐                       ┌─ admitted: send, then settle (one write round trip:
                                 ├─> BucketSpecs ─> admit │   the slot back, the token estimate corrected, the
    rate-limit headers (per      │   (one round trip:     │   headers' remaining, a 429 emptying the buckets
    candidate, as replies come) ─┘   holds, breaker,      │   for everyone, the holds met, the counts)
                                     buckets, a slot)     └─ refused: skip the candidate until `wait_s` passes

The buckets live in the store (`shared.SharedState`): one level per bucket, refilled at the limit's rate,
taken from atomically by every process. Their numbers (`BucketSpec`) come from here with every call: the
configured `quota` of the account wins; otherwise the limits a candidate's rate-limit headers reported,
per minute unless several readings agree that the reset is further away than a minute can be.

An account with no known limits (no quota, no headers, never limited, no concurrency limit) is not asked
about: it costs no store round trip. Under load the round trips are shared: the admissions of one
candidate asked in the same turn of the event loop go as one (`_Group`), and the writes of the calls that
end well are merged and sent behind them (`WriteBehind`). A batch's first request to such a candidate finds out its limits
before the rest follow (`LEARNING`).

Two lanes share each bucket: "interactive" (a cell, `complete`) and "batch" (`map`). A requests bucket
holds `INTERACTIVE_REQUESTS` more than a batch may use (the reserve), and a batch's request takes a little
more than one (`reserved_share`), so a cell's call finds room at once while a batch saturates the account,
and the batch slows down by what the cell took.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..._core import Clock, ErrorKind, ProviderFailure, RateLimits
from ..._core.clock import SYSTEM_CLOCK
from ..._core.text import span
from ..model import Config
from ..requests import Pacing
from ..types import Candidate
from .health import Hold
from .lease import LEASE_PAUSE_S, LEASE_TTL_S, Lease, lease_size
from .shared import (
    SLOT_RECHECK_S,
    AddCount,
    AdjustBucket,
    Admission,
    AdmitRequest,
    BucketSpec,
    BreakerSuccess,
    EmptyBuckets,
    ExtendHold,
    Lane,
    LowerBucket,
    ReleaseSlot,
    SharedState,
    SlotRequest,
    StoreDown,
    Window,
    Write,
)

MINUTE_S = 60.0
DAY_S = 86400.0
#: a minute bucket holds at most this many seconds of refill (jitter in when callers come back is absorbed by it)
BURST_S = 1.0
#: the share of a limit the pacer aims at: our clock and the provider's see each request at slightly
#: different moments, so pacing at exactly the limit would meet an occasional 429
PACING_MARGIN = 0.99
#: the share of a minute limit's slack (the limit less what the pacer sends in a window at its rate) that a
#: bucket may hold as a burst; the rest of the slack absorbs jitter. A token bucket admits at most its burst
#: plus rate x window in any window, so a burst within the slack keeps every sliding window of the provider
#: within the limit, even when many callers come back together after a pause
BURST_SLACK_SHARE = 0.5
#: what each requests bucket keeps for the interactive lane: a cell's call never waits behind a batch
INTERACTIVE_REQUESTS = 1.0
#: the share of a tokens bucket kept for the interactive lane
INTERACTIVE_TOKEN_SHARE = 0.2
#: a batch's request costs 1 / (1 - share) of a request, share = the reserve over the limit, at most this
MAX_RESERVED_SHARE = 0.05
#: a header is read as a per-day limit only after this many readings agree (one reading never decides)
DAY_EVIDENCE_READINGS = 3
#: a per-minute window never reports its reset further away than this (a minute, and slack for clocks)
MINUTE_RESET_MAX_S = 65.0
#: the shortest wait the pacer asks for (a shorter one may vanish in the rounding of epoch seconds)
MIN_WAIT_S = 0.001
#: how soon a candidate whose first request is finding out its limits is looked at again
RECHECK_S = 0.02
#: a paced call waits at most this long for a candidate to free up before it fails as usual
MAX_WAIT_S = 120.0
#: a concurrency slot whose holder never gave it back heals after this long
SLOT_TTL_S = 300.0
#: a half-open breaker's probe keeps the others out this long if its holder never reports
PROBE_TTL_S = 60.0
#: the prefix of the skip reason (the loop and the batch know a paced skip by it)
PACED = "paced"
#: the skip reason of a candidate whose first request is on the wire (a batch waits behind it)
LEARNING = f"{PACED}: finding out its limits"

#: the store's counter of requests sent on an account (`sent:ACCOUNT`, never reset)
SENT_PREFIX = "sent:"
#: the store's usage counters of a quota account (`usage:ACCOUNT|requests`, per calendar minute and day)
USAGE_PREFIX = "usage:"


@dataclass(frozen=True)
class Limit:
    """One limit an account or candidate is paced by: `limit` of `what` per `window_s`, kept under `scope`
    (the account key for a configured quota, the candidate key for what its headers said)."""

    scope: str
    what: str  # "requests" | "tokens"
    window_s: float
    limit: float
    #: what the provider said was left when this limit was learned (a header's remaining): a bucket new to
    #: the store starts there; None (a configured quota) starts a minute bucket at the interactive reserve
    start: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.what}/{self.window_s:g}"

    def describe(self) -> str:
        per = "min" if self.window_s < DAY_S else "day"
        return f"{self.limit:g} {self.what}/{per}"

    def spec(self, margin: float, amount: float, lane: Lane) -> BucketSpec:
        """The bucket this limit is, taking `amount` (a request, or the call's tokens) in `lane`.

        A minute bucket is sized so that what it admits in any window stays within the limit, as a provider's
        sliding window counts it: at most its burst (`capacity` less the reserve) plus `rate` x window. The
        burst is the smaller of `BURST_S` of refill and `BURST_SLACK_SHARE` of the slack the margin leaves,
        and never less than one take (takes at the rate with one in hand: 1 + margin x limit / take of them
        in a window, fewer than limit + 1). A day bucket holds the day's allowance."""
        paced = max(self.limit * margin / self.window_s, 1e-9)
        # a batch's take costs a little more, so that it leaves the reserve's refill to interactive calls
        batch = amount / (1.0 - self.reserved_share)
        if lane == "batch":
            amount = batch
        tokens_keep = INTERACTIVE_TOKEN_SHARE if self.what == "tokens" else 0.0
        if self.window_s >= DAY_S:
            base, rate = max(self.limit, batch, 1.0), paced
        else:
            room = self.limit * (1.0 - margin) * BURST_SLACK_SHARE
            room = room / (1.0 + tokens_keep) if self.what == "tokens" else room - INTERACTIVE_REQUESTS
            base, rate = max(min(paced * BURST_S, room), batch, 1.0), paced
        # the bucket holds at least one batch take above the reserve (a take larger than a burst, tokens of
        # a long prompt, waits for a full bucket and leaves it in debt), and the reserve on top
        keep = INTERACTIVE_REQUESTS if self.what == "requests" else base * tokens_keep
        capacity = base + keep
        # a bucket new to the store starts with the reserve only (a minute bucket) or what a header said was
        # left: the provider may have counted other users' requests in its window (an account in steady use
        # elsewhere), which no store of ours has seen, so the first batch take waits one refill, 1 / rate,
        # rather than meeting a 429. The store keeps a new bucket from its first ask, taken or not, so it fills
        if self.start is not None:
            initial = max(self.start, 0.0)
        elif self.window_s < DAY_S:
            initial = keep
        else:
            initial = capacity
        return BucketSpec(self.scope, self.name, rate, capacity, min(initial, capacity), amount, keep / capacity)

    @property
    def reserved_share(self) -> float:
        """The share of the limit a batch leaves to interactive calls when it saturates the account."""
        return min(MAX_RESERVED_SHARE, INTERACTIVE_REQUESTS / max(self.limit, 1.0))


class WindowGuess:
    """Which window a header's limit counts: per minute until `DAY_EVIDENCE_READINGS` readings have put the
    reset further away than a minute window ever does. A header says the limit and what remains, never the
    window; a reset an hour away after one request (a per-day limit) and a reset 59 s away on a busy minute
    (a sliding minute whose reset is the time until it is empty) look alike in one reading, so one never
    decides, and nothing but long resets ever makes a limit per day."""

    __slots__ = ("long_resets", "window_s")

    def __init__(self) -> None:
        self.long_resets = 0
        self.window_s = MINUTE_S

    def read(self, reset_at: float | None, now: float) -> float:
        """Count one reading (its reset time) and return the window it now points to."""
        if reset_at is not None and reset_at - now > MINUTE_RESET_MAX_S:
            self.long_resets += 1
            if self.long_resets >= DAY_EVIDENCE_READINGS:
                self.window_s = DAY_S
        return self.window_s


@dataclass(frozen=True)
class Lanes:
    """How a call is paced (`CallRequest.pacer`): its lane, the longest wait for headroom, and a limit on
    calls in flight per account (`map`'s `account_concurrency`: a number for all, or one per account key)."""

    lane: Lane = "batch"
    max_wait_s: float = MAX_WAIT_S
    account_concurrency: int | Mapping[str, int] | None = None

    def concurrency(self, account_key: str) -> int | None:
        limit = self.account_concurrency
        if limit is None or isinstance(limit, int):  # (first: an ABC's isinstance is slow, and asked per call)
            return limit
        if isinstance(limit, Mapping):
            return limit.get(account_key)
        return limit


#: how an interactive call (no `pacer` on its request) is paced
INTERACTIVE = Lanes("interactive")


@dataclass
class Ticket:
    """What an admission took for one attempt, given back or corrected when the attempt settles."""

    c: Candidate
    tokens: int
    lane: Lane
    specs: tuple[BucketSpec, ...]
    limits: tuple[Limit, ...]
    slot: str | None = None
    probe: bool = False
    #: the store admitted it (False: this process decided alone: nothing was known of the candidate's
    #: limits, a batch's first request finding them out; or a store without its guard was down)
    shared: bool = True


class _Group:
    """Admissions of one candidate and lane asked in one turn of the event loop: asked of the store as one,
    their takes added up, as long as the sum stays within what each bucket holds for the lane."""

    def __init__(self, specs: tuple[BucketSpec, ...], answer: "asyncio.Future[Admission | None]") -> None:
        self.specs = specs
        self.amounts = [spec.amount for spec in specs]
        self.size = 1
        self.answer = answer
        #: the call that was to ask was cancelled first: each asks for itself
        self.abandoned = False

    def fits(self, specs: tuple[BucketSpec, ...]) -> bool:
        """Would one more take keep the sum within every bucket (less the reserve a batch leaves)?"""
        if len(specs) != len(self.specs) or any(a.field != b.field for a, b in zip(specs, self.specs)):
            return False
        return all(total + spec.amount <= spec.capacity * (1.0 - spec.reserve) + 1e-9
                   for total, spec in zip(self.amounts, specs))

    def join(self, specs: tuple[BucketSpec, ...]) -> int:
        self.amounts = [total + spec.amount for total, spec in zip(self.amounts, specs)]
        self.size += 1
        return self.size - 1

    def total(self) -> tuple[BucketSpec, ...]:
        return tuple(_with_amount(spec, amount) for spec, amount in zip(self.specs, self.amounts))


class WriteBehind:
    """The writes of calls that ended well (a slot back, counts, a corrected estimate), gathered from every
    call that ends in one turn of the event loop and sent together: one round trip for all of them, off the
    calls' path. (A failure's writes, a hold or a 429's empty buckets, are sent at once instead.)

    Under load the gathering spans more than a turn: a round trip goes at most every `FLUSH_S` (the first
    after a quiet spell at once), so that calls ending one after another (concurrency 1) share one too.
    What must not wait goes at the next turn: a slot given back (another call may be waiting for it), and a
    reply's remaining count (`LowerBucket`: it is about the moment the reply came, and gathered with others
    it would lower the bucket for refills that came since). `drain` sends what waits."""

    #: the least time between two round trips of written-behind writes
    FLUSH_S = 0.025

    def __init__(self, pacer: "Pacer", loop: asyncio.AbstractEventLoop) -> None:
        self.pacer = pacer
        self._loop_ref = weakref.ref(loop)
        self.pending: list[Write] = []
        self.task: asyncio.Task[None] | None = None
        #: when the last round trip went (the loop's clock), what wakes the flush waiting for its time, and
        #: whether what waits must go at the next turn (a slot given back, a drain)
        self._last = -math.inf
        self._wake: asyncio.Future[None] | None = None
        self._urgent = False
        #: calls served and their tokens per account, counted here (`Pacer.served`): written as counts
        self.counted: dict[str, list[float]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop it writes on (None once that loop is gone)."""
        return self._loop_ref()

    def add(self, writes: Sequence[Write]) -> None:
        self.pending.extend(writes)
        for w in writes:
            if type(w) in _URGENT:
                self.now()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._flush())

    def count(self, account: str, tokens: float) -> None:
        """Count one request served on `account` (and its tokens): added up here, written as counts."""
        counted = self.counted.get(account)
        if counted is None:
            self.counted[account] = [1.0, tokens]
        else:
            counted[0] += 1.0
            counted[1] += tokens
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._flush())

    def now(self) -> None:
        """Send what waits at the next turn, without waiting for `FLUSH_S`."""
        self._urgent = True
        if self._wake is not None:
            _wake_up(self._wake)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                await self._gather(loop)
                await self._write(self.pending)
            except asyncio.CancelledError:  # the loop ends: what waits is written before it goes
                while self.pending or self.counted:
                    await self._write(self.pending)
                raise
        finally:
            self.task = None
        if self.pending or self.counted:  # added while the round trip was out (a store over the network)
            self.task = loop.create_task(self._flush())

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait while the writes of other calls come in: this turn, or until `FLUSH_S` after the last
        round trip."""
        wait = self._last + self.FLUSH_S - loop.time()
        if wait <= 0 or self._urgent:
            await asyncio.sleep(0)  # the other calls ending in this turn add theirs first
            return
        self._wake = loop.create_future()
        timer = loop.call_later(wait, _wake_up, self._wake)
        try:
            await self._wake
        finally:
            timer.cancel()
            self._wake = None

    async def _write(self, pending: list[Write]) -> None:
        """One round trip with what waits now."""
        self._last = asyncio.get_running_loop().time()
        self._urgent = False
        counted, self.counted = self.counted, {}
        for account, (calls, tokens) in counted.items():
            pending += self.pacer.counts(account, calls, tokens)
        batch, self.pending = _merged(pending), []
        try:
            await self.pacer.shared.apply(batch)
        except StoreDown as exc:  # a store without its guard: the writes are lost, and it says so
            self.pacer.store_error = str(exc)

    async def drain(self) -> None:
        """Wait until everything added so far is written."""
        while self.task is not None:
            self.now()
            await asyncio.shield(self.task)


#: the writes that go at the next turn rather than wait for `WriteBehind.FLUSH_S`
_URGENT = frozenset({ReleaseSlot, LowerBucket})


def _wake_up(waiting: "asyncio.Future[None]") -> None:
    if not waiting.done():
        waiting.set_result(None)


class Pacer:
    """The router's pacing of every call, over the shared store's admission.

    Args:
        config: the router's configuration (the accounts' `quota` tables are their limits).
        shared: the state every process shares (`state.shared.SharedState`).
        clock: the router's clock (a reply is learned from at the time it arrives).
        margin: the share of each limit to pace at.

    How long a paced call may wait for headroom is its lane's (`Lanes.max_wait_s`).
    """

    def __init__(self, config: Config, shared: SharedState, *, clock: Clock = SYSTEM_CLOCK, margin: float = PACING_MARGIN) -> None:
        self.shared = shared
        self.clock = clock
        self.margin = margin
        self._lock = threading.Lock()
        #: header-derived limits per candidate key: (what) -> (limit, window)
        self._learned: dict[str, dict[str, tuple[float, float]]] = {}
        self._guesses: dict[tuple[str, str], WindowGuess] = {}
        #: the last remaining count a header gave per (candidate key, what): where a new bucket starts
        self._remaining: dict[tuple[str, str], float] = {}
        self._limits: dict[str, tuple[Limit, ...]] = {}
        #: accounts and candidates asked about though no limit is known: they met a 429, a hold or a breaker
        self._watched: set[str] = set()
        #: (candidate key, lane) -> (until, why): the store said wait; asked again only after `until`
        self._blocked: dict[tuple[str, str], tuple[float, str]] = {}
        #: candidates that have answered at least once (before that, one batch request at a time probes them)
        self._answered: set[str] = set()
        #: candidates whose first batch take here was refused by a bucket (it waits one refill: `LEARNING`)
        self._first_takes: set[str] = set()
        self._in_flight: dict[str, int] = {}
        #: requests sent and 429s met, per candidate key (what the batch summary shows)
        self.sent: dict[str, int] = {}
        #: the same requests per account key (the quota skip check reads it per call: no sum over candidates)
        self.sent_accounts: dict[str, int] = {}
        self.limited: dict[str, int] = {}
        #: how often the store said wait, per lane ("interactive", "batch")
        self.refused: dict[str, int] = {}
        self._behind: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBehind]" = weakref.WeakKeyDictionary()
        #: the last loop's (the one asked of nearly always; a weak dictionary's lookup costs more)
        self._last_behind: WriteBehind | None = None
        #: admissions being gathered this turn of the event loop, per (loop, (candidate key, lane))
        self._joins: dict[tuple[asyncio.AbstractEventLoop, tuple[str, str]], _Group] = {}
        #: False: no leases, every call asks the store (what one round trip costs is measured so)
        self.leasing = True
        #: the takes held here for the next calls, per (candidate key, lane) (`lease.Lease`), and the top-ups
        #: being asked for
        self._leases: dict[tuple[str, str], Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: each call's buckets, per (candidate key, lane, tokens), as long as the limits they come from hold
        self._specs: dict[tuple[str, str, int], tuple[tuple[Limit, ...], tuple[BucketSpec, ...]]] = {}
        #: what the store said when it last failed to answer (None: it answers)
        self.store_error: str | None = None
        #: the hold the store's last refusal named (another process's cooldown, kept here too by the loop)
        self.last_hold: Hold | None = None
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        """Use a new configuration (its quotas); learned limits are kept."""
        self.config = config
        self._quota: dict[str, tuple[Limit, ...]] = {}
        for name, provider in config.providers.items():
            for acc in provider.accounts:
                q = acc.quota
                if q.is_empty():
                    continue
                key = f"{name}#{acc.name}"
                self._quota[key] = tuple(
                    Limit(key, what, window, float(limit))
                    for what, window, limit in (("requests", MINUTE_S, q.requests_per_minute), ("tokens", MINUTE_S, q.tokens_per_minute),
                                                ("requests", DAY_S, q.requests_per_day), ("tokens", DAY_S, q.tokens_per_day))
                    if limit)
        self._limits.clear()
        self._counts: dict[str, tuple[AddCount, ...]] = {}
        for lease in self._leases.values():  # spent no more under the old numbers: given back at the next call
            lease.until = -math.inf

    # ---- what a candidate is paced by ----------------------------------------------------------

    def limits_of(self, c: Candidate) -> tuple[Limit, ...]:
        """The limits `c` is paced by: its account's quota, and what its headers said of the rest (the
        configured quota wins for a metric it names)."""
        hit = self._limits.get(c.key)
        if hit is not None:
            return hit
        with self._lock:
            quota = self._quota.get(c.account_key, ())
            covered = {q.what for q in quota}
            learned = tuple(Limit(c.key, what, window, limit, self._remaining.get((c.key, what)))
                            for what, (limit, window) in self._learned.get(c.key, {}).items() if what not in covered)
            out = self._limits[c.key] = quota + learned
        return out

    def watching(self, c: Candidate, lanes: Pacing) -> bool:
        """Does a call to `c` go through the store's admission? (Known limits, a concurrency limit, or a
        429, hold or breaker met on it; otherwise it costs no round trip.)"""
        return bool(self.limits_of(c)) or c.account_key in self._watched or c.key in self._watched \
            or lanes.concurrency(c.account_key) is not None

    def watch(self, key: str) -> None:
        """Ask the store about this account or candidate from now on (it met a 429, a hold, a breaker)."""
        self._watched.add(key)

    def wanted(self, lane: str) -> bool:
        """Can the skip check say no to a call of this lane now? (Cheap: asked once per decision.)"""
        return lane == "batch" or bool(self._blocked)

    # ---- asked by the skip check (local, no round trip) -----------------------------------------

    def skip(self, c: Candidate, tokens: int, now: float, lane: str = "batch") -> tuple[str, float] | None:
        """The skip check's answer: None, or (reason, until) when the store said wait not long ago, or a
        batch's first request to `c` is still finding out its limits."""
        blocked = self._blocked.get((c.key, lane))
        if blocked is not None:
            until, why = blocked
            if until > now:
                wait = until - now
                if lane == "batch" and c.key in self._first_takes and c.key not in self.sent:
                    return f"{LEARNING} ({why}: its first take waits one refill; next in {wait * 1000:.0f} ms)", until
                return f"{PACED}: no headroom now ({why}; next in {span(wait) if wait >= 1 else f'{wait * 1000:.0f} ms'})", until
            self._blocked.pop((c.key, lane), None)
        if lane == "batch" and c.key not in self._answered and self._in_flight.get(c.key, 0) >= 1 and not self.limits_of(c):
            return f"{LEARNING} (its first request is on the wire)", now + RECHECK_S
        return None

    # ---- admission, before each attempt is sent ------------------------------------------------

    async def admit(self, c: Candidate, tokens: int, lanes: Pacing, now: float) -> Ticket | tuple[str, float]:
        """Admit one attempt of `c`: from its lease when it has one (`leased`), else asked of the store
        (`ask`, one round trip): the Ticket when it may be sent, else (reason, until) and `c` is skipped
        until then in this lane."""
        ticket = self.leased(c, tokens, lanes)
        return ticket if ticket is not None else await self.ask(c, tokens, lanes, now)

    def leased(self, c: Candidate, tokens: int, lanes: Pacing) -> Ticket | None:
        """An attempt of `c` admitted from its lease, here and at once (no round trip, not even a turn of the
        loop): the Ticket, or None when the store must be asked (`ask`). A lease down to half is topped up
        beside the calls."""
        limits = self.limits_of(c)
        key, account = c.key, c.account_key
        if not limits or lanes.concurrency(account) is not None:
            return None
        lane: Lane = "interactive" if lanes.lane == "interactive" else "batch"
        # (`_lease_of`, inlined: once per call)
        if not self.leasing or key in self._watched or account in self._watched:
            return None
        lease = self._leases.get((key, lane))
        if lease is None:
            lease = self._leases[(key, lane)] = Lease(account)
        specs = self._specs_of(key, limits, tokens, lane)
        mono = self.clock.monotonic()
        taken = lease.spend(specs, mono)
        if taken:
            if taken == 2 and not lease.topping and mono >= lease.paused_until:
                self._top_up(c, lane, lease, specs)
            return self._sent(Ticket(c, tokens, lane, specs, limits))
        if lease.specs and mono >= lease.until:  # its time is up: what it holds goes back
            self.write_behind(lease.give_back())
        return None

    async def ask(self, c: Candidate, tokens: int, lanes: Pacing, now: float) -> Ticket | tuple[str, float]:
        """Ask the store for one attempt of `c` (one round trip): the Ticket when it may be sent (its
        buckets taken from), else (reason, until) and `c` is skipped until then in this lane.

        The admissions of one candidate and lane asked in the same turn of the event loop go to the store as
        one (their takes added up, within what the buckets hold), so that many calls at once cost one round
        trip; a joint refusal for want of headroom is asked again one by one. A busy candidate's asking
        call takes the next calls' takes too (a `Lease`, within a sliver of each bucket's refill); those
        calls then cost no round trip."""
        limits = self.limits_of(c)
        lane: Lane = "interactive" if lanes.lane == "interactive" else "batch"
        specs = self._specs_of(c.key, limits, tokens, lane)
        concurrency = lanes.concurrency(c.account_key)
        if concurrency is not None or not specs:  # a slot, or nothing to add up: its own request
            return self._answered_one(c, tokens, lane, specs, limits, concurrency, await self._ask(c, specs, lane, concurrency),
                                      now)
        key = (c.key, lane)
        lease = self._lease_of(c, key)
        loop = asyncio.get_running_loop()
        group = self._joins.get((loop, key))
        if group is not None and group.fits(specs):
            index = group.join(specs)
            answer = await group.answer
            return await self._answered_member(c, tokens, lane, specs, limits, group, index, answer, now)
        group = _Group(specs, loop.create_future())
        self._joins[(loop, key)] = group
        try:
            await asyncio.sleep(0)  # the other calls of this turn join
            if self._joins.get((loop, key)) is group:  # (a full group gave way to a new one already)
                del self._joins[(loop, key)]
            answer = await self._ask_group(c, group, lane, lease)
        except BaseException:  # this call was cancelled: the others ask for themselves
            if self._joins.get((loop, key)) is group:
                del self._joins[(loop, key)]
            group.abandoned = True
            group.answer.set_result(None)
            raise
        group.answer.set_result(answer)
        return await self._answered_member(c, tokens, lane, specs, limits, group, 0, answer, now)

    def _specs_of(self, key: str, limits: tuple[Limit, ...], tokens: int, lane: Lane) -> tuple[BucketSpec, ...]:
        """The buckets a call of `tokens` in `lane` takes from (worked out once per limits, lane and size)."""
        hit = self._specs.get((key, lane, tokens))
        if hit is not None and hit[0] is limits:
            return hit[1]
        specs = tuple(lim.spec(self.margin, 1.0 if lim.what == "requests" else float(tokens), lane) for lim in limits)
        if len(self._specs) >= 4096:
            self._specs.clear()
        self._specs[(key, lane, tokens)] = (limits, specs)
        return specs

    def _lease_of(self, c: Candidate, key: tuple[str, str]) -> Lease | None:
        """The lease of `c` in a lane, None when its calls must each ask the store (it met a 429, a hold or a
        breaker: the store's answer may differ from call to call)."""
        if not self.leasing or c.key in self._watched or c.account_key in self._watched:
            return None
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = Lease(c.account_key)
        return lease

    async def _ask_group(self, c: Candidate, group: _Group, lane: Lane, lease: Lease | None) -> Admission | None:
        """The store's answer to a group's admission, taking a lease's worth more when the candidate is busy
        (what the lease holds then serves the next calls without asking)."""
        total = group.total()
        mono = self.clock.monotonic()
        if lease is None or mono < lease.paused_until or self.shared.mode != "shared":
            return await self._ask(c, total, lane, None)
        k = lease_size(group.specs, group.amounts, lease.demand)
        if not k:
            return await self._ask(c, total, lane, None)
        extra = [spec.amount * k for spec in group.specs]
        answer = await self._ask(c, tuple(_with_amount(s, s.amount + e) for s, e in zip(total, extra)), lane, None)
        if answer is None or answer.local:  # (a local answer's buckets are this process's alone: nothing to lease)
            return answer
        if not answer.admitted:
            if answer.reason != "bucket":
                return answer
            lease.paused_until = mono + LEASE_PAUSE_S  # near the limit: each call asks for itself a while
            return await self._ask(c, total, lane, None)
        if answer.probe:  # a half-open breaker's one probe: the extra goes back
            self.write_behind([AdjustBucket(c.account_key, _with_amount(s, e)) for s, e in zip(group.specs, extra)])
            return answer
        self._filled(lease, group.specs, extra, mono)
        return answer

    def _top_up(self, c: Candidate, lane: Lane, lease: Lease, specs: tuple[BucketSpec, ...]) -> None:
        """Ask for a lease's worth more beside the calls (a task), so that the calls never wait for it."""
        lease.topping = True
        task = asyncio.get_running_loop().create_task(self._topping_up(c, lane, lease, specs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _topping_up(self, c: Candidate, lane: Lane, lease: Lease, specs: tuple[BucketSpec, ...]) -> None:
        try:
            k = lease_size(specs, [0.0] * len(specs), lease.demand)
            if not k or self.shared.mode != "shared":
                return
            extra = [spec.amount * k for spec in specs]
            answer = await self._ask(c, tuple(_with_amount(s, e) for s, e in zip(specs, extra)), lane, None)
            mono = self.clock.monotonic()
            if answer is None or answer.local:
                return
            if not answer.admitted:
                if answer.reason == "bucket":
                    lease.paused_until = mono + LEASE_PAUSE_S  # near the limit: the calls ask for themselves a while
                else:  # a hold or a breaker another process met: the calls ask the store, and hear it, at once
                    self.write_behind(lease.give_back())
                return
            if c.key in self._watched or c.account_key in self._watched:
                return  # a 429 (or a hold) met meanwhile: its calls ask for themselves; the takes go with it
            if answer.probe:  # a half-open breaker's one probe: what was taken goes back
                self.write_behind([AdjustBucket(c.account_key, _with_amount(s, e)) for s, e in zip(specs, extra)])
                return
            self._filled(lease, specs, extra, mono)
        finally:
            lease.topping = False

    def _filled(self, lease: Lease, specs: tuple[BucketSpec, ...], extra: Sequence[float], mono: float) -> None:
        """Put what an admission took beyond its calls in the lease (for `LEASE_TTL_S`)."""
        back = lease.fill(specs, extra, mono + LEASE_TTL_S)
        if back:
            self.write_behind(back)
        asyncio.get_running_loop().call_later(LEASE_TTL_S, self._lease_ended, lease, lease.generation)

    def _lease_ended(self, lease: Lease, generation: int) -> None:
        """A lease's time is up: what it holds unspent goes back to the buckets (unless it was refilled)."""
        if lease.generation == generation and lease.specs:
            self.write_behind(lease.give_back())

    def _end_leases(self, account: str, key: str | None = None, *, give_back: bool = True) -> list[Write]:
        """End the leases on `account` (only `key`'s when given): the writes that give them back, or none
        (`give_back` False: a 429 emptied the buckets, and what the leases held is spent with them)."""
        writes: list[Write] = []
        for (lease_key, _), lease in self._leases.items():
            if lease.account == account and (key is None or lease_key == key) and lease.specs:
                if give_back:
                    writes += lease.give_back()
                else:
                    lease.drop()
        return writes

    async def _ask(self, c: Candidate, specs: tuple[BucketSpec, ...], lane: Lane, concurrency: int | None) -> Admission | None:
        """The store's answer to one admission (None: a store without its guard was down)."""
        request = AdmitRequest(
            account=c.account_key, holds=(c.key, c.account_key), buckets=specs, lane=lane,
            slot=SlotRequest(concurrency, SLOT_TTL_S) if concurrency is not None else None,
            breaker=c.key, probe_ttl_s=PROBE_TTL_S)
        try:
            answer = await self.shared.admit(request)
        except StoreDown as exc:  # a store without its guard: this process decides alone, and says so
            self.store_error = str(exc)
            return None
        self.store_error = None
        return answer

    async def _answered_member(self, c: Candidate, tokens: int, lane: Lane, specs: tuple[BucketSpec, ...],
                               limits: tuple[Limit, ...], group: _Group, index: int, answer: Admission | None,
                               now: float) -> Ticket | tuple[str, float]:
        """One call's part of a joint answer."""
        if group.abandoned:
            answer = await self._ask(c, specs, lane, None)
        if answer is not None and answer.admitted and answer.probe and index > 0:
            # a half-open breaker lets one probe through: the leader's; the others' takes go back
            self.write_behind([AdjustBucket(c.account_key, _with_amount(spec, spec.amount)) for spec in specs])
            why = "breaker half-open: a probe is in flight"
            self._blocked[(c.key, lane)] = (now + SLOT_RECHECK_S, why)
            return f"{PACED}: no headroom now ({why}; next in {SLOT_RECHECK_S * 1000:.0f} ms)", now + SLOT_RECHECK_S
        if answer is not None and not answer.admitted and answer.reason == "bucket" and group.size > 1:
            # together they did not fit; one by one, some may
            answer = await self._ask(c, specs, lane, None)
        return self._answered_one(c, tokens, lane, specs, limits, None, answer, now)

    def _answered_one(self, c: Candidate, tokens: int, lane: Lane, specs: tuple[BucketSpec, ...], limits: tuple[Limit, ...],
                      concurrency: int | None, answer: Admission | None, now: float) -> Ticket | tuple[str, float]:
        """A Ticket for an admitted call, or (reason, until) for a refused one (remembered for the skip check)."""
        if answer is None:
            return self._sent(Ticket(c, tokens, lane, specs, limits, shared=False))
        if answer.admitted:
            return self._sent(Ticket(c, tokens, lane, specs, limits, answer.slot, answer.probe))
        self.refused[lane] = self.refused.get(lane, 0) + 1
        wait = max(answer.wait_s, MIN_WAIT_S)
        until = now + wait
        if answer.reason == "held" and answer.hold is not None:
            h = self.last_hold = answer.hold
            return f"{'locked' if h.kind == 'lock' else 'cooling down'}: {h.reason} ({span(h.until - now)} left)", h.until
        if answer.reason == "bucket":
            why = next((lim.describe() for lim, s in zip(limits, specs) if s.field == answer.bucket), "the account's limit")
            if lane == "batch" and c.key not in self.sent:
                # this process has sent nothing to `c` yet: a bucket new to the store starts at the reserve, so
                # a batch's first take waits one refill. Its items wait for it (as while a first request finds
                # out the limits) rather than going down a healthy combo
                self._blocked[(c.key, lane)] = (until, why)
                self._first_takes.add(c.key)
                return f"{LEARNING} ({why}: its first take waits one refill; next in {wait * 1000:.0f} ms)", until
        elif answer.reason == "slots":
            why = f"{concurrency} in flight on {c.account_key}"
        elif answer.reason == "breaker":
            why = "breaker half-open: another process's probe is in flight" if answer.wait_s <= PROBE_TTL_S else "breaker open"
        else:
            why = answer.reason or "the store"
        self._blocked[(c.key, lane)] = (until, why)
        return f"{PACED}: no headroom now ({why}; next in {span(wait) if wait >= 1 else f'{wait * 1000:.0f} ms'})", until

    def local_ticket(self, c: Candidate, tokens: int, lanes: Pacing) -> Ticket:
        """A batch's attempt of a candidate the store is not asked about: counted here only (its first
        request finds out its limits while the others wait, `skip`)."""
        lane: Lane = "interactive" if lanes.lane == "interactive" else "batch"
        return self._sent(Ticket(c, tokens, lane, (), (), shared=False))

    def _sent(self, ticket: Ticket) -> Ticket:
        c = ticket.c  # (`begin`, inlined: once per admitted call)
        key, account = c.key, c.account_key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self.sent[key] = self.sent.get(key, 0) + 1
        self.sent_accounts[account] = self.sent_accounts.get(account, 0) + 1
        return ticket

    def begin(self, c: Candidate) -> None:
        """A batch's attempt of `c` without admission starts (its first request finds out its limits)."""
        key, account = c.key, c.account_key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self.sent[key] = self.sent.get(key, 0) + 1
        self.sent_accounts[account] = self.sent_accounts.get(account, 0) + 1

    def end(self, c: Candidate) -> None:
        """That attempt ended (whichever way)."""
        left = self._in_flight.get(c.key, 1) - 1
        if left > 0:
            self._in_flight[c.key] = left
        else:
            self._in_flight.pop(c.key, None)

    # ---- after each attempt ------------------------------------------------------------------

    def settle(self, c: Candidate, ticket: Ticket | None, now: float, *, completion: Any = None,
               failure: ProviderFailure | None = None, holds: Sequence[ExtendHold] = (), breaker_failed: bool = False) -> list[Write]:
        """Learn from how an attempt ended and return the writes to apply in one round trip: the slot back,
        the tokens corrected, the headers' remaining, a 429's empty buckets, the holds met, the counts."""
        if ticket is not None:
            self.end(c)
        self._answered.add(c.key)
        if failure is None and ticket is not None and ticket.specs and not holds and not breaker_failed:
            return self._counts_of(c, ticket, completion, None)  # (nearly every call: answered, nothing met)
        writes: list[Write] = list(holds)
        # (the loop learns the headers' limits itself, for every reply: `learn`)
        limited = failure is not None and failure.kind is ErrorKind.RATE_LIMIT
        if limited:
            self.limited[c.key] = self.limited.get(c.key, 0) + 1
            self.watch(c.account_key)
            self._end_leases(c.account_key, give_back=False)
        elif failure is not None or holds or breaker_failed:
            writes += self._end_leases(c.account_key, c.key)  # its next calls ask the store
        if holds or breaker_failed:
            self.watch(c.key)
        if ticket is None:
            return writes
        if not ticket.specs and ticket.slot is None:
            # admitted without the store (nothing was known, or it was down): what this reply taught, if
            # anything, is written now (its remaining counts), and the request counted
            limits = self.limits_of(c)
            if not limits:
                return writes
            lane: Lane = ticket.lane
            ticket = Ticket(c, ticket.tokens, lane, tuple(lim.spec(self.margin, 0.0, lane) for lim in limits), limits)
        writes += self._counts_of(c, ticket, completion, failure)
        if limited and failure is not None:
            until = now + failure.retry_after_s if failure.retry_after_s else None
            rate_limits = failure.rate_limits
            out_of_tokens = rate_limits is None or rate_limits.remaining_tokens == 0
            empty = [s for lim, s in self._shortest(ticket) if lim.what == "requests" or out_of_tokens]
            if empty:
                writes.append(EmptyBuckets(c.account_key, tuple(empty), until))
        return writes

    def _counts_of(self, c: Candidate, ticket: Ticket, completion: Any, failure: ProviderFailure | None) -> list[Write]:
        """What an attempt that was sent writes whichever way it ended: the slot back, the counts, the
        tokens estimate corrected, the headers' remaining, and the breaker closed if it served."""
        account = c.account_key
        writes: list[Write] = [ReleaseSlot(account, ticket.slot)] if ticket.slot is not None else []
        writes += self._counted(account)
        reply = completion if failure is None else failure
        used = getattr(getattr(reply, "usage", None), "total_tokens", None)
        if used is not None:
            if used and account in self._quota:
                tokens = f"{USAGE_PREFIX}{account}|tokens"
                writes += (AddCount(tokens, float(used), _MINUTE), AddCount(tokens, float(used), _DAY))
            for lim, spec in zip(ticket.limits, ticket.specs):
                if lim.what == "tokens":
                    back = spec.amount - float(used)  # the estimate taken, less what the reply says it used
                    if back:
                        writes.append(AdjustBucket(account, _with_amount(spec, back)))
        rate_limits = getattr(reply, "rate_limits", None)
        if rate_limits is not None and isinstance(rate_limits, RateLimits):
            writes += self._lowered(ticket, rate_limits)
        if completion is not None and failure is None and (ticket.probe or c.key in self._watched):
            writes.append(BreakerSuccess(c.key))
        return writes

    def served(self, c: Candidate, ticket: Ticket, completion: Any) -> bool:
        """`settle` of an attempt that was answered, done here without building writes when there is
        nothing to write but counts (nearly every call of a busy candidate): its counts are added up and
        written behind. False: not such an attempt, `settle` it."""
        if ticket.slot is not None or ticket.probe or not ticket.specs or getattr(completion, "rate_limits", None) is not None \
                or c.key in self._watched:
            return False
        used = getattr(getattr(completion, "usage", None), "total_tokens", None)
        if used is not None:
            for lim in ticket.limits:
                if lim.what == "tokens":  # (the estimate taken is corrected: a write of its own)
                    return False
        self.end(c)
        self._answered.add(c.key)
        self._behind_here().count(c.account_key, float(used or 0))
        return True

    def counts(self, account: str, calls: float, tokens: float) -> list[Write]:
        """The counts of `calls` requests served on `account` and the tokens they used."""
        out: list[Write] = [AddCount(SENT_PREFIX + account, calls, _FOREVER)]
        if account in self._quota:
            requests = f"{USAGE_PREFIX}{account}|requests"
            out += (AddCount(requests, calls, _MINUTE), AddCount(requests, calls, _DAY))
            if tokens:
                used = f"{USAGE_PREFIX}{account}|tokens"
                out += (AddCount(used, tokens, _MINUTE), AddCount(used, tokens, _DAY))
        return out

    def _counted(self, account: str) -> tuple[AddCount, ...]:
        """The counts one request on `account` adds: sent, and its quota's requests this minute and day
        (the same writes every time: made once)."""
        hit = self._counts.get(account)
        if hit is None:
            hit = (AddCount(SENT_PREFIX + account, 1, _FOREVER),)
            if account in self._quota:
                hit += (AddCount(f"{USAGE_PREFIX}{account}|requests", 1, _MINUTE), AddCount(f"{USAGE_PREFIX}{account}|requests", 1, _DAY))
            self._counts[account] = hit
        return hit

    def _shortest(self, ticket: Ticket) -> list[tuple[Limit, BucketSpec]]:
        """Each metric's shortest-window bucket of the ticket: what a reply's remaining or a 429 is about (a
        day bucket is never emptied by a minute's 429)."""
        best: dict[str, tuple[Limit, BucketSpec]] = {}
        for lim, spec in zip(ticket.limits, ticket.specs):
            if lim.what not in best or lim.window_s < best[lim.what][0].window_s:
                best[lim.what] = (lim, spec)
        return list(best.values())

    def _lowered(self, ticket: Ticket, limits: RateLimits) -> list[Write]:
        """A reply's remaining counts, as writes that lower the buckets they are about (never raise them):
        the provider had that much left when it answered, less what this process has sent since."""
        out: list[Write] = []
        in_flight = float(self._in_flight.get(ticket.c.key, 0))
        account = ticket.c.account_key
        for lim, spec in self._shortest(ticket):
            remaining = limits.remaining_requests if lim.what == "requests" else limits.remaining_tokens
            if remaining is None:
                continue
            # (what this process's leases hold is taken from the bucket already: the rest is the others')
            leased = sum(lease.held(spec.field) for lease in self._leases.values() if lease.account == account)
            level = float(remaining) - (in_flight if lim.what == "requests" else 0.0) - leased
            out.append(LowerBucket(ticket.c.account_key, spec, level))
        return out

    def learn(self, c: Candidate, limits: RateLimits, now: float) -> None:
        """Take in a reply's rate-limit headers (limit and reset) for the candidate."""
        self._learn(c, limits, now)

    def _learn(self, c: Candidate, limits: RateLimits, now: float) -> None:
        changed = False
        with self._lock:
            learned = self._learned.setdefault(c.key, {})
            for what, limit, remaining, reset_at in (
                ("requests", limits.limit_requests, limits.remaining_requests, limits.reset_requests_at),
                ("tokens", limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens_at),
            ):
                if not limit:
                    continue
                if remaining is not None:
                    self._remaining[(c.key, what)] = float(remaining) - (self._in_flight.get(c.key, 0) if what == "requests" else 0)
                guess = self._guesses.get((c.key, what))
                if guess is None:
                    guess = self._guesses[(c.key, what)] = WindowGuess()
                window = guess.read(reset_at, now)
                if learned.get(what) != (float(limit), window):
                    learned[what] = (float(limit), window)
                    changed = True
            if changed:
                self._limits.pop(c.key, None)

    @property
    def quota_accounts(self) -> list[str]:
        """The accounts with a configured quota (their usage is counted in the store)."""
        return list(self._quota)

    async def usage(self) -> dict[str, dict[str, float]]:
        """What the store counted for each account with a quota: this minute's and today's requests and
        tokens (every process's), and the requests sent on it so far (for status)."""
        await self.drain()  # (this process's counts, sent behind its calls, first)
        out: dict[str, dict[str, float]] = {}
        for account in self._quota:
            counts: dict[str, float] = {}
            for name, what, window in (("requests_minute", "requests", Window.minute()), ("tokens_minute", "tokens", Window.minute()),
                                       ("requests_day", "requests", Window.day()), ("tokens_day", "tokens", Window.day())):
                counts[name] = await self.shared.count(f"{USAGE_PREFIX}{account}|{what}", window)
            counts["sent"] = await self.shared.count(SENT_PREFIX + account, Window.forever())
            out[account] = counts
        return out

    def write_behind(self, writes: Sequence[Write]) -> None:
        """Send these writes with the others of this turn of the event loop (no waiting for them here)."""
        self._behind_here().add(writes)

    def _behind_here(self) -> WriteBehind:
        """The writes waiting on the running event loop."""
        loop = asyncio.get_running_loop()
        behind = self._last_behind
        if behind is None or behind.loop is not loop:
            behind = self._behind.get(loop)
            if behind is None:
                behind = self._behind[loop] = WriteBehind(self, loop)
            self._last_behind = behind
        return behind

    async def drain(self) -> None:
        """Give back what the leases hold, and wait until the writes sent behind on this event loop are in
        the store (close, status, tests)."""
        topping = [t for t in self._tasks if t.get_loop() is asyncio.get_running_loop()]
        if topping:
            await asyncio.gather(*topping, return_exceptions=True)
        for lease in self._leases.values():
            if lease.specs:
                self.write_behind(lease.give_back())
        behind = self._behind.get(asyncio.get_running_loop())
        if behind is not None:
            await behind.drain()

    def forget(self, matches: Sequence[str | None]) -> None:
        """Forget the store's "wait" answers for keys containing any of `matches` (None: all): a reset."""
        for key in list(self._blocked):
            if any(m is None or m in key[0] for m in matches):
                del self._blocked[key]

    # ---- reading ------------------------------------------------------------------------------

    def limits(self) -> dict[str, list[str]]:
        """What each account and candidate is paced at (`{"openai#main": ["500 requests/min"], ...}`)."""
        out: dict[str, list[str]] = {key: [lim.describe() for lim in limits] for key, limits in self._quota.items()}
        with self._lock:
            for key, learned in self._learned.items():
                if learned:
                    out[key] = [Limit(key, what, window, limit).describe() for what, (limit, window) in learned.items()]
        return out

    def blocked(self) -> dict[str, float]:
        """Candidates the store said to wait for, and until when (wall time), as this process last heard."""
        now = self.clock.time()
        return {f"{key} ({lane})": until for (key, lane), (until, _) in self._blocked.items() if until > now}


_MINUTE, _DAY, _FOREVER = Window.minute(), Window.day(), Window.forever()


def _merged(writes: Sequence[Write]) -> list[Write]:
    """The same writes in fewer commands: counts of one counter added up, corrections of one bucket added
    up, a bucket lowered to the lowest level asked, a breaker closed once (the rest as they are)."""
    counts: dict[tuple[str, float, bool], tuple[Window, float]] = {}
    adjusts: dict[tuple[str, str], tuple[BucketSpec, float]] = {}
    lowers: dict[tuple[str, str], LowerBucket] = {}
    out: list[Write] = []
    closed: set[str] = set()
    for w in writes:
        if isinstance(w, AddCount):
            # (keyed by the window's fields: a frozen dataclass's own hash is a Python call per write)
            key = (w.key, w.window.seconds, w.window.sliding)
            added = counts.get(key)
            counts[key] = (w.window, w.n if added is None else added[1] + w.n)
        elif isinstance(w, AdjustBucket):
            spec, total = adjusts.get((w.account, w.bucket.field), (w.bucket, 0.0))
            adjusts[(w.account, w.bucket.field)] = (spec, total + w.bucket.amount)
        elif isinstance(w, LowerBucket):
            seen = lowers.get((w.account, w.bucket.field))
            if seen is None or w.level < seen.level:
                lowers[(w.account, w.bucket.field)] = w
        elif isinstance(w, BreakerSuccess):
            if w.key not in closed:
                closed.add(w.key)
                out.append(w)
        else:
            out.append(w)
    out += [AddCount(key[0], n, window) for key, (window, n) in counts.items()]
    out += [AdjustBucket(account, _with_amount(spec, total)) for (account, _), (spec, total) in adjusts.items() if total]
    out += list(lowers.values())
    return out


def _with_amount(spec: BucketSpec, amount: float) -> BucketSpec:
    return BucketSpec(spec.scope, spec.name, spec.rate, spec.capacity, spec.initial, amount, spec.reserve)


__all__ = ["BURST_S", "BURST_SLACK_SHARE", "DAY_S", "INTERACTIVE", "LEARNING", "Lanes", "Limit", "MAX_WAIT_S", "MINUTE_S", "PACED", "PACING_MARGIN",
           "Pacer", "SENT_PREFIX", "Ticket", "USAGE_PREFIX", "WindowGuess"]

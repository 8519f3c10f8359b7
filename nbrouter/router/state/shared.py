"""The state that processes and machines share: the `SharedState` port, its verbs' value types, the rules
every verb follows, and the memory implementation.

Every verb is atomic: whatever runs at the same time (threads, kernels, machines), an update is never
lost and a decision (a probe, a slot, a bucket's last request) is taken by exactly one caller. The port
is implemented three times, and one contract suite (tests/test_store_contract.py) holds them to it:

- `MemoryShared` (here): one process; the rules run under a lock.
- `SQLiteShared` (shared_sqlite.py): one machine; the same rules, each verb one `BEGIN IMMEDIATE`.
- `RedisShared` (shared_redis.py): many machines; each verb one Lua script on the server's clock.

`GuardedState` (guarded.py) wraps a store that can fail (the file, Redis) so that no verb ever raises
into a call: while the store is down it answers locally (`[state] on_down`), and says so.

Time: a store reads its own clock (memory and SQLite: the injected `Clock`; Redis: the server's `TIME`).
Times given and returned are the caller's wall-clock seconds (`clock.time()`); a store on another clock
(Redis) turns them into durations on the way in and back on the way out, so skewed machines agree.

Keys: a candidate key (`provider#account/model`) and its account key (`provider#account`) share a *tag*,
the account key (`tag_of`); everything one admission touches lives under one tag (one Redis Cluster slot).
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, TypeVar, Union, runtime_checkable

from ..._core import Clock, scrub_pieces
from ..._core.clock import SYSTEM_CLOCK
from .health import Hold, HoldKind

__all__ = [
    "LANES", "SLICES", "SLOT_RECHECK_S", "AddCount", "AdjustBucket", "Admission", "AdmitRequest", "BreakerSuccess",
    "BreakerView", "BucketSpec", "EmptyBuckets", "ExtendHold", "Lane", "LowerBucket", "MemoryShared", "ReleaseSlot",
    "SharedState", "SlotRequest", "StoreDown", "Window", "Write", "tag_of",
]

Lane = Literal["interactive", "batch"]
LANES: tuple[Lane, ...] = ("interactive", "batch")

#: a sliding window is counted in this many slices (plus the current one): an add counts for between
#: one window and one window plus a slice after it was made, never less (a limit is never overrun)
SLICES = 60
#: how soon an admission refused for want of a concurrency slot is worth asking again
SLOT_RECHECK_S = 0.02


class StoreDown(Exception):
    """The store could not answer (refused, timed out, lost its connection). Raised by the raw stores
    only; `GuardedState` catches it, so a call never sees it.

    Args:
        message: what happened (never a password).
        timeout: the store did not answer within its timeout (rather than refusing or failing).
    """

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def tag_of(key: str) -> str:
    """The account key a candidate or account key belongs to: the part before the first "/"."""
    return key.split("/", 1)[0]


# ---- the verbs' values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A counter's window: `seconds` long, by the calendar (minute 12:03 from :00 to :59, the UTC day) or
    sliding (the last `seconds`, counted in `SLICES` slices). `Window.forever()` never resets (a budget)."""

    seconds: float
    sliding: bool = False

    @classmethod
    def minute(cls, sliding: bool = False) -> "Window":
        return cls(60.0, sliding)

    @classmethod
    def day(cls, sliding: bool = False) -> "Window":
        return cls(86400.0, sliding)

    @classmethod
    def forever(cls) -> "Window":
        return cls(math.inf)

    @property
    def name(self) -> str:
        """How the window appears in stored keys: "60", "60~" (sliding), "inf"."""
        if math.isinf(self.seconds):
            return "inf"
        return f"{self.seconds:g}" + ("~" if self.sliding else "")

    @property
    def slice_s(self) -> float:
        """The length of one stored slot of the window."""
        return self.seconds / SLICES if self.sliding else self.seconds

    def slots(self, now: float) -> range:
        """The slot numbers that count at `now` (one for a calendar window)."""
        if math.isinf(self.seconds):
            return range(0, 1)
        current = math.floor(now / self.slice_s)
        return range(current - SLICES, current + 1) if self.sliding else range(current, current + 1)

    def expires(self, slot: int) -> float:
        """When a slot stops counting (its row may be dropped)."""
        if math.isinf(self.seconds):
            return math.inf
        end = (slot + 1) * self.slice_s
        return end + self.seconds if self.sliding else end


@dataclass(frozen=True)
class BucketSpec:
    """One token bucket of an account, as the caller paces it: the numbers travel with every verb, so a
    limit that changes (a config edit, a header) applies at once; the store keeps only the level.

    Args:
        scope: the account key or a candidate key of that account (its own buckets, from headers).
        name: which bucket of the scope ("requests/60", "tokens/86400", ...).
        rate: refill per second.
        capacity: the most the bucket holds.
        initial: the level a bucket starts at the first time it is seen.
        amount: what this call takes (an admission) or the amount of an adjust.
        reserve: the share of `capacity` a take of the batch lane must leave for the interactive lane.
    """

    scope: str
    name: str
    rate: float
    capacity: float
    initial: float = 0.0
    amount: float = 1.0
    reserve: float = 0.0

    @property
    def field(self) -> str:
        """The bucket's name within its account."""
        return f"{self.scope}|{self.name}"

    def scaled(self, share: float) -> "BucketSpec":
        """The same bucket paced at `share` of its limit (a kernel's part while the store is down)."""
        return BucketSpec(self.scope, self.name, self.rate * share, max(1.0, self.capacity * share),
                          min(self.initial, max(1.0, self.capacity * share)), self.amount, self.reserve)


@dataclass(frozen=True)
class SlotRequest:
    """At most `limit` calls in flight on the account; a slot not released within `ttl_s` heals (its
    holder died)."""

    limit: int
    ttl_s: float


@dataclass(frozen=True)
class AdmitRequest:
    """Everything one call asks before it is sent, answered in one atomic step (one round trip).

    Args:
        account: the account key: the tag every key below shares.
        holds: the keys whose holds keep the call back (the candidate's, the account's).
        buckets: the buckets to take from (all or none).
        lane: "interactive" may use the buckets' reserve; "batch" leaves it.
        slot: a concurrency slot to take, if the account has a limit.
        breaker: the candidate key whose breaker must admit the call (a half-open one admits one probe).
        probe_ttl_s: how long a taken probe keeps others out if its holder never reports.
    """

    account: str
    holds: tuple[str, ...] = ()
    buckets: tuple[BucketSpec, ...] = ()
    lane: Lane = "batch"
    slot: SlotRequest | None = None
    breaker: str | None = None
    probe_ttl_s: float = 60.0


@dataclass(frozen=True)
class Admission:
    """The answer to an `AdmitRequest`.

    Attributes:
        admitted: the call may go: its buckets were taken from, and `slot` is its slot if one was asked.
        wait_s: when not admitted, the seconds until asking again is worthwhile.
        reason: when not admitted, why: "held", "breaker", "bucket", "slots", "store" (down, "wait" mode).
        hold: the hold that keeps it back (reason "held").
        bucket: the name of the bucket that keeps it back longest (reason "bucket").
        slot: the slot token to release after the call.
        probe: the call took the breaker's half-open probe (report its outcome).
        local: decided by this process alone, because the store is down.
    """

    admitted: bool
    wait_s: float = 0.0
    reason: str = ""
    hold: Hold | None = None
    bucket: str = ""
    slot: str | None = None
    probe: bool = False
    local: bool = False


@dataclass(frozen=True)
class BreakerView:
    """A shared breaker as read: "closed", "open" (until `open_until`) or "half_open" (`probing`: a probe
    is out), and the failures counted in its window."""

    state: str = "closed"
    open_until: float = 0.0
    failures: int = 0
    probing: bool = False

    @property
    def opened(self) -> bool:
        return self.state != "closed"


# ---- writes that need no answer (sent together after a call: one pipeline) --------------------------


@dataclass(frozen=True)
class ReleaseSlot:
    """Give back a slot taken by an admission."""

    account: str
    token: str


@dataclass(frozen=True)
class AdjustBucket:
    """Add `bucket.amount` to a bucket (negative: take more), up to its capacity: a token estimate
    corrected by the usage a reply reported."""

    account: str
    bucket: BucketSpec


@dataclass(frozen=True)
class LowerBucket:
    """Lower a bucket to at most `level` (a reply's remaining count); never raises it."""

    account: str
    bucket: BucketSpec
    level: float


@dataclass(frozen=True)
class EmptyBuckets:
    """A 429: the buckets hold nothing, for everyone, and none gives before `until` (caller's wall time)."""

    account: str
    buckets: tuple[BucketSpec, ...]
    until: float | None = None


@dataclass(frozen=True)
class AddCount:
    """Add `n` to a counter (`add` without its answer)."""

    key: str
    n: float
    window: Window


@dataclass(frozen=True)
class ExtendHold:
    """`extend_hold` without its answer."""

    key: str
    kind: str
    until: float
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class BreakerSuccess:
    """The candidate served: its shared breaker closes."""

    key: str


Write = Union[ReleaseSlot, AdjustBucket, LowerBucket, EmptyBuckets, AddCount, ExtendHold, BreakerSuccess]


# ---- the port ---------------------------------------------------------------------------------------------


@runtime_checkable
class SharedState(Protocol):
    """What the router asks of the state it shares with other processes: atomic verbs.

    All verbs are coroutines; `GuardedState`'s never raise (the raw stores raise `StoreDown`).
    """

    #: "memory", "sqlite" or "redis"
    kind: str

    @property
    def mode(self) -> str:
        """How verbs are answered now: "shared" (by the store), "local" (the store is down: this process
        paces alone at its share of each limit) or "wait" (the store is down: admissions wait for it)."""
        ...

    @property
    def warning(self) -> str | None:
        """Why the store is not answering (for status, the board, the footer), or None."""
        ...

    def mirror_holds(self) -> dict[str, Hold]:
        """The holds in force as last read (at most about a second old), without asking the store: what
        `explain` and `status` show."""
        ...

    # counters (quota windows, the shared budget) -------------------------------------------------------

    async def add(self, key: str, n: float, window: Window) -> float:
        """Add `n` to the counter `key` in the window of now; return the window's total after it."""
        ...

    async def count(self, key: str, window: Window) -> float:
        """The counter's total in the window of now."""
        ...

    # holds (cooldowns, locks, disablements) -----------------------------------------------------------

    async def extend_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "") -> Hold:
        """Hold `key` until `until` unless it is held longer already: a later deadline wins, an earlier one
        never shortens a hold. Returns the hold in force afterwards."""
        ...

    async def holds(self) -> dict[str, Hold]:
        """Every hold in force, by key."""
        ...

    async def clear_holds(self, match: str | None = None) -> int:
        """Lift the holds whose key contains `match` (all when None); return how many."""
        ...

    # breakers -------------------------------------------------------------------------------------------

    async def breaker_failure(self, key: str, *, window_s: float, threshold: int, open_s: float,
                              open_now: bool = False) -> BreakerView:
        """Count a failure of the candidate; `threshold` failures within `window_s` (or `open_now`, or a
        failed probe) open the breaker for `open_s` (twice as long after each failed probe)."""
        ...

    async def breaker_admits(self, key: str, probe_ttl_s: float) -> tuple[bool, BreakerView]:
        """May the candidate be tried? Closed: yes. Open: no. Half-open: yes for exactly one caller, whose
        probe keeps the others out until it reports or `probe_ttl_s` passes."""
        ...

    async def breaker_success(self, key: str) -> None:
        """The candidate served: close its breaker."""
        ...

    async def end_probe(self, key: str) -> None:
        """The probe ended without a verdict: let the next one in."""
        ...

    async def breaker(self, key: str) -> BreakerView:
        """The breaker as it is now."""
        ...

    # rotation -------------------------------------------------------------------------------------------

    async def next_turn(self, key: str, n: int) -> int:
        """Round-robin: the next index in [0, n), each caller a different turn."""
        ...

    async def deal(self, key: str, n: int) -> int:
        """Strict-random: the next card of a shuffled deck of [0, n); every index once per deck."""
        ...

    async def least_used(self, key: str, members: Sequence[str]) -> str:
        """Take the member used least so far (the first of equals) and count the use."""
        ...

    # pacing and admission --------------------------------------------------------------------------------

    async def admit(self, request: AdmitRequest) -> Admission:
        """Skip the held, pass the breaker, take from the buckets and take a slot: all or nothing."""
        ...

    async def acquire_slot(self, account: str, slot: SlotRequest) -> str | None:
        """Take a concurrency slot of the account: its token, or None when all are taken."""
        ...

    async def apply(self, writes: Sequence[Write]) -> None:
        """Apply writes that need no answer (after a call), in order, together (one round trip)."""
        ...

    async def buckets(self, account: str, specs: Sequence[BucketSpec]) -> dict[str, float]:
        """The levels of the account's buckets now (by `BucketSpec.field`), for status."""
        ...

    async def clear_buckets(self, match: str | None = None) -> int:
        """Drop the pacing buckets whose key (`account|scope|name`) contains `match` (all when None), for
        every process: a reset. A 429 or a header's "remaining: 0" emptied them and no refill could be
        sooner; the next admission starts each afresh, at its `initial` level, with no retry-after block.
        Returns how many were dropped."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


# ---- the rules, over a transaction ------------------------------------------------------------------------

T = TypeVar("T")


class Tx(Protocol):
    """One atomic step over stored values (JSON-able), as the memory and SQLite stores give it."""

    def get(self, space: str, key: str) -> Any:
        """The value, or None if absent or expired."""
        ...

    def put(self, space: str, key: str, value: Any, expires: float = math.inf) -> None:
        """Store a value; it counts as absent from `expires` (wall seconds) on."""
        ...

    def get_many(self, space: str, keys: Sequence[str]) -> list[Any]:
        """The values of several keys (None for each absent one), in one read."""
        ...

    def delete(self, space: str, key: str) -> None:
        ...

    def items(self, space: str) -> list[tuple[str, Any]]:
        """Every live (key, value) of the space."""
        ...


def _hold_from(value: Any) -> Hold:
    kind, until, reason, detail, updated = value
    return Hold(kind=HoldKind(kind), until=float(until), reason=reason, detail=detail, updated=float(updated))


def _hold_value(h: Hold) -> list[Any]:
    return [h.kind.value, h.until, h.reason, h.detail, h.updated]


def _live_hold(tx: Tx, key: str, now: float) -> Hold | None:
    value = tx.get("hold", key)
    if value is None:
        return None
    h = _hold_from(value)
    return h if h.active(now) else None


class Rules:
    """Each verb as one function of a transaction and the time: what memory and SQLite run atomically."""

    @staticmethod
    def add(tx: Tx, now: float, key: str, n: float, window: Window) -> float:
        slots = window.slots(now)
        current = slots[-1]
        name = f"{key}|{window.name}|{current}"
        tx.put("count", name, float(tx.get("count", name) or 0.0) + n, window.expires(current))
        return Rules.count(tx, now, key, window)

    @staticmethod
    def count(tx: Tx, now: float, key: str, window: Window) -> float:
        values = tx.get_many("count", [f"{key}|{window.name}|{slot}" for slot in window.slots(now)])
        return float(sum(float(v) for v in values if v is not None))

    @staticmethod
    def extend_hold(tx: Tx, now: float, key: str, kind: str, until: float, reason: str, detail: str) -> Hold:
        old = _live_hold(tx, key, now)
        if old is not None and old.until >= until:
            return old
        h = Hold(kind=HoldKind(kind), until=until, reason=scrub_pieces(reason), detail=detail, updated=now)
        tx.put("hold", key, _hold_value(h), until)
        return h

    @staticmethod
    def holds(tx: Tx, now: float) -> dict[str, Hold]:
        out = {}
        for key, value in tx.items("hold"):
            h = _hold_from(value)
            if h.active(now):
                out[key] = h
        return out

    @staticmethod
    def clear_holds(tx: Tx, now: float, match: str | None) -> int:
        n = 0
        for key, _ in tx.items("hold"):
            if match is None or match in key:
                tx.delete("hold", key)
                n += 1
        return n

    @staticmethod
    def _breaker(tx: Tx, key: str) -> dict[str, Any]:
        value = tx.get("breaker", key)
        return dict(value) if value else {"failures": [], "open_until": 0.0, "multiplier": 1, "probe_until": 0.0, "open": False}

    @staticmethod
    def _view(b: Mapping[str, Any], now: float) -> BreakerView:
        if not b["open"]:
            return BreakerView("closed", 0.0, len(b["failures"]), False)
        if now < b["open_until"]:
            return BreakerView("open", b["open_until"], len(b["failures"]), False)
        return BreakerView("half_open", b["open_until"], len(b["failures"]), now < b["probe_until"])

    @staticmethod
    def breaker_failure(tx: Tx, now: float, key: str, window_s: float, threshold: int, open_s: float,
                        open_now: bool) -> BreakerView:
        b = Rules._breaker(tx, key)
        failures = [t for t in b["failures"] if t > now - window_s] + [now]
        probing = b["open"] and now >= b["open_until"]  # a failure while half-open: the probe failed
        b["failures"] = failures[-max(threshold, 1):]
        if probing:
            b["multiplier"] = min(int(b["multiplier"]) * 2, 64)
        if probing or open_now or (not b["open"] and len(failures) >= threshold):
            b["open"] = True
            b["open_until"] = now + open_s * int(b["multiplier"])
            b["probe_until"] = 0.0
        tx.put("breaker", key, b)
        return Rules._view(b, now)

    @staticmethod
    def breaker_admits(tx: Tx, now: float, key: str, probe_ttl_s: float) -> tuple[bool, BreakerView]:
        b = Rules._breaker(tx, key)
        view = Rules._view(b, now)
        if view.state == "closed":
            return True, view
        if view.state == "open" or view.probing:
            return False, view
        b["probe_until"] = now + probe_ttl_s
        tx.put("breaker", key, b)
        return True, Rules._view(b, now)

    @staticmethod
    def breaker_success(tx: Tx, now: float, key: str) -> None:
        if tx.get("breaker", key) is not None:
            tx.delete("breaker", key)

    @staticmethod
    def end_probe(tx: Tx, now: float, key: str) -> None:
        value = tx.get("breaker", key)
        if value is not None:
            b = dict(value)
            b["probe_until"] = 0.0
            tx.put("breaker", key, b)

    @staticmethod
    def breaker(tx: Tx, now: float, key: str) -> BreakerView:
        return Rules._view(Rules._breaker(tx, key), now)

    @staticmethod
    def next_turn(tx: Tx, now: float, key: str, n: int) -> int:
        value = int(tx.get("turn", key) or 0)
        tx.put("turn", key, value + 1)
        return value % max(n, 1)

    @staticmethod
    def deal(tx: Tx, now: float, key: str, n: int, shuffled: Sequence[int]) -> int:
        value = tx.get("deck", key)
        deck = list(value[1]) if value and value[0] == n and value[1] else list(shuffled)
        card = int(deck.pop(0))
        tx.put("deck", key, [n, deck])
        return card

    @staticmethod
    def least_used(tx: Tx, now: float, key: str, members: Sequence[str]) -> str:
        counts = dict(tx.get("used", key) or {})
        best = min(members, key=lambda m: int(counts.get(m, 0)))
        counts[best] = int(counts.get(best, 0)) + 1
        tx.put("used", key, counts)
        return best

    # -- buckets: stored as [level, stamp, blocked_until] per (account, BucketSpec.field)

    @staticmethod
    def _level(tx: Tx, now: float, account: str, spec: BucketSpec) -> list[float]:
        """[level, stamp, blocked_until] refilled to now; a bucket the store has not kept yet starts at
        `spec.initial` (and has a fourth item, 1.0: the admission keeps it even when it refuses)."""
        value = tx.get("bucket", f"{account}|{spec.field}")
        if value is None:
            return [min(spec.initial, spec.capacity), now, 0.0, 1.0]
        level, stamp, blocked = (float(v) for v in value[:3])
        if now > stamp:
            level = min(spec.capacity, level + (now - stamp) * spec.rate)
            stamp = now
        return [level, stamp, blocked]

    @staticmethod
    def _bucket_wait(b: Sequence[float], spec: BucketSpec, amount: float, lane: Lane, now: float) -> float:
        keep = spec.reserve * spec.capacity if lane == "batch" else 0.0
        need = min(amount, spec.capacity) + keep - b[0]
        wait = need / max(spec.rate, 1e-9) if need > 1e-9 else 0.0
        return max(wait, b[2] - now)

    @staticmethod
    def _put_level(tx: Tx, account: str, spec: BucketSpec, b: Sequence[float]) -> None:
        tx.put("bucket", f"{account}|{spec.field}", list(b[:3]))

    @staticmethod
    def _slots(tx: Tx, now: float, account: str) -> dict[str, float]:
        return {t: e for t, e in (tx.get("slots", account) or {}).items() if e > now}

    @staticmethod
    def acquire_slot(tx: Tx, now: float, account: str, slot: SlotRequest, token: str) -> str | None:
        held = Rules._slots(tx, now, account)
        if len(held) >= slot.limit:
            tx.put("slots", account, held)
            return None
        held[token] = now + slot.ttl_s
        tx.put("slots", account, held)
        return token

    @staticmethod
    def release_slot(tx: Tx, now: float, account: str, token: str) -> None:
        held = Rules._slots(tx, now, account)
        held.pop(token, None)
        tx.put("slots", account, held)

    @staticmethod
    def admit(tx: Tx, now: float, req: AdmitRequest, token: str) -> Admission:
        for key in req.holds:
            h = _live_hold(tx, key, now)
            if h is not None:
                return Admission(False, h.until - now, "held", hold=h)
        probe = False
        if req.breaker is not None:
            view = Rules._view(Rules._breaker(tx, req.breaker), now)
            if view.state == "open":
                return Admission(False, view.open_until - now, "breaker")
            if view.probing:
                return Admission(False, SLOT_RECHECK_S, "breaker")
            probe = view.state == "half_open"
        levels = [Rules._level(tx, now, req.account, s) for s in req.buckets]
        worst, which = 0.0, ""
        for b, spec in zip(levels, req.buckets):
            wait = Rules._bucket_wait(b, spec, spec.amount, req.lane, now)
            if wait > worst:
                worst, which = wait, spec.field
        if worst > 0:
            # a bucket new to the store is kept as it starts (the reserve, or what a header said was left):
            # refused or not, it fills from its first ask on; one started afresh at every ask never would
            for b, spec in zip(levels, req.buckets):
                if len(b) > 3:
                    Rules._put_level(tx, req.account, spec, b)
            return Admission(False, worst, "bucket", bucket=which)
        taken: str | None = None
        if req.slot is not None:
            taken = Rules.acquire_slot(tx, now, req.account, req.slot, token)
            if taken is None:
                return Admission(False, SLOT_RECHECK_S, "slots")
        for b, spec in zip(levels, req.buckets):
            b[0] -= spec.amount
            Rules._put_level(tx, req.account, spec, b)
        if probe and req.breaker is not None:
            Rules.breaker_admits(tx, now, req.breaker, req.probe_ttl_s)
        return Admission(True, slot=taken, probe=probe)

    @staticmethod
    def buckets(tx: Tx, now: float, account: str, specs: Sequence[BucketSpec]) -> dict[str, float]:
        return {s.field: Rules._level(tx, now, account, s)[0] for s in specs}

    @staticmethod
    def clear_buckets(tx: Tx, now: float, match: str | None) -> int:
        n = 0
        for key, _ in tx.items("bucket"):
            if match is None or match in key:
                tx.delete("bucket", key)
                n += 1
        return n

    @staticmethod
    def write(tx: Tx, now: float, w: Write) -> None:
        if isinstance(w, ReleaseSlot):
            Rules.release_slot(tx, now, w.account, w.token)
        elif isinstance(w, AdjustBucket):
            b = Rules._level(tx, now, w.account, w.bucket)
            b[0] = min(w.bucket.capacity, b[0] + w.bucket.amount)
            Rules._put_level(tx, w.account, w.bucket, b)
        elif isinstance(w, LowerBucket):
            b = Rules._level(tx, now, w.account, w.bucket)
            b[0] = min(b[0], w.level)
            Rules._put_level(tx, w.account, w.bucket, b)
        elif isinstance(w, EmptyBuckets):
            for spec in w.buckets:
                b = Rules._level(tx, now, w.account, spec)
                b[0] = min(b[0], 0.0)
                if w.until is not None:
                    b[2] = max(b[2], w.until)
                Rules._put_level(tx, w.account, spec, b)
        elif isinstance(w, AddCount):
            Rules.add(tx, now, w.key, w.n, w.window)
        elif isinstance(w, ExtendHold):
            Rules.extend_hold(tx, now, w.key, w.kind, w.until, w.reason, w.detail)
        elif isinstance(w, BreakerSuccess):
            Rules.breaker_success(tx, now, w.key)


def shuffled(n: int) -> list[int]:
    """A fresh deck of [0, n) in random order."""
    deck = list(range(max(n, 1)))
    random.shuffle(deck)
    return deck


def new_token() -> str:
    """A slot token: random, so that no two holders share one."""
    return uuid.uuid4().hex


# ---- memory ----------------------------------------------------------------------------------------------


class _MemoryTx:
    """A transaction over the memory store's dict (the caller holds its lock)."""

    def __init__(self, data: dict[tuple[str, str], tuple[Any, float]], now: float) -> None:
        self.data = data
        self.now = now

    def get(self, space: str, key: str) -> Any:
        row = self.data.get((space, key))
        if row is None or row[1] <= self.now:
            return None
        return row[0]

    def get_many(self, space: str, keys: Sequence[str]) -> list[Any]:
        return [self.get(space, k) for k in keys]

    def put(self, space: str, key: str, value: Any, expires: float = math.inf) -> None:
        self.data[(space, key)] = (value, expires)

    def delete(self, space: str, key: str) -> None:
        self.data.pop((space, key), None)

    def items(self, space: str) -> list[tuple[str, Any]]:
        return [(k, v) for (s, k), (v, e) in list(self.data.items()) if s == space and e > self.now]


class RuleStore:
    """The verbs of `SharedState` as `Rules` run in one transaction each: a store that runs a rule
    atomically (`run`, on its clock) has them all. Memory and SQLite are two; Redis runs the same rules as
    Lua scripts instead."""

    def run(self, rule: Callable[..., T], *args: Any) -> T:
        """Run one rule atomically, with the transaction and the store's "now"."""
        raise NotImplementedError

    async def arun(self, rule: Callable[..., T], *args: Any) -> T:
        """`run` for a verb: a store that may have to wait (a file another process holds) waits without
        stalling the event loop."""
        return self.run(rule, *args)

    async def add(self, key: str, n: float, window: Window) -> float:
        return await self.arun(Rules.add, key, n, window)

    async def count(self, key: str, window: Window) -> float:
        return await self.arun(Rules.count, key, window)

    async def extend_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "") -> Hold:
        return await self.arun(Rules.extend_hold, key, kind, until, reason, detail)

    async def holds(self) -> dict[str, Hold]:
        return await self.arun(Rules.holds)

    async def clear_holds(self, match: str | None = None) -> int:
        return await self.arun(Rules.clear_holds, match)

    async def breaker_failure(self, key: str, *, window_s: float, threshold: int, open_s: float,
                              open_now: bool = False) -> BreakerView:
        return await self.arun(Rules.breaker_failure, key, window_s, threshold, open_s, open_now)

    async def breaker_admits(self, key: str, probe_ttl_s: float) -> tuple[bool, BreakerView]:
        return await self.arun(Rules.breaker_admits, key, probe_ttl_s)

    async def breaker_success(self, key: str) -> None:
        await self.arun(Rules.breaker_success, key)

    async def end_probe(self, key: str) -> None:
        await self.arun(Rules.end_probe, key)

    async def breaker(self, key: str) -> BreakerView:
        return await self.arun(Rules.breaker, key)

    async def next_turn(self, key: str, n: int) -> int:
        return await self.arun(Rules.next_turn, key, n)

    async def deal(self, key: str, n: int) -> int:
        return await self.arun(Rules.deal, key, n, shuffled(n))

    async def least_used(self, key: str, members: Sequence[str]) -> str:
        return await self.arun(Rules.least_used, key, list(members))

    async def admit(self, request: AdmitRequest) -> Admission:
        return await self.arun(Rules.admit, request, new_token())

    async def acquire_slot(self, account: str, slot: SlotRequest) -> str | None:
        return await self.arun(Rules.acquire_slot, account, slot, new_token())

    async def apply(self, writes: Sequence[Write]) -> None:
        def all_of(tx: Tx, now: float) -> None:
            for w in writes:
                Rules.write(tx, now, w)
        await self.arun(all_of)

    async def buckets(self, account: str, specs: Sequence[BucketSpec]) -> dict[str, float]:
        return await self.arun(Rules.buckets, account, list(specs))

    async def clear_buckets(self, match: str | None = None) -> int:
        return self.run(Rules.clear_buckets, match)


class MemoryShared(RuleStore):
    """The shared state of one process: every verb under one lock, on the injected clock.

    Args:
        clock: where "now" comes from (a test's `ManualClock`).
    """

    kind = "memory"

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._data: dict[tuple[str, str], tuple[Any, float]] = {}
        self._lock = threading.Lock()
        self._steps = 0

    @property
    def mode(self) -> str:
        return "shared"

    @property
    def warning(self) -> str | None:
        return None

    def mirror_holds(self) -> dict[str, Hold]:
        return self.run(Rules.holds)

    def run(self, rule: Callable[..., T], *args: Any) -> T:
        """Run one rule atomically (also what `GuardedState` uses for its local answers)."""
        with self._lock:
            now = self.clock.time()
            self._steps += 1
            if self._steps % 4096 == 0:  # expired rows go now and then, not on every step
                self._data = {k: v for k, v in self._data.items() if v[1] > now}
            return rule(_MemoryTx(self._data, now), now, *args)

    async def close(self) -> None:
        pass


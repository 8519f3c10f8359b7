"""The shared state as the router uses it: a store that may fail (the file, Redis) behind a breaker of its
own, so that no verb ever raises into a call, and `open_shared`, which makes one from the settings.

    verb ──> store up?  ──yes──> the store ──ok──> answer (and keep the mirror)
               │                      └─StoreDown─> down: one warning; answer locally
               └─no (until the next try)──> locally: "local" paces at `share` of each limit,
                                            "wait" holds admissions back until the store returns

While the store is down, the answers come from `local` (a MemoryShared on the same clock), which is also
the mirror: it keeps every hold this process set or read, so a cooldown met before the outage still keeps
calls back during it. When the store answers again, the local holds are written back (extend-only, so
nothing is shortened), the counts added meanwhile are added, and the mirror is read afresh. A Redis that
restarted empty is noticed by its missing marker key: the mirror's holds are written to it again.

Trying the store again costs at most one verb's timeout per `retry_s` (doubling to `max_retry_s`); only
one verb tries at a time, the others answer locally meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Literal, Sequence, TypeVar

from ..._core import Clock
from ..._core.clock import SYSTEM_CLOCK
from ..errors import ComboConfigError
from .health import Hold
from .shared import (
    AddCount,
    AdjustBucket,
    Admission,
    AdmitRequest,
    BreakerView,
    BucketSpec,
    EmptyBuckets,
    ExtendHold,
    LowerBucket,
    MemoryShared,
    SharedState,
    SlotRequest,
    StoreDown,
    Window,
    Write,
)

__all__ = ["MAX_RETRY_S", "MIRROR_S", "ON_DOWN", "RETRY_S", "GuardedState", "OnDown", "open_shared"]

T = TypeVar("T")
OnDown = Literal["local", "wait"]
ON_DOWN: tuple[OnDown, ...] = ("local", "wait")
#: the store is tried again this long after it failed, then twice as long each time up to MAX_RETRY_S
RETRY_S = 1.0
MAX_RETRY_S = 8.0
#: the mirror of holds is read from the store at most this often
MIRROR_S = 1.0
#: how long closing waits for a refresh or write-back under way
_CLOSE_WAIT_S = 5.0
#: in "wait" mode, how soon a held-back admission asks again (at least)
_WAIT_RECHECK_S = 0.05

log = logging.getLogger("nbrouter")


class GuardedState:
    """A `SharedState` whose verbs never raise: a failing store is answered for locally, and says so.

    Args:
        store: the raw store (`SQLiteShared`, `RedisShared`); its failures are `StoreDown`.
        on_down: "local" (pace alone at `share` of each limit) or "wait" (admissions wait for the store).
        share: this process's part of each limit while the store is down.
        clock: the router's clock (local answers, the retry spacing, the mirror's age).
        retry_s: how soon a failed store is tried again (doubling up to `max_retry_s`).
        mirror_s: how often the mirror of holds is read from the store, at most.
        down: why the store is down already (it did not answer at start-up), or None.
        where: how messages name the store ("Redis at redis://host:6379/0").
    """

    def __init__(self, store: SharedState, *, on_down: OnDown = "local", share: float = 0.25, clock: Clock = SYSTEM_CLOCK,
                 retry_s: float = RETRY_S, max_retry_s: float = MAX_RETRY_S, mirror_s: float = MIRROR_S,
                 down: str | None = None, where: str = "") -> None:
        if on_down not in ON_DOWN:
            raise ValueError(f"on_down must be one of {ON_DOWN}, not {on_down!r}")
        self.store = store
        self.kind = store.kind
        self.on_down = on_down
        self.share = share
        self.clock = clock
        self.where = where or store.kind
        self.local = MemoryShared(clock)
        self._retry_first = retry_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._mirror_s = mirror_s
        self._why: str | None = None
        self._retry_at = -math.inf
        self._trying = False
        self._mirror_at = -math.inf
        self._pending: list[AddCount] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: verbs that met a failing store, and how many of those were timeouts (the store too slow)
        self.failures = 0
        self.timeouts = 0
        #: verbs answered locally because the store was down
        self.local_answers = 0
        #: times the store went down and came back
        self.outages = 0
        self.recoveries = 0
        if down is not None:
            self._went_down(down, timeout=False)

    # ---- what status shows ----------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "shared" if self._why is None else self.on_down

    @property
    def warning(self) -> str | None:
        if self._why is None:
            return None
        doing = (f"each kernel paces alone at {self.share:.0%} of each limit" if self.on_down == "local"
                 else "calls wait for it")
        return f"the shared state ({self.where}) is not answering ({self._why}): {doing}; holds are kept here and written back when it returns"

    def mirror_holds(self) -> dict[str, Hold]:
        return self.local.mirror_holds()

    # ---- the breaker of the store ----------------------------------------------------------------

    def _went_down(self, why: str, *, timeout: bool) -> None:
        why = why.removeprefix(f"{self.where}: ")  # the warning names the store once
        self.failures += 1
        self.timeouts += int(timeout)
        if self._why is None:
            self._why = why
            self.outages += 1
            self._retry_s = self._retry_first
            log.warning("nbrouter: %s", self.warning)  # once per outage, not once per call
        else:
            self._why = why
            self._retry_s = min(self._retry_s * 2, self._max_retry_s)
        self._retry_at = self.clock.monotonic() + self._retry_s

    def _came_back(self) -> None:
        self._why = None
        self.recoveries += 1
        self._retry_s = self._retry_first
        log.info("nbrouter: the shared state (%s) answers again; writing back what was kept here", self.where)
        self._spawn(self._write_back())

    async def _call(self, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """Ask the store, or answer locally while it is down (one verb at a time tries it again)."""
        trying = False
        if self._why is not None:
            if self._trying or self.clock.monotonic() < self._retry_at:
                self.local_answers += 1
                return await local()
            self._trying = trying = True
        try:
            result = await remote()
        except StoreDown as exc:
            self._went_down(str(exc), timeout=exc.timeout)
            self.local_answers += 1
            return await local()
        finally:
            if trying:
                self._trying = False
        if self._why is not None:
            self._came_back()
        elif self.clock.monotonic() >= self._mirror_at + self._mirror_s:
            self._mirror_at = self.clock.monotonic()
            self._spawn(self.refresh(force=True))
        return result

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a refresh or a write-back beside the verb (it must not cost the call a round trip)."""
        if self._closed:
            coro.close()
            return
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the refreshes and write-backs started so far (tests, close)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def probe(self) -> bool:
        """Try the store now, whatever the retry spacing says; True if it answers."""
        self._retry_at = -math.inf
        await self.refresh(force=True)
        return self._why is None

    # ---- the mirror and the write-back ------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Read the holds from the store into the mirror (at most once per `mirror_s` unless forced);
        a store that lost its data gets the mirror's holds again first."""
        now = self.clock.monotonic()
        if not force and now < self._mirror_at + self._mirror_s:
            return
        self._mirror_at = now

        async def remote() -> None:
            # returning from an outage (this refresh is the probe) or to a server that lost its data: what
            # was kept here goes back first, or reading the store would replace it
            recovering = self._why is not None
            mark = getattr(self.store, "mark", None)
            lost = mark is not None and await mark()
            if recovering or lost:
                await self._push_holds()  # (the counts kept here follow in the write-back `_came_back` starts)
            held = await self.store.holds()
            await self.local.clear_holds()
            for key, h in held.items():
                await self.local.extend_hold(key, h.kind.value, h.until, h.reason, h.detail)

        async def local() -> None:
            return None

        await self._call(remote, local)

    async def _push_holds(self) -> None:
        held = await self.local.holds()
        if held:
            await self.store.apply([ExtendHold(k, h.kind.value, h.until, h.reason, h.detail) for k, h in held.items()])

    async def _push_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            await self.store.apply(pending)
        except StoreDown:
            self._pending[:0] = pending  # kept for the next return
            raise

    async def _write_back(self) -> None:
        """Write the holds kept here and the counts added while the store was away; then read it afresh."""
        try:
            await self._push_holds()
            await self._push_pending()
        except StoreDown as exc:
            self._went_down(str(exc), timeout=exc.timeout)
            return
        await self.refresh(force=True)

    # ---- counters ---------------------------------------------------------------------------------

    async def add(self, key: str, n: float, window: Window) -> float:
        async def local() -> float:
            self._keep(AddCount(key, n, window))
            return await self.local.add(key, n, window)
        return await self._call(lambda: self.store.add(key, n, window), local)

    def _keep(self, add: AddCount) -> None:
        # counts within a window that never ends (a budget) are added when the store returns; a windowed
        # count is added too, to the window then current: it may count a little long, never short
        if len(self._pending) < 100_000:
            self._pending.append(add)

    async def count(self, key: str, window: Window) -> float:
        return await self._call(lambda: self.store.count(key, window), lambda: self.local.count(key, window))

    # ---- holds --------------------------------------------------------------------------------------

    async def extend_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "") -> Hold:
        async def remote() -> Hold:
            h = await self.store.extend_hold(key, kind, until, reason, detail)
            await self.local.extend_hold(key, h.kind.value, h.until, h.reason, h.detail)
            return h
        return await self._call(remote, lambda: self.local.extend_hold(key, kind, until, reason, detail))

    async def holds(self) -> dict[str, Hold]:
        async def remote() -> dict[str, Hold]:
            held = await self.store.holds()
            for key, h in held.items():
                await self.local.extend_hold(key, h.kind.value, h.until, h.reason, h.detail)
            return held
        return await self._call(remote, self.local.holds)

    async def clear_holds(self, match: str | None = None) -> int:
        async def remote() -> int:
            await self.local.clear_holds(match)
            return await self.store.clear_holds(match)
        return await self._call(remote, lambda: self.local.clear_holds(match))

    # ---- breakers -----------------------------------------------------------------------------------

    async def breaker_failure(self, key: str, *, window_s: float, threshold: int, open_s: float,
                              open_now: bool = False) -> BreakerView:
        return await self._call(
            lambda: self.store.breaker_failure(key, window_s=window_s, threshold=threshold, open_s=open_s, open_now=open_now),
            lambda: self.local.breaker_failure(key, window_s=window_s, threshold=threshold, open_s=open_s, open_now=open_now))

    async def breaker_admits(self, key: str, probe_ttl_s: float) -> tuple[bool, BreakerView]:
        return await self._call(lambda: self.store.breaker_admits(key, probe_ttl_s), lambda: self.local.breaker_admits(key, probe_ttl_s))

    async def breaker_success(self, key: str) -> None:
        async def local() -> None:
            await self.local.breaker_success(key)
        await self._call(lambda: self.store.breaker_success(key), local)

    async def end_probe(self, key: str) -> None:
        async def local() -> None:
            await self.local.end_probe(key)
        await self._call(lambda: self.store.end_probe(key), local)

    async def breaker(self, key: str) -> BreakerView:
        return await self._call(lambda: self.store.breaker(key), lambda: self.local.breaker(key))

    # ---- rotation -------------------------------------------------------------------------------------

    async def next_turn(self, key: str, n: int) -> int:
        return await self._call(lambda: self.store.next_turn(key, n), lambda: self.local.next_turn(key, n))

    async def deal(self, key: str, n: int) -> int:
        return await self._call(lambda: self.store.deal(key, n), lambda: self.local.deal(key, n))

    async def least_used(self, key: str, members: Sequence[str]) -> str:
        return await self._call(lambda: self.store.least_used(key, members), lambda: self.local.least_used(key, members))

    # ---- admission --------------------------------------------------------------------------------------

    def _scaled(self, request: AdmitRequest) -> AdmitRequest:
        """The request as this process alone may take it: its share of each bucket and of the slots."""
        slot = request.slot
        if slot is not None:
            slot = SlotRequest(max(1, math.floor(slot.limit * self.share)), slot.ttl_s)
        return dataclasses.replace(request, buckets=tuple(b.scaled(self.share) for b in request.buckets), slot=slot)

    async def admit(self, request: AdmitRequest) -> Admission:
        async def local() -> Admission:
            if self.on_down == "wait":
                wait = max(self._retry_at - self.clock.monotonic(), _WAIT_RECHECK_S)
                return Admission(False, wait, "store", local=True)
            return dataclasses.replace(await self.local.admit(self._scaled(request)), local=True)
        return await self._call(lambda: self.store.admit(request), local)

    async def acquire_slot(self, account: str, slot: SlotRequest) -> str | None:
        scaled = SlotRequest(max(1, math.floor(slot.limit * self.share)), slot.ttl_s)
        return await self._call(lambda: self.store.acquire_slot(account, slot), lambda: self.local.acquire_slot(account, scaled))

    async def apply(self, writes: Sequence[Write]) -> None:
        async def remote() -> None:
            await self.store.apply(writes)
            holds = [w for w in writes if isinstance(w, ExtendHold)]
            if holds:  # the mirror keeps them, should the store go away before it is read again
                await self.local.apply(holds)

        async def local() -> None:
            for w in writes:
                if isinstance(w, AddCount):
                    self._keep(w)
            await self.local.apply([self._scaled_write(w) for w in writes])
        await self._call(remote, local)

    def _scaled_write(self, w: Write) -> Write:
        """A write as this process alone applies it: to its share of each bucket."""
        if isinstance(w, EmptyBuckets):
            return dataclasses.replace(w, buckets=tuple(b.scaled(self.share) for b in w.buckets))
        if isinstance(w, (AdjustBucket, LowerBucket)):
            return dataclasses.replace(w, bucket=w.bucket.scaled(self.share))
        return w

    async def buckets(self, account: str, specs: Sequence[BucketSpec]) -> dict[str, float]:
        return await self._call(lambda: self.store.buckets(account, specs),
                                lambda: self.local.buckets(account, [s.scaled(self.share) for s in specs]))

    async def clear_buckets(self, match: str | None = None) -> int:
        async def remote() -> int:
            await self.local.clear_buckets(match)  # the buckets paced here while the store was away, too
            return await self.store.clear_buckets(match)
        return await self._call(remote, lambda: self.local.clear_buckets(match))

    async def close(self) -> None:
        """Let the refreshes and write-backs under way finish (each is bounded by the store's timeout:
        cancelling one in the middle of a connect can leave its socket behind), then close the store."""
        self._closed = True
        here = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is here]
        for task in self._tasks - set(mine):  # on another loop (the router's, a notebook's): cancel there
            if not task.get_loop().is_closed():
                task.get_loop().call_soon_threadsafe(task.cancel)
        if mine:
            _, late = await asyncio.wait(mine, timeout=_CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.store.close()


# ---- making one from the settings --------------------------------------------------------------------


def open_shared(*, url: str | None = None, path: str | os.PathLike[str] | None = None, prefix: str | None = None,
                on_down: OnDown = "local", share: float = 0.25, timeout_s: float | None = None, clock: Clock = SYSTEM_CLOCK,
                where: str = "the state URL") -> SharedState:
    """The shared state the settings ask for: Redis at `url`, else the SQLite file `path`, else memory.

    A malformed URL, an unknown scheme or a refused password raises ComboConfigError naming the URL without
    its password; a server that does not answer now is "down" (the store starts answering locally).

    Args:
        url: `redis://` or `rediss://` (from `Router(state_url=)`, `NBROUTER_STATE_URL` or `[state] url`).
        path: the state file, when there is no URL.
        prefix: the Redis key prefix (`[state] prefix`).
        on_down: "local" or "wait" (`[state] on_down`).
        share: this process's part of each limit while the store is down (`[state] share`).
        timeout_s: the longest a verb waits for the store (`[state] timeout_ms`).
        clock: the router's clock.
        where: what the URL came from, for messages.
    """
    if url:
        store: Any = _redis_store(url, prefix=prefix, clock=clock, timeout_s=timeout_s, where=where)
        down = _redis_down_at_start(store, where)
        return GuardedState(store, on_down=on_down, share=share, clock=clock, down=down, where=f"Redis at {store.url}")
    if path is not None:
        from .shared_sqlite import SQLiteShared

        sqlite = SQLiteShared(Path(path), clock=clock) if timeout_s is None else SQLiteShared(Path(path), clock=clock, busy_timeout_s=max(timeout_s, 1.0))
        return GuardedState(sqlite, on_down=on_down, share=share, clock=clock, where=f"the state file {path}")
    return MemoryShared(clock)


def _redis_store(url: str, *, prefix: str | None, clock: Clock, timeout_s: float | None, where: str) -> Any:
    from .shared_redis import DEFAULT_PREFIX, DEFAULT_TIMEOUT_S, RedisShared, parse_redis_url, redact_url

    parse_redis_url(url, where=where)  # a malformed URL fails before anything is imported
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ComboConfigError(f"{where} {redact_url(url)!r} needs the redis client: pip install 'nbrouter[redis]'",
                               field="state.url") from None
    return RedisShared(url, prefix=DEFAULT_PREFIX if prefix is None else prefix, clock=clock,
                       timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)


def _redis_down_at_start(store: Any, where: str) -> str | None:
    """Ask the server once, now: a refused password is the user's error; no answer is an outage."""
    import redis.exceptions as rx

    try:
        with store.make_client(asyncio_client=False) as client:
            client.ping()
    except (rx.AuthenticationError, rx.AuthenticationWrongNumberOfArgsError) as exc:
        raise ComboConfigError(f"{where} {store.url!r}: the server refused the credentials ({_plain(exc, store)})",
                               field="state.url") from None
    except rx.ResponseError as exc:
        text = _plain(exc, store)
        if any(word in text.upper() for word in ("NOAUTH", "WRONGPASS", "AUTH")):
            raise ComboConfigError(f"{where} {store.url!r}: the server refused the credentials ({text})", field="state.url") from None
        return f"Redis at {store.url}: {text}"
    except (rx.RedisError, OSError) as exc:
        return str(store.down_error(exc))
    return None


def _plain(exc: BaseException, store: Any) -> str:
    """An error's text with the URL's password removed, should a server or client have echoed it."""
    text = str(exc) or type(exc).__name__
    password = store.parsed.password
    return text.replace(password, "***") if password else text

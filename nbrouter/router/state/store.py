"""What the router remembers, as the attempt loop asks for it: `StateStore`, over the values of `health.py`
and a backend of `store.py`.

The state lives in memory, where the loop reads and changes it without waiting; every change is also
queued for a writer thread that mirrors it into the backend (by default one SQLite file, WAL mode) in
batches, off the request's path. Another process's changes are picked up by `refresh()`, which looks at
the backend's data version at most once per `state_refresh_s`. If the file cannot be used, the store runs
on memory and says so (`warning`).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from ..._core import Clock, ErrorKind
from ..._core.clock import SYSTEM_CLOCK
from ..._core.closing import close_at_exit
from . import health
from .health import FOREVER, Breaker, BreakerState, Hold, HoldKind, LatencyStats, RateLimitState, UsageWindow
from ..policy import Policy
from .backends import (
    CALL_NAMES,
    SCHEMA_VERSION,
    BatchWriter,
    MemoryBackend,
    SQLiteBackend,
    StateBackend,
    StoreBusy,
    StoreUnavailable,
    default_state_path,
    typed_call,
)
from ..types import Attempt

__all__ = ["CLOSED", "DURABLE_WAIT_S", "FOREVER", "HALF_OPEN", "OPEN", "SCHEMA_VERSION", "StateStore", "default_state_path"]

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

_NO_DECISION = (None, None, None)

_INT = frozenset({int, type(None)})
_TEXT = frozenset({str, type(None)})

#: how long a durable hold waits for the file (seconds of real time) before the call goes on without it
DURABLE_WAIT_S = 2.0


def _encode(kind: str, obj: Any) -> str:
    if kind == "counter":
        return str(obj)
    if kind == "pointer":
        return json.dumps(obj)
    return health.encode(obj)


class StateStore:
    """Cooldowns, locks, breakers, counters, statistics and the call log, in memory and in a backend.

    Args:
        path: the SQLite file (default: `NBROUTER_STATE`, else the user state dir) when `persist`.
        policy: the numbers of the breaker and the statistics (`Router` keeps it current).
        persist: False keeps everything in this process's memory.
        log_content: False keeps prompts and responses out of the call log.
        clock: where the store reads the time itself (stamps, expiry on load, refresh spacing).
        backend: a backend to use instead of the file or memory `path` and `persist` choose.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, policy: Policy | None = None, persist: bool = True,
                 log_content: bool = True, clock: Clock = SYSTEM_CLOCK, backend: StateBackend | None = None) -> None:
        self.policy = policy or Policy()
        self.clock = clock
        self.log_content = log_content
        self._warning: str | None = None
        self.holds: dict[str, Hold] = {}
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, LatencyStats] = {}
        self.usage: dict[str, UsageWindow] = {}
        self.ratelimits: dict[str, RateLimitState] = {}
        self.counters: dict[str, int] = {}
        self.pointers: dict[str, str] = {}
        self._tables: dict[str, dict[str, Any]] = {"hold": self.holds, "breaker": self.breakers, "latency": self.latency,
                                                   "usage": self.usage, "ratelimit": self.ratelimits}
        self._writer: BatchWriter | None = None
        self._data_version = -1
        #: (kind, key) -> when this process removed it (a reset, an expired hold): older rows stay removed
        self._removed: dict[tuple[str, str], float] = {}
        self._next_refresh = 0.0
        self._closed = False
        if backend is None and path is None and persist:
            path = default_state_path()
        self.path: Path | None = None
        busy: str | None = None
        try:
            if backend is None:
                backend = SQLiteBackend(path) if path is not None else MemoryBackend()
            self.path = backend.path
            backend.open()
        except StoreBusy as exc:
            # a healthy file another process holds: run on memory now, write it when it frees up
            busy = f"{exc}; running on memory and trying again in the background"
            warnings.warn("nbrouter: " + busy, RuntimeWarning, stacklevel=2)
        except Exception as exc:  # StoreUnavailable, or any surprise: a call never fails for the state file
            why = str(exc) if isinstance(exc, StoreUnavailable) else f"{type(exc).__name__}: {exc}"
            self._warning = f"state store unavailable ({why}); running on memory: cooldowns will not survive a restart"
            warnings.warn("nbrouter: " + self._warning, RuntimeWarning, stacklevel=2)
            backend = MemoryBackend()
        assert backend is not None
        self.backend = backend
        if backend.persistent:
            if busy is None:
                try:
                    self._load_all()
                except Exception as exc:  # opened but not readable after all: start with nothing loaded
                    self._warning = f"the state file {self.path} could not be read ({exc}); starting with empty state"
                    warnings.warn("nbrouter: " + self._warning, RuntimeWarning, stacklevel=2)
            self._writer = BatchWriter(backend, _encode, opened=busy is None, warning=busy)
            _open_stores.add(self)

    @property
    def warning(self) -> str | None:
        """Why the state is not (all) reaching the file, or None."""
        w = self._writer
        return (w.warning if w is not None else None) or self._warning

    @warning.setter
    def warning(self, value: str | None) -> None:
        self._warning = value

    @property
    def persistent(self) -> bool:
        """Do changes reach a file that other processes and later runs read (now)?"""
        return self._writer is not None and self._writer.healthy

    # ---- loading and refreshing -----------------------------------------------------------

    def _load_all(self, only_newer: bool = False) -> None:
        rows = self.backend.load()
        self._data_version = self.backend.version()
        now = self.clock.time()
        for kind, key, value, updated in rows:
            try:
                if kind == "counter":
                    if not only_newer or int(value) > self.counters.get(key, -1):
                        self.counters[key] = int(value)
                    continue
                if kind == "pointer":
                    self.pointers[key] = json.loads(value)
                    continue
                target = self._tables.get(kind)
                if target is None:
                    continue
                current = target.get(key)
                if only_newer and current is not None and getattr(current, "updated", 0.0) >= updated:
                    continue
                removed = self._removed.get((kind, key))
                if removed is not None:
                    if updated <= removed:
                        continue  # removed here (a reset) after this version was written: it stays removed
                    del self._removed[(kind, key)]
                obj = health.decode(kind, value)
                if kind == "hold" and not obj.active(now):
                    target.pop(key, None)
                    continue
                target[key] = obj
            except (ValueError, TypeError, KeyError, AttributeError):
                continue

    def refresh(self, now: float | None = None) -> None:
        """Pick up what other processes wrote (at most once per `state_refresh_s`).

        Args:
            now: the clock's monotonic time (default: read from the store's clock).
        """
        w = self._writer
        if w is None or not w.opened:
            return
        if w.reopened:  # the file was busy when the store opened and has been opened since
            w.reopened = False
            self._next_refresh = float("-inf")
        now = self.clock.monotonic() if now is None else now
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.policy.state_refresh_s
        try:
            if self.backend.version() != self._data_version:
                self._load_all(only_newer=True)
        except Exception:  # another process's trouble with the file must not fail a call
            pass

    def force_refresh(self) -> None:
        """Write what is queued and read what other processes wrote, now."""
        self._next_refresh = float("-inf")
        self.flush()
        self.refresh()

    # ---- writing ----------------------------------------------------------------------------

    def _put(self, kind: str, key: str, obj: Any) -> None:
        """Mark an entry changed; the writer thread encodes and writes the latest version of it."""
        if self._writer is None:
            return
        now = self.clock.time()
        if kind not in ("counter", "pointer"):
            obj.updated = now
        if self._removed:
            self._removed.pop((kind, key), None)
        self._writer.put(kind, key, obj, now)

    def _delete(self, kind: str, key: str, stamp: float | None = None) -> None:
        """Mark an entry removed; in the file, a version newer than `stamp` (default: now) stays."""
        if self._writer is not None:
            stamp = self.clock.time() if stamp is None else stamp
            # until the file has it too, a refresh must not bring the entry back from an older row
            if len(self._removed) >= 100_000:
                self._removed.clear()
            self._removed[(kind, key)] = stamp
            self._writer.delete(kind, key, stamp)

    def log_attempts(self, call_id: str, combo: str, attempts: list[Attempt], prompt: str | None, response: str | None,
                     decision: tuple[str, int, str] | None = None) -> None:
        """Queue one call-log row per attempt (written in a batch by the writer thread).

        Args:
            call_id: the call the attempts belong to.
            combo: the combo the call asked for.
            attempts: the call's attempts, in order.
            prompt: the prompt (kept on attempts that were tried, unless `log_content` is off).
            response: the text (kept on the served attempt).
            decision: (strategy, seed, config hash): with the same state, `explain(..., seed=seed)`
                replays the order.
        """
        if not self.log_content:
            prompt = response = None
        rows = []
        for a in attempts:
            action = a.action.value
            u = a.usage
            row = (
                call_id, a.started_at, combo, a.candidate, a.path, action, a.kind.value if a.kind else None,
                a.status, a.latency_s, a.ttft_s, u.input_tokens if u else None, u.output_tokens if u else None,
                u.cached_tokens if u else None, str(a.cost_usd) if a.cost_usd is not None else None, a.message,
                a.request_id, a.hold, a.hold_until, a.warning,
                prompt if action != "skipped" else None, response if action == "served" else None,
                *(decision or _NO_DECISION),
            )
            # the values a provider's reply supplies are checked here (a few type() calls); a row with an
            # odd one (a dict as request id, a count sent as a string) is typed whole before it is queued
            if not (type(a.status) in _INT and type(a.request_id) in _TEXT and type(a.message) in _TEXT
                    and type(a.warning) in _TEXT and (u is None or (type(u.input_tokens) in _INT
                    and type(u.output_tokens) in _INT and type(u.cached_tokens) in _INT))):
                row = typed_call(row)
            rows.append(row)
        if self._writer is not None:
            self._writer.log(rows)
        else:
            self.backend.write((), (), rows)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything changed so far is in the file.

        Args:
            timeout: the longest wait, in seconds of real time (the writer is a real thread).
        """
        if self._writer is not None:
            self._writer.flush(timeout)  # also tries a busy file again at once

    def close(self) -> None:
        """Flush and stop the writer; the store keeps working on memory afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.backend.close()
        _open_stores.discard(self)

    # ---- holds -----------------------------------------------------------------------------

    def hold(self, key: str, now: float) -> Hold | None:
        """The active hold on a candidate or account key; expired holds are dropped when read."""
        h = self.holds.get(key)
        if h is None:
            return None
        if not h.active(now):
            del self.holds[key]
            self._delete("hold", key, h.updated)  # not a hold another process set since
            return None
        return h

    def set_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "", *, durable: bool = False) -> Hold:
        """Hold a candidate or account key until `until` (wall-clock seconds).

        Args:
            key: a candidate (`provider#account/model`) or account (`provider#account`) key.
            kind: "cooldown", "lock" or "disabled" (a `HoldKind`).
            until: when the hold ends.
            reason: why, as status shows it.
            detail: what ends a "disabled" hold early (the refused key's fingerprint).
            durable: write the hold to the file before returning (with a full sync), for holds that
                keep a user away from a banned or exhausted account: a killed process keeps them.
                While the file is busy the hold waits in memory with the rest.
        """
        h = Hold(kind=HoldKind(kind), until=until, reason=reason, detail=detail)
        self.holds[key] = h
        self._put("hold", key, h)
        if durable and self._writer is not None and self._writer.healthy:
            self._writer.flush(DURABLE_WAIT_S, durable=True)
        return h

    def mirror_hold(self, key: str, hold: Hold) -> None:
        """Keep in memory a hold the shared store reported (another process set it): decisions skip the key
        until it ends; it is not written again (the store has it)."""
        current = self.holds.get(key)
        if current is None or current.until < hold.until:
            self.holds[key] = hold

    def clear_hold(self, key: str) -> None:
        """Lift the hold on a key, if any."""
        if self.holds.pop(key, None) is not None:
            self._delete("hold", key)

    # ---- breakers ---------------------------------------------------------------------------

    def breaker(self, key: str, now: float) -> Breaker:
        """The candidate's breaker as of `now` (a fresh closed one, not stored, if it has none)."""
        b = self.breakers.get(key)
        if b is None:
            return Breaker()
        b.at(now)
        return b

    def breaker_state(self, key: str, now: float) -> BreakerState:
        """The candidate's breaker state at `now`."""
        b = self.breakers.get(key)
        return BreakerState.CLOSED if b is None else b.at(now)

    def admit(self, key: str, now: float) -> tuple[bool, float | None]:
        """May the candidate be tried now? (HALF_OPEN admits one probe at a time.) Returns (ok, open until)."""
        b = self.breakers.get(key)
        if b is None:
            return True, None
        return b.admits(now)

    def begin_probe(self, key: str, now: float) -> None:
        """A half-open candidate's probe starts at `now`."""
        b = self.breakers.get(key)
        if b is not None:
            b.begin_probe(now)

    def end_probe(self, key: str) -> None:
        """The probe ended without a verdict (a kind that does not count): let the next one in."""
        b = self.breakers.get(key)
        if b is not None:
            b.end_probe()

    def breaker_failure(self, key: str, now: float, *, open_now: bool = False) -> Breaker:
        """Count a failure of the candidate at `now` (`open_now`: open at once, as for a refused local server)."""
        b = self.breakers.get(key)
        if b is None:
            b = self.breakers[key] = Breaker()
        b.failure(now, self.policy, open_now=open_now)
        self._put("breaker", key, b)
        return b

    def breaker_success(self, key: str) -> None:
        """The candidate served: close its breaker."""
        b = self.breakers.get(key)
        if b is not None and b.success():
            self._put("breaker", key, b)

    def reset(self, match: str | None = None) -> int:
        """Clear cooldowns, locks and breakers whose key contains `match` (all when None)."""
        n = 0
        for table, kind in ((self.holds, "hold"), (self.breakers, "breaker")):
            for key in list(table):
                if match is None or match in key or key.startswith(match):
                    del table[key]
                    self._delete(kind, key)
                    n += 1
        return n

    # ---- statistics -------------------------------------------------------------------------

    def stats(self, key: str) -> LatencyStats:
        """The candidate's statistics (created empty on first use)."""
        s = self.latency.get(key)
        if s is None:
            s = self.latency[key] = LatencyStats(samples=deque(maxlen=self.policy.latency_samples))
        return s

    def record_outcome(
        self, key: str, now: float, *, ok: bool, latency_s: float | None, ttft_s: float | None, streamed: bool,
        cost: float | None, error: ErrorKind | None, charged_unknown: bool = False,
    ) -> None:
        """Count one attempt of the candidate that ended at `now` (`charged_unknown`: at an unknown price)."""
        s = self.stats(key)
        s.record(now, ok=ok, latency_s=latency_s, ttft_s=ttft_s, streamed=streamed, cost=cost, error=error,
                 alpha=self.policy.latency_ewma_alpha, charged_unknown=charged_unknown)
        self._put("latency", key, s)

    def record_usage(self, account_key: str, now: float, tokens: int) -> UsageWindow:
        """Count one request of `tokens` tokens against the account's minute and day."""
        w = self.usage.get(account_key)
        if w is None:
            w = self.usage[account_key] = UsageWindow()
        w.add(now, tokens)
        self._put("usage", account_key, w)
        return w

    def usage_window(self, account_key: str, now: float) -> UsageWindow:
        """The account's usage in the minute and day of `now`."""
        w = self.usage.get(account_key)
        if w is None:
            return UsageWindow(minute=int(now // 60), day=int(now // 86400))
        w.roll(now)
        return w

    def record_ratelimits(self, account_key: str, limits: Any) -> None:
        """Keep what a reply's rate-limit headers said about the account (a `RateLimits`)."""
        r = self.ratelimits.get(account_key)
        if r is None:
            r = self.ratelimits[account_key] = RateLimitState()
        r.observe(limits)
        self._put("ratelimit", account_key, r)

    def ratelimit(self, account_key: str, now: float) -> Any:
        """The account's rate-limit headroom at `now` (a `RateLimits`), None if no headers were seen."""
        r = self.ratelimits.get(account_key)
        return None if r is None else r.at(now)

    # ---- counters and pointers ---------------------------------------------------------------

    def next_counter(self, name: str) -> int:
        """Return the counter's value and advance it (round-robin turns, persisted)."""
        value = self.counters.get(name, 0)
        self.counters[name] = value + 1
        self._put("counter", name, value + 1)
        return value

    def set_counter(self, name: str, value: int) -> None:
        """Set the counter to a turn the shared store handed out (memory only: the store keeps the truth)."""
        self.counters[name] = value

    def counter(self, name: str) -> int:
        """The counter's value."""
        return self.counters.get(name, 0)

    def set_pointer(self, name: str, value: str) -> None:
        """Remember a named value (the last good candidate of a combo, ...)."""
        if self.pointers.get(name) != value:
            self.pointers[name] = value
            self._put("pointer", name, value)

    # ---- the call log -------------------------------------------------------------------------

    def recent_log(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last `limit` attempts of the call log, oldest first."""
        w = self._writer
        if w is not None and not w.opened:  # the file is busy: what waits for it is all there is
            pending = w.pending_rows()[-limit:] if limit > 0 else []
            return [dict(zip(CALL_NAMES, row)) for row in pending]
        self.flush()
        try:
            rows = self.backend.recent_calls(limit)
        except Exception as exc:  # the log is a record; failing to read it must not fail the caller
            self._warning = f"the call log could not be read ({exc})"
            return []
        return rows[::-1]

    def iter_log(self) -> Iterator[dict[str, Any]]:
        """Every attempt of the call log, oldest first."""
        return iter(self.recent_log(1_000_000))


#: made after store.py's writers: a store is closed at exit before the writers left over
_open_stores: "weakref.WeakSet[StateStore]" = close_at_exit()

"""What the router remembers: cooldowns, locks, breakers, counters, latency, usage, and the call log.

The state lives in memory, where the loop reads and changes it without waiting; every change is also
queued for a writer thread that mirrors it into one SQLite file (WAL mode) in batches, off the request's
path. Another process's changes are picked up by `refresh()`, which looks at SQLite's `data_version` at
most once per `state_refresh_s`. If the file cannot be used, the store runs on memory and says so.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from .._core import RateLimits
from .policy import Policy
from .types import Attempt, ErrorKind

SCHEMA_VERSION = 1
FOREVER = 10 * 365 * 86400.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

#: the writer thread writes at most one batch per this many seconds unless a flush waits: every wake-up
#: of the writer costs the request loop a GIL hand-off, and changes to one entry in between coalesce
WRITE_BATCH_S = 0.05


def default_state_path() -> Path:
    """`NBROUTER_STATE` if set, else `state.sqlite3` in the platform's user state dir for nbrouter."""
    env = os.environ.get("NBROUTER_STATE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir("nbrouter", appauthor=False)) / "state.sqlite3"


@dataclass
class Hold:
    """A cooldown, lock or disablement of a candidate or an account."""

    kind: str = "cooldown"  # cooldown | lock | disabled
    until: float = 0.0
    reason: str = ""
    detail: str = ""
    updated: float = 0.0


@dataclass
class Breaker:
    """A candidate's circuit breaker."""

    state: str = CLOSED
    failures: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    open_for: float = 0.0
    multiplier: int = 1
    probing: bool = False
    updated: float = 0.0


@dataclass
class LatencyStats:
    """Recent latency and outcomes of a candidate (bounded)."""

    ewma_total: float | None = None
    ewma_ttft: float | None = None
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    outcomes: deque[int] = field(default_factory=lambda: deque(maxlen=100))
    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    last_error: str | None = None
    last_used: float = 0.0
    hour_buckets: dict[int, int] = field(default_factory=dict)
    updated: float = 0.0

    def percentile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        idx = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[idx]

    def requests_last_hour(self, now: float) -> int:
        minute = int(now // 60)
        return sum(c for m, c in self.hour_buckets.items() if minute - m < 60)

    def error_rate(self) -> float:
        return (len(self.outcomes) - sum(self.outcomes)) / len(self.outcomes) if self.outcomes else 0.0


@dataclass
class UsageWindow:
    """Requests and tokens an account used in the current minute and day (by our own count)."""

    minute: int = 0
    minute_requests: int = 0
    minute_tokens: int = 0
    day: int = 0
    day_requests: int = 0
    day_tokens: int = 0
    updated: float = 0.0

    def roll(self, now: float) -> None:
        minute, day = int(now // 60), int(now // 86400)
        if minute != self.minute:
            self.minute, self.minute_requests, self.minute_tokens = minute, 0, 0
        if day != self.day:
            self.day, self.day_requests, self.day_tokens = day, 0, 0


@dataclass
class RateLimitState(RateLimits):
    """The last rate-limit headers an account's provider sent, and when they were recorded."""

    updated: float = 0.0


_RATELIMIT_FIELDS = tuple(f.name for f in fields(RateLimits))

#: what the call log records of each call's decision, so that it can be replayed
_DECISION_COLUMNS = (("strategy", "TEXT"), ("seed", "INTEGER"), ("config_hash", "TEXT"))

_KINDS = {"hold": Hold, "breaker": Breaker, "latency": LatencyStats, "usage": UsageWindow, "ratelimit": RateLimitState}


def _encode(obj: Any) -> str:
    # copies made in C (list(deque), dict(dict)) are atomic under the GIL, so the loop thread may go on
    # changing the object while the writer thread encodes it
    data = dict(obj.__dict__)
    for key, value in list(data.items()):
        if isinstance(value, deque):
            data[key] = list(value)
        elif isinstance(value, dict):
            data[key] = {str(k): v for k, v in dict(value).items()}
    return json.dumps(data)


def _decode(kind: str, blob: str) -> Any:
    cls = _KINDS[kind]
    data = json.loads(blob)
    obj = cls()
    for key, value in data.items():
        if not hasattr(obj, key):
            continue
        current = getattr(obj, key)
        if isinstance(current, deque):
            current.extend(value)
        elif key == "hour_buckets":
            setattr(obj, key, {int(k): v for k, v in value.items()})
        else:
            setattr(obj, key, value)
    return obj


class StateStore:
    """Cooldowns, locks, breakers, counters, statistics and the call log, in memory and in SQLite."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, policy: Policy | None = None, persist: bool = True, log_content: bool = True, clock: Any = None) -> None:
        self.clock = clock
        self.policy = policy or Policy()
        self.path: Path | None = Path(path) if path is not None else (default_state_path() if persist else None)
        self.warning: str | None = None
        self.holds: dict[str, Hold] = {}
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, LatencyStats] = {}
        self.usage: dict[str, UsageWindow] = {}
        self.ratelimits: dict[str, RateLimitState] = {}
        self.counters: dict[str, int] = {}
        self.pointers: dict[str, str] = {}
        self.log_content = log_content
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a flush is waiting: write now
        self._dirty: dict[tuple[str, str], Any] = {}
        self._log_rows: list[tuple[Any, ...]] = []
        self._generation_asked = 0
        self._generation_done = 0
        self._closing = False
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._data_version = -1
        self._next_refresh = 0.0
        self._closed = False
        self._flushed = threading.Condition()
        if self.path is not None:
            self._open()
        if self._reader is not None:
            self._load_all()
            self._writer = threading.Thread(target=self._write_loop, name="nbrouter-state", daemon=True)
            self._writer.start()
            _open_stores.add(self)

    # ---- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        conn = sqlite3.connect(str(self.path), timeout=5.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(f"cannot create {self.path.parent}: {exc.strerror}")
            return
        for attempt in range(2):
            try:
                conn = self._connect()
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    conn.close()
                    self._move_aside(f"it was written by a newer nbrouter (schema {version} > {SCHEMA_VERSION})")
                    continue
                conn.executescript(
                    """
                    CREATE TABLE IF NOT EXISTS state (
                        kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated REAL NOT NULL,
                        PRIMARY KEY (kind, key));
                    CREATE TABLE IF NOT EXISTS calls (
                        id INTEGER PRIMARY KEY, call_id TEXT, ts REAL, combo TEXT, candidate TEXT, path TEXT,
                        action TEXT, kind TEXT, status INTEGER, latency_s REAL, ttft_s REAL, input_tokens INTEGER,
                        output_tokens INTEGER, cached_tokens INTEGER, cost_usd TEXT, message TEXT, request_id TEXT,
                        hold TEXT, hold_until REAL, warning TEXT, prompt TEXT, response TEXT);
                    CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
                    """
                )
                columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
                for name, kind in _DECISION_COLUMNS:
                    if name not in columns:  # files from before the decision was logged
                        conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._reader = conn
                return
            except sqlite3.DatabaseError as exc:
                if attempt == 0 and self.path.exists():
                    self._move_aside(f"it could not be read ({exc})")
                    continue
                self._fail(f"cannot use {self.path}: {exc}")
                return
            except OSError as exc:
                self._fail(f"cannot use {self.path}: {exc}")
                return

    def _move_aside(self, why: str) -> None:
        assert self.path is not None
        aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bad")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                try:
                    os.replace(src, Path(str(aside) + suffix))
                except OSError:
                    pass
        warnings.warn(f"nbrouter: the state file {self.path} was moved aside to {aside} because {why}; starting afresh", RuntimeWarning, stacklevel=3)

    def _fail(self, why: str) -> None:
        self._reader = None
        self.warning = f"state store unavailable ({why}); running on memory: cooldowns will not survive a restart"
        warnings.warn("nbrouter: " + self.warning, RuntimeWarning, stacklevel=3)

    @property
    def persistent(self) -> bool:
        return self._reader is not None

    # ---- loading and refreshing -----------------------------------------------------------

    def _load_all(self, only_newer: bool = False) -> None:
        assert self._reader is not None
        with self._read_lock:
            rows = self._reader.execute("SELECT kind, key, value, updated FROM state").fetchall()
            self._data_version = self._reader.execute("PRAGMA data_version").fetchone()[0]
        now = time.time()
        for kind, key, value, updated in rows:
            try:
                if kind == "counter":
                    if not only_newer or int(value) > self.counters.get(key, -1):
                        self.counters[key] = int(value)
                    continue
                if kind == "pointer":
                    self.pointers[key] = json.loads(value)
                    continue
                target = self._table(kind)
                if target is None:
                    continue
                current = target.get(key)
                if only_newer and current is not None and getattr(current, "updated", 0.0) >= updated:
                    continue
                obj = _decode(kind, value)
                if kind == "hold" and obj.until <= now:
                    target.pop(key, None)
                    continue
                target[key] = obj
            except (ValueError, TypeError, KeyError):
                continue

    def _table(self, kind: str) -> dict[str, Any] | None:
        return {"hold": self.holds, "breaker": self.breakers, "latency": self.latency, "usage": self.usage, "ratelimit": self.ratelimits}.get(kind)

    def refresh(self, now: float | None = None) -> None:
        """Pick up what other processes wrote (at most once per `state_refresh_s`)."""
        if self._reader is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.policy.state_refresh_s
        try:
            with self._read_lock:
                version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._load_all(only_newer=True)
        except sqlite3.Error:
            pass

    def force_refresh(self) -> None:
        self._next_refresh = 0.0
        self.flush()
        self.refresh()

    # ---- writing ----------------------------------------------------------------------------

    def _put(self, kind: str, key: str, obj: Any) -> None:
        """Mark an entry changed; the writer thread encodes and writes the latest version of it."""
        if self._reader is None:
            return
        if kind not in ("counter", "pointer"):
            obj.updated = time.time()
        with self._lock:
            self._dirty[(kind, key)] = obj
        if not self._wake.is_set():
            self._wake.set()

    def _delete(self, kind: str, key: str) -> None:
        if self._reader is None:
            return
        with self._lock:
            self._dirty[(kind, key)] = None
        if not self._wake.is_set():
            self._wake.set()

    def log_attempts(self, call_id: str, combo: str, attempts: list[Attempt], prompt: str | None, response: str | None,
                     decision: tuple[str, int, str] | None = None) -> None:
        """Queue one call-log row per attempt (written in a batch by the writer thread). `decision` is
        (strategy, seed, config hash): with the same state, `explain(..., seed=seed)` replays the order."""
        if self._reader is None:
            return
        if not self.log_content:
            prompt = response = None
        rows = []
        for a in attempts:
            tried = a.action.value != "skipped"
            u = a.usage
            rows.append(
                (
                    call_id, a.started_at, combo, a.candidate, a.path, a.action.value, a.kind.value if a.kind else None,
                    a.status, a.latency_s, a.ttft_s, u.input_tokens if u else None, u.output_tokens if u else None,
                    u.cached_tokens if u else None, str(a.cost_usd) if a.cost_usd is not None else None, a.message,
                    a.request_id, a.hold, a.hold_until, a.warning,
                    prompt if tried else None, response if a.action.value == "served" else None,
                    *(decision or (None, None, None)),
                )
            )
        with self._lock:
            self._log_rows.extend(rows)
        if not self._wake.is_set():
            self._wake.set()

    @staticmethod
    def _encode_value(kind: str, obj: Any) -> str:
        if kind == "counter":
            return str(obj)
        if kind == "pointer":
            return json.dumps(obj)
        return _encode(obj)

    def _write_loop(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            self.warning = f"state store unavailable ({exc}); running on memory"
            return
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                dirty, self._dirty = self._dirty, {}
                rows, self._log_rows = self._log_rows, []
                generation = self._generation_asked
                stop = self._closing
            if dirty or rows:
                try:
                    puts, dels = [], []
                    for (kind, key), obj in dirty.items():
                        if obj is None:
                            dels.append((kind, key))
                        else:
                            puts.append((kind, key, self._encode_value(kind, obj), getattr(obj, "updated", time.time())))
                    conn.execute("BEGIN")
                    if puts:
                        conn.executemany(
                            "INSERT INTO state(kind, key, value, updated) VALUES (?,?,?,?) "
                            "ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                            puts,
                        )
                    if dels:
                        conn.executemany("DELETE FROM state WHERE kind=? AND key=?", dels)
                    if rows:
                        conn.executemany(
                            "INSERT INTO calls(call_id, ts, combo, candidate, path, action, kind, status, latency_s, "
                            "ttft_s, input_tokens, output_tokens, cached_tokens, cost_usd, message, request_id, hold, "
                            "hold_until, warning, prompt, response, strategy, seed, config_hash) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            rows,
                        )
                    conn.execute("COMMIT")
                except (sqlite3.Error, RuntimeError, ValueError) as exc:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    self.warning = f"state store write failed ({exc}); recent state kept in memory only"
            with self._flushed:
                self._generation_done = max(self._generation_done, generation)
                self._flushed.notify_all()
            if stop:
                conn.close()
                return
            # let changes pile up into the next batch, unless a flush is waiting for them
            self._urgent.wait(WRITE_BATCH_S)
            self._urgent.clear()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything changed so far is in the file."""
        if self._writer is None or not self._writer.is_alive():
            return
        with self._lock:
            self._generation_asked += 1
            target = self._generation_asked
        self._urgent.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._generation_done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._writer.is_alive():
                    return
                self._flushed.wait(min(left, 0.1))

    def close(self) -> None:
        """Flush and stop the writer; the store keeps working on memory afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None and self._writer.is_alive():
            with self._lock:
                self._closing = True
            self.flush()
            self._writer.join(timeout=5.0)
        if self._reader is not None:
            with self._read_lock:
                self._reader.close()
            self._reader = None
        _open_stores.discard(self)

    # ---- holds -----------------------------------------------------------------------------

    def hold(self, key: str, now: float) -> Hold | None:
        """The active hold on a candidate or account key; expired holds are dropped when read."""
        h = self.holds.get(key)
        if h is None:
            return None
        if h.until <= now:
            del self.holds[key]
            self._delete("hold", key)
            return None
        return h

    def set_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "", *, durable: bool = False) -> Hold:
        h = Hold(kind=kind, until=until, reason=reason, detail=detail)
        self.holds[key] = h
        self._put("hold", key, h)
        return h

    def clear_hold(self, key: str) -> None:
        if self.holds.pop(key, None) is not None:
            self._delete("hold", key)

    # ---- breakers ---------------------------------------------------------------------------

    def breaker(self, key: str, now: float) -> Breaker:
        b = self.breakers.get(key)
        if b is None:
            return Breaker()
        if b.state == OPEN and now >= b.opened_at + b.open_for:
            b.state = HALF_OPEN
            b.probing = False
        return b

    def breaker_state(self, key: str, now: float) -> str:
        return self.breaker(key, now).state

    def admit(self, key: str, now: float) -> tuple[bool, float | None]:
        """May the candidate be tried now? (HALF_OPEN admits one probe at a time.) Returns (ok, open until)."""
        b = self.breakers.get(key)
        if b is None:
            return True, None
        b = self.breaker(key, now)
        if b.state == OPEN:
            return False, b.opened_at + b.open_for
        if b.state == HALF_OPEN and b.probing:
            return False, None
        return True, None

    def begin_probe(self, key: str, now: float) -> None:
        b = self.breakers.get(key)
        if b is not None and self.breaker(key, now).state == HALF_OPEN:
            b.probing = True

    def end_probe(self, key: str) -> None:
        """The probe ended without a verdict (a kind that does not count): let the next one in."""
        b = self.breakers.get(key)
        if b is not None and b.probing:
            b.probing = False

    def breaker_failure(self, key: str, now: float, *, open_now: bool = False) -> Breaker:
        p = self.policy
        b = self.breakers.get(key)
        if b is None:
            b = self.breakers[key] = Breaker()
        state = self.breaker(key, now).state
        if state == HALF_OPEN:
            b.multiplier = min(p.breaker_max_multiplier, b.multiplier * 2)
            self._trip(b, now)
        elif state == CLOSED:
            b.failures = [t for t in b.failures if now - t < p.breaker_window_s]
            b.failures.append(now)
            if open_now or len(b.failures) >= p.breaker_failures:
                self._trip(b, now)
        self._put("breaker", key, b)
        return b

    def _trip(self, b: Breaker, now: float) -> None:
        b.state = OPEN
        b.opened_at = now
        b.open_for = self.policy.breaker_open_s * b.multiplier
        b.failures = []
        b.probing = False

    def breaker_success(self, key: str) -> None:
        b = self.breakers.get(key)
        if b is None:
            return
        if b.state != CLOSED or b.failures or b.multiplier != 1:
            self.breakers[key] = Breaker()
            self._put("breaker", key, self.breakers[key])

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
        s = self.latency.get(key)
        if s is None:
            s = self.latency[key] = LatencyStats(samples=deque(maxlen=self.policy.latency_samples))
        return s

    def record_outcome(
        self, key: str, now: float, *, ok: bool, latency_s: float | None, ttft_s: float | None, streamed: bool,
        cost: float | None, error: ErrorKind | None,
    ) -> None:
        s = self.stats(key)
        alpha = self.policy.latency_ewma_alpha
        s.requests += 1
        s.last_used = now
        minute = int(now // 60)
        s.hour_buckets[minute] = s.hour_buckets.get(minute, 0) + 1
        if len(s.hour_buckets) > 61:
            for m in [m for m in s.hour_buckets if minute - m >= 60]:
                del s.hour_buckets[m]
        s.outcomes.append(1 if ok else 0)
        if ok:
            if latency_s is not None:
                s.samples.append(latency_s)
                s.ewma_total = latency_s if s.ewma_total is None else alpha * latency_s + (1 - alpha) * s.ewma_total
            if streamed and ttft_s is not None:
                s.ewma_ttft = ttft_s if s.ewma_ttft is None else alpha * ttft_s + (1 - alpha) * s.ewma_ttft
        else:
            s.errors += 1
            s.last_error = error.value if error else None
        if cost:
            s.cost_usd += cost
        self._put("latency", key, s)

    def record_usage(self, account_key: str, now: float, tokens: int) -> UsageWindow:
        w = self.usage.get(account_key)
        if w is None:
            w = self.usage[account_key] = UsageWindow()
        w.roll(now)
        w.minute_requests += 1
        w.minute_tokens += tokens
        w.day_requests += 1
        w.day_tokens += tokens
        self._put("usage", account_key, w)
        return w

    def usage_window(self, account_key: str, now: float) -> UsageWindow:
        w = self.usage.get(account_key)
        if w is None:
            return UsageWindow(minute=int(now // 60), day=int(now // 86400))
        w.roll(now)
        return w

    def record_ratelimits(self, account_key: str, limits: Any) -> None:
        r = self.ratelimits.get(account_key) or RateLimitState()
        for name in _RATELIMIT_FIELDS:
            value = getattr(limits, name, None)
            if value is not None:
                setattr(r, name, value)
        self.ratelimits[account_key] = r
        self._put("ratelimit", account_key, r)

    def ratelimit(self, account_key: str, now: float) -> RateLimitState | None:
        r = self.ratelimits.get(account_key)
        if r is None:
            return None
        # a reset time that has passed means the window refilled
        if r.reset_requests_at is not None and r.reset_requests_at <= now and r.remaining_requests is not None:
            r.remaining_requests = r.limit_requests
        if r.reset_tokens_at is not None and r.reset_tokens_at <= now and r.remaining_tokens is not None:
            r.remaining_tokens = r.limit_tokens
        return r

    # ---- counters and pointers ---------------------------------------------------------------

    def next_counter(self, name: str) -> int:
        """Return the counter's value and advance it (round-robin turns, persisted)."""
        value = self.counters.get(name, 0)
        self.counters[name] = value + 1
        self._put("counter", name, value + 1)
        return value

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)

    def set_pointer(self, name: str, value: str) -> None:
        if self.pointers.get(name) != value:
            self.pointers[name] = value
            self._put("pointer", name, value)

    # ---- the call log -------------------------------------------------------------------------

    def recent_log(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last `limit` attempts of the call log, oldest first."""
        if self._reader is None:
            return []
        self.flush()
        with self._read_lock:
            cur = self._reader.execute(
                "SELECT call_id, ts, combo, candidate, path, action, kind, status, latency_s, ttft_s, input_tokens, "
                "output_tokens, cached_tokens, cost_usd, message, request_id, hold, hold_until, warning, prompt, response, "
                "strategy, seed, config_hash FROM calls ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        return rows[::-1]

    def iter_log(self) -> Iterator[dict[str, Any]]:
        return iter(self.recent_log(1_000_000))


_open_stores: "weakref.WeakSet[StateStore]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:
            pass

"""The shared state of one machine: the rules of shared.py, each verb one `BEGIN IMMEDIATE` transaction on
the state file (WAL), so that every kernel on the machine sees one truth and no update is lost.

The rows live in the file's `shared` table, next to the state and the call log of `backends.py`:
(space, key, value as JSON, expires). A transaction reads what it needs, decides by the same rule the
memory store runs, and writes before it commits; another process waits for the write lock (the busy
timeout), never reads a stale value to write back.

A verb asked on the event loop tries once without waiting (the file free: the common case, no thread, no
hop); when another process holds the write lock it waits for it in a worker thread, so that the loop
goes on with the other calls meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ..._core import Clock
from ..._core.clock import SYSTEM_CLOCK
from .backends import is_busy
from .health import Hold
from .shared import RuleStore, Rules, StoreDown

__all__ = ["SHARED_TABLE", "SQLiteShared"]

T = TypeVar("T")

SHARED_TABLE = ("CREATE TABLE IF NOT EXISTS shared (space TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
                "expires REAL NOT NULL, PRIMARY KEY (space, key)) WITHOUT ROWID")
#: a verb waiting for another connection's lock tries again after this long, twice as long each time up to
#: _POLL_MAX_S
_POLL_FIRST_S = 0.0005
_POLL_MAX_S = 0.005
#: expired rows are deleted once per this many transactions of a process
_SWEEP_EVERY = 2000
#: a verb waits in line this long at most while the file is busy with other writers' transactions
BUSY_PATIENCE_S = 30.0
# SQLite stores no infinity in a REAL bound as a parameter portably: a far-off time stands for "never"
_NEVER = 1e300


class _SQLiteTx:
    """A transaction's view of the `shared` table (inside the caller's BEGIN IMMEDIATE)."""

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self.now = now

    def get(self, space: str, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM shared WHERE space=? AND key=? AND expires>?",
                                (space, key, self.now)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, space: str, keys: Sequence[str]) -> list[Any]:
        if len(keys) == 1:
            return [self.get(space, keys[0])]
        marks = ",".join("?" * len(keys))
        rows = dict(self.conn.execute(f"SELECT key, value FROM shared WHERE space=? AND expires>? AND key IN ({marks})",
                                      (space, self.now, *keys)).fetchall())
        return [json.loads(rows[k]) if k in rows else None for k in keys]

    def put(self, space: str, key: str, value: Any, expires: float = math.inf) -> None:
        self.conn.execute("INSERT OR REPLACE INTO shared(space, key, value, expires) VALUES (?,?,?,?)",
                          (space, key, json.dumps(value), min(expires, _NEVER)))

    def delete(self, space: str, key: str) -> None:
        self.conn.execute("DELETE FROM shared WHERE space=? AND key=?", (space, key))

    def items(self, space: str) -> list[tuple[str, Any]]:
        rows = self.conn.execute("SELECT key, value FROM shared WHERE space=? AND expires>?", (space, self.now)).fetchall()
        return [(k, json.loads(v)) for k, v in rows]


class _Busy(Exception):
    """The file's write lock is held by another connection (a first attempt that does not wait)."""


class SQLiteShared(RuleStore):
    """The shared state in a SQLite file, for every process of one machine.

    Args:
        path: the state file (the one `StateStore` uses, by default).
        clock: where "now" comes from (every process on the machine reads the same system clock).
        busy_timeout_s: how long a verb waits for another process's transaction before `StoreDown`.
    """

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = SYSTEM_CLOCK, busy_timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        #: two connections: one tried first on the event loop's thread, and one that waits for the lock (in a
        #: worker thread when the caller is an event loop), trying again every few ms up to the busy timeout
        self._conn: sqlite3.Connection | None = None
        self._waiting: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._wait_lock = threading.Lock()
        self._steps = 0
        #: verbs that found the file locked and waited for it off the event loop (in `_executor`'s thread)
        self.waited = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def mode(self) -> str:
        return "shared"

    @property
    def warning(self) -> str | None:
        return None

    def mirror_holds(self) -> dict[str, Hold]:
        return self.run(Rules.holds)

    def _connect(self, timeout: float) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(SHARED_TABLE)
        except BaseException:
            conn.close()
            raise
        return conn

    def run(self, rule: Callable[..., T], *args: Any) -> T:
        """Run one rule in one write transaction, waiting for the file's lock (the caller's thread waits).

        A file whose other writers commit while this one waits is slow (a loaded machine, many kernels),
        not down: the wait goes on while the file's data version moves, up to `BUSY_PATIENCE_S`. Only a lock
        that nobody released within a whole busy timeout (a program holding it, a process stopped while
        holding it) raises StoreDown, as does a file that cannot be used at all."""
        with self._wait_lock:
            started = time.monotonic()
            deadline = started + self.busy_timeout_s
            delay = _POLL_FIRST_S
            seen: int | None = None
            while True:
                try:
                    if self._waiting is None:
                        self._waiting = self._connect(0.0)
                    return self._transaction(self._waiting, rule, args)
                except _Busy:
                    pass
                except (sqlite3.Error, OSError) as exc:
                    if not is_busy(exc):
                        raise self._down(exc) from None
                if seen is None:
                    seen = self._data_version()
                now = time.monotonic()
                if now >= deadline:
                    # (real time: how long a lock is held is not the router's clock)
                    version = self._data_version()
                    if version is None or version == seen or now - started >= BUSY_PATIENCE_S:
                        raise self._down(sqlite3.OperationalError("database is locked"))
                    seen, deadline = version, now + self.busy_timeout_s  # the line moved: wait on
                # (SQLite's own busy handler sleeps up to 100 ms at a time: a lock held a few ms by the
                # state store's writer would cost a call that long)
                time.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)

    async def arun(self, rule: Callable[..., T], *args: Any) -> T:
        """Run one rule in one write transaction without stalling the event loop: tried at once without
        waiting; if another process holds the file's lock, waited for in a worker thread."""
        if self._lock.acquire(blocking=False):  # (held: another thread is in a verb: it waits its turn too)
            try:
                if self._conn is None:
                    # the connection that never waits: a lock held elsewhere is SQLITE_BUSY at once
                    self._conn = self._connect(0.0)
                return self._transaction(self._conn, rule, args)
            except _Busy:
                pass
            except (sqlite3.Error, OSError) as exc:
                if not is_busy(exc):  # (busy while connecting: the file is being set up elsewhere)
                    raise self._down(exc) from None
            finally:
                self._lock.release()
        self.waited += 1
        if self._executor is None:  # one thread: the waits queue on the waiting connection anyway
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbrouter-shared-wait")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(self.run, rule, *args))

    def _transaction(self, conn: sqlite3.Connection, rule: Callable[..., T], args: tuple[Any, ...]) -> T:
        """One BEGIN IMMEDIATE ... COMMIT around the rule; `_Busy` when a connection that does not wait
        finds the lock held (nothing was done: the rule may run again)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise _Busy() from None
            raise
        try:
            now = self.clock.time()
            result = rule(_SQLiteTx(conn, now), now, *args)
            self._steps += 1
            if self._steps % _SWEEP_EVERY == 0:
                conn.execute("DELETE FROM shared WHERE expires<=?", (now,))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                raise _Busy() from None  # (rolled back: the rule may run again)
            raise
        return result

    def _down(self, exc: BaseException) -> StoreDown:
        what = "busy (another process holds its lock)" if is_busy(exc) else str(exc)
        return StoreDown(f"the state file {self.path} cannot be used: {what}")

    def _data_version(self) -> int | None:
        """A number that changes whenever another connection commits to the file (None: unreadable now)."""
        try:
            return int(self._waiting.execute("PRAGMA data_version").fetchone()[0]) if self._waiting is not None else None
        except sqlite3.Error:
            return None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)  # (a wait under way ends within the busy timeout; no new one starts)
        with self._lock, self._wait_lock:
            for conn in (self._conn, self._waiting):
                if conn is not None:
                    conn.close()
            self._conn = self._waiting = None

"""The shared state of one machine: the rules of shared.py, each verb one `BEGIN IMMEDIATE` transaction on
the state file (WAL), so that every kernel on the machine sees one truth and no update is lost.

The rows live in the file's `shared` table, next to the state and the call log of `backends.py`:
(space, key, value as JSON, expires). A transaction reads what it needs, decides by the same rule the
memory store runs, and writes before it commits; another process waits for the write lock (the busy
timeout), never reads a stale value to write back.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
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
        self._conn: sqlite3.Connection | None = None
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

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(SHARED_TABLE)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def run(self, rule: Callable[..., T], *args: Any) -> T:
        """Run one rule in one write transaction. Raises StoreDown if the file cannot be used now."""
        with self._lock:
            try:
                conn = self._connection()
                self._begin(conn)
                try:
                    now = self.clock.time()
                    result = rule(_SQLiteTx(conn, now), now, *args)
                    self._steps += 1
                    if self._steps % _SWEEP_EVERY == 0:
                        conn.execute("DELETE FROM shared WHERE expires<=?", (now,))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                what = "busy (another process holds its lock)" if is_busy(exc) else str(exc)
                raise StoreDown(f"the state file {self.path} cannot be used: {what}") from None
            return result

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting in line while other writers keep the file busy: a file whose writers
        commit is slow (a loaded machine, many kernels), not down. Only a lock that nobody released within
        a whole busy timeout (a program holding it, a process stopped while holding it) raises, or a line
        longer than `BUSY_PATIENCE_S`. The happy path costs nothing more than the BEGIN."""
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        give_up = time.monotonic() + BUSY_PATIENCE_S  # (real time: how long a lock is held is not the router's clock)
        while True:
            seen = self._data_version(conn)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # another connection's commit during the wait changes the data version: the line moves
                if not is_busy(exc) or self._data_version(conn) == seen or time.monotonic() >= give_up:
                    raise

    @staticmethod
    def _data_version(conn: sqlite3.Connection) -> int:
        """A number that changes whenever another connection commits to the file."""
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

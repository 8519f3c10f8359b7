"""Where the router's state and call log are kept between processes: a small backend interface, the
SQLite file behind it (WAL mode, numbered schema migrations), a memory backend, and the writer thread
that mirrors changes into a backend in batches, off the request's path.

A backend stores opaque rows: (kind, key, value text, updated) for state, and call-log rows whose columns
are `CALL_COLUMNS`. What the values mean is `health.py`'s business; what to remember is `state.py`'s.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence


class Column(NamedTuple):
    """One column of the call log: its name, SQLite type, and the schema version that added it."""

    name: str
    type: str
    since: int = 1


#: the call log, one row per attempt; this tuple alone drives CREATE TABLE, INSERT, SELECT and migrations
CALL_COLUMNS: tuple[Column, ...] = (
    Column("call_id", "TEXT"), Column("ts", "REAL"), Column("combo", "TEXT"), Column("candidate", "TEXT"),
    Column("path", "TEXT"), Column("action", "TEXT"), Column("kind", "TEXT"), Column("status", "INTEGER"),
    Column("latency_s", "REAL"), Column("ttft_s", "REAL"), Column("input_tokens", "INTEGER"),
    Column("output_tokens", "INTEGER"), Column("cached_tokens", "INTEGER"), Column("cost_usd", "TEXT"),
    Column("message", "TEXT"), Column("request_id", "TEXT"), Column("hold", "TEXT"), Column("hold_until", "REAL"),
    Column("warning", "TEXT"), Column("prompt", "TEXT"), Column("response", "TEXT"),
    # what the call log records of each call's decision, so that it can be replayed
    Column("strategy", "TEXT", 2), Column("seed", "INTEGER", 2), Column("config_hash", "TEXT", 2),
)
CALL_NAMES = tuple(c.name for c in CALL_COLUMNS)

StateRow = tuple[str, str, str, float]  # kind, key, value, updated


def _add_call_columns(version: int) -> Callable[[sqlite3.Connection], None]:
    def migrate(conn: sqlite3.Connection) -> None:
        have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
        for c in CALL_COLUMNS:
            if c.since == version and c.name not in have:
                conn.execute(f"ALTER TABLE calls ADD COLUMN {c.name} {c.type}")
    migrate.__doc__ = f"The call log gains the columns of schema {version}."
    return migrate


def _schema_1(conn: sqlite3.Connection) -> None:
    """The state table and the call log as the first version wrote them."""
    columns = ", ".join(f"{c.name} {c.type}" for c in CALL_COLUMNS if c.since == 1)
    conn.execute("CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
                 "updated REAL NOT NULL, PRIMARY KEY (kind, key))")
    conn.execute(f"CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, {columns})")
    conn.execute("CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts)")


#: MIGRATIONS[n - 1] takes a file from schema n - 1 to n; each step is idempotent, because files of
#: schema 1 may already have what a later step adds (the decision columns were once added unnumbered)
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_1, _add_call_columns(2)]
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT_CALL = f"INSERT INTO calls({', '.join(CALL_NAMES)}) VALUES ({', '.join('?' * len(CALL_NAMES))})"
_SELECT_CALLS = f"SELECT {', '.join(CALL_NAMES)} FROM calls ORDER BY id DESC LIMIT ?"
_UPSERT_STATE = ("INSERT INTO state(kind, key, value, updated) VALUES (?,?,?,?) "
                 "ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value, updated=excluded.updated")
_DELETE_STATE = "DELETE FROM state WHERE kind=? AND key=?"


class StoreUnavailable(Exception):
    """The backend cannot be used; the store runs on memory (the message says why)."""


class StateBackend(abc.ABC):
    """Where state rows and call-log rows are kept; `SQLiteBackend` is the file, `MemoryBackend` the
    process. A backend is opened once, written by one thread (the writer) and read by another."""

    #: what the backend's data survives: True if other processes and later runs see it
    persistent: bool = False
    #: where it is, for messages
    path: Path | None = None

    @abc.abstractmethod
    def open(self) -> None:
        """Make the backend ready. Raises StoreUnavailable if it cannot be used."""

    @abc.abstractmethod
    def load(self) -> list[StateRow]:
        """Every stored state row."""

    @abc.abstractmethod
    def version(self) -> int:
        """A number that changes when another process has written (SQLite's data_version)."""

    @abc.abstractmethod
    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str]], calls: Sequence[tuple[Any, ...]]) -> None:
        """Apply one batch in one transaction: upsert `puts`, remove `deletes`, append `calls` (CALL_COLUMNS order)."""

    @abc.abstractmethod
    def recent_calls(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` call-log rows, newest first, as dicts keyed by CALL_NAMES."""

    def close(self) -> None:
        """Release what the backend holds."""


class MemoryBackend(StateBackend):
    """The process's memory: nothing survives it (`persist=False`, or when no file can be used).

    Args:
        max_calls: how many call-log rows are kept (the oldest go first).
    """

    persistent = False

    def __init__(self, max_calls: int = 10_000) -> None:
        self._rows: dict[tuple[str, str], StateRow] = {}
        self._calls: deque[tuple[Any, ...]] = deque(maxlen=max_calls)
        self._version = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        pass

    def load(self) -> list[StateRow]:
        with self._lock:
            return list(self._rows.values())

    def version(self) -> int:
        return self._version

    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str]], calls: Sequence[tuple[Any, ...]]) -> None:
        with self._lock:
            for row in puts:
                self._rows[(row[0], row[1])] = row
            for kind, key in deletes:
                self._rows.pop((kind, key), None)
            self._calls.extend(calls)
            self._version += 1

    def recent_calls(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self._calls)[-limit:] if limit > 0 else []
        return [dict(zip(CALL_NAMES, row)) for row in reversed(rows)]


def default_state_path() -> Path:
    """`NBROUTER_STATE` if set, else `state.sqlite3` in the platform's user state dir for nbrouter."""
    env = os.environ.get("NBROUTER_STATE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir("nbrouter", appauthor=False)) / "state.sqlite3"


class SQLiteBackend(StateBackend):
    """One SQLite file in WAL mode, shared by every process that opens it.

    Args:
        path: the file; its directory is created if missing.
        busy_timeout_s: how long a statement waits for another connection's write lock.
    """

    persistent = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc.strerror}") from None
        for attempt in range(2):
            conn = None
            try:
                conn = self._connect()
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    conn.close()
                    self._move_aside(f"it was written by a newer nbrouter (schema {version} > {SCHEMA_VERSION})")
                    continue
                if version < SCHEMA_VERSION:
                    self._migrate(conn)
                self._reader = conn
                return
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                if attempt == 0 and self.path.exists():
                    self._move_aside(f"it could not be read ({exc})")
                    continue
                raise StoreUnavailable(f"cannot use {self.path}: {exc}") from None
            except OSError as exc:
                raise StoreUnavailable(f"cannot use {self.path}: {exc}") from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Run the missing migrations in one write transaction (another process may be migrating too)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # every step is idempotent, and schema 1 was once stamped on files that lacked a table (the
            # schema was then re-created at each open), so an out-of-date file runs them all
            for step in MIGRATIONS:
                step(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    def _move_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bad")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                try:
                    os.replace(src, Path(str(aside) + suffix))
                except OSError:
                    pass
        warnings.warn(f"nbrouter: the state file {self.path} was moved aside to {aside} because {why}; starting afresh",
                      RuntimeWarning, stacklevel=4)

    def load(self) -> list[StateRow]:
        assert self._reader is not None
        with self._read_lock:
            return self._reader.execute("SELECT kind, key, value, updated FROM state").fetchall()

    def version(self) -> int:
        assert self._reader is not None
        with self._read_lock:
            return self._reader.execute("PRAGMA data_version").fetchone()[0]

    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str]], calls: Sequence[tuple[Any, ...]]) -> None:
        if self._writer is None:
            self._writer = self._connect()
        conn = self._writer
        conn.execute("BEGIN")
        try:
            if puts:
                conn.executemany(_UPSERT_STATE, puts)
            if deletes:
                conn.executemany(_DELETE_STATE, deletes)
            if calls:
                conn.executemany(_INSERT_CALL, calls)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def recent_calls(self, limit: int) -> list[dict[str, Any]]:
        assert self._reader is not None
        with self._read_lock:
            rows = self._reader.execute(_SELECT_CALLS, (limit,)).fetchall()
        return [dict(zip(CALL_NAMES, row)) for row in rows]

    def columns(self, table: str) -> set[str]:
        """The column names of one of the file's tables."""
        assert self._reader is not None
        with self._read_lock:
            return {row[1] for row in self._reader.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                with self._read_lock:
                    conn.close()
        self._writer = self._reader = None


#: the writer thread writes at most one batch per this many seconds unless a flush waits: every wake-up
#: of the writer costs the request loop a GIL hand-off, and changes to one entry in between coalesce
WRITE_BATCH_S = 0.05


class BatchWriter:
    """The thread that mirrors state changes and call-log rows into a backend, one batch at a time.

    The loop thread only marks entries changed (`put`, `delete`) and queues rows (`log`); the thread
    encodes the latest version of each changed entry and writes them in one transaction at most every
    `WRITE_BATCH_S`, sooner when `flush()` waits.

    Args:
        backend: an opened backend.
        encode: turns (kind, object) into the stored text, on the writer thread.
        on_error: told (with a message) when a batch could not be written.
    """

    def __init__(self, backend: StateBackend, encode: Callable[[str, Any], str], on_error: Callable[[str], None]) -> None:
        self.backend = backend
        self._encode = encode
        self._on_error = on_error
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a flush is waiting: write now
        self._dirty: dict[tuple[str, str], tuple[Any, float] | None] = {}
        self.rows: list[tuple[Any, ...]] = []
        self._asked = 0
        self._done = 0
        self._closing = False
        self._flushed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="nbrouter-state", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, kind: str, key: str, obj: Any, updated: float) -> None:
        """Mark an entry changed; the latest version of `obj` is encoded and written."""
        with self._lock:
            self._dirty[(kind, key)] = (obj, updated)
        if not self._wake.is_set():
            self._wake.set()

    def delete(self, kind: str, key: str) -> None:
        """Mark an entry removed."""
        with self._lock:
            self._dirty[(kind, key)] = None
        if not self._wake.is_set():
            self._wake.set()

    def log(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Queue call-log rows."""
        with self._lock:
            self.rows.extend(rows)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                dirty, self._dirty = self._dirty, {}
                rows, self.rows = self.rows, []
                generation = self._asked
                stop = self._closing
            if dirty or rows:
                try:
                    puts, dels = [], []
                    for (kind, key), entry in dirty.items():
                        if entry is None:
                            dels.append((kind, key))
                        else:
                            puts.append((kind, key, self._encode(kind, entry[0]), entry[1]))
                    self.backend.write(puts, dels, rows)
                except (sqlite3.Error, RuntimeError, ValueError) as exc:
                    self._on_error(f"state store write failed ({exc}); recent state kept in memory only")
            with self._flushed:
                self._done = max(self._done, generation)
                self._flushed.notify_all()
            if stop:
                return
            # let changes pile up into the next batch, unless a flush is waiting for them
            self._urgent.wait(WRITE_BATCH_S)
            self._urgent.clear()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (up to `timeout` seconds of real time) until everything queued so far is written."""
        if not self._thread.is_alive():
            return False
        with self._lock:
            self._asked += 1
            target = self._asked
        self._urgent.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flushed.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the thread."""
        if self._thread.is_alive():
            with self._lock:
                self._closing = True
            self.flush(timeout)
            self._thread.join(timeout=timeout)

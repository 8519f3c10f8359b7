"""Where the router's state and call log are kept between processes: a small backend interface, the
SQLite file behind it (WAL mode, numbered schema migrations), a memory backend, and the writer thread
that mirrors changes into a backend in batches, off the request's path.

A backend stores opaque rows: (kind, key, value text, updated) for state, and call-log rows whose columns
are `CALL_COLUMNS`. What the values mean is `health.py`'s business; what to remember is `state.py`'s.

What can go wrong with the file, and what happens:

- not ours or not whole (damaged pages, undecodable text, another program's tables, a newer schema):
  moved aside at open, with a warning naming both paths, and a fresh file started;
- busy (another connection holds a lock past the wait): never renamed; `StoreBusy`, the store runs on
  memory, and the writer keeps the changes and tries the file again in the background;
- a value SQLite refuses: the batch is written again item by item, and only that item is left out;
- a killed process: what a durable flush wrote survives; the last batch window (50 ms) may not. The
  pending batch is written at exit and on SIGTERM.
"""

from __future__ import annotations

import abc
import functools
import json
import os
import signal
import sqlite3
import threading
import time
import warnings
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from ..._core.closing import close_at_exit

__all__ = ["CALL_COLUMNS", "CALL_NAMES", "MAX_PENDING_ROWS", "MIGRATIONS", "QUICK_CHECK_MAX_BYTES", "RETRY_S", "SCHEMA_VERSION",
           "WRITE_BATCH_S", "BatchWriter", "Column", "MemoryBackend", "SQLiteBackend", "StateBackend", "StateRow",
           "StoreBusy", "StoreDamaged", "StoreUnavailable", "default_state_path", "flush_all", "is_busy", "is_damage",
           "typed_call"]


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
        for c in CALL_COLUMNS:  # and any earlier column a hand-made or half-written table lacks
            if c.since <= version and c.name not in have:
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
#: the most `?` a statement may hold on any SQLite (999 before 3.32, 32,766 since): a multi-row INSERT stays
#: within it
_MAX_VARIABLES = 999


def _insert_calls(conn: sqlite3.Connection, calls: Sequence[tuple[Any, ...]]) -> None:
    """Insert call-log rows with a few multi-row statements rather than one step per row: SQLite lets go of
    the GIL on each step and takes it back after, and while the event loop's thread is busy each taking back
    can wait; with a step per row a batch held the file's write lock for tens of milliseconds, and with it
    every admission of this process that needed the store. The same rows and values, in order; a batch of n
    rows takes at most one statement per size (the most rows that fit, then halving), each compiled once per
    connection and kept in the sqlite3 module's cache."""
    most = 1
    while most * 2 * len(CALL_NAMES) <= _MAX_VARIABLES:
        most *= 2
    at, size = 0, most
    while at < len(calls):
        while size > 1 and len(calls) - at < size:
            size //= 2
        chunk = calls[at:at + size]
        conn.execute(_insert_rows_sql(size), [value for row in chunk for value in row])
        at += size


@functools.lru_cache(maxsize=16)
def _insert_rows_sql(rows: int) -> str:
    one = "(" + ", ".join("?" * len(CALL_NAMES)) + ")"
    return f"INSERT INTO calls({', '.join(CALL_NAMES)}) VALUES " + ", ".join([one] * rows)


_SELECT_CALLS = f"SELECT {', '.join(CALL_NAMES)} FROM calls ORDER BY id DESC LIMIT ?"
# a row only replaces a newer one's value if it is at least as new: a change queued while the file was
# busy, or a hold another process set meanwhile, is not undone by an older write
_UPSERT_STATE = ("INSERT INTO state(kind, key, value, updated) VALUES (?,?,?,?) "
                 "ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value, updated=excluded.updated "
                 "WHERE excluded.updated >= state.updated")
_DELETE_STATE = "DELETE FROM state WHERE kind=? AND key=? AND updated<=?"
_STATE_COLUMNS = {"kind", "key", "value", "updated"}

#: a full `PRAGMA quick_check` at open up to this file size; a bigger file (a long call log) checks
#: the state table only, and damage found later in the call log is reported when it is written
QUICK_CHECK_MAX_BYTES = 256 * 2**20


# ---- typing call-log values ----------------------------------------------------------------------

_INT64 = (-(2**63), 2**63 - 1)


def _as_text(value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            pass
    try:
        return str(value)
    except Exception:
        return None


def _as_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if _INT64[0] <= number <= _INT64[1] else None


def _as_real(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


_PYTHON_TYPE = {"TEXT": str, "INTEGER": int, "REAL": float}
_CONVERT = {"TEXT": _as_text, "INTEGER": _as_int, "REAL": _as_real}
_TYPES = tuple(_PYTHON_TYPE[c.type] for c in CALL_COLUMNS)
_CONVERTERS = tuple(_CONVERT[c.type] for c in CALL_COLUMNS)
_NONE = type(None)
_GOOD_SIGNATURES: set[tuple[type, ...]] = set()


def typed_call(row: Sequence[Any]) -> tuple[Any, ...]:
    """A call-log row whose values have their column's type (or are None): a provider's dict as a
    request id becomes its JSON text, a number sent as a string becomes a number, garbage becomes None."""
    if len(row) != len(CALL_COLUMNS):
        raise ValueError(f"a call-log row has {len(CALL_COLUMNS)} values, not {len(row)}")
    # the types of a row's values come in few combinations: one set lookup (done in C) passes a row
    # whose combination was seen to be right, which is nearly every row
    signature = tuple(map(type, row))
    if signature in _GOOD_SIGNATURES:
        return tuple(row)
    if all(k is _NONE or k is t for k, t in zip(signature, _TYPES)):
        if len(_GOOD_SIGNATURES) < 1024:
            _GOOD_SIGNATURES.add(signature)
        return tuple(row)
    return tuple(v if v is None or type(v) is t else conv(v) for v, t, conv in zip(row, _TYPES, _CONVERTERS))


def _storable(row: Sequence[Any]) -> tuple[Any, ...]:
    """The row with what SQLite refuses to bind replaced: lone surrogates in text, integers past 64 bits."""
    out = []
    for value in row:
        if isinstance(value, str):
            value = value.encode("utf-8", "replace").decode("utf-8")
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            value = None
        out.append(value)
    return tuple(out)


# ---- errors ----------------------------------------------------------------------------------------


class StoreUnavailable(Exception):
    """The backend cannot be used; the store runs on memory (the message says why)."""


class StoreBusy(StoreUnavailable):
    """The file is in use by another connection past the busy timeout: healthy, so never moved aside."""


class StoreDamaged(StoreUnavailable):
    """The file turned out damaged while in use; it is moved aside at the next start."""


class _NotOurs(Exception):
    """The file cannot be read as nbrouter's state (the message says why)."""


_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_DAMAGE_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return None if code is None else code & 0xFF


def is_busy(exc: BaseException) -> bool:
    """Is this SQLite error another connection holding a lock (wait and retry), not a broken file?"""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _code(exc)
    if code is not None:
        return code in _BUSY_CODES
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def is_damage(exc: BaseException) -> bool:
    """Is this SQLite error a file that cannot be read as a database (damaged pages, bad text)?"""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    if _code(exc) in _DAMAGE_CODES:
        return True
    text = str(exc)
    return any(s in text for s in ("malformed", "not a database", "Could not decode", "file is encrypted", "corrupt"))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---- backends ----------------------------------------------------------------------------------------


class StateBackend(abc.ABC):
    """Where state rows and call-log rows are kept; `SQLiteBackend` is the file, `MemoryBackend` the
    process. A backend is opened once, written by one thread (the writer) and read by another.

    State rows are (kind, key, value text, updated); a row replaces a stored one only if it is at least
    as new, and a delete (kind, key, stamp) removes only a row no newer than the stamp, so processes
    sharing a backend do not undo each other's newer changes.
    """

    #: True if other processes and later runs see the data
    persistent: bool = False
    #: where it is, for messages
    path: Path | None = None

    @abc.abstractmethod
    def open(self) -> None:
        """Make the backend ready. Raises StoreBusy (try again later) or StoreUnavailable."""

    @abc.abstractmethod
    def load(self) -> list[StateRow]:
        """Every stored state row."""

    @abc.abstractmethod
    def version(self) -> int:
        """A number that changes when another process has written (SQLite's data_version)."""

    @abc.abstractmethod
    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str, float]], calls: Sequence[tuple[Any, ...]],
              *, durable: bool = False) -> list[str]:
        """Apply one batch; return what could not be stored (one message per dropped item).

        Args:
            puts: state rows to store.
            deletes: (kind, key, stamp) of rows to remove.
            calls: call-log rows, typed by `typed_call`, in CALL_COLUMNS order.
            durable: the batch must survive a crash of the machine, not only of the process.

        Raises:
            StoreBusy: nothing was written because another connection holds the file; try again.
            StoreUnavailable: nothing was written and the backend cannot be written any more.
        """

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

    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str, float]], calls: Sequence[tuple[Any, ...]],
              *, durable: bool = False) -> list[str]:
        with self._lock:
            for row in puts:
                old = self._rows.get((row[0], row[1]))
                if old is None or row[3] >= old[3]:
                    self._rows[(row[0], row[1])] = row
            for kind, key, stamp in deletes:
                old = self._rows.get((kind, key))
                if old is not None and old[3] <= stamp:
                    del self._rows[(kind, key)]
            self._calls.extend(calls)
            self._version += 1
        return []

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

    Opening checks that the file is ours and whole (`PRAGMA quick_check`, the tables' columns, every
    state value readable) and moves a file that is not aside with a warning naming both paths; a file
    that is merely busy (another connection holds its write lock) raises StoreBusy and is left alone.

    Args:
        path: the file; its directory is created if missing.
        busy_timeout_s: how long a write waits for another connection's lock.
        open_wait_s: how long opening waits for a lock (it needs one to create or migrate the schema),
            each of `open_tries` times, before giving up with StoreBusy.
        open_tries: how many times opening waits.
    """

    persistent = True
    path: Path  # always a file here

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0, open_wait_s: float = 1.5,
                 open_tries: int = 2) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.open_wait_s = open_wait_s
        self.open_tries = max(1, open_tries)
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._initial: list[StateRow] | None = None
        self._read_lock = threading.Lock()

    def _connect(self, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    # ---- opening ------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc.strerror}") from None
        moved = False
        tries = 0
        while True:
            conn = None
            try:
                conn = self._connect(self.open_wait_s)
                rows = self._check(conn)
            except _NotOurs as exc:
                why = str(exc)
            except sqlite3.Error as exc:
                if is_busy(exc):
                    if conn is not None:
                        conn.close()
                    tries += 1
                    if tries < self.open_tries:
                        continue  # the connection's busy handler has waited open_wait_s: once more
                    raise StoreBusy(f"the state file {self.path} is busy (another process holds its lock)") from None
                if not is_damage(exc):
                    if conn is not None:
                        conn.close()
                    raise StoreUnavailable(f"cannot use {self.path}: {_short(exc)}") from None
                why = f"it could not be read ({_short(exc)})"
            except OSError as exc:
                if conn is not None:
                    conn.close()
                raise StoreUnavailable(f"cannot use {self.path}: {exc}") from None
            else:
                conn.execute(f"PRAGMA busy_timeout={int(1000 * min(self.busy_timeout_s, 1.0))}")  # reads on the loop thread
                self._reader, self._initial = conn, rows
                return
            if conn is not None:
                conn.close()
            if moved or not self.path.exists():
                raise StoreUnavailable(f"cannot use {self.path}: {why}")
            self._move_aside(why)
            moved = True

    def _check(self, conn: sqlite3.Connection) -> list[StateRow]:
        """Check that the file is nbrouter's and whole, migrate it, and read its state rows."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # "shared" is the table of shared_sqlite.py (the shared state of the machine's kernels)
        foreign = sorted(t for t in tables - {"state", "calls", "shared"} if not t.startswith("sqlite_"))
        if foreign and "state" not in tables:
            raise _NotOurs(f"it holds another program's tables ({', '.join(foreign[:5])})")
        if version > SCHEMA_VERSION:
            raise _NotOurs(f"it was written by a newer nbrouter (schema {version} > {SCHEMA_VERSION})")
        if tables:
            self._quick_check(conn)
        for table, need in (("state", _STATE_COLUMNS), ("calls", {"id", "ts"})):
            if table in tables:
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if not need <= have:
                    raise _NotOurs(f"its {table} table is not nbrouter's (no column {', '.join(sorted(need - have))})")
        if version < SCHEMA_VERSION:
            self._migrate(conn)
        return conn.execute("SELECT kind, key, value, updated FROM state").fetchall()

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        sql = "PRAGMA quick_check" if size <= QUICK_CHECK_MAX_BYTES else "PRAGMA quick_check(state)"
        try:
            result = [row[0] for row in conn.execute(sql).fetchmany(3)]
        except sqlite3.OperationalError as exc:
            if is_busy(exc) or is_damage(exc) or sql == "PRAGMA quick_check":
                raise
            result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchmany(3)]  # an older SQLite
        if result != ["ok"]:
            raise _NotOurs(f"its pages are damaged ({'; '.join(result)[:160]})")

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
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _move_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.{stamp}.bad")
        n = 1
        while aside.exists():  # two bad files in one second keep both
            aside = self.path.with_name(f"{self.path.name}.{stamp}-{n}.bad")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                try:
                    os.replace(src, Path(str(aside) + suffix))
                except OSError:
                    pass
        warnings.warn(f"nbrouter: the state file {self.path} was moved aside to {aside} because {why}; starting afresh",
                      RuntimeWarning, stacklevel=2)

    # ---- reading ------------------------------------------------------------------------------

    def load(self) -> list[StateRow]:
        if self._initial is not None:  # read (and checked) by open()
            rows, self._initial = self._initial, None
            return rows
        if self._reader is None:
            raise StoreUnavailable(f"{self.path} is not open")
        with self._read_lock:
            return self._reader.execute("SELECT kind, key, value, updated FROM state").fetchall()

    def version(self) -> int:
        if self._reader is None:
            raise StoreUnavailable(f"{self.path} is not open")
        with self._read_lock:
            return int(self._reader.execute("PRAGMA data_version").fetchone()[0])

    def recent_calls(self, limit: int) -> list[dict[str, Any]]:
        if self._reader is None:
            raise StoreUnavailable(f"{self.path} is not open")
        with self._read_lock:
            rows = self._reader.execute(_SELECT_CALLS, (limit,)).fetchall()
        return [dict(zip(CALL_NAMES, row)) for row in rows]

    def columns(self, table: str) -> set[str]:
        """The column names of one of the file's tables."""
        if self._reader is None:
            raise StoreUnavailable(f"{self.path} is not open")
        with self._read_lock:
            return {row[1] for row in self._reader.execute(f"PRAGMA table_info({table})")}

    # ---- writing ------------------------------------------------------------------------------

    def write(self, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str, float]], calls: Sequence[tuple[Any, ...]],
              *, durable: bool = False) -> list[str]:
        try:
            if self._writer is None:
                self._writer = self._connect(self.busy_timeout_s)
            conn = self._writer
            if durable:  # WAL with synchronous=NORMAL survives a killed process; FULL also a lost machine
                conn.execute("PRAGMA synchronous=FULL")
            try:
                return self._write(conn, puts, deletes, calls)
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            if is_busy(exc):
                raise StoreBusy(f"the state file {self.path} is busy (another process holds its lock)") from None
            if is_damage(exc):
                raise StoreDamaged(f"the state file {self.path} is damaged ({_short(exc)})") from None
            raise StoreUnavailable(f"cannot write {self.path}: {_short(exc)}") from None

    def _write(self, conn: sqlite3.Connection, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str, float]],
               calls: Sequence[tuple[Any, ...]]) -> list[str]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if puts:
                conn.executemany(_UPSERT_STATE, puts)
            if deletes:
                conn.executemany(_DELETE_STATE, deletes)
            if calls:
                _insert_calls(conn, calls)
            conn.execute("COMMIT")
            return []
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and (is_busy(exc) or is_damage(exc)):
                raise
        return self._write_each(conn, puts, deletes, calls)

    def _write_each(self, conn: sqlite3.Connection, puts: Sequence[StateRow], deletes: Sequence[tuple[str, str, float]],
                    calls: Sequence[tuple[Any, ...]]) -> list[str]:
        """The batch failed as a whole: write it item by item, so that one bad item costs only itself."""
        problems: list[str] = []
        items: list[tuple[str, str, Sequence[Any]]] = [
            *((_UPSERT_STATE, f"state {p[0]} {p[1]!r}", p) for p in puts),
            *((_DELETE_STATE, f"removing state {d[0]} {d[1]!r}", d) for d in deletes),
            *((_INSERT_CALL, f"the call-log row of call {c[0]!r}", c) for c in calls),
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, what, values in items:
                for attempt in (values, _storable(values)):
                    try:
                        conn.execute(sql, attempt)
                        break
                    except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                        if isinstance(exc, sqlite3.Error) and (is_busy(exc) or is_damage(exc)):
                            raise
                        if not conn.in_transaction:
                            raise  # the error ended the transaction: nothing of the batch is kept
                        error = exc
                else:
                    problems.append(f"{what}: {_short(error)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return problems

    def close(self) -> None:
        with self._read_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
            self._writer = self._reader = None


# ---- the writer thread ---------------------------------------------------------------------------------

#: the writer thread writes at most one batch per this many seconds unless a flush waits: every wake-up
#: of the writer costs the request loop a GIL hand-off, and changes to one entry in between coalesce
WRITE_BATCH_S = 0.05
#: how often a busy or not-yet-open file is tried again in the background (a flush tries at once)
RETRY_S = 2.0
#: call-log rows kept waiting for a busy file; beyond this the oldest are dropped (and counted)
MAX_PENDING_ROWS = 50_000

_DELETED = object()


class BatchWriter:
    """The thread that mirrors state changes and call-log rows into a backend, one batch at a time.

    The loop thread only marks entries changed (`put`, `delete`) and queues rows (`log`); the thread
    encodes the latest version of each changed entry and writes them in one transaction at most every
    `WRITE_BATCH_S`, sooner when `flush()` waits. While the backend is busy (or not open yet) nothing is
    lost: the changes wait, and the thread tries again every `RETRY_S` or when a flush asks.

    Args:
        backend: the backend; opened already unless `opened` is False.
        encode: turns (kind, object) into the stored text, on the writer thread.
        opened: False if `backend.open()` raised StoreBusy: the thread keeps trying to open it.
        warning: what to say until the backend is in use (why it is not).
    """

    def __init__(self, backend: StateBackend, encode: Callable[[str, Any], str], *, opened: bool = True,
                 warning: str | None = None) -> None:
        self.backend = backend
        self._encode = encode
        self.opened = opened
        #: set when the backend opened late: the store reads what it holds (and clears this)
        self.reopened = False
        self._busy_warning = warning
        self._problem: str | None = None
        self._broken = False
        # re-entrant: the SIGTERM handler flushes on the main thread, which may be inside put() or flush()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a flush is waiting: write now
        self._dirty: dict[tuple[str, str], tuple[Any, float]] = {}
        self.rows: list[tuple[Any, ...]] = []
        self._dropped_rows = 0
        self._asked = 0
        self._durable_asked = 0
        self._done = 0
        self._failed = 0
        self._closing = False
        self._flushed = threading.Condition(threading.RLock())
        self._thread = threading.Thread(target=self._run, name="nbrouter-state", daemon=True)
        self._thread.start()
        _live_writers.add(self)
        _install_sigterm_flush()

    @property
    def healthy(self) -> bool:
        """Is the backend open and taking writes?"""
        return self.opened and self._busy_warning is None and not self._broken and self._thread.is_alive()

    @property
    def warning(self) -> str | None:
        """Why changes are not reaching the backend, or what could not be stored; None if all is well."""
        return self._busy_warning or self._problem

    def put(self, kind: str, key: str, obj: Any, updated: float) -> None:
        """Mark an entry changed (at `updated`); the latest version of `obj` is encoded and written."""
        with self._lock:
            self._dirty[(kind, key)] = (obj, updated)
        if not self._wake.is_set():
            self._wake.set()

    def delete(self, kind: str, key: str, stamp: float) -> None:
        """Mark an entry removed: the stored one goes if it is no newer than `stamp`."""
        with self._lock:
            self._dirty[(kind, key)] = (_DELETED, stamp)
        if not self._wake.is_set():
            self._wake.set()

    def log(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Queue call-log rows (typed by `typed_call`)."""
        with self._lock:
            self.rows.extend(rows)
            if len(self.rows) > MAX_PENDING_ROWS:
                self._cap_rows()
        if not self._wake.is_set():
            self._wake.set()

    def _cap_rows(self) -> None:
        """Drop the oldest rows past MAX_PENDING_ROWS (a file busy for long); the caller holds the lock."""
        extra = len(self.rows) - MAX_PENDING_ROWS
        if extra > 0:
            del self.rows[:extra]
            self._dropped_rows += extra
            self._problem = f"{self._dropped_rows} call-log row(s) were dropped while the state file could not be written"

    def pending_rows(self) -> list[tuple[Any, ...]]:
        """The call-log rows not written yet."""
        with self._lock:
            return list(self.rows)

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # the writer must outlive any surprise; the store says what happened
                self._problem = f"state store writer error ({_short(exc)}); recent state kept in memory only"
                with self._flushed:
                    self._failed = self._asked
                    self._flushed.notify_all()
                if self._closing:
                    return
                self._urgent.wait(RETRY_S)

    def _step(self) -> bool:
        """One turn of the writer: wait, write a batch; True when it is time to stop."""
        if self.healthy or self._closing:
            self._wake.wait(0.5)
        else:
            self._urgent.wait(RETRY_S)  # a busy file is not hammered on every change
        self._wake.clear()
        with self._lock:
            # the flushes asked so far are answered by this turn (a flush asked during it, by the next)
            generation = self._asked
            durable = self._durable_asked > self._done
            stop = self._closing
            self._urgent.clear()
        if not self.opened and not self._broken and not stop:
            self._try_open()
        with self._lock:
            if self.opened or self._broken:
                dirty, self._dirty = self._dirty, {}
                rows, self.rows = self.rows, []
            else:  # not open yet: the changes wait for the file
                dirty, rows = {}, []
        # a broken backend takes nothing more: the store's memory is all there is
        ok = self.opened and not self._broken and self._write(dirty, rows, durable)
        with self._flushed:
            if ok:
                self._done = max(self._done, generation)
            else:
                self._failed = max(self._failed, generation)
            self._flushed.notify_all()
        if stop:
            return True
        if ok:
            # let changes pile up into the next batch, unless a flush is waiting for them
            self._urgent.wait(WRITE_BATCH_S)
        return False

    def _try_open(self) -> None:
        try:
            self.backend.open()
        except StoreBusy:
            return
        except Exception as exc:  # StoreUnavailable, or a warning made an error (a test's filter)
            self._broken = True
            self._busy_warning = f"state store unavailable ({exc}); running on memory: cooldowns will not survive a restart"
            return
        self.opened = True
        self.reopened = True
        self._busy_warning = None

    def _write(self, dirty: dict[tuple[str, str], tuple[Any, float]], rows: list[tuple[Any, ...]], durable: bool) -> bool:
        if not dirty and not rows:
            return True
        puts: list[StateRow] = []
        deletes: list[tuple[str, str, float]] = []
        problems: list[str] = []
        for (kind, key), (obj, stamp) in dirty.items():
            if obj is _DELETED:
                deletes.append((kind, key, stamp))
                continue
            try:
                puts.append((kind, key, self._encode(kind, obj), stamp))
            except Exception as exc:  # one value that cannot be encoded costs only itself
                problems.append(f"state {kind} {key!r}: {_short(exc)}")
        try:
            problems += self.backend.write(puts, deletes, rows, durable=durable)
        except StoreBusy as exc:
            self._requeue(dirty, rows)
            if self._busy_warning is None:
                self._busy_warning = f"{exc}; running on memory, changes are kept and written when it frees up"
                _warn_from_thread(self._busy_warning)
            return False
        except StoreUnavailable as exc:
            self._broken = isinstance(exc, StoreDamaged)
            self._problem = (f"{exc}; running on memory: cooldowns will not survive a restart"
                             + ("; the file is moved aside at the next start" if self._broken else ""))
            _warn_from_thread(self._problem)
            return False
        except Exception as exc:  # the writer thread must not die of a surprise
            self._problem = f"state store write failed ({_short(exc)}); recent state kept in memory only"
            return False
        if self._busy_warning is not None:
            self._busy_warning = None
        if problems:
            self._problem = (f"{len(problems)} value(s) could not be stored and were left out of the state file "
                             f"(first: {problems[0]})")
            _warn_from_thread(self._problem)
        return True

    def _requeue(self, dirty: dict[tuple[str, str], tuple[Any, float]], rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            for entry_key, entry in dirty.items():
                self._dirty.setdefault(entry_key, entry)  # a change made since is newer
            self.rows[:0] = rows
            self._cap_rows()

    def flush(self, timeout: float = 5.0, *, durable: bool = False) -> bool:
        """Wait until everything queued so far is written; False if it was not (busy file, timeout).

        Args:
            timeout: the longest wait, in seconds of real time (the writer is a real thread).
            durable: write with a full sync (for holds that must survive anything).
        """
        if not self._thread.is_alive():
            return False
        with self._lock:
            self._asked += 1
            target = self._asked
            if durable:
                self._durable_asked = target
        self._urgent.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._done < target:
                left = deadline - time.monotonic()
                if self._failed >= target or left <= 0 or not self._thread.is_alive():
                    return False
                self._flushed.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the thread."""
        _live_writers.discard(self)
        if self._thread.is_alive():
            healthy = self.healthy
            if healthy:
                self.flush(timeout)
            with self._lock:
                self._closing = True
            self._urgent.set()
            self._wake.set()
            # a busy file is not waited for again: what it did not take by now stays in memory only
            self._thread.join(timeout=timeout if healthy else 1.0)


def _warn_from_thread(message: str) -> None:
    """Warn from the writer thread; a filter that turns warnings into errors must not stop the writer."""
    try:
        warnings.warn("nbrouter: " + message, RuntimeWarning, stacklevel=1)
    except Exception:
        pass


# ---- at exit and on SIGTERM ------------------------------------------------------------------------

#: made before state.py's stores (it imports this module): the writers left over close after the stores
_live_writers: "weakref.WeakSet[BatchWriter]" = close_at_exit()
_sigterm_lock = threading.Lock()
_sigterm_installed = False


def flush_all(timeout: float = 2.0) -> None:
    """Write what every live writer has queued (each waits at most `timeout` seconds)."""
    for writer in list(_live_writers):
        try:
            writer.flush(timeout)
        except Exception:
            pass


def _install_sigterm_flush() -> None:
    """Flush every writer on SIGTERM, then do what was done before: call the handler that was installed
    (a kernel's, an application's), or die of the signal as the default would. Only from the main thread
    (Python allows no other); an ignored SIGTERM, or one handled outside Python, is left alone."""
    global _sigterm_installed
    if _sigterm_installed or not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    with _sigterm_lock:
        if _sigterm_installed:
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            flush_all()
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or a platform without it
            return
        _sigterm_installed = True

"""Where batch jobs are remembered between kernels: a small SQLite file beside the state file.

    state.sqlite3            the router's state (cooldowns, breakers, the call log)
    state.jobs.sqlite3       one row per batch job: id, when, settled or not, and the job's record (JSON)

A job's record holds what collecting it needs after a restart: the combo, the targets in the order they
were chosen, each provider job (provider, account, model, its id, the custom ids it holds), and each row
(its custom id, the request's hash and cache key, where it stands, its attempts). It never holds a key.
With `log_content = false` it holds no prompt either (only hashes): such a job can still be collected
after a restart, but a row that then needs a fallback cannot be sent again (it ends "not sent").

The file is separate from the state file so that the state's own schema and writer are untouched; it has
numbered migrations of its own (`PRAGMA user_version`). With `persist=False` (or a state store without a
file) the records live in this process's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

from ..._core import ErrorKind, Usage
from ..types import Action, Attempt

_TABLE = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0,
    combo TEXT NOT NULL,
    record TEXT NOT NULL
)
"""


def _schema_1(conn: sqlite3.Connection) -> None:
    conn.execute(_TABLE)
    conn.execute("CREATE INDEX IF NOT EXISTS batch_jobs_created ON batch_jobs (created_at)")


#: MIGRATIONS[n - 1] takes the file from schema n - 1 to n (each step idempotent)
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_1]
SCHEMA_VERSION = len(MIGRATIONS)
#: the record format inside the JSON (bumped when its fields change meaning)
RECORD_VERSION = 1


def jobs_path(state_path: Path | None) -> Path | None:
    """The jobs file beside a state file (`state.sqlite3` -> `state.jobs.sqlite3`); None: keep them in memory."""
    if state_path is None:
        return None
    return state_path.with_name(state_path.stem + ".jobs.sqlite3")


class JobRecords:
    """The batch jobs' records: in a SQLite file (a connection per operation: a job writes a few times per
    poll, and nothing stays open after its Router closes), or in memory.

    Args:
        path: the file (None: memory only).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: dict[str, tuple[float, float, int, str, str]] = {}
        self._migrated = False

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
        try:
            if not self._migrated:
                db.execute("PRAGMA journal_mode=WAL")
                try:
                    os.chmod(self.path, 0o600)  # job records name the user's accounts and jobs: theirs alone
                except OSError:
                    pass
                _migrate(db)
                self._migrated = True
            yield db
        finally:
            db.close()

    def save(self, job_id: str, created_at: float, updated_at: float, settled: bool, combo: str, record: dict[str, Any]) -> None:
        """Write a job's record (replacing the one before)."""
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._lock:
            if self.path is None:
                self._memory[job_id] = (created_at, updated_at, int(settled), combo, text)
                return
            with self._conn() as db:
                db.execute("INSERT OR REPLACE INTO batch_jobs VALUES (?, ?, ?, ?, ?, ?)",
                           (job_id, created_at, updated_at, int(settled), combo, text))

    def load(self, job_id: str) -> dict[str, Any] | None:
        """One job's record, or None."""
        with self._lock:
            if self.path is None:
                row = self._memory.get(job_id)
                text = row[4] if row is not None else None
            else:
                with self._conn() as db:
                    found = db.execute("SELECT record FROM batch_jobs WHERE id = ?", (job_id,)).fetchone()
                text = found[0] if found is not None else None
        if text is None:
            return None
        value = json.loads(text)
        return value if isinstance(value, dict) else None

    def list(self) -> list[tuple[str, float, float, bool, str]]:
        """(id, created_at, updated_at, settled, combo) of every job, newest first."""
        with self._lock:
            if self.path is None:
                rows = [(k, v[0], v[1], bool(v[2]), v[3]) for k, v in self._memory.items()]
            elif not self.path.exists():
                rows = []
            else:
                with self._conn() as db:
                    rows = [(r[0], r[1], r[2], bool(r[3]), r[4])
                            for r in db.execute("SELECT id, created_at, updated_at, settled, combo FROM batch_jobs")]
        return sorted(rows, key=lambda r: r[1], reverse=True)


def _migrate(db: sqlite3.Connection) -> None:
    """Run the missing migrations in one write transaction (another process may be migrating too)."""
    if int(db.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# ---- attempts in a record ----------------------------------------------------------------------


def attempt_record(a: Attempt) -> dict[str, Any]:
    """An attempt as a record keeps it (its message is scrubbed already; no prompt, no answer)."""
    return a.as_dict() | {"model": a.model, "cost_known": a.cost_known}


def attempt_from(data: dict[str, Any]) -> Attempt:
    """An attempt back from its record."""
    usage = data.get("usage")
    kind = data.get("kind")
    return Attempt(
        candidate=str(data.get("candidate") or ""), path=str(data.get("path") or ""), action=Action(data.get("action") or "batched"),
        started_at=float(data.get("started_at") or 0.0), kind=ErrorKind(kind) if kind else None, status=data.get("status"),
        message=str(data.get("message") or ""), latency_s=data.get("latency_s"), hold=data.get("hold"),
        hold_until=data.get("hold_until"), usage=usage_from(usage) if isinstance(usage, dict) else None,
        cost_usd=Decimal(data["cost_usd"]) if data.get("cost_usd") is not None else None,
        cost_known=bool(data.get("cost_known", True)), request_id=data.get("request_id"), warning=data.get("warning"),
        model=data.get("model"), usage_estimated=bool(data.get("usage_estimated")),
    )


def usage_from(data: dict[str, Any]) -> Usage:
    """A Usage back from `Usage.as_dict()`."""
    names = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
    return Usage(**{n: int(data.get(n) or 0) for n in names if n in Usage.__dataclass_fields__})


__all__ = ["JobRecords", "MIGRATIONS", "RECORD_VERSION", "SCHEMA_VERSION", "attempt_from", "attempt_record", "jobs_path", "usage_from"]

"""The response cache: an exact-match store of answers in SQLite, so the same request is never paid for twice.

The key is a hash of what decides the answer: the combo's resolved targets (provider/model, sorted: any
of them may serve), the messages (an image by the SHA-256 of its data), the system prompt, max_tokens,
temperature, the response format, the schema, and the tools and tool choice (the messages hold any tool
calls and tool results of the history, so another round is another key). The value is the text, the
tool calls the answer asked for (ids, names, arguments, as the portable message shape holds them), the
model, who served it, the usage, the cost paid then and when.
A hit costs nothing now: it shows as an attempt with action `cached`, `result.cached` says where the
answer came from, and its footer reads "cached · served by X on DATE · $0 now ($0.0012 then)".

`Router.map` uses it by default (a batch run again after an interrupt sends only the missing items);
single calls ask for it (`complete(..., cache=True)`). With `log_content = false` in the config the
cache is off unless asked for explicitly, since it stores prompts' answers on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..._core import Usage
from ..._core.content import ToolCall, calls_of
from ..media import digest_messages
from ..decide.decider import Route
from ..requests import CallRequest
from ..state.store import StateStore
from ..types import Action, Attempt, CacheInfo, RouteResult

#: bump when the key's ingredients change: old entries then simply never match
KEY_VERSION = 1
#: SQLite's name for a store that lives in memory only
MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    model TEXT,
    served_by TEXT NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    cost_usd TEXT,
    finish_reason TEXT,
    created_at REAL NOT NULL,
    tool_calls TEXT
)
"""
#: the columns added since the table was first made, each with its type (a file made before gets them)
_ADDED = (("tool_calls", "TEXT"),)
#: the columns read back, in order
_COLUMNS = ("text", "model", "served_by", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "finish_reason",
            "created_at", "tool_calls")


def default_cache_path() -> Path:
    """`NBROUTER_CACHE` if set, else `responses.sqlite3` in the platform's user cache dir for nbrouter."""
    env = os.environ.get("NBROUTER_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nbrouter", appauthor=False)) / "responses.sqlite3"


class ResponseCache:
    """Answers by request hash, in one SQLite file (or in memory).

    Args:
        path: the file (default: `default_cache_path()`); ":memory:" keeps it in memory only.
        ttl_s: entries older than this many seconds are not used (None: kept until cleared).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, ttl_s: float | None = None) -> None:
        self.path = MEMORY if path == MEMORY else Path(path) if path is not None else default_cache_path()
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        #: what the hits of this session would have cost (the cost paid when each answer was stored)
        self.saved_usd = Decimal(0)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            if self.path != MEMORY:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                try:
                    os.chmod(self.path, 0o600)  # answers to the user's prompts: theirs alone
                except OSError:
                    pass
            db.execute(_SCHEMA)
            _add_columns(db)
            self._db = db
        return self._db

    # ---- the key --------------------------------------------------------------------------------

    @staticmethod
    def key(targets: list[str], req: CallRequest) -> str:
        """The hash of everything that decides the answer of `req` on these targets."""
        material: dict[str, Any] = {
            "v": KEY_VERSION,
            "targets": sorted(set(targets)),
            "messages": digest_messages(req.messages) if req.images else req.messages,
            "system": req.system,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "response_format": req.response_format,
            "schema": req.schema.json_schema if req.schema is not None else None,
        }
        if req.tools or req.tool_choice is not None:  # only then: the keys of calls without tools stay as they were
            material["tools"] = [[t.name, t.description, t.schema()] for t in req.tools or ()]
            material["tool_choice"] = req.tool_choice
        blob = json.dumps(material, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    # ---- reading and writing --------------------------------------------------------------------

    def get(self, key: str, now: float) -> dict[str, Any] | None:
        """The stored answer of `key` (None: none, or older than the TTL)."""
        with self._lock:
            cur = self._conn().execute(f"SELECT {', '.join(_COLUMNS)} FROM responses WHERE key = ?", (key,))
            row = cur.fetchone()
        if row is None or (self.ttl_s is not None and row[8] + self.ttl_s < now):
            return None
        return dict(zip(_COLUMNS, row))

    def contains(self, key: str, now: float) -> bool:
        return self.get(key, now) is not None

    def put(self, key: str, result: RouteResult, now: float) -> None:
        """Store a whole answer, with the tool calls it asked for (a partial one is never stored)."""
        if result.partial or result.cached is not None:
            return
        u = result.usage
        calls = json.dumps([c.as_dict() for c in result.tool_calls], ensure_ascii=False) if result.tool_calls else None
        with self._lock:
            self._conn().execute(
                f"INSERT OR REPLACE INTO responses (key, {', '.join(_COLUMNS)}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                (key, result.text, result.model, result.served_by, u.input_tokens, u.output_tokens, u.cached_tokens,
                 None if result.cost_usd is None else str(result.cost_usd), result.finish_reason, now, calls))

    def stats(self) -> dict[str, Any]:
        """Entries stored, hits and misses of this session, what the hits saved, the file."""
        with self._lock:
            entries = self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        return {"entries": entries, "hits": self.hits, "misses": self.misses, "saved_usd": self.saved_usd,
                "ttl_s": self.ttl_s, "path": str(self.path)}

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        with self._lock:
            db = self._conn()
            n = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            db.execute("DELETE FROM responses")
        self.hits = self.misses = 0
        self.saved_usd = Decimal(0)
        return int(n)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __repr__(self) -> str:
        return f"ResponseCache(path={str(self.path)!r}, ttl_s={self.ttl_s})"


def _add_columns(db: sqlite3.Connection) -> None:
    """Give a cache file made by an earlier version the columns added since (its entries stay usable)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
    for name, kind in _ADDED:
        if name not in have:
            try:
                db.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError:  # another process added it meanwhile
                pass


def stored_calls(text: str | None) -> list[ToolCall] | None:
    """The tool calls an entry holds ([] for none); None when what is stored does not read as calls."""
    if text is None:
        return []
    try:
        items = json.loads(text)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    return calls_of({"tool_calls": items})


# ---- the router's use of it -----------------------------------------------------------------------


def request_key(cache: ResponseCache, route: Route, req: CallRequest) -> str:
    """The cache key of a call: its resolved combo's targets, and the request."""
    return cache.key(route.targets, req)


def hit_result(entry: dict[str, Any], req: CallRequest, combo: str, now: float) -> RouteResult | None:
    """A RouteResult from a stored answer, with the tool calls it asked for (None when it no longer parses
    against the call's schema, or its calls do not read back)."""
    calls = stored_calls(entry.get("tool_calls"))
    if calls is None:
        return None
    parsed = None
    if req.schema is not None:
        try:
            parsed = req.schema.parse(entry["text"])
        except ValueError:
            return None
    then = Decimal(entry["cost_usd"]) if entry["cost_usd"] is not None else None
    info = CacheInfo(served_by=entry["served_by"], served_at=entry["created_at"], cost_usd=then,
                     usage=Usage(entry["input_tokens"] or 0, entry["output_tokens"] or 0, entry["cached_tokens"] or 0))
    attempt = Attempt(candidate=entry["served_by"], path=entry["served_by"], action=Action.CACHED, started_at=now,
                      message=info.footer(), cost_usd=Decimal(0), model=entry["model"])
    return RouteResult(text=entry["text"], served_by=entry["served_by"], model=entry["model"] or "", combo=combo,
                       attempts=[attempt], usage=Usage(), cost_usd=Decimal(0), latency_s=0.0, ttft_s=None,
                       finish_reason=entry["finish_reason"], parsed=parsed, cached=info, tool_calls=calls)


async def through_cache(cache: ResponseCache, route: Route, state: StateStore, now: float, req: CallRequest,
                        run: Callable[[], Awaitable[RouteResult]]) -> RouteResult:
    """Answer `req` (resolved to `route`) from the cache, or run it and store the answer."""
    key = request_key(cache, route, req)
    entry = cache.get(key, now)
    if entry is not None:
        result = hit_result(entry, req, route.name, now)
        if result is not None:
            cache.hits += 1
            if result.cached is not None and result.cached.cost_usd is not None:
                cache.saved_usd += result.cached.cost_usd
            state.log_attempts(os.urandom(8).hex(), result.combo, result.attempts, req.prompt_text, result.text)
            return result
    cache.misses += 1
    result = await run()
    cache.put(key, result, now)
    return result


__all__ = ["ResponseCache", "default_cache_path", "through_cache"]

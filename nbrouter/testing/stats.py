"""What the simulator counted per API key: the server-side truth a test compares its clients against.

    sim.stats()["keys"][key_id("sk-a")]  ->  {"received": 300, "rate_limited": 12, "served": 288, ...}

Keys are named by `key_id(key)`, a short hash, so the counts can be read over HTTP (`GET /_sim/stats`)
and printed without ever showing a credential.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ._wire import masked
from .ratelimits import Limits, WindowLimits, most_in, window_of


def key_id(key: str | None) -> str:
    """The name a credential has in the simulator's stats: `key-` and 12 hex digits of its SHA-256."""
    if key is None:
        return "no-key"
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class _KeyStats:
    #: the credential itself: kept in memory to look its limits up, never put in a snapshot
    key: str | None
    label: str
    received: int = 0
    rate_limited: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    #: the simulator clock's monotonic time of each request the limiter let through (or every request
    #: of a key without limits), in arrival order
    admitted: list[float] = field(default_factory=list)
    #: the same clock's time of each request the limiter refused
    refused: list[float] = field(default_factory=list)


class SimStats:
    """Per-key counts of model calls: received, refused by the limiter, answered by status, admitted times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # by the credential itself (no hashing per request); named by key_id only in a snapshot
        self._keys: dict[str | None, _KeyStats] = {}

    def _of(self, key: str | None) -> _KeyStats:
        stats = self._keys.get(key)
        if stats is None:
            stats = self._keys[key] = _KeyStats(key, masked(key) if key else "")
        return stats

    def arrived(self, key: str | None) -> None:
        """One model call arrived."""
        with self._lock:
            self._of(key).received += 1

    def admitted(self, key: str | None, at: float) -> None:
        """A model call passed the limiter (or met none) at `at` on the simulator's monotonic clock."""
        with self._lock:
            self._of(key).admitted.append(at)

    def refused(self, key: str | None, at: float) -> None:
        """The limiter answered a model call 429 at `at`."""
        with self._lock:
            stats = self._of(key)
            stats.rate_limited += 1
            stats.refused.append(at)

    def answered(self, key: str | None, status: int) -> None:
        """The status a model call was answered with (0: the connection was closed without an answer)."""
        with self._lock:
            self._of(key).statuses[status] += 1

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def snapshot(self, limits_of: Callable[[str | None], Limits | None], *, times: bool = False) -> dict[str, Any]:
        """A JSON-ready copy: per key id, the counts, the limits (`limits_of(key)`) and the most admitted
        requests in any window of the key's limit (60 s for a key without one)."""
        with self._lock:
            copied = {
                key_id(key): (s.key, s.label, s.received, s.rate_limited, dict(s.statuses), list(s.admitted), list(s.refused))
                for key, s in self._keys.items()
            }
        out: dict[str, Any] = {}
        for name, (key, label, received, limited, statuses, admitted, refused) in copied.items():
            limits = limits_of(key)
            window = window_of(limits)
            entry: dict[str, Any] = {
                "label": label,
                "received": received,
                "rate_limited": limited,
                "passed_limiter": len(admitted),
                "served": sum(n for status, n in statuses.items() if 200 <= status < 300),
                "answered_429": statuses.get(429, 0),
                "statuses": {str(status): n for status, n in sorted(statuses.items())},
                "window_s": window,
                "max_in_window": most_in(admitted, window),
                "limits": _limits_json(limits),
            }
            if times:
                entry["admitted_times"] = admitted
                entry["refused_times"] = refused
            out[name] = entry
        return out


def _limits_json(limits: Limits | None) -> dict[str, Any] | None:
    if limits is None:
        return None
    if isinstance(limits, WindowLimits):
        return {"kind": "window", "requests": limits.requests, "tokens": limits.tokens, "window_s": limits.window_s}
    return {"kind": "bucket", "requests_per_minute": limits.requests_per_minute, "tokens_per_minute": limits.tokens_per_minute}


__all__ = ["SimStats", "key_id"]

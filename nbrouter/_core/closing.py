"""Closing what is still open when the interpreter exits: routers, state stores, their writer threads
and the background loops each keep a set of the live ones, made here.

atexit runs last-in, first-out, so a set made later is closed earlier. Each module makes its set at
import, after importing the modules whose objects its own use: routers are closed before the stores and
loops they hold, stores before the writers, and the loops last, so that clients close on a running loop.
"""

from __future__ import annotations

import atexit
import weakref
from typing import TypeVar

#: the kind of object a set holds (its maker names it: `_routers: WeakSet[Router] = close_at_exit()`)
T = TypeVar("T")


def close_at_exit(method: str = "close") -> "weakref.WeakSet[T]":
    """A new weak set of live objects; at exit, `method` of each one still in it is called, and an
    exception it raises is swallowed (the interpreter is going away; the others are closed still)."""
    live: weakref.WeakSet[T] = weakref.WeakSet()

    def close_all() -> None:
        for obj in list(live):
            try:
                getattr(obj, method)()
            except Exception:
                pass

    atexit.register(close_all)
    return live

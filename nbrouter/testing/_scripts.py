"""The simulator's scripts: queues of behaviours (or batch scripts) per (credential, model) selector, safe
across threads."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Generic, Iterable, TypeVar

from .behaviours import Behaviour, Reply

T = TypeVar("T")

# Most specific first: key+model, key only, model only, then a script for every request.
_PRECEDENCE = ((True, True), (True, False), (False, True), (False, False))


class _Queue(Generic[T]):
    __slots__ = ("items", "repeat_last")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.repeat_last = False


class ScriptBook(Generic[T]):
    """Which behaviour (or batch script) the next request for a (key, model) gets.

    A request takes from the most specific selector whose queue still holds something (key+model,
    then key, then model, then a script with neither); when none does, it gets the default.
    """

    def __init__(self, default: Any = None, item_type: type = Behaviour, what: str = "simulator behaviour") -> None:
        self._lock = threading.Lock()
        self._queues: dict[tuple[str | None, str | None], _Queue[T]] = {}
        self._initial: T = default if default is not None else Reply()  # type: ignore[assignment]
        self._default: T = self._initial
        self._type = item_type
        self._what = what
        self._models: list[str] = []

    def add(self, behaviours: Iterable[T], *, model: str | None, key: str | None, repeat_last: bool) -> None:
        """Append behaviours to the selector's queue (a later call's `repeat_last` replaces an earlier one)."""
        items = list(behaviours)
        for item in items:
            if not isinstance(item, self._type):
                raise TypeError(f"not a {self._what}: {item!r}")
        with self._lock:
            queue = self._queues.setdefault((key, model), _Queue())
            queue.items.extend(items)
            queue.repeat_last = repeat_last
            if model is not None and model not in self._models:
                self._models.append(model)

    def set_default(self, behaviour: T) -> None:
        if not isinstance(behaviour, self._type):
            raise TypeError(f"not a {self._what}: {behaviour!r}")
        with self._lock:
            self._default = behaviour

    def next(self, key: str | None, model: str | None) -> T:
        """Pop (or, for a repeating last item, peek) the behaviour this request gets."""
        with self._lock:
            if self._queues:
                for use_key, use_model in _PRECEDENCE:
                    if (use_key and key is None) or (use_model and model is None):
                        continue
                    queue = self._queues.get((key if use_key else None, model if use_model else None))
                    if queue is None or not queue.items:
                        continue
                    if queue.repeat_last and len(queue.items) == 1:
                        return queue.items[0]
                    return queue.items.popleft()
            return self._default

    def models(self) -> list[str]:
        """Every model named in a script so far, in order of first mention."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()
            self._default = self._initial
            self._models.clear()

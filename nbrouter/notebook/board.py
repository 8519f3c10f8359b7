"""The live status board (`%llm status --live`): every candidate and account of the pool, refreshed.

It reads `Router.status()` and calls `Router.reset()`, nothing else; its rows are the same cells as the
text and HTML of `Router.status()` (router/views.py builds both).
"""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ipywidgets as w

from ..router.views import ACCOUNT_COLUMNS, CANDIDATE_COLUMNS, account_cells, account_health, candidate_cells, candidate_health
from ._ui import STYLE, close_tree, note

if TYPE_CHECKING:
    from ..router.engine import Router

#: the status board reads Router.status() this often
STATUS_REFRESH_S = 2.0

_TONES = {"ok": "#e6f4ea", "warn": "#fff4ce", "bad": "#fde7e9", "idle": "#f1f3f4"}
_MARKS = {"ok": "✓", "warn": "!", "bad": "✗", "idle": "·"}


class _BoardRow:
    """One row of the board: a cell per column and a reset button."""

    def __init__(self, key: str, ncells: int, on_reset: Callable[[str], None]) -> None:
        self.key = key
        self.cells = [w.HTML() for _ in range(ncells)]
        self.reset = w.Button(description="reset", tooltip=f"clear cooldowns, locks and the breaker of {key}",
                              layout=w.Layout(width="5.5em"))
        self.reset.on_click(lambda _: on_reset(key))

    def update(self, texts: Sequence[str], tone: str) -> None:
        colour = _TONES[tone]
        for i, (cell, text) in enumerate(zip(self.cells, texts)):
            shown = f"{_MARKS[tone]} {text}" if i == 1 else text
            value = f"<div style='background:{colour};padding:2px 6px'>{html.escape(shown) or '&nbsp;'}</div>"
            if cell.value != value:  # an unchanged cell sends nothing to the browser
                cell.value = value

    @property
    def children(self) -> list[w.Widget]:
        return [*self.cells, self.reset]

    def close(self) -> None:
        for widget in self.children:
            widget.close()


class _BoardTable:
    """A grid of header cells and rows, keyed so that a refresh updates cells instead of rebuilding them."""

    def __init__(self, columns: Sequence[str], on_reset: Callable[[str], None]) -> None:
        self.columns = list(columns)
        self.on_reset = on_reset
        self.rows: dict[str, _BoardRow] = {}
        self.header = [w.HTML(f"<b>{html.escape(c)}</b>") for c in self.columns]
        self.grid = w.GridBox(list(self.header), layout=w.Layout(grid_template_columns=f"repeat({len(self.columns)}, auto)",
                                                                 grid_gap="1px 0"))

    def update(self, items: Sequence[tuple[str, list[str], str]]) -> None:
        keys = [key for key, _, _ in items]
        for key, texts, tone in items:
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = _BoardRow(key, len(self.columns) - 1, self.on_reset)
            row.update(texts, tone)
        gone = [k for k in self.rows if k not in keys]
        for key in gone:
            self.rows.pop(key).close()
        children = list(self.header) + [c for key in keys for c in self.rows[key].children]
        if list(self.grid.children) != children:
            self.grid.children = children


class StatusBoard:
    """Every candidate and account of the pool, refreshed from Router.status() in a background thread.

    Args:
        router: the Router to watch.
        interval_s: seconds between refreshes.
    """

    def __init__(self, router: Router, *, interval_s: float = STATUS_REFRESH_S) -> None:
        self.router = router
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.header = w.HTML()
        self.note = w.HTML(STYLE)
        self.pause_button = w.Button(description="pause", tooltip="stop or restart the live refresh")
        self.pause_button.on_click(lambda _: self.stop() if self.running else self.start())
        self.candidates = _BoardTable([*CANDIDATE_COLUMNS, ""], self.reset)
        self.accounts = _BoardTable([*ACCOUNT_COLUMNS, ""], self.reset)
        self.widget = w.VBox([
            w.HBox([self.header, self.pause_button]),
            w.HTML("<b>candidates</b>"), self.candidates.grid,
            w.HTML("<b>accounts</b>"), self.accounts.grid,
            self.note,
        ])
        self.widget.add_class("nbrouter-widget")
        self.refresh()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> None:
        """Read Router.status() once and update the tables."""
        with self._lock:
            try:
                status = self.router.status()
            except Exception as exc:  # the board says so and tries again at the next refresh
                self.header.value = note(f"status unavailable: {type(exc).__name__}: {exc}", "bad")
                return
            self.candidates.update([(r["candidate"], candidate_cells(r), candidate_health(r)[1]) for r in status.candidates])
            self.accounts.update([(r["account"], account_cells(r), account_health(r)[1]) for r in status.accounts])
            live = f"refreshed every {self.interval_s:g} s" if self.running else "paused"
            stamp = time.strftime("%H:%M:%S")
            warning = f" · warning: {status.warning}" if status.warning else ""
            self.header.value = f"<b>nbrouter pool</b> · {stamp} · {live}{html.escape(warning)}"

    def reset(self, key: str) -> int:
        """Clear the cooldowns, locks and breaker of `key` (Router.reset) and refresh."""
        n = self.router.reset(key)
        self.note.value = STYLE + note(f"reset {key}: {n} entr{'y' if n == 1 else 'ies'} cleared", "ok")
        self.refresh()
        return n

    def start(self) -> None:
        """Refresh every `interval_s` seconds in a daemon thread until stop()."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nbrouter-status-board", daemon=True)
        self._thread.start()
        self.pause_button.description = "pause"
        self.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def stop(self) -> None:
        """Stop the live refresh (the table stays as it was)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval_s + 5.0)
        self.pause_button.description = "resume"
        self.refresh()

    def display(self) -> None:
        """Show the board and start refreshing it."""
        from IPython.display import display

        display(self)
        self.start()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["text/plain"] = str(self.router.status())
        return bundle

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self.stop()
        close_tree(self.widget)


__all__ = ["StatusBoard"]

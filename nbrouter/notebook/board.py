"""The live status board (`%llm status --live`): every candidate and account of the pool, refreshed.

It reads `Router.status()` and calls `Router.reset()`, nothing else; its tables are the same rows as the
text and HTML of `Router.status()` (router/views.py builds both). The tables are one HTML output that a
refresh replaces in place (a handful of widgets in all: the tables, pause, and a reset picker), so the
board costs the browser, and a saved notebook, little however large the pool.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..report import html_text
from ..router import account_cells, candidate_cells, status_tables
from ._ui import STYLE, Kit, close_tree, note, scrolling

if TYPE_CHECKING:
    from ..router import Router

#: the status board reads Router.status() this often
STATUS_REFRESH_S = 2.0

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
        #: the last rows shown, by key: {candidate or account: cells}
        self.candidates: dict[str, list[str]] = {}
        self.accounts: dict[str, list[str]] = {}
        self._kit = k = Kit()
        self.tables = k(w.HTML)  # a wide table scrolls inside it (see _ui.scrolling)
        #: what the last reset (or a failed refresh) said, shown under the tables
        self.note = ""
        self.pause_button = k(w.Button, description="pause", tooltip="stop or restart the live refresh")
        self.pause_button.on_click(lambda _: self.stop() if self.running else self.start())
        self.reset_choice = k(w.Dropdown, description="target", options=[], tooltip="a candidate or account to reset")
        self.reset_button = k(w.Button, description="reset", tooltip="clear the cooldowns, locks and breaker of the one picked")
        self.reset_button.on_click(lambda _: self.reset(self.reset_choice.value) if self.reset_choice.value else None)
        self.widget = k(w.VBox, children=[self.tables, k(w.HBox, children=[self.pause_button, self.reset_choice, self.reset_button])])
        self.widget.add_class("nbrouter-widget")
        self.refresh()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> None:
        """Read Router.status() once and redraw the tables (one update of one output)."""
        with self._lock:
            try:
                status = self.router.status()
            except Exception as exc:  # the board says so and tries again at the next refresh
                self.tables.value = note(f"status unavailable: {type(exc).__name__}: {exc}", "bad")
                return
            self.candidates = {r["candidate"]: candidate_cells(r) for r in status.candidates}
            self.accounts = {r["account"]: account_cells(r) for r in status.accounts}
            live = f"refreshed every {self.interval_s:g} s" if self.running else "paused"
            warning = f" · warning: {status.warning}" if status.warning else ""
            header = f"<div><b>nbrouter pool</b> · {time.strftime('%H:%M:%S')} · {live}{html_text(warning)}</div>"
            value = STYLE + header + scrolling(status_tables(status).html()) + self.note
            if self.tables.value != value:  # an unchanged board sends nothing to the browser
                self.tables.value = value
            # what needs a reset first: held or open ones, then the rest
            keys = sorted([*self.candidates, *self.accounts], key=lambda k: (not _held(k, status), k))
            if list(self.reset_choice.options) != keys:
                current = self.reset_choice.value
                self.reset_choice.options = keys
                self.reset_choice.value = current if current in keys else (keys[0] if keys else None)

    def reset(self, key: str) -> int:
        """Clear the cooldowns, locks and breaker of `key` (Router.reset) and refresh.

        Args:
            key: a candidate (`provider#account/model`) or an account (`provider#account`).
        """
        n = self.router.reset(key)
        self.note = note(f"reset {key}: {n} entr{'y' if n == 1 else 'ies'} cleared", "ok")
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
        self._kit.close()


def _held(key: str, status: Any) -> bool:
    """Whether a candidate or account is cooling down, locked, or has its breaker open: worth a reset."""
    row = status.candidate(key) or status.account(key) or {}
    return bool(row.get("hold")) or row.get("breaker") in ("open", "half_open")


__all__ = ["StatusBoard"]

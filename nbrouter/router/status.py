"""What `Router.status()` returns: the health of every candidate and account, printable as tables."""

from __future__ import annotations

from typing import Any

from ..report import Tables
from . import views


class Status:
    """What `Router.status()` returns: candidate rows and account rows, printable as tables."""

    def __init__(self, candidates: list[dict[str, Any]], accounts: list[dict[str, Any]], warning: str | None) -> None:
        self.candidates = candidates
        self.accounts = accounts
        self.warning = warning

    def candidate(self, key: str) -> dict[str, Any] | None:
        """The row of one candidate, or None.

        Args:
            key: `provider#account/model`.
        """
        return next((r for r in self.candidates if r["candidate"] == key), None)

    def account(self, key: str) -> dict[str, Any] | None:
        """The row of one account, or None.

        Args:
            key: `provider#account`.
        """
        return next((r for r in self.accounts if r["account"] == key), None)

    def tables(self) -> Tables:
        """The candidates and accounts tables (the same rows the live status board shows)."""
        return views.status_tables(self)

    def __str__(self) -> str:
        return self.tables().text()

    def _repr_html_(self) -> str:
        return self.tables().html()

    def __repr__(self) -> str:
        return str(self)

"""What this kernel session has spent: per cell, per combo, per provider and in total.

The ledger only adds up the costs the router reported for each call's attempts; it holds no routing
state. A price that is not known is counted as unknown, never as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterable

from ..report import Table, Tables
from ..router import Action, Attempt, ErrorKind


@dataclass
class Spend:
    """A sum of costs: the known part, and how many attempts used tokens at an unknown price."""

    usd: Decimal = Decimal(0)
    unknown: int = 0
    tokens: int = 0
    cells: int = 0
    #: attempts sent (skips are not attempts)
    attempts: int = 0

    def add(self, other: Spend) -> None:
        self.usd += other.usd
        self.unknown += other.unknown
        self.tokens += other.tokens
        self.attempts += other.attempts

    @property
    def text(self) -> str:
        if self.unknown and not self.usd:
            return "unknown"
        known = f"${self.usd:.6f}"
        return f"{known} + unknown ({self.unknown})" if self.unknown else known


@dataclass
class CellCost:
    """One cell's call: where it ran, what served it, and what it cost per provider."""

    execution_count: int | None
    cell_id: str | None
    combo: str
    served_by: str | None
    outcome: str  # served, partial, failed, cancelled, batch, test
    spend: Spend
    providers: dict[str, Spend] = field(default_factory=dict)
    #: routed calls: 1 for a cell, the items of an `--over` batch
    calls: int = 1

    @property
    def label(self) -> str:
        """`[3]`, the cell's execution count as the notebook shows it (the cell id stays in the metadata)."""
        return "-" if self.execution_count is None else f"[{self.execution_count}]"


def attempt_spend(attempt: Attempt) -> Spend:
    """What one attempt cost, as far as anyone knows.

    An attempt that reported usage costs its price (unknown when there is none). A served or cancelled
    attempt without usage still produced tokens, so its cost is unknown; a failed attempt without usage
    consumed nothing that can be known.
    """
    if attempt.action is Action.SKIPPED:
        return Spend()
    if attempt.usage is not None:
        tokens = attempt.usage.total_tokens
        if attempt.cost_usd is None:
            return Spend(unknown=1, tokens=tokens, attempts=1)
        return Spend(usd=attempt.cost_usd, tokens=tokens, attempts=1)
    if attempt.cost_usd is not None:
        return Spend(usd=attempt.cost_usd, attempts=1)
    if attempt.action is Action.SERVED or attempt.kind is ErrorKind.CANCELLED:
        return Spend(unknown=1, attempts=1)
    return Spend(attempts=1)


def _provider(candidate: str) -> str:
    return candidate.partition("/")[0].partition("#")[0]


class CostLedger:
    """The kernel session's spending, cell by cell, with an optional session budget."""

    def __init__(self) -> None:
        self.cells: list[CellCost] = []
        #: called after every record (the extension's comm pushes the new total to the status bar)
        self.listeners: list[Callable[[], None]] = []

    @property
    def calls(self) -> int:
        """The routed calls recorded: a cell counts one, an `--over` batch its items, a builder test one."""
        return sum(c.calls for c in self.cells)

    def record(self, attempts: Iterable[Attempt], *, combo: str, served_by: str | None, outcome: str,
               execution_count: int | None = None, cell_id: str | None = None, unknown: int = 0,
               calls: int = 1) -> CellCost:
        """Add one call's (or one batch's) attempts to the ledger; `unknown` counts calls whose attempts
        are not known (interrupted before the router reported them)."""
        total = Spend(unknown=unknown, cells=1)
        providers: dict[str, Spend] = {}
        for a in attempts:
            if a.action is Action.SKIPPED:  # nothing was sent: the provider was not used by this cell
                continue
            s = attempt_spend(a)
            total.add(s)
            providers.setdefault(_provider(a.candidate), Spend(cells=1)).add(s)
        entry = CellCost(execution_count, cell_id, combo, served_by, outcome, total, providers, calls)
        self.cells.append(entry)
        for listener in list(self.listeners):
            listener()
        return entry

    @property
    def total(self) -> Spend:
        out = Spend(cells=len(self.cells))
        for c in self.cells:
            out.add(c.spend)
        return out

    def by_combo(self) -> dict[str, Spend]:
        out: dict[str, Spend] = {}
        for c in self.cells:
            s = out.setdefault(c.combo, Spend())
            s.add(c.spend)
            s.cells += 1
        return out

    def by_provider(self) -> dict[str, Spend]:
        out: dict[str, Spend] = {}
        for c in self.cells:
            for name, spend in c.providers.items():
                s = out.setdefault(name, Spend())
                s.add(spend)
                s.cells += 1
        return out

    def remaining(self, budget_usd: float | Decimal | None) -> Decimal | None:
        """What is left of `budget_usd` after the known costs (None: no budget)."""
        if budget_usd is None:
            return None
        return Decimal(str(budget_usd)) - self.total.usd

    def clear(self) -> None:
        self.cells.clear()

    # ---- tables ----------------------------------------------------------------------------

    CELL_HEADERS = ["cell", "combo", "served by", "outcome", "attempts", "tokens", "cost"]
    SUM_HEADERS = ["", "cells", "attempts", "tokens", "cost"]

    def cell_rows(self) -> list[list[str]]:
        """One row per cell: its number, combo, what served it, the outcome, attempts, tokens, cost."""
        return [[c.label, c.combo, c.served_by or "", c.outcome, str(c.spend.attempts), str(c.spend.tokens), c.spend.text]
                for c in self.cells]

    def sum_rows(self, budget_usd: float | None = None, budget_note: str | None = None) -> list[list[str]]:
        """The sums per combo and per provider (cells that sent it something), the total, the budget (what is
        left of it after this session's cells, or `budget_note`: a shared budget's own account)."""
        rows: list[list[str]] = []
        for name, s in sorted(self.by_combo().items()):
            rows.append([f"combo {name}", str(s.cells), str(s.attempts), str(s.tokens), s.text])
        for name, s in sorted(self.by_provider().items()):
            rows.append([f"provider {name}", str(s.cells), str(s.attempts), str(s.tokens), s.text])
        total = self.total
        rows.append(["total", str(total.cells), str(total.attempts), str(total.tokens), total.text])
        if budget_note is not None:
            rows.append(["budget", "", "", "", budget_note])
        elif budget_usd is not None:
            left = self.remaining(budget_usd)
            rows.append(["budget", "", "", "", f"${budget_usd:.6f} (${left:.6f} left)"])
        return rows

    def tables(self, budget_usd: float | None = None, budget_note: str | None = None) -> Tables:
        """The session's cost: a row per cell, then the sums per combo, per provider and in total.

        Args:
            budget_usd: the session budget, shown with what is left of it (None: no budget row).
            budget_note: the budget row's text instead (a budget shared with other kernels: what is left
                of it is not this session's to work out).
        """
        return Tables([Table(self.CELL_HEADERS, self.cell_rows()),
                       Table(self.SUM_HEADERS, self.sum_rows(budget_usd, budget_note))],
                      title="cost of this session")

"""A session budget in dollars, kept by the Router for every call it makes (the magics use the same one).

What has been spent is counted from every attempt that was charged: known costs add up in `spent`, and an
attempt charged at an unknown price counts in `unknown_calls` (shown as "$0.0123 + 2 calls at unknown
price", never as a silent 0). Before a call is sent, each candidate's estimated cost is held against
what is left (`Budget.check`, one of the loop's named skip checks):

- `on_budget = "stop"`: the call is refused before anything is sent when its first choice does not fit;
- `on_budget = "cheapest"`: candidates that do not fit are skipped, and the ones that fit are tried
  cheapest first;
- `strict = True`: a candidate whose price is unknown is skipped too (its cost could not be held against
  the budget).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Iterable

from ..types import Action, Attempt

ON_BUDGET = ("stop", "cheapest")


class Budget:
    """The session's spending limit and what has been spent against it.

    Args:
        limit_usd: the limit in dollars; None for no limit (spending is still counted).
        on_budget: "stop" (refuse a call whose first choice does not fit) or "cheapest" (move to the
            cheapest candidate whose estimate fits what is left).
        strict: skip candidates with an unknown price while a limit is set.
    """

    def __init__(self, limit_usd: float | Decimal | None = None, *, on_budget: str = "stop", strict: bool = False) -> None:
        if on_budget not in ON_BUDGET:
            raise ValueError(f"on_budget must be one of {', '.join(ON_BUDGET)}, not {on_budget!r}")
        if limit_usd is not None and Decimal(str(limit_usd)) < 0:
            raise ValueError("a budget cannot be negative")
        self._lock = threading.Lock()
        self.limit: Decimal | None = None if limit_usd is None else Decimal(str(limit_usd))
        self.on_budget = on_budget
        self.strict = strict
        self.spent = Decimal(0)
        self.unknown_calls = 0

    def set_limit(self, limit_usd: float | Decimal | None) -> None:
        """Change the limit (None: no limit); what was spent stays."""
        if limit_usd is not None and Decimal(str(limit_usd)) < 0:
            raise ValueError("a budget cannot be negative")
        self.limit = None if limit_usd is None else Decimal(str(limit_usd))

    @property
    def remaining(self) -> Decimal | None:
        """What is left of the limit after the known costs (None: no limit)."""
        return None if self.limit is None else self.limit - self.spent

    def record(self, attempts: Iterable[Attempt]) -> None:
        """Count one call's charged attempts."""
        with self._lock:
            for a in attempts:
                if a.cost_usd is not None:
                    self.spent += a.cost_usd
                elif a.usage is not None or a.action is Action.SERVED or not a.cost_known:
                    self.unknown_calls += 1

    def check(self, estimate: Decimal | None) -> str | None:
        """Why a candidate with this estimated cost may not be sent now, or None."""
        left = self.remaining
        if left is None:
            return None
        if estimate is None:
            return "session budget: unknown price (the budget is strict)" if self.strict else None
        if estimate > left:
            return f"session budget: estimated ${estimate:.6f} > ${max(left, Decimal(0)):.6f} left"
        return None

    def text(self) -> str:
        """`$0.012300 + 2 calls at unknown price`, with the limit when one is set."""
        spent = f"${self.spent:.6f}"
        if self.unknown_calls:
            spent += f" + {self.unknown_calls} call{'s' if self.unknown_calls != 1 else ''} at unknown price"
        if self.limit is None:
            return f"spent {spent} (no budget)"
        return f"spent {spent} of ${self.limit:.6f} ({self.on_budget}{', strict' if self.strict else ''})"

    def reset(self) -> None:
        """Forget what was spent (the limit stays)."""
        with self._lock:
            self.spent = Decimal(0)
            self.unknown_calls = 0

    def __repr__(self) -> str:
        return f"Budget({self.text()})"

"""Strategies: pure functions that put a combo's candidates in the order to try them.

A strategy reads a read-only `Snapshot` of the state and a seeded random generator, and returns every
candidate it was given (a strategy never drops one: filtering is the loop's job), in order. It never
changes state and never calls a provider. What it based its order on goes into `ctx.inputs`, which
`Router.explain()` prints.

Account strategies order the accounts inside one step (one `provider/model` target).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .types import Candidate

if TYPE_CHECKING:
    from .config import Combo
    from .engine import Snapshot


@dataclass
class RequestInfo:
    """What a strategy may know about the request."""

    prompt_tokens: int
    max_tokens: int
    stream: bool
    prompt: str = ""
    task: str | None = None


@dataclass
class StrategyContext:
    """Everything a strategy reads: the combo, the request, the state snapshot, the seeded generator."""

    combo: Combo
    request: RequestInfo
    snapshot: Snapshot
    rng: random.Random
    #: the combo's candidates before filtering (round-robin keeps turns over these)
    all_candidates: Sequence[Candidate] = ()
    #: per-candidate inputs the strategy used, shown by explain(): {candidate key: {name: value}}
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explored: bool = False

    def note(self, candidate: Candidate, **values: Any) -> None:
        self.inputs.setdefault(candidate.key, {}).update(values)


Strategy = Callable[[list[Candidate], StrategyContext], list[Candidate]]


def _groups(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by step, in first-seen order."""
    groups: dict[int, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.step, []).append(c)
    return list(groups.values())


def priority(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """As written (the tier waterfall)."""
    return list(candidates)


def round_robin(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Rotate the starting step by one per call (`sticky` calls per step); cooling steps keep their turn."""
    steps = sorted({c.step for c in (ctx.all_candidates or candidates)})
    if not steps:
        return []
    sticky = max(1, ctx.combo.sticky)
    turn = ctx.snapshot.counter(f"rr:{ctx.combo.name}")
    start = (turn // sticky) % len(steps)
    rotated = steps[start:] + steps[:start]
    rank = {s: i for i, s in enumerate(rotated)}
    for c in candidates:
        ctx.note(c, turn=turn, start_step=rotated[0])
    return sorted(candidates, key=lambda c: rank.get(c.step, len(rank)))


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "round-robin": round_robin,
}

#: strategies whose loop turn counter advances once per call
COUNTED = {"round-robin"}


# ---- account strategies ---------------------------------------------------------------------


def accounts_round_robin(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Rotate accounts inside one step, one per call; a cooling account keeps its place in the rotation."""
    if len(group) < 2:
        return group
    full = [c for c in (ctx.all_candidates or group) if c.step == group[0].step] or group
    turn = ctx.snapshot.counter(f"acct:{ctx.combo.name}:{group[0].step}")
    start = turn % len(full)
    order = [c.account for c in full[start:] + full[:start]]
    rank = {a: i for i, a in enumerate(order)}
    return sorted(group, key=lambda c: rank.get(c.account, len(rank)))


def accounts_fill_first(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Stay on the first account until its quota or a cooldown moves the loop past it."""
    return list(group)


ACCOUNT_STRATEGIES: dict[str, Strategy] = {
    "round-robin": accounts_round_robin,
    "fill-first": accounts_fill_first,
}


def order_accounts(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Apply the combo's account strategy inside each step, keeping steps in place."""
    strategy = ACCOUNT_STRATEGIES.get(ctx.combo.account_strategy, accounts_round_robin)
    out: list[Candidate] = []
    for group in _groups(candidates):
        out.extend(strategy(group, ctx) if len(group) > 1 else group)
    return out

"""Strategies: pure functions that put a combo's candidates in the order to try them.

A strategy reads a read-only `Snapshot` of the state and a seeded random generator, and returns every
candidate it was given (a strategy never drops one: filtering is the loop's job), in order. It never
changes state and never calls a provider. What it based its order on goes into `ctx.inputs`, which
`Router.explain()` prints. A strategy that wants state changed (only `auto`, which excludes
low-scoring candidates for a while) proposes it in its inputs (`exclude_for_s`), where explain() shows it
and the loop records it (`scoring.record_exclusions`).

Strategies that order whole steps (`priority`, `round-robin`, `weighted`, `random`, `strict-random`) keep
the accounts of one step together, in the order the account strategy gave them. Strategies that read per-candidate
measurements (`fastest`, `cheapest`, `least-used`, `context-fit`, `auto`, ...) sort candidates, and keep
the incoming order between equals.

Account strategies order the accounts inside one step (one `provider/model` target).

The registry (`STRATEGIES`, `ACCOUNT_STRATEGIES`, `COUNTED`) is defined here once; config validation
reads it.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, MutableMapping, Protocol, Sequence

from ..model import Combo, Provider
from .packs import FACTORS, VARIANTS
from .scoring import (
    EXCLUDE_INPUT,
    Measurements,
    PoolInputs,
    ScoredPool,
    account_scores,
    exclusion_seconds,
    guess_task,
    score_pool,
    task_patterns,
    weights_for,
)
from ..types import Candidate


class Snapshot(Measurements, Protocol):
    """The read-only view of the router's state a strategy reads (the engine implements it at one `now`)."""

    def provider(self, c: Candidate) -> Provider: ...

    def counter(self, name: str) -> int: ...

    def latency(self, c: Candidate, *, stream: bool) -> float | None: ...

    def p50(self, c: Candidate) -> float | None: ...

    def requests_last_hour(self, c: Candidate) -> int: ...

    def in_flight(self, c: Candidate) -> int: ...

    def estimated_cost(self, c: Candidate, prompt_tokens: int, max_tokens: int) -> Decimal | None: ...

    def context_window(self, c: Candidate) -> int | None: ...

    def hold_until(self, key: str) -> float | None: ...


@dataclass
class RequestInfo:
    """What a strategy may know about the request."""

    prompt_tokens: int
    max_tokens: int
    stream: bool
    prompt: str = ""
    task: str | None = None
    #: a conversation's identity (a hash of its first message) when the call carries history, else None
    conversation: str | None = None
    #: the combo relays conversations (context-relay): a history too long for a window is compacted, not skipped
    relay: bool = False


@dataclass
class StrategyContext:
    """Everything a strategy reads: the combo, the request, the state snapshot, the seeded generator."""

    combo: Combo
    request: RequestInfo
    snapshot: Snapshot
    rng: random.Random
    #: the combo's candidates before filtering (fill-first ranks accounts and auto ranks steps over these)
    all_candidates: Sequence[Candidate] = ()
    #: per-candidate inputs the strategy used, shown by explain(): {candidate key: {name: value}}
    inputs: MutableMapping[str, MutableMapping[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explored: bool = False
    #: the exclusions `auto` proposes, {candidate key: seconds} (also shown in the inputs); the loop records them
    exclusions: dict[str, float] = field(default_factory=dict)

    def note(self, candidate: Candidate, **values: Any) -> None:
        """Record inputs the order was based on, for explain()."""
        self.note_all(candidate, values)

    def note_pool(self, scored: ScoredPool) -> PoolInputs:
        """Every scored candidate's inputs at once, laid out only when read, after what was noted before."""
        inputs = PoolInputs(scored, self.inputs)
        self.inputs = inputs
        return inputs

    def note_all(self, candidate: Candidate, values: MutableMapping[str, Any]) -> None:
        """`note` with the inputs in a dict, which becomes the candidate's own when it has none yet."""
        existing = self.inputs.get(candidate.key)
        if existing is None:
            self.inputs[candidate.key] = values
        else:
            existing.update(values)


Strategy = Callable[[list[Candidate], StrategyContext], list[Candidate]]


def _groups(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by step, in first-seen order."""
    groups: dict[int, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.step, []).append(c)
    return list(groups.values())


def _sort_stable(candidates: list[Candidate], key: Callable[[Candidate], Any]) -> list[Candidate]:
    """Sorted by `key`, the incoming order kept between equals."""
    return sorted(candidates, key=key)


def _headroom(c: Candidate, ctx: StrategyContext) -> float | None:
    share, _ = ctx.snapshot.quota_headroom(c)
    return share if isinstance(share, (int, float)) else None


def priority(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """As written (the tier waterfall)."""
    return list(candidates)


def round_robin(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Rotate the starting step by one per call (`sticky` calls per step) over the steps that can be
    tried now: while one cools, the others take its turns in rotation, evenly (no double share)."""
    steps = sorted({c.step for c in candidates})
    if not steps:
        return []
    sticky = max(1, ctx.combo.sticky)
    turn = ctx.snapshot.counter(f"rr:{ctx.combo.name}")
    start = (turn // sticky) % len(steps)
    rotated = steps[start:] + steps[:start]
    rank = {s: i for i, s in enumerate(rotated)}
    for c in candidates:
        ctx.note(c, turn=turn, start_step=rotated[0])
    return sorted(candidates, key=lambda c: rank[c.step])


def fastest(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Ascending recent latency: EWMA of time to first byte for streamed calls, of total time otherwise.

    A candidate without data gets the pool median, so a new target is tried before the slow ones.
    """
    stream = ctx.request.stream
    measured = {c.key: ctx.snapshot.latency(c, stream=stream) for c in candidates}
    known = [v for v in measured.values() if v is not None]
    median = statistics.median(known) if known else None
    metric = "ttft" if stream else "total"
    values: dict[str, float] = {}
    for c in candidates:
        value = measured[c.key]
        if value is None:
            ctx.note(c, latency_s=median, latency_from="pool median (no data)" if median is not None else "no data")
            value = median
        else:
            ctx.note(c, latency_s=value, latency_from=f"EWMA {metric}")
        values[c.key] = 0.0 if value is None else value
    return _sort_stable(candidates, lambda c: values[c.key])


def cheapest(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Ascending estimated cost of this request (prompt tokens x input price + max_tokens x output price);
    an unknown price last."""
    req = ctx.request
    costs: dict[str, float | None] = {}
    for c in candidates:
        cost = ctx.snapshot.estimated_cost(c, req.prompt_tokens, req.max_tokens)
        costs[c.key] = None if cost is None else float(cost)
        if cost is None:
            ctx.note(c, estimated_cost="unknown price")
        else:
            ctx.note(c, estimated_cost=f"${cost:.6f}")
    return _sort_stable(candidates, lambda c: (costs[c.key] is None, costs[c.key] or 0.0))


def _p2c(candidates: list[Candidate], ctx: StrategyContext, label: str) -> list[Candidate]:
    """Two random candidates, more quota headroom first, then the rest as written; no headroom last."""
    shares = {c.key: _headroom(c, ctx) for c in candidates}
    for c in candidates:
        share = shares[c.key]
        ctx.note(c, **{f"{label}headroom": "untracked" if share is None else share})
    if len(candidates) < 2:
        return list(candidates)
    i, j = ctx.rng.sample(range(len(candidates)), 2)
    a, b = candidates[i], candidates[j]

    def room(c: Candidate) -> float:
        share = shares[c.key]
        return 1.0 if share is None else share  # nothing tracked: nothing known to be short

    pair = [a, b] if room(a) >= room(b) else [b, a]
    ctx.note(pair[0], **{f"{label}p2c": "drawn, more headroom"})
    ctx.note(pair[1], **{f"{label}p2c": "drawn"})
    rest = [c for c in candidates if c is not a and c is not b]
    ordered = pair + rest
    # an account with nothing left would only answer 429: it goes last
    return _sort_stable(ordered, lambda c: shares[c.key] == 0.0)


def p2c(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Power of two choices by quota headroom (configured quotas and rate-limit headers)."""
    return _p2c(candidates, ctx, "")


def weighted(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Weighted draw of steps without replacement (`weight` per step); weight 0 only after every positive one."""
    groups = _groups(candidates)
    positive = [g for g in groups if g[0].weight > 0]
    zero = [g for g in groups if g[0].weight <= 0]
    drawn: list[list[Candidate]] = []
    while positive:
        total = sum(g[0].weight for g in positive)
        point = ctx.rng.random() * total
        pick = len(positive) - 1
        for k, g in enumerate(positive):
            point -= g[0].weight
            if point < 0:
                pick = k
                break
        drawn.append(positive.pop(pick))
    out: list[Candidate] = []
    for g in drawn + zero:
        for c in g:
            ctx.note(c, weight=c.weight)
        out.extend(g)
    return out


def random_order(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """A uniform shuffle of the steps (each step's accounts stay in the account strategy's order)."""
    groups = _groups(candidates)
    ctx.rng.shuffle(groups)
    return [c for g in groups for c in g]


def least_used(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Fewest requests in flight first (sent and not answered yet, by this process), then fewest in the
    last hour."""
    snap = ctx.snapshot
    load = {c.key: (snap.in_flight(c), snap.requests_last_hour(c)) for c in candidates}
    for c in candidates:
        in_flight, last_hour = load[c.key]
        ctx.note(c, in_flight=in_flight, requests_last_hour=last_hour)
    return _sort_stable(candidates, lambda c: load[c.key])


def strict_random(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """A shuffled deck of the steps that can be tried now: every step once before any repeats, then a
    new shuffle. The deck is drawn from the combo's turn counter (the one round-robin keeps, persisted),
    so it survives a restart and stays pure: deck `turn // n` is the shuffle seeded by the combo name, the
    deck number and n; this call takes its card `turn % n` first, the rest of the deck after it."""
    groups = _groups(candidates)
    if not groups:
        return []
    turn = ctx.snapshot.counter(f"rr:{ctx.combo.name}")
    n = len(groups)
    number, card = divmod(turn, n)
    deck = list(range(n))
    random.Random(f"strict-random:{ctx.combo.name}:{number}:{n}").shuffle(deck)
    order = deck[card:] + deck[:card]
    for c in candidates:
        ctx.note(c, turn=turn, deck=number, card=card)
    return [c for i in order for c in groups[i]]


def fill_first(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Like `priority`, over accounts: every candidate of the first account (as written) before the next
    account's, so calls stay on one account until its quota or a cooldown moves the loop past it."""
    written = list(ctx.all_candidates or candidates)
    account_rank: dict[str, int] = {}
    for c in written:
        account_rank.setdefault(c.account_key, len(account_rank))
    position = {c.key: i for i, c in enumerate(written)}
    shares = {c.account_key: _headroom(c, ctx) for c in candidates}
    for c in candidates:
        ctx.note(c, account_rank=account_rank.get(c.account_key, len(account_rank)))
    return sorted(
        candidates,
        key=lambda c: (shares[c.account_key] == 0.0, account_rank.get(c.account_key, len(account_rank)), position.get(c.key, 0)),
    )


def reset_aware(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Among candidates with tracked quotas, the one whose quota resets soonest first (use it before it
    refills unused); the rest as written."""
    best: tuple[float, int] | None = None
    pick: Candidate | None = None
    for i, c in enumerate(candidates):
        share, reset = ctx.snapshot.quota_headroom(c)
        if not isinstance(share, (int, float)) or reset is None:
            ctx.note(c, quota="untracked")
            continue
        ctx.note(c, headroom=share, resets_in_s=max(0.0, reset - ctx.snapshot.now))
        if share <= 0.0:
            continue  # nothing left to use before the reset
        if best is None or (reset, i) < best:
            best, pick = (reset, i), c
    if pick is None:
        return list(candidates)
    ctx.note(pick, reset_aware="resets soonest")
    return [pick] + [c for c in candidates if c is not pick]


def lkgp(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """The last candidate that succeeded for this combo first (persisted), then as written."""
    last = ctx.snapshot.pointer(f"lkgp:{ctx.combo.name}")
    pick = next((c for c in candidates if c.key == last), None)
    if last and pick is None:
        ctx.notes.append(f"lkgp: the last good candidate {last} is not available now")
    if pick is None:
        return list(candidates)
    ctx.note(pick, lkgp="last good")
    return [pick] + [c for c in candidates if c is not pick]


def relay_pointer(combo: str, conversation: str) -> str:
    """The state pointer naming the candidate that holds a conversation (the loop sets it on success)."""
    return f"relay:{combo}:{conversation}"


def context_relay(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """For conversations: the candidate that holds this conversation first (it answered its last turn),
    then as written. When the call must move, the loop hands the history over compacted to fit."""
    conversation = ctx.request.conversation
    holder = ctx.snapshot.pointer(relay_pointer(ctx.combo.name, conversation)) if conversation else None
    pick = next((c for c in candidates if c.key == holder), None)
    if pick is None:
        if holder:
            ctx.notes.append(f"context-relay: {holder} holds the conversation but is not available now: it moves")
        return list(candidates)
    ctx.note(pick, relay="holds the conversation")
    return [pick] + [c for c in candidates if c is not pick]


def context_fit(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Largest known context window first; unknown windows after, as written."""
    windows = {c.key: ctx.snapshot.context_window(c) for c in candidates}
    for c in candidates:
        ctx.note(c, context_window=windows[c.key] if windows[c.key] is not None else "unknown")
    return _sort_stable(candidates, lambda c: (windows[c.key] is None, -(windows[c.key] or 0)))


def auto(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Multi-factor score, highest first, with seeded exploration (routing.md section 4; see scoring).

    Exploration: `auto_explore_rate` of calls (`auto_smart_explore_rate` for `auto/smart`) try a
    uniformly drawn candidate first, except in incident mode (more than `auto_incident_open_share` of the
    pool's breakers OPEN). A candidate scoring below `auto_min_score` (never the one tried first) gets an
    exclusion proposed in its inputs (`exclude_for_s`).
    """
    snap = ctx.snapshot
    policy = snap.policy
    combo = ctx.combo
    config = snap.config
    variant = VARIANTS.get(combo.name) if combo.virtual else None
    weights, fixed_notes = _auto_setup(combo, snap)

    task, why = ctx.request.task, "given"
    if task is None:
        task, keywords = guess_task(ctx.request.prompt, policy.auto_task_scan_chars)
        why = f"keywords {', '.join(keywords)}" if task else "no keywords"
    if task is None and variant is not None and variant.task:
        task, why = variant.task, f"{combo.name} assumes it"

    ctx.notes.extend(fixed_notes[:-2])
    patterns = snap.memo.get("task_patterns")
    if patterns is None:
        patterns = snap.memo["task_patterns"] = task_patterns(config)
    scored = score_pool(candidates, snap, ctx.all_candidates, weights, task, patterns)
    totals = scored.totals
    # highest total first, ties as they came (sorted is stable)
    negated = [-t for t in totals]
    ranked = sorted(range(len(totals)), key=negated.__getitem__)

    pool = ctx.all_candidates or candidates
    open_count = scored.breaker.count("open")
    if len(pool) != len(candidates):  # the candidates filtered out count toward incident mode too
        index = scored.index
        open_count += sum(1 for c in pool if c.key not in index and snap.breaker_state(c) == "open")
    incident = open_count > policy.auto_incident_open_share * len(pool)
    rate = float(getattr(policy, variant.explore_rate if variant else "auto_explore_rate"))
    draw = ctx.rng.random()  # always drawn, so a seed gives the same sequence whatever the state
    if not incident and draw < rate and len(ranked) > 1:
        pick = ranked[ctx.rng.randrange(len(ranked))]
        ranked = [pick] + [i for i in ranked if i != pick]
        ctx.explored = True
        explore_text = f"explored: drew {draw:.4f} < {rate:g}, tried {candidates[pick].key} first"
    elif incident:
        explore_text = (f"no exploration: incident mode ({open_count} of {len(pool)} breakers open, more than "
                        f"{policy.auto_incident_open_share:g})")
    else:
        explore_text = f"no exploration (drew {draw:.4f}, rate {rate:g})"

    inputs = ctx.note_pool(scored)
    min_score = policy.auto_min_score
    for i in ranked[1:]:  # never the first; the low scores are at the end, apart from an explored pick
        if totals[i] < min_score:
            key = candidates[i].key
            seconds = ctx.exclusions[key] = exclusion_seconds(snap, combo.name, key)
            inputs[key][EXCLUDE_INPUT] = seconds

    ctx.notes.append(fixed_notes[-2])
    ctx.notes.append(f"auto: task {task or 'unknown'} ({why}); {explore_text}")
    ctx.notes.append(fixed_notes[-1])
    return [candidates[i] for i in ranked]


def _auto_setup(combo: Combo, snap: Snapshot) -> tuple[dict[str, float], list[str]]:
    """What `auto` works out once per combo and configuration: the weights, and the notes that do not
    change between calls (providers left out, the weights, the exclusion rule)."""
    key = ("auto-setup", id(combo))
    hit = snap.memo.get(key)
    if hit is not None and hit[0] is combo:
        return hit[1], hit[2]
    config, policy = snap.config, snap.policy
    weights, source = weights_for(combo, policy)
    notes = []
    stored = config.combos.get(combo.name)
    if combo.virtual or (stored is not None and not stored.steps):
        missing = config.providers_without_models(combo.candidate_pool)
        if missing:
            notes.append(f"auto: providers without `models` contribute nothing: {', '.join(missing)}")
    weight_text = ", ".join(f"{name} {weights[name]:.3g}" for name in FACTORS if weights[name])
    notes.append(f"auto: {source}: {weight_text}")
    notes.append(
        f"auto: a score below {policy.auto_min_score:g} excludes a candidate from {combo.name} for "
        f"{policy.auto_exclude_s:g} s, doubling on re-exclusion up to {policy.auto_exclude_cap_s:g} s (never the first)"
    )
    if len(snap.memo) >= 256:  # drafts are new objects each time
        snap.memo.clear()
    snap.memo[key] = (combo, weights, notes)
    return weights, notes


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "round-robin": round_robin,
    "fastest": fastest,
    "cheapest": cheapest,
    "p2c": p2c,
    "weighted": weighted,
    "random": random_order,
    "strict-random": strict_random,
    "least-used": least_used,
    "fill-first": fill_first,
    "reset-aware": reset_aware,
    "lkgp": lkgp,
    "context-fit": context_fit,
    "context-relay": context_relay,
    "auto": auto,
}

#: strategies whose turn counter (`rr:COMBO`) the loop advances once per call
COUNTED = {"round-robin", "strict-random"}


# ---- account strategies ---------------------------------------------------------------------


def accounts_round_robin(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Rotate the accounts of one step that can be tried now, one per call: while one cools, the others
    take its turns in rotation, evenly (no double share)."""
    if len(group) < 2:
        return group
    turn = ctx.snapshot.counter(f"acct:{ctx.combo.name}:{group[0].step}")
    start = turn % len(group)
    return group[start:] + group[:start]


def accounts_fill_first(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Stay on the first account until its quota or a cooldown moves the loop past it."""
    return list(group)


def accounts_p2c(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Two random accounts, the one with more remaining quota first; an account with none left last."""
    return _p2c(group, ctx, "account_")


def accounts_scored(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Accounts by health, quota headroom and latency, weighted as in `auto`; none left last."""
    scored = account_scores(group, ctx.snapshot)
    for c, (_, _, shown) in zip(group, scored):
        ctx.note(c, **shown)
    rank = {id(c): (empty, -total, i) for i, (c, (total, empty, _)) in enumerate(zip(group, scored))}
    return sorted(group, key=lambda c: rank[id(c)])


ACCOUNT_STRATEGIES: dict[str, Strategy] = {
    "round-robin": accounts_round_robin,
    "fill-first": accounts_fill_first,
    "p2c": accounts_p2c,
    "scored": accounts_scored,
}


def order_accounts(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Apply the combo's account strategy inside each step, keeping steps in place."""
    if len(candidates) < 2 or len({c.step for c in candidates}) == len(candidates):
        return list(candidates)  # one account per step: nothing to order
    strategy = ACCOUNT_STRATEGIES.get(ctx.combo.account_strategy, accounts_round_robin)
    out: list[Candidate] = []
    for group in _groups(candidates):
        out.extend(strategy(group, ctx) if len(group) > 1 else group)
    return out

"""`auto` scoring: multi-factor scores over the pool, mode packs, exploration (routing.md section 4).

Every candidate gets nine factors, each in [0, 1]:

- health: the breaker, CLOSED 1, HALF_OPEN 0.5, OPEN 0 (`Policy.auto_health_scores`);
- quota: the share of quota left (configured quotas by our own counters, and rate-limit headers);
- cost: inverse blended price (`cost_blend_input` x input + `cost_blend_output` x output, per Mtok);
- latency: inverse p95 latency;
- task_fit: 1 when the model matches a pattern of the task guessed from the prompt, else 0;
- specificity: how specific the matching pattern is (its literal characters), relative to the pool;
- stability: low latency spread (p95 - p50) and low error rate;
- tier: the account's tier (`Policy.auto_tier_scores`);
- tier_affinity: how early the candidate's step comes in the combo (the user's own waterfall).

Measurements without a natural scale (price, latency, spread) are normalised across the current pool as
`1 - (value - best) / worst`: the best gets 1, the rest in proportion, so small differences stay small
and a free model does not zero every paid one. A candidate without a measurement gets the pool median
(so a new target is tried). The score is the weighted sum; the weights are the defaults
(`Policy.auto_weights`), or a mode pack, with a combo's `weights` on top, normalised to sum 1.

Exploration: `auto_explore_rate` of calls (`auto_smart_explore_rate` for `auto/smart`) try a uniformly
drawn candidate first, except in incident mode (more than `auto_incident_open_share` of the pool's
breakers OPEN). Exclusion: a candidate scoring below `auto_min_score` (never the one tried first) is
left out of this combo for `auto_exclude_s`, doubled up to `auto_exclude_cap_s` when it follows the last
exclusion within that exclusion's length. The strategy stays pure: an exclusion is a proposal in the
decision's inputs (`exclude_for_s`), which the loop records with `record_exclusions`.
"""

from __future__ import annotations

import fnmatch
import re
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .config import VIRTUAL_COMBOS, Combo, Config, Step, parse_target
from .errors import ComboConfigError

if TYPE_CHECKING:
    from .policy import Policy
    from .state import StateStore
    from .strategies import StrategyContext
    from .types import Candidate, Decision

#: the factors of an `auto` score, in the order explain() shows them
FACTORS = ("health", "quota", "cost", "latency", "task_fit", "specificity", "stability", "tier", "tier_affinity")

#: mode packs replace the default weights; each row sums to 1 (routing.md section 4)
PACKS: dict[str, dict[str, float]] = {
    "ship-fast": {"quota": 0.15, "health": 0.30, "cost": 0.05, "latency": 0.35, "task_fit": 0.10, "stability": 0.0, "tier": 0.05},
    "cost-saver": {"quota": 0.15, "health": 0.20, "cost": 0.40, "latency": 0.05, "task_fit": 0.10, "stability": 0.05, "tier": 0.05},
    "quality-first": {"quota": 0.10, "health": 0.20, "cost": 0.05, "latency": 0.05, "task_fit": 0.40, "stability": 0.15, "tier": 0.05},
    "offline-friendly": {"quota": 0.40, "health": 0.30, "cost": 0.10, "latency": 0.05, "task_fit": 0.0, "stability": 0.10, "tier": 0.05},
}


@dataclass(frozen=True)
class Variant:
    """What a virtual `auto...` combo changes: its pack, a task to assume, its exploration rate constant."""

    pack: str | None
    task: str | None = None
    explore_rate: str = "auto_explore_rate"  # the name of the Policy constant


VARIANTS: dict[str, Variant] = {
    "auto": Variant(None),
    "auto/coding": Variant("quality-first", task="coding"),
    "auto/fast": Variant("ship-fast"),
    "auto/cheap": Variant("cost-saver"),
    "auto/smart": Variant("quality-first", explore_rate="auto_smart_explore_rate"),
    "auto/offline": Variant("offline-friendly"),
}
assert set(VARIANTS) == set(VIRTUAL_COMBOS)

#: model-name patterns (`*` matches anything, case-insensitive) per task; the config's `[task_fit]`
#: table adds its patterns in front. A pattern is matched against the model id and `provider/model`.
TASK_FIT: dict[str, list[str]] = {
    "coding": ["*coder*", "*codex*", "*codestral*", "*devstral*", "*claude*sonnet*", "*claude*opus*", "*gpt-5*",
               "*gpt-4.1*", "*deepseek*", "*qwen*", "*glm-4*", "*kimi*", "o3*", "o4*"],
    "review": ["*claude*opus*", "*claude*sonnet*", "*gpt-5*", "o3*", "*gemini*pro*", "*deepseek*"],
    "planning": ["o3*", "*claude*opus*", "*gpt-5*", "*gemini*pro*", "*reasoner*", "*deepseek*r1*", "*thinking*"],
    "analysis": ["*gemini*pro*", "o3*", "*gpt-5*", "*claude*", "*deepseek*r1*", "*reasoner*", "*qwen*"],
    "debugging": ["*claude*sonnet*", "*claude*opus*", "*gpt-5*", "o3*", "o4*", "*codex*", "*coder*", "*deepseek*"],
    "docs": ["*claude*", "*gpt-5*", "*gpt-4o*", "*gpt-4.1*", "*gemini*", "*mistral*", "*llama*"],
}

#: keywords that suggest a task: words, two-word phrases, and stems ending in `*`, matched against the
#: lower-cased prompt's words; the task with the most hits wins, ties go to the earlier task here (the
#: narrow tasks come before the broad `coding`)
TASK_KEYWORDS: dict[str, tuple[str, ...]] = {
    "debugging": ("traceback", "exception", "error", "errors", "bug", "bugs", "debug*", "stack trace", "stacktrace",
                  "crash*", "segfault", "fix", "fails", "failing", "broken", "not working"),
    "review": ("review*", "critique", "pull request", "code smell", "audit", "feedback"),
    "docs": ("docstring*", "documentation", "document", "readme", "docs", "tutorial", "changelog"),
    "planning": ("plan", "planning", "roadmap", "milestone*", "architecture", "design", "strategy", "outline", "steps to"),
    "analysis": ("analy*", "compare", "dataset*", "dataframe*", "data frame", "statistic*", "trend*", "correlat*",
                 "summari*", "insight*"),
    "coding": ("code", "function", "implement*", "python", "script", "class", "refactor*", "sql", "regex", "unit test",
               "unit tests", "```", "def", "api"),
}
_WORDS = re.compile(r"[a-z0-9_]+|```")


#: the decision input through which `auto` proposes an exclusion; the loop records it
EXCLUDE_INPUT = "exclude_for_s"


def exclusion_key(combo: str, candidate_key: str) -> str:
    """The hold key of an `auto` exclusion: per combo, so it never blocks a combo the user wrote."""
    return f"auto-exclude:{combo}:{candidate_key}"


def _streak_key(combo: str, candidate_key: str) -> str:
    return f"auto-streak:{combo}:{candidate_key}"


# ---- the candidate pool of auto combos ---------------------------------------------------------


def pool_steps(config: Config, pool: Iterable[str] | None) -> list[Step]:
    """Steps of every enabled candidate: each provider x its `models` (or the pool's providers and targets)."""
    entries = list(pool) if pool is not None else [name for name in config.providers]
    steps: list[Step] = []
    seen: set[str] = set()
    for entry in entries:
        if "/" in entry:
            provider, account, model = parse_target(entry)
            refs = [(provider, account, model)]
        else:
            provider, _, account_text = entry.partition("#")
            prov = config.providers.get(provider)
            refs = [(provider, account_text or None, m) for m in (prov.models if prov else [])]
        for provider, account, model in refs:
            prov = config.providers.get(provider)
            if prov is None or not prov.enabled or not model:
                continue
            ref = f"{provider}#{account}/{model}" if account else f"{provider}/{model}"
            if ref in seen:
                continue
            seen.add(ref)
            steps.append(Step(ref=ref, provider=provider, account=account, model=model))
    return steps


def _no_models(config: Config, pool: Iterable[str] | None) -> list[str]:
    names = [e.partition("#")[0] for e in pool if "/" not in e] if pool is not None else list(config.providers)
    return [n for n in dict.fromkeys(names) if n in config.providers and config.providers[n].enabled and not config.providers[n].models]


def virtual_combo(config: Config, name: str) -> Combo:
    """The virtual combo `auto`, `auto/coding`, ...: every enabled candidate of the config, built per
    request (a provider added to the config takes part at once)."""
    variant = VARIANTS[name]
    steps = pool_steps(config, None)
    if not steps:
        missing = _no_models(config, None)
        hint = f"providers without models: {', '.join(missing)}" if missing else "no provider is configured"
        raise ComboConfigError(f"{name} has no candidates: list `models` under each provider ({hint})",
                               file=config.file_label, combo=name, field="providers.models")
    return Combo(name=name, steps=steps, strategy="auto", pack=variant.pack, virtual=True)


def auto_pool(config: Config, combo: Combo) -> Combo:
    """A saved `auto` combo without targets, with its steps filled from `candidate_pool` (default: every
    enabled candidate). Other combos come back as they are."""
    if combo.strategy != "auto" or combo.steps or combo.virtual:
        return combo
    steps = pool_steps(config, combo.candidate_pool)
    if not steps:
        missing = _no_models(config, combo.candidate_pool)
        hint = f" (providers without models: {', '.join(missing)})" if missing else ""
        raise ComboConfigError(f"the candidate pool is empty: list `models` under the providers{hint}",
                               file=config.file_label, combo=combo.name, field="candidate_pool")
    return replace(combo, steps=steps)


# ---- tasks --------------------------------------------------------------------------------------


def guess_task(prompt: str, scan_chars: int = 4000) -> tuple[str | None, list[str]]:
    """The task the prompt most likely asks for (or None) and the keywords that said so.

    Only the first and last `scan_chars / 2` characters are read (where an instruction usually is), so a
    long pasted document costs no more than a short one.
    """
    if len(prompt) > scan_chars:
        half = scan_chars // 2
        prompt = prompt[:half] + "\n" + prompt[-half:]
    words = _WORDS.findall(prompt.lower())
    counts = Counter(words)
    counts.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    best: tuple[int, str | None, list[str]] = (0, None, [])
    for task, keywords in TASK_KEYWORDS.items():
        found: dict[str, int] = {}
        for keyword in keywords:
            if keyword.endswith("*"):
                stem = keyword[:-1]
                for word, n in counts.items():
                    if word.startswith(stem) and " " not in word:
                        found[word] = n
            elif keyword in counts:
                found[keyword] = counts[keyword]
        hits = sum(found.values())
        if hits > best[0]:
            best = (hits, task, sorted(found))
    return best[1], best[2]


def task_patterns(config: Config | None) -> dict[str, list[str]]:
    """The task-fit table: the config's `[task_fit]` patterns first, then the built-in ones."""
    table = {task: list(patterns) for task, patterns in TASK_FIT.items()}
    for task, patterns in (config.task_fit if config is not None else {}).items():
        table[task] = list(patterns) + table.get(task, [])
    return table


def _literal_length(pattern: str) -> int:
    return sum(1 for ch in pattern if ch not in "*?[]")


def best_match(c: Candidate, patterns: Iterable[str]) -> str | None:
    """The most specific pattern that matches the candidate's model (or `provider/model`), or None."""
    names = (c.model.lower(), c.target.lower())
    found = [p for p in patterns if any(fnmatch.fnmatchcase(n, p.lower()) for n in names)]
    return max(found, key=_literal_length) if found else None


# ---- weights ------------------------------------------------------------------------------------


def weights_for(combo: Combo, policy: Policy) -> tuple[dict[str, float], str]:
    """The combo's factor weights, normalised to sum 1, and where they came from."""
    if combo.pack:
        base, source = dict(PACKS[combo.pack]), f"pack {combo.pack}"
    else:
        base, source = dict(policy.auto_weights), "default weights"
    weights = {f: float(base.get(f, 0.0)) for f in FACTORS}
    if combo.weights:
        weights.update({k: float(v) for k, v in combo.weights.items() if k in weights})
        source += " + the combo's weights"
    total = sum(weights.values())
    if total <= 0:  # all zero: validation refuses it in a config; fall back rather than divide by zero
        weights, total, source = {f: float(policy.auto_weights.get(f, 0.0)) for f in FACTORS}, sum(policy.auto_weights.values()), "default weights"
    return {f: w / total for f, w in weights.items()}, source


# ---- factors ------------------------------------------------------------------------------------


def _inverse(values: Mapping[str, float | None]) -> tuple[dict[str, float], dict[str, bool]]:
    """`1 - (value - best) / worst` over the pool (lower is better); a missing value gets the pool median."""
    known = [v for v in values.values() if v is not None]
    median = statistics.median(known) if known else None
    filled = {k: (median if v is None else v) for k, v in values.items()}
    present = [v for v in filled.values() if v is not None]
    guessed = {k: v is None for k, v in values.items()}
    if not present:
        return {k: 1.0 for k in values}, guessed
    best, worst = min(present), max(present)
    out = {}
    for k, v in filled.items():
        out[k] = 1.0 if v is None or worst <= 0 else max(0.0, min(1.0, 1.0 - (v - best) / worst))
    return out, guessed


@dataclass
class Score:
    """One candidate's factors, their weighted contributions and the total."""

    candidate: Candidate
    factors: dict[str, float]
    contributions: dict[str, float]
    total: float
    raw: dict[str, Any]


def score_pool(candidates: list[Candidate], ctx: StrategyContext, weights: Mapping[str, float], task: str | None,
               patterns: Mapping[str, list[str]]) -> list[Score]:
    """Every factor of every candidate, normalised over this pool, and the weighted totals."""
    snap = ctx.snapshot
    policy = snap.policy
    keys = [c.key for c in candidates]
    raw: dict[str, dict[str, Any]] = {k: {} for k in keys}
    factors: dict[str, dict[str, float]] = {k: {} for k in keys}

    blended: dict[str, float | None] = {}
    p95: dict[str, float | None] = {}
    spread: dict[str, float | None] = {}
    for c in candidates:
        f = factors[c.key]
        state = snap.breaker_state(c)
        f["health"] = float(policy.auto_health_scores.get(state, 0.0))
        raw[c.key]["breaker"] = state
        share, _ = snap.quota_headroom(c)
        share = share if isinstance(share, (int, float)) else None
        f["quota"] = policy.auto_unknown_quota_score if share is None else float(share)
        raw[c.key]["headroom"] = "untracked" if share is None else share
        prices = snap.unit_prices(c)
        blended[c.key] = None if prices is None else policy.cost_blend_input * prices[0] + policy.cost_blend_output * prices[1]
        p95[c.key] = snap.p95(c)
        spread[c.key] = snap.latency_spread(c)
        tier = snap.tier(c)
        f["tier"] = float(policy.auto_tier_scores.get(tier, policy.auto_unknown_tier_score)) if tier else policy.auto_unknown_tier_score
        raw[c.key]["account_tier"] = tier or "unset"

    cost, cost_guessed = _inverse(blended)
    latency, latency_guessed = _inverse(p95)
    steady, spread_guessed = _inverse(spread)
    share = policy.auto_stability_spread_share
    for c in candidates:
        k = c.key
        factors[k]["cost"] = cost[k]
        raw[k]["price_per_mtok"] = "unknown (pool median)" if cost_guessed[k] else blended[k]
        factors[k]["latency"] = latency[k]
        raw[k]["p95_s"] = "no data (pool median)" if latency_guessed[k] else p95[k]
        factors[k]["stability"] = share * steady[k] + (1.0 - share) * (1.0 - snap.error_rate(c))

    # task fit and specificity
    task_list = patterns.get(task, []) if task else []
    literal: dict[str, int] = {}
    for c in candidates:
        if task is None:
            factors[c.key]["task_fit"] = policy.auto_unknown_task_fit
            continue
        match = best_match(c, task_list)
        factors[c.key]["task_fit"] = 1.0 if match else 0.0
        literal[c.key] = _literal_length(match) if match else 0
        raw[c.key]["pattern"] = match or "none"
    longest = max(literal.values(), default=0)
    for c in candidates:
        if task is None:
            factors[c.key]["specificity"] = policy.auto_unknown_task_fit
        else:
            factors[c.key]["specificity"] = literal[c.key] / longest if longest else 0.0

    # tier affinity: the user's written order of steps
    steps = sorted({c.step for c in (ctx.all_candidates or candidates)})
    rank = {s: i for i, s in enumerate(steps)}
    for c in candidates:
        r = rank.get(c.step, len(steps) - 1)
        factors[c.key]["tier_affinity"] = 1.0 if len(steps) < 2 else 1.0 - r / (len(steps) - 1)

    scores = []
    for c in candidates:
        f = {name: round(factors[c.key][name], 4) for name in FACTORS}
        contributions = {name: f[name] * weights.get(name, 0.0) for name in FACTORS}
        # rounded so that float noise in weights that sum to 1 cannot push a score across a threshold
        total = round(sum(contributions.values()), 6)
        scores.append(Score(c, f, contributions, total, raw[c.key]))
    return scores


# ---- the auto strategy ----------------------------------------------------------------------------


def auto_order(candidates: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Score the pool, order by total (ties as they came), explore now and then, propose exclusions."""
    snap = ctx.snapshot
    policy = snap.policy
    combo = ctx.combo
    config = snap.config
    variant = VARIANTS.get(combo.name) if combo.virtual else None
    weights, source = weights_for(combo, policy)
    patterns = task_patterns(config)

    task, why = ctx.request.task, "given"
    if task is None:
        task, keywords = guess_task(ctx.request.prompt, policy.auto_task_scan_chars)
        why = f"keywords {', '.join(keywords)}" if task else "no keywords"
    if task is None and variant is not None and variant.task:
        task, why = variant.task, f"{combo.name} assumes it"

    stored = config.combos.get(combo.name)
    if combo.virtual or (stored is not None and not stored.steps):
        missing = _no_models(config, combo.candidate_pool)
        if missing:
            ctx.notes.append(f"auto: providers without `models` contribute nothing: {', '.join(missing)}")

    scores = score_pool(candidates, ctx, weights, task, patterns)
    index = {c.key: i for i, c in enumerate(candidates)}
    scores.sort(key=lambda s: (-s.total, index[s.candidate.key]))
    ordered = [s.candidate for s in scores]

    pool = list(ctx.all_candidates or candidates)
    open_count = sum(1 for c in pool if snap.breaker_state(c) == "open")
    incident = open_count > policy.auto_incident_open_share * len(pool)
    rate = float(getattr(policy, variant.explore_rate if variant else "auto_explore_rate"))
    draw = ctx.rng.random()  # always drawn, so a seed gives the same sequence whatever the state
    if not incident and draw < rate and len(ordered) > 1:
        pick = ordered[ctx.rng.randrange(len(ordered))]
        ordered = [pick] + [c for c in ordered if c is not pick]
        ctx.explored = True
        explore_text = f"explored: drew {draw:.4f} < {rate:g}, tried {pick.key} first"
    elif incident:
        explore_text = (f"no exploration: incident mode ({open_count} of {len(pool)} breakers open, more than "
                        f"{policy.auto_incident_open_share:g})")
    else:
        explore_text = f"no exploration (drew {draw:.4f}, rate {rate:g})"

    place = {id(c): i for i, c in enumerate(ordered)}
    for position, s in enumerate(sorted(scores, key=lambda s: place[id(s.candidate)])):
        values: dict[str, Any] = {"score": s.total}
        for name in FACTORS:
            values[name] = s.factors[name]
            values[f"{name}_pts"] = round(s.contributions[name], 4)
        values.update(s.raw)
        if position > 0 and s.total < policy.auto_min_score:
            values[EXCLUDE_INPUT] = _exclusion_seconds(snap, combo.name, s.candidate.key)
        ctx.note(s.candidate, **values)

    weight_text = ", ".join(f"{name} {weights[name]:.3g}" for name in FACTORS if weights[name])
    ctx.notes.append(f"auto: {source}: {weight_text}")
    ctx.notes.append(f"auto: task {task or 'unknown'} ({why}); {explore_text}")
    ctx.notes.append(
        f"auto: a score below {policy.auto_min_score:g} excludes a candidate from {combo.name} for "
        f"{policy.auto_exclude_s:g} s, doubling on re-exclusion up to {policy.auto_exclude_cap_s:g} s (never the first)"
    )
    return ordered


def _exclusion_seconds(snap: Any, combo: str, key: str) -> float:
    """5 minutes, or double the last exclusion if this one follows it within that exclusion's length."""
    policy = snap.policy
    last = _parse_streak(snap.pointer(_streak_key(combo, key)))
    if last is not None:
        seconds, until = last
        if snap.now < until + seconds:
            return min(policy.auto_exclude_cap_s, seconds * 2)
    return float(policy.auto_exclude_s)


def _parse_streak(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        seconds, until = value.split("@")
        return float(seconds), float(until)
    except ValueError:
        return None


def excluded(state: StateStore, combo: str, c: Candidate, now: float, min_score: float) -> tuple[str, float] | None:
    """Why an `auto` combo skips a candidate it excluded earlier (and until when), or None."""
    h = state.hold(exclusion_key(combo, c.key), now)
    if h is None:
        return None
    from .._core.text import span

    return f"auto: score below {min_score:g} ({span(h.until - now)} left)", h.until


def record_exclusions(state: StateStore, decision: Decision, now: float) -> None:
    """The loop's half of an exclusion: hold each candidate the decision proposed to exclude."""
    for row in decision.rows:
        seconds = row.inputs.get(EXCLUDE_INPUT)
        if not seconds:
            continue
        key = row.candidate.key
        until = now + float(seconds)
        state.set_hold(exclusion_key(decision.combo, key), "cooldown", until, f"auto: score {row.inputs.get('score')} below the minimum")
        state.set_pointer(_streak_key(decision.combo, key), f"{float(seconds):g}@{until:.3f}")


# ---- the scored account strategy ------------------------------------------------------------------

_ACCOUNT_FACTORS = ("health", "quota", "latency")


def score_accounts(group: list[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """Accounts of one step by health, quota headroom and inverse p95 latency (weighted as in `auto`);
    an account with no quota left goes last."""
    snap = ctx.snapshot
    policy = snap.policy
    raw_weights = {f: float(policy.auto_weights.get(f, 0.0)) for f in _ACCOUNT_FACTORS}
    total_w = sum(raw_weights.values()) or 1.0
    weights = {f: w / total_w for f, w in raw_weights.items()}
    latency, _ = _inverse({c.key: snap.p95(c) for c in group})
    totals: dict[str, float] = {}
    empty: dict[str, bool] = {}
    for c in group:
        share, _ = snap.quota_headroom(c)
        share = share if isinstance(share, (int, float)) else None
        health = float(policy.auto_health_scores.get(snap.breaker_state(c), 0.0))
        quota = policy.auto_unknown_quota_score if share is None else float(share)
        total = round(weights["health"] * health + weights["quota"] * quota + weights["latency"] * latency[c.key], 6)
        totals[c.key] = total
        empty[c.key] = share == 0.0
        ctx.note(c, account_score=total, account_health=health, account_quota=quota, account_latency=round(latency[c.key], 4))
    index = {c.key: i for i, c in enumerate(group)}
    return sorted(group, key=lambda c: (empty[c.key], -totals[c.key], index[c.key]))

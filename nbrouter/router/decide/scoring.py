"""`auto` scoring: the factors of a candidate, normalised over the pool, and their weighted sum
(routing.md section 4). The `auto` strategy itself (ordering, exploration, notes) is in strategies.py.

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

Each normalisation is computed once per decision over the whole pool. What only the configuration
changes (prices, tiers, task fit, the written order) is computed once per pool and kept in the decider's
`memo` until the configuration changes; what the state says (breakers, quota, latency, errors) is read
afresh every decision, one memoised reading per candidate. The total is the weighted sum rounded to 6
places; the factors and points explain() shows are rounded to 4 when read, and laid out only then.

Exclusion: a candidate scoring below `auto_min_score` (never the one tried first) is left out of this
combo for `auto_exclude_s`, doubled up to `auto_exclude_cap_s` when it follows the last exclusion within
that exclusion's length. The strategy stays pure: an exclusion is a proposal in the decision's inputs
(`exclude_for_s`), which the loop records with `record_exclusions`.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import statistics
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

from ..._core.text import span
from ..model import Combo, Config
from .packs import FACTORS, PACKS, VARIANTS, Variant
from ..policy import Policy
from ..types import Candidate, Decision

__all__ = [
    "FACTORS", "PACKS", "VARIANTS", "Variant", "Measurements", "HoldStore", "ScoredPool", "PoolInputs", "EXCLUDE_INPUT", "TASK_FIT",
    "TASK_KEYWORDS", "exclusion_key", "guess_task", "task_patterns", "best_match", "weights_for", "score_pool",
    "exclusion_seconds", "excluded", "record_exclusions", "account_scores",
]


class Measurements(Protocol):
    """What scoring reads of the router's state (strategies.Snapshot is this and more)."""

    @property
    def config(self) -> Config: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def now(self) -> float: ...

    def pointer(self, name: str) -> str | None: ...

    def p95(self, c: Candidate) -> float | None: ...

    def breaker_state(self, c: Candidate) -> str: ...

    def quota_headroom(self, c: Candidate) -> tuple[float | None, float | None]: ...

    def unit_prices(self, c: Candidate) -> tuple[float, float] | None: ...

    def tier(self, c: Candidate) -> str | None: ...

    def pool_readings(self, candidates: Sequence[Candidate]) -> PoolReadings: ...

    @property
    def memo(self) -> MutableMapping[Any, Any]:
        """A cache for what only the configuration changes (emptied when it does)."""
        ...


class PoolReadings(NamedTuple):
    """What scoring reads of the state for every candidate of a pool, in one pass (a list per measurement)."""

    breaker: list[str]
    headroom: list[float | None]
    p95: list[float | None]
    spread: list[float | None]
    error_rate: list[float]


class _Hold(Protocol):
    until: float


class HoldStore(Protocol):
    """The part of the state store that records and reads `auto` exclusions."""

    def hold(self, key: str, now: float) -> _Hold | None: ...

    def set_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "") -> Any: ...

    def set_pointer(self, name: str, value: str) -> None: ...


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

#: the single-word keywords of each task without a trailing `*`, its stems (keywords ending in `*`, the `*`
#: cut), and its two-word phrases
_EXACT = {task: frozenset(k for k in keywords if not k.endswith("*") and " " not in k) for task, keywords in TASK_KEYWORDS.items()}
_STEMS = {task: tuple(k[:-1] for k in keywords if k.endswith("*")) for task, keywords in TASK_KEYWORDS.items()}
_PHRASES = {task: frozenset(k for k in keywords if " " in k) for task, keywords in TASK_KEYWORDS.items()}
_PHRASE_STARTS = frozenset(k.split(" ")[0] for phrases in _PHRASES.values() for k in phrases)


@functools.lru_cache(maxsize=8192)
def _word_tasks(word: str) -> tuple[str, ...]:
    """The tasks a word (or two-word phrase) is a keyword of, exactly or by a stem it starts with (cached:
    a prompt's words repeat across calls)."""
    if " " in word:
        return tuple(task for task, phrases in _PHRASES.items() if word in phrases)
    return tuple(task for task in TASK_KEYWORDS
                 if word in _EXACT[task] or any(word.startswith(stem) for stem in _STEMS[task]))


#: the decision input through which `auto` proposes an exclusion; the loop records it
EXCLUDE_INPUT = "exclude_for_s"


#: the start of every `auto` exclusion's hold key
EXCLUSION_PREFIX = "auto-exclude:"


def exclusion_key(combo: str, candidate_key: str) -> str:
    """The hold key of an `auto` exclusion: per combo, so it never blocks a combo the user wrote."""
    return f"{EXCLUSION_PREFIX}{combo}:{candidate_key}"


def _streak_key(combo: str, candidate_key: str) -> str:
    return f"auto-streak:{combo}:{candidate_key}"


# ---- tasks --------------------------------------------------------------------------------------


def guess_task(prompt: str, scan_chars: int = 4000) -> tuple[str | None, list[str]]:
    """The task the prompt most likely asks for (or None) and the keywords that said so.

    Only the first and last `scan_chars / 2` characters are read (where an instruction usually is), so a
    long pasted document costs no more than a short one.

    Args:
        prompt: the request's text.
        scan_chars: how many characters to read at most.
    """
    if len(prompt) > scan_chars:
        half = scan_chars // 2
        prompt = prompt[:half] + "\n" + prompt[-half:]
    words = _WORDS.findall(prompt.lower())
    counts = Counter(words)
    counts.update(f"{a} {b}" for a, b in zip(words, words[1:]) if a in _PHRASE_STARTS)
    found: dict[str, dict[str, int]] = {task: {} for task in TASK_KEYWORDS}
    for word, n in counts.items():
        for task in _word_tasks(word):
            found[task][word] = n
    best: tuple[int, str | None, list[str]] = (0, None, [])
    for task, hits_by_word in found.items():
        hits = sum(hits_by_word.values())
        if hits > best[0]:
            best = (hits, task, sorted(hits_by_word))
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
    return _matcher(tuple(patterns))(c)


#: per tuple of patterns, the best match per (provider, model): the patterns of a task rarely change
_MATCHES: dict[tuple[str, ...], dict[tuple[str, str], str | None]] = {}
_MATCHES_MAX = 64  # distinct pattern tables remembered (a config's tasks; more only if it is edited a lot)
_MODELS_MAX = 4096  # (provider, model) pairs remembered per table


def _matcher(patterns: tuple[str, ...]) -> Callable[[Candidate], str | None]:
    """`best_match` against one table of patterns, remembering each (provider, model)'s answer."""
    known = _MATCHES.get(patterns)
    if known is None:
        if len(_MATCHES) >= _MATCHES_MAX:
            _MATCHES.clear()
        known = _MATCHES[patterns] = {}
    lowered = [p.lower() for p in patterns]

    def match(c: Candidate) -> str | None:
        key = (c.provider, c.model)
        try:
            return known[key]
        except KeyError:
            pass
        names = (c.model.lower(), f"{c.provider}/{c.model}".lower())
        found = [p for p, low in zip(patterns, lowered) if any(fnmatch.fnmatchcase(n, low) for n in names)]
        best = max(found, key=_literal_length) if found else None
        if len(known) >= _MODELS_MAX:
            known.clear()
        known[key] = best
        return best

    return match


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


def _inverse(values: Sequence[float | None]) -> tuple[list[float], list[bool]]:
    """`1 - (value - best) / worst` over the pool (lower is better), clamped to [0, 1]; a missing value
    gets the pool median. Returns the factor and whether it was guessed (no measurement), in order."""
    n = len(values)
    known = [v for v in values if v is not None]
    guessed = [v is None for v in values] if len(known) < n else [False] * n
    if not known:
        return [1.0] * n, guessed
    best, worst = min(known), max(known)  # the median lies between them: filling in changes neither
    if worst <= 0:
        return [1.0] * n, guessed
    if len(known) < n:
        median = statistics.median(known)
        values = [median if v is None else v for v in values]
    out = [1.0 - (v - best) / worst for v in values]  # type: ignore[operator]
    if best < 0:  # from 0 up, best <= v <= worst keeps every value in [0, 1] already
        out = [0.0 if x < 0.0 else (x if x < 1.0 else 1.0) for x in out]
    return out, guessed


#: the factors that do not change while the configuration does not (a pool's prices, tiers, task fit and
#: written order); the others read the state
_STATIC = ("cost", "task_fit", "specificity", "tier", "tier_affinity")
_MEMO_MAX = 256  # pools remembered per configuration


class _StaticPool(NamedTuple):
    """What scoring computes once per pool, task and weights while the configuration stays."""

    keys: dict[str, int]  # candidate key -> index in the pool
    points: list[float]  # the static factors' weighted sum, per candidate
    columns: dict[str, list[float]]  # each static factor
    extra: dict[str, list[Any]]  # what explain() shows of them (prices, tiers, patterns)
    shown: dict[str, int]  # the names of what explain() shows, in order


def _static_pool(candidates: Sequence[Candidate], snap: Measurements, written: Sequence[Candidate],
                 weights: Mapping[str, float], task: str | None, patterns: Mapping[str, list[str]]) -> _StaticPool:
    policy = snap.policy
    n = len(candidates)
    blend_in, blend_out = policy.cost_blend_input, policy.cost_blend_output
    blended: list[float | None] = []
    for c in candidates:
        prices = snap.unit_prices(c)
        blended.append(None if prices is None else blend_in * prices[0] + blend_out * prices[1])
    cost, cost_guessed = _inverse(blended)
    tiers = [snap.tier(c) for c in candidates]
    tier_scores, unknown_tier = policy.auto_tier_scores, policy.auto_unknown_tier_score
    tier = [float(tier_scores.get(t, unknown_tier)) if t else unknown_tier for t in tiers]

    matches: list[str | None] = []
    if task is None:
        fit = specificity = [policy.auto_unknown_task_fit] * n
    else:
        match = _matcher(tuple(patterns.get(task, [])))
        matches = [match(c) for c in candidates]
        fit = [1.0 if m else 0.0 for m in matches]
        literal = [_literal_length(m) if m else 0 for m in matches]
        longest = max(literal, default=0)
        specificity = [x / longest if longest else 0.0 for x in literal]

    # tier affinity: the user's written order of steps
    steps = sorted({c.step for c in (written or candidates)})
    last = len(steps) - 1
    if last < 1:
        affinity = [1.0] * n
    else:
        rank = {s: i for i, s in enumerate(steps)}
        affinity = [1.0 - rank.get(c.step, last) / last for c in candidates]

    columns = dict(zip(_STATIC, (cost, fit, specificity, tier, affinity)))
    w = [weights.get(name, 0.0) for name in _STATIC]
    points = [w[0] * a + w[1] * b + w[2] * c + w[3] * d + w[4] * e for a, b, c, d, e in zip(cost, fit, specificity, tier, affinity)]
    extra: dict[str, list[Any]] = {
        "account_tier": [t or "unset" for t in tiers],
        "price_per_mtok": ["unknown (pool median)" if guessed else price for guessed, price in zip(cost_guessed, blended)],
    }
    if task is not None:
        extra["pattern"] = [m or "none" for m in matches]
    shown = ["score"] + [k for name in FACTORS for k in (name, f"{name}_pts")]
    shown += ["breaker", "headroom", "account_tier", "price_per_mtok", "p95_s"] + (["pattern"] if task is not None else [])
    return _StaticPool({c.key: i for i, c in enumerate(candidates)}, points, columns, extra, dict.fromkeys(shown, 0))


class ScoredPool:
    """A scored pool: each candidate's total (`totals`, in the pool's order), and on demand what explain()
    shows of it (`inputs(key)`: the total, each factor and its weighted points, the measurements)."""

    def __init__(self, candidates: Sequence[Candidate], totals: list[float], columns: dict[str, list[float]],
                 weights: Mapping[str, float], extra: dict[str, list[Any]], index: dict[str, int],
                 shown: dict[str, int]) -> None:
        self.totals, self.breaker = totals, extra["breaker"]
        self._columns, self._weights, self._extra, self.index = columns, weights, extra, index
        self.keys, self._at = list(shown), shown

    def value(self, key: str, i: int) -> Any:
        """One shown value of candidate `i`: factors rounded to 4 places, as are their points."""
        if key == "headroom":
            share = self._extra["headroom"][i]
            return "untracked" if share is None else share
        if key == "p95_s":
            return "no data (pool median)" if self._extra["p95_guessed"][i] else self._extra["p95_s"][i]
        extra = self._extra.get(key)
        if extra is not None:
            return extra[i]
        if key == "score":
            return self.totals[i]
        if key.endswith("_pts"):
            name = key[:-4]
            return round(self._columns[name][i] * self._weights.get(name, 0.0), 4)
        return round(self._columns[key][i], 4)

    def shows(self, key: str) -> bool:
        return key in self._at

    def inputs(self, key: str, earlier: Mapping[str, Any] | None = None) -> ShownInputs:
        """The explain() row of the candidate with this key, after what was noted of it before (`earlier`)."""
        return ShownInputs(self, self.index[key], earlier)


def score_pool(candidates: Sequence[Candidate], snap: Measurements, written: Sequence[Candidate],
               weights: Mapping[str, float], task: str | None, patterns: Mapping[str, list[str]]) -> ScoredPool:
    """Every factor of every candidate, normalised over this pool, and the weighted totals.

    Computed factor by factor over the whole pool (one list per factor), so each normalisation is done
    once per decision; the factors that only the configuration changes (cost, task fit, specificity,
    tier, tier affinity) once per pool while the configuration stays (`snap.memo`). The total is the
    weighted sum rounded to 6 places, so that float noise in weights that sum to 1 cannot push a score
    across a threshold; the factors explain() shows are rounded to 4 when read.

    Args:
        candidates: the pool to score (after filtering).
        snap: the state to read.
        written: the combo's candidates before filtering, as written (their steps give `tier_affinity`).
        weights: factor weights summing to 1 (`weights_for`).
        task: the request's task, or None when unknown.
        patterns: the task-fit table (`task_patterns`).
    """
    policy = snap.policy
    memo = snap.memo
    memo_key = ("auto", tuple([c.key for c in candidates]), tuple(sorted({c.step for c in (written or candidates)})),
                tuple(weights.items()), task, tuple(patterns.get(task, ())) if task else ())
    static = memo.get(memo_key)
    if static is None:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        static = memo[memo_key] = _static_pool(candidates, snap, written, weights, task, patterns)

    # one pass of reads over the whole pool
    readings = snap.pool_readings(candidates)
    states, errors, p95 = readings.breaker, readings.error_rate, readings.p95
    shares = readings.headroom

    health_scores, unknown_quota = policy.auto_health_scores, policy.auto_unknown_quota_score
    health = [float(health_scores.get(state, 0.0)) for state in states]
    quota = [unknown_quota if share is None else share for share in shares]
    latency, latency_guessed = _inverse(p95)
    steady, _ = _inverse(readings.spread)
    spread_share = policy.auto_stability_spread_share
    stability = [spread_share * st + (1.0 - spread_share) * (1.0 - err) for st, err in zip(steady, errors)]

    wh, wq, wl, ws = (weights.get(name, 0.0) for name in ("health", "quota", "latency", "stability"))
    totals = [round(wh * h + wq * q + wl * lat + ws * st + pts, 6)
              for h, q, lat, st, pts in zip(health, quota, latency, stability, static.points)]
    columns = {"health": health, "quota": quota, "latency": latency, "stability": stability, **static.columns}
    measured: dict[str, list[Any]] = {"breaker": states, "headroom": shares, "p95_s": p95, "p95_guessed": latency_guessed}
    return ScoredPool(candidates, totals, columns, weights, {**static.extra, **measured}, static.keys, static.shown)


class ShownInputs(MutableMapping[str, Any]):
    """One candidate's row of explain() values: the scored pool's values at its index, plus what was
    noted before and what a strategy adds (`exclude_for_s`)."""

    __slots__ = ("_pool", "_i", "_added", "_first")

    def __init__(self, pool: ScoredPool, i: int, earlier: Mapping[str, Any] | None = None) -> None:
        self._pool, self._i = pool, i
        self._added: dict[str, Any] = dict(earlier) if earlier else {}
        self._first = len(self._added)  # the earlier values come first when listed, then the pool's, then the rest

    def __getitem__(self, key: str) -> Any:
        if key in self._added:
            return self._added[key]
        if not self._pool.shows(key):
            raise KeyError(key)
        return self._pool.value(key, self._i)

    def __setitem__(self, key: str, value: Any) -> None:
        self._added[key] = value

    def __delitem__(self, key: str) -> None:
        del self._added[key]

    def __iter__(self) -> Iterator[str]:
        later = [k for k in self._added if not self._pool.shows(k)]
        yield from later[:self._first]
        yield from self._pool.keys
        yield from later[self._first:]

    def __len__(self) -> int:
        return len(self._pool.keys) + sum(1 for k in self._added if not self._pool.shows(k))

    def __repr__(self) -> str:
        return repr(dict(self))


class PoolInputs(MutableMapping[str, MutableMapping[str, Any]]):
    """The explain() rows of a scored pool by candidate key, each laid out on first read (a call that is
    only routed, not explained, never pays for them); rows of other candidates kept as given."""

    def __init__(self, pool: ScoredPool, earlier: MutableMapping[str, MutableMapping[str, Any]]) -> None:
        self._pool = pool
        self._earlier = earlier
        self._made: dict[str, MutableMapping[str, Any]] = {}

    def __getitem__(self, key: str) -> MutableMapping[str, Any]:
        made = self._made.get(key)
        if made is not None:
            return made
        if key in self._pool.index:
            made = self._made[key] = self._pool.inputs(key, self._earlier.get(key))
            return made
        return self._earlier[key]

    def __setitem__(self, key: str, value: MutableMapping[str, Any]) -> None:
        self._made[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("a scored pool's rows are not removed")

    def __iter__(self) -> Iterator[str]:
        yield from self._pool.index
        yield from (k for k in self._earlier if k not in self._pool.index)

    def __len__(self) -> int:
        return len(self._pool.index) + sum(1 for k in self._earlier if k not in self._pool.index)


# ---- exclusions ---------------------------------------------------------------------------------


def exclusion_seconds(snap: Measurements, combo: str, key: str) -> float:
    """How long to exclude a candidate: `auto_exclude_s`, or double the last exclusion if this one
    follows it within that exclusion's length (up to `auto_exclude_cap_s`)."""
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


def excluded(state: HoldStore, combo: str, c: Candidate, now: float, min_score: float) -> tuple[str, float] | None:
    """Why an `auto` combo skips a candidate it excluded earlier (and until when), or None."""
    h = state.hold(exclusion_key(combo, c.key), now)
    if h is None:
        return None
    return f"auto: score below {min_score:g} ({span(h.until - now)} left)", h.until


def record_exclusions(state: HoldStore, decision: Decision, now: float) -> None:
    """The loop's half of an exclusion: hold each candidate the decision proposed to exclude."""
    for key, seconds in decision.exclusions.items():
        until = now + float(seconds)
        score = decision.inputs.get(key, {}).get("score")
        state.set_hold(exclusion_key(decision.combo, key), "cooldown", until, f"auto: score {score} below the minimum")
        state.set_pointer(_streak_key(decision.combo, key), f"{float(seconds):g}@{until:.3f}")


# ---- the scored account strategy ------------------------------------------------------------------

_ACCOUNT_FACTORS = ("health", "quota", "latency")


def account_scores(group: Sequence[Candidate], snap: Measurements) -> list[tuple[float, bool, dict[str, Any]]]:
    """Each account of one step scored by health, quota headroom and inverse p95 latency (weighted as
    in `auto`): (total, no quota left, the inputs to show), in the order of `group`."""
    policy = snap.policy
    raw_weights = {f: float(policy.auto_weights.get(f, 0.0)) for f in _ACCOUNT_FACTORS}
    total_w = sum(raw_weights.values()) or 1.0
    weights = {f: w / total_w for f, w in raw_weights.items()}
    latency, _ = _inverse([snap.p95(c) for c in group])
    out = []
    for c, lat in zip(group, latency):
        share = snap.quota_headroom(c)[0]
        if not isinstance(share, (int, float)):
            share = None
        health = float(policy.auto_health_scores.get(snap.breaker_state(c), 0.0))
        quota = policy.auto_unknown_quota_score if share is None else float(share)
        total = round(weights["health"] * health + weights["quota"] * quota + weights["latency"] * lat, 6)
        out.append((total, share == 0.0, {"account_score": total, "account_health": health, "account_quota": quota,
                                          "account_latency": round(lat, 4)}))
    return out

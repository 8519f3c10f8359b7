"""Deciding one call: resolve the combo, filter with the named skip checks, order with the strategy.

`Decider.decide()` is what `Router.explain()` shows and what the loop then walks: every candidate in the
order it will be tried, or skipped with the reason and, for a hold, until when. Deciding sends nothing
and changes no state (expired holds are dropped when read). The skip checks are a list of named
functions (`SKIP_CHECKS`), applied in order; the first that says no is the reason shown.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Callable, Mapping, Sequence

from ..._core import Clock
from ..._core.text import span
from .budget import Budget
from .capabilities import CapabilityBook, images_over_limit, lacking
from .capabilities import context_window as known_context_window
from ...providers.models import lists_capabilities
from .combos import auto_pool, combo_for, resolve
from ..model import Account, Combo, Config, Provider, Quota
from ..errors import ComboConfigError, NoProviders
from ..policy import Policy
from .pricing import PriceBook
from .quota import QuotaWindow, SharedUsage, quota_plan
from ..requests import CallRequest
from .scoring import EXCLUSION_PREFIX, PoolReadings
from .scoring import excluded as auto_excluded
from ..state.health import UsageWindow
from ..state.pacing import LEARNING, Pacer
from ..state.shared import MemoryShared
from ..state.store import StateStore
from .strategies import STRATEGIES, RequestInfo, Strategy, StrategyContext, order_accounts
from .tokens import estimate_prompt, estimate_tools
from ..types import Candidate, Decision, DecisionRow

#: the first element of the path of an emergency-tier candidate (`[router] emergency`)
EMERGENCY = "emergency"
#: where the emergency tier's step numbers start (a combo has far fewer steps)
EMERGENCY_STEPS = 100_000
#: the reason shown for each emergency-tier candidate
EMERGENCY_REASON = "emergency tier: tried once, after every candidate above"

#: why a candidate cannot be tried now, and until when (None: not a timed hold)
Skip = tuple[str, "float | None"]


class Snapshot:
    """A read-only view of the router's state for strategies (they never change it)."""

    def __init__(self, decider: Decider, now: float) -> None:
        self._decider = decider
        self._state = decider.state
        self.now = now

    def provider(self, c: Candidate) -> Provider:
        return self._decider.config.providers[c.provider]

    @property
    def config(self) -> Config:
        return self._decider.config

    @property
    def policy(self) -> Policy:
        return self._decider.policy

    def counter(self, name: str) -> int:
        return self._state.counter(name)

    def pointer(self, name: str) -> str | None:
        return self._state.pointers.get(name)

    def latency(self, c: Candidate, *, stream: bool) -> float | None:
        s = self._state.latency.get(c.key)
        if s is None:
            return None
        return s.ewma_ttft if stream and s.ewma_ttft is not None else s.ewma_total

    def p95(self, c: Candidate) -> float | None:
        s = self._state.latency.get(c.key)
        return None if s is None else s.percentile(0.95)

    def p50(self, c: Candidate) -> float | None:
        s = self._state.latency.get(c.key)
        return None if s is None else s.percentile(0.5)

    def requests_last_hour(self, c: Candidate) -> int:
        s = self._state.latency.get(c.key)
        return 0 if s is None else s.requests_last_hour(self.now)

    def in_flight(self, c: Candidate) -> int:
        """Requests to this candidate that have been sent and not yet answered (all calls of this process)."""
        return self._decider.in_flight.get(c.key, 0)

    def breaker_state(self, c: Candidate) -> str:
        return self._state.breaker_state(c.key, self.now)

    def quota_headroom(self, c: Candidate) -> tuple[float | None, float | None]:
        """(share of quota left in [0, 1] or None when nothing is tracked, reset time of the scarcest window)."""
        return self._decider.headroom(c, self.now)

    def unit_prices(self, c: Candidate) -> tuple[float, float] | None:
        prices = self._decider.prices.unit_prices(self.provider(c), c.model)
        return None if prices is None else prices.per_mtok()

    def estimated_cost(self, c: Candidate, prompt_tokens: int, max_tokens: int) -> Decimal | None:
        return self._decider.prices.estimate(self.provider(c), c.model, prompt_tokens, max_tokens)

    def context_window(self, c: Candidate) -> int | None:
        return self._decider.context_window(c)

    def tier(self, c: Candidate) -> str | None:
        acc = self.provider(c).account(c.account)
        return None if acc is None else acc.tier

    @property
    def memo(self) -> dict[Any, Any]:
        return self._decider.memo

    def pool_readings(self, candidates: Sequence[Candidate]) -> PoolReadings:
        """What scoring reads of the state, for the whole pool in one pass (the per-candidate reads above,
        without a method call per value where nothing is tracked)."""
        now, state, n = self.now, self._state, len(candidates)
        breakers, latency, ratelimits = state.breakers, state.latency, state.ratelimits
        if breakers:
            breaker = [state.breaker_state(c.key, now) if c.key in breakers else "closed" for c in candidates]
        else:
            breaker = ["closed"] * n
        decider = self._decider
        quotas = decider.quota_accounts
        if quotas or ratelimits:
            headroom = decider.headroom
            room = [headroom(c, now)[0] if c.account_key in quotas or c.account_key in ratelimits else None for c in candidates]
        else:
            room = [None] * n
        nothing = (None, None, 0.0)
        readings = [nothing if s is None else s.reading() for s in map(latency.get, [c.key for c in candidates])]
        p95, spread, errors = (list(column) for column in zip(*readings)) if readings else ([], [], [])
        return PoolReadings(breaker, room, p95, spread, errors)

    def hold_until(self, key: str) -> float | None:
        h = self._state.holds.get(key)
        return None if h is None or h.until <= self.now else h.until


@dataclass(frozen=True, eq=False)
class Route:
    """A call's combo, resolved once: the Combo as the call uses it (its strategy override applied, an auto
    pool filled), its candidates in the combo's order, and the strategy that orders them.

    `Decider.route` makes it, once per combo name (or draft Combo) and strategy override until the
    configuration changes; the decision, the response cache's key, the cost estimate and the loop all read
    this one value instead of looking the name up again.
    """

    combo: Combo
    #: every candidate of the combo, nested combos expanded, one per account (resolve)
    candidates: list[Candidate]
    #: every step has a single account (then there are no accounts to order)
    single_accounts: bool
    #: orders the candidates that pass the skip checks (the combo's strategy)
    strategy: Strategy

    @property
    def name(self) -> str:
        return self.combo.name

    @property
    def targets(self) -> list[str]:
        """The `provider/model` of every candidate (what may serve the call)."""
        return [c.target for c in self.candidates]


class _SeededRandom(random.Random):
    """`random.Random(seed)` that seeds itself on its first draw: seeding costs about 10 microseconds
    and most strategies (`priority`, the default) never draw. The draws are those of `Random(seed)`."""

    def __init__(self, seed: int) -> None:  # deliberately not Random.__init__, which seeds now
        self._pending: int | None = seed
        self.gauss_next = None

    def _seed_pending(self) -> None:
        seed, self._pending = self._pending, None
        random.Random.seed(self, seed)

    def random(self) -> float:
        if self._pending is not None:
            self._seed_pending()
        return super().random()

    def getrandbits(self, k: int) -> int:
        if self._pending is not None:
            self._seed_pending()
        return super().getrandbits(k)

    def getstate(self) -> Any:
        if self._pending is not None:
            self._seed_pending()
        return super().getstate()

    def seed(self, a: Any = None, version: int = 2) -> None:
        self._pending = None
        super().seed(a, version)

    def setstate(self, state: Any) -> None:
        self._pending = None
        super().setstate(state)


def conversation_key(messages: list[dict[str, Any]]) -> str | None:
    """A conversation's identity: a hash of its first message, when the call carries history (more than
    one message); None for a single prompt."""
    if len(messages) < 2:
        return None
    first = messages[0]
    return hashlib.sha256(f"{first.get('role')}\n{first.get('content')}".encode()).hexdigest()[:16]


def fingerprint(key: str | None) -> str:
    """A short one-way fingerprint of a key, to notice that it changed without storing it."""
    if not key:
        return ""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SkipCheck:
    """One named reason a candidate may not be tried now (routing.md section 3, step 2).

    `applies` says, once per candidate and configuration, whether the check can ever say no for it (an
    account without a quota has no quota to use up); `wanted`, once per decision, whether it can say no
    for any candidate now (no holds at all, a call without its own budget), so a decision asks only the
    checks that matter.
    """

    name: str
    check: Callable[[Decider, Candidate, RequestInfo, CallRequest, float], "Skip | None"]
    applies: Callable[[Config, Candidate], bool] = lambda config, c: True
    wanted: Callable[[Decider, CallRequest], bool] = lambda d, req: True


def quota_windows(quota: Quota, w: UsageWindow) -> tuple[tuple[int | None, int, str, float], ...]:
    """(limit, used, what, window end) for each configured quota window, from the usage counted."""
    minute_end, day_end = (w.minute + 1) * 60.0, (w.day + 1) * 86400.0
    return (
        (quota.requests_per_minute, w.minute_requests, "requests this minute", minute_end),
        (quota.tokens_per_minute, w.minute_tokens, "tokens this minute", minute_end),
        (quota.requests_per_day, w.day_requests, "requests today", day_end),
        (quota.tokens_per_day, w.day_tokens, "tokens today", day_end),
    )


def _held(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """A cooldown or lock on the candidate or its account; a disabled account whose key changed is freed."""
    if not d.state.holds:
        return None
    for key in (c.key, c.account_key):
        h = d.state.hold(key, now)
        if h is None:
            continue
        if h.kind == "disabled":
            if d.key_fingerprint(c) != h.detail:
                d.state.clear_hold(key)  # the key changed: try it again
                continue
            return f"account disabled: {h.reason} (until its key changes)", None
        return f"{'locked' if h.kind == 'lock' else 'cooling down'}: {h.reason} ({span(h.until - now)} left)", h.until
    return None


def _breaker(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """An OPEN breaker, or a HALF_OPEN one whose probe is in flight."""
    if c.key not in d.state.breakers:
        return None
    ok, until = d.state.admit(c.key, now)
    if ok:
        return None
    if until is None:
        return "breaker half-open: a probe is in flight", None
    return f"breaker open ({span(until - now)} left)", until


def _no_key(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """An account whose key variable is not set."""
    acc = d.config.providers[c.provider].account(c.account)
    if acc is not None and acc.api_key_env and not d.env(acc.api_key_env):
        return f"no key: the environment variable {acc.api_key_env} is not set", None
    return None


def _quota_used_up(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """A configured quota (requests or tokens per minute or day) used up, as every process sharing the
    account counted it (the store's counts, mirrored: `quota.SharedUsage`). O(1) per call: the account's
    windows are worked out per configuration, and the reason is built only for a skip."""
    account = c.account_key
    windows = d.quota_plans.get(account)
    if windows is None:
        return None
    used = d.usage.used(account, d.state.usage.get(account), d.pacer, now)
    for limit, index, what, per_day in windows:
        if used[index] >= limit:
            until = (int(now // 86400) + 1) * 86400.0 if per_day else (int(now // 60) + 1) * 60.0
            return f"quota used up: {used[index]}/{limit} {what} ({span(until - now)} left)", until
    return None


def _context(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """The estimated prompt plus max_tokens larger than the model's known context window (a conversation
    of a context-relay combo is compacted to fit instead); the reason says where the window comes from."""
    if info.relay and info.conversation:
        return None
    window, source = d.capabilities.window(c)
    if window is not None and info.prompt_tokens + info.max_tokens > window:
        return f"context: ~{info.prompt_tokens} + {info.max_tokens} tokens > window {window} ({source})", None
    return None


def _window_may_be_known(config: Config, c: Candidate) -> bool:
    """Whether the candidate's window is known, or may be once its provider's model list is had."""
    provider = config.providers[c.provider]
    return lists_capabilities(provider.preset) or known_context_window(provider, c.model) is not None


def _budget(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """The estimated cost of this request above the call's own budget (`max_cost_usd`)."""
    if req.max_cost_usd is None:
        return None
    estimate = d.prices.estimate(d.config.providers[c.provider], c.model, info.prompt_tokens, info.max_tokens)
    if estimate is not None and estimate > Decimal(str(req.max_cost_usd)):
        return f"budget: estimated ${estimate:.6f} > ${req.max_cost_usd}", None
    return None


def lane_of(req: CallRequest) -> str:
    """The lane a call takes from shared limits in: "batch" for `map`'s items, else "interactive"."""
    return "interactive" if req.pacer is None else req.pacer.lane


def _paced(d: Decider, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
    """The shared store said wait for this candidate in this call's lane not long ago, or (a batch) its
    first request is still finding out its limits (pacing.py; no round trip here)."""
    return d.pacer.skip(c, info.prompt_tokens + info.max_tokens, now, lane_of(req))


def _behind_learning(ordered: list[Candidate], rows: list[DecisionRow]) -> list[Candidate]:
    """A batch's item waits behind a step whose first request is finding out its limits, rather than go
    down the combo: the candidates of later steps (the emergency tier too) are held back with it."""
    learning = [r for r in rows if r.reason.startswith(LEARNING)]
    if not learning:
        return ordered
    first = min(r.candidate.step for r in learning)
    until = min(r.hold_until or 0.0 for r in learning)
    kept = []
    for c in ordered:
        if c.step > first:
            rows.append(DecisionRow(c, None, f"{LEARNING}: waiting behind {learning[0].candidate.key}", skipped=True,
                                    hold_until=until))
        else:
            kept.append(c)
    return kept


def _account(config: Config, c: Candidate) -> Account | None:
    return config.providers[c.provider].account(c.account)


def _has_quota(config: Config, c: Candidate) -> bool:
    acc = _account(config, c)
    return acc is not None and not acc.quota.is_empty()


#: the skip checks, in the order they are asked; the first that says no names the reason
SKIP_CHECKS: tuple[SkipCheck, ...] = (
    # what a target cannot take (issue 25) comes first: it is the reason that does not pass with time
    SkipCheck("capability", lacking, wanted=lambda d, req: bool(req.needs)),
    SkipCheck("image_limits", images_over_limit, wanted=lambda d, req: bool(req.images)),
    SkipCheck("hold", _held, wanted=lambda d, req: bool(d.state.holds)),
    SkipCheck("breaker", _breaker, wanted=lambda d, req: bool(d.state.breakers)),
    SkipCheck("no_key", _no_key, lambda config, c: bool(getattr(_account(config, c), "api_key_env", None)),
              lambda d, req: d.some_key_missing()),
    SkipCheck("quota", _quota_used_up, _has_quota),
    SkipCheck("context_window", _context, _window_may_be_known),
    SkipCheck("budget", _budget, wanted=lambda d, req: req.max_cost_usd is not None),
    SkipCheck("paced", _paced, wanted=lambda d, req: d.pacer.wanted(lane_of(req))),
)


#: each check's `wanted`, in order (asked once per decision)
_WANTS = tuple(check.wanted for check in SKIP_CHECKS)


class Decider:
    """Resolves, filters and orders candidates against the live state; owns the per-config caches."""

    state: StateStore  # declared here: the skip checks above read it before the class is defined

    def __init__(self, config: Config, state: StateStore, prices: PriceBook, clock: Clock, budget: Budget | None = None,
                 pacer: Pacer | None = None) -> None:
        self.state = state
        self.clock = clock
        #: the pacing of every call over the shared store (the skip check "paced" asks it)
        self.pacer: Pacer = pacer or Pacer(config, MemoryShared(clock), clock=clock)
        #: the session budget every call is held against
        self.budget = budget or Budget()
        #: requests in flight per candidate key (the loop counts them; `least-used` reads them)
        self.in_flight: dict[str, int] = {}
        #: what each target takes besides text (the skip check `capability` reads it; the loop teaches it)
        self.capabilities = CapabilityBook()
        #: every process's use of the quota accounts, as the store counted it (the skip check `quota` reads it)
        self.usage = SharedUsage(clock)
        self.set_config(config, prices)

    def set_config(self, config: Config, prices: PriceBook) -> None:
        self.config = config
        if self.pacer.config is not config:
            self.pacer.set_config(config)
        self.policy = config.policy
        self.prices = prices
        self.constants = config.policy.as_dict()
        self.capabilities.set_config(config)
        #: routes by (combo name, or a draft Combo's id, and the call's strategy override)
        self._routes: dict[tuple[str | int, str | None], tuple[str | Combo, Route]] = {}
        self._plans: dict[str, tuple[Callable[..., Skip | None], ...]] = {}
        self._pool_plans: dict[tuple[int, tuple[bool, ...]], tuple[list[Candidate], list[tuple[Candidate, tuple[Callable[..., Skip | None], ...]]]]] = {}
        self._notes: dict[int, tuple[Combo, str]] = {}
        self._env: dict[str, str | None] = {}
        self._emergency: list[Candidate] | None = None
        #: what strategies compute once per configuration (`Snapshot.memo`)
        self.memo: dict[Any, Any] = {}
        self._set_quotas()
        self.usage.forget()
        self.key_variables = self._key_variables()

    def _key_variables(self) -> frozenset[str]:
        """The environment variables the accounts read their keys from."""
        return frozenset(acc.api_key_env for p in self.config.providers.values() for acc in p.accounts if acc.api_key_env)

    def some_key_missing(self) -> bool:
        """Whether any account's key variable is unset now (read once per decision)."""
        env = self.env
        return any(not env(name) for name in self.key_variables)

    def usage_window(self, account_key: str, now: float) -> UsageWindow:
        """The account's usage in the minute and day of `now`, every process's (what quotas are held to)."""
        return self.usage.window(account_key, self.state.usage_window(account_key, now), self.pacer, now)

    async def refresh_usage(self, *, force: bool = False) -> None:
        """Read the store's usage counts of the quota accounts, and a shared budget's spending, if the last
        reading is a second old."""
        await self.usage.refresh(self.pacer, force=force)
        await self.budget.refresh(self.pacer.shared, force=force)

    def _set_quotas(self) -> None:
        """Work out, per account key with a configured quota, the windows the skip check `quota` asks
        (`quota_plans`), and the set of those keys (`quota_accounts`)."""
        #: account key -> its configured quota windows (`quota.quota_plan`)
        self.quota_plans: dict[str, tuple[QuotaWindow, ...]] = {
            f"{name}#{acc.name}": quota_plan(acc.quota) for name, p in self.config.providers.items()
            for acc in p.accounts if not acc.quota.is_empty()}
        #: the account keys with a configured quota
        self.quota_accounts = frozenset(self.quota_plans)

    def forget(self) -> None:
        """Drop the cached resolutions (the providers changed, e.g. after local discovery)."""
        self._routes.clear()
        self._plans.clear()
        self._pool_plans.clear()
        self._notes.clear()
        self.memo.clear()
        self.capabilities.windows.clear()
        self._set_quotas()
        self.key_variables = self._key_variables()
        self._emergency = None

    def _plan(self, c: Candidate) -> tuple[Callable[..., Skip | None], ...]:
        """The skip checks that apply to this candidate under the current configuration."""
        plan = self._plans.get(c.key)
        if plan is None:
            if len(self._plans) >= 8192:
                self._plans.clear()
            plan = self._plans[c.key] = tuple(check.check for check in SKIP_CHECKS if check.applies(self.config, c))
        return plan

    def _pool_plan(self, candidates: list[Candidate], req: CallRequest) -> list[tuple[Candidate, tuple[Callable[..., Skip | None], ...]]]:
        """Each candidate of a resolved combo with the checks to ask it in this decision (those that apply
        to it and are wanted now), remembered per combo and set of wanted checks."""
        wanted = tuple([want(self, req) for want in _WANTS])
        key = (id(candidates), wanted)
        hit = self._pool_plans.get(key)
        if hit is not None and hit[0] is candidates:
            return hit[1]
        asked = {check.check for check, want in zip(SKIP_CHECKS, wanted) if want}  # (one entry per check)
        plan = [(c, tuple(check for check in self._plan(c) if check in asked)) for c in candidates]
        if len(self._pool_plans) >= 1024:
            self._pool_plans.clear()
        self._pool_plans[key] = (candidates, plan)
        return plan

    def env(self, name: str) -> str | None:
        """An environment variable, read once per decision (several candidates share one key variable)."""
        try:
            return self._env[name]
        except KeyError:
            value = self._env[name] = os.environ.get(name)
            return value

    def context_window(self, c: Candidate) -> int | None:
        """The candidate's context window in tokens: the config's, else its provider's model list's, else
        the bundled table's, else None (`CapabilityBook.window`)."""
        return self.capabilities.window(c)[0]

    def key_fingerprint(self, c: Candidate) -> str:
        acc = self.config.providers[c.provider].account(c.account)
        return fingerprint(acc.api_key() if acc else None)

    def route(self, req: CallRequest) -> Route:
        """The call's combo resolved once (saved, virtual, a bare target, or a draft object; with the call's
        strategy override), remembered until the configuration changes.

        Raises:
            NoProviders: nothing is configured.
            ComboConfigError: the name is unknown, or the call's strategy override is.
        """
        if not self.config.providers:
            raise NoProviders(str(self.config.path) if self.config.path else "a config file")
        named = req.combo
        key = (named if isinstance(named, str) else id(named), req.strategy)
        hit = self._routes.get(key)
        if hit is not None and (isinstance(named, str) or hit[0] is named):  # a draft's id may be reused
            return hit[1]
        route = self._make_route(named, req.strategy)
        if len(self._routes) >= 4096:  # drafts are new objects each time
            self._routes.clear()
        self._routes[key] = (named, route)
        return route

    def _make_route(self, named: str | Combo, strategy: str | None) -> Route:
        combo = named if isinstance(named, Combo) else combo_for(self.config, named)
        if strategy and strategy != combo.strategy:
            combo = replace(combo, strategy=strategy)
        # a saved combo's strategy was checked at load and a draft's by validate_combo: the one check left
        # is the call's own override (or a Combo object made by hand)
        order = STRATEGIES.get(combo.strategy)
        if order is None:
            raise ComboConfigError(f"unknown strategy {combo.strategy!r} (known: {', '.join(sorted(STRATEGIES))})",
                                   file=self.config.file_label, combo=combo.name, field="strategy")
        combo = auto_pool(self.config, combo)
        candidates = resolve(self.config, combo)
        single = len({c.step for c in candidates}) == len(candidates)
        return Route(combo, candidates, single, order)

    def skip(self, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> Skip | None:
        """Why a candidate cannot be tried now (and until when), or None."""
        for check in self._plan(c):
            reason = check(self, c, info, req, now)
            if reason is not None:
                return reason
        return None

    def max_estimate(self, route: Route, req: CallRequest) -> Decimal | None:
        """The dearest estimate among the call's candidates (None when no price is known)."""
        info = self.request_info(req)
        estimates = [self.prices.estimate(self.config.providers[c.provider], c.model, info.prompt_tokens, info.max_tokens)
                     for c in route.candidates]
        known = [e for e in estimates if e is not None]
        return max(known) if known else None

    def request_info(self, req: CallRequest) -> RequestInfo:
        policy = self.policy
        prompt_tokens = estimate_prompt(req.messages, req.system, margin=policy.token_safety_margin, per_message=policy.tokens_per_message,
                                        per_image=policy.image_tokens_estimate)
        if req.tools:
            prompt_tokens += int(estimate_tools(req.tools) * policy.token_safety_margin)
        max_tokens = req.max_tokens or policy.default_max_tokens_estimate
        return RequestInfo(prompt_tokens=prompt_tokens, max_tokens=max_tokens, stream=req.stream, prompt=req.prompt_text,
                           conversation=conversation_key(req.messages))

    def decide(self, route: Route, req: CallRequest, now: float) -> tuple[Decision, RequestInfo]:
        """Filter and order the route's candidates; pure apart from dropping expired holds."""
        policy = self.policy
        self._env = {}
        combo, candidates = route.combo, route.candidates
        info = self.request_info(req)
        info.relay = combo.strategy == "context-relay"
        seed = req.seed if req.seed is not None else random.getrandbits(32)
        rows: list[DecisionRow] = []
        kept: list[Candidate] = []
        # an auto combo's exclusions are holds: when the store holds none, no candidate needs the lookup
        is_auto = combo.strategy == "auto" and any(k.startswith(EXCLUSION_PREFIX) for k in self.state.holds)
        for c, plan in self._pool_plan(candidates, req):
            if not plan and not is_auto:
                kept.append(c)
                continue
            skip = None
            for check in plan:
                skip = check(self, c, info, req, now)
                if skip is not None:
                    break
            if skip is None and is_auto:
                skip = auto_excluded(self.state, combo.name, c, now, policy.auto_min_score)
            if skip is None:
                kept.append(c)
            else:
                rows.append(DecisionRow(c, None, skip[0], skipped=True, hold_until=skip[1]))
        inputs: Mapping[str, Mapping[str, Any]] = {}
        notes: list[str] = []
        explored = False
        exclusions: dict[str, float] = {}
        if combo.strategy == "priority" and route.single_accounts:
            ordered = kept  # as written, and no accounts to order: the common waterfall needs no context
        else:
            strategy = route.strategy
            ctx = StrategyContext(combo=combo, request=info, snapshot=Snapshot(self, now), rng=_SeededRandom(seed), all_candidates=candidates)
            ordered = strategy(order_accounts(kept, ctx), ctx)
            if len(ordered) != len(kept):
                raise RuntimeError(f"strategy {combo.strategy} dropped candidates")  # a strategy never drops one
            inputs, notes, explored, exclusions = ctx.inputs, list(ctx.notes), ctx.explored, ctx.exclusions
        if self.budget.limit is not None:
            ordered, over = self._within_budget(ordered, info)
            rows.extend(over)
            notes.append(f"{self.budget.label}: {self.budget.text()}")
        reasons: dict[int, str] = {}
        if self.config.emergency is not None and combo.name != self.config.emergency:
            tier = self._emergency_tier(candidates, info, req, now, rows)
            if tier:
                reasons = dict.fromkeys(range(len(ordered), len(ordered) + len(tier)), EMERGENCY_REASON)
                ordered = ordered + tier
        if rows and req.pacer is not None and combo.strategy == "priority":
            ordered = _behind_learning(ordered, rows)
            reasons = {i: r for i, r in reasons.items() if i < len(ordered)}
        decision = Decision(
            combo=combo.name, strategy=combo.strategy, account_strategy=combo.account_strategy, seed=seed,
            order=ordered, skipped=rows, config_hash=self.config.hash, explored=explored, notes=notes,
            constants=self.constants, inputs=inputs, reasons=reasons, exclusions=exclusions,
        )
        decision.notes.append(f"estimated prompt {info.prompt_tokens} tokens + max_tokens {info.max_tokens}; {self._limits_note(combo)}")
        return decision, info

    def _limits_note(self, combo: Combo) -> str:
        note = self._notes.get(id(combo))
        if note is None or note[0] is not combo:
            fallback = "default" if combo.fallback_on is None else ",".join(sorted(k.value for k in combo.fallback_on))
            if len(self._notes) >= 1024:
                self._notes.clear()
            retries = {k: int(v) for k, v in self.policy.retries.items()}
            retries.update(combo.retries or {})
            retry_text = ", ".join(f"{k} {n}" for k, n in sorted(retries.items()) if n) or "none"
            text = f"max_attempts {combo.max_attempts or self.policy.max_attempts}; fallback_on {fallback}; retries {retry_text}"
            if combo.hedge_after_s is not None:
                text += f"; hedging: the next candidate starts too after {combo.hedge_after_s:g} s without a first byte"
            note = self._notes[id(combo)] = (combo, text)
        return note[1]

    def _emergency_tier(self, candidates: list[Candidate], info: RequestInfo, req: CallRequest, now: float,
                        skipped: list[DecisionRow]) -> list[Candidate]:
        """The emergency tier (`[router] emergency`): its candidates after everything else, each once, marked
        with the path `emergency > ...`; those already in the combo are not repeated."""
        tier = self._emergency
        if tier is None:
            inner = combo_for(self.config, self.config.emergency or "")
            # steps numbered apart from any combo's, so that account turns of the two never mix
            tier = self._emergency = [replace(c, path=(EMERGENCY, *c.path), step=EMERGENCY_STEPS + c.step)
                                      for c in resolve(self.config, inner)]
        seen = {c.key for c in candidates}
        out: list[Candidate] = []
        for c in tier:
            if c.key in seen:
                continue
            seen.add(c.key)
            skip = self.skip(c, info, req, now)
            if skip is None and self.budget.limit is not None:
                reason = self.budget.check(self.prices.estimate(self.config.providers[c.provider], c.model, info.prompt_tokens, info.max_tokens))
                skip = None if reason is None else (reason, None)
            if skip is None:
                out.append(c)
            else:
                skipped.append(DecisionRow(c, None, skip[0], skipped=True, hold_until=skip[1]))
        return out

    def _within_budget(self, ordered: list[Candidate], info: RequestInfo) -> tuple[list[Candidate], list[DecisionRow]]:
        """Hold the ordered candidates against the session budget: under "stop" a first choice that does
        not fit refuses the call; under "cheapest" those that fit are kept, cheapest first."""
        estimates = {c.key: self.prices.estimate(self.config.providers[c.provider], c.model, info.prompt_tokens, info.max_tokens)
                     for c in ordered}
        verdicts = {c.key: self.budget.check(estimates[c.key]) for c in ordered}
        if self.budget.on_budget == "stop":
            if ordered and verdicts[ordered[0].key] is not None:
                reason = verdicts[ordered[0].key] or ""
                return [], [DecisionRow(c, None, verdicts[c.key] or f"{reason} (first choice; on_budget = stop)", skipped=True)
                            for c in ordered]
            over = [c for c in ordered if verdicts[c.key] is not None]
            return [c for c in ordered if verdicts[c.key] is None], [DecisionRow(c, None, verdicts[c.key] or "", skipped=True) for c in over]
        fits = [c for c in ordered if verdicts[c.key] is None]
        fits.sort(key=lambda c: (estimates[c.key] is None, estimates[c.key] or 0))
        return fits, [DecisionRow(c, None, verdicts[c.key] or "", skipped=True) for c in ordered if verdicts[c.key] is not None]

    def headroom(self, c: Candidate, now: float) -> tuple[float | None, float | None]:
        """Share of quota left (the scarcest of configured quotas and rate-limit headers) and its reset."""
        acc = self.config.providers[c.provider].account(c.account)
        quota = acc is not None and not acc.quota.is_empty()
        if not quota and c.account_key not in self.state.ratelimits:
            return None, None  # nothing tracked: the common case, without building anything
        shares: list[tuple[float, float | None]] = []
        if acc is not None and quota:
            for limit, used, _, reset in quota_windows(acc.quota, self.usage_window(c.account_key, now)):
                if limit:
                    shares.append((max(0.0, 1.0 - used / limit), reset))
        r = self.state.ratelimit(c.account_key, now)
        if r is not None:
            for remaining, limit, reset in (
                (r.remaining_requests, r.limit_requests, r.reset_requests_at),
                (r.remaining_tokens, r.limit_tokens, r.reset_tokens_at),
            ):
                if remaining is not None:
                    share = remaining / limit if limit else (1.0 if remaining > 0 else 0.0)
                    shares.append((max(0.0, min(1.0, share)), reset))
        if not shares:
            return None, None
        return min(shares, key=lambda s: s[0])

"""The Router: one loop for every strategy (routing.md section 3).

resolve -> filter (each removal logged as `skipped`) -> order (the strategy) -> try each in order,
classifying every failure into an ErrorKind and applying its action, with state changes written before
the next try. The async core runs on the caller's loop (`acomplete`, `astream`) or, for the sync
methods, on a private loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import queue
import random
import time
import weakref
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from decimal import Decimal
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

from .._core import remember_secret, scrub
from ..providers import ChatRequest, Completion, Endpoint, ProviderFailure, get_protocol
from .._core import text as _text
from ._loop import BackgroundLoop
from .combos import combo_for, resolve
from .config import QUOTA_FIELDS, Combo, Config, Provider, combo_table, load_config, set_combo, write_document
from .errors import AllCoolingDown, AllTargetsFailed, BudgetExceeded, ComboConfigError, NoProviders, StopError
from .policy import BACKOFF_KINDS, BREAKER_KINDS, DEFAULT_FALLBACK_ON
from .policy import Policy
from .pricing import PriceBook
from .scoring import auto_pool, record_exclusions
from .scoring import excluded as auto_excluded
from .state import FOREVER, HALF_OPEN, StateStore
from .status import Status
from .strategies import COUNTED, STRATEGIES, RequestInfo, StrategyContext, order_accounts
from .tokens import estimate_prompt
from .types import (
    Action,
    Attempt,
    AttemptFinished,
    AttemptStarted,
    Candidate,
    Decision,
    DecisionRow,
    Done,
    ErrorKind,
    RouteEvent,
    RouteResult,
    TextDelta,
    Usage,
)

Emit = Callable[[RouteEvent], None]

_routers: "weakref.WeakSet[Router]" = weakref.WeakSet()


@atexit.register
def _close_routers() -> None:
    # runs before the background loops stop (atexit is last-in, first-out), so clients close cleanly
    for router in list(_routers):
        try:
            router.close()
        except Exception:
            pass


@dataclass
class CallRequest:
    """One call's inputs, as the loop sees them."""

    #: a combo name, a `provider/model` target, or a Combo object (a draft that is not saved)
    combo: str | Combo
    messages: list[dict[str, Any]]
    system: str | None
    max_tokens: int | None
    temperature: float | None
    max_cost_usd: float | None
    timeout_s: float | None
    seed: int | None
    stream: bool
    response_format: dict[str, Any] | None = None
    strategy: str | None = None

    @cached_property  # read by the decision and again by the call log
    def prompt_text(self) -> str:
        parts = [self.system or ""] + [m.get("content", "") if isinstance(m.get("content"), str) else str(m.get("content")) for m in self.messages]
        return "\n".join(p for p in parts if p)


class Snapshot:
    """A read-only view of the router's state for strategies (they never change it)."""

    def __init__(self, router: Router, now: float) -> None:
        self._router = router
        self._state = router.state
        self.now = now

    def provider(self, c: Candidate) -> Provider:
        return self._router.config.providers[c.provider]

    @property
    def config(self) -> Config:
        return self._router.config

    @property
    def policy(self) -> Policy:
        return self._router.policy

    def counter(self, name: str) -> int:
        return self._state.counter(name)

    def pointer(self, name: str) -> str | None:
        return self._state.pointers.get(name)

    def latency(self, c: Candidate, *, stream: bool) -> float | None:
        s = self._state.latency.get(c.key)
        if s is None:
            return None
        return (s.ewma_ttft if stream and s.ewma_ttft is not None else s.ewma_total)

    def p95(self, c: Candidate) -> float | None:
        s = self._state.latency.get(c.key)
        return None if s is None else s.percentile(0.95)

    def p50(self, c: Candidate) -> float | None:
        s = self._state.latency.get(c.key)
        return None if s is None else s.percentile(0.5)

    def latency_spread(self, c: Candidate) -> float | None:
        s = self._state.latency.get(c.key)
        if s is None or len(s.samples) < 2:
            return None
        p50, p95 = s.percentile(0.5), s.percentile(0.95)
        return None if p50 is None or p95 is None else p95 - p50

    def error_rate(self, c: Candidate) -> float:
        s = self._state.latency.get(c.key)
        return 0.0 if s is None else s.error_rate()

    def requests_last_hour(self, c: Candidate) -> int:
        s = self._state.latency.get(c.key)
        return 0 if s is None else s.requests_last_hour(self.now)

    def breaker_state(self, c: Candidate) -> str:
        return self._state.breaker_state(c.key, self.now)

    def quota_headroom(self, c: Candidate) -> tuple[float | None, float | None]:
        """(share of quota left in [0, 1] or None when nothing is tracked, reset time of the scarcest window)."""
        return self._router._headroom(c, self.now)

    def unit_prices(self, c: Candidate) -> tuple[float, float] | None:
        prices = self._router.prices.unit_prices(self.provider(c), c.model)
        return None if prices is None else prices.per_mtok()

    def estimated_cost(self, c: Candidate, prompt_tokens: int, max_tokens: int) -> Decimal | None:
        return self._router.prices.estimate(self.provider(c), c.model, prompt_tokens, max_tokens)

    def context_window(self, c: Candidate) -> int | None:
        return self._router.context_window(c)

    def tier(self, c: Candidate) -> str | None:
        acc = self.provider(c).account(c.account)
        return None if acc is None else acc.tier

    def hold_until(self, key: str) -> float | None:
        h = self._state.holds.get(key)
        return None if h is None or h.until <= self.now else h.until


#: call ids: 64 bits from a private generator seeded from os.urandom (again in a forked child); uuid4
#: would cost a system call per call
_call_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_call_ids.seed)


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


class _Call:
    """Mutable bookkeeping of one call in flight."""

    def __init__(self, req: CallRequest, emit: Emit | None) -> None:
        self.req = req
        self.emit = emit
        self.id = f"{_call_ids.getrandbits(64):016x}"
        self.attempts: list[Attempt] = []
        self.shown = ""  # text already passed to the caller
        self.decision: Decision | None = None
        self.started = time.perf_counter()
        self.started_wall = time.time()


class Router:
    """Routes calls to combos of provider/model targets, with fallback, remembered state and costs.

    Args:
        config: a path to a TOML file, a dict of the same shape, or None for `NBROUTER_CONFIG` or the
            user config dir.
        state_path: the SQLite state file (default: `NBROUTER_STATE`, the config's `state_path`, or the
            user state dir).
        persist: False keeps all state in memory only.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        state_path: str | os.PathLike[str] | None = None,
        persist: bool = True,
    ) -> None:
        self._config_source = config
        self.config: Config = load_config(config, strategies=STRATEGIES)
        self.policy = self.config.policy
        if state_path is None and persist:
            state_path = os.environ.get("NBROUTER_STATE") or self.config.state_path
        self.state = StateStore(state_path, policy=self.policy, persist=persist, log_content=self.config.log_content)
        self.prices = PriceBook(self.config)
        self._constants = self.policy.as_dict()
        self._bg = BackgroundLoop()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._endpoints: dict[tuple[str, str, str | None], Endpoint] = {}
        self._closed = False
        self._named: dict[str, Combo] = {}
        self._resolved: dict[int, tuple[Combo, list[Candidate], bool]] = {}
        self._discovered = self.config.source != "environment"
        _routers.add(self)

    # ---- configuration ----------------------------------------------------------------------

    def reload(self) -> None:
        """Read the configuration again (from the same file or dict)."""
        config = load_config(self._config_source, strategies=STRATEGIES)
        self._set_config(config)

    def _set_config(self, config: Config) -> None:
        self.config = config
        self.policy = config.policy
        self.state.policy = config.policy
        self.prices = PriceBook(config)
        self._constants = config.policy.as_dict()
        self._endpoints.clear()
        self._forget_resolutions()

    @property
    def combos(self) -> dict[str, Combo]:
        return dict(self.config.combos)

    def save_combo(self, name: str, targets: Sequence[str | Mapping[str, Any]], **options: Any) -> Combo:
        """Validate and save `[combos.NAME]` to the config file (other tables and comments kept).

        The file is written atomically with mode 0600; a config given as a dict is updated in memory.
        Raises ComboConfigError, naming the field, when the combo is invalid; nothing is written then.
        """
        from .config import build_config

        table = combo_table(list(targets), options)
        raw = _deep_copy(self.config.raw)
        raw.setdefault("combos", {})[name] = table
        config = build_config(raw, path=self.config.path, strategies=STRATEGIES)
        if self.config.path is not None:
            write_document(self.config.path, lambda doc: set_combo(doc, name, table))
        self._set_config(config)
        return config.combos[name]

    def delete_combo(self, name: str) -> None:
        """Remove `[combos.NAME]` from the config file; refused if another combo names it."""
        from .config import build_config

        if name not in self.config.combos:
            raise ComboConfigError(f"no combo named {name!r}", file=self.config.file_label, combo=name, field="name")
        users = [c.name for c in self.config.combos.values() if any(s.combo == name for s in c.steps)]
        if users:
            raise ComboConfigError(f"combo(s) {', '.join(users)} use it; remove it from them first", file=self.config.file_label, combo=name, field="name")
        raw = _deep_copy(self.config.raw)
        raw.get("combos", {}).pop(name, None)
        config = build_config(raw, path=self.config.path, strategies=STRATEGIES)
        if self.config.path is not None:
            write_document(self.config.path, lambda doc: set_combo(doc, name, None))
        self._set_config(config)

    def validate_combo(self, name: str, targets: Sequence[str | Mapping[str, Any]], **options: Any) -> Combo:
        """Validate a draft combo against the current config without saving it."""
        from .config import build_config

        raw = _deep_copy(self.config.raw)
        raw.setdefault("combos", {})[name] = combo_table(list(targets), options)
        return build_config(raw, path=self.config.path, strategies=STRATEGIES).combos[name]

    def context_window(self, c: Candidate) -> int | None:
        return self.config.providers[c.provider].context_window(c.model)

    # ---- the public calls -------------------------------------------------------------------

    def complete(self, combo: str | Combo, prompt: str | None = None, **kwargs: Any) -> RouteResult:
        """Send a prompt through a combo and wait for the answer. Works in plain Python, inside a running
        event loop (a Jupyter cell) and from several threads at once.

        Args:
            combo: a combo name, a virtual `auto...` name, a `provider[#account]/model` target, or a
                Combo (from `validate_combo`, to try a draft before saving it).
            prompt: the user message (or give `messages`).
        """
        return self._bg.run(self.acomplete(combo, prompt, **kwargs))

    async def acomplete(
        self,
        combo: str | Combo,
        prompt: str | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        max_cost_usd: float | None = None,
        timeout_s: float | None = None,
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
        strategy: str | None = None,
        stream: bool = False,
    ) -> RouteResult:
        """The async `complete`; runs on the caller's event loop."""
        req = _request(combo, prompt, messages, system, max_tokens, temperature, max_cost_usd, timeout_s, seed, stream, response_format, strategy)
        return await self._route(req, None)

    async def astream(self, combo: str | Combo, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[RouteEvent]:
        """Yield AttemptStarted, TextDelta, AttemptFinished events, and last Done (its `result`)."""
        req = _request(combo, prompt, kwargs.pop("messages", None), kwargs.pop("system", None), kwargs.pop("max_tokens", None),
                       kwargs.pop("temperature", None), kwargs.pop("max_cost_usd", None), kwargs.pop("timeout_s", None),
                       kwargs.pop("seed", None), True, kwargs.pop("response_format", None), kwargs.pop("strategy", None))
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        events: asyncio.Queue[RouteEvent] = asyncio.Queue()
        task = asyncio.ensure_future(self._route_events(req, events.put_nowait))
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Done):
                    break
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:
                    pass

    def stream(self, combo: str | Combo, prompt: str | None = None, **kwargs: Any) -> Iterator[RouteEvent]:
        """The sync `astream`: events arrive through a thread-safe queue from the router's loop."""
        req = _request(combo, prompt, kwargs.pop("messages", None), kwargs.pop("system", None), kwargs.pop("max_tokens", None),
                       kwargs.pop("temperature", None), kwargs.pop("max_cost_usd", None), kwargs.pop("timeout_s", None),
                       kwargs.pop("seed", None), True, kwargs.pop("response_format", None), kwargs.pop("strategy", None))
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        return self._sync_stream(req)

    def _sync_stream(self, req: CallRequest) -> Iterator[RouteEvent]:
        if self._bg.in_loop_thread():
            raise RuntimeError("Router.stream was called from the router's own loop; use astream")
        events: queue.SimpleQueue[RouteEvent] = queue.SimpleQueue()
        future, finished = self._bg.submit(self._route_events(req, events.put))
        try:
            while True:
                event = events.get()
                yield event
                if isinstance(event, Done):
                    break
        finally:
            if not finished.is_set():
                # the consumer stopped early (Ctrl-C, or it closed the generator): cancel, and wait until
                # the call has logged its cancelled attempt so the state is whole when we return
                future.cancel()
                finished.wait(2.0)

    async def _route_events(self, req: CallRequest, emit: Emit) -> None:
        try:
            result = await self._route(req, emit)
        except asyncio.CancelledError:
            emit(Done(None, KeyboardInterrupt("cancelled")))
            raise
        except Exception as exc:  # the error travels to the consumer in the Done event
            emit(Done(getattr(exc, "partial", None), exc))
            return
        emit(Done(result))

    def explain(self, combo: str | Combo, prompt: str | None = None, **kwargs: Any) -> Decision:
        """What the loop would do now: resolution, filtering and ordering with the live state and the
        given (or a drawn) seed. Sends nothing, changes nothing."""
        req = _request(combo, prompt, kwargs.pop("messages", None), kwargs.pop("system", None), kwargs.pop("max_tokens", None),
                       kwargs.pop("temperature", None), kwargs.pop("max_cost_usd", None), kwargs.pop("timeout_s", None),
                       kwargs.pop("seed", None), bool(kwargs.pop("stream", False)), kwargs.pop("response_format", None), kwargs.pop("strategy", None))
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        self._ensure_discovered()
        self.state.refresh()
        combo_obj = self._combo(req)
        decision, _ = self._decide(combo_obj, req, time.time())
        return decision

    def explain_combo(self, combo: Combo, prompt: str | None = None, **kwargs: Any) -> Decision:
        """`explain` for a draft Combo object that is not saved (the combo builder's explain button)."""
        req = _request(combo.name, prompt, None, kwargs.get("system"), kwargs.get("max_tokens"), None,
                       kwargs.get("max_cost_usd"), None, kwargs.get("seed"), False, None, None)
        decision, _ = self._decide(combo, req, time.time())
        return decision

    # ---- deciding ---------------------------------------------------------------------------

    async def discover(self, *, refresh: bool = False) -> None:
        """Zero-config (no config file): add the local servers listening on their default ports."""
        if self.config.source != "environment" or (self._discovered and not refresh):
            return
        from ..providers.discovery import find_local_servers
        from .config import local_provider

        for server in await find_local_servers(refresh=refresh):
            if server.preset not in self.config.providers:
                self.config.providers[server.preset] = local_provider(server.preset, server.base_url, server.models)
        self._forget_resolutions()
        self._discovered = True

    def _ensure_discovered(self) -> None:
        if not self._discovered and not self._bg.in_loop_thread():
            self._bg.run(self.discover())

    @property
    def providers(self) -> dict[str, Provider]:
        """The providers in use, each with `.source` saying where it came from (file, environment, local probe)."""
        self._ensure_discovered()
        return dict(self.config.providers)

    def _combo(self, req: CallRequest) -> Combo:
        if not self.config.providers:
            raise NoProviders(str(self.config.path) if self.config.path else "a config file")
        if isinstance(req.combo, Combo):
            combo = req.combo
        else:
            combo = self._named.get(req.combo)
            if combo is None:
                if len(self._named) >= 4096:
                    self._named.clear()
                combo = self._named[req.combo] = combo_for(self.config, req.combo)
        if req.strategy and req.strategy != combo.strategy:
            if req.strategy not in STRATEGIES:
                raise ComboConfigError(f"unknown strategy {req.strategy!r} (known: {', '.join(sorted(STRATEGIES))})", combo=combo.name, field="strategy")
            combo = replace(combo, strategy=req.strategy)
        return combo

    def _resolve(self, combo: Combo) -> tuple[list[Candidate], bool]:
        """`resolve`, cached per combo object until the configuration changes (candidates are immutable),
        and whether every step has a single account (then there are no accounts to order)."""
        hit = self._resolved.get(id(combo))
        if hit is not None and hit[0] is combo:
            return hit[1], hit[2]
        candidates = resolve(self.config, combo)
        single = len({c.step for c in candidates}) == len(candidates)
        if len(self._resolved) >= 1024:  # drafts and filled auto pools are new objects each time
            self._resolved.clear()
        self._resolved[id(combo)] = (combo, candidates, single)
        return candidates, single

    def _forget_resolutions(self) -> None:
        self._named.clear()
        self._resolved.clear()

    def _draw_seed(self, seed: int | None) -> int:
        if seed is not None:
            return seed
        return random.getrandbits(32)

    def _decide(self, combo: Combo, req: CallRequest, now: float) -> tuple[Decision, RequestInfo]:
        """Resolve, filter and order; pure apart from dropping expired holds."""
        policy = self.policy
        combo = auto_pool(self.config, combo)
        candidates, single_accounts = self._resolve(combo)
        prompt_tokens = estimate_prompt(req.messages, req.system, margin=policy.token_safety_margin, per_message=policy.tokens_per_message)
        max_tokens = req.max_tokens or policy.default_max_tokens_estimate
        info = RequestInfo(prompt_tokens=prompt_tokens, max_tokens=max_tokens, stream=req.stream, prompt=req.prompt_text)
        seed = self._draw_seed(req.seed)
        rows: list[DecisionRow] = []
        kept: list[Candidate] = []
        for c in candidates:
            skip = self._filter(c, info, req, now)
            if skip is None and combo.strategy == "auto":
                skip = auto_excluded(self.state, combo.name, c, now, policy.auto_min_score)
            if skip is None:
                kept.append(c)
            else:
                reason, until = skip
                rows.append(DecisionRow(c, None, reason, skipped=True, hold_until=until))
        inputs: dict[str, dict[str, Any]] = {}
        notes: list[str] = []
        explored = False
        if combo.strategy == "priority" and single_accounts:
            ordered = kept  # as written, and no accounts to order: the common waterfall needs no context
        else:
            ctx = StrategyContext(combo=combo, request=info, snapshot=Snapshot(self, now), rng=_SeededRandom(seed), all_candidates=candidates)
            strategy = STRATEGIES.get(combo.strategy)
            if strategy is None:
                raise ComboConfigError(f"unknown strategy {combo.strategy!r}", file=self.config.file_label, combo=combo.name, field="strategy")
            ordered = strategy(order_accounts(kept, ctx), ctx)
            if len(ordered) != len(kept):
                raise RuntimeError(f"strategy {combo.strategy} dropped candidates")  # a strategy never drops one
            inputs, notes, explored = ctx.inputs, list(ctx.notes), ctx.explored
        order_rows = [DecisionRow(c, i, "first" if i == 0 else "next", inputs=inputs.get(c.key, {})) for i, c in enumerate(ordered)]
        decision = Decision(
            combo=combo.name, strategy=combo.strategy, account_strategy=combo.account_strategy, seed=seed,
            rows=order_rows + rows, config_hash=self.config.hash, explored=explored, notes=notes,
            constants=self._constants,
        )
        decision.notes.append(
            f"estimated prompt {prompt_tokens} tokens + max_tokens {max_tokens}; max_attempts "
            f"{combo.max_attempts or policy.max_attempts}; fallback_on "
            f"{'default' if combo.fallback_on is None else ','.join(sorted(k.value for k in combo.fallback_on))}"
        )
        return decision, info

    def _filter(self, c: Candidate, info: RequestInfo, req: CallRequest, now: float) -> tuple[str, float | None] | None:
        """Why a candidate cannot be tried now (and until when), or None."""
        state = self.state
        for key in (c.key, c.account_key):
            h = state.hold(key, now)
            if h is None:
                continue
            if h.kind == "disabled":
                provider = self.config.providers[c.provider]
                acc = provider.account(c.account)
                current = _fingerprint(acc.api_key() if acc else None)
                if current != h.detail:
                    state.clear_hold(key)  # the key changed: try it again
                    continue
                return f"account disabled: {h.reason} (until its key changes)", None
            left = _text.span(h.until - now)
            return f"{'locked' if h.kind == 'lock' else 'cooling down'}: {h.reason} ({left} left)", h.until
        ok, until = state.admit(c.key, now)
        if not ok:
            if until is None:
                return "breaker half-open: a probe is in flight", None
            return f"breaker open ({_text.span(until - now)} left)", until
        provider = self.config.providers[c.provider]
        acc = provider.account(c.account)
        if acc is not None and acc.api_key_env and acc.api_key() is None:
            return f"no key: the environment variable {acc.api_key_env} is not set", None
        if acc is not None and not acc.quota.is_empty():
            reason = self._quota_used_up(c, acc.quota, now)
            if reason is not None:
                return reason
        window = provider.context_window(c.model)
        if window is not None and info.prompt_tokens + info.max_tokens > window:
            return f"context: ~{info.prompt_tokens} + {info.max_tokens} tokens > window {window}", None
        if req.max_cost_usd is not None:
            estimate = self.prices.estimate(provider, c.model, info.prompt_tokens, info.max_tokens)
            if estimate is not None and estimate > Decimal(str(req.max_cost_usd)):
                return f"budget: estimated ${estimate:.6f} > ${req.max_cost_usd}", None
        return None

    def _quota_used_up(self, c: Candidate, quota: Any, now: float) -> tuple[str, float] | None:
        w = self.state.usage_window(c.account_key, now)
        minute_end = (w.minute + 1) * 60.0
        day_end = (w.day + 1) * 86400.0
        checks = (
            (quota.requests_per_minute, w.minute_requests, "requests this minute", minute_end),
            (quota.tokens_per_minute, w.minute_tokens, "tokens this minute", minute_end),
            (quota.requests_per_day, w.day_requests, "requests today", day_end),
            (quota.tokens_per_day, w.day_tokens, "tokens today", day_end),
        )
        for limit, used, what, until in checks:
            if limit is not None and used >= limit:
                return f"quota used up: {used}/{limit} {what} ({_text.span(until - now)} left)", until
        return None

    def _headroom(self, c: Candidate, now: float) -> tuple[float | None, float | None]:
        """Share of quota left (the scarcest of configured quotas and rate-limit headers) and its reset."""
        shares: list[tuple[float, float | None]] = []
        provider = self.config.providers[c.provider]
        acc = provider.account(c.account)
        if acc is not None and not acc.quota.is_empty():
            w = self.state.usage_window(c.account_key, now)
            q = acc.quota
            minute_end, day_end = (w.minute + 1) * 60.0, (w.day + 1) * 86400.0
            for limit, used, reset in (
                (q.requests_per_minute, w.minute_requests, minute_end),
                (q.tokens_per_minute, w.minute_tokens, minute_end),
                (q.requests_per_day, w.day_requests, day_end),
                (q.tokens_per_day, w.day_tokens, day_end),
            ):
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
        share, reset = min(shares, key=lambda s: s[0])
        return share, reset

    # ---- the loop ---------------------------------------------------------------------------

    async def _route(self, req: CallRequest, emit: Emit | None) -> RouteResult:
        if self._closed:
            raise RuntimeError("this Router is closed")
        if not self._discovered:
            await self.discover()
        self.state.refresh()
        combo = self._combo(req)
        call = _Call(req, emit)
        policy = self.policy
        deadline = None
        deadline_s = combo.deadline_s
        if deadline_s is not None:
            deadline = time.monotonic() + deadline_s
        while True:
            now = time.time()
            decision, info = self._decide(combo, req, now)
            call.decision = decision
            ordered = [r.candidate for r in decision.rows if r.position is not None]  # rows come in trying order
            if ordered:
                break
            skipped = decision.skipped
            waits = [r.hold_until for r in skipped if r.hold_until is not None]
            all_holding = bool(skipped) and len(waits) == len(skipped)
            if all_holding and combo.when_all_cooling == "wait":
                max_wait = combo.max_wait_s if combo.max_wait_s is not None else policy.max_wait_s
                soonest = min(waits)
                if soonest - now <= max_wait:
                    await asyncio.sleep(max(0.0, soonest - now) + 0.01)
                    continue
            attempts = [self._skip_attempt(r, now) for r in skipped]
            call.attempts.extend(attempts)
            for a in attempts:
                self._emit(call, AttemptFinished(a))
            self._log(call, combo.name, None)
            if skipped and all(r.reason.startswith("budget:") for r in skipped):
                raise BudgetExceeded(
                    f"every candidate of {combo.name!r} is estimated above the budget of ${req.max_cost_usd}: "
                    + "; ".join(f"{r.candidate.key} {r.reason[8:]}" for r in skipped)
                    + ". Raise max_cost_usd or lower max_tokens.",
                    attempts,
                )
            if all_holding:
                first = min(skipped, key=lambda r: r.hold_until or 0.0)
                raise AllCoolingDown(combo.name, attempts, first.candidate.key, first.hold_until or now, now)
            raise AllTargetsFailed(combo.name, attempts)

        # state the loop owns: turn counters advance once per call
        if combo.strategy in COUNTED:
            self.state.next_counter(f"rr:{combo.name}")
        if combo.account_strategy == "round-robin" and len(decision.rows) > 1:
            per_step = Counter(r.candidate.step for r in decision.rows)
            if len(per_step) < len(decision.rows):  # some step has several accounts
                for step, n in per_step.items():
                    if n > 1:
                        self.state.next_counter(f"acct:{combo.name}:{step}")
        if decision.strategy == "auto":
            record_exclusions(self.state, decision, now)
        for r in decision.skipped:
            a = self._skip_attempt(r, now)
            call.attempts.append(a)
            self._emit(call, AttemptFinished(a))

        fallback_on = combo.fallback_on if combo.fallback_on is not None else DEFAULT_FALLBACK_ON
        max_attempts = combo.max_attempts or policy.max_attempts
        timeout_s = req.timeout_s or combo.timeout_s or policy.attempt_timeout_s
        queue_: list[Candidate] = list(ordered)
        group = self._openrouter_group(combo, ordered)
        tries = 0
        overflow_window: int | None | bool = False  # False: no context overflow seen yet
        last_failure: ProviderFailure | None = None
        try:
            while queue_:
                c = queue_.pop(0)
                now = time.time()
                if tries >= max_attempts:
                    self._record_skip(call, c, f"max_attempts {max_attempts} reached", None)
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    self._record_skip(call, c, "call deadline passed", None)
                    continue
                if tries:
                    # an earlier failure of this call may have put this candidate or its account on hold
                    skip = self._filter(c, info, req, now)
                    if skip is not None:
                        self._record_skip(call, c, skip[0], skip[1])
                        continue
                if overflow_window is not False:
                    window = self.context_window(c)
                    if window is None or (overflow_window is not None and window <= overflow_window):
                        self._record_skip(call, c, f"context overflow earlier: window {window or 'unknown'} is not larger", None)
                        continue
                attempt_timeout = timeout_s
                if deadline is not None:
                    attempt_timeout = max(0.001, min(timeout_s, deadline - time.monotonic()))
                tries += 1
                if group and c is group[0]:
                    # OpenRouter walks the whole list itself: one request with the `models` array
                    result = await self._attempt(call, combo, c, info, attempt_timeout, group=group)
                    for other in group[1:]:
                        queue_.remove(other)
                        if not isinstance(result, RouteResult):
                            self._record_skip(call, other, "tried inside the one OpenRouter request (models array)", None)
                else:
                    result = await self._attempt(call, combo, c, info, attempt_timeout)
                if not isinstance(result, RouteResult) and result[1].action is Action.RETRY:
                    # auth with a key that changed since: retry this candidate once with the new key
                    tries += 1
                    result = await self._attempt(call, combo, c, info, attempt_timeout, retry=True)
                if isinstance(result, RouteResult):
                    return self._finish(call, combo.name, result, decision)
                failure, attempt = result
                last_failure = failure
                kind = failure.kind
                if call.shown and kind in (ErrorKind.STREAM_INTERRUPTED, ErrorKind.CONTEXT_OVERFLOW):
                    # text already reached the caller: stop, and return it marked partial with the error
                    attempt.action = Action.STOP
                    partial = self._result(call, combo, c, failure_text=call.shown, completion=None, partial=True, error=attempt.message)
                    return self._finish(call, combo.name, partial, decision)
                if attempt.action is Action.STOP or kind not in fallback_on:
                    attempt.action = Action.STOP
                    self._log(call, combo.name, None)
                    raise StopError(combo.name, call.attempts, kind, c.key)
                if kind is ErrorKind.CONTEXT_OVERFLOW:
                    overflow_window = self.context_window(c)
                if kind in BACKOFF_KINDS and queue_:
                    await asyncio.sleep(policy.server_error_backoff_s)
        except asyncio.CancelledError:
            self._log(call, combo.name, call.shown or None)
            raise
        self._log(call, combo.name, None)
        hint = ""
        if last_failure is not None and last_failure.kind is ErrorKind.CONTEXT_OVERFLOW:
            hint = "the prompt does not fit: no candidate with a larger known context window is left (set context_window in the config, or shorten the prompt)."
        raise AllTargetsFailed(combo.name, call.attempts, hint)

    def _finish(self, call: _Call, combo: str, result: RouteResult, decision: Decision) -> RouteResult:
        result.decision = decision
        self._log(call, combo, result.text)
        return result

    def _openrouter_group(self, combo: Combo, ordered: list[Candidate]) -> list[Candidate] | None:
        """The candidates to send as one OpenRouter request: every one is `openrouter/...` on one account,
        and the combo's strategy is `priority` (OpenRouter's own fallback keeps that order)."""
        if combo.strategy != "priority" or len(ordered) < 2:
            return None
        first = ordered[0]
        provider = self.config.providers[first.provider]
        if provider.preset != "openrouter":
            return None
        if any(c.provider != first.provider or c.account != first.account for c in ordered):
            return None
        return list(ordered)

    def _emit(self, call: _Call, event: RouteEvent) -> None:
        if call.emit is not None:
            call.emit(event)

    def _skip_attempt(self, row: DecisionRow, now: float) -> Attempt:
        c = row.candidate
        return Attempt(candidate=c.key, path=c.path_text, action=Action.SKIPPED, started_at=now, message=row.reason,
                       hold_until=row.hold_until)

    def _record_skip(self, call: _Call, c: Candidate, reason: str, until: float | None) -> None:
        a = Attempt(candidate=c.key, path=c.path_text, action=Action.SKIPPED, started_at=time.time(), message=reason,
                    hold_until=until)
        call.attempts.append(a)
        self._emit(call, AttemptFinished(a))

    def _endpoint(self, provider: Provider, account: str) -> Endpoint:
        acc = provider.account(account)
        key = acc.api_key() if acc is not None else None
        cache_key = (provider.name, account, key)
        ep = self._endpoints.get(cache_key)
        if ep is None:
            remember_secret(key)
            ep = Endpoint(provider=provider.name, protocol=provider.protocol, base_url=provider.base_url, api_key=key,
                          preset=provider.preset, local=provider.local, headers=dict(provider.headers))
            self._endpoints[cache_key] = ep
        return ep

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import httpx

            try:
                from httpx_aiohttp import AiohttpTransport

                transport: Any = AiohttpTransport(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
            except ImportError:  # pragma: no cover - httpx-aiohttp is a dependency
                transport = None
            client = httpx.AsyncClient(transport=transport, timeout=self.policy.attempt_timeout_s)
            self._clients[loop] = client
        return client

    async def _attempt(
        self, call: _Call, combo: Combo, c: Candidate, info: RequestInfo, timeout_s: float, *, retry: bool = False,
        group: list[Candidate] | None = None,
    ) -> RouteResult | tuple[ProviderFailure, Attempt]:
        """One try of one candidate: send, then record what happened and apply the kind's state change."""
        provider = self.config.providers[c.provider]
        endpoint = self._endpoint(provider, c.account)
        protocol = get_protocol(provider.protocol)
        req = call.req
        request = ChatRequest(model=c.model, messages=req.messages, system=req.system, max_tokens=req.max_tokens,
                              temperature=req.temperature, response_format=req.response_format, stream=req.stream,
                              models=[g.model for g in group] if group else None)
        now = time.time()
        was_half_open = self.state.breaker_state(c.key, now) == HALF_OPEN
        if was_half_open:
            self.state.begin_probe(c.key, now)
        if call.emit is not None:
            call.emit(AttemptStarted(c.key, c.path_text, sum(1 for a in call.attempts if a.action is not Action.SKIPPED) + 1))
        t0 = time.perf_counter()
        first: list[float] = []
        pieces: list[str] = []

        def on_first_byte() -> None:
            if not first:
                first.append(time.perf_counter() - t0)

        on_text = None
        if req.stream:
            def on_text(text: str) -> None:
                pieces.append(text)
                call.shown += text
                self._emit(call, TextDelta(text, c.key))

        try:
            if provider.managed:
                # a local server nbrouter starts on first need (providers/managed.py); failing to start is
                # a classified failure of this attempt, and the combo falls back as for any other
                from ..providers.managed import ensure_server

                endpoint = replace(endpoint, base_url=await ensure_server(provider.name, provider.model_path, provider.server_command))
            completion = await _send()(self._client(), protocol, endpoint, request, timeout_s=timeout_s, on_text=on_text, on_first_byte=on_first_byte)
        except ProviderFailure as failure:
            latency = time.perf_counter() - t0
            return failure, self._failed(call, combo, c, provider, endpoint, failure, latency, first[0] if first else None, now, retry, was_half_open)
        except asyncio.CancelledError:
            latency = time.perf_counter() - t0
            a = Attempt(candidate=c.key, path=c.path_text, action=Action.STOP, started_at=now, kind=ErrorKind.CANCELLED,
                        message="cancelled by the user" + (f" after {len(''.join(pieces))} characters" if pieces else ""),
                        latency_s=latency, ttft_s=first[0] if first else None)
            if was_half_open:
                self.state.end_probe(c.key)
            call.attempts.append(a)
            self._emit(call, AttemptFinished(a))
            raise
        latency = time.perf_counter() - t0
        note = ""
        if group:
            served = completion.served_model or c.model
            c = next((g for g in group if g.model == served), None) or next((g for g in group if served.startswith(g.model)), c)
            note = f"one OpenRouter request with models [{', '.join(g.model for g in group)}]; it served {served}"
        return self._served(call, combo, c, provider, completion, info, latency, first[0] if first else None, now, note)

    def _served(self, call: _Call, combo: Combo, c: Candidate, provider: Provider, completion: Completion,
                info: RequestInfo, latency: float, ttft: float | None, started: float, note: str = "") -> RouteResult:
        state = self.state
        now = time.time()
        usage = completion.usage
        cost = self.prices.cost(provider, c.model, usage, completion.reported_cost)
        if usage is None and cost is None:
            # no usage reported (llama.cpp streams, for one): free stays free, anything else is unknown
            unit = self.prices.unit_prices(provider, c.model)
            if unit is not None and not unit.input and not unit.output:
                cost = Decimal(0)
        warning = completion.warning
        if provider.local and usage is not None and usage.input_tokens:
            raw_estimate = info.prompt_tokens / max(self.policy.token_safety_margin, 1.0)
            if usage.input_tokens < self.policy.truncation_ratio * raw_estimate:
                warning = (f"the server reported {usage.input_tokens} prompt tokens for an estimated {int(raw_estimate)}: "
                           "it may have cut the front of the prompt (context overflow)")
        a = Attempt(candidate=c.key, path=c.path_text, action=Action.SERVED, started_at=started, status=200,
                    latency_s=latency, ttft_s=ttft if call.req.stream else None, usage=usage, cost_usd=cost,
                    cost_known=cost is not None, request_id=completion.request_id, warning=warning,
                    model=completion.model, message=note)
        call.attempts.append(a)
        state.breaker_success(c.key)
        state.record_outcome(c.key, now, ok=True, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=None)
        state.record_usage(c.account_key, now, usage.total_tokens if usage else 0)
        if completion.rate_limits is not None:
            state.record_ratelimits(c.account_key, completion.rate_limits)
        state.set_pointer(f"lkgp:{combo.name}", c.key)
        self._emit(call, AttemptFinished(a))
        return self._result(call, combo, c, failure_text=None, completion=completion, partial=False, error=None)

    def _failed(self, call: _Call, combo: Combo, c: Candidate, provider: Provider, endpoint: Endpoint,
                failure: ProviderFailure, latency: float, ttft: float | None, started: float, retry: bool,
                was_half_open: bool) -> Attempt:
        """Record a failed attempt and write its state change (routing.md section 5) before the next try."""
        policy = self.policy
        state = self.state
        now = time.time()
        kind = failure.kind
        fallback_on = combo.fallback_on if combo.fallback_on is not None else DEFAULT_FALLBACK_ON
        action = Action.ADVANCE if kind in fallback_on else Action.STOP
        hold = hold_until = None
        message = scrub(failure.message)
        if failure.rate_limits is not None:
            state.record_ratelimits(c.account_key, failure.rate_limits)
        if kind is ErrorKind.RATE_LIMIT:
            wait = failure.retry_after_s
            if wait is None:
                wait = _exhausted_reset(failure.rate_limits, now)  # the reset header of the spent window
            if wait is None:
                wait = policy.rate_limit_cooldown_s
            wait = min(wait, policy.rate_limit_cooldown_cap_s)
            hold_until = now + wait
            hold = "cooldown"
            state.set_hold(c.key, "cooldown", hold_until, f"rate limited ({failure.status or 429})")
        elif kind is ErrorKind.QUOTA_EXCEEDED:
            hold_until = failure.reset_at if failure.reset_at and failure.reset_at > now else now + policy.quota_cooldown_s
            hold = "account cooldown"
            state.set_hold(c.account_key, "cooldown", hold_until, "quota exceeded")
        elif kind is ErrorKind.AUTH:
            acc = provider.account(c.account)
            fresh = acc.api_key() if acc is not None else None
            if not retry and fresh and fresh != endpoint.api_key:
                action = Action.RETRY
                message += " (the key changed since: retrying once with the new key)"
            else:
                hold, hold_until = "account disabled", None
                state.set_hold(c.account_key, "disabled", now + FOREVER, "key refused (401)", _fingerprint(fresh))
        elif kind is ErrorKind.ACCOUNT_LOCKED:
            hold_until = now + policy.account_lock_s
            hold = "account lock"
            state.set_hold(c.account_key, "lock", hold_until, "account locked or forbidden (403)")
        elif kind is ErrorKind.MODEL_NOT_FOUND:
            hold_until = now + policy.model_not_found_lock_s
            hold = "lock"
            state.set_hold(c.key, "lock", hold_until, "model not found")
        if kind in BREAKER_KINDS:
            b = state.breaker_failure(c.key, now, open_now=bool(failure.refused and provider.local))
            if b.state == "open":
                hold = hold or "breaker open"
                hold_until = hold_until or (b.opened_at + b.open_for)
        elif was_half_open:
            state.end_probe(c.key)
        usage = failure.usage
        cost = self.prices.cost(provider, c.model, usage, None) if usage is not None else None
        state.record_outcome(c.key, now, ok=False, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=kind)
        if usage is not None:
            state.record_usage(c.account_key, now, usage.total_tokens)
        a = Attempt(candidate=c.key, path=c.path_text, action=action, started_at=started, kind=kind, status=failure.status,
                    message=message, latency_s=latency, ttft_s=ttft, hold=hold, hold_until=hold_until, usage=usage,
                    cost_usd=cost, cost_known=cost is not None or usage is None, request_id=failure.request_id)
        call.attempts.append(a)
        self._emit(call, AttemptFinished(a))
        return a

    def _result(self, call: _Call, combo: Combo, c: Candidate, *, failure_text: str | None, completion: Completion | None,
                partial: bool, error: str | None) -> RouteResult:
        usage = Usage()
        cost = Decimal(0)
        known = 0
        unknown = 0
        for a in call.attempts:
            if a.usage is not None:
                usage = usage + a.usage
            charged = a.usage is not None or a.action is Action.SERVED  # a served answer was billed
            if a.cost_usd is not None:
                known += 1
                cost += a.cost_usd
            elif charged:
                unknown += 1
        served = next((a for a in reversed(call.attempts) if a.action is Action.SERVED), None)
        ttft = served.ttft_s if served else None
        text = completion.text if completion is not None else (failure_text or "")
        return RouteResult(
            text=text, served_by=c.key, model=(completion.model if completion and completion.model else c.model),
            combo=combo.name, attempts=list(call.attempts), usage=usage,
            cost_usd=(cost if known or not unknown else None), latency_s=time.perf_counter() - call.started,
            ttft_s=ttft, partial=partial, error=error, finish_reason=completion.finish_reason if completion else None,
            cost_unknown_attempts=unknown if known else 0,
            usage_known=served is None or served.usage is not None,
        )

    def _log(self, call: _Call, combo: str, response: str | None) -> None:
        d = call.decision
        self.state.log_attempts(call.id, combo, call.attempts, call.req.prompt_text, response,
                                (d.strategy, d.seed, d.config_hash) if d is not None else None)

    # ---- status, log, reset ------------------------------------------------------------------

    def status(self) -> Status:
        """Per candidate and per account: breaker, cooldown or lock with time left, latency, usage, quota."""
        self._ensure_discovered()
        self.state.refresh()
        now = time.time()
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        keys: list[Candidate] = []
        for provider in self.config.providers.values():
            for acc in provider.accounts:
                for model in provider.models:
                    keys.append(Candidate(provider.name, acc.name, model))
        for combo in self.config.combos.values():
            try:
                keys.extend(resolve(self.config, combo))
            except ComboConfigError:
                continue
        for key in list(self.state.latency) + list(self.state.breakers) + [k for k in self.state.holds if "/" in k]:
            head, _, model = key.partition("/")
            prov, _, acc = head.partition("#")
            if prov in self.config.providers:
                keys.append(Candidate(prov, acc, model))
        for c in keys:
            if c.key in seen:
                continue
            seen.add(c.key)
            s = self.state.latency.get(c.key)
            b = self.state.breaker(c.key, now) if c.key in self.state.breakers else None
            h = self.state.hold(c.key, now)
            rows.append({
                "candidate": c.key,
                "breaker": b.state if b else "closed",
                "hold": h.kind if h else None,
                "hold_reason": h.reason if h else None,
                "hold_left_s": (h.until - now if h and h.kind != "disabled" else None),
                "p50_s": s.percentile(0.5) if s else None,
                "p95_s": s.percentile(0.95) if s else None,
                "ewma_s": s.ewma_total if s else None,
                "requests": s.requests if s else 0,
                "errors": s.errors if s else 0,
                "error_rate": s.error_rate() if s else 0.0,
                "cost_usd": s.cost_usd if s else 0.0,
                "last_error": s.last_error if s else None,
            })
        accounts = []
        for provider in self.config.providers.values():
            for acc in provider.accounts:
                key = f"{provider.name}#{acc.name}"
                h = self.state.hold(key, now)
                w = self.state.usage_window(key, now)
                r = self.state.ratelimit(key, now)
                share, reset = self._headroom(Candidate(provider.name, acc.name, ""), now)
                accounts.append({
                    "account": key,
                    "key_set": (acc.api_key() is not None) if acc.api_key_env else None,
                    "tier": acc.tier,
                    "hold": h.kind if h else None,
                    "hold_reason": h.reason if h else None,
                    "hold_left_s": (h.until - now if h and h.kind != "disabled" else None),
                    "requests_minute": w.minute_requests,
                    "tokens_minute": w.minute_tokens,
                    "requests_day": w.day_requests,
                    "tokens_day": w.day_tokens,
                    "quota": {k: getattr(acc.quota, k) for k in QUOTA_FIELDS if getattr(acc.quota, k) is not None},
                    "remaining_requests": r.remaining_requests if r else None,
                    "remaining_tokens": r.remaining_tokens if r else None,
                    "reset_requests_in_s": (r.reset_requests_at - now if r and r.reset_requests_at else None),
                    "reset_tokens_in_s": (r.reset_tokens_at - now if r and r.reset_tokens_at else None),
                    "headroom": share,
                })
        return Status(rows, accounts, self.state.warning)

    def reset(self, target: str | None = None) -> int:
        """Clear cooldowns, locks and breakers (of keys containing `target`, or all). Returns how many."""
        if target and "/" in target and "#" not in target:
            prov, _, model = target.partition("/")
            n = 0
            provider = self.config.providers.get(prov)
            for acc in (provider.accounts if provider else []):
                n += self.state.reset(f"{prov}#{acc.name}/{model}")
            return n
        return self.state.reset(target)

    def log(self, n: int = 20) -> list[dict[str, Any]]:
        """The last `n` attempts of the call log (one row per attempt), oldest first."""
        return self.state.recent_log(n)

    # ---- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (call it before that loop ends)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        """Close HTTP clients, flush the state file and stop the background loop."""
        if self._closed:
            return
        self._closed = True
        if self._bg.running:
            loop = self._bg.loop()
            client = self._clients.pop(loop, None)
            if client is not None:
                try:
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5.0)
                except Exception:
                    pass
            self._bg.stop()
        self.state.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Router(config={self.config.file_label!r}, combos={sorted(self.config.combos)}, providers={sorted(self.config.providers)})"


_send_fn: Any = None


def _send() -> Any:
    """providers._http.send, imported on first use (it imports httpx, which `import nbrouter` avoids)."""
    global _send_fn
    if _send_fn is None:
        from ..providers._http import send

        _send_fn = send
    return _send_fn


def _exhausted_reset(limits: Any, now: float) -> float | None:
    """Seconds until the windows that rate-limit headers report as spent (remaining 0) reset, if known."""
    if limits is None:
        return None
    resets = [
        reset - now
        for remaining, reset in ((limits.remaining_requests, limits.reset_requests_at), (limits.remaining_tokens, limits.reset_tokens_at))
        if remaining == 0 and reset is not None and reset > now
    ]
    return max(resets) if resets else None


def _fingerprint(key: str | None) -> str:
    """A short one-way fingerprint of a key, to notice that it changed without storing it."""
    if not key:
        return ""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(raw))


def _request(combo: str, prompt: str | None, messages: list[dict[str, Any]] | None, system: str | None,
             max_tokens: int | None, temperature: float | None, max_cost_usd: float | None, timeout_s: float | None,
             seed: int | None, stream: bool, response_format: dict[str, Any] | None, strategy: str | None) -> CallRequest:
    if messages is None:
        if prompt is None:
            raise TypeError("give a prompt or messages")
        messages = [{"role": "user", "content": prompt}]
    elif prompt is not None:
        messages = [*messages, {"role": "user", "content": prompt}]
    return CallRequest(combo=combo, messages=messages, system=system, max_tokens=max_tokens, temperature=temperature,
                       max_cost_usd=max_cost_usd, timeout_s=timeout_s, seed=seed, stream=stream,
                       response_format=response_format, strategy=strategy)


__all__ = ["Router", "Snapshot", "Status", "CallRequest"]

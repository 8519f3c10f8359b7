"""The attempt loop: one loop for every strategy (routing.md section 3, steps 4 and 5).

`Loop.run()` decides (resolve, filter, order), then tries each candidate in order. Every try is an
attempt; a failure is classified by the provider layer into an ErrorKind and the kind's row of the
policy table (`policy.RULES`) says what happens: the action, the hold, the breaker count, the backoff.
State changes are written before the next try. Nothing raised while an attempt runs escapes: it is
classified (`malformed_response` at worst), logged and survived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from typing import Any, Awaitable, Callable, TypeVar

from ..._core import Clock, ErrorKind, ProviderFailure, Usage, remember_secret, scrub
from ...providers import ChatRequest, Completion, Endpoint, get_protocol
from ...providers.models import ModelList
from ..model import Combo, Provider
from .deadlines import Limit
from .deadlines import start as start_limit
from ..decide.budget import BUDGET_REASONS
from ..decide.capabilities import not_capable, window_floor
from ..decide.decider import EMERGENCY, Decider, Route
from ..keys import KeyError_
from ..errors import AllCoolingDown, AllTargetsFailed, BudgetExceeded, StopError
from ..policy import DEFAULT_FALLBACK_ON, Policy, retry_wait, rule_for
from ..requests import CallRequest, build_request
from ..decide.scoring import record_exclusions
from ..decide.combos import auto_pool, resolve
from ..requests import Pacing
from ..state.pacing import INTERACTIVE, LEARNING, PACED, Ticket
from ..state.shared import ExtendHold, StoreDown
from ..state.store import StateStore
from ..decide.tokens import estimate_prompt, estimate_text
from ..decide.strategies import COUNTED, RequestInfo, relay_pointer
from ..structured import checked_output
from ..types import (
    Action,
    Attempt,
    Attempts,
    AttemptFinished,
    AttemptStarted,
    Candidate,
    Decision,
    DecisionRow,
    RouteEvent,
    RouteResult,
    TextDelta,
    ToolCalled,
)

Emit = Callable[[RouteEvent], None]
T = TypeVar("T")
#: what context-relay asks the cheapest candidate when a conversation must be compacted
RELAY_SUMMARY_PROMPT = ("Summarise the conversation above in a few sentences: the facts, decisions and open "
                        "questions someone continuing it must know. Answer with the summary only.")
#: the request options a step may set and a call may override (model.STEP_OPTIONS, as ChatRequest fields)
STEP_REQUEST_OPTIONS = ("system", "max_tokens", "temperature", "top_p", "stop", "reasoning", "extra_body")
#: what a call's footer says while the shared state is not answering, per `SharedState.mode`
STORE_NOTES = {"local": "shared state down: paced here alone at this kernel's share",
               "wait": "shared state down: calls wait for it"}
#: a shared rotation counter's modulus: the store hands out the raw turn (strategies take it modulo their n)
TURNS = 2**62
#: the longest wait for a provider's model list (a call that needs a capability waits for it once)
LIST_TIMEOUT_S = 5.0
#: fetches a provider's model list: (endpoint, timeout_s) -> what it says of each model, or None
ListModels = Callable[[Endpoint, float], Awaitable["ModelList | None"]]

#: sends one request: (protocol, endpoint, request, timeout, on_text, on_first_byte) -> Completion
Sender = Callable[..., Awaitable[Completion]]

#: call ids: 64 bits from a private generator seeded from os.urandom (again in a forked child); uuid4
#: would cost a system call per call
_call_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_call_ids.seed)


log = logging.getLogger("nbrouter")


class Hooks:
    """The caller's callables for the record (`Router(on_attempt=..., on_result=...)`).

    They run off the request path (scheduled on the loop after the current step) and an exception in one
    is logged, never raised into the call.
    """

    def __init__(self, on_attempt: Callable[[Attempt], object] | None = None,
                 on_result: Callable[[RouteResult], object] | None = None) -> None:
        self.on_attempt = on_attempt
        self.on_result = on_result

    def attempt(self, attempt: Attempt) -> None:
        if self.on_attempt is not None:
            self._later(self.on_attempt, attempt)

    def result(self, result: RouteResult) -> None:
        if self.on_result is not None:
            self._later(self.on_result, result)

    @staticmethod
    def _later(hook: Callable[[T], object], value: T) -> None:
        def run() -> None:
            try:
                hook(value)
            except Exception:
                log.exception("nbrouter: a hook (%s) raised; the call is not affected", getattr(hook, "__name__", hook))

        try:
            asyncio.get_running_loop().call_soon(run)
        except RuntimeError:  # no running loop (a test calling the loop's parts directly)
            run()


class _Call:
    """Mutable bookkeeping of one call in flight."""

    __slots__ = ("route", "req", "emit", "hooks", "id", "attempts", "shown_parts", "notes", "decision", "started", "tries",
                 "monotonic", "lanes", "tickets", "holds", "breaker_failed", "breaker_now")

    def __init__(self, route: Route, req: CallRequest, emit: Emit | None, clock: Clock, hooks: Hooks) -> None:
        self.route = route
        self.req = req
        self.emit = emit
        self.hooks = hooks
        #: the router's clock, read for every latency of this call (a test's ManualClock decides them)
        self.monotonic = clock.monotonic
        self.id = f"{_call_ids.getrandbits(64):016x}"
        self.attempts: list[Attempt] = []
        #: the text already passed to the caller, piece by piece (joined once, when it is needed)
        self.shown_parts: list[str] = []
        #: what was done to the request for one candidate (context-relay's compaction), for its attempt row
        self.notes: dict[str, str] = {}
        self.decision: Decision | None = None
        self.started = self.monotonic()
        #: attempts sent so far (skips not counted), against max_attempts
        self.tries = 0
        #: how the call is paced (its lane in shared limits)
        self.lanes: Pacing = req.pacer or INTERACTIVE
        #: what the store's admission took for each candidate about to be sent (given back as it settles)
        self.tickets: dict[str, Ticket] | None = None
        #: holds the last failure set, for the store (every process sees them)
        self.holds: list[ExtendHold] | None = None
        #: the last failure counted against its candidate's breaker
        self.breaker_failed = False
        #: ... and it opens the breaker at once (a local server refused the connection), in the store too
        self.breaker_now = False

    @property
    def shown(self) -> str:
        return "".join(self.shown_parts)

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self.hooks.attempt(attempt)
        if self.emit is not None:
            self.emit(AttemptFinished(attempt))


class _Hedge:
    """Which attempt of a hedge answers: the first to produce text (or to finish, not streamed)."""

    def __init__(self) -> None:
        self.winner: str | None = None
        self.lanes: dict[str, _Lane] = {}

    def lane(self, key: str) -> _Lane:
        lane = self.lanes[key] = _Lane(self, key)
        return lane

    def win(self, key: str) -> bool:
        if self.winner is None:
            self.winner = key
            for other in self.lanes.values():
                if other.key != key:
                    other.lost_to = key
                    if other.task is not None and not other.task.done():
                        other.task.cancel()
        return self.winner == key


class _Lane:
    """One attempt of a hedge."""

    def __init__(self, hedge: _Hedge, key: str) -> None:
        self.hedge = hedge
        self.key = key
        self.first_byte = asyncio.Event()
        #: the candidate that answered first, once this lane has lost
        self.lost_to: str | None = None
        self.task: asyncio.Future[RouteResult | tuple[ProviderFailure, Attempt]] | None = None

    def may_show(self) -> bool:
        return self.hedge.win(self.key)


def _stop(limit: Limit | None) -> None:
    """End an attempt's wall-clock limit before what follows the attempt (telling the store what it met,
    which may wait for the store: a file another process holds, Redis over the network) could be cut by it."""
    if limit is not None:
        limit.stop()


def _uncancel() -> None:
    """Take back a cancellation the loop itself asked for (a lost hedge), so the task ends normally."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


class _Progress:
    """How far one attempt got: when its first byte came, the text it passed on (`first_byte` and `text` are
    what the sender calls). A class rather than closures: the variables closures read become cells, which
    every request pays for."""

    __slots__ = ("call", "key", "lane", "t0", "first", "pieces")

    def __init__(self, call: _Call, key: str, lane: _Lane | None) -> None:
        self.call, self.key, self.lane = call, key, lane
        self.t0 = call.monotonic()
        self.first: list[float] = []
        self.pieces: list[str] = []

    def first_byte(self) -> None:
        if not self.first:
            self.first.append(self.call.monotonic() - self.t0)
            if self.lane is not None:
                self.lane.first_byte.set()

    def text(self, text: str) -> None:
        lane = self.lane
        if lane is not None and not lane.may_show():
            return  # another attempt of the hedge is answering
        self.pieces.append(text)
        call = self.call
        call.shown_parts.append(text)
        if call.emit is not None:
            call.emit(TextDelta(text, self.key))


class Loop:
    """Runs calls: decides, tries candidates in order, applies the policy table after each failure."""

    def __init__(self, decider: Decider, state: StateStore, clock: Clock, send: Sender, hooks: Hooks | None = None,
                 rng: random.Random | None = None, list_models: ListModels | None = None) -> None:
        self.decider = decider
        #: fetches a provider's model list (None: capabilities come from config and the table only)
        self.list_models = list_models
        #: provider name -> the fetch of its model list under way (calls that start meanwhile wait for it)
        self._listing: dict[str, asyncio.Task[ModelList | None]] = {}
        self.hooks = hooks or Hooks()
        self.state = state
        self.clock = clock
        #: the draws of retry jitter: a Router's own source, seeded by `Router(seed=...)` so a test can fix them
        self.rng = rng or random.Random()
        self.send = send
        self._endpoints: dict[tuple[str, str, str | None], Endpoint] = {}
        self._retry_tables: dict[int, tuple[Combo, dict[str, int]]] = {}
        self._turns: dict[int, tuple[Combo, tuple[str, ...]]] = {}

    @property
    def policy(self) -> Policy:
        return self.decider.policy

    def forget_endpoints(self) -> None:
        self._endpoints.clear()
        self._retry_tables.clear()
        self._turns.clear()

    # ---- one call ---------------------------------------------------------------------------

    async def run(self, route: Route, req: CallRequest, emit: Emit | None) -> RouteResult:
        """Route one call along its resolved combo: the result, or a RouteError carrying every attempt."""
        clock = self.clock
        combo = route.combo
        if self.list_models is not None and (req.needs or self._window_may_matter(route, req)):
            await self._fetch_lists(route, windows_only=not req.needs)  # a short text-only call asks for no list
        call = _Call(route, req, emit, clock, self.hooks)
        deadline = None if combo.deadline_s is None else clock.monotonic() + combo.deadline_s
        while True:
            # one round: decide, then try the order; another round when the store said wait to every
            # candidate it was asked about and nothing was sent (the next decision waits for the soonest)
            result = await self._round(call, combo, deadline)
            if result is not None:
                return result

    def _window_may_matter(self, route: Route, req: CallRequest) -> bool:
        """Whether a model list not had yet could tell a window that changes this call's decision: the
        call's estimated prompt and max_tokens exceed `window_floor()` (the smallest window of any model
        such a list describes), or the combo orders by windows (`context-fit`). Short calls, the most,
        never pay for a list."""
        book, providers, now = self.decider.capabilities, self.decider.config.providers, self.clock.time()
        if not any(book.window_list_wanted(providers[c.provider], c.model, now) for c in route.candidates):
            return False
        if route.combo.strategy == "context-fit":
            return True
        info = self.decider.request_info(req)
        return info.prompt_tokens + info.max_tokens > window_floor()

    async def _fetch_lists(self, route: Route, *, windows_only: bool = False) -> None:
        """Have the model lists of the route's providers that would say what a model takes (once per
        provider; a failed one again after a while), before deciding, which reads them and sends nothing.
        `windows_only`: only where a list could tell a window the configuration does not give."""
        book, now, fetches = self.decider.capabilities, self.clock.time(), []
        seen: set[str] = set()
        loop = asyncio.get_running_loop()
        for c in route.candidates:
            provider = self.decider.config.providers[c.provider]
            if c.provider in seen or not book.list_wanted(provider, now):
                continue
            if windows_only and provider.context_window(c.model) is not None:
                continue
            seen.add(c.provider)
            task = self._listing.get(c.provider)
            if task is None or task.get_loop() is not loop:
                task = asyncio.ensure_future(self._fetch_list(provider, self._endpoint(provider, c.account)))
                self._listing[c.provider] = task
            fetches.append(task)
        if fetches:
            # shielded: a call cancelled while waiting leaves the fetch to the calls that share it
            await asyncio.gather(*(asyncio.shield(t) for t in fetches))

    async def _fetch_list(self, provider: Provider, endpoint: Endpoint) -> ModelList | None:
        assert self.list_models is not None
        try:
            models = await asyncio.wait_for(self.list_models(endpoint, LIST_TIMEOUT_S), LIST_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a timeout or anything else: the list says nothing this time
            models = None
        finally:
            self._listing.pop(provider.name, None)
        self.decider.capabilities.store_list(provider, models, self.clock.time())
        return models

    async def _round(self, call: _Call, combo: Combo, deadline: float | None) -> RouteResult | None:
        """Decide and try the order once: the result, a RouteError raised, or None when the store said wait
        (no headroom, or a hold another process met) and nothing was sent: its skip rows are dropped, and
        the next decision knows why (the wait, the hold) and waits or fails as it would for its own."""
        decider, clock, policy, req = self.decider, self.clock, self.policy, call.req
        while True:
            turns = await self._take_turns(combo)
            now = clock.time()
            decision, info = decider.decide(call.route, req, now)
            for name in turns:  # `explain` shows the next call's turn
                self.state.set_counter(name, self.state.counter(name) + 1)
            call.decision = decision
            ordered = decision.order
            if ordered:
                break
            await self._no_candidate(call, combo, decision, now, deadline)

        mark, tries_before = len(call.attempts), call.tries
        if decision.strategy == "auto":
            record_exclusions(self.state, decision, now)
        for r in decision.skipped:
            call.add(self._skip_attempt(r, now))

        fallback_on = combo.fallback_on if combo.fallback_on is not None else DEFAULT_FALLBACK_ON
        max_attempts = combo.max_attempts or policy.max_attempts
        # `is None`, not `or`: a call's own value wins even when it is small (0 is refused when the call is built)
        timeout_s = req.timeout_s if req.timeout_s is not None else (
            combo.timeout_s if combo.timeout_s is not None else policy.attempt_timeout_s)
        queue: list[Candidate] = list(ordered)
        group = self._openrouter_group(combo, ordered)
        used: dict[tuple[str, ErrorKind], int] = {}
        overflow_window: int | None | bool = False  # False: no context overflow seen yet
        last_failure: ProviderFailure | None = None
        refused = False
        try:
            while queue:
                c = queue.pop(0)
                now = clock.time()
                skip = self._skip_now(call, c, info, call.tries, max_attempts, deadline, overflow_window, now)
                if skip is None and not self._admitted_here(call, c, info):
                    skip = await self._asked(call, c, info, now)
                    refused = refused or skip is not None
                if skip is not None:
                    call.add(self._skipped(c, skip[0], skip[1], now))
                    if skip[0].startswith(LEARNING):  # a batch waits for this step's first take: not down the combo
                        queue, behind = [q for q in queue if q.step <= c.step], [q for q in queue if q.step > c.step]
                        for q in behind:
                            call.add(self._skipped(q, f"{LEARNING}: waiting behind {c.key}", skip[1], now))
                    continue
                attempt_timeout = timeout_s
                if deadline is not None:
                    attempt_timeout = max(0.001, min(timeout_s, deadline - clock.monotonic()))
                call.tries += 1
                members = group if group and c is group[0] else None
                hedged = combo.hedge_after_s is not None and bool(queue) and members is None
                if hedged:
                    next_candidate = self._hedge_source(call, queue, info, max_attempts, deadline, overflow_window)
                    result = await self._hedged(call, combo, c, info, attempt_timeout, next_candidate)
                else:
                    result = await self._attempt(call, combo, c, info, attempt_timeout, group=members)
                if members:
                    for other in members[1:]:
                        queue.remove(other)
                        if not isinstance(result, RouteResult):
                            call.add(self._skipped(other, "tried inside the one OpenRouter request (models array)", None, now))
                if not isinstance(result, RouteResult) and result[1].action is Action.RETRY \
                        and await self._admit(call, c, info, clock.time()) is None:
                    # the policy row asked for one more try of this candidate (a key that changed since)
                    call.tries += 1
                    result = await self._attempt(call, combo, c, info, attempt_timeout, retry=True)
                while not hedged and not isinstance(result, RouteResult) and not call.shown_parts:
                    # same-target retries (policy `retries`, a combo's `retries`), each its own row
                    retries = self._retries(combo)
                    wait = self._retry_wait(c, result[0], retries, used, call.tries, max_attempts, deadline)
                    if wait is None:
                        break
                    attempt = result[1]
                    attempt.action = Action.RETRY
                    attempt.message += f" (retry {used[(c.key, result[0].kind)]} of {retries[result[0].kind.value]} in {wait:.2f} s)"
                    await clock.sleep(wait)
                    if await self._admit(call, c, info, clock.time()) is not None:
                        attempt.message += "; not retried: the account has no headroom now"
                        break
                    call.tries += 1
                    if deadline is not None:
                        attempt_timeout = max(0.001, min(timeout_s, deadline - clock.monotonic()))
                    result = await self._attempt(call, combo, c, info, attempt_timeout, retry=True)
                if isinstance(result, RouteResult):
                    return self._finish(call, combo.name, result, decision)
                failure, attempt = result
                last_failure = failure
                rule = rule_for(failure.kind)
                if call.shown_parts:
                    # text already reached the caller: stop, and return it marked partial with the error, so
                    # the deltas a consumer saw add up to the result's text (no second answer glued on)
                    attempt.action = Action.STOP
                    partial = self._result(call, combo, c, completion=None, partial_text=call.shown, error=attempt.message)
                    return self._finish(call, combo.name, partial, decision)
                if attempt.action is Action.STOP or failure.kind not in fallback_on:
                    attempt.action = Action.STOP
                    self._log(call, combo.name, None)
                    raise StopError(combo.name, call.attempts, failure.kind, c.key, now=clock.time())
                if rule.needs_larger_window:
                    overflow_window = decider.context_window(c)
                if rule.backoff and queue:
                    wait = policy.server_error_backoff_s
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - clock.monotonic()))
                    await clock.sleep(wait)
        except asyncio.CancelledError:
            self._log(call, combo.name, call.shown or None)
            raise
        if refused and call.tries == tries_before:
            del call.attempts[mark:]  # a wait, not a failure: the next round's decision shows it
            return None
        if refused and call.lanes.lane == "batch" and call.tries < max_attempts \
                and (deadline is None or clock.monotonic() < deadline):
            # a batch's item is not failed while a candidate it may still use is only paced (a fallback's
            # bucket new to the store, say): it waits for it. The attempts sent stay in its record; the skip
            # rows go (the next round's decision shows them), and `max_attempts` bounds the rounds
            call.attempts[mark:] = [a for a in call.attempts[mark:] if a.action is not Action.SKIPPED]
            return None
        self._log(call, combo.name, None)
        hint = ""
        if last_failure is not None and rule_for(last_failure.kind).needs_larger_window:
            hint = "the prompt does not fit: no candidate with a larger known context window is left (set context_window in the config, or shorten the prompt)."
        raise AllTargetsFailed(combo.name, call.attempts, hint, now=clock.time())

    async def _admit(self, call: _Call, c: Candidate, info: RequestInfo, now: float) -> tuple[str, float] | None:
        """Ask the shared store for one attempt of `c` when its account's limits are known (one round trip;
        none for an account without, or from a lease): None when it may be sent, else why not and until when."""
        return None if self._admitted_here(call, c, info) else await self._asked(call, c, info, now)

    def _admitted_here(self, call: _Call, c: Candidate, info: RequestInfo) -> bool:
        """`_admit`'s answers that need no store and no await (nearly every call): True when `c` may be sent
        now, as an account the store is not asked about, or from its lease; False: ask (`_asked`)."""
        pacer, lanes = self.decider.pacer, call.lanes
        if not pacer.watching(c, lanes):
            if lanes.lane == "batch":  # a batch's first request to it finds out its limits; the rest wait
                self._ticket(call, pacer.local_ticket(c, info.prompt_tokens + info.max_tokens, lanes))
            return True
        leased = pacer.leased(c, info.prompt_tokens + info.max_tokens, lanes)  # (no round trip, no await)
        if leased is None:
            return False
        self._ticket(call, leased)
        return True

    async def _asked(self, call: _Call, c: Candidate, info: RequestInfo, now: float) -> tuple[str, float] | None:
        """The store's admission of one attempt of `c` (one round trip), after `_admitted_here` said False
        (its lease, if any, was asked already: not asked again)."""
        pacer = self.decider.pacer
        answer = await pacer.ask(c, info.prompt_tokens + info.max_tokens, call.lanes, now)
        if isinstance(answer, Ticket):
            self._ticket(call, answer)
            return None
        if not answer[0].startswith(PACED) and pacer.last_hold is not None:
            # a hold another process met: this process keeps it too (on the candidate: the store does not
            # say whether it held the account or the candidate)
            self.state.mirror_hold(c.key, pacer.last_hold)
        return answer

    @staticmethod
    def _ticket(call: _Call, ticket: Ticket) -> None:
        if call.tickets is None:
            call.tickets = {}
        call.tickets[ticket.c.key] = ticket

    def _served_here(self, call: _Call, c: Candidate, completion: Completion) -> bool:
        """`_settle` of an answered attempt that has nothing to write but counts (nearly every call of a busy
        candidate), without an await: True when done (`Pacer.served`); False: `_settle` it."""
        tickets = call.tickets
        if not tickets or call.holds or call.breaker_failed:
            return False
        ticket = tickets.get(c.key)
        if ticket is None or not self.decider.pacer.served(c, ticket, completion):
            return False
        del tickets[c.key]
        call.holds, call.breaker_now = None, False  # (as `_settle` leaves them)
        return True

    async def _settle(self, call: _Call, c: Candidate, completion: Completion | None, failure: ProviderFailure | None) -> None:
        """After an attempt: give back and correct what its admission took, and tell the store the holds and
        breaker failure it met (one round trip; none for an account the store was not asked about)."""
        ticket = call.tickets.pop(c.key, None) if call.tickets else None
        holds, call.holds = call.holds, None
        broke, call.breaker_failed = call.breaker_failed, False
        at_once, call.breaker_now = call.breaker_now, False
        pacer = self.decider.pacer
        if ticket is not None and failure is None and not holds and not broke and pacer.served(c, ticket, completion):
            return  # (counted, and written behind with the others)
        writes = pacer.settle(c, ticket, self.clock.time(), completion=completion, failure=failure, holds=holds or (),
                              breaker_failed=broke)
        if writes and failure is None and not holds and not broke:
            pacer.write_behind(writes)  # with every other call ending now, off this call's path
            return
        try:
            if writes:
                await pacer.shared.apply(writes)
            if broke:
                p = self.policy
                await pacer.shared.breaker_failure(c.key, window_s=p.breaker_window_s, threshold=p.breaker_failures,
                                                   open_s=p.breaker_open_s, open_now=at_once)
        except StoreDown as exc:  # the store's trouble never fails a call (its guard says so in status)
            pacer.store_error = str(exc)

    async def _take_turns(self, combo: Combo) -> tuple[str, ...]:
        """Take this call's turns of the combo's shared rotation (round-robin, strict-random, accounts in
        turn) from the store before deciding: each call of every process gets a turn of its own. Returns
        the counters' names."""
        names = self._turn_names(combo)
        if not names:
            return names
        shared, state = self.decider.pacer.shared, self.state
        for name in names:
            try:
                turn = await shared.next_turn(name, TURNS)
            except StoreDown:
                turn = state.counter(name)
            state.set_counter(name, turn)
        return names

    def _turn_names(self, combo: Combo) -> tuple[str, ...]:
        """The rotation counters a call of this combo takes a turn of (worked out once per combo)."""
        hit = self._turns.get(id(combo))
        if hit is not None and hit[0] is combo:
            return hit[1]
        names: list[str] = []
        if combo.strategy in COUNTED:
            names.append(f"rr:{combo.name}")
        if combo.account_strategy == "round-robin":
            try:
                candidates = resolve(self.decider.config, auto_pool(self.decider.config, combo))
            except Exception:  # the decision raises the config error itself, with its context
                candidates = []
            steps = Counter(c.step for c in candidates)
            names += [f"acct:{combo.name}:{step}" for step, n in sorted(steps.items()) if n > 1]
        if len(self._turns) >= 1024:
            self._turns.clear()
        self._turns[id(combo)] = (combo, tuple(names))
        return tuple(names)

    def _hedge_source(self, call: _Call, queue: list[Candidate], info: RequestInfo, max_attempts: int,
                      deadline: float | None, overflow_window: int | None | bool) -> Callable[[], Awaitable[Candidate | None]]:
        """What a hedge starts next: the next candidate of the queue that may be tried now (the others are
        logged as skipped), within max_attempts; None when there is none. (A method, not a closure in
        `run`: variables a nested function reads become cells for every call, hedged or not.)"""
        clock = self.clock

        async def next_candidate() -> Candidate | None:
            while queue and call.tries < max_attempts:
                other = queue.pop(0)
                why = self._skip_now(call, other, info, call.tries, max_attempts, deadline, overflow_window, clock.time())
                if why is None:
                    why = await self._admit(call, other, info, clock.time())
                if why is None:
                    call.tries += 1
                    return other
                call.add(self._skipped(other, why[0], why[1], clock.time()))
            return None

        return next_candidate

    async def _no_candidate(self, call: _Call, combo: Combo, decision: Decision, now: float, deadline: float | None) -> None:
        """Every candidate was filtered out: wait for the first to free up (when the combo says so and it
        fits in max_wait_s and the deadline), or raise the error that says why."""
        policy, clock = self.policy, self.clock
        skipped = decision.skipped
        waits = [r.hold_until for r in skipped if r.hold_until is not None]
        all_holding = bool(skipped) and len(waits) == len(skipped)
        paced = any(r.reason.startswith(PACED) for r in skipped)
        if waits and (paced or (call.req.pacer is not None and len(waits) == len(skipped))):
            # a paced call waits for the earliest refill (the shared store's answer), and a batch's item for
            # the earliest cooldown end too, rather than send into a 429
            soonest = min(waits) - now
            if soonest <= call.lanes.max_wait_s and (deadline is None or clock.monotonic() + soonest <= deadline):
                await clock.sleep(max(0.0, soonest))
                return
        if all_holding and combo.when_all_cooling == "wait":
            max_wait = combo.max_wait_s if combo.max_wait_s is not None else policy.max_wait_s
            soonest = min(waits) - now
            fits_deadline = deadline is None or clock.monotonic() + soonest <= deadline
            if soonest <= max_wait and fits_deadline:
                await clock.sleep(max(0.0, soonest) + 0.01)
                return
        attempts = [self._skip_attempt(r, now) for r in skipped]
        for a in attempts:
            call.add(a)
        self._log(call, combo.name, None)
        req = call.req
        if skipped and all(r.reason.startswith(BUDGET_REASONS) for r in skipped):
            raise BudgetExceeded(
                f"refused before sending: {skipped[0].reason}; {self.decider.budget.text()}. "
                "Raise the budget (router.budget.set_limit(USD), `%llm budget USD`) or use on_budget='cheapest'.",
                attempts,
            )
        if skipped and all(r.reason.startswith("budget:") for r in skipped):
            raise BudgetExceeded(
                f"every candidate of {combo.name!r} is estimated above the budget of ${req.max_cost_usd}: "
                + "; ".join(f"{r.candidate.key} {r.reason[8:]}" for r in skipped)
                + ". Raise max_cost_usd or lower max_tokens.",
                attempts,
            )
        lacking = not_capable(combo.name, skipped, req, attempts, now)
        if lacking is not None:  # issue 25: what the call carries, no candidate can take
            raise lacking
        if all_holding:
            first = min(skipped, key=lambda r: r.hold_until or 0.0)
            raise AllCoolingDown(combo.name, attempts, first.candidate.key, first.hold_until or now, now)
        raise AllTargetsFailed(combo.name, attempts, now=now)

    def _skip_now(self, call: _Call, c: Candidate, info: RequestInfo, tries: int, max_attempts: int,
                  deadline: float | None, overflow_window: int | None | bool, now: float) -> tuple[str, float | None] | None:
        """Why a candidate in the order is not tried after all (the call's own limits, or what earlier
        attempts of this call changed)."""
        if tries >= max_attempts and c.path[:1] != (EMERGENCY,):  # the emergency tier is tried once regardless
            return f"max_attempts {max_attempts} reached", None
        if deadline is not None and self.clock.monotonic() >= deadline:
            return "call deadline passed", None
        if tries:
            # an earlier failure of this call may have put this candidate or its account on hold
            skip = self.decider.skip(c, info, call.req, now)
            if skip is not None:
                return skip
        if overflow_window is not False:
            window = self.decider.context_window(c)
            if window is None or (overflow_window is not None and window <= overflow_window):
                return f"context overflow earlier: window {window or 'unknown'} is not larger", None
        return None

    async def _relay_fit(self, call: _Call, combo: Combo, c: Candidate, info: RequestInfo) -> list[dict[str, Any]]:
        """context-relay: the conversation's history as this candidate gets it. Above `relay_threshold` of its
        known context window, the oldest turns (up to `relay_summary_messages`) are summarised by the combo's
        cheapest candidate into one system message, or dropped if that fails, until it fits; the attempt row
        says what was done."""
        policy, req = self.policy, call.req
        messages = req.messages
        window = self.decider.context_window(c)
        if window is None:
            return messages
        limit = policy.relay_threshold * window

        def tokens(ms: list[dict[str, Any]]) -> int:
            return estimate_prompt(ms, req.system, margin=policy.token_safety_margin, per_message=policy.tokens_per_message)

        if tokens(messages) <= limit:
            return messages
        n = min(policy.relay_summary_messages, len(messages) - 1)  # the last message is the new turn
        summary, by = await self._summarise(call.route, messages[:n])
        notes = []
        if summary is not None:
            out = [{"role": "system", "content": f"Summary of the earlier conversation: {summary}"}, *messages[n:]]
            notes.append(f"summarised the oldest {n} messages into one (by {by})")
        else:
            out = list(messages)
        dropped = 0
        while len(out) > 1 and tokens(out) > limit:
            out.pop(1 if summary is not None and len(out) > 2 else 0)
            dropped += 1
        if dropped:
            notes.append(f"dropped the oldest {dropped} messages" + ("" if summary is not None else " (no summary could be made)"))
        call.notes[c.key] = f"context-relay: {'; '.join(notes)} to fit {limit:.0f} of its {window} tokens"
        return out

    async def _summarise(self, route: Route, messages: list[dict[str, Any]]) -> tuple[str | None, str]:
        """A short summary of `messages` by the combo's cheapest candidate (a routed call of its own), or None."""
        candidates = route.candidates
        if not candidates:
            return None, ""
        prices, providers = self.decider.prices, self.decider.config.providers

        def cost(c: Candidate) -> tuple[bool, Decimal]:
            estimate = prices.estimate(providers[c.provider], c.model, 1000, self.policy.relay_summary_max_tokens)
            return estimate is None, estimate or Decimal(0)

        cheapest = min(candidates, key=cost)
        ask = [*messages, {"role": "user", "content": RELAY_SUMMARY_PROMPT}]
        try:
            summarise = build_request(cheapest.key, None, stream=False, messages=ask, max_tokens=self.policy.relay_summary_max_tokens)
            result = await self.run(self.decider.route(summarise), summarise, None)
        except Exception:  # a summary that cannot be made: the oldest turns are dropped instead
            return None, ""
        return (result.text.strip() or None), result.served_by

    async def _hedged(self, call: _Call, combo: Combo, first: Candidate, info: RequestInfo, timeout_s: float,
                      next_candidate: Callable[[], Awaitable[Candidate | None]]) -> RouteResult | tuple[ProviderFailure, Attempt]:
        """Hedging (`hedge_after_s`): when `first` has sent no first byte after that long, the next candidate
        starts too; the first to produce text (not streamed: to answer) serves and the other is cancelled.
        Both attempts are logged; a cancelled one that used tokens is charged."""
        hedge = _Hedge()
        lanes = {first.key: hedge.lane(first.key)}
        lanes[first.key].task = task = asyncio.ensure_future(self._attempt(call, combo, first, info, timeout_s, lane=lanes[first.key]))
        tasks = {task: first}
        failures: list[tuple[ProviderFailure, Attempt]] = []
        try:
            wait_first_byte = asyncio.ensure_future(lanes[first.key].first_byte.wait())
            # on the event loop's time, like the attempt limit: it waits for bytes from a socket
            first_done, _ = await asyncio.wait([*tasks, wait_first_byte], timeout=combo.hedge_after_s,
                                               return_when=asyncio.FIRST_COMPLETED)
            wait_first_byte.cancel()
            if not first_done:
                second = await next_candidate()
                if second is not None:
                    lanes[second.key] = hedge.lane(second.key)
                    lanes[second.key].task = task = asyncio.ensure_future(self._attempt(call, combo, second, info, timeout_s, lane=lanes[second.key]))
                    tasks[task] = second
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result = task.result()
                    if isinstance(result, RouteResult):
                        hedge.win(tasks[task].key)
                        for other in pending:
                            other.cancel()
                        if pending:
                            await asyncio.wait(pending)
                        # with the cancelled attempt's row (and its charge), whenever it was added
                        return self._recount(result, call)
                    failures.append(result)
                    if hedge.winner == tasks[task].key:
                        return result  # the attempt that showed text failed: the loop returns the partial
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            leftover = [t for t in tasks if not t.done()]
            if leftover:
                await asyncio.wait(leftover)
        stops = [f for f in failures if f[1].action is Action.STOP]
        return stops[0] if stops else failures[-1]

    def _retries(self, combo: Combo) -> dict[str, int]:
        """Same-target retries per kind for this combo: the policy's, with the combo's on top (worked out
        once per combo, and only when a call has failed)."""
        hit = self._retry_tables.get(id(combo))
        if hit is None or hit[0] is not combo:
            table = {k: int(v) for k, v in self.policy.retries.items()}
            table.update(combo.retries or {})
            if len(self._retry_tables) >= 1024:
                self._retry_tables.clear()
            hit = self._retry_tables[id(combo)] = (combo, table)
        return hit[1]

    def _retry_wait(self, c: Candidate, failure: ProviderFailure, retries: dict[str, int], used: dict[tuple[str, ErrorKind], int],
                    tries: int, max_attempts: int, deadline: float | None) -> float | None:
        """How long to wait before retrying the same candidate after this failure, or None for no retry:
        none left for its kind, max_attempts reached, the breaker now open, or the wait past the deadline."""
        n = used.get((c.key, failure.kind), 0) + 1
        if n > retries.get(failure.kind.value, 0) or tries >= max_attempts:
            return None
        wait = retry_wait(self.policy, failure, n, self.rng.random())
        if deadline is not None and self.clock.monotonic() + wait >= deadline:
            return None
        if not self.state.admit(c.key, self.clock.time())[0]:
            return None
        used[(c.key, failure.kind)] = n
        return wait

    def _finish(self, call: _Call, combo: str, result: RouteResult, decision: Decision) -> RouteResult:
        result.decision = decision
        mode = self.decider.pacer.shared.mode
        if mode != "shared":  # the footer says so (one line), every call while it lasts
            result.store = STORE_NOTES.get(mode, f"shared state: {mode}")
        if call.req.schema is not None and not result.partial:  # issue 17: checked by checked_output already
            result.parsed = call.req.schema.parse(result.text)
        self._log(call, combo, result.text)
        self.hooks.result(result)
        return result

    def _openrouter_group(self, combo: Combo, ordered: list[Candidate]) -> list[Candidate] | None:
        """The candidates to send as one OpenRouter request: every one is `openrouter/...` on one account,
        and the combo's strategy is `priority` (OpenRouter's own fallback keeps that order)."""
        if combo.strategy != "priority" or len(ordered) < 2:
            return None
        first = ordered[0]
        if self.decider.config.providers[first.provider].preset != "openrouter":
            return None
        if any(c.provider != first.provider or c.account != first.account for c in ordered):
            return None
        return list(ordered)

    def _skip_attempt(self, row: DecisionRow, now: float) -> Attempt:
        return self._skipped(row.candidate, row.reason, row.hold_until, now)

    @staticmethod
    def _skipped(c: Candidate, reason: str, until: float | None, now: float) -> Attempt:
        return Attempt(candidate=c.key, path=c.path_text, action=Action.SKIPPED, started_at=now, message=reason, hold_until=until)

    # ---- one attempt ------------------------------------------------------------------------

    def _endpoint(self, provider: Provider, account: str) -> Endpoint:
        acc = provider.account(account)
        key = acc.api_key() if acc is not None else None
        cache_key = (provider.name, account, key)
        ep = self._endpoints.get(cache_key)
        if ep is None:
            remember_secret(key)
            ep = Endpoint(provider=provider.name, protocol=provider.protocol, base_url=provider.base_url, api_key=key,
                          preset=provider.preset, local=provider.local, headers=dict(provider.headers),
                          key_env=acc.api_key_env if acc is not None else None, account=account)
            self._endpoints[cache_key] = ep
        return ep

    async def _attempt(
        self, call: _Call, combo: Combo, c: Candidate, info: RequestInfo, timeout_s: float, *, retry: bool = False,
        group: list[Candidate] | None = None, lane: _Lane | None = None,
    ) -> RouteResult | tuple[ProviderFailure, Attempt]:
        """One try of one candidate: send, then record what happened and apply the kind's policy row.
        In a hedge (`lane`), text reaches the caller only once this attempt has won."""
        provider = self.decider.config.providers[c.provider]
        endpoint = self._endpoint(provider, c.account)
        req = call.req
        messages = req.messages
        if combo.strategy == "context-relay" and info.conversation:
            messages = await self._relay_fit(call, combo, c, info)
        request = ChatRequest(
            model=c.model, messages=messages, response_format=req.response_format, stream=req.stream,
            models=[g.model for g in group] if group else None, system=req.system, max_tokens=req.max_tokens,
            temperature=req.temperature, top_p=req.top_p, stop=req.stop, reasoning=req.reasoning, extra_body=req.extra_body,
            tools=req.tools, tool_choice=req.tool_choice,
        )
        if req.sent:  # issue 25: the attempt's row says what was sent besides text (never the bytes)
            call.notes[c.key] = "; ".join(n for n in (call.notes.get(c.key), f"sent {req.sent.text()}") if n)
        if c.options:
            # the step's options, where the call gave none of its own (a call's own arguments win)
            for name, value in c.options:
                if name in STEP_REQUEST_OPTIONS and getattr(request, name) is None:
                    setattr(request, name, value)
        state = self.state
        now = self.clock.time()
        was_half_open = state.breaker_state(c.key, now) == "half_open"
        if was_half_open:
            state.begin_probe(c.key, now)
        if call.emit is not None:
            call.emit(AttemptStarted(c.key, c.path_text, sum(1 for a in call.attempts if a.action is not Action.SKIPPED) + 1))
        progress = _Progress(call, c.key, lane)
        first, pieces = progress.first, progress.pieces
        t0 = progress.t0
        in_flight = self.decider.in_flight
        in_flight[c.key] = in_flight.get(c.key, 0) + 1
        limit: Limit | None = None
        try:
            acc = provider.account(c.account)
            if acc is not None and acc.key_source is not None and acc.key_source.cached() is None:
                await self._fetch_key(provider, c.account)  # the account's first use (or after a failed fetch)
                endpoint = self._endpoint(provider, c.account)
            sending = self._send(provider, endpoint, request, timeout_s, progress.text if req.stream else None, progress.first_byte)
            if req.schema is not None:  # an answer that does not match the schema is invalid_output
                sending = checked_output(sending, req.schema)
            # the limit fires on the event loop's timer, not the router's clock: it bounds waiting for a
            # socket (real I/O, which a ManualClock never sees pass); what the attempt records (its
            # latency) is still read from the clock (deadlines.py says more)
            limit = start_limit(timeout_s)  # wall-clock, connect to last byte
            completion = await sending
        except ProviderFailure as failure:
            rule = rule_for(failure.kind)
            acc = provider.account(c.account)
            if rule.retry_when_key_changed and not retry and acc is not None and acc.key_source is not None \
                    and endpoint.api_key is not None:
                try:  # a refused key of a command or function: fetch a fresh one, so the retry can use it
                    await self._fetch_key(provider, c.account)
                except ProviderFailure as refresh_failed:
                    failure.message += f" ({refresh_failed.message})"
            failed = failure, self._failed(call, combo, c, provider, endpoint, failure, call.monotonic() - t0,
                                           first[0] if first else None, now, retry, was_half_open)
            if call.tickets or call.holds or call.breaker_failed:
                _stop(limit)  # (telling the store may wait for it: past the attempt's own limit)
                await self._settle(call, c, None, failure)
            return failed
        except asyncio.CancelledError:
            if limit is not None and limit.expired:  # the attempt's own limit passed: a timeout, not a cancel
                limit.absorb()
                failed = self._timed_out(call, combo, c, provider, endpoint, timeout_s, progress, now, retry, was_half_open)
                if call.tickets or call.holds or call.breaker_failed:
                    await self._settle(call, c, None, failed[0])
                return failed
            lost = lane is not None and lane.lost_to is not None
            message = (f"hedge: cancelled, {lane.lost_to} answered first" if lane is not None and lane.lost_to
                       else "cancelled by the user" + (f" after {len(''.join(pieces))} characters" if pieces else ""))
            # cancelled after text: charged an estimate of it; after the first byte only: the provider had
            # started, so it is charged at an unknown cost; before any byte: nothing was billed
            shown = "".join(pieces) if pieces else ""
            usage = self._estimated_usage(req, shown) if shown else None
            cost = self.decider.prices.cost(provider, c.model, usage, None) if usage is not None else None
            a = Attempt(candidate=c.key, path=c.path_text, action=Action.ADVANCE if lost else Action.STOP, started_at=now,
                        kind=ErrorKind.CANCELLED, message=message, latency_s=call.monotonic() - t0,
                        ttft_s=first[0] if first else None, usage=usage, cost_usd=cost,
                        cost_known=cost is not None or not (shown or first), usage_estimated=usage is not None)
            if usage is not None:
                state.record_usage(c.account_key, self.clock.time(), usage.total_tokens)
            if was_half_open:
                state.end_probe(c.key)
            call.add(a)
            if call.tickets and c.key in call.tickets:  # cancelled: give back its slot without waiting here
                asyncio.get_running_loop().create_task(self._settle(call, c, None, None))
            if lost:
                _uncancel()
                return ProviderFailure(ErrorKind.CANCELLED, message), a
            raise
        except (TimeoutError, asyncio.TimeoutError):
            failed = self._timed_out(call, combo, c, provider, endpoint, timeout_s, progress, now, retry, was_half_open)
            if call.tickets or call.holds or call.breaker_failed:
                _stop(limit)
                await self._settle(call, c, None, failed[0])
            return failed
        except Exception as exc:  # nothing raised while an attempt runs may escape the loop
            broken = ProviderFailure(ErrorKind.MALFORMED_RESPONSE, scrub(f"{type(exc).__name__} while reading the answer: {exc}")[:300],
                                     partial_text="".join(pieces))
            failed = broken, self._failed(call, combo, c, provider, endpoint, broken, call.monotonic() - t0,
                                          first[0] if first else None, now, retry, was_half_open)
            if call.tickets or call.holds or call.breaker_failed:
                _stop(limit)
                await self._settle(call, c, None, broken)
            return failed
        finally:
            if limit is not None:
                limit.stop()
            left = in_flight.get(c.key, 1) - 1
            if left:
                in_flight[c.key] = left
            else:
                in_flight.pop(c.key, None)
        latency = call.monotonic() - t0
        sent = c
        note = ""
        if group:
            served = completion.served_model or c.model
            c = next((g for g in group if g.model == served), None) or next((g for g in group if served.startswith(g.model)), c)
            note = f"one OpenRouter request with models [{', '.join(g.model for g in group)}]; it served {served}"
        outcome = self._served(call, combo, c, provider, completion, info, latency, first[0] if first else None, now, note)
        if call.tickets and not self._served_here(call, sent, completion):
            await self._settle(call, sent, completion, None)  # what the admission took, corrected by the reply
        return outcome

    def _timed_out(self, call: _Call, combo: Combo, c: Candidate, provider: Provider, endpoint: Endpoint, timeout_s: float,
                   progress: _Progress, started: float, retry: bool, was_half_open: bool) -> tuple[ProviderFailure, Attempt]:
        failure = ProviderFailure(ErrorKind.TIMEOUT, f"the attempt ran past its limit of {timeout_s:g} s and was cancelled",
                                  partial_text="".join(progress.pieces))
        return failure, self._failed(call, combo, c, provider, endpoint, failure, call.monotonic() - progress.t0,
                                     progress.first[0] if progress.first else None, started, retry, was_half_open)

    async def _fetch_key(self, provider: Provider, account: str) -> None:
        """Run an account's key command or function (in a thread: it may take seconds); a failure is this
        attempt's `auth` failure, naming what failed and never its output."""
        acc = provider.account(account)
        if acc is None or acc.key_source is None:
            return
        try:
            await asyncio.to_thread(acc.key_source.fetch, self.policy.key_command_timeout_s)
        except KeyError_ as exc:
            raise ProviderFailure(ErrorKind.AUTH, f"no key for account {provider.name}#{account}: {exc}") from None

    def _send(self, provider: Provider, endpoint: Endpoint, request: ChatRequest, timeout_s: float,
              on_text: Callable[[str], None] | None, on_first_byte: Callable[[], None]) -> Awaitable[Completion]:
        """The sending, to await (a plain function: no coroutine of its own on every request's path)."""
        if provider.managed:
            return self._send_managed(provider, endpoint, request, timeout_s, on_text, on_first_byte)
        return self.send(get_protocol(provider.protocol), endpoint, request, timeout_s=timeout_s, on_text=on_text,
                         on_first_byte=on_first_byte)

    async def _send_managed(self, provider: Provider, endpoint: Endpoint, request: ChatRequest, timeout_s: float,
                            on_text: Callable[[str], None] | None, on_first_byte: Callable[[], None]) -> Completion:
        # a local server nbrouter starts on first need (providers/managed.py); failing to start is a
        # classified failure of this attempt (a hold of the policy table), and the combo falls back
        from ...providers.managed import ensure_server

        endpoint = replace(endpoint, base_url=await ensure_server(provider.name, provider.model_path, provider.server_command))
        return await self.send(get_protocol(provider.protocol), endpoint, request, timeout_s=timeout_s, on_text=on_text,
                               on_first_byte=on_first_byte)

    def _served(self, call: _Call, combo: Combo, c: Candidate, provider: Provider, completion: Completion,
                info: RequestInfo, latency: float, ttft: float | None, started: float, note: str = "") -> RouteResult:
        state, prices, policy = self.state, self.decider.prices, self.policy
        now = self.clock.time()
        usage = completion.usage
        cost = prices.cost(provider, c.model, usage, completion.reported_cost)
        if usage is None and cost is None:
            # no usage reported (llama.cpp streams, for one): free stays free, anything else is unknown
            unit = prices.unit_prices(provider, c.model)
            if unit is not None and not unit.input and not unit.output:
                cost = Decimal(0)
        warning = completion.warning
        if provider.local and usage is not None and usage.input_tokens:
            raw_estimate = info.prompt_tokens / max(policy.token_safety_margin, 1.0)
            if usage.input_tokens < policy.truncation_ratio * raw_estimate:
                warning = (f"the server reported {usage.input_tokens} prompt tokens for an estimated {int(raw_estimate)}: "
                           "it may have cut the front of the prompt (context overflow)")
        a = Attempt(candidate=c.key, path=c.path_text, action=Action.SERVED, started_at=started, status=200,
                    latency_s=latency, ttft_s=ttft if call.req.stream else None, usage=usage, cost_usd=cost,
                    cost_known=cost is not None, request_id=completion.request_id, warning=warning,
                    model=completion.model, message="; ".join(n for n in (call.notes.pop(c.key, ""), note) if n))
        call.attempts.append(a)
        self.hooks.attempt(a)
        state.breaker_success(c.key)
        state.record_outcome(c.key, now, ok=True, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=None, charged_unknown=cost is None)
        state.record_usage(c.account_key, now, usage.total_tokens if usage else 0)
        if completion.rate_limits is not None:
            state.record_ratelimits(c.account_key, completion.rate_limits)
            self.decider.pacer.learn(c, completion.rate_limits, now)
        state.set_pointer(f"lkgp:{combo.name}", c.key)
        if combo.strategy == "context-relay" and info.conversation:
            state.set_pointer(relay_pointer(combo.name, info.conversation), c.key)  # it holds the conversation now
        if call.emit is not None:
            for tool_call in completion.tool_calls:
                call.emit(ToolCalled(tool_call, c.key))
            call.emit(AttemptFinished(a))
        return self._result(call, combo, c, completion=completion, partial_text=None, error=None)

    def _failed(self, call: _Call, combo: Combo, c: Candidate, provider: Provider, endpoint: Endpoint,
                failure: ProviderFailure, latency: float, ttft: float | None, started: float, retry: bool,
                was_half_open: bool) -> Attempt:
        """Record a failed attempt and write its policy row's state change before the next try."""
        policy, state = self.policy, self.state
        now = self.clock.time()
        kind = failure.kind
        rule = rule_for(kind)
        fallback_on = combo.fallback_on if combo.fallback_on is not None else DEFAULT_FALLBACK_ON
        action = Action.ADVANCE if kind in fallback_on else Action.STOP
        hold = hold_until = None
        message = scrub(failure.message)
        if rule.marks_capability:  # the target lacks what the answer names: the next call skips it
            self.decider.capabilities.learn(c, call.req, message)
        relay_note = call.notes.pop(c.key, "")
        if relay_note:
            message = f"{relay_note}; {message}"
        if failure.rate_limits is not None:
            state.record_ratelimits(c.account_key, failure.rate_limits)
            self.decider.pacer.learn(c, failure.rate_limits, now)
        fresh_key: str | None = None
        if rule.retry_when_key_changed:
            acc = provider.account(c.account)
            fresh_key = acc.api_key() if acc is not None else None
        if rule.retry_when_key_changed and not retry and fresh_key and fresh_key != endpoint.api_key:
            action = Action.RETRY
            message += " (the key changed since: retrying once with the new key)"
        else:
            for hr in rule.holds:
                until = hr.until(failure, policy, now)
                if until is None:
                    continue
                key = c.key if hr.scope == "candidate" else c.account_key
                detail = self.decider.key_fingerprint(c) if hr.kind == "disabled" else ""
                reason = hr.reason.format(status=failure.status or "?")
                state.set_hold(key, hr.kind, until, reason, detail, durable=hr.durable)
                if hr.kind != "disabled":  # (a refused key is this process's key: it stays here)
                    # for every process: another kernel's next admission on this key waits it out
                    call.holds = [*(call.holds or ()), ExtendHold(key, hr.kind, until, reason, detail)]
                hold = hr.label
                hold_until = None if hr.kind == "disabled" else until
                break
        if rule.breaker:
            at_once = rule.breaker_at_once_when_local_refuses and failure.refused and provider.local
            b = state.breaker_failure(c.key, now, open_now=bool(at_once))
            call.breaker_failed = True  # counted in the store too (its half-open probe is one process's)
            call.breaker_now = bool(at_once)
            if b.state == "open":
                hold = hold or "breaker open"
                hold_until = hold_until or (b.opened_at + b.open_for)
        elif was_half_open:
            state.end_probe(c.key)
        usage = failure.usage
        estimated = usage is None and bool(failure.partial_text)
        if estimated:  # text was sent, so it was billed: never a silent 0 (routing.md: partial attempts are charged)
            usage = self._estimated_usage(call.req, failure.partial_text)
        cost = self.decider.prices.cost(provider, c.model, usage, None) if usage is not None else None
        state.record_outcome(c.key, now, ok=False, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=kind,
                             charged_unknown=cost is None and usage is not None)
        if usage is not None:
            state.record_usage(c.account_key, now, usage.total_tokens)
        a = Attempt(candidate=c.key, path=c.path_text, action=action, started_at=started, kind=kind, status=failure.status,
                    message=message, latency_s=latency, ttft_s=ttft, hold=hold, hold_until=hold_until, usage=usage,
                    cost_usd=cost, cost_known=cost is not None or usage is None, request_id=failure.request_id,
                    usage_estimated=estimated)
        call.add(a)
        return a

    def _estimated_usage(self, req: CallRequest, shown: str) -> Usage:
        """What an attempt cut after `shown` was billed, estimated: the prompt, and the text it had sent."""
        info = self.decider.request_info(req)
        return Usage(input_tokens=info.prompt_tokens, output_tokens=estimate_text(shown))

    def _result(self, call: _Call, combo: Combo, c: Candidate, *, completion: Completion | None, partial_text: str | None,
                error: str | None) -> RouteResult:
        attempts = call.attempts
        last = attempts[-1] if attempts else None
        served = last if last is not None and last.action is Action.SERVED else \
            next((a for a in reversed(attempts) if a.action is Action.SERVED), None)
        text = completion.text if completion is not None else (partial_text or "")
        result = RouteResult(
            text=text, served_by=c.key, model=(completion.model if completion and completion.model else c.model),
            combo=combo.name, attempts=_NO_ATTEMPTS, usage=_NO_USAGE, cost_usd=None, latency_s=call.monotonic() - call.started,
            ttft_s=served.ttft_s if served else None, partial=completion is None, error=error,
            finish_reason=completion.finish_reason if completion else None,
            tool_calls=list(completion.tool_calls) if completion is not None else [], sent=call.req.sent,
        )
        return self._recount(result, call)

    @staticmethod
    def _recount(result: RouteResult, call: _Call) -> RouteResult:
        """Give a result the call's attempts so far and their totals: usage, cost, what is unknown or estimated."""
        attempts = call.attempts
        if len(attempts) == 1 and attempts[0].action is Action.SERVED and not attempts[0].usage_estimated:
            # (nearly every call: one attempt, served; the totals are its own. Usage is frozen: shared)
            a = attempts[0]
            result.attempts = Attempts(attempts)
            result.usage = a.usage if a.usage is not None else _NO_USAGE
            result.cost_usd = a.cost_usd
            result.cost_unknown_attempts = 0
            result.usage_known = a.usage is not None
            result.cost_estimated = False
            return result
        usage = Usage()
        cost = Decimal(0)
        known = unknown = 0
        for a in call.attempts:
            if a.usage is not None:
                usage = usage + a.usage
            charged = a.usage is not None or a.action is Action.SERVED or not a.cost_known  # a served answer was billed
            if a.cost_usd is not None:
                known += 1
                cost += a.cost_usd
            elif charged:
                unknown += 1
        served = next((a for a in reversed(call.attempts) if a.action is Action.SERVED), None)
        result.attempts = Attempts(call.attempts)
        result.usage = usage
        result.cost_usd = cost if known or not unknown else None
        result.cost_unknown_attempts = unknown if known else 0
        result.usage_known = (served is None or served.usage is not None) and not any(a.usage_estimated for a in call.attempts)
        result.cost_estimated = any(a.usage_estimated and a.cost_usd is not None for a in call.attempts)
        return result

    def _log(self, call: _Call, combo: str, response: str | None) -> None:
        """The call ended (whichever way): log its attempts and count its cost against the session budget."""
        self.decider.budget.record(call.attempts)
        d = call.decision
        self.state.log_attempts(call.id, combo, call.attempts, call.req.prompt_text, response,
                                (d.strategy, d.seed, d.config_hash) if d is not None else None)


#: the placeholders a result is made with before `_recount` gives it the call's (never changed: shared)
_NO_USAGE = Usage()
_NO_ATTEMPTS = Attempts([])

__all__ = ["Emit", "Loop", "Sender"]

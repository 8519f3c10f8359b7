"""The attempt loop: one loop for every strategy (routing.md section 3, steps 4 and 5).

`Loop.run()` decides (resolve, filter, order), then tries each candidate in order. Every try is an
attempt; a failure is classified by the provider layer into an ErrorKind and the kind's row of the
policy table (`policy.RULES`) says what happens: the action, the hold, the breaker count, the backoff.
State changes are written before the next try. Nothing raised while an attempt runs escapes: it is
classified (`malformed_response` at worst), logged and survived.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from typing import Any, Awaitable, Callable, TypeVar

from .._core import Clock, ErrorKind, ProviderFailure, Usage, remember_secret, scrub
from ..providers import ChatRequest, Completion, Endpoint, get_protocol
from .config import Combo, Provider
from .decide import Decider
from .errors import AllCoolingDown, AllTargetsFailed, BudgetExceeded, StopError
from .policy import DEFAULT_FALLBACK_ON, Policy, rule_for
from .requests import CallRequest
from .scoring import record_exclusions
from .state import StateStore
from .strategies import COUNTED, RequestInfo
from .structured import checked_output
from .types import (
    Action,
    Attempt,
    AttemptFinished,
    AttemptStarted,
    Candidate,
    Decision,
    DecisionRow,
    RouteEvent,
    RouteResult,
    TextDelta,
)

Emit = Callable[[RouteEvent], None]
#: sends one request: (protocol, endpoint, request, timeout, on_text, on_first_byte) -> Completion
Sender = Callable[..., Awaitable[Completion]]
T = TypeVar("T")

#: call ids: 64 bits from a private generator seeded from os.urandom (again in a forked child); uuid4
#: would cost a system call per call
_call_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_call_ids.seed)


class _Call:
    """Mutable bookkeeping of one call in flight."""

    def __init__(self, req: CallRequest, emit: Emit | None, clock: Clock) -> None:
        self.req = req
        self.emit = emit
        self.id = f"{_call_ids.getrandbits(64):016x}"
        self.attempts: list[Attempt] = []
        self.shown = ""  # text already passed to the caller
        self.decision: Decision | None = None
        self.started = time.perf_counter()
        self.started_wall = clock.time()

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        if self.emit is not None:
            self.emit(AttemptFinished(attempt))


if sys.version_info >= (3, 11):
    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
        return await asyncio.wait_for(awaitable, seconds)


class Loop:
    """Runs calls: decides, tries candidates in order, applies the policy table after each failure."""

    def __init__(self, decider: Decider, state: StateStore, clock: Clock, send: Sender) -> None:
        self.decider = decider
        self.state = state
        self.clock = clock
        self.send = send
        self._endpoints: dict[tuple[str, str, str | None], Endpoint] = {}

    @property
    def policy(self) -> Policy:
        return self.decider.policy

    def forget_endpoints(self) -> None:
        self._endpoints.clear()

    # ---- one call ---------------------------------------------------------------------------

    async def run(self, req: CallRequest, emit: Emit | None) -> RouteResult:
        """Route one call: the result, or a RouteError carrying every attempt."""
        decider, clock, policy = self.decider, self.clock, self.policy
        combo = decider.combo(req)
        call = _Call(req, emit, clock)
        deadline = None if combo.deadline_s is None else clock.monotonic() + combo.deadline_s
        while True:
            now = clock.time()
            decision, info = decider.decide(combo, req, now)
            call.decision = decision
            ordered = [r.candidate for r in decision.rows if r.position is not None]  # rows come in trying order
            if ordered:
                break
            await self._no_candidate(call, combo, decision, now, deadline)

        self._advance_turns(combo, decision, now)
        for r in decision.skipped:
            call.add(self._skip_attempt(r, now))

        fallback_on = combo.fallback_on if combo.fallback_on is not None else DEFAULT_FALLBACK_ON
        max_attempts = combo.max_attempts or policy.max_attempts
        timeout_s = req.timeout_s or combo.timeout_s or policy.attempt_timeout_s
        queue: list[Candidate] = list(ordered)
        group = self._openrouter_group(combo, ordered)
        tries = 0
        overflow_window: int | None | bool = False  # False: no context overflow seen yet
        last_failure: ProviderFailure | None = None
        try:
            while queue:
                c = queue.pop(0)
                now = clock.time()
                skip = self._skip_now(call, c, info, tries, max_attempts, deadline, overflow_window, now)
                if skip is not None:
                    call.add(self._skipped(c, skip[0], skip[1], now))
                    continue
                attempt_timeout = timeout_s
                if deadline is not None:
                    attempt_timeout = max(0.001, min(timeout_s, deadline - clock.monotonic()))
                tries += 1
                members = group if group and c is group[0] else None
                result = await self._attempt(call, combo, c, info, attempt_timeout, group=members)
                if members:
                    for other in members[1:]:
                        queue.remove(other)
                        if not isinstance(result, RouteResult):
                            call.add(self._skipped(other, "tried inside the one OpenRouter request (models array)", None, now))
                if not isinstance(result, RouteResult) and result[1].action is Action.RETRY:
                    # the policy row asked for one more try of this candidate (a key that changed since)
                    tries += 1
                    result = await self._attempt(call, combo, c, info, attempt_timeout, retry=True)
                if isinstance(result, RouteResult):
                    return self._finish(call, combo.name, result, decision)
                failure, attempt = result
                last_failure = failure
                rule = rule_for(failure.kind)
                if call.shown:
                    # text already reached the caller: stop, and return it marked partial with the error, so
                    # the deltas a consumer saw add up to the result's text (no second answer glued on)
                    attempt.action = Action.STOP
                    partial = self._result(call, combo, c, completion=None, partial_text=call.shown, error=attempt.message)
                    return self._finish(call, combo.name, partial, decision)
                if attempt.action is Action.STOP or failure.kind not in fallback_on:
                    attempt.action = Action.STOP
                    self._log(call, combo.name, None)
                    raise StopError(combo.name, call.attempts, failure.kind, c.key)
                if rule.needs_larger_window:
                    overflow_window = decider.config.providers[c.provider].context_window(c.model)
                if rule.backoff and queue:
                    wait = policy.server_error_backoff_s
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - clock.monotonic()))
                    await clock.sleep(wait)
        except asyncio.CancelledError:
            self._log(call, combo.name, call.shown or None)
            raise
        self._log(call, combo.name, None)
        hint = ""
        if last_failure is not None and rule_for(last_failure.kind).needs_larger_window:
            hint = "the prompt does not fit: no candidate with a larger known context window is left (set context_window in the config, or shorten the prompt)."
        raise AllTargetsFailed(combo.name, call.attempts, hint)

    async def _no_candidate(self, call: _Call, combo: Combo, decision: Decision, now: float, deadline: float | None) -> None:
        """Every candidate was filtered out: wait for the first to free up (when the combo says so and it
        fits in max_wait_s and the deadline), or raise the error that says why."""
        policy, clock = self.policy, self.clock
        skipped = decision.skipped
        waits = [r.hold_until for r in skipped if r.hold_until is not None]
        all_holding = bool(skipped) and len(waits) == len(skipped)
        if call.req.pacer is not None and waits and len(waits) == len(skipped):
            # issue 17: a paced call (a batch) waits for the earliest refill or cooldown end, not a 429
            soonest = min(waits) - now
            if soonest <= call.req.pacer.max_wait_s and (deadline is None or clock.monotonic() + soonest <= deadline):
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

    def _advance_turns(self, combo: Combo, decision: Decision, now: float) -> None:
        """The state the loop owns for strategies: turn counters advance once per call, proposals are recorded."""
        state = self.state
        if combo.strategy in COUNTED:
            state.next_counter(f"rr:{combo.name}")
        if combo.account_strategy == "round-robin" and len(decision.rows) > 1:
            per_step = Counter(r.candidate.step for r in decision.rows)
            if len(per_step) < len(decision.rows):  # some step has several accounts
                for step, n in per_step.items():
                    if n > 1:
                        state.next_counter(f"acct:{combo.name}:{step}")
        if decision.strategy == "auto":
            record_exclusions(state, decision, now)

    def _skip_now(self, call: _Call, c: Candidate, info: RequestInfo, tries: int, max_attempts: int,
                  deadline: float | None, overflow_window: int | None | bool, now: float) -> tuple[str, float | None] | None:
        """Why a candidate in the order is not tried after all (the call's own limits, or what earlier
        attempts of this call changed)."""
        if tries >= max_attempts:
            return f"max_attempts {max_attempts} reached", None
        if deadline is not None and self.clock.monotonic() >= deadline:
            return "call deadline passed", None
        if tries:
            # an earlier failure of this call may have put this candidate or its account on hold
            skip = self.decider.skip(c, info, call.req, now)
            if skip is not None:
                return skip
        if overflow_window is not False:
            window = self.decider.config.providers[c.provider].context_window(c.model)
            if window is None or (overflow_window is not None and window <= overflow_window):
                return f"context overflow earlier: window {window or 'unknown'} is not larger", None
        return None

    def _finish(self, call: _Call, combo: str, result: RouteResult, decision: Decision) -> RouteResult:
        result.decision = decision
        if call.req.schema is not None and not result.partial:  # issue 17: checked by checked_output already
            result.parsed = call.req.schema.parse(result.text)
        self._log(call, combo, result.text)
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
                          preset=provider.preset, local=provider.local, headers=dict(provider.headers))
            self._endpoints[cache_key] = ep
        return ep

    async def _attempt(
        self, call: _Call, combo: Combo, c: Candidate, info: RequestInfo, timeout_s: float, *, retry: bool = False,
        group: list[Candidate] | None = None,
    ) -> RouteResult | tuple[ProviderFailure, Attempt]:
        """One try of one candidate: send, then record what happened and apply the kind's policy row."""
        provider = self.decider.config.providers[c.provider]
        endpoint = self._endpoint(provider, c.account)
        req = call.req
        request = ChatRequest(model=c.model, messages=req.messages, system=req.system, max_tokens=req.max_tokens,
                              temperature=req.temperature, response_format=req.response_format, stream=req.stream,
                              models=[g.model for g in group] if group else None)
        state = self.state
        now = self.clock.time()
        was_half_open = state.breaker_state(c.key, now) == "half_open"
        if was_half_open:
            state.begin_probe(c.key, now)
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
                if call.emit is not None:
                    call.emit(TextDelta(text, c.key))

        in_flight = self.decider.in_flight
        in_flight[c.key] = in_flight.get(c.key, 0) + 1
        sending = self._send(provider, endpoint, request, timeout_s, on_text, on_first_byte)
        if req.schema is not None:  # issue 17: an answer that does not match the schema is invalid_output
            sending = checked_output(sending, req.schema)
        if req.pacer is not None:  # issue 17: a batch's buckets take this request and learn from its reply
            sending = req.pacer.around(c, info.prompt_tokens + info.max_tokens, now, sending)
        try:
            completion = await _within(timeout_s, sending)
        except ProviderFailure as failure:
            return failure, self._failed(call, combo, c, provider, endpoint, failure, time.perf_counter() - t0,
                                         first[0] if first else None, now, retry, was_half_open)
        except asyncio.CancelledError:
            a = Attempt(candidate=c.key, path=c.path_text, action=Action.STOP, started_at=now, kind=ErrorKind.CANCELLED,
                        message="cancelled by the user" + (f" after {len(''.join(pieces))} characters" if pieces else ""),
                        latency_s=time.perf_counter() - t0, ttft_s=first[0] if first else None)
            if was_half_open:
                state.end_probe(c.key)
            call.add(a)
            raise
        except (TimeoutError, asyncio.TimeoutError):
            failure = ProviderFailure(ErrorKind.TIMEOUT, f"the attempt ran past its limit of {timeout_s:g} s and was cancelled",
                                      partial_text="".join(pieces))
            return failure, self._failed(call, combo, c, provider, endpoint, failure, time.perf_counter() - t0,
                                         first[0] if first else None, now, retry, was_half_open)
        except Exception as exc:  # nothing raised while an attempt runs may escape the loop
            failure = ProviderFailure(ErrorKind.MALFORMED_RESPONSE, scrub(f"{type(exc).__name__} while reading the answer: {exc}")[:300],
                                      partial_text="".join(pieces))
            return failure, self._failed(call, combo, c, provider, endpoint, failure, time.perf_counter() - t0,
                                         first[0] if first else None, now, retry, was_half_open)
        finally:
            left = in_flight.get(c.key, 1) - 1
            if left:
                in_flight[c.key] = left
            else:
                in_flight.pop(c.key, None)
        latency = time.perf_counter() - t0
        note = ""
        if group:
            served = completion.served_model or c.model
            c = next((g for g in group if g.model == served), None) or next((g for g in group if served.startswith(g.model)), c)
            note = f"one OpenRouter request with models [{', '.join(g.model for g in group)}]; it served {served}"
        return self._served(call, combo, c, provider, completion, info, latency, first[0] if first else None, now, note)

    async def _send(self, provider: Provider, endpoint: Endpoint, request: ChatRequest, timeout_s: float,
                    on_text: Callable[[str], None] | None, on_first_byte: Callable[[], None]) -> Completion:
        if provider.managed:
            # a local server nbrouter starts on first need (providers/managed.py); failing to start is a
            # classified failure of this attempt (a hold of the policy table), and the combo falls back
            from ..providers.managed import ensure_server

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
                    model=completion.model, message=note)
        call.attempts.append(a)
        state.breaker_success(c.key)
        state.record_outcome(c.key, now, ok=True, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=None)
        state.record_usage(c.account_key, now, usage.total_tokens if usage else 0)
        if completion.rate_limits is not None:
            state.record_ratelimits(c.account_key, completion.rate_limits)
        state.set_pointer(f"lkgp:{combo.name}", c.key)
        if call.emit is not None:
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
        if failure.rate_limits is not None:
            state.record_ratelimits(c.account_key, failure.rate_limits)
        fresh_key: str | None = None
        if rule.retry_when_key_changed:
            acc = provider.account(c.account)
            fresh_key = acc.api_key() if acc is not None else None
        if rule.retry_when_key_changed and not retry and fresh_key and fresh_key != endpoint.api_key:
            action = Action.RETRY
            message += " (the key changed since: retrying once with the new key)"
        elif rule.retry_once and not retry and action is Action.ADVANCE:
            action = Action.RETRY
            message += " (retrying once on the same target)"
        else:
            for hr in rule.holds:
                until = hr.until(failure, policy, now)
                if until is None:
                    continue
                key = c.key if hr.scope == "candidate" else c.account_key
                detail = self.decider.key_fingerprint(c) if hr.kind == "disabled" else ""
                state.set_hold(key, hr.kind, until, hr.reason.format(status=failure.status or "?"), detail, durable=hr.durable)
                hold = hr.label
                hold_until = None if hr.kind == "disabled" else until
                break
        if rule.breaker:
            at_once = rule.breaker_at_once_when_local_refuses and failure.refused and provider.local
            b = state.breaker_failure(c.key, now, open_now=bool(at_once))
            if b.state == "open":
                hold = hold or "breaker open"
                hold_until = hold_until or (b.opened_at + b.open_for)
        elif was_half_open:
            state.end_probe(c.key)
        usage = failure.usage
        cost = self.decider.prices.cost(provider, c.model, usage, None) if usage is not None else None
        state.record_outcome(c.key, now, ok=False, latency_s=latency, ttft_s=ttft, streamed=call.req.stream,
                             cost=float(cost) if cost is not None else None, error=kind)
        if usage is not None:
            state.record_usage(c.account_key, now, usage.total_tokens)
        a = Attempt(candidate=c.key, path=c.path_text, action=action, started_at=started, kind=kind, status=failure.status,
                    message=message, latency_s=latency, ttft_s=ttft, hold=hold, hold_until=hold_until, usage=usage,
                    cost_usd=cost, cost_known=cost is not None or usage is None, request_id=failure.request_id)
        call.add(a)
        return a

    def _result(self, call: _Call, combo: Combo, c: Candidate, *, completion: Completion | None, partial_text: str | None,
                error: str | None) -> RouteResult:
        usage = Usage()
        cost = Decimal(0)
        known = unknown = 0
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
        text = completion.text if completion is not None else (partial_text or "")
        return RouteResult(
            text=text, served_by=c.key, model=(completion.model if completion and completion.model else c.model),
            combo=combo.name, attempts=list(call.attempts), usage=usage,
            cost_usd=(cost if known or not unknown else None), latency_s=time.perf_counter() - call.started,
            ttft_s=served.ttft_s if served else None, partial=completion is None, error=error,
            finish_reason=completion.finish_reason if completion else None,
            cost_unknown_attempts=unknown if known else 0,
            usage_known=served is None or served.usage is not None,
        )

    def _log(self, call: _Call, combo: str, response: str | None) -> None:
        d = call.decision
        self.state.log_attempts(call.id, combo, call.attempts, call.req.prompt_text, response,
                                (d.strategy, d.seed, d.config_hash) if d is not None else None)


__all__ = ["Emit", "Loop", "Sender"]

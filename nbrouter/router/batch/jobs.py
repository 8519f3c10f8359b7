"""`Router.map(..., mode="batch")`: a column through the providers' half-price batch APIs, with per-row
fallback, as a job that outlives the kernel.

    items ─> rows (custom id, request, hash) ─> first batch-capable target of the combo's order
          ─> parts (one provider job each; split at the provider's limits, or again when it refuses a size)
          ─> refresh(): poll, collect result lines into rows ─> rows that another target could fix
          ─> fallback: the next target's batch API (fallback="batch") or live calls (fallback="live")
          ─> BatchResult, in input order, like a live map's

Every row ends as exactly one of: done (a RouteResult whose attempts start with the `batched` one), failed
with its error (a RouteError carrying every attempt), or not sent (`NotDone`: the budget, a cancel by
the user, a prompt not kept). A row is settled once and never sent again after that, so nothing is paid
twice; an answer goes into the response cache as it is collected, so a later live map of the same rows
costs nothing. The job's record (records.py) is written after every step, so a new Router finds it
(`router.jobs()`, `router.job(id)`) and collects it.

Time is the router's clock: `wait()` polls on `clock.sleep`, so a test's ManualClock runs a 24-hour job
in no time.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import re
import weakref
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Iterable, Protocol, Sequence, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Unpack

from ..._core import Clock, ErrorKind, ProviderFailure, Usage
from ..._core.text import dollars, duration
from ...providers import ChatRequest, Endpoint
from ...providers.batches import (
    BatchAPI,
    BatchHTTP,
    BatchLine,
    BatchUnsupported,
    JobState,
    JobStatus,
    LineOutcome,
    LineResult,
    client,
    get_batch_api,
)
from ..decide.budget import Budget
from ..decide.pricing import PriceBook
from ..decide.tokens import estimate_prompt
from ..errors import AllTargetsFailed, RouteError, StopError
from ..keys import KeyError_
from ..model import Combo, Config, Step
from ..policy import DEFAULT_FALLBACK_ON
from ..requests import CallOptions, CallRequest
from ..run.background import BackgroundLoop
from ..run.cache import ResponseCache, hit_result
from ..state.pacing import MAX_WAIT_S, Lanes, Pacer
from ..state.store import StateStore
from ..structured import OutputSchema, output_schema
from ..types import Action, Attempt, Decision, RouteResult
from .dispatch import (
    DEFAULT_CONCURRENCY,
    NOT_SENT_BUDGET,
    Batch,
    BatchItem,
    BatchResult,
    Dispatcher,
    Inputs,
    LocalExecutor,
    NotDone,
    drive,
    prepare,
    run_sync,
)
from . import waiting
from .prices import batch_unit_prices
from .records import RECORD_VERSION, JobRecords, attempt_from, attempt_record, jobs_path, usage_from

T = TypeVar("T")

#: how `fallback=` may send the rows a batch line could not answer
FALLBACKS = ("live", "batch")
#: the first wait between polls of `wait()`, the growth of each next one, and the longest
POLL_FIRST_S = 5.0
POLL_GROWTH = 1.5
POLL_MAX_S = 60.0
#: how often a refused submission (429) is tried again on the same target, and the longest wait for it
SUBMIT_RETRIES = 3
SUBMIT_BACKOFF_S = 30.0
MAX_SUBMIT_WAIT_S = 600.0
#: polls in a row that may fail with a kind that will not pass (404, 401, ...) before a job is given up
MAX_POLL_FAILURES = 3
#: the kinds of a failed poll that pass on their own: the job is asked again, however often
TRANSIENT = frozenset({ErrorKind.RATE_LIMIT, ErrorKind.TIMEOUT, ErrorKind.NETWORK, ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR})
#: the request options a step may set (model.STEP_OPTIONS, as ChatRequest fields)
STEP_REQUEST_OPTIONS = ("system", "max_tokens", "temperature", "top_p", "stop", "reasoning", "extra_body")

NOT_SENT_CANCELLED = "not sent: the job was cancelled"
NOT_SENT_NO_PROMPT = "not sent: its prompt is not kept (log_content = false), so it cannot fall back after a restart"
PENDING = "pending: in a batch job"

#: a refusal that says the job was too big: split it and submit the halves
_TOO_BIG = re.compile(r"too large|too many (?:tasks|requests|lines)|too_many_tasks|request_too_large|exceeds the (?:maximum|limit)"
                      r"|has more than [\d,]+ requests|at most [\d,]+ (?:items|requests|are allowed)", re.I)

QUEUED, SUBMITTED, DONE, FAILED, NOT_SENT = "queued", "submitted", "done", "failed", "not_sent"
SETTLED = frozenset({DONE, FAILED, NOT_SENT})


class JobRouter(Protocol):
    """What a batch job needs of a router: public calls and attributes of `nbrouter.Router`."""

    config: Config
    clock: Clock
    state: StateStore
    prices: PriceBook
    budget: Budget

    @property
    def background(self) -> BackgroundLoop: ...

    @property
    def cache(self) -> ResponseCache: ...

    @property
    def pacer(self) -> Pacer: ...

    def route(self, request: CallRequest) -> Awaitable[RouteResult]: ...

    def check(self, request: CallRequest) -> Combo: ...

    def estimate(self, request: CallRequest) -> Decimal | None: ...

    def cache_key(self, request: CallRequest) -> str: ...

    def explain(self, combo: str | Combo, prompt: str | None = None, *, stream: bool = False,
                **options: Unpack[CallOptions]) -> Decision: ...

    async def discover(self, *, refresh: bool = False) -> None: ...


class NoBatchTarget(RouteError):
    """No target of the combo has a batch API that can be used now (none has one, or theirs are held)."""


# ---- rows and parts ---------------------------------------------------------------------------


@dataclass
class Row:
    """One item of the job: its id in the provider's files, its request, where it stands, what happened."""

    position: int
    custom_id: str
    #: a hash of what decides the answer (the job's record keeps it, never the prompt when log_content is off)
    hash: str
    cache_key: str | None
    request: CallRequest | None
    state: str = QUEUED
    part: int | None = None
    #: the index (in the job's targets) of the next target to try
    next_target: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    outcome: RouteResult | RouteError | None = None
    #: the settled row as the record keeps it (the answer's numbers; its text only with log_content)
    saved: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    """One provider job: the target, its id, and the rows (custom ids) it holds."""

    index: int
    target: int
    job_id: str
    custom_ids: list[str]
    submitted_at: float
    state: str = JobState.VALIDATING.value
    wire_status: str = ""
    counts: dict[str, int | None] = field(default_factory=dict)
    collected: bool = False
    cancel_asked: bool = False
    note: str = ""
    #: polls in a row that failed (a job the provider no longer knows is given up after MAX_POLL_FAILURES)
    poll_failures: int = 0

    @property
    def terminal(self) -> bool:
        return JobState(self.state).terminal


@dataclass(frozen=True)
class Target:
    """One candidate of the job's order, and whether it has a batch API."""

    provider: str
    account: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()
    batch: bool = False

    @property
    def key(self) -> str:
        return f"{self.provider}#{self.account}/{self.model}"


# ---- the job ---------------------------------------------------------------------------------


class BatchJob:
    """A `map` through the providers' batch APIs: its rows, its provider jobs, and how each row ended.

    Made by `Router.map(..., mode="batch")` (submitted already) or found again by `Router.job(id)`.
    `wait()` polls until every row is settled and returns the BatchResult; `refresh()` polls once;
    `result()` is the BatchResult now (rows still running are `NotDone("pending: ...")`); `cancel()` asks
    the providers to stop (rows that did not run end "not sent").
    """

    def __init__(self, router: JobRouter, job_id: str, combo: str, *, fallback: str, created_at: float,
                 targets: list[Target], rows: list[Row], inputs: Inputs, schema: OutputSchema | None, cache: bool,
                 concurrency: int, max_cost_usd: Decimal | None, max_job_rows: int | None, combo_object: Combo | None = None) -> None:
        self.router = router
        self.id = job_id
        self.combo = combo
        self.fallback = fallback
        self.created_at = created_at
        self.targets = targets
        self.rows = rows
        self.inputs = inputs
        self.schema = schema
        self.cache = cache
        self.concurrency = concurrency
        self.max_cost_usd = max_cost_usd
        self.max_job_rows = max_job_rows
        self.combo_object = combo_object
        self.parts: list[Part] = []
        self.estimated_cost_usd: Decimal | None = Decimal(0)
        self.cancel_asked = False
        self.settled_at: float | None = None
        self._by_id = {row.custom_id: row for row in rows}
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    # ---- what it holds ------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """The providers' job ids, in the order they were submitted."""
        return [p.job_id for p in self.parts]

    @property
    def providers(self) -> list[str]:
        """The targets the provider jobs went to (`provider#account/model`), without repeats."""
        return list(dict.fromkeys(self.targets[p.target].key for p in self.parts))

    @property
    def counts(self) -> dict[str, int]:
        """Rows by where they stand: done, failed, not sent, pending."""
        n = Counter(r.state for r in self.rows)
        return {"done": n[DONE], "failed": n[FAILED], "not sent": n[NOT_SENT], "pending": n[QUEUED] + n[SUBMITTED]}

    @property
    def settled(self) -> bool:
        """Every row is done, failed or not sent."""
        return all(r.state in SETTLED for r in self.rows)

    @property
    def cost_usd(self) -> Decimal:
        """What the rows cost so far: batch lines at the batch price, and any live fallback."""
        return sum((a.cost_usd for r in self.rows for a in r.attempts if a.cost_usd is not None), Decimal(0))

    @property
    def live_cost_usd(self) -> Decimal | None:
        """What the rows answered so far would have cost live (None when a live price is unknown)."""
        total = Decimal(0)
        for r in self.rows:
            if r.state != DONE:
                continue
            live = r.saved.get("live_cost")
            if live is None:
                return None
            total += Decimal(str(live))
        return total

    @property
    def elapsed_s(self) -> float:
        end = self.settled_at if self.settled_at is not None else self.router.clock.time()
        return max(0.0, end - self.created_at)

    # ---- submitting -----------------------------------------------------------------------------

    async def submit_first(self) -> None:
        """Answer rows from the cache, hold the budget, and submit the rest to the first batch-capable target."""
        router = self.router
        now = router.clock.time()
        for row in self.rows:
            if row.request is not None and row.request.cache and row.cache_key is not None:
                entry = router.cache.get(row.cache_key, now)
                hit = hit_result(entry, row.request, self.combo, now) if entry is not None else None
                if hit is not None:
                    router.cache.hits += 1
                    router.state.log_attempts(os.urandom(8).hex(), self.combo, hit.attempts, row.request.prompt_text, hit.text)
                    self._settle(row, DONE, hit, {"cached": True, "cost": "0", "live_cost": "0"})
        first = next((i for i, t in enumerate(self.targets) if t.batch), None)
        if first is None:
            raise NoBatchTarget(f"no target of {self.combo!r} has a batch API that can be used now "
                                f"(targets in order: {', '.join(t.key for t in self.targets) or 'none'})")
        waiting = [r for r in self.rows if r.state == QUEUED]
        self._hold_budget(waiting, first)
        for r in waiting:
            r.next_target = first
        async with client() as http:
            await self._send_queued(http, live=False)
        self.save()

    def _hold_budget(self, rows: list[Row], target: int) -> None:
        """Leave out ("not sent: batch budget") the rows whose batch estimate would pass the budget."""
        limit = self.max_cost_usd
        left = self.router.budget.remaining
        if left is not None:
            limit = left if limit is None else min(limit, left)
        held = Decimal(0)  # an unknown estimate holds nothing, as in a live map's dispatcher
        total: Decimal | None = Decimal(0)
        for row in rows:
            estimate = self._estimate(row, target)
            if limit is not None and held + (estimate or 0) > limit:
                self._settle(row, NOT_SENT, NotDone(NOT_SENT_BUDGET), {"reason": NOT_SENT_BUDGET})
                continue
            held += estimate or 0
            total = None if total is None or estimate is None else total + estimate
        self.estimated_cost_usd = total

    def _estimate(self, row: Row, target: int) -> Decimal | None:
        """A row's most likely batch cost on a target: its prompt, and max_tokens (or the default) out."""
        if row.request is None:
            return None
        t = self.targets[target]
        prices = batch_unit_prices(self.router.config.providers[t.provider], t.model, self._overridden(t))
        if prices is None:
            return None
        policy = self.router.config.policy
        req = row.request
        prompt = estimate_prompt(req.messages, req.system, margin=policy.token_safety_margin, per_message=policy.tokens_per_message)
        return prices.input * prompt + prices.output * (req.max_tokens or policy.default_max_tokens_estimate)

    def _api(self, target: Target) -> BatchAPI:
        """The batch API of a target's provider (a provider removed from the config since fails like a 404)."""
        provider = self.router.config.providers.get(target.provider)
        api = get_batch_api(provider.protocol) if provider is not None else None
        if api is None:
            raise ProviderFailure(ErrorKind.MODEL_NOT_FOUND, f"provider {target.provider!r} is no longer configured with a batch API")
        return api

    def _overridden(self, t: Target) -> bool:
        return f"{t.provider}/{t.model}" in self.router.config.prices

    async def _send_queued(self, http: Any, live: bool = True) -> None:
        """Send every queued row on: a row not yet sent to the first batch-capable target; a row that falls
        back to the next target's batch API (`fallback="batch"`, when it has one) or live (`live`: not while
        submitting, so that `map` returns at once)."""
        while True:
            queued = [r for r in self.rows if r.state == QUEUED]
            if not queued:
                return
            if self.cancel_asked:
                for r in queued:
                    self._settle(r, NOT_SENT, NotDone(NOT_SENT_CANCELLED), {"reason": NOT_SENT_CANCELLED})
                return
            progressed = False
            for index in sorted({r.next_target for r in queued}):
                group = [r for r in queued if r.next_target == index and r.state == QUEUED]
                for r in group:
                    if r.request is None:
                        self._settle(r, NOT_SENT, NotDone(NOT_SENT_NO_PROMPT), {"reason": NOT_SENT_NO_PROMPT})
                        progressed = True
                group = [r for r in group if r.state == QUEUED]
                if index >= len(self.targets):
                    for r in group:
                        self._fail(r, AllTargetsFailed(self.combo, r.attempts))
                    progressed = progressed or bool(group)
                    continue
                target = self.targets[index]
                fresh = [r for r in group if not _sent(r)]
                again = [r for r in group if _sent(r)]
                if fresh:
                    progressed = True
                    if target.batch:
                        await self._submit(http, fresh, index)
                    else:  # not batch-capable: the first submission looks further down the order
                        for r in fresh:
                            r.next_target = index + 1
                if again and target.batch and self.fallback == "batch":
                    progressed = True
                    await self._submit(http, again, index)
                elif again and live:
                    progressed = True
                    await self._live(again, index)
            if not progressed:
                return

    async def _submit(self, http: Any, rows: list[Row], index: int, max_rows: int | None = None) -> None:
        """Submit rows to one target's batch API, in parts within its limits (and `max_rows`)."""
        target = self.targets[index]
        try:
            api = self._api(target)
            endpoint = await self._endpoint(target)
        except ProviderFailure as failure:
            self._refused(rows, index, self.router.clock.time(), failure.kind, None, failure.message)
            return
        lines = [BatchLine(r.custom_id, self._chat_request(r, target)) for r in rows]
        cap = self.max_job_rows if max_rows is None else min(max_rows, self.max_job_rows or max_rows)
        for chunk in plan_parts(api, endpoint, lines, cap):
            if not self.targets[index].batch:
                break  # it answered that it has no batch API: the remaining rows stay queued and move on
            await self._submit_part(http, api, endpoint, [self._by_id[line.custom_id] for line in chunk], chunk, index)

    async def _submit_part(self, http: Any, api: BatchAPI, endpoint: Endpoint, rows: list[Row], lines: list[BatchLine],
                           index: int) -> None:
        """One provider job; a size refusal splits it in two, a 429 waits and tries again, any other refusal
        sends its rows on to the next target."""
        target = self.targets[index]
        wire = BatchHTTP(http, api_protocol(api), self.router.clock)
        clock = self.router.clock
        for attempt in range(SUBMIT_RETRIES + 1):
            started = clock.time()
            try:
                status = await api.submit(wire, endpoint, target.model, lines, self.id)
            except BatchUnsupported as failure:
                self.targets[index] = replace(target, batch=False)
                note = Attempt(target.key, target.key, Action.SKIPPED, started, message=f"no batch API: {failure.message}")
                for r in rows:
                    r.attempts.append(note)
                    r.state = QUEUED
                return
            except ProviderFailure as failure:
                if too_big(failure) and len(lines) > 1:
                    half = len(lines) // 2
                    await self._submit_part(http, api, endpoint, rows[:half], lines[:half], index)
                    await self._submit_part(http, api, endpoint, rows[half:], lines[half:], index)
                    return
                if failure.kind is ErrorKind.RATE_LIMIT and attempt < SUBMIT_RETRIES:
                    await clock.sleep(min(MAX_SUBMIT_WAIT_S, failure.retry_after_s or SUBMIT_BACKOFF_S * 2**attempt))
                    continue
                self._refused(rows, index, started, failure.kind, failure.status, f"refused before accepting the batch: {failure.message}")
                return
            part = Part(len(self.parts), index, status.id, [r.custom_id for r in rows], started)
            self._update(part, status)
            self.parts.append(part)
            for r in rows:
                r.state, r.part = SUBMITTED, part.index
            self.save()  # at once: a kernel that dies now must not lose (and later pay again for) an accepted job
            return

    def _refused(self, rows: list[Row], index: int, started: float, kind: ErrorKind | None, status: int | None, message: str) -> None:
        """Rows a provider refused as a whole (before accepting them, or a job that failed validation): on to the next target."""
        target = self.targets[index]
        attempt = Attempt(target.key, target.key, Action.BATCHED, started, kind=kind, status=status, message=message[:500],
                          cost_usd=None, cost_known=True)
        for r in rows:
            r.attempts.append(attempt)
            r.state, r.part, r.next_target = QUEUED, None, index + 1
        self._log(rows, [attempt])

    def _chat_request(self, row: Row, target: Target) -> ChatRequest:
        """The provider-neutral request of one line, as the live loop builds it (step options where the call gives none)."""
        req = row.request
        assert req is not None
        request = ChatRequest(model=target.model, messages=req.messages, system=req.system, max_tokens=req.max_tokens,
                              temperature=req.temperature, response_format=req.response_format, top_p=req.top_p,
                              stop=req.stop, reasoning=req.reasoning, extra_body=req.extra_body)
        for name, value in target.options:
            if name in STEP_REQUEST_OPTIONS and getattr(request, name) is None:
                setattr(request, name, value)
        return request

    async def _endpoint(self, target: Target) -> Endpoint:
        """Where and as whom to send, with the account's key read now (fetched first when it comes from a command)."""
        provider = self.router.config.providers.get(target.provider)
        if provider is None:
            raise ProviderFailure(ErrorKind.MODEL_NOT_FOUND, f"provider {target.provider!r} is no longer configured")
        acc = provider.account(target.account)
        if acc is not None and acc.key_source is not None and acc.key_source.cached() is None:
            try:
                await asyncio.to_thread(acc.key_source.fetch, self.router.config.policy.key_command_timeout_s)
            except KeyError_ as exc:  # names what failed, never its output
                raise ProviderFailure(ErrorKind.AUTH, f"no key for account {target.provider}#{target.account}: {exc}") from None
        return Endpoint(provider=provider.name, protocol=provider.protocol, base_url=provider.base_url,
                        api_key=acc.api_key() if acc is not None else None, preset=provider.preset, local=provider.local,
                        headers=dict(provider.headers), key_env=acc.api_key_env if acc is not None else None,
                        account=target.account)

    # ---- collecting -----------------------------------------------------------------------------

    async def arefresh(self) -> None:
        """Poll every open provider job once, collect the finished ones, and send on the rows that fall back."""
        async with self._lock():
            try:
                async with client() as http:
                    for part in list(self.parts):
                        if not part.collected:
                            await self._poll(http, part)
                    await self._send_queued(http)
            finally:
                if self.settled and self.settled_at is None:
                    self.settled_at = self.router.clock.time()
                self.save()

    async def _poll(self, http: Any, part: Part) -> None:
        target = self.targets[part.target]
        try:
            api = self._api(target)
            wire = BatchHTTP(http, api_protocol(api), self.router.clock)
            endpoint = await self._endpoint(target)
            status = await api.status(wire, endpoint, part.job_id)
            self._update(part, status)
            if not status.terminal:
                return
            if status.state is JobState.FAILED:
                await self._job_failed(http, part, status)
                return
            results = await api.results(wire, endpoint, status, part.custom_ids)
        except ProviderFailure as failure:  # the poll failed: the job is untouched, the next refresh asks again
            part.note = f"last poll failed: {failure.kind.value}: {failure.message}"[:300]
            part.poll_failures += 1
            if failure.kind not in TRANSIENT and part.poll_failures >= MAX_POLL_FAILURES:
                self._lost(part, failure)
            return
        part.poll_failures = 0
        part.note = f"{results.unreadable} result lines could not be read" if results.unreadable else ""
        collected = []
        for custom_id in part.custom_ids:
            row = self._by_id.get(custom_id)
            if row is None or row.state != SUBMITTED or row.part != part.index:
                continue  # settled already: a row is never counted (or paid for) twice
            collected.append(self._apply(row, part, results.lines.get(custom_id), results.unreadable))
        self._log_each(collected)
        part.collected = True

    def _lost(self, part: Part, failure: ProviderFailure) -> None:
        """A job that cannot be read any more (gone, or the account refused): its rows go on to the next target."""
        rows = [self._by_id[c] for c in part.custom_ids if self._by_id[c].state == SUBMITTED and self._by_id[c].part == part.index]
        part.collected = True
        self._refused(rows, part.target, part.submitted_at, failure.kind, failure.status,
                      f"batch {part.job_id} could not be read {part.poll_failures} times: {failure.message}")

    async def _job_failed(self, http: Any, part: Part, status: JobStatus) -> None:
        """A job that failed as a whole (validation): split and resubmit when it was too big, else fall back."""
        rows = [self._by_id[c] for c in part.custom_ids if self._by_id[c].state == SUBMITTED and self._by_id[c].part == part.index]
        part.collected = True
        message = status.error or "the batch failed"
        if _TOO_BIG.search(message) and len(rows) > 1 and all(r.request is not None for r in rows):
            for r in rows:
                r.state, r.part = QUEUED, None
            half = len(rows) // 2
            for chunk in (rows[:half], rows[half:]):
                await self._submit(http, chunk, part.target, max_rows=len(chunk))
            return
        self._refused(rows, part.target, part.submitted_at, status.error_kind, None, f"batch {part.job_id} failed: {message}")

    def _apply(self, row: Row, part: Part, line: LineResult | None, unreadable: int) -> tuple[Row, list[Attempt]]:
        """One row's result line: done, failed, or on to the next target. Returns the row and its new attempts."""
        target = self.targets[part.target]
        now = self.router.clock.time()
        head = f"batch {part.job_id}"
        if line is None:
            if part.state in (JobState.EXPIRED.value, JobState.CANCELLED.value):
                line = LineResult(row.custom_id, LineOutcome.UNFINISHED, part.state)
            else:
                why = f" ({unreadable} lines could not be read)" if unreadable else ""
                line = LineResult(row.custom_id, LineOutcome.ERRORED, "missing",
                                  failure=ProviderFailure(ErrorKind.MALFORMED_RESPONSE, f"no result line for this row{why}"))
        if line.outcome is LineOutcome.SUCCEEDED and line.completion is not None:
            return row, self._answered(row, part, line, head, now)
        failure = line.failure
        usage = failure.usage if failure is not None else None
        cost = self._batch_cost(target, usage) if usage is not None else None
        kind = failure.kind if failure is not None and line.outcome is LineOutcome.ERRORED else None
        text = failure.message if failure is not None and line.outcome is LineOutcome.ERRORED else "the line never ran"
        attempt = Attempt(target.key, target.key, Action.BATCHED, part.submitted_at, kind=kind,
                          status=failure.status if failure is not None else None,
                          message=f"{head}: {line.line_status}: {text}"[:500], latency_s=now - part.submitted_at, usage=usage,
                          cost_usd=cost, cost_known=cost is not None or usage is None,
                          request_id=failure.request_id if failure is not None else None)
        row.attempts.append(attempt)
        if line.outcome is LineOutcome.UNFINISHED and (part.cancel_asked or self.cancel_asked):
            self._settle(row, NOT_SENT, NotDone(NOT_SENT_CANCELLED), {"reason": NOT_SENT_CANCELLED})
        elif kind is not None and kind not in self._fallback_on():
            self._fail(row, StopError(self.combo, row.attempts, kind, target.key))
        else:
            row.state, row.part, row.next_target = QUEUED, None, part.target + 1
        return row, [attempt]

    def _answered(self, row: Row, part: Part, line: LineResult, head: str, now: float) -> list[Attempt]:
        """A succeeded line: the row's RouteResult (checked against the schema), into the cache."""
        target = self.targets[part.target]
        completion = line.completion
        assert completion is not None
        schema = row.request.schema if row.request is not None else self.schema
        usage = completion.usage
        cost = self._batch_cost(target, usage)
        live = self.router.prices.cost(self.router.config.providers[target.provider], target.model, usage, None)
        parsed = None
        problem = None
        if schema is not None:
            try:
                parsed = schema.parse(completion.text)
            except ValueError as exc:
                problem = str(exc)
        attempt = Attempt(target.key, target.key, Action.BATCHED, part.submitted_at, status=200,
                          message=f"{head}: {line.line_status}" + (f": {problem}" if problem else ""),
                          latency_s=now - part.submitted_at, usage=usage, cost_usd=cost, cost_known=cost is not None,
                          request_id=completion.request_id, model=completion.model, kind=ErrorKind.INVALID_OUTPUT if problem else None)
        row.attempts.append(attempt)
        if problem is not None:  # paid for, but not an answer: it falls back like a live invalid_output
            row.state, row.part, row.next_target = QUEUED, None, part.target + 1
            if ErrorKind.INVALID_OUTPUT not in self._fallback_on():
                self._fail(row, StopError(self.combo, row.attempts, ErrorKind.INVALID_OUTPUT, target.key))
            return [attempt]
        result = RouteResult(text=completion.text, served_by=target.key, model=completion.model or target.model, combo=self.combo,
                             attempts=list(row.attempts), usage=usage or Usage(), cost_usd=_total(row.attempts),
                             latency_s=now - part.submitted_at, ttft_s=None, finish_reason=completion.finish_reason,
                             parsed=parsed, usage_known=usage is not None)
        if self.cache and row.cache_key is not None:
            self.router.cache.put(row.cache_key, result, now)
        self._settle(row, DONE, result, {"cost": None if cost is None else str(cost), "live_cost": None if live is None else str(live)})
        return [attempt]

    def _batch_cost(self, target: Target, usage: Usage | None) -> Decimal | None:
        if usage is None:
            return None
        prices = batch_unit_prices(self.router.config.providers[target.provider], target.model, self._overridden(target))
        return None if prices is None else prices.cost(usage)

    def _fallback_on(self) -> frozenset[ErrorKind]:
        combo = self.combo_object
        return combo.fallback_on if combo is not None and combo.fallback_on is not None else DEFAULT_FALLBACK_ON

    # ---- live fallback -----------------------------------------------------------------------------

    async def _live(self, rows: list[Row], index: int) -> None:
        """Send rows live through the rest of the combo's order (the usual loop and pacing)."""
        rest = self.targets[index:]
        draft = Combo(name=self.combo, steps=[Step(ref=t.key, provider=t.provider, account=t.account, model=t.model,
                                                   options=t.options) for t in rest],
                      fallback_on=self.combo_object.fallback_on if self.combo_object is not None else None)
        items = []
        for r in rows:
            assert r.request is not None
            items.append(BatchItem(r.position, None, replace(r.request, combo=draft, cache=False)))
        budget = None
        if self.max_cost_usd is not None:
            budget = float(max(Decimal(0), self.max_cost_usd - self.cost_usd))
        dispatcher = Dispatcher(items, concurrency=self.concurrency, max_cost_usd=budget,
                                estimate=(lambda item: self.router.estimate(item.request)) if budget is not None else (lambda item: None))
        completed = await drive(dispatcher, LocalExecutor(self.router))
        now = self.router.clock.time()
        by_position = {r.position: r for r in rows}
        for item in items:
            row = by_position[item.position]
            outcome = dispatcher.outcomes.get(item.position)
            if outcome is None or (isinstance(outcome, NotDone) and not completed):
                continue  # interrupted before it ended: it stays queued for the next refresh
            live_cost = outcome.cost_usd if isinstance(outcome, RouteResult) else None
            row.attempts.extend(outcome.attempts)
            outcome.attempts = list(row.attempts)
            if isinstance(outcome, RouteResult):
                if self.cache and row.cache_key is not None:
                    self.router.cache.put(row.cache_key, outcome, now)
                outcome.cost_usd = _total(row.attempts)  # a billed batch line (an invalid output) counts too
                cost = outcome.cost_usd
                self._settle(row, DONE, outcome, {"cost": None if cost is None else str(cost),
                                                  "live_cost": None if live_cost is None else str(live_cost)})
            elif isinstance(outcome, NotDone):
                self._settle(row, NOT_SENT, outcome, {"reason": outcome.reason})
            else:
                self._fail(row, outcome)
        if not completed:
            raise asyncio.CancelledError()

    # ---- settling ------------------------------------------------------------------------------------

    def _settle(self, row: Row, state: str, outcome: RouteResult | RouteError, saved: dict[str, Any]) -> None:
        row.state, row.outcome = state, outcome
        row.saved = dict(saved)
        if isinstance(outcome, RouteResult):
            row.saved.update(text=outcome.text if self.router.config.log_content else None, model=outcome.model,
                             served_by=outcome.served_by, finish_reason=outcome.finish_reason, latency_s=outcome.latency_s,
                             usage=outcome.usage.as_dict() if outcome.usage_known else None)

    def _fail(self, row: Row, error: RouteError) -> None:
        kind = next((a.kind for a in reversed(row.attempts) if a.kind is not None), None)
        self._settle(row, FAILED, error, {"kind": kind.value if kind else None, "error": str(error).splitlines()[0][:300]})

    def _log(self, rows: list[Row], attempts: list[Attempt]) -> None:
        """The attempts into the call log (prompts only with log_content) and the session budget."""
        for r in rows:
            self._log_each([(r, attempts)])

    def _log_each(self, pairs: Iterable[tuple[Row, list[Attempt]]]) -> None:
        state, budget = self.router.state, self.router.budget
        for row, attempts in pairs:
            budget.record(attempts)
            prompt = row.request.prompt_text if row.request is not None else None
            text = row.outcome.text if isinstance(row.outcome, RouteResult) else None
            state.log_attempts(f"{self.id}-{row.position}", self.combo, attempts, prompt, text)

    # ---- polling, waiting, cancelling -----------------------------------------------------------

    def _update(self, part: Part, status: JobStatus) -> None:
        part.state, part.wire_status = status.state.value, status.wire_status
        part.counts = {"total": status.total, "succeeded": status.succeeded, "failed": status.failed, "pending": status.pending}

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def await_result(self, timeout_s: float | None = None, progress: Any = None) -> JobResult:
        """Poll until every row is settled and return the result (the async `wait`).

        Raises:
            TimeoutError: `timeout_s` passed on the router's clock first (the job keeps running).
        """
        clock = self.router.clock
        deadline = None if timeout_s is None else clock.monotonic() + timeout_s
        update, close = progress_sink(progress, len(self.rows), self)
        wait = POLL_FIRST_S
        try:
            while True:
                await self.arefresh()
                if update is not None:
                    update(self)
                if self.settled:
                    return await self.aresult()
                if deadline is not None and clock.monotonic() >= deadline:
                    raise TimeoutError(f"batch job {self.id} is not done after {timeout_s:g} s "
                                       f"({self.counts['pending']} rows pending); it keeps running: wait() again or job({self.id!r})")
                pause = wait if deadline is None else max(0.0, min(wait, deadline - clock.monotonic()))
                await clock.sleep(pause)
                wait = min(POLL_MAX_S, wait * POLL_GROWTH)
        finally:
            close()

    def wait(self, timeout_s: float | None = None, progress: Any = None) -> JobResult:
        """Poll until every row is settled; the BatchResult. Ctrl-C stops waiting, not the job.

        Args:
            timeout_s: give up waiting after this long (on the router's clock): `TimeoutError`, the job left running.
            progress: True for a tqdm bar, or a callable given this job after each poll.
        """
        return self._run(self.await_result(timeout_s, progress))

    def refresh(self) -> BatchJob:
        """Poll once, collect what finished and send on what falls back; returns the job."""
        self._run(self.arefresh())
        return self

    async def aresult(self) -> JobResult:
        """The result now (rows still running are `NotDone("pending: ...")`), with answers restored after a restart."""
        await self._restore()
        entries: list[RouteResult | RouteError] = []
        for row in self.rows:
            if row.state in SETTLED and row.outcome is not None:
                entries.append(row.outcome)
            else:
                entries.append(NotDone(PENDING))
        return JobResult(entries, self.inputs, combo=self.combo, elapsed_s=self.elapsed_s, interrupted=False,
                         schema=self.schema, job=self)

    def result(self) -> JobResult:
        """Refresh once, then the BatchResult now (rows still running show as `pending: in a batch job`)."""
        async def both() -> JobResult:
            if not self.settled:
                await self.arefresh()
            return await self.aresult()

        return self._run(both())

    async def acancel(self) -> BatchJob:
        """Ask every open provider job to cancel; rows that never run end "not sent: the job was cancelled"."""
        async with self._lock():
            self.cancel_asked = True
            try:
                async with client() as http:
                    for part in self.parts:
                        if part.collected or part.terminal:
                            continue
                        target = self.targets[part.target]
                        part.cancel_asked = True
                        try:
                            api = self._api(target)
                            status = await api.cancel(BatchHTTP(http, api_protocol(api), self.router.clock), await self._endpoint(target), part.job_id)
                            self._update(part, status)
                        except ProviderFailure as failure:
                            part.note = f"cancel failed: {failure.kind.value}: {failure.message}"[:300]
                    for r in self.rows:
                        if r.state == QUEUED:
                            self._settle(r, NOT_SENT, NotDone(NOT_SENT_CANCELLED), {"reason": NOT_SENT_CANCELLED})
            finally:
                self.save()
        return self

    def cancel(self) -> BatchJob:
        """Cancel the job (the providers stop within minutes; `wait()` then collects what had finished)."""
        return self._run(self.acancel())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.router.background.run(coro)

    # ---- after a restart ------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Rows done in an earlier process: their answers from the record, the cache, or the provider again (never re-billed)."""
        missing = [r for r in self.rows if r.state == DONE and r.outcome is None]
        if not missing:
            return
        now = self.router.clock.time()
        lines: dict[str, LineResult] = {}
        for r in missing:
            text = r.saved.get("text")
            if text is None and r.cache_key is not None:
                entry = self.router.cache.get(r.cache_key, now)
                text = entry["text"] if entry is not None else None
            if text is None and r.part is not None and r.custom_id not in lines:
                lines.update(await self._fetch_lines(self.parts[r.part]))
                line = lines.get(r.custom_id)
                text = line.completion.text if line is not None and line.completion is not None else None
            r.outcome = self._rebuilt(r, text) if text is not None else NotDone("the answer is no longer available (neither kept nor at the provider)")

    async def _fetch_lines(self, part: Part) -> dict[str, LineResult]:
        target = self.targets[part.target]
        try:
            api = self._api(target)
            async with client() as http:
                wire = BatchHTTP(http, api_protocol(api), self.router.clock)
                endpoint = await self._endpoint(target)
                status = await api.status(wire, endpoint, part.job_id)
                return (await api.results(wire, endpoint, status, part.custom_ids)).lines
        except ProviderFailure:
            return {}

    def _rebuilt(self, row: Row, text: str) -> RouteResult:
        saved = row.saved
        usage = usage_from(saved["usage"]) if isinstance(saved.get("usage"), dict) else Usage()
        parsed = None
        schema = row.request.schema if row.request is not None else self.schema
        if schema is not None:
            try:
                parsed = schema.parse(text)
            except ValueError:
                parsed = None
        return RouteResult(text=text, served_by=str(saved.get("served_by") or ""), model=str(saved.get("model") or ""),
                           combo=self.combo, attempts=list(row.attempts), usage=usage, cost_usd=_total(row.attempts),
                           latency_s=float(saved.get("latency_s") or 0.0), ttft_s=None, finish_reason=saved.get("finish_reason"),
                           parsed=parsed, usage_known=isinstance(saved.get("usage"), dict))

    # ---- the record ------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The job as its record keeps it: no key ever, no prompt unless log_content."""
        content = self.router.config.log_content
        rows = []
        for r in self.rows:
            entry: dict[str, Any] = {"p": r.position, "id": r.custom_id, "h": r.hash, "k": r.cache_key, "s": r.state,
                                     "part": r.part, "next": r.next_target, "attempts": [attempt_record(a) for a in r.attempts],
                                     "saved": r.saved}
            if content and r.request is not None:
                entry["req"] = request_record(r.request)
            rows.append(entry)
        inputs: dict[str, Any] = {"n": len(self.rows), "kind": self.inputs.kind}
        if content:
            inputs.update(values=self.inputs.values, index=self.inputs.index, name=self.inputs.name, columns=self.inputs.columns)
        return {
            "v": RECORD_VERSION, "id": self.id, "combo": self.combo, "fallback": self.fallback, "created_at": self.created_at,
            "settled_at": self.settled_at, "cache": self.cache, "concurrency": self.concurrency,
            "max_cost_usd": None if self.max_cost_usd is None else str(self.max_cost_usd), "max_job_rows": self.max_job_rows,
            "estimated_cost_usd": None if self.estimated_cost_usd is None else str(self.estimated_cost_usd),
            "cancel_asked": self.cancel_asked, "log_content": content,
            "schema": self.schema.json_schema if self.schema is not None else None,
            "targets": [{"provider": t.provider, "account": t.account, "model": t.model, "options": [list(o) for o in t.options],
                         "batch": t.batch} for t in self.targets],
            "parts": [{"i": p.index, "target": p.target, "job": p.job_id, "ids": p.custom_ids, "at": p.submitted_at,
                       "state": p.state, "wire": p.wire_status, "counts": p.counts, "collected": p.collected,
                       "cancel": p.cancel_asked, "note": p.note, "fails": p.poll_failures} for p in self.parts],
            "inputs": inputs, "rows": rows,
        }

    def save(self) -> None:
        """Write the record (after every step: a restart finds the job as it stands)."""
        records_for(self.router).save(self.id, self.created_at, self.router.clock.time(), self.settled, self.combo, self.record())

    # ---- showing -----------------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        counts = self.counts
        n = len(self.rows)
        head = f"batch job {self.id} over {self.combo!r}: {n} row{'s' if n != 1 else ''} · " + \
            " · ".join(f"{k} {v}" for k, v in counts.items() if v or k == "done")
        lines = [head]
        for p in self.parts:
            c = p.counts
            count = "" if c.get("total") is None else f" ({c.get('succeeded') or 0}/{c.get('total')} lines done)"
            note = f" · {p.note}" if p.note else ""
            lines.append(f"{self.targets[p.target].key}: {p.job_id} {p.state}{count}{note}")
        live = self.live_cost_usd
        cost = f"cost so far {dollars(self.cost_usd)} at the batch price"
        if counts["done"]:
            cost += f" (live: {dollars(live) if live is not None else 'unknown'})"
        if self.estimated_cost_usd is not None and not self.settled:
            cost += f" · estimated {dollars(self.estimated_cost_usd)}"
        lines.append(f"{cost} · elapsed {duration(self.elapsed_s)}")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    def __repr__(self) -> str:
        return f"<BatchJob {self.summary_lines()[0]}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # IPython's text form (a notebook's text/plain): the whole summary, not the one-line repr
        p.text(str(self))

    def _repr_html_(self) -> str:
        lines = self.summary_lines()
        body = "".join(f"<div>{html.escape(line)}</div>" for line in lines[1:])
        return f'<div class="nbrouter-batch-job"><b>{html.escape(lines[0])}</b>{body}</div>'


class JobResult(BatchResult):
    """A batch job's BatchResult: the usual columns, and a summary that names the job, the batch price and
    what the same rows would have cost live."""

    def __init__(self, entries: list[RouteResult | RouteError], inputs: Inputs, *, combo: str, elapsed_s: float,
                 interrupted: bool, schema: OutputSchema | None, job: BatchJob) -> None:
        super().__init__(entries, inputs, combo=combo, elapsed_s=elapsed_s, interrupted=interrupted, schema=schema,
                         rerun=self._live_again)
        self.job = job
        self.job_id = job.id
        self.live_cost_usd = job.live_cost_usd

    def _live_again(self, positions: list[int]) -> BatchResult:
        """`retry_failed()`: the rows at `positions` once more, live through the whole combo (the answers kept stay)."""
        rows = [self.job.rows[p] for p in positions if self.job.rows[p].request is not None]
        items = [BatchItem(i, self.inputs.values[r.position], r.request) for i, r in enumerate(rows) if r.request is not None]
        again = Batch(self.job.router, self.combo, Inputs([i.value for i in items], list(range(len(items))), "items"), items,
                      concurrency=self.job.concurrency, max_cost_usd=None, progress=None)
        result = run_sync(self.job.router, again)
        entries = list(self.entries)
        for new, row in enumerate(rows):
            entries[row.position] = result.entries[new]
        return BatchResult(entries, self.inputs, combo=self.combo, elapsed_s=self.elapsed_s + result.elapsed_s,
                           interrupted=result.interrupted, schema=self.schema)

    def summary_lines(self) -> list[str]:
        # a batch's rows all wait for their job: the live summary's "slowest" items say nothing here
        lines = [line for line in super().summary_lines() if not line.startswith("slowest: ")]
        live = self.live_cost_usd
        lines.insert(1, f"batch job {self.job_id}: {', '.join(self.job.ids) or 'no provider job'} · "
                        f"{dollars(self.cost_usd)} at the batch price; live it would have cost "
                        f"{dollars(live) if live is not None else 'an unknown amount'}")
        return lines


def _sent(row: Row) -> bool:
    """Whether a row has been through a batch job (or refused by one): its next send is a fallback."""
    return any(a.action is Action.BATCHED for a in row.attempts)


def _total(attempts: Sequence[Attempt]) -> Decimal | None:
    known = [a.cost_usd for a in attempts if a.cost_usd is not None]
    unknown = any(a.cost_usd is None and not a.cost_known for a in attempts)
    return None if unknown and not known else sum(known, Decimal(0))


def api_protocol(api: BatchAPI) -> Any:
    """The chat protocol that classifies a batch API's failures."""
    from ...providers import get_protocol

    return get_protocol(api.protocol_name)


def too_big(failure: ProviderFailure) -> bool:
    """A refusal that says the job (or its file) is over a size limit: split it."""
    return failure.status == 413 or bool(_TOO_BIG.search(failure.message))


def plan_parts(api: BatchAPI, endpoint: Endpoint, lines: Sequence[BatchLine], max_rows: int | None) -> list[list[BatchLine]]:
    """The lines cut into provider jobs within the API's request and byte limits (and `max_rows`), in order."""
    cap = api.limits.max_requests if max_rows is None else max(1, min(max_rows, api.limits.max_requests))
    parts: list[list[BatchLine]] = []
    current: list[BatchLine] = []
    size = 0
    for line in lines:
        n = api.line_bytes(endpoint, line)
        if current and (len(current) >= cap or size + n > api.limits.max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        parts.append(current)
    return parts


def progress_sink(progress: Any, total: int, job: BatchJob | None = None) -> tuple[Callable[[BatchJob], None] | None, Callable[[], None]]:
    """(called after each poll, called at the end) for `wait(progress=)`: None (the display set by
    `set_wait_display`, if any), False, True (a tqdm bar), or a callable given the job."""
    shown = waiting.display()
    if progress is None and shown is not None and job is not None:
        return shown(job)
    if not progress:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="row")

    def update(job: BatchJob) -> None:
        c = job.counts
        bar.n = total - c["pending"]
        bar.set_postfix_str(f"done {c['done']} · failed {c['failed']} · {dollars(job.cost_usd)}", refresh=False)
        bar.refresh()

    return update, bar.close


# ---- requests in a record ------------------------------------------------------------------------

_REQUEST_FIELDS = ("messages", "system", "max_tokens", "temperature", "timeout_s", "response_format", "top_p", "stop",
                   "reasoning", "extra_body", "cache")


def request_record(req: CallRequest) -> dict[str, Any]:
    """A request's content and options (kept only with log_content)."""
    return {name: getattr(req, name) for name in _REQUEST_FIELDS}


def request_hash(req: CallRequest) -> str:
    """What decides a row's answer, hashed: the record's stand-in for the prompt."""
    material = dict(request_record(req), schema=req.schema.json_schema if req.schema is not None else None)
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- making and finding jobs -----------------------------------------------------------------------

_records: weakref.WeakKeyDictionary[Any, JobRecords] = weakref.WeakKeyDictionary()
_live_jobs: weakref.WeakKeyDictionary[Any, dict[str, BatchJob]] = weakref.WeakKeyDictionary()


def records_for(router: JobRouter) -> JobRecords:
    """The router's job records (the file beside its state file, or memory)."""
    found = _records.get(router)
    if found is None:
        found = _records[router] = JobRecords(jobs_path(router.state.path))
    return found


def _known(router: JobRouter) -> dict[str, BatchJob]:
    jobs = _live_jobs.get(router)
    if jobs is None:
        jobs = _live_jobs[router] = {}
    return jobs


def targets_for(router: JobRouter, combo: Any, first: CallRequest) -> tuple[list[Target], Combo]:
    """The combo's candidates in the order its strategy chooses now (held accounts left out), each marked
    batch-capable or not."""
    resolved = router.check(first)
    decision = router.explain(combo, None, messages=first.messages, system=first.system, max_tokens=first.max_tokens)
    out = []
    for c in decision.order:
        provider = router.config.providers[c.provider]
        capable = not provider.local and provider.preset != "openrouter" and get_batch_api(provider.protocol) is not None
        out.append(Target(c.provider, c.account, c.model, tuple(c.options), capable))
    return out, resolved


async def asubmit(router: JobRouter, combo: Any, items: Any, *, fallback: str = "live", max_job_rows: int | None = None,
                  **options: Any) -> BatchJob:
    """Submit `map(..., mode="batch")`: rows answered from the cache, the rest to the first batch-capable
    target's batch API; returns the BatchJob at once.

    Args:
        router: the Router.
        combo: as for `Router.map`.
        items: a list, a pandas Series or DataFrame.
        fallback: "live" (rows that fall back are sent live through the rest of the combo) or "batch" (to the
            next target's batch API when it has one, else live).
        max_job_rows: at most this many rows per provider job (the providers' own limits always apply).
        **options: as for `Router.map` (prompt, messages, system, schema, max_cost_usd, cache, concurrency, ...).

    Raises:
        NoBatchTarget: no target of the combo has a usable batch API.
        ValueError: an unknown `fallback`.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, not {fallback!r}")
    if max_job_rows is not None and max_job_rows < 1:
        raise ValueError(f"max_job_rows must be at least 1, not {max_job_rows}")
    options.pop("progress", None)
    executor = options.pop("executor", None)
    if executor is not None:
        raise TypeError("mode='batch' sends through the providers' batch APIs: it takes no executor")
    batch = prepare(router, combo, items, **options)
    await router.discover()
    max_cost = options.get("max_cost_usd")
    created = router.clock.time()
    job_id = "job-" + os.urandom(6).hex()
    rows = []
    for item in batch.items:
        req = item.request
        rows.append(Row(item.position, f"row-{item.position}", request_hash(req), router.cache_key(req), req))
    combo_name = combo if isinstance(combo, str) else getattr(combo, "name", "combo")
    targets, resolved = targets_for(router, combo, rows[0].request) if rows and rows[0].request is not None else ([], None)
    job = BatchJob(router, job_id, combo_name, fallback=fallback, created_at=created, targets=targets, rows=rows,
                   inputs=batch.inputs, schema=rows[0].request.schema if rows and rows[0].request is not None else None,
                   cache=bool(rows[0].request.cache) if rows and rows[0].request is not None else False,
                   concurrency=batch.concurrency or DEFAULT_CONCURRENCY,
                   max_cost_usd=None if max_cost is None else Decimal(str(max_cost)), max_job_rows=max_job_rows,
                   combo_object=resolved)
    if rows:
        await job.submit_first()
    else:
        job.settled_at = created
        job.save()
    _known(router)[job.id] = job
    return job


def submit(router: JobRouter, combo: Any, items: Any, **options: Any) -> BatchJob:
    """`asubmit` on the router's own loop (the sync `Router.map(..., mode="batch")`)."""
    result: BatchJob = router.background.run(asubmit(router, combo, items, **options))
    return result


def find(router: JobRouter, job_id: str) -> BatchJob:
    """The job of this id: the one made in this process, else rebuilt from its record.

    Raises:
        KeyError: no job of that id is recorded.
    """
    known = _known(router).get(job_id)
    if known is not None:
        return known
    record = records_for(router).load(job_id)
    if record is None:
        raise KeyError(f"no batch job {job_id!r} is recorded (router.jobs() lists them)")
    job = from_record(router, record)
    _known(router)[job.id] = job
    return job


def listing(router: JobRouter) -> JobList:
    """Every recorded job, newest first."""
    return JobList(find(router, job_id) for job_id, *_ in records_for(router).list())


def from_record(router: JobRouter, record: dict[str, Any]) -> BatchJob:
    """A job rebuilt from its record (requests only where log_content kept them)."""
    from ..requests import build_request

    combo = str(record["combo"])
    schema = output_schema(record["schema"]) if isinstance(record.get("schema"), dict) else None
    rows = []
    for entry in record["rows"]:
        req = None
        if isinstance(entry.get("req"), dict):
            data = dict(entry["req"])
            messages = data.pop("messages")
            req = build_request(combo, None, stream=False, messages=messages, schema=schema, **data)
            req.pacer = Lanes("batch", MAX_WAIT_S, None)  # a batch's item, as `map` paces it
        row = Row(int(entry["p"]), str(entry["id"]), str(entry["h"]), entry.get("k"), req, state=str(entry["s"]),
                  part=entry.get("part"), next_target=int(entry.get("next") or 0),
                  attempts=[attempt_from(a) for a in entry.get("attempts") or []], saved=dict(entry.get("saved") or {}))
        if row.state in (FAILED, NOT_SENT):
            row.outcome = _restored_error(combo, row)
        rows.append(row)
    inputs_data = record.get("inputs") or {}
    n = len(rows)
    if "values" in inputs_data:
        inputs = Inputs(list(inputs_data["values"]), list(inputs_data.get("index") or range(n)), str(inputs_data.get("kind") or "items"),
                        name=inputs_data.get("name"), columns=list(inputs_data.get("columns") or []))
    else:
        inputs = Inputs([None] * n, list(range(n)), "items")
    targets = [Target(t["provider"], t["account"], t["model"], tuple(tuple(o) for o in t.get("options") or []), bool(t.get("batch")))
               for t in record["targets"]]
    max_cost = record.get("max_cost_usd")
    combo_object = None
    try:
        combo_object = router.check(CallRequest(combo=combo, messages=[]))
    except Exception:  # the combo was renamed or removed since: the default fallback kinds apply
        combo_object = None
    job = BatchJob(router, str(record["id"]), combo, fallback=str(record.get("fallback") or "live"),
                   created_at=float(record["created_at"]), targets=targets, rows=rows, inputs=inputs, schema=schema,
                   cache=bool(record.get("cache")), concurrency=int(record.get("concurrency") or DEFAULT_CONCURRENCY),
                   max_cost_usd=None if max_cost is None else Decimal(str(max_cost)), max_job_rows=record.get("max_job_rows"),
                   combo_object=combo_object)
    job.settled_at = record.get("settled_at")
    job.cancel_asked = bool(record.get("cancel_asked"))
    estimate = record.get("estimated_cost_usd")
    job.estimated_cost_usd = None if estimate is None else Decimal(str(estimate))
    job.parts = [Part(int(p["i"]), int(p["target"]), str(p["job"]), list(p["ids"]), float(p["at"]), state=str(p["state"]),
                      wire_status=str(p.get("wire") or ""), counts=dict(p.get("counts") or {}), collected=bool(p.get("collected")),
                      cancel_asked=bool(p.get("cancel")), note=str(p.get("note") or ""), poll_failures=int(p.get("fails") or 0))
                 for p in record.get("parts") or []]
    return job


def _restored_error(combo: str, row: Row) -> RouteError:
    reason = row.saved.get("reason")
    if isinstance(reason, str):
        return NotDone(reason)
    kind = row.saved.get("kind")
    last = next((a for a in reversed(row.attempts) if a.kind is not None), None)
    if kind and last is not None and ErrorKind(kind) not in DEFAULT_FALLBACK_ON:
        return StopError(combo, row.attempts, ErrorKind(kind), last.candidate)
    return AllTargetsFailed(combo, row.attempts)


class JobList(list[BatchJob]):
    """The recorded batch jobs, newest first; shows as a table."""

    def __init__(self, jobs: Iterable[BatchJob] = ()) -> None:
        super().__init__(jobs)

    def rows(self) -> list[list[str]]:
        out = []
        for job in self:
            c = job.counts
            out.append([job.id, job.combo, ", ".join(job.providers) or "-", "settled" if job.settled else "open",
                        f"{c['done']}/{len(job.rows)}", str(c["failed"]), str(c["pending"]), dollars(job.cost_usd)])
        return out

    def __str__(self) -> str:
        head = ["job", "combo", "targets", "state", "done", "failed", "pending", "cost"]
        rows = [head, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows) if self else "no batch jobs"

    def _repr_html_(self) -> str:
        head = ["job", "combo", "targets", "state", "done", "failed", "pending", "cost"]
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows())
        return f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{cells}</table>"


__all__ = ["FALLBACKS", "BatchJob", "JobList", "JobResult", "NoBatchTarget", "asubmit", "find", "listing", "plan_parts", "submit"]

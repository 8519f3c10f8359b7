"""Batch work: one prompt over a list or a DataFrame column, paced to every account's limit.

    items ─> BatchItem (prompt filled per item) ─> Dispatcher ──(what, when)──> Executor ──> outcomes
                                                   │ concurrency, batch budget,    │ runs one call
                                                   │ order, re-sends after a 429   │ (LocalExecutor: this
                                                   └ <── finish(item, outcome) ────┘  process's Router)

The dispatcher decides what is sent and when; the executor only runs calls. They meet through two
methods (`Dispatcher.next()` / `Dispatcher.finish()`) and one (`Executor.run(item)`), so the same
batch can later run on other workers (Ray, Dask) with the pacing shared elsewhere. Where each call
goes is the router's own decision (the combo's strategy), with the pacer's skip check ("paced: no
headroom now") keeping each account within its limits; see pacing.py.

Every item ends as exactly one entry of the BatchResult, in input order: a RouteResult, or a RouteError
(failed), or a `NotDone` (not sent: the batch budget or an interrupt; cancelled while in flight).
"""

from __future__ import annotations

import asyncio
import html
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..._core import Clock
from ..._core.clock import SYSTEM_CLOCK

from ..._core import ErrorKind
from ..._core.template import interpolate
from ..._core.text import dollars, duration
from ..errors import AllTargetsFailed, RouteError, StopError
from ..media import item_images
from ..state.pacing import MAX_WAIT_S, Lanes, Pacer
from ..requests import build_request
from ..structured import PANDAS_DTYPES, OutputSchema
from ..types import Action, RouteResult
from .port import (
    CANCELLED,
    NOT_SENT_BUDGET,
    NOT_SENT_DEADLINE,
    NOT_SENT_INTERRUPTED,
    BatchItem,
    BatchRouter,
    Executor,
    LocalExecutor,
    NotDone,
)


#: how many calls of one batch are in flight at once unless `concurrency=` says otherwise
DEFAULT_CONCURRENCY = 8
#: the columns `to_pandas()` adds after the answer (or the schema's fields)
RESULT_COLUMNS = ("served_by", "cost_usd", "latency_s", "attempts", "cached", "error")
#: how many of the slowest and of the failed items the summary names
SUMMARY_ROWS = 5


# ---- items -> requests ------------------------------------------------------------------------


def _is_pandas(obj: Any, name: str) -> bool:
    # pandas is never imported to find out: only a pandas object's own module says so
    return type(obj).__module__.split(".")[0] == "pandas" and type(obj).__name__ == name


@dataclass
class Inputs:
    """The batch's input, kept for the result's table: the values, the index, the kind."""

    values: list[Any]
    index: list[Any]
    #: "frame" (a DataFrame: values are row dicts), "series" (a Series: `name`), "items" (anything else)
    kind: str
    name: str | None = None
    columns: list[str] = field(default_factory=list)
    frame: Any = None


def read_items(items: Iterable[Any]) -> Inputs:
    """The items of a batch from any iterable, a pandas Series or a DataFrame (rows as dicts).

    Raises:
        TypeError: `items` is a string, bytes or a mapping (almost always a mistake: give a list).
    """
    if _is_pandas(items, "DataFrame"):
        frame: Any = items
        columns = [str(c) for c in frame.columns]
        rows = [dict(zip(columns, row)) for row in frame.itertuples(index=False, name=None)]
        return Inputs(rows, list(frame.index), "frame", columns=columns, frame=frame)
    if _is_pandas(items, "Series"):
        series: Any = items
        return Inputs(series.tolist(), list(series.index), "series", name=None if series.name is None else str(series.name))
    if isinstance(items, (str, bytes, Mapping)):
        raise TypeError(f"items must be a list, a pandas Series or DataFrame, or another iterable of items, not a {type(items).__name__}")
    values = list(items)
    return Inputs(values, list(range(len(values))), "items")


def fill(template: str, value: Any, name: str | None = None) -> str:
    """The prompt of one item: `{item}` is the item (also `{name}` for a named Series' values); `{column}`
    a field of a dict or DataFrame row. Other braces are left exactly as written (`_core.template`)."""
    namespace: dict[str, Any] = {"item": value}
    if name:
        namespace[name] = value
    if isinstance(value, Mapping):
        namespace.update((str(k), v) for k, v in value.items())
    return interpolate(template, namespace)


def build_items(combo: Any, inputs: Inputs, *, prompt: str | None, messages: Any, options: dict[str, Any]) -> list[BatchItem]:
    """One CallRequest per item, built before anything is sent (a bad template fails here, not mid-batch).

    Raises:
        TypeError: neither prompt nor messages for items that are not plain text, or `messages` of the wrong type.
    """
    out = []
    for i, value in enumerate(inputs.values):
        msgs = messages(value) if callable(messages) else messages
        if msgs is not None and not isinstance(msgs, list):
            raise TypeError(f"messages for item {i} must be a list of chat messages, not {type(msgs).__name__}")
        if prompt is not None:
            text: str | None = fill(prompt, value, inputs.name)
        elif msgs is None:
            if isinstance(value, Mapping):
                raise TypeError("give prompt= (a template such as 'Summarise: {text}') or messages= for rows and dicts")
            text = str(value)
        else:
            text = None
        item_options = options if options.get("images") is None else {**options, "images": item_images(options["images"], value, i)}
        out.append(BatchItem(i, value, build_request(combo, text, stream=False, messages=msgs, **item_options)))
    return out


# ---- the dispatcher: what to send, when --------------------------------------------------------


def _cost_of(outcome: RouteResult | RouteError) -> Decimal:
    if isinstance(outcome, RouteResult):
        return outcome.cost_usd or Decimal(0)
    return sum((a.cost_usd for a in outcome.attempts if a.cost_usd is not None), Decimal(0))


def _rate_limited_only(error: RouteError) -> bool:
    """Whether an error is only the pacing's misses: a 429, and every other candidate paced or cooling."""
    if not isinstance(error, AllTargetsFailed) or isinstance(error, StopError):
        return False
    tried = [a for a in error.attempts if a.action is not Action.SKIPPED]
    return bool(tried) and all(a.kind is ErrorKind.RATE_LIMIT for a in tried)


class Dispatcher:
    """Hands out the items to send, in input order, within the concurrency and the batch budget.

    Args:
        items: the batch's items.
        concurrency: at most this many in flight.
        max_cost_usd: the batch's budget; an item whose estimate would pass it is not sent.
        estimate: what one item may cost at most (0 for an answer already in the cache; None: unknown).
        deadline: the `clock.monotonic()` time after which nothing more is sent (None: no deadline).
        clock: where the deadline is read.
    """

    def __init__(self, items: Sequence[BatchItem], *, concurrency: int, max_cost_usd: float | None = None,
                 estimate: Callable[[BatchItem], Decimal | None] = lambda item: None, deadline: float | None = None,
                 clock: Clock | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self.deadline = deadline
        self.clock = clock
        self.budget = None if max_cost_usd is None else Decimal(str(max_cost_usd))
        self.estimate = estimate
        self.pending: deque[BatchItem] = deque(items)
        self.in_flight: dict[int, Decimal] = {}
        self.outcomes: dict[int, RouteResult | RouteError] = {}
        self.spent = Decimal(0)
        self.stopped: str | None = None
        #: every item's latency as the dispatcher saw it (send to finish), by position
        self.sent_at: dict[int, float] = {}

    def next(self) -> BatchItem | None:
        """The next item to send now, or None (all sent, at the concurrency, or waiting on the budget)."""
        if self.stopped or not self.pending or len(self.in_flight) >= self.concurrency:
            return None
        if self._past_deadline():
            self.stop(NOT_SENT_DEADLINE)
            return None
        item = self.pending[0]
        estimate = self.estimate(item) or Decimal(0)
        if self.budget is not None and self.spent + sum(self.in_flight.values(), Decimal(0)) + estimate > self.budget:
            if self.in_flight:
                return None  # what is in flight may cost less than reserved: ask again when it is back
            self.stop(NOT_SENT_BUDGET)
            return None
        self.pending.popleft()
        self.in_flight[item.position] = estimate
        item.sends += 1
        return item

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self.clock is not None and self.clock.monotonic() >= self.deadline

    def finish(self, item: BatchItem, outcome: RouteResult | RouteError) -> None:
        """Record how an item ended; one that only met rate limits goes back to the front of the queue.

        A 429 says "wait", not "this item cannot be done": such a send spends none of the item's tries, and
        the item is sent again (after the pacing's wait) for as long as the batch may go on; only a real
        failure, the batch's deadline or its budget (or an interrupt) ends an item without an answer."""
        self.in_flight.pop(item.position, None)
        self.spent += _cost_of(outcome)
        if isinstance(outcome, RouteError) and not self.stopped and not self._past_deadline() and _rate_limited_only(outcome):
            item.limited += 1
            item.earlier.extend(outcome.attempts)
            self.pending.appendleft(item)
            return
        if item.earlier:
            outcome.attempts[:0] = item.earlier
        self.outcomes[item.position] = outcome

    def cancelled(self, item: BatchItem) -> None:
        self.in_flight.pop(item.position, None)
        self.outcomes[item.position] = NotDone(CANCELLED)

    def stop(self, reason: str) -> None:
        """Send nothing more: every item not yet sent ends as `NotDone(reason)`."""
        self.stopped = self.stopped or reason
        while self.pending:
            self.outcomes[self.pending.popleft().position] = NotDone(reason)

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight


# ---- the executor: runs the calls --------------------------------------------------------------


async def drive(dispatcher: Dispatcher, executor: Executor, on_finish: Callable[[BatchItem], None] | None = None) -> bool:
    """Send what the dispatcher hands out through the executor until every item has ended.

    Returns False when it was cancelled (Ctrl-C, or the task cancelled): then nothing more is sent, the
    calls in flight are cancelled (their attempts are logged as cancelled) and what finished is kept.
    """
    tasks: dict[asyncio.Future[Any], BatchItem] = {}
    try:
        while True:
            item = dispatcher.next()
            while item is not None:
                tasks[asyncio.ensure_future(executor.run(item))] = item
                item = dispatcher.next()
            if not tasks:  # nothing in flight and nothing handed out: every item has ended
                return True
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                item = tasks.pop(task)
                dispatcher.finish(item, task.result())
                if on_finish is not None:
                    on_finish(item)
    except asyncio.CancelledError:
        dispatcher.stop(NOT_SENT_INTERRUPTED)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task, item in tasks.items():
            if task.cancelled() or task.exception() is not None:
                dispatcher.cancelled(item)
            else:
                dispatcher.finish(item, task.result())
        current = asyncio.current_task()
        if current is not None and hasattr(current, "uncancel"):
            current.uncancel()  # the cancel was answered: the batch returns what finished
        return False


# ---- the result ------------------------------------------------------------------------------


@dataclass
class FailedItem:
    """An item without an answer: its position in the input, the item, and why."""

    position: int
    item: Any
    error: RouteError


class BatchResult(Sequence[Any]):
    """One entry per item, in input order: a RouteResult, or the item's RouteError (a `NotDone` for
    items not sent or cancelled). Shows a summary in a notebook; `to_pandas()` is the table.

    Args:
        entries: the outcome of each item, in input order.
        inputs: the batch's input (its values, index and kind).
        combo: the combo's name.
        elapsed_s: the batch's wall time.
        interrupted: stopped by Ctrl-C or a cancel before every item was sent.
        schema: the answers' schema, when the batch had one (its fields become columns).
        rerun: sends the items at the given positions again (`retry_failed`).
    """

    def __init__(self, entries: list[RouteResult | RouteError], inputs: Inputs, *, combo: str, elapsed_s: float,
                 interrupted: bool, schema: OutputSchema | None, rerun: Callable[[list[int]], BatchResult] | None = None) -> None:
        self.entries = entries
        self.inputs = inputs
        self.combo = combo
        self.elapsed_s = elapsed_s
        self.interrupted = interrupted
        self.schema = schema
        self._rerun = rerun

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: Any) -> Any:
        return self.entries[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)

    # ---- what it holds ---------------------------------------------------------------------

    @property
    def results(self) -> list[RouteResult]:
        return [e for e in self.entries if isinstance(e, RouteResult)]

    @property
    def texts(self) -> list[str | None]:
        """The answer of each item (None where there is none)."""
        return [e.text if isinstance(e, RouteResult) else None for e in self.entries]

    @property
    def parsed(self) -> list[Any]:
        """The validated answer of each item of a batch with `schema=` (None where there is none)."""
        return [e.parsed if isinstance(e, RouteResult) else None for e in self.entries]

    @property
    def failed(self) -> list[FailedItem]:
        """The items that were sent and failed."""
        return [FailedItem(i, self.inputs.values[i], e) for i, e in enumerate(self.entries)
                if isinstance(e, RouteError) and not isinstance(e, NotDone)]

    @property
    def not_done(self) -> list[FailedItem]:
        """The items never sent (budget, interrupt) or cancelled in flight."""
        return [FailedItem(i, self.inputs.values[i], e) for i, e in enumerate(self.entries) if isinstance(e, NotDone)]

    @property
    def done(self) -> int:
        return sum(1 for e in self.entries if isinstance(e, RouteResult))

    @property
    def cost_usd(self) -> Decimal:
        """What the batch cost (known costs; a cached answer costs nothing now)."""
        return sum((_cost_of(e) for e in self.entries), Decimal(0))

    @property
    def served_by_counts(self) -> dict[str, int]:
        """How many answers each candidate served now; answers from the cache count under `cached`."""
        counts = Counter("cached" if e.cached is not None else e.served_by for e in self.results)
        return dict(counts.most_common())

    def retry_failed(self) -> BatchResult:
        """Send again every item without an answer (failed, not sent, cancelled); the answers kept are
        reused. Returns a new BatchResult of the whole input."""
        missing = [i for i, e in enumerate(self.entries) if isinstance(e, RouteError)]
        if self._rerun is None:
            raise RuntimeError("this BatchResult was not made by Router.map")
        return self._rerun(missing)

    # ---- the table ----------------------------------------------------------------------------

    def _input_names(self) -> dict[str, str]:
        """The input's column names in the table: one that an output column also has (`text` is a common
        name of a DataFrame's column) becomes `input_<name>`."""
        outputs = {*(self.schema.fields if self.schema is not None else {"text": None}), *RESULT_COLUMNS}
        names = self.inputs.columns if self.inputs.kind == "frame" else [self.inputs.name or "item"]
        return {n: f"input_{n}" if n in outputs else n for n in names}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per item: the input's fields, the answer (or the schema's fields), who, cost, time."""
        out = []
        fields = self.schema.fields if self.schema is not None else {}
        names = self._input_names()
        for i, e in enumerate(self.entries):
            value = self.inputs.values[i]
            if self.inputs.kind == "frame":
                row: dict[str, Any] = {names[k]: v for k, v in value.items()}
            else:
                row = {names[self.inputs.name or "item"]: value}
            if self.schema is not None:
                parsed = self.schema.row(e.parsed) if isinstance(e, RouteResult) else {}
                row.update({name: parsed.get(name) for name in fields})
            else:
                row["text"] = e.text if isinstance(e, RouteResult) else None
            row["served_by"] = e.served_by if isinstance(e, RouteResult) else None
            cost = e.cost_usd if isinstance(e, RouteResult) else _cost_of(e)
            row["cost_usd"] = None if cost is None else float(cost)
            row["latency_s"] = e.latency_s if isinstance(e, RouteResult) else None
            row["attempts"] = sum(1 for a in e.attempts if a.action is not Action.SKIPPED)
            row["cached"] = isinstance(e, RouteResult) and e.cached is not None
            row["error"] = None if isinstance(e, RouteResult) else _error_text(e)
            out.append(row)
        return out

    def to_pandas(self) -> Any:
        """A DataFrame: the input's columns, `text` or the schema's fields (typed), `served_by`,
        `cost_usd`, `latency_s`, `attempts`, `cached`, `error`; the input's index when it had one."""
        import pandas as pd

        rows = self.rows()
        frame = pd.DataFrame(rows, index=self.inputs.index if self.inputs.kind != "items" else None)
        if self.inputs.kind == "frame" and self.inputs.frame is not None:
            for col, name in self._input_names().items():  # the input's own dtypes, not a guess from dicts
                frame[name] = self.inputs.frame[col].to_numpy()
        if self.schema is not None:
            for name, kind in self.schema.fields.items():
                dtype = PANDAS_DTYPES.get(kind or "")
                if dtype is not None and name in frame.columns:
                    frame[name] = pd.array([v if v is not None else None for v in frame[name].tolist()], dtype=dtype)
        frame["cost_usd"] = pd.array(frame["cost_usd"].tolist(), dtype="Float64")
        frame["latency_s"] = pd.array(frame["latency_s"].tolist(), dtype="Float64")
        frame["attempts"] = frame["attempts"].astype("int64")
        frame["cached"] = frame["cached"].astype(bool)
        return frame

    # ---- the summary --------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        n = len(self.entries)
        done, failed, not_done = self.done, self.failed, self.not_done
        cached = sum(1 for e in self.results if e.cached is not None)
        head = f"batch over {self.combo!r}: {n} item{'s' if n != 1 else ''} · {done} done"
        if cached:
            head += f" ({cached} from the cache)"
        head += f" · {len(failed)} failed"
        if not_done:
            reasons = Counter(e.error.reason for e in not_done if isinstance(e.error, NotDone))
            head += " · " + " · ".join(f"{k} {r}" for r, k in reasons.items())
        if self.interrupted:
            head += " · INTERRUPTED"
        rate = done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [head, f"cost {dollars(self.cost_usd)} · {duration(self.elapsed_s)} · {rate:.1f} items/s"]
        counts = self.served_by_counts
        if counts:
            lines.append("served by: " + " · ".join(f"{who} {k}" for who, k in counts.items()))
        fresh = sorted((e.latency_s, i, e.served_by) for i, e in enumerate(self.entries) if isinstance(e, RouteResult) and e.cached is None)
        if fresh:
            lines.append("slowest: " + " · ".join(f"#{i} {duration(s)} ({who})" for s, i, who in fresh[::-1][:SUMMARY_ROWS]))
        for f in failed[:SUMMARY_ROWS]:
            lines.append(f"failed #{f.position}: {_error_text(f.error)}")
        if len(failed) > SUMMARY_ROWS:
            lines.append(f"... and {len(failed) - SUMMARY_ROWS} more failed (BatchResult.failed)")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    def __repr__(self) -> str:
        return f"<BatchResult {self.summary_lines()[0]}>"

    def _repr_html_(self) -> str:
        lines = self.summary_lines()
        body = "".join(f"<div>{html.escape(line)}</div>" for line in lines[1:])
        return f'<div class="nbrouter-batch"><b>{html.escape(lines[0])}</b>{body}</div>'

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        bundle = {"text/plain": str(self), "text/html": self._repr_html_()}
        if include:
            bundle = {k: v for k, v in bundle.items() if k in include}
        if exclude:
            bundle = {k: v for k, v in bundle.items() if k not in exclude}
        return bundle


def _error_text(error: RouteError) -> str:
    if isinstance(error, NotDone):
        return error.reason
    tried = [a for a in error.attempts if a.action is not Action.SKIPPED]
    last = tried[-1] if tried else (error.attempts[-1] if error.attempts else None)
    if last is None:
        return str(error).splitlines()[0][:160]
    kind = last.kind.value if last.kind else last.action.value
    return f"{kind}: {last.message}"[:160]


# ---- Router.map / Router.amap -------------------------------------------------------------------

def pacer_for(router: BatchRouter) -> Pacer:
    """The router's pacer: every call's, over the shared store (learned limits outlive one batch)."""
    return router.pacer


class Progress:
    """Where a running batch stands, for a progress display (`progress=` callable gets one per item)."""

    def __init__(self, total: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.cost_usd = Decimal(0)
        self._clock = clock  # the router's: elapsed time agrees with its holds (a test's ManualClock)
        self.started = clock.monotonic()

    @property
    def elapsed_s(self) -> float:
        return self._clock.monotonic() - self.started

    def text(self) -> str:
        rate = self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return f"done {self.done} · failed {self.failed} · {rate:.1f}/s · {dollars(self.cost_usd)}"


def _progress_sink(progress: Any, total: int) -> tuple[Callable[[Progress], None] | None, Callable[[], None]]:
    """(called after each item, called at the end) for `progress=`: None/False, True (a tqdm bar), or a callable."""
    if not progress:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    from tqdm.auto import tqdm  # the notebook's usual bar (a widget in Jupyter, text in a terminal)

    bar = tqdm(total=total, unit="item")

    def update(p: Progress) -> None:
        bar.n = p.done + p.failed
        bar.set_postfix_str(f"failed {p.failed} · {dollars(p.cost_usd)}", refresh=False)
        bar.refresh()

    return update, bar.close


class Batch:
    """One run of `map`: its items, dispatcher and executor; `stop()` may be called from any thread."""

    def __init__(self, router: BatchRouter, combo: Any, inputs: Inputs, items: list[BatchItem], *, concurrency: int,
                 max_cost_usd: float | None, progress: Any, executor: Executor | None = None,
                 deadline_s: float | None = None) -> None:
        self.router = router
        self.deadline_s = deadline_s
        self.combo = combo
        self.inputs = inputs
        self.items = items
        self.concurrency = concurrency
        self.max_cost_usd = max_cost_usd
        self.progress = progress
        self.executor = executor or LocalExecutor(router)
        self._task: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked = False

    def _estimate(self, item: BatchItem) -> Decimal | None:
        """The most this item may cost: 0 when its answer is cached, else the dearest candidate's estimate."""
        return self.router.estimate(item.request)

    async def run(self) -> BatchResult:
        """Run every item; returns the BatchResult (also after `stop()` or a cancel: what finished)."""
        router = self.router
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        await router.discover()
        clock = router.clock
        started = clock.monotonic()
        deadline = None if self.deadline_s is None else clock.monotonic() + self.deadline_s
        dispatcher = Dispatcher(self.items, concurrency=self.concurrency, max_cost_usd=self.max_cost_usd,
                                estimate=self._estimate if self.max_cost_usd is not None else (lambda item: None),
                                deadline=deadline, clock=clock)
        state = Progress(len(self.items), clock)
        update, close = _progress_sink(self.progress, len(self.items))

        def on_finish(item: BatchItem) -> None:
            outcome = dispatcher.outcomes.get(item.position)
            if outcome is None:
                return  # sent again
            if isinstance(outcome, RouteResult):
                state.done += 1
            else:
                state.failed += 1
            state.cost_usd += _cost_of(outcome)
            if update is not None:
                update(state)

        if self._stop_asked:
            dispatcher.stop(NOT_SENT_INTERRUPTED)
        try:
            completed = await drive(dispatcher, self.executor, on_finish)
        finally:
            close()
            finish = getattr(self.executor, "close", None)  # a cluster's executor lets go of the batch
            if callable(finish):
                finish()
        entries = [dispatcher.outcomes.get(i) or NotDone(NOT_SENT_INTERRUPTED) for i in range(len(self.items))]
        name = next((e.combo for e in entries if isinstance(e, RouteResult)), None)
        combo_name: str = name or (self.combo if isinstance(self.combo, str) else str(getattr(self.combo, "name", "combo")))
        schema = self.items[0].request.schema if self.items else None
        return BatchResult(entries, self.inputs, combo=combo_name, elapsed_s=router.clock.monotonic() - started,
                           interrupted=not completed or dispatcher.stopped == NOT_SENT_INTERRUPTED, schema=schema,
                           rerun=self._rerun)

    def stop(self) -> None:
        """Stop dispatching and cancel what is in flight (thread-safe); `run()` then returns what finished."""
        self._stop_asked = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not task.done():
            loop.call_soon_threadsafe(task.cancel)

    def _rerun(self, positions: list[int]) -> BatchResult:
        """Run the given items again (the rest come from the cache or are kept) and merge."""
        wanted = set(positions)
        previous = self._previous
        items = [replace(item, earlier=[], sends=0) for item in self.items if item.position in wanted]
        for new_pos, item in enumerate(items):
            item.position = new_pos
        again = Batch(self.router, self.combo, Inputs([i.value for i in items], list(range(len(items))), "items"), items,
                      concurrency=self.concurrency, max_cost_usd=self.max_cost_usd, progress=self.progress,
                      executor=self.executor, deadline_s=self.deadline_s)  # on the cluster the batch ran on, if any
        result = run_sync(self.router, again)
        entries = list(previous.entries)
        for new_pos, old_pos in enumerate(sorted(wanted)):
            entries[old_pos] = result.entries[new_pos]
        merged = BatchResult(entries, self.inputs, combo=previous.combo, elapsed_s=result.elapsed_s,
                             interrupted=result.interrupted, schema=previous.schema, rerun=self._rerun)
        self._previous = merged
        return merged

    _previous: BatchResult


def prepare(router: BatchRouter, combo: Any, items: Iterable[Any], *, prompt: str | None = None, messages: Any = None,
            system: str | None = None, schema: Any = None, concurrency: int | None = None,
            account_concurrency: int | Mapping[str, int] | None = None, max_cost_usd: float | None = None,
            cache: bool | None = None, progress: Any = None, executor: Any = None,
            deadline_s: float | None = None, **call_options: Any) -> Batch:
    """Check the arguments of `Router.map` and build its Batch (nothing is sent yet).

    Args:
        router: the Router the batch runs on.
        combo: as for `Router.complete`.
        items: a list (any iterable), a pandas Series or a DataFrame (one call per row).
        prompt: a template: `{item}`, or `{column}` of a row or a dict; other braces stay as written.
        messages: a list of chat messages, or a function of the item that returns one.
        system: the system prompt of every call.
        schema: a JSON schema or pydantic model each answer must match; its fields become columns.
        images (in call_options): each item's images: the name of a column of a row or dict (a path, bytes,
            a URL, a figure, or a list of them), "item" for the item itself, or a function of the item.
        concurrency: calls in flight at once (default `DEFAULT_CONCURRENCY`).
        account_concurrency: calls in flight per account (a number, or one per account key).
        max_cost_usd: the whole batch's budget.
        cache: answer from the response cache and store answers (default: on unless `log_content = false`).
        progress: True for a `tqdm.auto` bar, or a callable given a `Progress` after each item.
        executor: what runs the calls: a `distributed.Client` (Dask), "ray" (or a Ray handle) for the
            connected Ray cluster, or any `Executor`; default `LocalExecutor`, this process's router.
        deadline_s: the batch's deadline, seconds from its start on the router's clock: items that met only
            rate limits are sent again until then (without one, for as long as their waits take), and an
            item not sent by then ends as `NotDone("not sent: batch deadline")`.
        **call_options: any option of `Router.acomplete` (not `stream`).

    Raises:
        TypeError: an unknown option, or items/prompt/messages that do not fit together.
        ComboConfigError: the combo does not exist or cannot be resolved.
    """
    if call_options.get("stream"):
        raise TypeError("map does not stream: each item's answer is whole")
    call_options.pop("stream", None)
    if cache is None:
        cache = router.config.log_content  # log_content = false: answers are not stored unless asked for
    inputs = read_items(items)
    options = dict(call_options, system=system, schema=schema, cache=bool(cache))
    built = build_items(combo, inputs, prompt=prompt, messages=messages, options=options)
    lanes = Lanes("batch", MAX_WAIT_S if deadline_s is None else deadline_s, account_concurrency)
    for item in built:
        item.request.pacer = lanes
    if built:
        router.check(built[0].request)  # an unknown combo fails now, not once per item
    if executor is not None:
        from .cluster import executor_for  # Dask and Ray load only for a batch that names them

        executor = executor_for(executor, router)
    limit = concurrency if concurrency is not None else getattr(executor, "concurrency", None) or DEFAULT_CONCURRENCY
    if limit < 1:
        raise ValueError(f"concurrency must be at least 1, not {limit}")
    if deadline_s is not None and deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, not {deadline_s}")
    batch = Batch(router, combo, inputs, built, concurrency=limit, max_cost_usd=max_cost_usd, progress=progress,
                  executor=executor, deadline_s=deadline_s)
    return batch


async def arun(batch: Batch) -> BatchResult:
    """Run a batch on the caller's event loop (`Router.amap`)."""
    result = await batch.run()
    batch._previous = result
    return result


def run_sync(router: BatchRouter, batch: Batch) -> BatchResult:
    """Run a batch on the router's own loop and wait (`Router.map`); Ctrl-C stops it and returns what finished."""
    bg = router.background
    if bg.in_loop_thread():
        raise RuntimeError("Router.map was called from the router's own loop; use amap")
    future, finished = bg.submit(arun(batch))
    try:
        return future.result()
    except KeyboardInterrupt:
        batch.stop()
        finished.wait(10.0)
        return future.result(timeout=10.0)


# the executor port's names, where batch work has always offered them (port.py holds them, so that an
# executor can use them without importing the dispatcher that chooses it)
__all__ = ["BatchItem", "BatchResult", "BatchRouter", "CANCELLED", "DEFAULT_CONCURRENCY", "Dispatcher", "Executor",
           "LocalExecutor", "NOT_SENT_BUDGET", "NOT_SENT_DEADLINE", "NOT_SENT_INTERRUPTED", "NotDone", "prepare"]

"""A batch on a cluster: `map(..., executor=client)` (Dask), `executor="ray"`, or any `Executor`.

    driver (this process)                                      workers (Dask or Ray processes)
    Dispatcher ─ what, when: order, budget, re-sends ─┐
    ClusterExecutor.run(item) ─ the cache answers     │ chunks (bytes: requests, no pacer, no key)
      what it holds; the rest are gathered into   ────┼──────────────> run_chunk: the worker's own Router
      chunks and shipped through the Engine           │                 runs the chunk's calls at once
    outcomes as each item completes (streamed), <────┘ outcomes (bytes), per item as they finish
      stored in the cache, counted in the budget,         (a streaming engine) and with the chunk
      progress

The driver keeps every decision of the batch (`dispatch.Dispatcher`), so the order, the batch budget,
the progress bar and Ctrl-C behave as locally; workers only run calls. Items go out in chunks, each
chunk's calls running concurrently on one worker's event loop, so the cluster's scheduling costs one
task per chunk rather than per call (`DEFAULT_CHUNK`, measured in benchmarks/bench_cluster.py).

A worker lost mid-chunk: the chunk's items that have no answer are sent again elsewhere (Dask does it
itself, the executor otherwise, up to `RESUBMIT_LIMIT` times); an answer that reached the driver is never
asked for again, and one the lost worker had stored in the shared response cache is answered from it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import RouteError
from ..types import RouteResult
from .port import CANCELLED, BatchItem, BatchRouter, Executor, LocalExecutor, NotDone
from .engines import Engine, OnItems, Running, engine_for
from .worker import Chunk, ChunkFailed, WorkerError, WorkerLost, check_shipped, keys_of, pack, spec_for, unpack

#: items per chunk: ~16 makes the cluster's per-task cost small against the calls (bench_cluster.py)
DEFAULT_CHUNK = 16
#: chunks in flight per slot: one running and one waiting, so a worker never idles between chunks
CHUNKS_PER_SLOT = 2
#: how many times the items of a lost chunk are sent again before they fail with `WorkerLost`
RESUBMIT_LIMIT = 3
#: how long a stopped batch (Ctrl-C) waits for its running chunks to send back what finished
STOP_WAIT_S = 5.0

Outcome = RouteResult | RouteError


@dataclass
class _Entry:
    """One item waiting for its outcome from the cluster."""

    item: BatchItem
    waiter: asyncio.Future[Outcome]
    run: _Run | None = None
    #: the batch stopped while this item was out: its chunk is asked to stop once none of its items is wanted
    stopping: bool = False


@dataclass
class _Run:
    """One chunk on the cluster: its entries in the order shipped, and how many times it was sent."""

    entries: list[_Entry]
    sends: int = 1
    running: Running | None = None
    landed: asyncio.Future[bytes] | None = field(default=None, repr=False)


class ClusterExecutor:
    """Runs a batch's calls on a cluster's workers, in chunks; an `Executor` (`run(item)`).

    Args:
        router: the driver's Router (its configuration, state file and cache path go to the workers as data).
        engine: where the chunks run (`engines.DaskEngine`, `engines.RayEngine`, or another `Engine`).
        chunk_size: items per chunk (default `DEFAULT_CHUNK`).
    """

    def __init__(self, router: BatchRouter, engine: Engine, *, chunk_size: int | None = None, stream: bool = True) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
        self.router = router
        self.engine = engine
        self.chunk_size = chunk_size or DEFAULT_CHUNK
        #: the engine's `stream`, when it has one and streaming is wanted: items come back as they finish
        self._stream: Callable[[bytes, bytes, OnItems], Running] | None = getattr(engine, "stream", None) if stream else None
        #: the batch's default concurrency: every slot busy with one chunk and one more waiting
        self.concurrency = engine.slots() * self.chunk_size * CHUNKS_PER_SLOT
        self._keys = keys_of(router.config)
        self._spec: bytes | None = None
        self._buffer: list[_Entry] = []
        self._flush_due = False
        self._stopped = False
        self._local = LocalExecutor(router)
        #: chunks shipped, chunks sent again after a worker was lost, items answered here from the cache
        self.chunks = 0
        self.resent = 0
        self.cached = 0

    # ---- the Executor port ----------------------------------------------------------------------

    async def run(self, item: BatchItem) -> Outcome:
        """Run one item: from the cache here when it holds the answer, else in the next chunk."""
        request, router = item.request, self.router
        if request.cache and router.cache.contains(router.cache_key(request), router.clock.time()):
            self.cached += 1
            return await self._local.run(item)  # the router logs the cached answer; nothing is shipped
        entry = _Entry(item, asyncio.get_running_loop().create_future())
        self._buffer.append(entry)
        if not self._flush_due:  # after this turn of the loop: every item handed out now is buffered by then
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            return await asyncio.shield(entry.waiter)
        except asyncio.CancelledError:  # the batch stops (Ctrl-C): an answer that arrives in time is kept
            outcome = await self._last_word(entry)
            if outcome is None:
                raise
            return outcome  # its answer, or NotDone saying whether its call had started

    def check(self) -> None:
        """Build what every chunk carries about the driver now, before anything is sent.

        Raises:
            KeyLeak: it would hold an account's key (a key in the configuration's headers, say).
        """
        self._spec_data()

    def close(self) -> None:
        """The batch has ended: the engine drops what it kept for it, and a next batch on this executor starts
        afresh (its spec built again: the configuration may have changed)."""
        self.engine.close()
        self._stopped = False
        self._spec = None

    # ---- chunks out -------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_due = False
        entries, self._buffer = self._buffer, []
        if not entries:
            return
        count = -(-len(entries) // self.chunk_size)
        size = -(-len(entries) // count)  # equal chunks: 20 items at 16 go as 10 + 10, not 16 + 4
        for i in range(0, len(entries), size):
            self._ship(_Run(entries[i:i + size]))

    def _spec_data(self) -> bytes:
        if self._spec is None:
            self._spec = check_shipped(pack(spec_for(self.router)), self._keys)
        return self._spec

    def _ship(self, run: _Run) -> None:
        for entry in run.entries:
            entry.run = run
        requests = tuple(e.item.request for e in run.entries)
        chunk = Chunk(tuple(e.item.position for e in run.entries), requests, pacing=requests[0].pacer,
                      stop=self.engine.stop_check())
        try:
            data = check_shipped(pack(chunk), self._keys)
            if self._stream is not None:
                loop = asyncio.get_running_loop()
                run.running = self._stream(self._spec_data(), data, lambda items: _on_loop(loop, self._reported, run, items))
            else:
                run.running = self.engine.submit(self._spec_data(), data)
        except Exception as exc:  # refused (a key), or the cluster would not take it: the items fail, the batch goes on
            self._settle(run, _failure(exc))
            return
        self.chunks += 1
        run.landed = asyncio.wrap_future(run.running.future)
        run.landed.add_done_callback(lambda landed: self._landed(run, landed))

    # ---- outcomes back ----------------------------------------------------------------------------

    def _reported(self, run: _Run, items: list[tuple[int, Outcome]]) -> None:
        """Items of a running chunk that finished (a streaming engine): each outcome is the item's now."""
        for index, outcome in items:
            entry = run.entries[index] if 0 <= index < len(run.entries) else None
            if entry is not None and not entry.waiter.done():
                self._record(entry.item, outcome)
                entry.waiter.set_result(outcome)

    def _landed(self, run: _Run, landed: asyncio.Future[bytes]) -> None:
        live = [e for e in run.entries if not e.waiter.done()]
        if not live:
            return
        error = landed.exception() if not landed.cancelled() else asyncio.CancelledError()
        if error is None:
            outcomes: list[Outcome] = unpack(landed.result())
            for entry, outcome in zip(run.entries, outcomes):
                if not entry.waiter.done():
                    self._record(entry.item, outcome)
                    entry.waiter.set_result(outcome)
            live = [e for e in run.entries if not e.waiter.done()]
            if not live:
                return
            error = ChunkShort(f"a chunk of {len(run.entries)} came back with {len(outcomes)} outcomes")
        if self._stopped:  # dropped by the engine on the way out: nothing of it came back
            self._settle(_Run(live), NotDone(CANCELLED))
            return
        if isinstance(error, ChunkFailed) or run.sends > RESUBMIT_LIMIT:
            self._settle(_Run(live), _failure(error, lost=not isinstance(error, ChunkFailed)))
            return
        # the worker was lost (killed, its machine gone): what has no answer goes to another worker
        self.resent += 1
        again = _Run(live, sends=run.sends + 1)
        self._ship(again)

    def _record(self, item: BatchItem, outcome: Outcome) -> None:
        """An outcome from a worker, kept where a local call keeps it: the answer in the driver's response
        cache (a second run sends only what is missing), the cost in the session budget."""
        router = self.router
        router.budget.record(outcome.attempts)
        if isinstance(outcome, RouteResult) and item.request.cache and outcome.cached is None and not outcome.partial:
            router.cache.put(router.cache_key(item.request), outcome, router.clock.time())

    @staticmethod
    def _settle(run: _Run, error: RouteError) -> None:
        for entry in run.entries:
            if not entry.waiter.done():
                entry.waiter.set_result(error)

    # ---- Ctrl-C ---------------------------------------------------------------------------------

    async def _last_word(self, entry: _Entry) -> Outcome | None:
        """The outcome of an item whose batch stopped: its chunk is asked to stop (once none of its items is
        wanted) and sends back what finished; None when nothing came back within STOP_WAIT_S."""
        if entry in self._buffer:  # never shipped
            self._buffer.remove(entry)
            return None
        run = entry.run
        if run is None or run.running is None:
            return entry.waiter.result() if entry.waiter.done() and not entry.waiter.cancelled() else None
        self._stopped = True
        entry.stopping = True
        if all(e.stopping or e.waiter.done() for e in run.entries):
            run.running.stop()
        try:
            return await asyncio.wait_for(asyncio.shield(entry.waiter), STOP_WAIT_S)
        except asyncio.TimeoutError:  # the worker does not answer: give up on the chunk
            run.running.cancel()
            return None


class ChunkShort(Exception):
    """A chunk ended without an outcome for some of its items (a stream cut short): they are sent again."""


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Call `fn(*args)` on the batch's loop, from an engine's thread; nothing once that loop has closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the batch has ended: the chunk's own result settles what is left, or no one waits
        pass


def _failure(error: BaseException, *, lost: bool = False) -> RouteError:
    text = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    if lost:
        return WorkerLost(f"the worker running this item was lost, {RESUBMIT_LIMIT} times ({type(error).__name__}: {text})")
    if isinstance(error, RouteError):
        return error
    return WorkerError(text)


def executor_for(value: Any, router: BatchRouter) -> Executor:
    """What `map(executor=value)` runs on: a Dask client or "ray" (a Ray handle) becomes a ClusterExecutor,
    an `Executor` is used as it is.

    Raises:
        TypeError: `value` is none of those.
        KeyLeak: what would be shipped holds an account's key.
    """
    if isinstance(value, ClusterExecutor):
        value.check()
        return value
    engine = engine_for(value)
    if engine is not None:
        made = ClusterExecutor(router, engine)
        made.check()
        return made
    if callable(getattr(value, "run", None)):
        executor: Executor = value
        return executor
    raise TypeError(f"executor must be a distributed.Client, \"ray\", or an object with an async run(item) method, "
                    f"not {type(value).__name__}")


__all__ = ["CHUNKS_PER_SLOT", "ClusterExecutor", "DEFAULT_CHUNK", "RESUBMIT_LIMIT", "executor_for"]

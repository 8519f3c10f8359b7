"""A cluster worker's side of a batch: its own Router, built from the driver's configuration, running chunks.

    driver: WorkerSpec (the configuration as data, where the state and the cache are; no key) ─┐ bytes
            a chunk (positions, CallRequests without their pacer, the batch's lane) ──────────┤
    worker: run_chunk(spec, chunk) ─> this process's Router for that spec ─> every call of the
            chunk at once on the Router's own loop, paced over the shared store ─> outcomes (bytes)

Everything crosses as bytes the driver packed itself (`pack`), so what is shipped can be checked: the
driver refuses to ship bytes that hold any account's key (`KeyLeak`). A worker reads its keys from its
own environment or key command, as any Router does; a worker without a key fails its items with the
usual "no key" skip. A worker's Router is made once per process and spec, and kept for later chunks
(its HTTP connections and what it learned outlive one chunk).

Pacing: a worker's Router paces over the shared store like any Router (state/pacing.py), so the driver
and every worker take from each account's one limit: on one machine through the same SQLite state file
(its path is in the spec), across machines through Redis (`[state] url` in the configuration, or
`NBROUTER_STATE_URL` in the workers' environment).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import importlib
import pickle
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..._core.secrets import scrub
from ..errors import RouteError
from ..model import QUOTA_FIELDS, Account, Config, Provider
from ..requests import CallRequest, Pacing
from ..run.cache import MEMORY, ResponseCache
from ..types import RouteResult
from .port import CANCELLED, NOT_SENT_INTERRUPTED, BatchRouter, NotDone

#: how often a running chunk looks whether the driver asked it to stop (an engine without a cancel of its own)
STOP_POLL_S = 0.5
#: how long a chunk told to stop waits for its calls to record their cancel before it returns
STOP_GRACE_S = 2.0
#: a chunk hands on its finished items at most this often (those of one interval go together): each report
#: costs a message to the driver, so items that finish close together share one, while the driver still
#: hears of each within this long (bench_cluster.py measures both)
REPORT_EVERY_S = 0.1
#: the worker's Routers kept per process (one per configuration; the oldest is closed past this)
ROUTERS_KEPT = 4

Outcome = RouteResult | RouteError


class KeyLeak(RuntimeError):
    """What the driver was about to ship to a cluster holds an account's key; nothing was shipped."""


class WorkerError(RouteError):
    """An item's call raised something other than a RouteError on a worker (its type and message, scrubbed)."""


class ChunkFailed(Exception):
    """A chunk could not run at all on a worker (nbrouter missing there, a value that does not unpickle);
    its items fail with this message rather than being sent again and again."""


class WorkerLost(RouteError):
    """The worker running an item was lost, and so were the workers it was given to next."""


# ---- what is shipped ---------------------------------------------------------------------------


def pack(value: Any) -> bytes:
    """The bytes that carry `value` to a worker or back: cloudpickle where installed (it ships classes
    defined in a notebook, such as a pydantic schema, by value), else pickle."""
    try:
        cloudpickle: Any = importlib.import_module("cloudpickle")
    except ImportError:  # neither Dask nor Ray is installed: a custom executor's own processes
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def unpack(data: bytes) -> Any:
    """The value `pack` made the bytes of."""
    return pickle.loads(data)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its own Router: data only, never a key.

    Args:
        factory: the class of the driver's Router (pickled by reference: the worker imports it).
        config: the driver's configuration as a dict of the config file's shape (providers found in the
            environment or on local ports written out as tables, naming their key variables only).
        state_path: the driver's state file (the same file on one machine; None: the worker's default).
        persist: False when the driver keeps its state in memory (each worker then does too).
        cache_path: the driver's response cache file (None: in memory).
    """

    factory: Callable[..., Any]
    config: dict[str, Any]
    state_path: str | None
    persist: bool
    cache_path: str | None


@dataclass(frozen=True)
class Chunk:
    """Items of a batch that go to one worker together: their positions and requests (no pacer)."""

    positions: tuple[int, ...]
    requests: tuple[CallRequest, ...]
    #: how the calls are paced (`map`'s `state.pacing.Lanes`: the batch lane, its wait, account_concurrency)
    pacing: Pacing | None = None
    #: asked every STOP_POLL_S while the chunk runs; True stops it (None: the engine cancels by itself)
    stop: Callable[[], bool] | None = None


def spec_for(router: BatchRouter) -> WorkerSpec:
    """The WorkerSpec of a driver's Router."""
    state = router.state
    persist = state.persistent
    cache = router.cache
    return WorkerSpec(
        factory=type(router), config=config_data(router.config),
        state_path=str(state.path) if persist and state.path is not None else None, persist=persist,
        cache_path=None if cache.path == MEMORY else str(cache.path),
    )


def config_data(config: Config) -> dict[str, Any]:
    """A configuration as a dict of the config file's shape, from which a worker builds the same Router.

    A config file or dict is given back as read; providers that zero-config found (a key variable set,
    a local server listening) are written out as tables naming their key variable, never its value.
    """
    data = copy.deepcopy(config.raw)
    # a worker keeps no budget: the driver counts what the workers spent (a shared one would count it twice)
    data.pop("budget", None)
    tables = data.setdefault("providers", {})
    for name, provider in config.providers.items():
        if name not in tables:
            tables[name] = _provider_table(provider)
    return data


def _provider_table(provider: Provider) -> dict[str, Any]:
    table: dict[str, Any] = {"protocol": provider.protocol, "base_url": provider.base_url, "models": list(provider.models)}
    if provider.preset:
        table["preset"] = provider.preset
    if provider.local:
        table["local"] = True
    if provider.prices_id:
        table["prices_id"] = provider.prices_id
    if provider.headers:
        table["headers"] = dict(provider.headers)
    if len(provider.accounts) == 1 and provider.accounts[0].name == "default":
        table.update(_account_fields(provider.accounts[0]))
    else:
        table["accounts"] = [{"name": acc.name, **_account_fields(acc)} for acc in provider.accounts]
    return table


def _account_fields(acc: Account) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if acc.api_key_env:
        out["api_key_env"] = acc.api_key_env
    if acc.key_source is not None:
        if acc.key_source.command:
            out["api_key_command"] = list(acc.key_source.command)
        else:
            out["api_key_provider"] = acc.key_source.provider
    quota = {k: getattr(acc.quota, k) for k in QUOTA_FIELDS if getattr(acc.quota, k) is not None}
    if quota:
        out["quota"] = quota
    if acc.tier:
        out["tier"] = acc.tier
    return out


def keys_of(config: Config) -> list[bytes]:
    """The keys this process can see for the configuration's accounts (what must never be shipped)."""
    found = []
    for provider in config.providers.values():
        for acc in provider.accounts:
            key = acc.api_key()
            if key and len(key.strip()) >= 4:
                found.append(key.strip().encode())
    return found


def check_shipped(data: bytes, keys: Sequence[bytes]) -> bytes:
    """`data`, once it is certain to hold none of `keys`.

    Raises:
        KeyLeak: it holds one (the message never quotes it).
    """
    for key in keys:
        if key in data:
            raise KeyLeak("refusing to ship a batch to the cluster: what would be sent holds an account's key "
                          "(in the configuration's headers or in a prompt?); workers read keys from their own environment")
    return data


# ---- the worker's side ---------------------------------------------------------------------------

_routers: OrderedDict[str, Any] = OrderedDict()
_routers_lock = threading.Lock()


def worker_router(spec_data: bytes) -> Any:
    """This process's Router for a packed spec (made on first use, then kept)."""
    digest = hashlib.sha256(spec_data).hexdigest()
    with _routers_lock:
        found = _routers.get(digest)
        if found is not None:
            _routers.move_to_end(digest)
            return found
        spec: WorkerSpec = unpack(spec_data)
        router = spec.factory(spec.config, state_path=spec.state_path, persist=spec.persist)
        router.cache = ResponseCache(spec.cache_path if spec.cache_path is not None else MEMORY)
        _routers[digest] = router
        while len(_routers) > ROUTERS_KEPT:
            _, old = _routers.popitem(last=False)
            old.close()
        return router


def run_chunk(spec_data: bytes, chunk_data: bytes, report: Callable[[list[tuple[int, bytes]]], None] | None = None) -> bytes:
    """The task a cluster runs: every call of a chunk at once on this process's Router; the outcomes, packed,
    in the chunk's order. Items that finish while others still run are handed to `report` as they finish,
    [(index in the chunk, packed outcome), ...], so the driver has them before the chunk ends (those that
    finish last come back with the chunk only).

    Told to stop (the chunk's stop check says so, or the engine interrupts the task with KeyboardInterrupt)
    it cancels the calls still running and returns all the same: what finished, and `NotDone` for the rest,
    so that the driver keeps every answer that was paid for.

    Raises:
        ChunkFailed: the chunk could not run at all (the message says why).
    """
    started = _start(spec_data, chunk_data)
    if isinstance(started, list):
        return pack(started)
    found: list[Outcome] = [NotDone(CANCELLED)] * len(started[1].requests)
    for finished, last in _every(_as_finished(*started), REPORT_EVERY_S):
        for index, outcome in finished:
            found[index] = outcome
        if report is not None and not last:
            report([(index, pack(outcome)) for index, outcome in finished])
    return pack(found)


def run_chunk_streaming(spec_data: bytes, chunk_data: bytes) -> Iterator[bytes]:
    """`run_chunk` as a generator (an engine that streams a task's values, Ray's `num_returns="streaming"`):
    yields the packed [(index in the chunk, outcome), ...] of the items that finished, as they finish,
    until every item of the chunk has come out.

    Raises:
        ChunkFailed: the chunk could not run at all (the message says why).
    """
    started = _start(spec_data, chunk_data)
    if isinstance(started, list):
        yield pack(list(enumerate(started)))
        return
    for finished, _ in _every(_as_finished(*started), REPORT_EVERY_S):
        yield pack(finished)


def _start(spec_data: bytes, chunk_data: bytes) -> tuple["_Calls", Chunk, concurrent.futures.Future[list[Outcome]]] | list[Outcome]:
    """The chunk's calls started on this process's Router, or the outcomes of a chunk that is not to run (its
    batch stopped while it waited for a worker)."""
    try:
        router = worker_router(spec_data)
        chunk: Chunk = unpack(chunk_data)
    except Exception as exc:  # nothing of the chunk ran: say why, once, instead of a traceback per item
        raise ChunkFailed(f"a worker could not start the chunk: {type(exc).__name__}: {scrub(str(exc))[:300]}") from None
    if chunk.stop is not None and chunk.stop():  # the batch stopped while this chunk waited for a worker
        return [NotDone(NOT_SENT_INTERRUPTED) for _ in chunk.requests]
    for request in chunk.requests:
        request.pacer = chunk.pacing
    if any(request.schema is not None and request.schema.model is None for request in chunk.requests):
        # checking a schema imports jsonschema on first use: here, not on the loop with the calls in flight
        # (a second or more on a busy worker, with every call of the chunk stalled and the shared buckets filling)
        importlib.import_module("jsonschema")
    calls = _Calls(router, chunk.requests)
    future, _ = router.background.submit(calls.run())
    return calls, chunk, future


class _Calls:
    """A chunk's calls on the router's loop: started together; each ends as its outcome, a cancelled one as
    NotDone, so that stopping them leaves the outcomes of those that finished. Each outcome is also put on
    `finished` as it comes, for the chunk's thread to hand on."""

    def __init__(self, router: Any, requests: Sequence[CallRequest]) -> None:
        self.router = router
        self.requests = requests
        self.tasks: list[asyncio.Future[Outcome]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.finished: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()

    async def run(self) -> list[Outcome]:
        self.loop = asyncio.get_running_loop()
        self.tasks = [asyncio.ensure_future(self._one(i, r)) for i, r in enumerate(self.requests)]
        return list(await asyncio.gather(*self.tasks))

    async def _one(self, index: int, request: CallRequest) -> Outcome:
        outcome = await _run_one(self.router, request)
        self.finished.put((index, outcome))
        return outcome

    def stop(self) -> None:
        """Cancel the calls still running (from any thread)."""
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in self.tasks])


def _as_finished(calls: _Calls, chunk: Chunk, future: concurrent.futures.Future[list[Outcome]]
                 ) -> Iterator[tuple[list[tuple[int, Outcome]], bool]]:
    """The chunk's outcomes in groups as they finish (every one that finished since the last group), each with
    whether it is the last; an empty group at least every REPORT_EVERY_S meanwhile (a tick). The chunk's
    `stop` is looked at every STOP_POLL_S; when it says so, or when the engine interrupts (KeyboardInterrupt),
    the calls are cancelled, and what finished and NotDone for the rest still come out."""
    n, stop = len(chunk.requests), chunk.stop
    seen: set[int] = set()
    deadline: float | None = None
    looked = time.monotonic()
    while len(seen) < n:
        try:
            try:
                wait = REPORT_EVERY_S if deadline is None else max(deadline - time.monotonic(), 0.0)
                group = [calls.finished.get(timeout=wait)]
            except queue.Empty:
                if future.done() and future.exception() is not None:  # the calls' loop itself failed
                    raise ChunkFailed(f"a worker's calls ended: {type(future.exception()).__name__}") from None
                if deadline is not None:  # the cancelled calls did not end in time: the rest are not done
                    break
                if stop is not None and time.monotonic() - looked >= STOP_POLL_S:
                    looked = time.monotonic()
                    if stop():
                        calls.stop()
                        deadline = time.monotonic() + STOP_GRACE_S
                yield [], False
                continue
        except KeyboardInterrupt:  # Ray's cancel of a running task
            calls.stop()
            deadline = time.monotonic() + STOP_GRACE_S
            continue
        group += _drained(calls.finished)  # every other one that has finished by now goes with it
        seen.update(i for i, _ in group)
        yield group, len(seen) == n
    if len(seen) < n:
        group = [(i, o) for i, o in _drained(calls.finished) if i not in seen]
        seen.update(i for i, _ in group)
        yield group + [(i, NotDone(CANCELLED)) for i in range(n) if i not in seen], True


def _every(groups: Iterator[tuple[list[tuple[int, Outcome]], bool]], interval: float
           ) -> Iterator[tuple[list[tuple[int, Outcome]], bool]]:
    """The same outcomes, gathered: a group comes out at most every `interval` (the first one `interval`
    after the start), and the last one at once."""
    pending: list[tuple[int, Outcome]] = []
    due = time.monotonic() + interval
    for group, last in groups:
        pending += group
        if last:
            yield pending, True
            return
        if pending and time.monotonic() >= due:
            yield pending, False
            pending, due = [], time.monotonic() + interval


def _drained(finished: "queue.SimpleQueue[tuple[int, Outcome]]") -> list[tuple[int, Outcome]]:
    out = []
    while True:
        try:
            out.append(finished.get_nowait())
        except queue.Empty:
            return out


async def _run_one(router: Any, request: CallRequest) -> Outcome:
    try:
        result: RouteResult = await router.route(request)
        return result
    except RouteError as error:
        return error
    except asyncio.CancelledError:  # the chunk was stopped: the call is logged as cancelled by the router
        return NotDone(CANCELLED)
    except Exception as exc:  # one item's bug must not sink its chunk; the driver shows it as this item's error
        return WorkerError(f"{type(exc).__name__} on a worker: {scrub(str(exc))[:300]}")


__all__ = ["Chunk", "ChunkFailed", "KeyLeak", "WorkerError", "WorkerLost", "WorkerSpec", "check_shipped", "config_data",
           "keys_of", "pack", "run_chunk", "run_chunk_streaming", "spec_for", "unpack"]

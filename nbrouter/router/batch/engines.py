"""The clusters a batch can run on: Dask (a `distributed.Client`) and Ray, each behind the `Engine` port.

An engine only moves bytes: it starts `worker.run_chunk(spec, chunk)` somewhere and hands back a
`concurrent.futures.Future` of its packed outcomes, which the executor awaits as it completes. Both engines
also stream: the outcomes of a chunk's items reach the driver as they finish (Dask: the worker puts them on
a per-batch `distributed.Queue` that one driver thread reads; Ray: the chunk is a generator task,
`num_returns="streaming"`), so the progress bar and the running cost move per item, not per chunk. Dask and
Ray are imported here only, and only when an engine is made (`import nbrouter` never loads them).

Worker loss: Dask's scheduler runs the task of a worker that died again on another worker by itself
(`distributed.scheduler.allowed-failures` times); Ray is told not to (`max_retries=0`), and the executor
sends the items that had no answer again. Stopping (Ctrl-C): Ray interrupts a running task (`ray.cancel`);
a running Dask task cannot be interrupted, so the chunk looks at a per-batch `distributed.Event` while it
waits. Either way the chunk cancels its calls and still returns the outcomes of those that finished.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .worker import pack, run_chunk, run_chunk_streaming, unpack


class Running(Protocol):
    """One chunk started on a cluster."""

    #: the packed outcomes, or the exception the chunk (or the cluster) ended with
    future: concurrent.futures.Future[bytes]

    def stop(self) -> None:
        """Ask the chunk to stop: it cancels its calls and its outcomes still come back (what finished, and
        `NotDone` for the rest). Never raises."""

    def cancel(self) -> None:
        """Drop the chunk, outcomes and all (the driver has stopped waiting for it). Never raises."""


#: what a streaming engine hands the driver as a chunk's items finish: [(index in the chunk, outcome), ...]
OnItems = Callable[[list[tuple[int, Any]]], None]


class Engine(Protocol):
    """A cluster as a batch's executor sees it: where chunks run, bytes in and bytes out.

    An engine may also have `stream(spec, chunk, on_items) -> Running`: the same as `submit`, and besides,
    `on_items` is called (from any thread) with the outcomes of the chunk's items as they finish, before
    the chunk ends (DaskEngine and RayEngine have it)."""

    name: str

    def slots(self) -> int:
        """How many chunks run at once on the whole cluster."""

    def submit(self, spec: bytes, chunk: bytes) -> Running:
        """Start `run_chunk(spec, chunk)` on a worker."""

    def stop_check(self) -> Callable[[], bool] | None:
        """What a running chunk asks to learn that it is to stop (None: the engine interrupts it instead)."""

    def close(self) -> None:
        """The batch has ended: drop what the engine kept for it."""


@dataclass
class _Started:
    future: concurrent.futures.Future[bytes]
    stop_fn: Callable[[], None]
    cancel_fn: Callable[[], None]

    def stop(self) -> None:
        _quietly(self.stop_fn)

    def cancel(self) -> None:
        _quietly(self.cancel_fn)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a cluster already gone: nothing left to stop
        pass


# ---- Dask --------------------------------------------------------------------------------------


def _event_name() -> str:
    return f"nbrouter-stop-{os.urandom(8).hex()}"


def _dask_event(name: str, client: Any = None) -> Any:
    """A `distributed.Event` (the scheduler keeps it; a task reaches it through its worker's client)."""
    distributed: Any = importlib.import_module("distributed")
    return distributed.Event(name, client=client)


def _dask_queue(name: str, client: Any = None) -> Any:
    """A `distributed.Queue` (kept by the scheduler; a task reaches it through its worker's client)."""
    distributed: Any = importlib.import_module("distributed")
    return distributed.Queue(name, client=client)


_worker_queues: dict[str, Any] = {}
_worker_queues_lock = threading.Lock()


@dataclass(frozen=True)
class DaskReport:
    """A chunk's report of its finished items on a Dask worker: put on the batch's queue with the chunk's key."""

    queue: str
    key: str

    def __call__(self, items: list[tuple[int, bytes]]) -> None:
        with _worker_queues_lock:  # one handle per queue and worker process
            q = _worker_queues.get(self.queue)
            if q is None:
                q = _worker_queues[self.queue] = _dask_queue(self.queue)
        q.put([self.key, [[index, data] for index, data in items]])


def is_dask_client(value: Any) -> bool:
    """Whether `value` is a `distributed.Client` (known without importing distributed)."""
    cls = type(value)
    return cls.__module__.split(".")[0] == "distributed" and hasattr(value, "submit") and hasattr(value, "nthreads")


@dataclass(frozen=True)
class DaskStop:
    """A running chunk's look at its batch's stop flag, a `distributed.Event` on the scheduler."""

    name: str

    def __call__(self) -> bool:
        return bool(_dask_event(self.name).is_set())


class DaskEngine:
    """Chunks as tasks of a `distributed.Client` (a synchronous one, as a notebook makes)."""

    name = "dask"

    def __init__(self, client: Any) -> None:
        if getattr(client, "asynchronous", False):
            raise TypeError("give map a synchronous distributed.Client (Client(...), not Client(asynchronous=True))")
        self.client = client
        self._event, self._set = _event_name(), False
        #: the streamed items: one queue per batch, read by one thread, each chunk's items to its listener
        self._queue = f"nbrouter-items-{os.urandom(8).hex()}"
        self._listeners: dict[str, OnItems] = {}
        self._lock = threading.Lock()
        self._reading: threading.Event | None = None

    def _nthreads(self) -> dict[str, int]:
        threads: dict[str, int] = self.client.nthreads()
        return threads

    def slots(self) -> int:
        return max(1, sum(self._nthreads().values()))

    def submit(self, spec: bytes, chunk: bytes) -> Running:
        return self._submit(spec, chunk, None)

    def stream(self, spec: bytes, chunk: bytes, on_items: OnItems) -> Running:
        """`submit`, and each item's outcome to `on_items` as it finishes (through a `distributed.Queue`)."""
        return self._submit(spec, chunk, on_items)

    def _submit(self, spec: bytes, chunk: bytes, on_items: OnItems | None) -> Running:
        key = f"nbrouter-chunk-{os.urandom(8).hex()}"
        if on_items is None:
            task = self.client.submit(run_chunk, spec, chunk, pure=False, key=key)
        else:
            with self._lock:
                self._listeners[key] = on_items
                if self._reading is None:
                    self._reading = threading.Event()
                    threading.Thread(target=self._read, args=(self._queue, self._reading), daemon=True,
                                     name="nbrouter-dask-items").start()
            task = self.client.submit(run_chunk, spec, chunk, DaskReport(self._queue, key), pure=False, key=key)
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def landed(done: Any) -> None:  # on a thread of the client's
            if future.done():
                return
            try:
                future.set_result(done.result())
            except BaseException as exc:  # the task's own exception, KilledWorker, or a cancel
                future.set_exception(exc)
            finally:
                # the outcomes are here now: were the client to keep wanting the task, the scheduler would
                # run a finished chunk again when the worker holding its result died (sending its items twice)
                done.release()
                with self._lock:
                    self._listeners.pop(key, None)

        task.add_done_callback(landed)
        # a running Dask task cannot be interrupted: the chunk looks at the batch's event and stops itself
        return _Started(future, self._stop, task.cancel)

    def _stop(self) -> None:
        self._set = True
        _dask_event(self._event, self.client).set()

    def stop_check(self) -> Callable[[], bool] | None:
        return DaskStop(self._event)

    def _read(self, name: str, reading: threading.Event) -> None:
        """The driver's reader of the streamed items, until the batch ends (`close`)."""
        try:
            q = _dask_queue(name, self.client)
        except Exception:  # the client is gone: the chunks' own results still come back
            return
        while not reading.is_set():
            try:
                # (no timeout: a get that times out is logged as an error by the scheduler; `close` wakes it)
                messages = [q.get()]
                messages += q.get(batch=True)
            except Exception:  # the client is closing
                return
            for key, items in messages:
                with self._lock:
                    listener = self._listeners.get(key)
                if listener is not None:
                    listener([(int(index), unpack(data)) for index, data in items])
        try:
            q.close()
        except Exception:  # a client closing as the batch ends: the scheduler drops the queue with it
            pass

    def close(self) -> None:
        # a stopped batch's event stays set (one name on the scheduler: its chunks may not have looked yet);
        # the next batch on this engine gets a new one
        if self._set:
            self._event, self._set = _event_name(), False
        with self._lock:
            reading, name = self._reading, self._queue
            if reading is not None:
                self._reading = None
                self._queue = f"nbrouter-items-{os.urandom(8).hex()}"
            self._listeners.clear()
        if reading is not None:
            reading.set()
            try:  # wake the reader: it sees the batch has ended and goes
                _dask_queue(name, self.client).put(["", []])
            except Exception:  # the client is gone: so is the reader
                pass


# ---- Ray ---------------------------------------------------------------------------------------


def is_ray_handle(value: Any) -> bool:
    """Whether `value` names the connected Ray cluster: "ray", the `ray` module, or what `ray.init()` returned."""
    if isinstance(value, str):
        return value == "ray"
    module = getattr(value, "__name__", None) if type(value).__name__ == "module" else type(value).__module__
    return isinstance(module, str) and module.split(".")[0] == "ray"


def _ray() -> Any:
    ray: Any = importlib.import_module("ray")
    return ray


class RayEngine:
    """Chunks as Ray tasks on the connected Ray cluster (`ray.init(...)` first).

    Args:
        num_cpus: the CPUs one chunk asks for (its calls wait on the network: a fraction lets several
            chunks share a CPU, each in a worker process of its own).
    """

    name = "ray"

    def __init__(self, num_cpus: float = 1.0) -> None:
        ray = _ray()
        if not ray.is_initialized():
            raise RuntimeError("Ray is not connected: call ray.init(...) (or ray.init(address=...)) before map(executor='ray')")
        self.num_cpus = num_cpus
        self._remote = ray.remote(run_chunk).options(num_cpus=num_cpus, max_retries=0)
        self._streaming = ray.remote(run_chunk_streaming).options(num_cpus=num_cpus, max_retries=0, num_returns="streaming")

    def slots(self) -> int:
        cpus = float(_ray().cluster_resources().get("CPU", 1.0))
        return max(1, int(cpus / self.num_cpus + 1e-9))

    def submit(self, spec: bytes, chunk: bytes) -> Running:
        ref = self._remote.remote(spec, chunk)
        future: concurrent.futures.Future[bytes] = ref.future()
        # ray.cancel interrupts a running task (KeyboardInterrupt, the chunk returns what finished) and drops a
        # waiting one
        return _Started(future, lambda: _ray().cancel(ref), lambda: _ray().cancel(ref))

    def stream(self, spec: bytes, chunk: bytes, on_items: OnItems) -> Running:
        """`submit` as a generator task (`num_returns="streaming"`): each group of finished items goes to
        `on_items` as the worker yields it (read by a thread of the chunk's own)."""
        generator = self._streaming.remote(spec, chunk)
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def read() -> None:
            found: dict[int, Any] = {}
            try:
                for ref in generator:
                    group: list[tuple[int, Any]] = unpack(_ray().get(ref))
                    found.update(group)
                    on_items(group)
                future.set_result(pack([found[i] for i in sorted(found)]))
            except BaseException as exc:  # the task's own exception, a lost worker, or a cancel
                future.set_exception(exc)

        threading.Thread(target=read, daemon=True, name="nbrouter-ray-items").start()
        return _Started(future, lambda: _ray().cancel(generator), lambda: _ray().cancel(generator))

    def stop_check(self) -> Callable[[], bool] | None:
        return None

    def close(self) -> None:
        pass


def engine_for(value: Any) -> Engine | None:
    """The engine `map(executor=value)` names (a Dask client, "ray" or a Ray handle), or None."""
    if is_dask_client(value):
        return DaskEngine(value)
    if is_ray_handle(value):
        return RayEngine()
    return None


__all__ = ["DaskEngine", "DaskReport", "Engine", "OnItems", "RayEngine", "Running", "engine_for", "is_dask_client", "is_ray_handle"]

"""The clusters a batch can run on: Dask (a `distributed.Client`) and Ray, each behind the `Engine` port.

An engine only moves bytes: it starts `worker.run_chunk(spec, chunk)` somewhere and hands back a
`concurrent.futures.Future` of its packed outcomes, which the executor awaits as it completes. Dask and
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
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .worker import run_chunk


class Running(Protocol):
    """One chunk started on a cluster."""

    #: the packed outcomes, or the exception the chunk (or the cluster) ended with
    future: concurrent.futures.Future[bytes]

    def stop(self) -> None:
        """Ask the chunk to stop: it cancels its calls and its outcomes still come back (what finished, and
        `NotDone` for the rest). Never raises."""

    def cancel(self) -> None:
        """Drop the chunk, outcomes and all (the driver has stopped waiting for it). Never raises."""


class Engine(Protocol):
    """A cluster as a batch's executor sees it: where chunks run, bytes in and bytes out."""

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

    def _nthreads(self) -> dict[str, int]:
        threads: dict[str, int] = self.client.nthreads()
        return threads

    def slots(self) -> int:
        return max(1, sum(self._nthreads().values()))

    def submit(self, spec: bytes, chunk: bytes) -> Running:
        task = self.client.submit(run_chunk, spec, chunk, pure=False, key=f"nbrouter-chunk-{os.urandom(8).hex()}")
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

        task.add_done_callback(landed)
        # a running Dask task cannot be interrupted: the chunk looks at the batch's event and stops itself
        return _Started(future, self._stop, task.cancel)

    def _stop(self) -> None:
        self._set = True
        _dask_event(self._event, self.client).set()

    def stop_check(self) -> Callable[[], bool] | None:
        return DaskStop(self._event)

    def close(self) -> None:
        # a stopped batch's event stays set (one name on the scheduler: its chunks may not have looked yet);
        # the next batch on this engine gets a new one
        if self._set:
            self._event, self._set = _event_name(), False


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

    def slots(self) -> int:
        cpus = float(_ray().cluster_resources().get("CPU", 1.0))
        return max(1, int(cpus / self.num_cpus + 1e-9))

    def submit(self, spec: bytes, chunk: bytes) -> Running:
        ref = self._remote.remote(spec, chunk)
        future: concurrent.futures.Future[bytes] = ref.future()
        # ray.cancel interrupts a running task (KeyboardInterrupt, the chunk returns what finished) and drops a
        # waiting one
        return _Started(future, lambda: _ray().cancel(ref), lambda: _ray().cancel(ref))

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


__all__ = ["DaskEngine", "Engine", "RayEngine", "Running", "engine_for", "is_dask_client", "is_ray_handle"]

"""A batch on a cluster: nbrouter's `map(executor=...)` on Dask and on Ray against the naive way and Ray Data
LLM's HTTP processor, and what the executor costs.

    python benchmarks/bench_cluster.py [--items 5000] [--rpm 720 1440 2880] [--window 60] [--workers 4]
                                       [--overhead-items 2000] [--only dask ray] [--no-naive] [--no-overhead]

Part 1, limits. One simulator process (`nbrouter.testing.start_simulator_process`) enforces a sliding
window per key: three keys at 720, 1,440 and 2,880 requests a minute (the issue's 300, 600 and 1,200 scaled
so that 5,000 items take about a minute: 59.5 s at the combined limit), each window of 60 s already full
when the run starts (a key in steady use: the rate is all there is). On a 4-worker Dask cluster and a
4-worker Ray cluster, on this machine, loopback only:
- nbrouter: `Router.map(combo, items, executor=client | "ray")`, the three keys as accounts of one
  provider with their `quota`; the workers pace over the driver's SQLite state file (one machine).
- the naive way a user would write it: each worker gets a quarter of the items and calls the provider
  with its own `httpx.AsyncClient` and a semaphore of 8, the keys in turn; a 429 is retried after 1, 2, 4 s
  (Retry-After ignored), then the item is given up.
- Ray Data LLM's HTTP processor (when `ray[data]` is installed; not a dependency of nbrouter): a processor
  per key, one actor each with `qps` = the key's limit per second, 429s retried after 1, 2, 4 s.
The rate is measured two ways, both printed: over the run's steady part (the simulator's admission times
between their 5th and 95th percentiles: start-up, the first wave and the tail left out), and over the whole
run (items over the wall time of the call, start-up included).

Part 2, overhead. `benchmarks/_server.py` (an instant server, no limits): items per second through the
local executor, through each cluster's executor at its default, and at chunk sizes 1, 4, 16 and 64 with
results streamed per item and per chunk (the executor's default concurrency is slots x chunk x 2): the
cluster's cost per task and per streamed item, against calls that cost nothing.

Every worker process is started and has imported what it runs before the runs are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from _common import LoopbackServer, heading, isolate_user_state, machine, table, versions

KEY_ENVS = ("BENCH_CLUSTER_KEY_1", "BENCH_CLUSTER_KEY_2", "BENCH_CLUSTER_KEY_3")
KEYS = ("bench-cluster-key-0001", "bench-cluster-key-0002", "bench-cluster-key-0003")
#: the naive contender: calls in flight per worker, and its 429 back-offs (Retry-After ignored)
NAIVE_CONCURRENCY = 8
NAIVE_BACKOFF_S = (1.0, 2.0, 4.0)
CHUNKS = (1, 4, 16, 64)
#: the warm-up batch before nbrouter's timed run: enough chunks for every worker (4 x 16 x 2)
WARM_ITEMS = 128
#: the steady part of a run: its admissions between these quantiles (start-up and the tail are left out)
STEADY_TRIM = 0.05


# ---- the naive way: runs on a worker ------------------------------------------------------------------


def naive_chunk(base_url: str, items: list[tuple[int, str]]) -> list[bool]:
    """One worker's share the naive way: its own client, a semaphore, the keys in turn, 429s retried blindly."""
    import httpx

    keys = [os.environ[name] for name in KEY_ENVS]

    async def main() -> list[bool]:
        sem = asyncio.Semaphore(NAIVE_CONCURRENCY)
        async with httpx.AsyncClient(timeout=60) as http:

            async def one(i: int, text: str) -> bool:
                async with sem:
                    for wait in (*NAIVE_BACKOFF_S, None):
                        reply = await http.post(base_url + "/chat/completions", headers={"authorization": f"Bearer {keys[i % 3]}"},
                                                json={"model": "m", "messages": [{"role": "user", "content": text}]})
                        if reply.status_code == 200:
                            return True
                        if reply.status_code != 429 or wait is None:
                            return False
                        await asyncio.sleep(wait)
                return False

            return list(await asyncio.gather(*(one(i, t) for i, t in items)))

    return asyncio.run(main())


def naive(submit: Callable[[list[tuple[int, str]]], Any], gather: Callable[[list[Any]], list[list[bool]]],
          items: list[str], workers: int) -> int:
    numbered = list(enumerate(items))
    shares = [numbered[w::workers] for w in range(workers)]
    return sum(sum(done) for done in gather([submit(share) for share in shares]))


# ---- Ray Data LLM's HTTP processor -------------------------------------------------------------------


def ray_data_available() -> bool:
    try:
        from ray.data.llm import HttpRequestProcessorConfig, build_processor  # noqa: F401
    except ImportError:
        return False
    return True


def ray_data_llm(base_url: str, rpms: list[float], items: list[str]) -> int:
    """Ray Data LLM's way: an HTTP processor per key (one set of headers each), one actor each, `qps` set to
    the key's limit per second (whole numbers: Ray's parameter is an int), 429s retried after 1, 2, 4 s; the
    items split over the keys in proportion to their limits. Returns the rows that came back answered."""
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    shares = [rpm / sum(rpms) for rpm in rpms]
    cuts = [0] + [round(len(items) * sum(shares[:i + 1])) for i in range(len(rpms))]
    datasets = []
    for k, (env, rpm) in enumerate(zip(KEY_ENVS, rpms)):
        config = HttpRequestProcessorConfig(url=base_url + "/chat/completions", headers={"Authorization": f"Bearer {os.environ[env]}"},
                                            qps=max(1, int(rpm / 60)), concurrency=1, max_retries=3, batch_size=64)
        processor = build_processor(
            config,
            preprocess=lambda row: {"payload": {"model": "m", "messages": [{"role": "user", "content": row["item"]}]}},
            postprocess=lambda row: {"ok": bool(row.get("http_response", {}).get("choices"))})
        datasets.append(processor(ray.data.from_items([{"item": t} for t in items[cuts[k]:cuts[k + 1]]])))
    try:
        rows = datasets[0].union(*datasets[1:]).take_all()
    except Exception as exc:  # a row out of retries fails the whole dataset: nothing comes back
        print(f"  Ray Data LLM run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return 0
    return sum(1 for row in rows if row["ok"])


# ---- part 1: limits ---------------------------------------------------------------------------------


def limits_config(rpms: list[float], window: float) -> dict[str, Any]:
    return {"rate_limits": {"keys": {key: {"requests": int(rpm * window / 60), "window_s": window, "start_full": False}
                                     for key, rpm in zip(KEYS, rpms)}}}


def router_config(base_url: str, rpms: list[float]) -> dict[str, Any]:
    accounts = [{"name": f"k{i + 1}", "api_key_env": env, "quota": {"requests_per_minute": int(rpm)}}
                for i, (env, rpm) in enumerate(zip(KEY_ENVS, rpms))]
    return {"providers": {"sim": {"protocol": "openai", "base_url": base_url, "accounts": accounts}},
            "combos": {"batch": {"targets": ["sim/m"]}}}


def server_counts(sim: Any) -> tuple[int, int]:
    keys = sim.stats()["keys"].values()
    return sum(k["received"] for k in keys), sum(k["rate_limited"] for k in keys)


def steady_rate(times: list[float], trim: float = STEADY_TRIM) -> tuple[float, float]:
    """Requests per second over the steady part of a run: between the `trim` and `1 - trim` quantiles of
    the admission times the simulator recorded (start-up, the first wave, and the tail where the last items
    drain are outside it); and how long that part lasted."""
    times = sorted(times)
    if len(times) < 10:
        return float("nan"), 0.0
    lo, hi = int(len(times) * trim), int(len(times) * (1 - trim)) - 1
    span = times[hi] - times[lo]
    return ((hi - lo) / span if span > 0 else float("nan")), span


def limits_row(label: str, sim: Any, run: Callable[[], int], n: int, rpms: list[float], window: float,
               warm: Callable[[], None] | None = None) -> list[str]:
    """One run against windows already full: `warm()` first (the workers' Routers made, paced like the run),
    then the timed `run()`; the counts are the simulator's, for the requests that arrived after `warm`."""
    sim.reset()
    sim.configure(limits_config(rpms, window))
    if warm is not None:
        warm()
    t0 = time.monotonic()  # (the simulator's limiter runs on the system-wide monotonic clock too)
    done = run()
    wall = time.monotonic() - t0
    stats = sim.stats(times=True)["keys"]
    keys = [k for k in stats.values() if k.get("limits")]
    admitted = [t for k in keys for t in k["admitted_times"] if t >= t0]
    limited = sum(1 for k in keys for t in k["refused_times"] if t >= t0)
    received = len(admitted) + limited
    combined = sum(rpms) / 60.0
    steady, span = steady_rate(admitted)
    # the server's own count: the most it let through in any window of each key, against that key's limit
    fullest = max((k["max_in_window"] / k["limits"]["requests"] for k in keys), default=float("nan"))
    return [label, f"{wall:.1f} s", f"{steady / combined:.3f} ({span:.0f} s)", f"{done / wall / combined:.3f}",
            f"{limited} ({100 * limited / max(received, 1):.2f}% of {received})", f"{fullest:.3f}", str(n - done)]


def nbrouter_row(label: str, sim: Any, rpms: list[float], items: list[str], executor: Any, window: float,
                 stream: bool = True) -> list[str]:
    """nbrouter's `map` on the cluster: a warm-up batch first (every worker's Router made, its connections
    open, paced like the run), then the timed one."""
    from nbrouter import Router
    from nbrouter.router.batch.cluster import ClusterExecutor
    from nbrouter.router.batch.engines import engine_for

    state = Path(tempfile.mkdtemp(prefix="nbrouter-bench-cluster-")) / "state.sqlite3"
    router = Router(router_config(sim.openai_url, rpms), state_path=state)

    def on() -> Any:
        engine = engine_for(executor)
        assert engine is not None
        return ClusterExecutor(router, engine, stream=stream)

    try:
        return limits_row(label, sim, lambda: router.map("batch", items, executor=on(), cache=False).done, len(items),
                          rpms, window, warm=lambda: router.map("batch", [f"warm {i}" for i in range(WARM_ITEMS)],
                                                               executor=on(), cache=False) and None)
    finally:
        router.close()


# ---- part 2: overhead -------------------------------------------------------------------------------


def overhead_rate(base_url: str, items: list[str], executor: Any, concurrency: int | None = None) -> float:
    from nbrouter import Router

    providers = {"bench": {"protocol": "openai", "base_url": base_url, "api_key_env": "BENCH_KEY"}}
    router = Router({"providers": providers, "combos": {"c": {"targets": ["bench/bench-model"]}}}, persist=False)
    try:
        router.map("c", items[:50], executor=executor, cache=False)  # the workers' Routers made, connections open
        t0 = time.perf_counter()
        done = router.map("c", items, executor=executor, cache=False, concurrency=concurrency).done
        return done / (time.perf_counter() - t0)
    finally:
        router.close()


def chunk_rate(base_url: str, items: list[str], engine: Any, chunk: int, stream: bool = True) -> float:
    from nbrouter import Router
    from nbrouter.router.batch.cluster import ClusterExecutor

    providers = {"bench": {"protocol": "openai", "base_url": base_url, "api_key_env": "BENCH_KEY"}}
    router = Router({"providers": providers, "combos": {"c": {"targets": ["bench/bench-model"]}}}, persist=False)
    try:
        router.map("c", items[:50], executor=ClusterExecutor(router, engine, chunk_size=chunk, stream=stream), cache=False)
        executor = ClusterExecutor(router, engine, chunk_size=chunk, stream=stream)
        t0 = time.perf_counter()
        done = router.map("c", items, executor=executor, cache=False).done
        return done / (time.perf_counter() - t0)
    finally:
        router.close()


# ---- the engines ------------------------------------------------------------------------------------


def start_dask(workers: int) -> tuple[Any, Callable[[], None]]:
    import distributed

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)

    def stop() -> None:
        client.close()
        cluster.close()

    return client, stop


def start_ray(workers: int) -> tuple[Any, Callable[[], None]]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: keep the node on 127.0.0.1
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return "ray", ray.shutdown


def _imports() -> int:
    import httpx  # noqa: F401 - what the naive way uses

    import nbrouter.router.batch.worker  # noqa: F401 - what a chunk uses

    return os.getpid()


def warm(name: str, executor: Any, workers: int) -> None:
    """Every worker process started and its imports done, so that the runs compare steady states."""
    if name == "dask":
        executor.run(_imports)
    else:
        import ray

        ray.get([ray.remote(_imports).remote() for _ in range(workers * 2)])


def run_engine(name: str, workers: int, args: argparse.Namespace, sim: Any, fast_url: str, rows: list[list[str]],
               overhead: list[list[str]]) -> None:
    items = [f"item {i}" for i in range(args.items)]
    quick = [f"item {i}" for i in range(args.overhead_items)]
    executor, stop = start_dask(workers) if name == "dask" else start_ray(workers)
    try:
        if name == "dask":
            client = executor

            def submit(share: list[tuple[int, str]]) -> Any:
                return client.submit(naive_chunk, sim.openai_url, share, pure=False)

            def gather(futures: list[Any]) -> list[list[bool]]:
                return list(client.gather(futures))
        else:
            import ray

            remote = ray.remote(naive_chunk).options(num_cpus=1)

            def submit(share: list[tuple[int, str]]) -> Any:
                return remote.remote(sim.openai_url, share)

            def gather(refs: list[Any]) -> list[list[bool]]:
                return list(ray.get(refs))

        warm(name, executor, workers)
        label = "Dask" if name == "dask" else "Ray"
        rows.append(nbrouter_row(f"nbrouter map, {label} ({workers} workers)", sim, args.rpm, items, executor, args.window))
        if args.per_chunk:
            rows.append(nbrouter_row(f"nbrouter map, {label}, results per chunk", sim, args.rpm, items, executor,
                                     args.window, stream=False))
        if not args.no_naive:
            rows.append(limits_row(f"naive: client + semaphore per worker, {label}", sim,
                                   lambda: naive(submit, gather, items, workers), args.items, args.rpm, args.window))
        if name == "ray" and not args.no_naive:
            if ray_data_available():
                rows.append(limits_row("Ray Data LLM HTTP processor, qps = limit/s per actor", sim,
                                       lambda: ray_data_llm(sim.openai_url, args.rpm, items), args.items, args.rpm, args.window))
            else:
                rows.append(["Ray Data LLM HTTP processor", "not installed (pip install 'ray[data]')", "-", "-", "-", "-", "-"])
        if args.no_overhead:
            return
        overhead.append([f"{label} executor (default: chunk 16, streamed, {workers} workers)",
                         f"{overhead_rate(fast_url, quick, executor):,.0f}"])
        from nbrouter.router.batch.engines import DaskEngine, RayEngine

        engine = DaskEngine(executor) if name == "dask" else RayEngine()
        for chunk in CHUNKS:
            for stream in (True, False):
                overhead.append([f"{label} executor, chunk {chunk}, {'streamed per item' if stream else 'per chunk'}",
                                 f"{chunk_rate(fast_url, quick, engine, chunk, stream):,.0f}"])
    finally:
        stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--rpm", type=float, nargs=3, default=[720, 1440, 2880], help="requests per minute of each key")
    p.add_argument("--window", type=float, default=60.0, help="the simulator's window in seconds (limits stay per minute)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--overhead-items", type=int, default=2000)
    p.add_argument("--only", nargs="*", choices=["dask", "ray"])
    p.add_argument("--no-naive", action="store_true", help="skip the naive runs")
    p.add_argument("--per-chunk", action="store_true", help="also run nbrouter with results per chunk (not streamed)")
    p.add_argument("--no-overhead", action="store_true", help="skip part 2")
    args = p.parse_args()
    isolate_user_state()
    for env, key in zip(KEY_ENVS, KEYS):
        os.environ[env] = key  # before the clusters start: the workers read their keys from their environment
    from nbrouter.testing import start_simulator_process

    rows: list[list[str]] = []
    overhead: list[list[str]] = []
    with start_simulator_process() as sim, LoopbackServer() as fast:
        quick = [f"item {i}" for i in range(args.overhead_items)]
        if not args.no_overhead:
            overhead.append(["local executor (concurrency 64)", f"{overhead_rate(fast.openai_url, quick, None, 64):,.0f}"])
        for name in args.only or ["dask", "ray"]:
            run_engine(name, args.workers, args, sim, fast.openai_url, rows, overhead)

    heading("A batch on a cluster", "python benchmarks/bench_cluster.py " + " ".join(sys.argv[1:]))
    minimum = args.items / (sum(args.rpm) / 60.0)
    print(f"{args.items} items over three keys limited to {', '.join(f'{r:g}' for r in args.rpm)} requests/min (sliding "
          f"windows of {args.window:g} s, already full); the shortest possible run: {minimum:.1f} s. Simulator: its own "
          "process on 127.0.0.1.\n")
    print("rate (steady) = requests the simulator let through per second between the 5th and 95th percentile of "
          "their arrival times (the run's steady part, its length in brackets), over the combined limit; rate (whole "
          "run) = items done over the wall time from `map` called to `map` returned (start-up included); fullest "
          "window = the most requests the simulator let through in any window of a key, over that key's limit.\n")
    print(table(["run", "wall time", "rate (steady)", "rate (whole run)", "429s (share of requests)", "fullest window",
                 "items lost"], rows))
    print()
    print(f"Overhead: {args.overhead_items} items through `benchmarks/_server.py` (instant answers, no limits), "
          "after a 50-item warm-up on the same workers.\n")
    print(table(["executor", "items/s"], overhead))
    print()
    print(machine())
    print(versions("nbrouter", "distributed", "ray", "httpx"))


if __name__ == "__main__":
    sys.exit(main())

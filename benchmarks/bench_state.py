"""The state store: what recording one attempt costs the request loop, what the writer thread costs,
and whether memory stays flat over 100,000 logged attempts.

    python benchmarks/bench_state.py [--rounds 5] [--attempts 100000]

Per attempt the loop calls `record_outcome`, `record_usage` and `log_attempts` (what `Router._served`
and `Router._log` do for one served attempt). Measured on a store persisted to SQLite (the default) and
on a memory-only store (the baseline: the same calls with no mirroring to the file). "loop" is the
wall time of the calls on the calling thread; "all threads" is the process CPU time per attempt until
the writer has written everything (`flush()`), so it includes the SQLite work of the writer thread.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import fmt_ratio, fmt_us, heading, isolate_user_state, machine, median, spread, table

from nbrouter.router.state.store import StateStore
from nbrouter.router.types import Action, Attempt, Usage

KEYS = [f"bench#default/model-{i}" for i in range(4)]
PROMPT = "Say hello in five words."
RESPONSE = "Hello from the loopback benchmark server."


def rss_mib() -> float:
    """Current resident set size in MiB (psutil when available, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def attempt(i: int) -> Attempt:
    key = KEYS[i % len(KEYS)]
    return Attempt(candidate=key, path="one > " + key, action=Action.SERVED, started_at=time.time(), status=200,
                   latency_s=0.001, ttft_s=None, usage=Usage(input_tokens=12, output_tokens=9), cost_usd=None,
                   cost_known=False, request_id=f"req-{i}")


def record(store: StateStore, n: int, start: int = 0) -> float:
    """Record `n` served attempts the way the router does; return the loop's seconds per attempt."""
    attempts = [attempt(start + i) for i in range(n)]  # built before the clock starts: not the store's cost
    t0 = time.perf_counter()
    for i, a in enumerate(attempts):
        now = time.time()
        store.record_outcome(a.candidate, now, ok=True, latency_s=0.001, ttft_s=None, streamed=False, cost=None, error=None)
        store.record_usage("bench#default", now, 21)
        store.log_attempts(f"call-{start + i}", "one", [a], PROMPT, RESPONSE)
    return (time.perf_counter() - t0) / n


def per_attempt(path: Path | None, n: int) -> tuple[float, float]:
    """(loop seconds per attempt, process CPU seconds per attempt until flushed)."""
    store = StateStore(path, persist=path is not None)
    try:
        record(store, 500)  # warm
        store.flush()
        cpu0 = time.process_time()
        loop = record(store, n)
        store.flush(timeout=60.0)
        cpu = (time.process_time() - cpu0) / n
    finally:
        store.close()
    return loop, cpu


def memory(path: Path, total: int, step: int) -> list[tuple[int, float, float, int]]:
    """RSS after every `step` logged attempts: (attempts, RSS MiB, traced Python MiB, rows waiting)."""
    import tracemalloc

    store = StateStore(path)
    out = []
    try:
        gc.collect()
        tracemalloc.start()
        done = 0
        out.append((0, rss_mib(), tracemalloc.get_traced_memory()[0] / 2**20, 0))
        while done < total:
            record(store, step, done)
            done += step
            waiting = len(store._writer.rows) if store._writer else 0  # how far the writer lags behind a loop that never waits
            store.flush(timeout=120.0)
            gc.collect()
            out.append((done, rss_mib(), tracemalloc.get_traced_memory()[0] / 2**20, waiting))
        tracemalloc.stop()
    finally:
        store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--attempts", type=int, default=100_000, help="for the memory run")
    p.add_argument("--per-round", type=int, default=20_000, help="attempts per timing round")
    args = p.parse_args()
    tmp = isolate_user_state()
    work = Path(tempfile.mkdtemp(dir=tmp))

    res: dict[str, dict[str, list[float]]] = {"memory only": {"loop": [], "cpu": []}, "SQLite (default)": {"loop": [], "cpu": []}}
    for r in range(args.rounds):
        order = list(res) if r % 2 == 0 else list(reversed(res))
        for name in order:
            path = None if name == "memory only" else work / f"state-{r}.sqlite3"
            loop, cpu = per_attempt(path, args.per_round)
            res[name]["loop"].append(loop)
            res[name]["cpu"].append(cpu)
    base = res["memory only"]
    rows = []
    for name, m in res.items():
        rows.append([
            name, fmt_us(median(m["loop"])), spread([x * 1e6 for x in m["loop"]], "{:,.1f}"),
            fmt_ratio(median([a / b for a, b in zip(m["loop"], base["loop"])])),
            fmt_us(median(m["cpu"])), spread([x * 1e6 for x in m["cpu"]], "{:,.1f}"),
            fmt_ratio(median([a / b for a, b in zip(m["cpu"], base["cpu"])])),
        ])

    mem = memory(work / "memory.sqlite3", args.attempts, max(1, args.attempts // 10))
    first = mem[1]
    mem_rows = [[f"{n:,}", f"{rss:,.1f}", f"{rss - first[1]:+,.1f}", f"{traced:,.2f}", f"{waiting:,}"] for n, rss, traced, waiting in mem]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    heading("State store: cost per attempt and memory over 100,000 logged attempts", "python benchmarks/bench_state.py")
    print(f"Machine: {machine()}.\n")
    print(f"Per attempt: `record_outcome` + `record_usage` + `log_attempts` (one row, prompt and response kept), "
          f"over 4 candidate keys; median of {args.rounds} interleaved rounds of {args.per_round:,} attempts; "
          "spread = min-max of the rounds; ratio = against the memory-only store in the same round. "
          "'all threads' counts the writer thread's SQLite work until `flush()` returns.\n")
    print(table(["store", "loop us/attempt", "spread", "ratio", "all threads CPU us/attempt", "spread", "ratio"], rows))
    print()
    print(f"Memory: one persisted store, {args.attempts:,} attempts logged in steps of {args.attempts // 10:,}, "
          "as fast as a loop that never waits can (the worst case for the writer's queue: the writer thread "
          "needs the GIL to bind each row, and a loop that never blocks hands it over only every switch "
          "interval). 'rows queued' = rows the writer had not taken yet when the step ended; then `flush()`, "
          "`gc.collect()`, and RSS, its change since the first step, and the Python memory traced by "
          f"tracemalloc (SQLite's own page cache is not traced). Peak RSS of the process: {peak:,.1f} MiB.\n")
    print(table(["attempts logged", "RSS MiB", "vs first step", "traced MiB", "rows queued at step end"], mem_rows))
    print()


if __name__ == "__main__":
    sys.exit(main())

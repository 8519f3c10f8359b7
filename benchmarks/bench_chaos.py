"""Chaos at scale (issue 12): 10,000 calls over a three-tier combo whose targets answer at random with 429s
(with and without Retry-After), 5xx, 401s, hangs, drips, cuts, garbled JSON and empty bodies.

    python benchmarks/bench_chaos.py [--calls 10000] [--concurrency 64]

Reports, for the whole run: calls made and lost (a call that neither returned nor raised a RouteError),
calls that ran past their deadline plus a margin, attempts logged against requests the simulator
received, the longest call, threads and file descriptors before and after, and the resident memory
before and after (psutil, from the `bench` extra, when installed). The simulator is nbrouter's own
(`nbrouter.testing`, real HTTP on loopback); only the policy's durations are shortened so that holds
expire within the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import threading
import time
from collections import Counter

from _common import heading, isolate_user_state, machine, table

DEADLINE_S = 0.8
TIMEOUT_S = 0.25
MARGIN_S = 2.0

def _rss_mib() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20

def _fds() -> int | None:
    path = f"/proc/{os.getpid()}/fd"
    return len(os.listdir(path)) if os.path.isdir(path) else None

def run(calls: int, concurrency: int) -> list[list[str]]:
    from nbrouter import RouteError, Router
    from nbrouter.testing import ProviderSimulator, Reply
    from nbrouter.testing.chaos import random_behaviour

    rng = random.Random(20261201)
    with ProviderSimulator() as sim:
        for model in ("t1", "t2", "t3"):
            sim.script([random_behaviour(rng) for _ in range(calls * 2)], model=model)
        sim.set_default(Reply())
        providers = {f"p{i}": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "BENCH_KEY"} for i in (1, 2, 3)}
        policy = {"rate_limit_cooldown_s": 0.05, "rate_limit_cooldown_cap_s": 0.05, "breaker_open_s": 0.05,
                  "server_error_backoff_s": 0.0, "quota_cooldown_s": 0.05}
        router = Router({"providers": providers, "policy": policy,
                         "combos": {"c": {"targets": ["p1/t1", "p2/t2", "p3/t3"], "timeout_s": TIMEOUT_S, "deadline_s": DEADLINE_S}}})
        try:  # the router's own loop and client exist before counting (the answer itself may be chaos)
            router.complete("c", "warm up")
        except RouteError:
            pass
        gc.collect()
        threads0, fds0, rss0 = threading.active_count(), _fds(), _rss_mib()
        outcomes: Counter[str] = Counter()
        overruns: list[float] = []
        longest = [0.0]

        async def one(sem: asyncio.Semaphore, i: int) -> None:
            async with sem:
                t0 = time.monotonic()
                try:
                    if i % 3 == 0:
                        async for event in router.astream("c", f"call {i}"):
                            if type(event).__name__ == "Done":
                                if event.error is not None:
                                    raise event.error
                                outcomes["served"] += 1
                    else:
                        await router.acomplete("c", f"call {i}")
                        outcomes["served"] += 1
                except RouteError as exc:
                    outcomes[type(exc).__name__] += 1
                except BaseException as exc:
                    outcomes[f"LOST {type(exc).__name__}"] += 1
                elapsed = time.monotonic() - t0
                longest[0] = max(longest[0], elapsed)
                if elapsed > DEADLINE_S + MARGIN_S:
                    overruns.append(elapsed)
                if i % 25 == 0:
                    router.reset()

        async def all_calls() -> None:
            sem = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(one(sem, i) for i in range(calls)))

        t0 = time.perf_counter()
        asyncio.run(all_calls())
        wall = time.perf_counter() - t0
        rows = router.log(10**7)
        tried = sum(1 for r in rows if r["action"] not in ("skipped", "cached"))
        received = sum(1 for r in sim.requests if r.model in ("t1", "t2", "t3"))
        gc.collect()
        threads1, fds1, rss1 = threading.active_count(), _fds(), _rss_mib()
        router.close()
    lost = sum(n for k, n in outcomes.items() if k.startswith("LOST"))
    return [
        ["calls", f"{calls:,} at concurrency {concurrency} in {wall:.1f} s"],
        ["outcomes", ", ".join(f"{k} {n:,}" for k, n in outcomes.most_common())],
        ["lost (neither a result nor a RouteError)", str(lost)],
        [f"past the deadline ({DEADLINE_S} s) + {MARGIN_S} s", str(len(overruns))],
        ["longest call", f"{longest[0]:.2f} s"],
        ["attempts logged / requests received", f"{tried:,} / {received:,} (the difference: attempts cut off before their request arrived)"],
        ["threads before / after", f"{threads0} / {threads1}"],
        ["file descriptors before / after", f"{fds0} / {fds1}"],
        ["RSS before / after", "psutil not installed" if rss0 is None else f"{rss0:.0f} MiB / {rss1:.0f} MiB"],
    ]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    isolate_user_state()
    heading("Chaos: every call ends in a result or a RouteError", "python benchmarks/bench_chaos.py")
    print(f"Machine: {machine()}\n")
    print(table(["what", "measured"], run(args.calls, args.concurrency)))

if __name__ == "__main__":
    main()

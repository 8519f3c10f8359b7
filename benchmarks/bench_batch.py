"""A batch over three accounts with different rate limits: nbrouter's paced `map` against the naive way and LiteLLM.

    python benchmarks/bench_batch.py [--items 2000] [--rpm 300 600 1200] [--scale 10] [--only nbrouter naive litellm]

The loopback simulator (`nbrouter.testing.ProviderSimulator`) enforces per-key limits (`KeyLimits`:
token buckets refilled continuously, real 429 bodies with `retry-after` and `x-ratelimit-*` headers).
Each key's bucket starts empty: the accounts are in steady use, so the rate is all there is and the
theoretical minimum wall time is items / (sum of the limits). Every contender starts from that state.

`--scale N` multiplies every limit by N (300 rpm becomes 300 N per minute), so a run takes 1/N of
the minutes the unscaled limits need; the ratio to the theoretical minimum is what compares.

Contenders, one run each:
- nbrouter `Router.map` (pacing: the buckets learn each key's limit from the headers; nothing configured)
- the naive way: `asyncio.gather` over `Router.acomplete` with a semaphore of the same concurrency
- LiteLLM's Router with the three keys as deployments of one model, each given its `rpm`
  (`usage-based-routing-v2`, which counts requests per deployment per minute), when `litellm` is installed
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported anywhere

from _common import heading, isolate_user_state, machine, table, versions

from nbrouter import Router
from nbrouter.router.batch.dispatch import DEFAULT_CONCURRENCY
from nbrouter.testing import KeyLimits, ProviderSimulator, Reply

KEYS = ("bench-batch-key-1", "bench-batch-key-2", "bench-batch-key-3")


def limit_keys(sim: ProviderSimulator, rpms: list[float]) -> None:
    sim.rate_limits.clear()
    for key, rpm in zip(KEYS, rpms):
        sim.rate_limits.set(key, KeyLimits(requests_per_minute=rpm, start_full=False))


def counts(sim: ProviderSimulator) -> tuple[int, int]:
    c = sim.rate_limits.counts
    return sum(k.accepted for k in c.values()), sum(k.refused for k in c.values())


def config(sim: ProviderSimulator) -> dict[str, Any]:
    accounts = [{"name": f"k{i + 1}", "api_key_env": f"BENCH_BATCH_KEY_{i + 1}"} for i in range(len(KEYS))]
    return {"providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "accounts": accounts}},
            "combos": {"batch": {"targets": ["sim/m"]}}}


def prompts(n: int) -> list[str]:
    return [f"item {i}" for i in range(n)]


async def run_nbrouter(sim: ProviderSimulator, n: int, concurrency: int) -> tuple[float, int, int]:
    router = Router(config(sim), persist=False)
    try:
        t0 = time.perf_counter()
        batch = await router.amap("batch", prompts(n), concurrency=concurrency, cache=False)
        wall = time.perf_counter() - t0
        await router.aclose()
        return wall, batch.done, len(batch) - batch.done
    finally:
        router.close()


async def run_naive(sim: ProviderSimulator, n: int, concurrency: int) -> tuple[float, int, int]:
    router = Router(config(sim), persist=False)
    sem = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> bool:
        async with sem:
            try:
                await router.acomplete("batch", prompt)
                return True
            except Exception:
                return False

    try:
        t0 = time.perf_counter()
        ok = await asyncio.gather(*(one(p) for p in prompts(n)))
        wall = time.perf_counter() - t0
        await router.aclose()
        return wall, sum(ok), n - sum(ok)
    finally:
        router.close()


async def run_litellm(sim: ProviderSimulator, n: int, concurrency: int, rpms: list[float]) -> tuple[float, int, int]:
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm
    from litellm import Router as LiteRouter

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = LiteRouter(
        model_list=[{"model_name": "batch",
                     "litellm_params": {"model": "openai/m", "api_base": sim.openai_url, "api_key": key, "rpm": int(rpm)}}
                    for key, rpm in zip(KEYS, rpms)],
        routing_strategy="usage-based-routing-v2", num_retries=3,
    )
    sem = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> bool:
        async with sem:
            try:
                await router.acompletion(model="batch", messages=[{"role": "user", "content": prompt}])
                return True
            except Exception:
                return False

    t0 = time.perf_counter()
    ok = await asyncio.gather(*(one(p) for p in prompts(n)))
    return time.perf_counter() - t0, sum(ok), n - sum(ok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--rpm", type=float, nargs="+", default=[300, 600, 1200], help="requests per minute of each key")
    p.add_argument("--scale", type=float, default=10.0, help="multiply every limit (a run takes 1/scale of the time)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    p.add_argument("--only", nargs="*", choices=["nbrouter", "naive", "litellm"])
    args = p.parse_args()
    if len(args.rpm) != len(KEYS):
        p.error(f"give {len(KEYS)} limits")
    isolate_user_state()
    for i, key in enumerate(KEYS):
        os.environ[f"BENCH_BATCH_KEY_{i + 1}"] = key
    rpms = [r * args.scale for r in args.rpm]
    theoretical = args.items / (sum(rpms) / 60.0)
    wanted = args.only or ["nbrouter", "naive", "litellm"]
    from importlib.util import find_spec

    have_litellm = find_spec("litellm") is not None  # imported only when its turn comes

    rows: list[list[str]] = []
    with ProviderSimulator() as sim:
        sim.set_default(Reply("ok"))
        for name in wanted:
            if name == "litellm" and not have_litellm:
                rows.append(["LiteLLM Router (rpm per deployment)", "not installed (pip install -e '.[bench]')", "", "", "", ""])
                continue
            limit_keys(sim, rpms)
            if name == "nbrouter":
                label, coro = "nbrouter Router.map (paced)", run_nbrouter(sim, args.items, args.concurrency)
            elif name == "naive":
                label, coro = "asyncio.gather over acomplete + semaphore", run_naive(sim, args.items, args.concurrency)
            else:
                label, coro = "LiteLLM Router (rpm per deployment)", run_litellm(sim, args.items, args.concurrency, rpms)
            wall, done, failed = asyncio.run(coro)
            accepted, refused = counts(sim)
            sent = accepted + refused
            # the share of the limits' sum used for answers: theoretical minimum / wall time when all are answered
            used = (done / wall) / (sum(rpms) / 60.0)
            rows.append([label, f"{wall:.2f} s", f"{used:.3f}", f"{done}/{args.items}" + (f" ({failed} failed)" if failed else ""),
                         f"{refused} ({100 * refused / max(sent, 1):.2f}% of {sent})", f"{done / wall:.1f}"])

    heading("Batch over three rate-limited accounts", "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]))
    print(f"{args.items} items over one combo of three keys limited to {', '.join(f'{r:g}' for r in args.rpm)} requests/min"
          + (f", every limit x{args.scale:g} ({', '.join(f'{r:g}' for r in rpms)}/min)" if args.scale != 1 else "")
          + f"; buckets start empty (steady use). Theoretical minimum: {theoretical:.2f} s. Concurrency {args.concurrency}."
          + " Simulator: nbrouter.testing.ProviderSimulator in the same process (its own thread and loop).\n")
    print(table(["contender", "wall time", "answers/s / limits' sum", "answered", "429s (share of requests)", "items/s"], rows))
    print()
    print(machine())
    print(versions("nbrouter", "httpx", "aiohttp", "litellm"))


if __name__ == "__main__":
    sys.exit(main())

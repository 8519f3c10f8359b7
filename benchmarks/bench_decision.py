"""Decision time: resolving, filtering and ordering a combo, without I/O (`Router.explain`).

    python benchmarks/bench_decision.py [--rounds 7]

Scenarios: every strategy over a 10-candidate combo (the baseline is `priority`, the default), `auto`
and `priority` over 100 candidates (5 providers x 2 accounts x 10 models; `auto` is the virtual combo
built from every enabled candidate; once more with a new outcome recorded before each decision, as in
real use), and a combo nested three deep (10 candidates in all). The state
holds a latency and usage history for every candidate, so the strategies that read it have data. For
scale, the last column divides by the median time of one raw request (httpx + aiohttp transport,
concurrency 1) to the loopback server, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any, Callable

from _common import (
    BENCH_KEY,
    SERVER_NOTE,
    LoopbackServer,
    fmt_ratio,
    fmt_us,
    heading,
    isolate_user_state,
    machine,
    median,
    spread,
    table,
)

DEAD = "http://127.0.0.1:9/v1"  # never contacted: explain sends nothing
PROMPT = "Refactor this Python function and add type hints: def f(x): return x * 2"


def provider(models: list[str], accounts: int = 1) -> dict[str, Any]:
    table_: dict[str, Any] = {"protocol": "openai", "base_url": DEAD, "models": models}
    if accounts == 1:
        table_["api_key_env"] = "BENCH_KEY"
    else:
        table_["accounts"] = [{"name": f"k{i}", "api_key_env": "BENCH_KEY", "tier": ["free", "pro"][i % 2]} for i in range(accounts)]
    return table_


def config_10() -> dict[str, Any]:
    """Two providers, ten targets; one combo per strategy over the same ten; and a 3-deep nesting."""
    from nbrouter.router.decide.strategies import STRATEGIES

    targets = [f"p{p}/m{m}" for p in range(2) for m in range(5)]
    combos: dict[str, Any] = {f"s-{name}": {"targets": targets, "strategy": name} for name in STRATEGIES}
    combos["nest-inner"] = {"targets": targets[6:]}
    combos["nest-mid"] = {"targets": targets[3:6] + ["nest-inner"]}
    combos["nested"] = {"targets": targets[:3] + ["nest-mid"]}
    return {"providers": {f"p{p}": provider([f"m{m}" for m in range(5)]) for p in range(2)}, "combos": combos}


def config_100() -> dict[str, Any]:
    """Five providers x two accounts x ten models = 100 candidates."""
    models = [f"m{m}" for m in range(10)]
    targets = [f"p{p}/{m}" for p in range(5) for m in models]
    return {
        "providers": {f"p{p}": provider(models, accounts=2) for p in range(5)},
        "combos": {"priority-100": {"targets": targets}, "auto-100": {"targets": targets, "strategy": "auto"}},
    }


def warm_state(router: Any) -> None:
    """A latency and usage history for every candidate, as after some use."""
    from nbrouter.router.decide.combos import combo_for, resolve

    now = time.time()
    seen = set()
    for name in router.config.combos:
        for c in resolve(router.config, combo_for(router.config, name)):
            if c.key in seen:
                continue
            seen.add(c.key)
            for i in range(20):
                router.state.record_outcome(c.key, now - i, ok=i % 7 != 0, latency_s=0.2 + 0.01 * (hash(c.key) % 50) + 0.001 * i,
                                            ttft_s=None, streamed=False, cost=None, error=None)
            router.state.record_usage(c.account_key, now, 500)


def timer(router: Any, combo: str, n: int) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            router.explain(combo, PROMPT)
        return (time.perf_counter() - t0) / n

    return run


def timer_after_outcome(router: Any, combo: str, n: int) -> Callable[[], float]:
    """`timer`, with one new outcome recorded before each decision (a different candidate each time), as
    in real use: whatever scoring keeps between decisions must not make this case dearer. Recording costs
    about 1 us; it is timed with the decision."""
    from nbrouter.router.decide.combos import combo_for, resolve

    keys = [c.key for c in resolve(router.config, combo_for(router.config, combo))]

    def run() -> float:
        now = time.time()
        t0 = time.perf_counter()
        for i in range(n):
            router.state.record_outcome(keys[i % len(keys)], now, ok=True, latency_s=0.2 + 0.001 * (i % 50), ttft_s=None,
                                        streamed=False, cost=None, error=None)
            router.explain(combo, PROMPT)
        return (time.perf_counter() - t0) / n

    return run


def raw_request_time(url: str, n: int) -> Callable[[], float]:
    """Median seconds of one raw request at concurrency 1 (a fresh event loop per round)."""
    import httpx
    from httpx_aiohttp import AiohttpTransport

    async def go() -> float:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"authorization": f"Bearer {BENCH_KEY}"}
            times = []
            for i in range(n + 20):
                t0 = time.perf_counter()
                r = await client.post(url, json=body, headers=headers)
                r.json()
                if i >= 20:
                    times.append(time.perf_counter() - t0)
            return statistics.median(times)

    return lambda: asyncio.run(go())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=2000, help="decisions per round over 10 candidates (a tenth over 100)")
    args = p.parse_args()
    isolate_user_state()
    from nbrouter import Router
    from nbrouter.router.decide.strategies import STRATEGIES

    r10 = Router(config_10(), persist=False)
    r100 = Router(config_100(), persist=False)
    warm_state(r10)
    warm_state(r100)
    # the first decision of a model looks its price up (genai-prices, once per model): not measured
    for name in r10.config.combos:
        r10.explain(name, PROMPT)
    for name in ("priority-100", "auto-100", "auto"):
        r100.explain(name, PROMPT)

    variants: dict[str, Callable[[], float]] = {}
    labels: dict[str, tuple[str, int]] = {}
    for name in STRATEGIES:
        variants[f"{name} / 10"] = timer(r10, f"s-{name}", args.n)
        labels[f"{name} / 10"] = (name, 10)
    variants["priority / 10, nested 3 deep"] = timer(r10, "nested", args.n)
    labels["priority / 10, nested 3 deep"] = ("priority", 10)
    variants["priority / 100"] = timer(r100, "priority-100", max(50, args.n // 10))
    labels["priority / 100"] = ("priority", 100)
    variants["auto / 100 (a saved combo)"] = timer(r100, "auto-100", max(50, args.n // 10))
    labels["auto / 100 (a saved combo)"] = ("auto", 100)
    variants["auto / 100 (the virtual `auto`)"] = timer(r100, "auto", max(50, args.n // 10))
    labels["auto / 100 (the virtual `auto`)"] = ("auto", 100)
    variants["auto / 100, a new outcome before each"] = timer_after_outcome(r100, "auto-100", max(50, args.n // 10))
    labels["auto / 100, a new outcome before each"] = ("auto", 100)

    with LoopbackServer() as server:
        variants["one raw request (httpx + aiohttp, c=1)"] = raw_request_time(server.chat_url, 300)
        res: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            k = (r * 3) % len(names)
            for name in names[k:] + names[:k]:
                res[name].append(variants[name]())
    raw = res.pop("one raw request (httpx + aiohttp, c=1)")
    base = res["priority / 10"]
    rows = []
    for name, vals in res.items():
        strategy, n = labels[name]
        rows.append([
            name, fmt_us(median(vals)), spread([v * 1e6 for v in vals], "{:,.1f}"),
            f"{median(vals) / n * 1e6:,.2f}",
            fmt_ratio(median([a / b for a, b in zip(vals, base)])),
            f"{median([a / b for a, b in zip(vals, raw)]):.1%}",
        ])

    heading("Decision time: resolve, filter and order without I/O", "python benchmarks/bench_decision.py")
    print(f"Machine: {machine()}.\n")
    print(f"`Router.explain(combo, prompt)` (the loop's `_decide` plus the combo lookup and the request "
          f"object), in-memory state with a 20-call history per candidate; median of {args.rounds} "
          f"interleaved rounds of {args.n:,} decisions ({max(50, args.n // 10):,} over 100 candidates); "
          "spread = min-max of the rounds; ratio = against `priority` over 10 in the same round; the last "
          f"column = share of one raw request at concurrency 1 (median {fmt_us(median(raw))} us this run). "
          f"{SERVER_NOTE}\n")
    print(table(["strategy / candidates", "us per decision", "spread", "us per candidate", "vs priority / 10", "of one raw request"], rows))
    print()


if __name__ == "__main__":
    main()

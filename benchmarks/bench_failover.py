"""Failover cost: the time from a target's 429 answer to the next target's request, and the server-error
backoff, both measured on the server's side.

    python benchmarks/bench_failover.py [--rounds 5] [--n 200]

The loopback server records when it wrote each answer and when each request arrived (the same monotonic
clock in both processes). Through nbrouter, a combo `[bench/fail429-a, bench/bench-model]`: the first
target answers 429 at once, the router classifies it, puts the candidate on cooldown, and sends to the
second. The gap is second request's arrival minus the 429's write. Baseline: a raw httpx client (aiohttp
transport) that reads the 429, decodes its JSON and sends the second request straight away. Between
calls `Router.reset()` clears the cooldown (not timed). The same with a 500 answer measures the
server-error backoff, which must be `Policy.server_error_backoff_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from typing import Any

from _clients import MESSAGES, RawHttpx
from _common import (
    SERVER_NOTE,
    LoopbackServer,
    fmt_ms,
    fmt_ratio,
    fmt_us,
    heading,
    isolate_user_state,
    machine,
    median,
    quantile,
    router_config,
    spread,
    table,
)


def events(server: LoopbackServer) -> list[tuple[int, str, str, int]]:
    with urllib.request.urlopen(server.url + "/_events") as r:
        return [tuple(e) for e in json.loads(r.read())]  # type: ignore[misc]


def gaps(evs: list[tuple[int, str, str, int]], failing_status: int) -> list[float]:
    """Seconds from each failing answer's write to the next request's arrival."""
    out = []
    for i, (t, kind, _model, status) in enumerate(evs):
        if kind == "out" and status == failing_status:
            nxt = next((e for e in evs[i + 1 :] if e[1] == "in"), None)
            if nxt is not None:
                out.append((nxt[0] - t) / 1e9)
    return out


async def via_router(router: Any, combo: str, n: int) -> None:
    for _ in range(n):
        result = await router.acomplete(combo, messages=MESSAGES)
        assert result.served_by.endswith("/bench-model"), result.served_by
        router.reset()  # the cooldown (429) or the breaker count (500) would change the next call


async def via_raw(raw: RawHttpx, failing_model: str, n: int) -> None:
    for _ in range(n):
        r = await raw.client.post(raw.url, json={"model": failing_model, "messages": MESSAGES}, headers=raw.headers)
        r.json()
        assert r.status_code >= 400
        r = await raw.client.post(raw.url, json={"model": "bench-model", "messages": MESSAGES}, headers=raw.headers)
        r.json()["choices"][0]["message"]["content"]


async def run(args: argparse.Namespace) -> None:
    from nbrouter import Router

    with LoopbackServer(record=True) as server:
        router = Router(router_config(server.openai_url, {
            "on429": {"targets": ["bench/fail429-a", "bench/bench-model"]},
            "on500": {"targets": ["bench/fail500-a", "bench/bench-model"]},
        }), state_path=str(args.tmp / "state.sqlite3"))
        backoff_s = router.policy.server_error_backoff_s
        raw = RawHttpx(server.openai_url, aiohttp_transport=True)
        # warm both, then drop what the server recorded so far
        await via_router(router, "on429", 20)
        await via_raw(raw, "fail429-a", 20)
        events(server)
        res: dict[str, list[list[float]]] = {"nbrouter": [], "raw": []}
        for r in range(args.rounds):
            for who in (["nbrouter", "raw"] if r % 2 == 0 else ["raw", "nbrouter"]):
                if who == "nbrouter":
                    await via_router(router, "on429", args.n)
                else:
                    await via_raw(raw, "fail429-a", args.n)
                res[who].append(gaps(events(server), 429))
        back: dict[str, list[float]] = {}
        await via_router(router, "on500", args.n_backoff)
        back["nbrouter"] = gaps(events(server), 500)
        await via_raw(raw, "fail500-a", args.n_backoff)
        back["raw"] = gaps(events(server), 500)
        await raw.aclose()
        await router.aclose()
        router.close()

    rows = []
    for who, per_round in res.items():
        medians = [median(g) for g in per_round]
        p99s = [quantile(g, 0.99) for g in per_round]
        ratio = median([a / b for a, b in zip(medians, [median(g) for g in res["raw"]])])
        rows.append([who if who == "nbrouter" else "raw httpx + aiohttp (no routing)", fmt_us(median(medians)),
                     spread([m * 1e6 for m in medians], "{:,.0f}"), fmt_us(median(p99s)), fmt_ratio(ratio)])
    added = median([median(a) - median(b) for a, b in zip(res["nbrouter"], res["raw"])])
    brow = []
    for who, g in back.items():
        extra = median(g) - (backoff_s if who == "nbrouter" else 0.0)
        brow.append([who if who == "nbrouter" else "raw httpx + aiohttp (no routing, no backoff)", str(len(g)),
                     fmt_ms(median(g)), f"{fmt_ms(min(g))}-{fmt_ms(max(g))}", fmt_ms(backoff_s) if who == "nbrouter" else "0",
                     fmt_ms(extra)])

    heading("Failover: from a 429 to the next target's request, and the 500 backoff", "python benchmarks/bench_failover.py")
    print(f"Machine: {machine()}.\n")
    print(SERVER_NOTE + " It was started with `--record`: it notes the time it wrote each answer and the time "
          "each request arrived (`time.monotonic_ns()`, the same clock in both processes).\n")
    print(f"Gap = arrival of the second request minus the write of the 429; median of {args.rounds} interleaved "
          f"rounds of {args.n} calls (each round's median, and each round's p99); ratio = against the raw client "
          "in the same round. nbrouter's gap includes reading and classifying the 429, setting the cooldown, "
          "the attempt record, re-checking the next candidate and building its request; state persisted to "
          "SQLite.\n")
    print(table(["client", "gap median us", "spread of round medians", "p99 us", "ratio"], rows))
    print()
    print(f"nbrouter adds {fmt_us(added)} us to the failover: the median of the per-round differences between its gap and the raw client's (target: under 1 ms).\n")
    print(f"Server-error backoff: the first target answers 500; {args.n_backoff} calls. "
          f"`Policy.server_error_backoff_s` = {backoff_s} s.\n")
    print(table(["client", "calls", "gap median ms", "min-max ms", "policy ms", "gap minus policy ms"], brow))
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n-backoff", type=int, default=20)
    args = p.parse_args()
    args.tmp = isolate_user_state()
    asyncio.run(run(args))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()

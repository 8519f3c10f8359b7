"""Throughput and latency: nbrouter's `Router.acomplete` against raw httpx, with httpx's default transport
and with the aiohttp transport nbrouter itself uses, at concurrency 1, 16 and 64, plain and streamed.

    python benchmarks/bench_throughput.py [--rounds 5] [--requests 1000] [--profile]

The targets: nbrouter at least 0.9x of httpx + aiohttp transport at concurrency 64 (issue 8); with every call
admitted by the shared store (an account with a quota), at least 0.95x at 1, 16 and 64 (issue 22).
`--profile` runs nbrouter alone at concurrency 64 under pyinstrument and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from _clients import Driver, NbRouter, RawHttpx, drive
from _common import (
    SERVER_NOTE,
    LoopbackServer,
    fmt_ms,
    fmt_ratio,
    heading,
    isolate_user_state,
    machine,
    median,
    quantile,
    router_config,
    spread,
    table,
    versions,
)

CONCURRENCY = (1, 16, 64)
BASELINE = "httpx + aiohttp transport"


class Admitted(NbRouter):
    """`Router.acomplete` on an account with a `quota` far above the load: every call is admitted by the
    shared store (the SQLite state file) before it is sent and settled after (issue 22)."""

    name = "nbrouter, every call admitted"

    def __init__(self, url: str, state_path: str) -> None:
        from nbrouter import Router

        providers = {"bench": {"protocol": "openai", "base_url": url, "api_key_env": "BENCH_KEY",
                               "quota": {"requests_per_minute": 10_000_000}}}
        self.router = Router(router_config(url, {"one": {"targets": ["bench/bench-model"]}}, providers=providers),
                             state_path=state_path)


async def measure(drivers: list[Driver], *, stream: bool, concurrency: int, n: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per driver: rps, p50, p99 of each round; rounds interleaved, the order rotated each round."""
    for d in drivers:  # open the connections and warm every code path first
        await drive(lambda d=d: d.call(stream), max(2 * concurrency, 20), concurrency)
    out: dict[str, dict[str, list[float]]] = {d.name: {"rps": [], "p50": [], "p99": [], "cpu": []} for d in drivers}
    for r in range(rounds):
        k = r % len(drivers)
        for d in drivers[k:] + drivers[:k]:
            rps, lat, cpu = await drive(lambda d=d: d.call(stream), n, concurrency)
            out[d.name]["rps"].append(rps)
            out[d.name]["cpu"].append(cpu)
            out[d.name]["p50"].append(quantile(lat, 0.5))
            out[d.name]["p99"].append(quantile(lat, 0.99))
    return out


def rows_for(mode: str, concurrency: int, res: dict[str, dict[str, list[float]]], baselines: list[str]) -> list[list[str]]:
    rows = []
    for name, m in res.items():
        ratios = []
        for b in baselines:
            if b in res:
                per_round = [a / c for a, c in zip(m["rps"], res[b]["rps"])]
                ratios.append(fmt_ratio(median(per_round)))
            else:
                ratios.append("")
        cpu_ratio = median([b / a for a, b in zip(m["cpu"], res[baselines[0]]["cpu"])]) if baselines[0] in res else float("nan")
        rows.append([mode, str(concurrency), name, f"{median(m['rps']):,.0f}", spread(m["rps"]), *ratios,
                     fmt_ms(median(m["p50"])), fmt_ms(median(m["p99"])), f"{median(m['cpu']) * 1e6:,.0f}", fmt_ratio(cpu_ratio)])
    return rows


async def run(args: argparse.Namespace, tmp: Path) -> None:
    with LoopbackServer() as server:
        drivers: list[Driver] = [
            RawHttpx(server.openai_url, aiohttp_transport=False),
            RawHttpx(server.openai_url, aiohttp_transport=True),
            NbRouter(server.openai_url, str(tmp / "state.sqlite3")),
            Admitted(server.openai_url, str(tmp / "admitted.sqlite3")),
        ]
        rows: list[list[str]] = []
        try:
            for stream in (False, True):
                for c in CONCURRENCY:
                    n = args.requests if c > 1 else max(100, args.requests // 4)
                    res = await measure(drivers, stream=stream, concurrency=c, n=n, rounds=args.rounds)
                    rows += rows_for("stream" if stream else "plain", c, res, [BASELINE, "httpx (default transport)"])
                    print(f"  done: {'stream' if stream else 'plain'} c={c}", file=sys.stderr, flush=True)
        finally:
            for d in drivers:
                await d.aclose()
    heading("Throughput and latency: nbrouter vs raw httpx", "python benchmarks/bench_throughput.py")
    print(f"Machine: {machine()}. {versions('httpx', 'httpx-aiohttp', 'aiohttp')}.\n")
    print(SERVER_NOTE + " The server process and the client share the machine's 2 cores: at high concurrency "
          "they compete, so absolute numbers are lower than on a bigger machine; the ratios are what hold.\n")
    print(f"Median of {args.rounds} interleaved rounds (order rotated each round) of {args.requests} requests "
          f"({max(100, args.requests // 4)} at concurrency 1); spread = min-max of the rounds; the ratio is "
          "the median of the per-round ratios to the baseline in the same round; p50/p99 = median over rounds "
          "of each round's per-request latency percentiles. nbrouter runs a one-target combo with its state "
          "persisted to SQLite (the default set-up); 'every call admitted' gives its account a quota far above "
          "the load, so that each call passes the shared store's admission (issue 22). 'client CPU us/req' = the client process's CPU time "
          "(all its threads: nbrouter's SQLite writer included) per request; 'CPU-bound ratio' = baseline "
          "CPU per request / this client's, the throughput ratio to expect when the client is the bottleneck, "
          "and much less disturbed than req/s when other processes load the machine.\n")
    print(table(["mode", "conc", "client", "req/s", "spread", "vs httpx+aiohttp", "vs httpx default", "p50 ms", "p99 ms",
                 "client CPU us/req", "CPU-bound ratio"], rows))
    print()


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    from pyinstrument import Profiler

    with LoopbackServer() as server:
        d = (Admitted if args.admitted else NbRouter)(server.openai_url, str(tmp / "state.sqlite3"))
        await drive(lambda: d.call(args.profile_stream), 200, 64)
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        rps, _, _cpu = await drive(lambda: d.call(args.profile_stream), args.requests * 3, 64)
        profiler.stop()
        await d.aclose()
    print(f"nbrouter alone at concurrency 64 under the profiler: {rps:,.0f} req/s (slowed by the profiler)")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--profile", action="store_true", help="profile nbrouter at concurrency 64 instead")
    p.add_argument("--profile-stream", action="store_true", help="with --profile: streamed requests")
    p.add_argument("--admitted", action="store_true", help="with --profile: every call admitted by the store (a quota)")
    args = p.parse_args()
    tmp = isolate_user_state()
    tmp_dir: Any = tempfile.TemporaryDirectory(dir=tmp)
    asyncio.run((profile if args.profile else run)(args, Path(tmp_dir.name)))


if __name__ == "__main__":
    main()

"""nbrouter against LiteLLM's Router, the in-process peer, on the same loopback server.

    python benchmarks/bench_litellm.py [--rounds 3] [--requests 300]

LiteLLM (installed by the `bench` extra) gets one OpenAI-compatible deployment, `openai/bench-model`
with `api_base` at the loopback server, and `LITELLM_LOCAL_MODEL_COST_MAP=True` so that it does not
fetch its price map. httpx over the aiohttp transport runs in the same rounds, for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported anywhere

from _clients import Driver, LiteLLMRouter, NbRouter, RawHttpx, litellm_version
from _common import (
    SERVER_NOTE,
    LoopbackServer,
    fmt_ms,
    fmt_ratio,
    heading,
    isolate_user_state,
    machine,
    median,
    spread,
    table,
    versions,
)
from bench_throughput import CONCURRENCY, measure

LITELLM = "LiteLLM Router.acompletion"


async def run(args: argparse.Namespace, tmp: Path) -> list[list[str]]:
    with LoopbackServer() as server:
        drivers: list[Driver] = [
            RawHttpx(server.openai_url, aiohttp_transport=True),
            NbRouter(server.openai_url, str(tmp / "state.sqlite3")),
            LiteLLMRouter(server.openai_url),
        ]
        rows: list[list[str]] = []
        try:
            for stream in (False, True):
                for c in CONCURRENCY:
                    n = args.requests if c > 1 else max(50, args.requests // 3)
                    res = await measure(drivers, stream=stream, concurrency=c, n=n, rounds=args.rounds)
                    for name, m in res.items():
                        vs_litellm = median([a / b for a, b in zip(m["rps"], res[LITELLM]["rps"])])
                        rows.append(["stream" if stream else "plain", str(c), name, f"{median(m['rps']):,.0f}", spread(m["rps"]),
                                     fmt_ratio(vs_litellm), fmt_ms(median(m["p50"])), fmt_ms(median(m["p99"]))])
                    print(f"  done: {'stream' if stream else 'plain'} c={c}", file=sys.stderr, flush=True)
        finally:
            for d in drivers:
                await d.aclose()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()
    tmp = isolate_user_state()
    heading("nbrouter vs LiteLLM's Router", "python benchmarks/bench_litellm.py")
    version = litellm_version()
    if version is None:
        print("LiteLLM is not installed here (`pip install -e '.[bench]'` installs it): not measured.\n")
        return
    tmp_dir: Any = tempfile.TemporaryDirectory(dir=tmp)
    rows = asyncio.run(run(args, Path(tmp_dir.name)))
    print(f"Machine: {machine()}. {versions('litellm', 'openai', 'httpx', 'httpx-aiohttp', 'aiohttp')}.\n")
    print(SERVER_NOTE + " The server process and the client share the machine's 2 cores.\n")
    print(f"Median of {args.rounds} interleaved rounds of {args.requests} requests ({max(50, args.requests // 3)} at "
          "concurrency 1); spread = min-max of the rounds; 'vs LiteLLM' = median of the per-round throughput "
          "ratios to LiteLLM's Router in the same round; p50/p99 = median over rounds of each round's "
          "per-request latency percentiles. LiteLLM: one deployment `openai/bench-model` with `api_base` at the "
          "server, defaults otherwise; nbrouter: a one-target combo, state persisted to SQLite.\n")
    print(table(["mode", "conc", "client", "req/s", "spread", "vs LiteLLM", "p50 ms", "p99 ms"], rows))
    print()


if __name__ == "__main__":
    main()

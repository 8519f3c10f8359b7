"""Where nbrouter's cost per request goes: the router's steps added one at a time, at concurrency 64.

    python benchmarks/bench_breakdown.py [--rounds 4] [--requests 1500]

Each level runs the steps of `Router.acomplete` up to a point against the loopback server, on a
memory-only router, and reports the client process's CPU time per request (robust against other load on
the machine); the difference between two levels is what that step costs in place, with the caches and
the garbage collector of a busy loop, which is more than the same step costs alone in a tight loop
(also shown). This reads private parts (`Decider.decide`, `Loop._served`, `Loop._attempt`), so it follows them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from typing import Any

from _clients import MESSAGES, Driver, RawHttpx, drive
from _common import SERVER_NOTE, LoopbackServer, heading, isolate_user_state, machine, median, router_config, spread, table

LEVELS = [
    "send only: `providers._http.send` (with the request object, `Decider.route`, `_Call`, `Loop._endpoint`)",
    "+ `Decider.decide` (resolve, skip checks, order, the Decision)",
    "+ `Loop._served` (state updates, the Attempt, the RouteResult)",
    "`Loop._attempt` in place of send + served (events, closures, probe check, timeout)",
    "+ `Loop._log` (the call-log rows, the budget)",
    "`Router.acomplete` (the whole call)",
]


class Level(Driver):
    def __init__(self, url: str, level: int) -> None:
        from nbrouter import Router
        from nbrouter.providers import get_protocol

        self.name = LEVELS[level]
        self.level = level
        self.router = Router(router_config(url, {"one": {"targets": ["bench/bench-model"]}}), persist=False)
        self.protocol = get_protocol("openai")

    async def call(self, stream: bool) -> str:
        from nbrouter.providers import ChatRequest
        from nbrouter.router.run.loop import _Call
        from nbrouter.router.requests import build_request

        r = self.router
        if self.level >= 5:
            return (await r.acomplete("one", messages=MESSAGES)).text
        loop = r._loop
        req = build_request("one", None, stream=False, messages=MESSAGES)
        route = r._decider.route(req)
        combo = route.combo
        call = _Call(route, req, None, r.clock, loop.hooks)
        provider = r.config.providers["bench"]
        endpoint = loop._endpoint(provider, "default")
        info: Any = None
        c: Any = None
        if self.level >= 1:
            decision, info = r._decider.decide(route, req, time.time())
            c = decision.order[0]
        if self.level >= 3:
            result = await loop._attempt(call, combo, c, info, 60.0)
            if self.level >= 4:
                loop._log(call, combo.name, result.text)
            return result.text
        completion = await r._senders.get().send(self.protocol, endpoint, ChatRequest(model="bench-model", messages=MESSAGES), timeout_s=60.0)
        if self.level >= 2:
            loop._served(call, combo, c, provider, completion, info, 0.001, None, time.time())
        return completion.text

    async def aclose(self) -> None:
        await self.router.aclose()
        self.router.close()


def alone() -> list[list[str]]:
    """The same steps in a tight loop with no I/O (microseconds each)."""
    from nbrouter import Router
    from nbrouter.providers import Completion
    from nbrouter._core import Usage
    from nbrouter.router.run.loop import _Call
    from nbrouter.router.requests import build_request

    r = Router(router_config("http://127.0.0.1:9/v1", {"one": {"targets": ["bench/bench-model"]}}), persist=False)
    req = build_request("one", None, stream=False, messages=MESSAGES)
    route = r._decider.route(req)
    combo = route.combo
    decision, info = r._decider.decide(route, req, time.time())
    c = decision.order[0]
    provider = r.config.providers["bench"]

    def decide() -> None:
        r._decider.decide(route, build_request("one", None, stream=False, messages=MESSAGES), time.time())

    def served() -> None:
        completion = Completion(text="hi", model="bench-model", finish_reason="stop", usage=Usage(input_tokens=12, output_tokens=9))
        r._loop._served(_Call(route, req, None, r.clock, r._loop.hooks), combo, c, provider, completion, info, 0.001, None, time.time())

    rows = []
    for name, fn in (("`Decider.decide` (with a new request object)", decide), ("`Loop._served` (with `_Call` and a Completion)", served)):
        n = 20000
        fn()
        rows.append([name, f"{min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6:,.1f}"])
    r.close()
    return rows


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    with LoopbackServer() as server:
        drivers: list[Driver] = [RawHttpx(server.openai_url, aiohttp_transport=True)] + [Level(server.openai_url, i) for i in range(len(LEVELS))]
        for d in drivers:
            await drive(lambda d=d: d.call(False), 300, 64)
        cpu: dict[str, list[float]] = {d.name: [] for d in drivers}
        for r in range(args.rounds):
            k = r % len(drivers)
            for d in drivers[k:] + drivers[:k]:
                _, _, c = await drive(lambda d=d: d.call(False), args.requests, 64)
                cpu[d.name].append(c)
        for d in drivers:
            await d.aclose()
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=1500)
    args = p.parse_args()
    isolate_user_state()
    cpu = asyncio.run(run(args))
    names = list(cpu)
    base = cpu[names[0]]
    rows = []
    prev = None
    for name in names:
        v = cpu[name]
        m = median(v)
        rows.append([name, f"{m * 1e6:,.0f}", spread([x * 1e6 for x in v]), f"{(m - median(base)) * 1e6:+,.0f}",
                     "" if prev is None else f"{(m - prev) * 1e6:+,.0f}", f"{median([b / a for a, b in zip(v, base)]):.2f}x"])
        prev = m
    heading("Where the router's cost per request goes (concurrency 64)", "python benchmarks/bench_breakdown.py")
    print(f"Machine: {machine()}.\n")
    print(SERVER_NOTE + "\n")
    print(f"Client process CPU time per request, median of {args.rounds} interleaved rounds of {args.requests:,} "
          "requests at concurrency 64, plain (not streamed); memory-only router (no SQLite writer); "
          "'CPU-bound ratio' = raw CPU per request / this level's.\n")
    print(table(["level", "CPU us/req", "spread", "vs raw", "vs previous level", "CPU-bound ratio"], rows))
    print()
    print("The same steps alone, in a tight loop without I/O (best of 3 runs of 20,000):\n")
    print(table(["step", "us"], alone()))
    print()


if __name__ == "__main__":
    main()

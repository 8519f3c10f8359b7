"""Sharing accounts across kernels and machines: one provider enforcing a real sliding-window limit per key,
several processes running a batch at once, side by side in one run (issue 22).

    python benchmarks/bench_scale.py [--items 300] [--requests 120] [--window-s 60] [--skip-litellm]

The provider is the simulator in a process of its own (`python -m nbrouter.testing serve`), two keys, each
limited to `--requests` per sliding `--window-s` and already in steady use (its window full when the run
starts), so the combined limit is all there is. Every run gets a fresh simulator; its own counts say what
it received and answered 429. Runs:

- nbrouter, 1 kernel (the SQLite state file);
- nbrouter, 4 kernels on one state file (one machine);
- nbrouter, 2 machines x 2 kernels: a state file per machine, one Redis;
- LiteLLM's Router with `rpm` per deployment and usage-based routing over the same Redis (when installed).

Then the store's cost per call (verbs, i.e. round trips, per call, and the time they add, SQLite and
Redis) and `bench_throughput`'s measurement at concurrency 1, 16 and 64 with every call admitted by the store:
Redis against SQLite against raw httpx + aiohttp, in interleaved rounds, each store also with a shared budget
(`[budget] shared`: every call's cost counted in the store), beside the same budget kept per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _clients import MESSAGES, Driver, RawHttpx, drive, litellm_version
from _common import LoopbackServer, fmt_ratio, heading, isolate_user_state, machine, median, quantile, spread, table, versions

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["sim-scale-key-0001", "sim-scale-key-0002"]

NBROUTER_WORKER = r"""
import json, os, sys, time
from nbrouter import Router
spec = json.loads(sys.argv[1])
kwargs = {"state_path": spec["state_path"]}
if spec.get("state_url"):
    kwargs["state_url"] = spec["state_url"]
router = Router(spec["config"], **kwargs)
try:
    router.complete("sim#warm/m", "warm up")  # a kernel that has run a call before
    ready(spec)
    t0 = time.time()
    batch = router.map("c", [f"{spec['name']}-{i}" for i in range(spec["items"])], concurrency=8, cache=False)
    print(json.dumps({"done": batch.done, "failed": len(batch.failed) + len(batch.not_done), "start": t0, "end": time.time()}))
finally:
    router.close()
"""

LITELLM_WORKER = r"""
import asyncio, json, os, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")
import litellm
from litellm import Router
litellm.telemetry = False
litellm.suppress_debug_info = True
spec = json.loads(sys.argv[1])
router = Router(
    model_list=[{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": spec["url"] + "/v1", "api_key": key,
                                                       "rpm": spec["rpm"]}} for key in spec["keys"]],
    redis_host="127.0.0.1", redis_port=spec["redis_port"], routing_strategy="usage-based-routing-v2")

async def main():
    gate = asyncio.Semaphore(8)
    async def one(i):
        async with gate:
            try:
                await router.acompletion(model="m", messages=[{"role": "user", "content": f"{spec['name']}-{i}"}])
                return True
            except Exception:
                return False
    await router.acompletion(model="m", messages=[{"role": "user", "content": "warm up"}], mock_response="ok")
    ready(spec)
    t0 = time.time()
    results = await asyncio.gather(*(one(i) for i in range(spec["items"])))
    print(json.dumps({"done": sum(results), "failed": len(results) - sum(results), "start": t0, "end": time.time()}))

asyncio.run(main())
"""

#: every worker waits for the others before it starts (imports and a first call are not the run)
READY = r"""
def ready(spec):
    import os, time
    sync = spec["sync_dir"]
    open(os.path.join(sync, "ready-" + spec["name"]), "w").close()
    while not os.path.exists(os.path.join(sync, "go")):
        time.sleep(0.005)
    start_at = float(open(os.path.join(sync, "go")).read())
    while time.time() < start_at:
        time.sleep(0.001)
"""


# ---- the processes: a simulator, a redis-server, workers ------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update({f"SCALE_KEY_{i}": key for i, key in enumerate(KEYS)})
    env["SCALE_KEY_WARM"] = "sim-scale-key-warm"
    return env


class RedisServer:
    """A redis-server on a free loopback port, nothing saved; stopped by its PID."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def nbrouter_config(url: str, per_minute: int) -> dict[str, Any]:
    accounts = [{"name": f"k{i}", "api_key_env": f"SCALE_KEY_{i}", "quota": {"requests_per_minute": per_minute}} for i in range(len(KEYS))]
    accounts.append({"name": "warm", "api_key_env": "SCALE_KEY_WARM"})
    return {"providers": {"sim": {"protocol": "openai", "base_url": url + "/v1", "accounts": accounts}},
            "combos": {"c": {"targets": [f"sim#k{i}/m" for i in range(len(KEYS))], "strategy": "round-robin"}},
            "state": {"timeout_s": 1.0}}


def run_workers(program: str, specs: list[dict[str, Any]], before_go: Any = None) -> list[dict[str, Any]]:
    """One process per spec; every one starts its batch at the same moment once all are ready (and
    `before_go()` has run)."""
    sync = Path(tempfile.mkdtemp(prefix="nbrouter-scale-"))
    procs = [subprocess.Popen([sys.executable, "-c", READY + program, json.dumps(dict(spec, sync_dir=str(sync)))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()) for spec in specs]
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < len(specs) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        if before_go is not None:
            before_go()
        (sync / "go.tmp").write_text(repr(time.time() + 0.2))
        (sync / "go.tmp").rename(sync / "go")
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"a worker failed: {err[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(sync, ignore_errors=True)


def one_run(label: str, program: str, specs_for: Any, args: argparse.Namespace) -> list[str]:
    """A fresh simulator, the workers of one configuration, and the row: done, 429s, rate / limit, time."""
    from nbrouter.testing import key_id, start_simulator_process

    limit = {"requests": args.requests, "window_s": args.window_s, "start_full": False}
    limits = {"keys": {key: limit for key in KEYS}}  # (the warm-up key is not limited)
    with start_simulator_process({}) as sim:
        # the keys' windows are full (in steady use) from the moment the run starts, not from a start-up ago
        reports = run_workers(program, specs_for(sim.url), before_go=lambda: sim.configure({"rate_limits": limits}))
        stats = sim.stats()["keys"]
    done = sum(r["done"] for r in reports)
    received = sum(stats.get(key_id(k), {}).get("received", 0) for k in KEYS)
    limited = sum(stats.get(key_id(k), {}).get("answered_429", 0) for k in KEYS)
    served = sum(stats.get(key_id(k), {}).get("served", 0) for k in KEYS)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    combined = len(KEYS) * args.requests / args.window_s
    rate = served / wall / combined if wall > 0 else float("nan")
    share = f"{limited / received:.1%}" if received else "-"
    print(f"  done: {label}", file=sys.stderr, flush=True)
    return [label, f"{done}/{args.items}", f"{limited} ({share} of {received})", f"{rate:.3f}", f"{wall:.1f} s"]


def scale_table(args: argparse.Namespace, tmp: Path, redis: RedisServer | None) -> list[list[str]]:
    per_minute = int(args.requests * 60 / args.window_s)
    rows = []

    def nb(n: int, *, machines: int = 1, redis_url: str | None = None) -> Any:
        def specs(url: str) -> list[dict[str, Any]]:
            run = tempfile.mkdtemp(dir=tmp)
            out = []
            for i in range(n):
                spec = {"name": f"k{i}", "config": nbrouter_config(url, per_minute), "items": args.items // n + (i < args.items % n),
                        "state_path": str(Path(run) / f"machine{i % machines}.sqlite3")}
                if redis_url:
                    spec["state_url"] = redis_url
                out.append(spec)
            return out
        return specs

    rows.append(one_run("nbrouter, 1 kernel", NBROUTER_WORKER, nb(1), args))
    rows.append(one_run("nbrouter, 4 kernels, one state file", NBROUTER_WORKER, nb(4), args))
    if redis is not None:
        redis.flush()
        rows.append(one_run("nbrouter, Redis, 2 machines x 2 kernels", NBROUTER_WORKER, nb(4, machines=2, redis_url=redis.url), args))
        if litellm_version() is not None and not args.skip_litellm:
            redis.flush()

            def lite(url: str) -> list[dict[str, Any]]:
                return [{"name": f"k{i}", "url": url, "keys": KEYS, "rpm": per_minute, "redis_port": redis.port,
                         "items": args.items // 4 + (i < args.items % 4)} for i in range(4)]

            rows.append(one_run(f"LiteLLM {litellm_version()} Router, rpm, Redis, 4 processes", LITELLM_WORKER, lite, args))
    return rows


# ---- the store's cost per call -----------------------------------------------------------------------------


class Counting:
    """A shared store that counts the verbs called on it (each verb is one round trip to Redis)."""

    VERBS = ("admit", "apply", "next_turn", "add", "count", "extend_hold", "holds", "breaker_failure", "breaker_admits",
             "breaker_success", "end_probe", "breaker", "deal", "least_used", "acquire_slot", "buckets", "clear_holds")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        for verb in self.VERBS:
            setattr(self, verb, self._counted(getattr(inner, verb)))

    def _counted(self, verb: Any) -> Any:
        async def counted(*a: Any, **k: Any) -> Any:
            self.calls += 1
            return await verb(*a, **k)
        return counted

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def store_cost(url: str, tmp: Path, redis: RedisServer | None, n: int) -> list[list[str]]:
    """Verbs per call through Router.acomplete; the time one admission plus its settling takes when each asks
    the store (a call now and then); and, for calls one after another, the admission's time on the call's
    path (leased) and everything the store costs per call (the writes behind included)."""
    from nbrouter import Router
    from nbrouter.router.state.pacing import Lanes
    from nbrouter.router.types import Candidate

    rows = []
    stores = [("SQLite", {"state_path": str(tmp / "cost.sqlite3")})]
    if redis is not None:
        stores.append(("Redis", {"state_path": str(tmp / "cost-redis.sqlite3"), "state_url": redis.url}))
    for name, kwargs in stores:
        for quota in (None, {"requests_per_minute": 10_000_000}):
            config = {"providers": {"bench": {"protocol": "openai", "base_url": url, "api_key_env": "BENCH_KEY",
                                              **({"quota": quota} if quota else {})}},
                      "combos": {"one": {"targets": ["bench/bench-model"]}}, "state": {"timeout_s": 2.0}}
            router = Router(config, **kwargs)
            counting = Counting(router.shared)
            router.pacer.shared = counting
            for _ in range(50):
                await router.acomplete("one", messages=MESSAGES)
            counting.calls = 0
            for _ in range(n):
                await router.acomplete("one", messages=MESSAGES)
            per_call = counting.calls / n
            added = busy = "-"
            if quota:
                c, pacer = Candidate("bench", "default", "bench-model"), router.pacer
                times = []
                pacer.leasing = False  # one admission and its settling, each a round trip (a call now and then)
                for _ in range(n):
                    t0 = time.perf_counter()
                    ticket = await pacer.admit(c, 100, Lanes("interactive"), router.clock.time())
                    if not isinstance(ticket, tuple):
                        await pacer.shared.apply(pacer.settle(c, ticket, router.clock.time(), completion=None))
                    times.append(time.perf_counter() - t0)
                added = f"{median(times) * 1e3:.3f} ms (p99 {quantile(times, 0.99) * 1e3:.3f})"
                pacer.leasing = True  # calls one after another, as the router makes them: leased, settled behind
                times = []
                t_all = time.perf_counter()
                for _ in range(n):
                    t0 = time.perf_counter()
                    ticket = await pacer.admit(c, 100, Lanes("interactive"), router.clock.time())
                    times.append(time.perf_counter() - t0)
                    if not isinstance(ticket, tuple):
                        pacer.write_behind(pacer.settle(c, ticket, router.clock.time(), completion=None))
                    await asyncio.sleep(0)
                await pacer.drain()
                all_in = (time.perf_counter() - t_all) / n
                busy = f"{median(times) * 1e3:.3f} ms (p99 {quantile(times, 0.99) * 1e3:.3f}); all in {all_in * 1e3:.3f} ms"
            await router.aclose()
            router.close()
            rows.append([name, "quota (limits known)" if quota else "no limits known", f"{per_call:.2f}", added, busy])
    return rows


# ---- throughput with every call admitted ---------------------------------------------------------------------

CONCURRENCY = (1, 16, 64)


class Admitted(Driver):
    """`Router.acomplete` on an account with a quota far above the load: every call passes the store's
    admission before it is sent and settles after."""

    def __init__(self, url: str, name: str, *, budget: str | None = None, **kwargs: Any) -> None:
        from nbrouter import Router

        self.name = name
        config: dict[str, Any] = {
            "providers": {"bench": {"protocol": "openai", "base_url": url, "api_key_env": "BENCH_KEY",
                                    "quota": {"requests_per_minute": 10_000_000}}},
            "combos": {"one": {"targets": ["bench/bench-model"]}}, "state": {"timeout_s": 2.0}}
        if budget:  # every call priced and held to a budget it never reaches ("shared": counted in the store too)
            config["prices"] = {"bench/bench-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
            config["budget"] = {"usd": 1_000_000.0, **({"shared": "bench"} if budget == "shared" else {})}
        self.router = Router(config, **kwargs)

    async def call(self, stream: bool) -> str:
        return (await self.router.acomplete("one", messages=MESSAGES)).text

    async def aclose(self) -> None:
        await self.router.aclose()
        self.router.close()


async def throughput(server: LoopbackServer, tmp: Path, redis: RedisServer | None, rounds: int, n: int) -> list[list[str]]:
    """At each concurrency, raw httpx + aiohttp, nbrouter over SQLite and over Redis (every call admitted),
    in interleaved rounds (the order rotated each round)."""
    drivers: list[Driver] = [RawHttpx(server.openai_url, aiohttp_transport=True),
                             Admitted(server.openai_url, "nbrouter, SQLite store", state_path=str(tmp / "tp.sqlite3")),
                             Admitted(server.openai_url, "nbrouter, SQLite store, session budget",
                                      state_path=str(tmp / "tp-session.sqlite3"), budget="session"),
                             Admitted(server.openai_url, "nbrouter, SQLite store, shared budget",
                                      state_path=str(tmp / "tp-budget.sqlite3"), budget="shared")]
    if redis is not None:
        drivers.append(Admitted(server.openai_url, "nbrouter, Redis store", state_path=str(tmp / "tp-redis.sqlite3"),
                                state_url=redis.url))
        drivers.append(Admitted(server.openai_url, "nbrouter, Redis store, shared budget",
                                state_path=str(tmp / "tp-redis-budget.sqlite3"), state_url=redis.url, budget="shared"))
    base, sqlite = drivers[0].name, drivers[1].name
    rows = []
    try:
        for concurrency in CONCURRENCY:
            count = n if concurrency > 1 else max(100, n // 4)
            for d in drivers:
                await drive(lambda d=d: d.call(False), max(200, 2 * concurrency), concurrency)
            rps: dict[str, list[float]] = {d.name: [] for d in drivers}
            for r in range(rounds):
                k = r % len(drivers)
                for d in drivers[k:] + drivers[:k]:
                    rate, _, _ = await drive(lambda d=d: d.call(False), count, concurrency)
                    rps[d.name].append(rate)
            for d in drivers:
                vs_raw = median([a / b for a, b in zip(rps[d.name], rps[base])])
                vs_sqlite = median([a / b for a, b in zip(rps[d.name], rps[sqlite])])
                rows.append([str(concurrency), d.name, f"{median(rps[d.name]):,.0f}", spread(rps[d.name]), fmt_ratio(vs_raw),
                             fmt_ratio(vs_sqlite)])
            print(f"  done: throughput c={concurrency}", file=sys.stderr, flush=True)
    finally:
        for d in drivers:
            await d.aclose()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--requests", type=int, default=120, help="each key's limit per sliding window")
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    p.add_argument("--requests-per-round", type=int, default=1000)
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument("--only", choices=("table", "cost", "throughput"), help="run one part")
    args = p.parse_args()
    tmp = isolate_user_state()
    try:
        redis: RedisServer | None = RedisServer()
    except RuntimeError as exc:
        print(f"(no Redis runs: {exc})", file=sys.stderr)
        redis = None
    try:
        heading("Sharing accounts across kernels and machines", "python benchmarks/bench_scale.py")
        print(f"Machine: {machine()}. {versions('redis', 'litellm')}.\n")
        if args.only in (None, "table"):
            rows = scale_table(args, tmp, redis)
            print(f"Two keys at the simulator (a process of its own), each limited to {args.requests} requests per sliding "
                  f"{args.window_s:g} s and already in steady use; {args.items} items, concurrency 8 per process, each "
                  f"account's `quota` set to its real limit. 429s = what the simulator answered 429 (of what it received); "
                  f"rate / limit = answers served per second over the run / the combined limit.\n")
            print(table(["run", "done", "429s", "rate / limit", "wall time"], rows))
            print()
        with LoopbackServer() as server:
            if args.only in (None, "cost"):
                rows = asyncio.run(store_cost(server.openai_url, tmp, redis, 500))
                print("The store's cost per call (`Router.acomplete` against the loopback server, one call after "
                      "another): verbs per call (each one round trip on Redis, one transaction on SQLite); the time an "
                      "admission plus its settling take when each asks the store (a call now and then: no lease; median "
                      "of 500); and for calls one after another, the admission's time on the call's path (leased) and "
                      "the store's whole cost per call, the writes sent behind included.\n")
                print(table(["store", "account", "store verbs per call", "added per call (a round trip each)",
                             "on the call's path, busy (leased; all in: with the writes behind)"], rows))
                print()
            if args.only in (None, "throughput"):
                rows = asyncio.run(throughput(server, tmp, redis, args.rounds, args.requests_per_round))
                print(f"Throughput with every call admitted by the store (a quota far above the load), at concurrency 1, 16 "
                      f"and 64: median of {args.rounds} interleaved rounds of {args.requests_per_round} requests "
                      f"({max(100, args.requests_per_round // 4)} at concurrency 1); ratios are medians of per-round ratios.\n")
                print(table(["conc", "client", "req/s", "spread", "vs httpx+aiohttp", "vs SQLite store"], rows))
                print()
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()

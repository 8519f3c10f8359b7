"""Issue 22: kernels and machines share an account's limits exactly: several OS processes run `map` at once
over loopback against ONE simulator process that enforces a real sliding-window limit per key.

- 4 processes on one SQLite state file (one machine, four kernels);
- 2 processes with a state file each, sharing one Redis (two machines).

Each time: every item done, the server's 429s under 1 % of what it received, the store's count of requests
sent per account equal to the server's count received per key, and a cooldown one process met is seen by
the others before they send. The limits are scaled down (tens of requests per two seconds) so that a run
takes seconds; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_count
from nbrouter.router.state.pacing import SENT_PREFIX
from nbrouter.testing import key_id, start_simulator_process

KEYS = {"a": "sim-share-key-aaaa0001", "b": "sim-share-key-bbbb0002"}
#: the key of the account that only warms a process up
WARM_KEY = "sim-share-key-warm0003"
#: each key's real limit at the simulator: REQUESTS per WINDOW_S seconds, sliding
REQUESTS, WINDOW_S = 20, 2.0
#: the same limit as the config states it (per minute)
PER_MINUTE = int(REQUESTS * 60 / WINDOW_S)
#: every served reply's usage (`priced`), and the prices that make each such call cost COST exactly
USAGE = {"input_tokens": 1000, "output_tokens": 500}
PRICES = {"input_per_mtok": 3, "output_per_mtok": 15}
COST = Decimal("0.0105")

WORKER = r"""
import json, os, sys, time
from nbrouter import Router
from nbrouter.router.types import Action
from nbrouter._core import ErrorKind

spec = json.loads(sys.argv[1])
kwargs = {"state_path": spec["state_path"]}
if spec.get("state_url"):
    kwargs["state_url"] = spec["state_url"]
router = Router(spec["config"], **kwargs)
try:
    # a kernel that has run a call before (its connections open, its code warm), on a key of its own:
    # what the batch then does is sharing, not the start-up of a process
    warm = router.complete("sim#warm/m", "warm up")
    sync = spec["sync_dir"]  # ready, then wait for the start every process was given
    open(os.path.join(sync, "ready-" + spec["name"]), "w").close()
    while not os.path.exists(os.path.join(sync, "go")):
        time.sleep(0.005)
    start_at = float(open(os.path.join(sync, "go")).read())
    while time.time() < start_at + spec.get("delay", 0.0):
        time.sleep(0.001)
    if spec.get("calls"):  # interactive calls (cells), one after another, `every_s` apart
        entries = []
        for i in range(spec["calls"]):
            if i:
                time.sleep(spec.get("every_s", 0.0))
            try:
                entries.append(router.complete(spec.get("combo", "c"), f"{spec['name']}-{i}"))
            except Exception as error:
                entries.append(error)
        done = sum(1 for e in entries if not isinstance(e, Exception))
        failed = [str(e) for e in entries if isinstance(e, Exception)]
    else:
        batch = router.map(spec.get("combo", "c"), [f"{spec['name']}-{i}" for i in range(spec["items"])],
                           concurrency=spec["concurrency"], cache=False)
        entries, done, failed = list(batch), batch.done, [str(f.error) for f in batch.failed]
    tried = [a for e in entries for a in e.attempts if a.action is not Action.SKIPPED]
    router.status()  # (this process's spending sent to a shared budget, and every process's read)
    print(json.dumps({
        "done": done,
        "failed": failed,
        "sent": {k: sum(1 for a in tried if a.candidate == k) for k in {a.candidate for a in tried}},
        "attempts": [[(a.candidate, a.action.value, a.kind.value if a.kind else None) for a in e.attempts] for e in entries],
        "limited": sum(1 for a in tried if a.kind is ErrorKind.RATE_LIMIT),
        "refused": router.pacer.refused,
        # what this process's calls cost, and its budget's spending as it sees it at the end
        "cost": str(sum(e.cost_usd or 0 for e in [warm, *entries] if not isinstance(e, Exception))),
        "budget": str(router.budget.spent),
    }))
finally:
    router.close()
"""


def config(url: str, *, strategy: str = "round-robin", state: dict[str, Any] | None = None,
           budget: dict[str, Any] | None = None, **policy: Any) -> dict[str, Any]:
    """One provider at the simulator with two accounts (keys a and b), each with its real limit as `quota`,
    in a combo over both (and a third account, `warm`, that only warms a process up)."""
    accounts = [{"name": name, "api_key_env": f"SHARE_KEY_{name.upper()}", "quota": {"requests_per_minute": PER_MINUTE}}
                for name in KEYS]
    accounts.append({"name": "warm", "api_key_env": "SHARE_KEY_WARM"})
    return {"providers": {"sim": {"protocol": "openai", "base_url": url + "/v1", "accounts": accounts}},
            "combos": {"c": {"targets": ["sim#a/m", "sim#b/m"], "strategy": strategy}}, "policy": policy,
            "state": state or {}, "budget": budget or {}, "prices": {"sim/m": PRICES}}


def run_workers(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start one process per spec; once every one is ready (imported, warmed up), they all begin their batch
    at one moment (plus a spec's `delay`). Returns their reports."""
    env = dict(os.environ, **{f"SHARE_KEY_{n.upper()}": k for n, k in KEYS.items()}, SHARE_KEY_WARM=WARM_KEY)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    sync = Path(tempfile.mkdtemp(prefix="nbrouter-share-"))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(dict(spec, sync_dir=str(sync)))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for spec in specs]
    try:
        deadline = time.monotonic() + 60
        while len(list(sync.glob("ready-*"))) < len(specs) and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        go = sync / "go.tmp"
        go.write_text(repr(time.time() + 0.2))
        go.rename(sync / "go")
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(sync, ignore_errors=True)
    return reports


def store_count(key: str, **where: Any) -> float:
    """What the shared store counted under `key` (in a window that never ends), read as another process would."""
    return shared_count(key, **where)


def check_shared_limits(sim: Any, reports: list[dict[str, Any]], items: int, **store: Any) -> None:
    """Every item done; under 1 % answered 429; the store's count of requests sent per account is the
    server's count received per key, and both match what the processes say they sent."""
    assert sum(r["done"] for r in reports) == items, reports
    assert [r["failed"] for r in reports] == [[] for _ in reports]
    stats = sim.stats()["keys"]
    received = {name: stats.get(key_id(key), {}).get("received", 0) for name, key in KEYS.items()}
    limited = sum(stats.get(key_id(key), {}).get("answered_429", 0) for key in KEYS.values())
    assert sum(received.values()) >= items
    assert limited < 0.01 * sum(received.values()), (limited, received)
    assert sum(r["limited"] for r in reports) == limited  # what the clients met is what the server answered
    for name in KEYS:
        sent = sum(r["sent"].get(f"sim#{name}/m", 0) for r in reports)
        assert store_count(f"{SENT_PREFIX}sim#{name}", **store) == received[name] == sent
        assert stats[key_id(KEYS[name])]["max_in_window"] <= REQUESTS


@pytest.fixture
def simulator() -> Any:
    with start_simulator_process({"rate_limits": {"default": {"requests": REQUESTS, "window_s": WINDOW_S}}}) as sim:
        yield sim


def test_four_processes_on_one_state_file_share_each_accounts_limit_exactly(simulator, tmp_path) -> None:
    state = tmp_path / "state.sqlite3"
    per = 40
    specs = [{"name": f"k{i}", "config": config(simulator.url), "state_path": str(state), "items": per, "concurrency": 8}
             for i in range(4)]
    reports = run_workers(specs)
    check_shared_limits(simulator, reports, 4 * per, path=state)


def test_two_machines_with_a_state_file_each_share_each_accounts_limit_through_one_redis(simulator, redis_server, tmp_path) -> None:
    # a state file each (nothing shared on disk), one Redis; a timeout generous for two loaded cores (the
    # store's timeout is not what this test is about)
    state = {"prefix": f"share-{uuid.uuid4().hex[:8]}:", "timeout_s": 2.0}
    per = 60
    specs = [{"name": f"m{i}", "config": config(simulator.url, state=state), "state_path": str(tmp_path / f"machine{i}.sqlite3"),
              "state_url": redis_server.url(), "items": per, "concurrency": 8} for i in range(2)]
    reports = run_workers(specs)
    check_shared_limits(simulator, reports, 2 * per, url=redis_server.url(), prefix=state["prefix"])


@pytest.mark.parametrize("met", [{"type": "RateLimited", "retry_after": 30}, {"type": "QuotaExceeded"}])
def test_a_cooldown_one_process_met_is_seen_by_the_others_before_they_send(met, tmp_path) -> None:
    # a 429 (the candidate cools down 30 s, its bucket is empty as long) or an exhausted quota (the account
    # cools down: a hold alone). Four processes run; one meets it on a, first in every process's order; the
    # others, already running and not reading the state file again (state_refresh_s = 600), start a moment
    # later: only the shared store can tell them, and none sends to a
    scripts = [{"key": KEYS["a"], "behaviours": [met]}]
    limits = {"default": {"requests": REQUESTS, "window_s": WINDOW_S}}
    with start_simulator_process({"rate_limits": limits, "scripts": scripts}) as sim:
        state = str(tmp_path / "state.sqlite3")
        slow_refresh = config(sim.url, strategy="priority", state_refresh_s=600)
        reports = run_workers([{"name": "first", "config": slow_refresh, "state_path": state, "items": 1, "concurrency": 1}]
                              + [{"name": f"k{i}", "config": slow_refresh, "state_path": state, "items": 10, "concurrency": 4,
                                  "delay": 1.0} for i in range(3)])
        stats = sim.stats()["keys"]
    first, others = reports[0], reports[1:]
    assert first["done"] == 1 and first["sent"] == {"sim#a/m": 1, "sim#b/m": 1}
    assert stats[key_id(KEYS["a"])]["received"] == 1
    assert sum(r["done"] for r in others) == 30 and all(r["sent"].keys() == {"sim#b/m"} for r in others)


def test_round_robin_turns_are_handed_out_once_each_across_processes(tmp_path) -> None:
    # three targets, four processes, ten calls each: every call a turn of its own (the counts differ by at
    # most one), and the store's cursor counted all forty
    from nbrouter.router.run.loop import TURNS
    from nbrouter.router.state.guarded import open_shared

    with start_simulator_process({}) as sim:
        state = tmp_path / "state.sqlite3"
        rr = config(sim.url, strategy="round-robin", state_refresh_s=600)
        rr["combos"]["c"]["targets"] = ["sim#a/m", "sim#b/m", "sim#warm/m"]
        for account in rr["providers"]["sim"]["accounts"]:
            account.pop("quota", None)  # (nothing paced: the turns alone decide)
        reports = run_workers([{"name": f"k{i}", "config": rr, "state_path": str(state), "calls": 10} for i in range(4)])
    served = [e[-1][0] for r in reports for e in r["attempts"]]
    counts = {target: served.count(target) for target in ("sim#a/m", "sim#b/m", "sim#warm/m")}
    assert sum(counts.values()) == 40 and max(counts.values()) - min(counts.values()) <= 1, counts

    async def next_turn() -> int:
        shared = open_shared(path=state)
        try:
            return await shared.next_turn("rr:c", TURNS)
        finally:
            await shared.close()

    assert asyncio.run(next_turn()) == 40


def test_exactly_one_process_takes_a_half_open_breakers_probe(tmp_path) -> None:
    # a's one failure opens its breaker for 2 s (in the store); then three processes call at once: one of
    # them probes a (slowly), the others go to b meanwhile
    scripts = [{"key": KEYS["a"], "behaviours": [{"type": "ServerError", "status": 500}, {"type": "Reply", "delay_s": 1.0}],
                "repeat_last": True}]
    with start_simulator_process({"scripts": scripts}) as sim:
        state = str(tmp_path / "state.sqlite3")
        conf = config(sim.url, strategy="priority", state_refresh_s=600, breaker_failures=1, breaker_open_s=2.0)
        reports = run_workers([{"name": "first", "config": conf, "state_path": state, "calls": 1}]
                              + [{"name": f"k{i}", "config": conf, "state_path": state, "calls": 1, "delay": 2.5} for i in range(3)])
        received = sim.stats()["keys"][key_id(KEYS["a"])]["received"]
    assert reports[0]["attempts"][0][0][:2] == ["sim#a/m", "advance"] and reports[0]["done"] == 1
    served = [r["attempts"][0][-1] for r in reports[1:]]
    assert sorted(s[0] for s in served) == ["sim#a/m", "sim#b/m", "sim#b/m"]  # one probe, two went on
    assert received == 2  # the failure, and the one probe


def test_a_cell_in_another_kernel_is_sent_at_once_while_a_batch_saturates_the_account(simulator, tmp_path) -> None:
    # one kernel's batch fills account a's window; another kernel's cells, once the batch is in its stride
    # (past its first windows), one per window, take the reserve the batch leaves: not made to wait, not 429'd
    state = str(tmp_path / "state.sqlite3")
    conf = config(simulator.url)
    conf["combos"]["c"]["targets"] = ["sim#a/m"]
    batch, cells = run_workers([{"name": "batch", "config": conf, "state_path": state, "items": 100, "concurrency": 8},
                                {"name": "cells", "config": conf, "state_path": state, "calls": 3, "every_s": WINDOW_S + 0.2,
                                 "delay": 2 * WINDOW_S + 0.5}])
    assert batch["done"] == 100 and batch["refused"].get("batch", 0) > 0  # the batch was held to the limit
    assert cells["done"] == 3
    assert cells["attempts"] == [[["sim#a/m", "served", None]]] * 3  # each sent on its first try, not 429'd
    assert cells["refused"].get("interactive", 0) == 0  # the store never told a cell to wait


# ---- a budget shared by kernels and machines -----------------------------------------------------------


@pytest.fixture
def priced() -> Any:
    """A simulator whose every reply, on every key, has the same usage (so each call costs COST)."""
    reply = {"type": "Reply", "usage": USAGE}
    scripts = [{"key": key, "behaviours": [reply], "repeat_last": True} for key in [*KEYS.values(), WARM_KEY]]
    with start_simulator_process({"scripts": scripts}) as sim:
        yield sim


def check_budget(sim: Any, reports: list[dict[str, Any]], **store: Any) -> None:
    """The store's count of the shared budget is what the server served, priced, and what the processes
    say their calls cost; each process's budget counted its own spending and some of the others', never
    more than all."""
    from nbrouter.router.decide.budget import BUDGET_PREFIX, NANO

    stats = sim.stats()["keys"]
    served = sum(stats.get(key_id(key), {}).get("served", 0) for key in [*KEYS.values(), WARM_KEY])
    spent = sum(Decimal(r["cost"]) for r in reports)
    assert spent == served * COST > 0
    assert store_count(f"{BUDGET_PREFIX}team|usd", **store) == float(served * COST * NANO)
    assert all(Decimal(r["cost"]) <= Decimal(r["budget"]) <= spent for r in reports)
    assert Decimal(reports[-1]["budget"]) > Decimal(reports[-1]["cost"])  # (the last to read saw others' too)


def test_four_kernels_on_one_state_file_spend_from_one_shared_budget_as_the_server_counts(priced, tmp_path) -> None:
    state = tmp_path / "state.sqlite3"
    conf = config(priced.url, budget={"shared": "team"})
    for account in conf["providers"]["sim"]["accounts"]:
        account.pop("quota", None)  # (nothing paced: the spending alone is counted)
    specs = [{"name": f"k{i}", "config": conf, "state_path": str(state), "items": 12, "concurrency": 4} for i in range(4)]
    reports = run_workers(specs)
    assert sum(r["done"] for r in reports) == 48
    reports.sort(key=lambda r: Decimal(r["budget"]))  # (the last: the process that read the most)
    check_budget(priced, reports, path=state)


def test_two_machines_spend_from_one_shared_budget_through_redis_and_a_spent_one_refuses_before_sending(
        priced, redis_server, tmp_path) -> None:
    state = {"prefix": f"budget-{uuid.uuid4().hex[:8]}:", "timeout_s": 2.0}
    conf = config(priced.url, state=state, budget={"shared": "team"})
    for account in conf["providers"]["sim"]["accounts"]:
        account.pop("quota", None)
    machines = [{"name": f"m{i}", "config": conf, "state_path": str(tmp_path / f"machine{i}.sqlite3"),
                 "state_url": redis_server.url(), "calls": 5} for i in range(2)]
    reports = run_workers(machines)
    assert [r["done"] for r in reports] == [5, 5]
    reports.sort(key=lambda r: Decimal(r["budget"]))
    check_budget(priced, reports, url=redis_server.url(), prefix=state["prefix"])
    # a third machine whose limit leaves room for its warm-up call (whose estimate is above what it
    # costs) and not for one call more: it is refused every call before sending, although it spent
    # only the warm-up itself
    spent = sum(Decimal(r["cost"]) for r in reports)
    received = sum(s["received"] for s in priced.stats()["keys"].values())
    limited = config(priced.url, state=state, budget={"shared": "team", "usd": float(spent + 2 * COST)})
    for account in limited["providers"]["sim"]["accounts"]:
        account.pop("quota", None)
    [third] = run_workers([{"name": "m2", "config": limited, "state_path": str(tmp_path / "machine2.sqlite3"),
                            "state_url": redis_server.url(), "calls": 3}])
    assert third["done"] == 0 and len(third["failed"]) == 3
    assert all("shared budget 'team'" in f and "refused before sending" in f for f in third["failed"]), third["failed"]
    assert sum(s["received"] for s in priced.stats()["keys"].values()) == received + 1  # its warm-up call alone

"""Issue 23 on Ray: `map(..., executor="ray")` on a real local Ray (two CPUs, worker processes of its own)
against the loopback simulator. Ray is kept on loopback (`_node_ip_address="127.0.0.1"`, and
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so that Ray does not swap 127.0.0.1 for the machine's address), and
each test checks with `ss` that nothing it started listens anywhere else."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Iterator

import pytest

from conftest import SIM_KEY, sim_config
from nbrouter.router.batch.cluster import ClusterExecutor
from nbrouter.router.batch.engines import RayEngine
from nbrouter.testing import Hang, Reply
from test_cluster import (
    Recording,
    Watch,
    answered_at_seventh,
    beyond_loopback,
    check_limits_kept,
    cluster_env,
    combo,
    descendants,
    limited_config,
    listeners,
    processes_titled,
    prompts_received,
    require,
    sent_after_answered,
)


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported: keep its node on 127.0.0.1
        for name, value in cluster_env().items():
            mp.setenv(name, value)
        module = require("ray")
        module.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            yield module
        finally:
            module.shutdown()


def _nothing_beyond_loopback() -> list[tuple[str, str, int]]:
    found = listeners(descendants(os.getpid()))
    assert any(name == "raylet" for _, name, _ in found)  # Ray's own processes are among those looked at
    return beyond_loopback(found)


def test_on_ray_a_batch_comes_back_in_order_keys_stay_home_and_nothing_listens_beyond_loopback(sim, make_router, ray) -> None:
    from nbrouter.router.batch.engines import RayEngine

    router = make_router(sim_config(sim, combo("sim/m")))
    engine = Recording(RayEngine())
    while_running: list[Any] = []

    def progress(p: Any) -> None:
        if not while_running:
            while_running.append(_nothing_beyond_loopback())

    items = [f"q{i}" for i in range(60)]
    batch = router.map("c", items, executor=ClusterExecutor(router, engine), progress=progress, cache=False)
    assert batch.done == 60 and not batch.failed
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items and batch.served_by_counts == {"sim#default/m": 60}
    assert all(len(e.attempts) == 1 and e.latency_s > 0 for e in batch)
    assert engine.shipped and all(SIM_KEY.encode() not in data for data in engine.shipped)
    assert {r.key for r in sim.requests} == {SIM_KEY}  # the workers read it from their own environment
    assert while_running == [[]] and _nothing_beyond_loopback() == []


def test_on_ray_every_item_is_done_within_each_accounts_limit_and_in_order(sim, make_router, ray) -> None:
    router = make_router(limited_config(sim))  # two keys, 20 requests per 2 s each: 200 items take 10 s at least
    items = [f"q{i}" for i in range(200)]
    batch = router.map("c", items, executor="ray", cache=False)
    assert batch.done == 200 and not batch.failed
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items
    assert set(batch.served_by_counts) == {"sim#a/m", "sim#b/m"}
    check_limits_kept(sim, sent=200)
    assert _nothing_beyond_loopback() == []


def test_on_ray_a_worker_killed_mid_batch_loses_no_item_and_resends_none_that_was_answered(sim, make_router, ray) -> None:
    from nbrouter.router.batch.engines import RayEngine

    sim.set_default(Reply(delay_s=0.2))
    router = make_router(limited_config(sim))
    items = [f"q{i}" for i in range(160)]
    killed: list[int] = []

    def kill() -> None:
        running = processes_titled("ray::run_chunk", descendants(os.getpid()))
        killed.append(running[0])
        os.kill(running[0], signal.SIGKILL)

    executor = ClusterExecutor(router, RayEngine(), chunk_size=8)
    watch = Watch(executor, 24, kill)
    batch = router.map("c", items, executor=watch)
    assert killed and executor.resent >= 1  # a chunk was lost with its worker, and its items sent again
    assert batch.done == 160 and not batch.failed and not batch.not_done
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items
    answered = prompts_received(sim, 200)
    assert set(answered) == set(items)
    assert all(answered[items[p]] == 1 for p in watch.got[:24])  # what the driver had is never asked for again
    twice = {p for p, n in answered.items() if n > 1}
    assert len(twice) <= 8 and sent_after_answered(sim) <= twice  # only calls the dead worker had on the wire
    assert _nothing_beyond_loopback() == []


def test_on_ray_a_chunks_items_reach_the_driver_as_they_finish_not_when_the_chunk_ends(sim, make_router, ray) -> None:
    router = make_router(sim_config(sim, combo("sim/m")))
    assert answered_at_seventh(sim, router, ClusterExecutor(router, RayEngine(), chunk_size=8)) == 7
    sim.reset()
    assert answered_at_seventh(sim, router, ClusterExecutor(router, RayEngine(), chunk_size=8, stream=False)) == 8


def test_ctrl_c_on_the_driver_cancels_the_ray_tasks_keeps_what_finished_and_a_second_run_sends_only_the_missing(
        sim, make_router, ray) -> None:
    sim.script([Reply()] * 12 + [Hang(30)], model="m", repeat_last=True)
    router = make_router(sim_config(sim, combo("sim/m")))
    items = [f"q{i}" for i in range(48)]
    main = threading.main_thread().ident

    def ctrl_c() -> None:  # a real SIGINT to the main thread once 12 calls are answered and more hang
        deadline = time.monotonic() + 30
        while not (len(sim.requests) >= 16 and sum(r.status == 200 for r in sim.requests) >= 12) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # (the answers streamed back meanwhile)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    executor = ClusterExecutor(router, RayEngine(), chunk_size=8)
    first = router.map("c", items, executor=executor, concurrency=16)
    answered = set(prompts_received(sim, 200))
    assert first.interrupted and len(answered) == 12
    # every answer that had come back is in the result; the rest are not done (cancelled or not sent)
    assert {items[i] for i, e in enumerate(first) if not isinstance(e, Exception)} == answered
    assert not first.failed and len(first.not_done) == 36

    sim.reset()
    second = router.map("c", items, executor=executor)
    assert second.done == 48
    received = prompts_received(sim)
    assert not set(received) & answered and sum(received.values()) == 36  # only the missing were sent

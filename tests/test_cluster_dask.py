"""Issue 23 on Dask: `map(..., executor=client)` on a real `distributed.LocalCluster` (two worker processes on
loopback) against the loopback simulator: the same BatchResult as locally, keys that never leave the
driver, every account inside its limit, a worker killed mid-batch, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Iterator

import pytest

from conftest import SIM_KEY, sim_config
from nbrouter.router.batch.cluster import ClusterExecutor
from nbrouter.router.batch.dispatch import CANCELLED, NOT_SENT_INTERRUPTED
from nbrouter.router.batch.engines import DaskEngine
from nbrouter.testing import Hang, Reply, ServerError
from test_cluster import (
    DRIVER_ONLY_ENV,
    Recording,
    Watch,
    answered_at_seventh,
    cache_keys,
    check_limits_kept,
    cluster_env,
    combo,
    limited_config,
    prompts_received,
    require,
    sent_after_answered,
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = require("distributed")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in cluster_env().items():
            mp.setenv(name, value)
        mp.delenv(DRIVER_ONLY_ENV, raising=False)  # the workers start without it
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None)
        made = distributed.Client(cluster)
        try:
            yield made
        finally:
            made.close()
            cluster.close()


def _worker_pids(client: Any) -> dict[str, int]:
    pids: dict[str, int] = client.run(os.getpid)
    return pids


def test_a_dataframe_on_dask_comes_back_in_order_with_who_served_attempts_and_cost(sim, make_router, client) -> None:
    pd = require("pandas")
    prices = {t: {"input_per_mtok": 1000, "output_per_mtok": 1000} for t in ("sim/a", "sim/b")}
    router = make_router(sim_config(sim, combo("sim/a", "sim/b"), prices=prices))
    sim.script([ServerError(500)], model="a")  # the first call anywhere fails over to b
    frame = pd.DataFrame({"name": [f"n{i}" for i in range(40)], "k": range(40)}, index=[f"r{i}" for i in range(40)])
    seen: list[int] = []
    executor = ClusterExecutor(router, DaskEngine(client))
    batch = router.map("c", frame, prompt="Hello {name}", executor=executor, progress=lambda p: seen.append(p.done), cache=False)

    assert batch.done == 40 and not batch.failed and not batch.interrupted
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == [f"Hello n{i}" for i in range(40)]  # input order
    counts = batch.served_by_counts  # a's failure may send a few more to b while a cools down, as locally
    assert set(counts) == {"sim#default/a", "sim#default/b"} and sum(counts.values()) == 40
    table = batch.to_pandas()
    assert list(table.index) == list(frame.index) and table["k"].tolist() == list(range(40))
    assert table["attempts"].tolist().count(2) == 1  # the item whose first try met the 500
    assert table.loc[table["attempts"] == 2, "served_by"].tolist() == ["sim#default/b"]
    assert batch.cost_usd > 0 and router.budget.spent == batch.cost_usd  # the driver's session budget counts it
    assert seen[-1] == 40 and seen == sorted(seen)  # the progress came from the driver, as each chunk landed
    received = prompts_received(sim)
    assert sorted(received) == sorted(f"Hello n{i}" for i in range(40))
    assert sorted(received.values()) == [1] * 39 + [2]  # one item went to a, then b; no other went twice
    assert executor.chunks >= 2 and all(r.key == SIM_KEY for r in sim.requests)
    made = client.run(lambda: len(__import__("nbrouter.router.batch.worker", fromlist=["_routers"])._routers))
    assert sum(made.values()) >= 1  # the calls ran in the workers' own Routers


def test_keys_never_leave_the_driver_on_dask(sim, make_router, client) -> None:
    router = make_router(sim_config(sim, combo("sim/m")))
    engine = Recording(DaskEngine(client))
    batch = router.map("c", [f"q{i}" for i in range(24)], executor=ClusterExecutor(router, engine), cache=False)
    assert batch.done == 24
    assert engine.shipped and all(SIM_KEY.encode() not in data for data in engine.shipped)
    assert {r.key for r in sim.requests} == {SIM_KEY}  # each worker read the key from its own environment


def test_a_worker_without_the_key_fails_its_items_with_the_usual_no_key_error(sim, make_router, client, monkeypatch) -> None:
    monkeypatch.setenv(DRIVER_ONLY_ENV, "driver-only-key-0123")
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": DRIVER_ONLY_ENV}}
    router = make_router(sim_config(sim, combo("sim/m"), providers=providers))
    batch = router.map("c", ["a", "b", "c"], executor=client, cache=False)
    assert batch.done == 0 and len(batch.failed) == 3 and sim.requests == []
    for failed in batch.failed:
        # the attempt's own note (the error's message fits its table to the output's width, wrapping it)
        notes = [a.message for a in failed.error.attempts]
        assert any(f"no key: the environment variable {DRIVER_ONLY_ENV} is not set" in n for n in notes), notes


def test_on_dask_every_item_is_done_within_each_accounts_limit_and_in_order(sim, make_router, client) -> None:
    router = make_router(limited_config(sim))  # two keys, 20 requests per 2 s each: 200 items take 10 s at least
    items = [f"q{i}" for i in range(200)]
    batch = router.map("c", items, executor=client, cache=False)
    assert batch.done == 200 and not batch.failed
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items
    assert set(batch.served_by_counts) == {"sim#a/m", "sim#b/m"}
    check_limits_kept(sim, sent=200)


def test_a_dask_worker_killed_mid_batch_loses_no_item_and_resends_none_that_was_answered(sim, make_router, client, tmp_path) -> None:
    sim.set_default(Reply(delay_s=0.2))
    router = make_router(limited_config(sim))  # 10 requests a second a key: a chunk's calls take a while
    items = [f"q{i}" for i in range(160)]
    before = _worker_pids(client)
    moment: dict[str, Any] = {}

    def kill() -> None:
        busy = [w for w, keys in client.processing().items() if keys]
        victim = busy[0]
        moment["answered"] = set(watch.got)
        os.kill(before[victim], signal.SIGKILL)
        moment["cached"] = cache_keys(router.cache.path)  # what the worker had stored when it died

    watch = Watch(ClusterExecutor(router, DaskEngine(client), chunk_size=8), 48, kill)
    batch = router.map("c", items, executor=watch)

    assert batch.done == 160 and not batch.failed and not batch.not_done
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items
    answered = prompts_received(sim, 200)
    assert set(answered) == set(items)
    keys = {router.cache_key(item.request): item.value for item in _requests(router, items)}
    assert {items[p] for p in moment["answered"]} <= set(answered)
    for position in moment["answered"]:
        assert answered[items[position]] == 1  # an answer the driver had is never asked for again
    for key in moment["cached"]:
        assert answered[keys[key]] == 1  # one the dead worker had stored is answered from the cache
    assert not sent_after_answered(sim) - {p for p, n in answered.items() if n > 1}
    twice = [p for p, n in answered.items() if n > 1]
    assert len(twice) <= 8  # at most the calls the dead worker's chunk had on the wire
    assert _worker_pids(client) != before  # the nanny started a new worker process


def test_what_a_killed_dask_worker_had_answered_is_not_sent_again_but_read_from_the_shared_cache(sim, make_router, client) -> None:
    sim.set_default(Reply(delay_s=0.2))
    router = make_router(limited_config(sim))  # 10 requests a second a key: a chunk of 48 runs for seconds
    items = [f"q{i}" for i in range(96)]
    before = _worker_pids(client)
    moment: dict[str, float] = {}

    def kill() -> None:  # once both chunks are well on their way, none of them finished
        deadline = time.monotonic() + 60
        while sum(r.status == 200 for r in sim.requests) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = [w for w, keys in client.processing().items() if keys]
        os.kill(before[busy[0]], signal.SIGKILL)
        moment["at"] = time.monotonic()  # the simulator is in this process: its arrival times are on this clock

    threading.Thread(target=kill, daemon=True).start()
    # (not streamed: the driver has none of a chunk's answers before it ends, as with an engine that cannot stream)
    batch = router.map("c", items, executor=ClusterExecutor(router, DaskEngine(client), chunk_size=48, stream=False))
    assert "at" in moment and batch.done == 96 and not batch.failed
    assert [t.rsplit(": ", 1)[1] for t in batch.texts] == items
    answered = prompts_received(sim, 200)
    # what the server had answered well before the kill (its answer long read, and stored) is never sent again
    long_answered = {_prompt_of(r) for r in sim.requests if r.status == 200 and r.time < moment["at"] - 1.0}
    assert len(long_answered) >= 24 and all(answered[p] == 1 for p in long_answered)
    assert sum(1 for e in batch if e.cached is not None) >= 10  # the dead worker's answers, read from the cache
    assert len([p for p, n in answered.items() if n > 1]) <= 8  # only the calls it had on the wire


def _prompt_of(request: Any) -> str:
    return str(request.body["messages"][-1]["content"])


def _requests(router: Any, items: list[str]) -> list[Any]:
    from nbrouter.router.batch.dispatch import prepare

    return prepare(router, "c", items).items


def test_ctrl_c_on_the_driver_stops_the_dask_tasks_keeps_what_finished_and_a_second_run_sends_only_the_missing(
        sim, make_router, client) -> None:
    sim.script([Reply()] * 12 + [Hang(30)], model="m", repeat_last=True)
    router = make_router(sim_config(sim, combo("sim/m")))
    items = [f"q{i}" for i in range(48)]
    main = threading.main_thread().ident
    assert threading.get_ident() == main

    def ctrl_c() -> None:  # a real SIGINT to the main thread, as a terminal's or Jupyter's, once 16 calls are out
        deadline = time.monotonic() + 30
        while not (len(sim.requests) >= 16 and sum(r.status == 200 for r in sim.requests) >= 12) and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    executor = ClusterExecutor(router, DaskEngine(client), chunk_size=8)
    first = router.map("c", items, executor=executor, concurrency=16)
    answered = {text for text, n in prompts_received(sim, 200).items()}
    hung = len(sim.requests) - len(answered)
    assert first.interrupted and len(answered) == 12 and hung >= 4
    # every answer a worker had came back, also from chunks still running; the calls on the wire were cancelled
    assert {items[i] for i, e in enumerate(first) if not isinstance(e, Exception)} == answered
    reasons = [e.error.reason for e in first.not_done]
    assert not first.failed and len(reasons) == 36 and reasons.count(CANCELLED) >= hung
    assert set(reasons) == {CANCELLED, NOT_SENT_INTERRUPTED}  # a call started on a worker, or not
    assert not any(client.processing().values())  # nothing left running on the cluster
    deadline = time.monotonic() + 10  # the hung calls would hang 30 s: the workers cancelled and logged them
    while len(_cancelled(router)) < hung and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_cancelled(router)) >= hung

    sim.reset()
    second = router.map("c", items, executor=executor)  # the same executor: its next batch starts afresh
    assert second.done == 48 and [second.texts[i] for i, e in enumerate(first) if not isinstance(e, Exception)] == \
        [e.text for e in first if not isinstance(e, Exception)]
    received = prompts_received(sim)
    assert not set(received) & answered and sum(received.values()) == 36  # only the missing were sent


def test_retry_failed_runs_on_the_cluster_the_batch_ran_on(sim, make_router, client) -> None:
    sim.script([ServerError(500)], model="m")  # whichever call comes first fails; one target, nothing to fall back to
    router = make_router(sim_config(sim, combo("sim/m")))
    executor = ClusterExecutor(router, DaskEngine(client))
    batch = router.map("c", ["a", "b", "c"], executor=executor, cache=False)
    assert batch.done == 2 and len(batch.failed) == 1
    shipped = executor.chunks
    again = batch.retry_failed()
    assert again.done == 3 and again.texts[:] == [f"Simulated reply from m: {x}" for x in "abc"]
    assert executor.chunks == shipped + 1 and len(sim.requests) == 4


def _cancelled(router: Any) -> list[dict[str, Any]]:
    return [row for row in router.log(500) if row["kind"] == "cancelled"]


def test_the_batch_magic_runs_on_the_cluster_named_by_executor(sim, client, tmp_path, monkeypatch) -> None:
    nbformat = require("nbformat")
    nbclient = require("nbclient")
    config = tmp_path / "config.toml"
    config.write_text(f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n\n'
                      '[combos.onthecluster]\ntargets = ["sim/m"]\n')
    monkeypatch.setenv("NBROUTER_CONFIG", str(config))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    address = client.scheduler.address
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        f"%load_ext nbrouter\nimport pandas as pd\nfrom distributed import Client\nclient = Client({address!r})\n"
        "df = pd.DataFrame({'text': ['good', 'bad', 'fine']})",
        "%%llm onthecluster --over df --executor client\nRate {text}",
        "print(_llm_batch.done, _llm_batch.texts)",
        "%%llm onthecluster --over df --executor nope\nRate {text}",
        "%%llm onthecluster --executor client\nRate this",
        "client.close()",
    )]
    runner = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    runner.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs if o.output_type == "stream")
    assert printed.startswith("3 ['Simulated reply from m: Rate good'"), [o for c in nb.cells[:3] for o in c.outputs]
    assert sorted(prompts_received(sim)) == ["Rate bad", "Rate fine", "Rate good"]
    # the calls ran in the workers' Routers, built from the kernel's configuration
    ran = client.run(lambda: any("onthecluster" in r.config.combos
                                 for r in __import__("nbrouter.router.batch.worker", fromlist=["_routers"])._routers.values()))
    assert any(ran.values())
    said = ["".join(o.get("text", "") for o in nb.cells[i].outputs if o.output_type == "stream") for i in (3, 4)]
    assert said[0].startswith("UsageError: --executor nope: there is no variable of that name")
    assert said[1].startswith("UsageError: --executor goes with --over VAR")


def test_on_dask_a_chunks_items_reach_the_driver_as_they_finish_not_when_the_chunk_ends(sim, make_router, client) -> None:
    router = make_router(sim_config(sim, combo("sim/m")))
    assert answered_at_seventh(sim, router, ClusterExecutor(router, DaskEngine(client), chunk_size=8)) == 7
    # (the same chunk unstreamed: nothing of it reaches the driver before its slowest call is answered)
    sim.reset()
    assert answered_at_seventh(sim, router, ClusterExecutor(router, DaskEngine(client), chunk_size=8, stream=False)) == 8

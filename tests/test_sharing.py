"""Issue 22, the router's side in one process: what headers say and what the config says, a batch that never
loses an item to a rate limit, a first wave that waits for its target's limits, a cell ahead of a batch,
and the shared state's mode where a user sees it. Over loopback against the simulator; time rules on a
ManualClock the router and the simulator's limiter share.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from conftest import sim_config
from nbrouter.router.state.pacing import Lanes, Limit
from nbrouter.router.types import Candidate
from nbrouter.testing import ManualClock, RateLimited, Reply, WindowLimits, key_id


def attempts(result: Any) -> list[tuple[str, str, str | None]]:
    return [(a.candidate, a.action.value, a.kind.value if a.kind else None) for a in result.attempts]


# ---- what headers say, what the config says ------------------------------------------------------------


def test_a_sliding_minute_whose_reset_is_the_time_until_it_empties_never_reads_as_per_day(sim, make_router) -> None:
    # a provider whose x-ratelimit-reset-requests is the time until its window is empty (about 60 s after
    # any request): limit x reset / used made "600 per minute" read as "600 per day" after one request.
    # (The real clock: the header's reset is a time of day.)
    sim.rate_limits.set("sim-test-key-0001", WindowLimits(requests=600, window_s=60))
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}))
    batch = router.map("c", [f"q{i}" for i in range(12)], concurrency=2, cache=False)
    assert batch.done == 12
    assert router.pacer.limits()["sim#default/m"] == ["600 requests/min"]  # however many readings


def test_a_configured_quota_wins_over_what_the_headers_suggest(sim, make_router) -> None:
    # headers that read as a per-day limit after several readings; the account's quota names requests
    sim.script([Reply(rate_limit={"limit_requests": 14400, "remaining_requests": 14000, "reset_s": 3600})] * 4, model="m")
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 120}
    router = make_router(config)  # (the real clock: the header's reset is a time of day)
    assert router.map("c", ["a", "b", "c", "d"], concurrency=1, cache=False).done == 4
    c = Candidate("sim", "default", "m")
    assert router.pacer.limits()["sim#default/m"] == ["14400 requests/day"]  # learned, and shown
    assert [lim.describe() for lim in router.pacer.limits_of(c)] == ["120 requests/min"]  # but the quota paces


# ---- a batch and its rate limits ---------------------------------------------------------------------


def test_map_never_fails_an_item_for_rate_limits_alone_while_the_batch_can_wait(sim, make_router) -> None:
    # five 429s in a row on the only candidate (three re-sends used to fail the item)
    sim.script([RateLimited(retry_after=2)] * 5 + [Reply("at last")], model="m")
    clock = ManualClock()
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=clock)
    batch = router.map("c", ["x"], cache=False)
    assert batch.done == 1 and batch[0].text == "at last"
    assert [k for _, action, k in attempts(batch[0]) if action != "skipped"] == ["rate_limit"] * 5 + [None]


def test_the_batch_deadline_ends_an_item_that_only_met_rate_limits(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=2)], model="m", repeat_last=True)
    clock = ManualClock()
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=clock)
    batch = router.map("c", ["x", "y"], cache=False, concurrency=1, deadline_s=5)
    assert batch.done == 0
    assert len(batch.failed) + len(batch.not_done) == 2  # by the deadline, not by a count of tries
    assert clock.monotonic() - 1000.0 >= 5.0


def test_a_batchs_first_wave_waits_for_its_first_target_to_learn_its_limits(sim, make_router) -> None:
    # a healthy priority combo: while the first request to a finds out its limits (it takes a while), the
    # rest of the wave waits for it rather than going down to b
    sim.script([Reply(delay_s=0.3, rate_limit={"limit_requests": 6000, "remaining_requests": 5999, "reset_s": 1})], model="a")
    sim.script([Reply(rate_limit={"limit_requests": 6000, "remaining_requests": 5990, "reset_s": 1})], model="a", repeat_last=True)
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}))
    batch = router.map("c", [f"q{i}" for i in range(16)], concurrency=8, cache=False)
    assert batch.done == 16
    assert batch.served_by_counts == {"sim#default/a": 16}
    assert not [r for r in sim.requests if r.model == "b"]


def test_a_batchs_first_wave_waits_for_the_first_take_of_its_first_targets_new_bucket(clock_sim, make_router) -> None:
    # a configured quota: the bucket new to the store starts at the interactive reserve, so a batch's first
    # take waits one refill; the first wave of a healthy priority combo waits for it rather than going down
    # to the spare at once (afterwards the spare takes what the first target's pace leaves, as it should)
    sim, clock = clock_sim
    providers = {name: {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"} for name in ("sim", "spare")}
    providers["sim"]["quota"] = {"requests_per_minute": 120}
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "spare/b"]}}, providers=providers), clock=clock)
    batch = router.map("c", [f"q{i}" for i in range(12)], concurrency=4, cache=False)
    assert batch.done == 12
    first = [r.model for r in sim.requests][:1]
    assert first == ["a"], [r.model for r in sim.requests]
    assert batch.served_by_counts["sim#default/a"] >= 1


def test_a_batch_item_whose_fallback_is_only_paced_waits_for_it_instead_of_failing(clock_sim, make_router) -> None:
    # the first target's quota is exhausted; the spare has a quota too, and its bucket, new to the store, makes
    # the first take wait one refill: the item waits for the spare (a healthy target, only paced), not failed
    from nbrouter.testing import QuotaExceeded

    sim, clock = clock_sim
    providers = {name: {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                        "quota": {"requests_per_minute": 120}} for name in ("sim", "spare")}
    sim.script([QuotaExceeded()], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "spare/b"]}}, providers=providers), clock=clock)
    batch = router.map("c", ["only"], concurrency=1, cache=False)
    assert batch.done == 1 and not batch.failed
    assert batch.served_by_counts == {"spare#default/b": 1}
    assert [a.kind.value if a.kind else None for a in batch.results[0].attempts][:1] == ["quota_exceeded"]


def test_a_batch_on_an_account_in_steady_use_elsewhere_meets_no_429_from_its_first_request(clock_sim, make_router) -> None:
    # the provider's window of the key is full of other users' requests (one frees every 0.5 s): no store of
    # ours has seen them, so a bucket new to the store must not let its first request go at once
    sim, clock = clock_sim
    sim.rate_limits.set("sim-test-key-0001", WindowLimits(requests=120, window_s=60, start_full=False))
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 120}
    router = make_router(config, clock=clock)
    batch = router.map("c", [f"q{i}" for i in range(30)], concurrency=4, cache=False)
    assert batch.done == 30
    counts = sim.rate_limits.counts["sim-test-key-0001"]
    assert counts.refused == 0 and counts.accepted == 30  # not one 429


# ---- lanes: a cell ahead of a batch ---------------------------------------------------------------------


def test_a_cells_call_is_sent_at_once_and_not_429d_while_a_batch_saturates_the_account(sim, make_router) -> None:
    # a real sliding window (real time: the batch and the cells run at once) that the batch alone would
    # fill; a cell comes once the batch is in its stride (past its first window), one per window
    sim.rate_limits.set("sim-test-key-0001", WindowLimits(requests=20, window_s=2.0))
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 600}
    router = make_router(config)
    marks = {30: threading.Event(), 50: threading.Event(), 70: threading.Event()}
    done: list[int] = []

    def progress(p: Any) -> None:
        done.append(p.done)
        for mark, event in marks.items():
            if p.done >= mark:
                event.set()

    runner = threading.Thread(target=lambda: router.map("c", [f"q{i}" for i in range(80)], concurrency=8, cache=False,
                                                        progress=progress))
    runner.start()
    cells = []
    for i, event in enumerate(marks.values()):
        assert event.wait(60)  # the batch is saturating the account
        cells.append(router.complete("c", f"cell {i}"))
    runner.join(60)
    assert max(done) == 80
    for cell in cells:
        assert attempts(cell) == [("sim#default/m", "served", None)]  # sent on its first try, not 429'd
    assert router.pacer.refused.get("interactive", 0) == 0  # the store never told a cell to wait
    assert router.pacer.refused.get("batch", 0) > 0  # while it told the batch to, all along


def test_an_interactive_call_takes_the_reserve_a_batch_leaves_in_the_bucket(clock_sim, make_router) -> None:
    sim, clock = clock_sim
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 60}
    router = make_router(config, clock=clock)
    c = Candidate("sim", "default", "m")
    run = router.background.run
    assert isinstance(run(router.pacer.admit(c, 10, Lanes("batch"), clock.time())), tuple)  # new: the reserve only
    clock.advance(1.1)  # one batch take refilled
    assert not isinstance(run(router.pacer.admit(c, 10, Lanes("batch"), clock.time())), tuple)
    refused = run(router.pacer.admit(c, 10, Lanes("batch"), clock.time()))
    assert isinstance(refused, tuple) and "60 requests/min" in refused[0]  # the batch waits ...
    assert not isinstance(run(router.pacer.admit(c, 10, Lanes("interactive"), clock.time())), tuple)  # ... a cell does not
    # and the batch's requests cost a little more than one, leaving the reserve's refill to cells
    assert Limit("sim#default", "requests", 60, 60).spec(0.99, 1, "batch").amount > 1.0


# ---- the shared state's mode, where a user sees it ------------------------------------------------------


def test_the_stores_mode_shows_in_status_and_in_the_footer_while_it_is_down(sim, make_router, start_redis) -> None:
    server = start_redis()
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}}, state={"timeout_s": 2.0})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 600}  # (its calls ask the store)
    router = make_router(config, state_url=server.url())
    first = router.complete("c", "hi")
    assert router.status().store == {"kind": "redis", "mode": "shared", "warning": None}
    assert "shared state" not in first.footer()
    server.stop()
    down = router.complete("c", "hi again")  # the call goes on
    status = router.status()
    assert status.store["mode"] == "local" and "not answering" in status.store["warning"]
    assert status.warning and "not answering" in status.warning
    assert "shared state down" in down.footer() and "\n" not in down.footer()


def test_a_quota_accounts_usage_in_status_is_what_every_process_counted(sim, make_router) -> None:
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 600}
    one, two = make_router(config), make_router(config)  # two kernels, one state file
    for router in (one, two, one):
        router.complete("c", "hi")
    row = one.status().account("sim#default")
    assert row["requests_minute"] == 3 and row["sent"] == 3
    assert sim.stats()["keys"][key_id("sim-test-key-0001")]["received"] == 3


def test_status_shows_a_hold_another_kernel_met(sim, make_router) -> None:
    from nbrouter.testing import QuotaExceeded

    sim.script([QuotaExceeded()], model="m")
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}}, policy={"state_refresh_s": 600})  # (not via the file)
    one, two = make_router(config), make_router(config)
    two.status()  # (it has read the file already)
    with pytest.raises(Exception):
        one.complete("c", "hi")
    row = two.status().account("sim#default")
    assert row["hold"] == "cooldown" and row["hold_reason"] == "quota exceeded"


def test_a_limit_learned_from_a_reply_that_said_none_left_does_not_shut_the_candidate(sim, make_router) -> None:
    # the first reply's headers: 600 a minute, none left; the next call is admitted (and learns more)
    sim.script([Reply(rate_limit={"limit_requests": 600, "remaining_requests": 0, "reset_s": 1}), Reply("second")], model="m")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=ManualClock())
    router.complete("c", "first")
    assert router.pacer.limits()["sim#default/m"] == ["600 requests/min"]
    assert router.complete("c", "again").text == "second"


def test_admissions_asked_together_cost_one_round_trip_and_never_admit_more_than_one_by_one() -> None:
    import asyncio

    from nbrouter.router.config.loading import build_config
    from nbrouter.router.decide.strategies import STRATEGIES
    from nbrouter.router.state.pacing import Pacer, Ticket
    from nbrouter.router.state.shared import MemoryShared

    config = build_config({"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "X",
                                               "quota": {"requests_per_minute": 6000}}}}, path=None, strategies=STRATEGIES)
    clock = ManualClock()
    store = MemoryShared(clock)
    asked: list[int] = []
    admit = store.admit

    async def counted(request: Any) -> Any:
        asked.append(1)
        return await admit(request)

    store.admit = counted  # type: ignore[method-assign]
    pacer = Pacer(config, store, clock=clock)
    c = Candidate("p", "default", "m")

    async def at_once(n: int, lane: str) -> list[Any]:
        return await asyncio.gather(*(pacer.admit(c, 10, Lanes(lane), clock.time()) for _ in range(n)))

    limit = Limit("p#default", "requests", 60, 6000)
    capacity = limit.spec(0.99, 1, "interactive").capacity  # the burst within the window's slack, and the reserve
    assert 10 < capacity < 99
    first = asyncio.run(at_once(10, "interactive"))  # a new bucket: the reserve for cells only
    assert sum(isinstance(t, Ticket) for t in first) == 1
    clock.advance(2.0)  # the bucket is full again (99 a second)
    asked.clear()
    answers = asyncio.run(at_once(10, "interactive"))
    assert all(isinstance(t, Ticket) for t in answers) and len(asked) == 1  # ten calls, one round trip
    asked.clear()
    clock.advance(2.0)
    answers = asyncio.run(at_once(150, "interactive"))  # more than the bucket holds at all
    assert sum(isinstance(t, Ticket) for t in answers) == int(capacity)
    clock.advance(2.0)
    asked.clear()
    assert all(isinstance(t, Ticket) for t in asyncio.run(at_once(10, "interactive")))
    answers = asyncio.run(at_once(80, "batch"))  # more than is left: no more than one by one would get
    admitted = sum(isinstance(t, Ticket) for t in answers)
    assert admitted == int((capacity - 10 - 1) / limit.spec(0.99, 1, "batch").amount)

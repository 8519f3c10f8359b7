"""Issue 17, pacing: token buckets per account and candidate keep a batch within every limit, over loopback.

Time rules run on a ManualClock that the router and the simulator's rate limiter share, so a minute of
pacing takes no real time and the simulator's own count says what the "provider" saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import sim_config
from nbrouter.router.batch.dispatch import pacer_for
from nbrouter.router.state.pacing import BURST_S, PACING_MARGIN, Lanes, Limit, Pacer, Ticket
from nbrouter.router.types import Candidate
from nbrouter.testing import KeyLimits, ManualClock, RateLimited, Reply


def two_accounts(sim: Any, *, quota_one: dict[str, int] | None = None, **combo: Any) -> dict[str, Any]:
    one: dict[str, Any] = {"name": "one", "api_key_env": "SIM_KEY"}
    if quota_one:
        one["quota"] = quota_one
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url,
                         "accounts": [one, {"name": "two", "api_key_env": "SIM_KEY_2"}]}}
    return sim_config(sim, {"c": {"targets": ["sim/m"], **combo}}, providers=providers)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("SIM_KEY_2", "sim-test-key-0002")
    import os

    return os.environ["SIM_KEY"], "sim-test-key-0002"


def test_a_paced_batch_keeps_each_account_within_its_limit_as_the_simulator_counts(clock_sim, keys, make_router) -> None:
    sim, clock = clock_sim
    sim.rate_limits.set(keys[0], KeyLimits(requests_per_minute=60))
    sim.rate_limits.set(keys[1], KeyLimits(requests_per_minute=120))
    router = make_router(two_accounts(sim), clock=clock)
    batch = router.map("c", [f"q{i}" for i in range(60)], concurrency=1, cache=False)
    assert batch.done == 60 and not batch.failed
    counts = sim.rate_limits.counts
    assert counts[keys[0]].refused == 0 and counts[keys[1]].refused == 0  # no 429 at all
    assert counts[keys[0]].accepted + counts[keys[1]].accepted == 60
    # each key's buckets started full (60 and 120), so unpaced the 60 requests would all arrive at once;
    # paced, no 10 s holds more than the limit's share of it plus one burst
    for key, rpm in ((keys[0], 60), (keys[1], 120)):
        assert counts[key].most_in(10.0) <= rpm / 6 + rpm / 60 * BURST_S + 1
    # and the faster account served about twice as many
    assert counts[keys[1]].accepted > 1.5 * counts[keys[0]].accepted


def test_a_paced_call_waits_on_the_router_clock_for_the_refill_instead_of_sending(sim, make_router) -> None:
    clock = ManualClock()
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 30}
    router = make_router(config, clock=clock)
    batch = router.map("c", ["a", "b", "c", "d", "e"], concurrency=1, cache=False)
    assert batch.done == 5 and len(sim.requests) == 5
    # a batch's request costs a little more than one: it leaves the interactive lane its share of the limit
    interval = 60 / (30 * PACING_MARGIN) / (1 - Limit("sim#default", "requests", 60, 30).reserved_share)
    # a bucket new to the store holds only the interactive reserve (the account may be in use elsewhere):
    # the first request waits for one refill too, as every later one does
    assert len(clock.slept) == 5
    assert all(abs(s - interval) < 0.01 for s in clock.slept)
    # an interactive call (a plain complete) takes the reserve a batch leaves: it does not wait
    router.complete("c", "f")
    assert len(clock.slept) == 5 and len(sim.requests) == 6


def admit(router: Any, c: Candidate, tokens: int = 10, lanes: Lanes = Lanes("batch")) -> Any:
    """Ask the router's shared store for one attempt of `c` now (it takes from the buckets when it admits)."""
    return router.background.run(router.pacer.admit(c, tokens, lanes, router.clock.time()))


def test_the_paced_skip_is_shown_in_the_decision_of_a_paced_request(sim, make_router) -> None:
    clock = ManualClock()
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 6}
    router = make_router(config, clock=clock)
    router.map("c", ["a"], cache=False)
    pacer = pacer_for(router)
    c = Candidate("sim", "default", "m")
    reason, until = admit(router, c)  # the store's answer: wait
    assert reason.startswith("paced: no headroom now (6 requests/min")
    batch_take = 1 / (1 - Limit("sim#default", "requests", 60, 6).reserved_share)
    assert until == pytest.approx(clock.time() + batch_take * 60 / (6 * PACING_MARGIN), abs=0.01)
    # and until then the skip check says so without asking the store again
    assert pacer.skip(c, 100, clock.time(), "batch") == (reason, until)
    assert pacer.skip(c, 100, clock.time(), "interactive") is None  # another lane, its own answer


def test_a_429_empties_the_bucket_until_its_retry_after_and_the_item_falls_back(sim, keys, make_router) -> None:
    sim.script([RateLimited(retry_after=5)], key=keys[0])
    clock = ManualClock()
    router = make_router(two_accounts(sim, quota_one={"requests_per_minute": 600}, account_strategy="fill-first"), clock=clock)
    one = Candidate("sim", "one", "m")
    assert isinstance(admit(router, one), tuple)  # a new bucket holds only the reserve: a batch waits for a refill
    clock.advance(1.0)  # now its first request has room
    batch = router.map("c", ["x"], cache=False)
    result = batch[0]
    assert result.served_by == "sim#two/m"
    assert [(a.candidate, a.action.value, a.kind.value if a.kind else None) for a in result.attempts] == [
        ("sim#one/m", "advance", "rate_limit"), ("sim#two/m", "served", None)]
    pacer = pacer_for(router)
    assert pacer.limited == {"sim#one/m": 1}
    spec = Limit("sim#one", "requests", 60, 600).spec(PACING_MARGIN, 1, "batch")
    assert router.background.run(router.shared.buckets("sim#one", [spec]))[spec.field] <= 0.0  # emptied for everyone
    router.reset("sim#one/m")  # (the 429's cooldown of the candidate, kept in the store too, is lifted)
    router.background.run(router.shared.clear_holds("sim#one/m"))
    reason, until = admit(router, one)
    assert "600 requests/min" in reason and 4.9 <= until - clock.time() <= 5.0  # the bucket is empty until the retry-after


def test_rate_limit_headers_set_the_candidates_buckets(sim, make_router) -> None:
    sim.script([Reply(rate_limit={"limit_requests": 600, "remaining_requests": 0, "reset_requests_s": 6,
                                  "limit_tokens": 100000, "remaining_tokens": 90000, "reset_tokens_s": 6})], model="m")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}))
    router.map("c", ["x"], cache=False)
    pacer = pacer_for(router)
    assert pacer.limits()["sim#default/m"] == ["600 requests/min", "100000 tokens/min"]
    # the reply said 0 requests remain: even an interactive call waits for one to refill
    reason, until = admit(router, Candidate("sim", "default", "m"), lanes=Lanes("interactive"))
    wait = until - router.clock.time()
    assert "600 requests/min" in reason and 0 < wait <= 60 / (600 * PACING_MARGIN) + 0.01


def test_a_reset_minutes_away_is_read_as_a_per_day_limit_only_after_several_readings(sim, make_router) -> None:
    # Groq's x-ratelimit-limit-requests is requests per day: its reset is minutes away, not seconds; one
    # reading never decides (a sliding minute's reset may also be far from what one request used)
    sim.script([Reply(rate_limit={"limit_requests": 14400, "remaining_requests": 14399 - i, "reset_requests_s": 180 + 6 * i})
                for i in range(3)], model="m")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}))
    router.map("c", ["x"], cache=False)
    assert pacer_for(router).limits()["sim#default/m"] == ["14400 requests/min"]
    router.map("c", ["y", "z"], cache=False, concurrency=1)
    assert pacer_for(router).limits()["sim#default/m"] == ["14400 requests/day"]


def _pacer(quota: dict[str, int] | None = None) -> tuple[Pacer, Any]:
    from nbrouter.router.config.loading import build_config
    from nbrouter.router.decide.strategies import STRATEGIES
    from nbrouter.router.state.shared import MemoryShared

    provider: dict[str, Any] = {"protocol": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "X"}
    if quota:
        provider["quota"] = quota
    config = build_config({"providers": {"p": provider}}, path=None, strategies=STRATEGIES)
    clock = ManualClock()
    return Pacer(config, MemoryShared(clock), clock=clock), clock


def test_tokens_per_minute_are_taken_by_estimate_and_given_back_by_reported_usage() -> None:
    pacer, clock = _pacer({"tokens_per_minute": 6000})
    c = Candidate("p", "default", "m")
    lanes = Lanes("interactive")
    assert isinstance(asyncio.run(pacer.admit(c, 90, lanes, clock.time())), tuple)  # a new bucket: the reserve only
    clock.advance(1.0)  # a second of refill is 6000 * margin / 60 = 99 tokens; the bucket holds 90 and the reserve
    now = clock.time()
    ticket = asyncio.run(pacer.admit(c, 90, lanes, now))
    assert isinstance(ticket, Ticket)
    refused = asyncio.run(pacer.admit(c, 90, lanes, now))
    assert isinstance(refused, tuple) and "6000 tokens/min" in refused[0]

    class Reported:
        usage = type("U", (), {"total_tokens": 10})()
        rate_limits = None

    pacer.skip(c, 80, refused[1], "interactive")  # (the skip memo lapses at its time)
    asyncio.run(pacer.shared.apply(pacer.settle(c, ticket, now, completion=Reported())))  # 80 of the 90 come back
    assert isinstance(asyncio.run(pacer.admit(c, 80, lanes, now)), Ticket)


def test_account_concurrency_holds_a_second_request_to_a_busy_account() -> None:
    pacer, clock = _pacer()
    c = Candidate("p", "default", "m")
    lanes = Lanes("batch", account_concurrency=1)
    assert pacer.watching(c, lanes) and not pacer.watching(c, Lanes("batch"))
    ticket = asyncio.run(pacer.admit(c, 10, lanes, clock.time()))
    assert isinstance(ticket, Ticket) and ticket.slot is not None
    reason, until = asyncio.run(pacer.admit(c, 10, lanes, clock.time()))
    assert "1 in flight on p#default" in reason
    asyncio.run(pacer.shared.apply(pacer.settle(c, ticket, clock.time(), completion=None)))  # its slot back
    clock.advance(until - clock.time())
    assert isinstance(asyncio.run(pacer.admit(c, 10, lanes, clock.time())), Ticket)


def test_a_candidate_with_no_known_limits_is_probed_one_request_at_a_time() -> None:
    pacer, clock = _pacer()
    c = Candidate("p", "default", "m")
    lanes = Lanes("batch")
    assert not pacer.watching(c, lanes)  # no limit known: the store is not asked (no round trip)
    first = pacer.local_ticket(c, 10, lanes)
    reason, _ = pacer.skip(c, 10, clock.time(), "batch")
    assert reason.startswith("paced: finding out its limits")
    assert pacer.skip(c, 10, clock.time(), "interactive") is None  # a cell's call does not wait for it

    class NoHeaders:
        usage = None
        rate_limits = None

    assert pacer.settle(c, first, clock.time(), completion=NoHeaders()) == []  # nothing for the store
    pacer.local_ticket(c, 10, lanes)
    pacer.local_ticket(c, 10, lanes)
    assert pacer.skip(c, 10, clock.time(), "batch") is None  # it answered without headers: nothing to pace it by


def test_an_item_whose_only_candidate_met_a_429_waits_for_it_and_is_sent_again(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=2), Reply("second time lucky")], model="m")
    clock = ManualClock()
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=clock)
    batch = router.map("c", ["x"], cache=False)
    result = batch[0]
    assert result.text == "second time lucky" and len(sim.requests) == 2
    assert [(a.action.value, a.kind.value if a.kind else None) for a in result.attempts] == [("advance", "rate_limit"), ("served", None)]
    assert len(clock.slept) == 1 and 2.0 <= clock.slept[0] <= 2.05  # waited out the retry-after on the clock

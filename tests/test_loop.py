"""routing.md sections 3 and 5: the loop, the error kinds and what each does, driven over real HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from conftest import sim_config
from nbrouter import (
    Action,
    AllCoolingDown,
    AllTargetsFailed,
    BudgetExceeded,
    ErrorKind,
    StopError,
)
from nbrouter.testing import (
    ManualClock,
    ContentFilter,
    ContextOverflow,
    CutStream,
    Drop,
    Empty,
    Forbidden,
    Hang,
    Malformed,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    Reply,
    ServerError,
    Unauthorized,
)


def combo(*targets: Any, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def tried(sim: Any) -> list[str]:
    return [r.model for r in sim.requests]


def kinds(result_or_error: Any) -> list[tuple[str, str, str | None]]:
    return [(a.candidate, a.action.value, a.kind.value if a.kind else None) for a in result_or_error.attempts]


# ---- section 3: the loop --------------------------------------------------------------------


def test_priority_tries_targets_as_written_and_returns_the_first_success(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", "sim/c")))
    result = router.complete("c", "hello")
    assert result.served_by == "sim#default/b"
    assert tried(sim) == ["a", "b"]
    assert kinds(result) == [("sim#default/a", "advance", "server_error"), ("sim#default/b", "served", None)]
    assert result.text.startswith("Simulated reply from b")


def test_no_candidate_outside_the_combo_ever_serves(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a", repeat_last=True)
    router = make_router(sim_config(sim, combo("sim/a")))
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hello")
    assert set(tried(sim)) == {"a"}


def test_explain_shows_the_order_complete_then_uses_with_the_same_seed(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=60)], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b", "sim/c", "sim/d"], "strategy": "round-robin"}}))
    router.complete("c", "warm up")  # a cools down, the turn counter moves (b served a's turn)
    sim.reset()
    sim.script([ServerError(500)], model="c")
    decision = router.explain("c", "hi", seed=7)
    assert decision.seed == 7
    assert [c.model for c in decision.order] == ["c", "d", "b"]  # the next turn, over the three not cooling
    assert [r.candidate.model for r in decision.skipped] == ["a"]
    assert "cooling down" in decision.skipped[0].reason and "left" in decision.skipped[0].reason
    text = str(decision)
    assert "seed 7" in text and "round-robin" in text
    result = router.complete("c", "hi", seed=7)
    assert tried(sim) == ["c", "d"]  # c's 500, then d serves: the order explain showed
    assert result.decision is not None and [c.model for c in result.decision.order] == ["c", "d", "b"]


def test_explain_sends_nothing_and_changes_nothing(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"], "strategy": "round-robin"}}))
    before = router.state.counter("rr:c")
    for _ in range(3):
        router.explain("c", "hi")
    assert sim.requests == []
    assert router.state.counter("rr:c") == before


def test_max_attempts_ends_the_loop(sim, make_router) -> None:
    for m in "abcd":
        sim.script([ServerError(500)], model=m)
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", "sim/c", "sim/d", max_attempts=2)))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    assert tried(sim) == ["a", "b"]
    assert [a.message for a in err.value.attempts if a.action is Action.SKIPPED] == ["max_attempts 2 reached"] * 2


def test_max_attempts_counts_across_nesting_levels(sim, make_router) -> None:
    for m in "abc":
        sim.script([ServerError(500)], model=m)
    config = sim_config(sim, {"inner": {"targets": ["sim/b", "sim/c"]}, "c": {"targets": ["sim/a", "inner", "sim/d"], "max_attempts": 3}})
    clock = ManualClock()
    router = make_router(config, clock=clock)
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    assert tried(sim) == ["a", "b", "c"]
    assert clock.slept == [0.25, 0.25, 0.25]  # the server-error backoffs, on the clock (d was still queued)


def test_call_deadline_stops_the_loop(sim, make_router) -> None:
    sim.script([Hang(5)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", deadline_s=0.3)))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    assert tried(sim) == ["a"]
    assert err.value.attempts[0].kind is ErrorKind.TIMEOUT
    assert err.value.attempts[1].message == "call deadline passed"


def test_all_cooling_fails_at_once_naming_the_first_to_free_up(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=300)], model="a")
    sim.script([RateLimited(retry_after=40)], model="b")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    sim.reset()
    t0 = time.perf_counter()
    with pytest.raises(AllCoolingDown) as err:
        router.complete("c", "hi")
    assert time.perf_counter() - t0 < 5  # at once: no request and no wait
    assert sim.requests == []
    assert err.value.first_free == "sim#default/b"
    assert "sim#default/b frees up first, in 40 s" in str(err.value)


def test_when_all_cooling_wait_waits_within_max_wait(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=40)], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", when_all_cooling="wait", max_wait_s=60)), clock=clock)
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a"
    assert tried(sim) == ["a", "a"]
    assert len(clock.slept) == 1 and 40 <= clock.slept[0] <= 40.5  # waited for the cooldown, on the clock


def test_when_all_cooling_wait_does_not_wait_past_max_wait(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=40)], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", when_all_cooling="wait", max_wait_s=10)), clock=clock)
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    with pytest.raises(AllCoolingDown):
        router.complete("c", "hi")
    assert clock.slept == [] and tried(sim) == ["a"]


def test_context_window_filter_skips_small_models(sim, make_router) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY", "context_window": {"small": 100}}}
    router = make_router(sim_config(sim, combo("sim/small", "sim/big"), providers=providers))
    result = router.complete("c", "x" * 2000, max_tokens=50)
    assert tried(sim) == ["big"]
    assert result.attempts[0].action is Action.SKIPPED and "window 100" in result.attempts[0].message


def test_budget_filter_skips_candidates_above_the_call_budget(sim, make_router) -> None:
    config = sim_config(sim, combo("sim/pricey", "sim/cheap"), prices={"sim/pricey": {"input_per_mtok": 1000, "output_per_mtok": 1000}, "sim/cheap": {"input_per_mtok": 0.1, "output_per_mtok": 0.1}})
    router = make_router(config)
    result = router.complete("c", "hello", max_tokens=100, max_cost_usd=0.01)
    assert tried(sim) == ["cheap"]
    assert "budget: estimated" in result.attempts[0].message
    with pytest.raises(BudgetExceeded, match="above the budget"):
        router.complete("c", "hello", max_tokens=100, max_cost_usd=0.0000001)
    assert tried(sim) == ["cheap"]


# ---- section 5: error kinds -------------------------------------------------------------------


def test_rate_limit_cools_candidate_for_retry_after(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=30)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    first = result.attempts[0]
    assert first.kind is ErrorKind.RATE_LIMIT and first.action is Action.ADVANCE and first.status == 429
    assert 29 <= first.hold_until - time.time() <= 30.5
    sim.reset()
    again = router.complete("c", "hi")
    assert tried(sim) == ["b"]
    skip = again.attempts[0]
    assert skip.action is Action.SKIPPED and "cooling down" in skip.message and "left" in skip.message


def test_rate_limit_retry_after_ms_is_read(sim, make_router) -> None:
    sim.script([RateLimited(retry_after_ms=5000)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert 4 <= result.attempts[0].hold_until - time.time() <= 5.5


def test_rate_limit_without_retry_after_cools_90_s(sim, make_router) -> None:
    sim.script([RateLimited()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert 89 <= result.attempts[0].hold_until - time.time() <= 90.5


def test_rate_limit_cooldown_is_capped_at_one_hour(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=86400)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert 3599 <= result.attempts[0].hold_until - time.time() <= 3600.5


def test_rate_limit_does_not_count_toward_the_breaker(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")), clock=clock)
    for _ in range(6):
        sim.script([RateLimited(retry_after=0.01)], model="a")
        router.complete("c", "hi")
        clock.advance(0.02)  # the cooldown is over: the next call tries a again
    assert tried(sim).count("a") == 6
    assert router.state.breaker_state("sim#default/a", clock.time()) == "closed"
    assert router.status().candidate("sim#default/a")["breaker"] == "closed"


def test_insufficient_quota_cools_the_whole_account(sim, make_router, monkeypatch) -> None:
    monkeypatch.setenv("SIM_KEY_2", "sim-test-key-0002")
    providers = {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "accounts": [{"name": "one", "api_key_env": "SIM_KEY"}, {"name": "two", "api_key_env": "SIM_KEY_2"}]},
    }
    sim.script([QuotaExceeded()], key="sim-test-key-0001")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim#one/a", "sim#one/b", "sim#two/a"]}}, providers=providers))
    result = router.complete("c", "hi")
    assert kinds(result) == [
        ("sim#one/a", "advance", "quota_exceeded"),
        ("sim#one/b", "skipped", None),
        ("sim#two/a", "served", None),
    ]
    assert 1790 <= result.attempts[0].hold_until - time.time() <= 1800.5
    assert "cooling down: quota exceeded" in result.attempts[1].message
    assert router.status().account("sim#one")["hold"] == "cooldown"


def test_auth_rereads_the_key_and_retries_once_when_it_changed(sim, make_router, monkeypatch) -> None:
    sim.script([Unauthorized(delay_s=0.3)], key="sim-test-key-0001")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    timer = threading.Timer(0.1, lambda: os.environ.__setitem__("SIM_KEY", "sim-test-key-rotated"))
    timer.start()
    result = router.complete("c", "hi")
    timer.join()
    assert kinds(result) == [("sim#default/a", "retry", "auth"), ("sim#default/a", "served", None)]
    assert [r.key for r in sim.requests] == ["sim-test-key-0001", "sim-test-key-rotated"]


def test_auth_with_an_unchanged_key_disables_the_account_until_the_key_changes(sim, make_router, monkeypatch) -> None:
    monkeypatch.setenv("OTHER_KEY", "other-key-1234")
    providers = {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
        "alt": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "OTHER_KEY"},
    }
    sim.script([Unauthorized()], key="sim-test-key-0001", repeat_last=True)
    router = make_router(sim_config(sim, combo("sim/a", "alt/a"), providers=providers))
    result = router.complete("c", "hi")
    assert kinds(result) == [("sim#default/a", "advance", "auth"), ("alt#default/a", "served", None)]
    again = router.complete("c", "hi")
    assert again.attempts[0].action is Action.SKIPPED and "until its key changes" in again.attempts[0].message
    monkeypatch.setenv("SIM_KEY", "sim-test-key-new")
    third = router.complete("c", "hi")
    assert third.served_by == "sim#default/a"


def test_forbidden_locks_the_account_for_24_h(sim, make_router, monkeypatch) -> None:
    monkeypatch.setenv("OTHER_KEY", "other-key-1234")
    providers = {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
        "alt": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "OTHER_KEY"},
    }
    sim.script([Forbidden()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", "alt/c"), providers=providers))
    result = router.complete("c", "hi")
    assert kinds(result) == [("sim#default/a", "advance", "account_locked"), ("sim#default/b", "skipped", None), ("alt#default/c", "served", None)]
    assert 86399 <= result.attempts[0].hold_until - time.time() <= 86400.5
    assert "locked" in result.attempts[1].message


def test_model_not_found_locks_the_candidate_for_30_min(sim, make_router) -> None:
    sim.script([NotFound()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert result.attempts[0].kind is ErrorKind.MODEL_NOT_FOUND
    assert 1799 <= result.attempts[0].hold_until - time.time() <= 1800.5
    sim.reset()
    router.complete("c", "hi")
    assert tried(sim) == ["b"]


@pytest.mark.parametrize("behaviour, kind", [(ServerError(500), "server_error"), (ServerError(502), "server_error"), (Overloaded(), "overloaded")])
def test_server_error_waits_250_ms_then_advances(sim, make_router, behaviour, kind) -> None:
    sim.script([behaviour], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")), clock=clock)
    result = router.complete("c", "hi")
    assert kinds(result)[0] == ("sim#default/a", "advance", kind)
    assert tried(sim) == ["a", "b"] and clock.slept == [0.25]


def test_timeout_advances_and_counts_toward_the_breaker(sim, make_router) -> None:
    sim.script([Hang(10)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", timeout_s=1.0)))
    result = router.complete("c", "hi")
    assert kinds(result)[0] == ("sim#default/a", "advance", "timeout")
    assert len(router.state.breakers["sim#default/a"].failures) == 1


def test_dropped_connection_is_a_network_error_and_advances(sim, make_router) -> None:
    sim.script([Drop()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert kinds(result)[0] == ("sim#default/a", "advance", "network")


def test_refused_connection_to_a_local_server_opens_the_breaker_at_once(sim, make_router) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    providers = {
        "local": {"preset": "ollama", "base_url": f"http://127.0.0.1:{port}/v1"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    router = make_router(sim_config(sim, combo("local/llama3", "sim/b"), providers=providers))
    result = router.complete("c", "hi")
    assert kinds(result)[0] == ("local#default/llama3", "advance", "network")
    assert "refused" in result.attempts[0].message
    assert router.state.breaker_state("local#default/llama3", time.time()) == "open"


def test_breaker_opens_after_five_counted_failures_and_half_open_admits_one_probe(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")), clock=clock)
    sim.script([ServerError(500)] * 5, model="a")
    for _ in range(5):
        router.complete("c", "hi")
    assert router.state.breaker_state("sim#default/a", clock.time()) == "open"
    sim.reset()
    skipped = router.complete("c", "hi")
    assert tried(sim) == ["b"] and "breaker open (30 s left)" in skipped.attempts[0].message
    clock.advance(29)
    assert router.state.breaker_state("sim#default/a", clock.time()) == "open"
    clock.advance(1)
    assert router.state.breaker_state("sim#default/a", clock.time()) == "half_open"
    sim.reset()
    probe = router.complete("c", "hi")  # the probe succeeds and closes the breaker
    assert probe.served_by == "sim#default/a"
    assert router.state.breaker_state("sim#default/a", clock.time()) == "closed"


def test_breaker_counts_only_failures_within_its_window(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")), clock=clock)
    sim.script([ServerError(500)] * 5, model="a")
    for _ in range(4):
        router.complete("c", "hi")
    clock.advance(61)  # the four are older than breaker_window_s (60 s) now
    router.complete("c", "hi")
    assert router.state.breaker_state("sim#default/a", clock.time()) == "closed"
    assert len(router.state.breakers["sim#default/a"].failures) == 1


def test_half_open_probe_failure_reopens_with_double_the_time(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")), clock=clock)
    sim.script([ServerError(500)] * 6, model="a")
    for _ in range(5):
        router.complete("c", "hi")
    clock.advance(30)
    router.complete("c", "hi")  # the probe fails
    b = router.state.breakers["sim#default/a"]
    assert b.state == "open" and b.multiplier == 2 and abs(b.open_for - 60.0) < 1e-9
    clock.advance(59)
    assert router.state.breaker_state("sim#default/a", clock.time()) == "open"


def test_half_open_admits_one_probe_at_a_time(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b"), policy={"server_error_backoff_s": 0.0}), clock=clock)
    sim.script([ServerError(500)] * 5, model="a")
    for _ in range(5):
        router.complete("c", "hi")
    clock.advance(30)
    sim.reset()
    sim.script([Reply("slow probe", delay_s=1.0)], model="a")

    async def two() -> list[Any]:
        first = asyncio.ensure_future(router.acomplete("c", "hi"))
        while not sim.requests:  # the probe is in flight (real I/O: polled until it reaches the simulator)
            await asyncio.sleep(0.01)
        second = await router.acomplete("c", "hi")
        result = [await first, second]
        await router.aclose()
        return result

    first, second = asyncio.run(two())
    assert first.served_by == "sim#default/a"
    assert second.served_by == "sim#default/b"
    assert "half-open" in second.attempts[0].message


def test_success_clears_the_failure_count(sim, make_router) -> None:
    router = make_router(sim_config(sim, combo("sim/a", "sim/b"), policy={"server_error_backoff_s": 0.0}))
    sim.script([ServerError(500)] * 4, model="a")
    for _ in range(4):
        router.complete("c", "hi")
    assert len(router.state.breakers["sim#default/a"].failures) == 4
    router.complete("c", "hi")
    assert router.state.breakers["sim#default/a"].failures == []


def test_stream_cut_before_any_text_advances(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=0)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    events = list(router.stream("c", "hi"))
    result = events[-1].result
    assert kinds(result)[0] == ("sim#default/a", "advance", "stream_interrupted")
    assert result.served_by == "sim#default/b" and not result.partial


def test_stream_cut_after_text_returns_the_partial_text_marked_partial(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=3)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    events = list(router.stream("c", "tell me a long story please"))
    done = events[-1]
    result = done.result
    assert result.partial and result.error
    assert result.text and result.text == "".join(e.text for e in events if type(e).__name__ == "TextDelta")
    assert kinds(result) == [("sim#default/a", "stop", "stream_interrupted")]
    assert tried(sim) == ["a"]
    assert "PARTIAL" in result.footer()


def test_in_stream_error_event_before_text_is_classified_and_advances(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=0, error="overloaded")], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = list(router.stream("c", "hi"))[-1].result
    assert kinds(result)[0] == ("sim#default/a", "advance", "overloaded")


def test_empty_response_advances_and_counts_toward_the_breaker(sim, make_router) -> None:
    sim.script([Empty()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert kinds(result)[0] == ("sim#default/a", "advance", "empty_response")
    assert len(router.state.breakers["sim#default/a"].failures) == 1


def test_malformed_json_is_classified_logged_and_survived(sim, make_router) -> None:
    sim.script([Malformed()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/b"
    assert result.attempts[0].kind is ErrorKind.MALFORMED_RESPONSE  # routing.md section 5 (issue 12): was server_error


def test_context_overflow_advances_only_to_a_larger_known_window(sim, make_router) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                         "context_window": {"small": 8192, "same": 8192, "big": 128000}}}
    sim.script([ContextOverflow(limit=8192)], model="small")
    router = make_router(sim_config(sim, combo("sim/small", "sim/same", "sim/unknown", "sim/big"), providers=providers))
    result = router.complete("c", "hi", max_tokens=10)
    assert tried(sim) == ["small", "big"]
    assert [a.action.value for a in result.attempts] == ["advance", "skipped", "skipped", "served"]


def test_context_overflow_with_no_larger_window_stops(sim, make_router) -> None:
    sim.script([ContextOverflow()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    with pytest.raises(AllTargetsFailed, match="does not fit"):
        router.complete("c", "hi")
    assert tried(sim) == ["a"]


def test_content_filter_stops_by_default(sim, make_router) -> None:
    sim.script([ContentFilter()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    with pytest.raises(StopError) as err:
        router.complete("c", "hi")
    assert err.value.kind is ErrorKind.CONTENT_FILTER
    assert tried(sim) == ["a"]
    assert "fallback_on" in str(err.value)


def test_fallback_on_replaces_the_set_of_kinds_that_advance(sim, make_router) -> None:
    sim.script([ContentFilter()], model="a")
    sim.script([ServerError(500)], model="x")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"], "fallback_on": ["content_filter"]},
                                          "d": {"targets": ["sim/x", "sim/y"], "fallback_on": ["content_filter"]}}))
    assert router.complete("c", "hi").served_by == "sim#default/b"
    with pytest.raises(StopError):
        router.complete("d", "hi")  # server_error was left out of fallback_on: it stops
    assert tried(sim) == ["a", "b", "x"]


def test_invalid_request_stops(sim, make_router) -> None:
    from nbrouter.testing import Raw

    sim.script([Raw(400, {"error": {"message": "messages: roles must alternate", "type": "invalid_request_error", "code": None}})], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    with pytest.raises(StopError) as err:
        router.complete("c", "hi")
    assert err.value.kind is ErrorKind.INVALID_REQUEST and tried(sim) == ["a"]


def test_cancelled_stops_and_counts_nothing_against_the_provider(sim, make_router) -> None:
    sim.script([Hang(5)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))

    async def cancel_it() -> None:
        task = asyncio.ensure_future(router.acomplete("c", "hi"))
        while not sim.requests:  # real I/O: cancelled once the request hangs at the simulator, not after a guess
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await router.aclose()

    asyncio.run(cancel_it())
    assert "sim#default/a" not in router.state.breakers
    router.state.flush()
    rows = router.log(5)
    assert rows[-1]["kind"] == "cancelled" and rows[-1]["action"] == "stop"
    assert tried(sim) == ["a"]
    assert router.complete("c", "hi").served_by == "sim#default/a"  # nothing held against it


def test_costs_of_failed_attempts_that_used_tokens_are_charged(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=0)], model="a")
    config = sim_config(sim, combo("sim/a", "sim/b"), prices={"sim/b": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    router = make_router(config)
    result = router.complete("c", "hi")
    served = result.attempts[-1]
    expected = (Decimal(served.usage.input_tokens) * 1 + Decimal(served.usage.output_tokens) * 2) / Decimal(1_000_000)
    assert served.cost_usd == expected
    assert result.cost_usd == expected


def test_closing_a_stream_early_cancels_and_logs_the_attempt_before_returning(sim, make_router) -> None:
    sim.script([Reply("a long answer " * 20, tokens_per_s=40)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    events = router.stream("c", "hi")
    for event in events:
        if type(event).__name__ == "TextDelta":
            break
    events.close()  # what a KeyboardInterrupt in the consumer does
    rows = router.log(5)
    assert rows[-1]["kind"] == "cancelled" and rows[-1]["candidate"] == "sim#default/a"
    assert "sim#default/a" not in router.state.breakers


def test_rate_limit_without_retry_after_cools_until_the_spent_windows_reset_header(sim, make_router) -> None:
    from nbrouter.testing import Raw

    body = {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}
    headers = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "42s",
               "x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "30s"}
    sim.script([Raw(429, body, headers=headers)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert 41 <= result.attempts[0].hold_until - time.time() <= 42.5
    account = router.status().account("sim#default")
    # the spent request window sets the cooldown; the token window (not spent) does not
    assert account["remaining_requests"] == 0 and account["remaining_tokens"] == 9000


def test_unsupported_advances_to_a_model_that_may_take_the_request(sim, make_router) -> None:
    from nbrouter.testing import Raw

    body = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model.",
                      "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}
    sim.script([Raw(400, body)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi", max_tokens=50)
    assert kinds(result)[0] == ("sim#default/a", "advance", "unsupported")
    assert result.served_by == "sim#default/b"
    assert "sim#default/a" not in router.state.breakers  # it says nothing about the model's health

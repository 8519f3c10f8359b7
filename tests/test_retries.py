"""Issue 14: same-target retries before moving on (per kind, jittered exponential backoff, Retry-After
honoured, bounded by the deadline, each retry its own row), over real HTTP with the clock."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import sim_config
from nbrouter import ComboConfigError
from nbrouter.testing import ManualClock, RateLimited, Reply, ServerError


def combo(*targets: Any, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def tried(sim: Any) -> list[str]:
    return [r.model for r in sim.requests]


def test_retries_retry_the_same_target_before_moving_on(sim, make_router) -> None:
    sim.script([ServerError(500), Reply("second time lucky")], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", retries={"server_error": 1})), clock=clock)
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a" and result.text == "second time lucky"
    assert tried(sim) == ["a", "a"]
    assert [a.action.value for a in result.attempts] == ["retry", "served"]
    assert "retry 1 of 1" in result.attempts[0].message
    assert len(clock.slept) == 1 and 0.375 <= clock.slept[0] <= 0.625  # 0.5 s, jittered by 25 %


def test_retry_backoff_is_exponential_and_jittered(sim, make_router) -> None:
    sim.script([ServerError(500)] * 3 + [Reply()], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", retries={"server_error": 3}),
                                    policy={"server_error_backoff_s": 0.0}), clock=clock)
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a"
    waits = clock.slept
    assert len(waits) == 3
    for wait, base in zip(waits, (0.5, 1.0, 2.0)):
        assert 0.75 * base <= wait <= 1.25 * base


def test_retry_honours_retry_after(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=3), Reply()], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", retries={"rate_limit": 1})), clock=clock)
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a"
    assert clock.slept == [3.0]


def test_retries_never_wait_past_the_call_deadline(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=5)], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", retries={"rate_limit": 1}, deadline_s=2)), clock=clock)
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/b"  # a 5 s Retry-After does not fit: move on at once
    assert tried(sim) == ["a", "b"] and clock.slept == []


def test_policy_retries_are_the_default_and_a_combo_overrides_them(sim, make_router) -> None:
    sim.script([ServerError(500), Reply()], model="a")
    config = sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}, "d": {"targets": ["sim/a", "sim/b"], "retries": {"server_error": 0}}},
                        policy={"retries": {"server_error": 1}})
    clock = ManualClock()
    router = make_router(config, clock=clock)
    assert router.complete("c", "hi").served_by == "sim#default/a"  # retried by the policy default
    sim.reset()
    sim.script([ServerError(500)], model="a")
    assert router.complete("d", "hi").served_by == "sim#default/b"  # the combo says no retries
    assert "retries" in router.explain("c", "hi").constants


def test_each_retry_is_its_own_row_in_the_call_log(sim, make_router) -> None:
    sim.script([ServerError(503), ServerError(500), Reply()], model="a")
    router = make_router(sim_config(sim, combo("sim/a", retries={"server_error": 2, "overloaded": 1})), clock=ManualClock())
    router.complete("c", "hi")
    rows = router.log(10)
    assert [(r["action"], r["kind"]) for r in rows] == [("retry", "overloaded"), ("retry", "server_error"), ("served", None)]


@pytest.mark.parametrize("retries, field", [({"content_filter": 1}, "retries.content_filter"), ({"server_error": -1}, "retries.server_error"),
                                            ({"server_error": "1"}, "retries.server_error")])
def test_retries_are_validated(sim, make_router, retries, field) -> None:
    with pytest.raises(ComboConfigError) as err:
        make_router(sim_config(sim, combo("sim/a", retries=retries)))
    assert err.value.field == field and err.value.combo == "c"

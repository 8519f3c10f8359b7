"""OpenRouter combos: one request with the `models` array when the combo allows it, its reported cost."""

from __future__ import annotations

from decimal import Decimal

import pytest

from nbrouter import AllTargetsFailed
from nbrouter.testing import RateLimited, Reply, ServerError


def config(sim, combos):
    return {"providers": {"openrouter": {"preset": "openrouter", "base_url": sim.openrouter_url, "api_key_env": "SIM_KEY"}}, "combos": combos}


def test_an_all_openrouter_priority_combo_sends_exactly_one_request(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=10)], model="anthropic/claude-sonnet-4.5")
    sim.script([Reply("from gemini", cost=0.00042)], model="google/gemini-2.5-flash")
    router = make_router(config(sim, {"or": {"targets": ["openrouter/anthropic/claude-sonnet-4.5", "openrouter/google/gemini-2.5-flash", "openrouter/openai/gpt-4o-mini"]}}))
    result = router.complete("or", "hi")
    assert len(sim.requests) == 1
    assert sim.requests[0].body["models"] == ["anthropic/claude-sonnet-4.5", "google/gemini-2.5-flash", "openai/gpt-4o-mini"]
    assert result.text == "from gemini"
    assert result.served_by == "openrouter#default/google/gemini-2.5-flash"
    (attempt,) = result.attempts
    assert "one OpenRouter request with models" in attempt.message and "it served google/gemini-2.5-flash" in attempt.message
    assert result.cost_usd == Decimal("0.00042")  # OpenRouter's own reported usage.cost


def test_other_strategies_try_openrouter_targets_one_by_one(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a/x")
    router = make_router(config(sim, {"rr": {"targets": ["openrouter/a/x", "openrouter/b/y"], "strategy": "round-robin"}}))
    result = router.complete("rr", "hi")
    assert [r.body.get("models") for r in sim.requests] == [None, None]
    assert [r.model for r in sim.requests] == ["a/x", "b/y"]
    assert result.served_by == "openrouter#default/b/y"


def test_a_failed_openrouter_group_reports_every_target(sim, make_router) -> None:
    sim.script([ServerError(502)], model="a/x")
    sim.script([ServerError(502)], model="b/y")
    router = make_router(config(sim, {"or": {"targets": ["openrouter/a/x", "openrouter/b/y"]}}))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("or", "hi")
    assert len(sim.requests) == 1
    assert [a.action.value for a in err.value.attempts] == ["advance", "skipped"]
    assert "inside the one OpenRouter request" in err.value.attempts[1].message

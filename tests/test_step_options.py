"""Issue 14: per-step options reach the wire (max_tokens, temperature, top_p, stop, a portable reasoning
setting mapped per protocol, a system override, extra_body), and a call's own arguments win over the step's.
Checked in the bodies the simulator received over loopback."""

from __future__ import annotations

from typing import Any

import pytest

from nbrouter import ComboConfigError


def _config(sim: Any, *steps: Any) -> dict[str, Any]:
    return {
        "providers": {
            "oa": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
            "an": {"protocol": "anthropic", "base_url": sim.anthropic_url, "api_key_env": "SIM_KEY"},
            "ge": {"protocol": "gemini", "base_url": sim.gemini_url, "api_key_env": "SIM_KEY"},
        },
        "combos": {"c": {"targets": list(steps)}},
    }


def test_step_options_reach_the_openai_wire(sim, make_router) -> None:
    step = {"target": "oa/m", "max_tokens": 800, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "reasoning": "high",
            "extra_body": {"seed": 7}}
    router = make_router(_config(sim, step))
    router.complete("c", "hi")
    body = sim.requests[0].body
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (800, 0.2, 0.9, ["END"])
    assert body["reasoning_effort"] == "high" and body["seed"] == 7


def test_a_call_s_own_arguments_win_over_the_step_s(sim, make_router) -> None:
    router = make_router(_config(sim, {"target": "oa/m", "max_tokens": 800, "temperature": 0.2, "system": "be terse"}))
    router.complete("c", "hi", temperature=0.9, system="be kind")
    body = sim.requests[0].body
    assert body["temperature"] == 0.9 and body["max_tokens"] == 800
    assert body["messages"][0] == {"role": "system", "content": "be kind"}


def test_a_step_s_system_is_used_when_the_call_gives_none(sim, make_router) -> None:
    router = make_router(_config(sim, {"target": "oa/m", "system": "be terse"}))
    router.complete("c", "hi")
    assert sim.requests[0].body["messages"][0] == {"role": "system", "content": "be terse"}


def test_a_thinking_stack_sends_each_step_its_own_options(sim, make_router) -> None:
    from nbrouter.testing import ServerError

    sim.script([ServerError(500)], model="thinker")
    router = make_router(_config(sim, {"target": "oa/thinker", "reasoning": "high", "max_tokens": 8000},
                                 {"target": "oa/fast", "temperature": 0.2}))
    router.complete("c", "hi")
    first, second = (r.body for r in sim.requests)
    assert first["reasoning_effort"] == "high" and first["max_tokens"] == 8000 and "temperature" not in first
    assert second["temperature"] == 0.2 and "reasoning_effort" not in second and "max_tokens" not in second


def test_reasoning_maps_to_anthropic_s_thinking_budget(sim, make_router) -> None:
    router = make_router(_config(sim, {"target": "an/claude-x", "reasoning": 2000, "stop": "END", "top_p": 0.5}))
    router.complete("c", "hi")
    body = sim.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert body["max_tokens"] > 2000 and body["stop_sequences"] == ["END"] and body["top_p"] == 0.5


def test_reasoning_maps_to_gemini_s_thinking_config(sim, make_router) -> None:
    router = make_router(_config(sim, {"target": "ge/gemini-x", "reasoning": "low", "stop": ["A", "B"], "top_p": 0.7}))
    router.complete("c", "hi")
    config = sim.requests[0].body["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 1024}
    assert config["stopSequences"] == ["A", "B"] and config["topP"] == 0.7


@pytest.mark.parametrize("step, field", [
    ({"target": "oa/m", "reasoning": "extreme"}, "reasoning"),
    ({"target": "oa/m", "reasoning": 0}, "reasoning"),
    ({"target": "oa/m", "temprature": 0.2}, "temprature"),
])
def test_step_options_are_validated(sim, make_router, step, field) -> None:
    with pytest.raises(ComboConfigError) as err:
        make_router(_config(sim, step))
    assert err.value.combo == "c" and field in (err.value.field or "")


def test_call_level_reasoning_and_extra_body_reach_the_wire(sim, make_router) -> None:
    router = make_router(_config(sim, "oa/m"))
    router.complete("c", "hi", reasoning=20000, extra_body={"user": "nb-1"}, top_p=0.3, stop=["X"])
    body = sim.requests[0].body
    assert body["reasoning_effort"] == "high" and body["user"] == "nb-1" and body["top_p"] == 0.3 and body["stop"] == ["X"]

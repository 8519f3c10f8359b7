"""Issue 26 item 5, provider edge cases, through the real Router over loopback against the simulator:
a Retry-After of `nan`, `inf` or 1e30; Gemini's LANGUAGE and PUP_LIMITED_DISABLED finish reasons; and a
base_url with a typo in its path, which answers 404 to every model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import SIM_KEY, sim_config
from nbrouter.router.errors import StopError
from nbrouter.router.policy import Policy
from nbrouter.router.types import Action, ErrorKind
from nbrouter.testing import ManualClock, Raw, Reply

POLICY = Policy()
RATE_LIMITED = {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}


def _gemini_and_sim(sim: Any, targets: list[str]) -> dict[str, Any]:
    providers = {
        "gem": {"protocol": "gemini", "base_url": sim.gemini_url, "api_key_env": "SIM_KEY"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    return sim_config(sim, {"c": {"targets": targets}}, providers=providers)


def _gemini_answer(finish: str) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": finish, "index": 0}],
            "modelVersion": "g", "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}


# -- Retry-After ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "held_s"), [
    # NaN is no number: the hint is absent and the policy's cooldown applies (it was read as 0: retry at once)
    ("nan", POLICY.rate_limit_cooldown_s),
    ("NaN", POLICY.rate_limit_cooldown_s),
    # forever, or near it, is the longest wait the policy allows (it was ignored: the 90 s default)
    ("inf", POLICY.rate_limit_cooldown_cap_s),
    ("1e30", POLICY.rate_limit_cooldown_cap_s),
], ids=["nan", "NaN", "inf", "1e30"])
def test_retry_after_nan_is_no_hint_and_inf_is_capped(sim: Any, make_router: Any, header: str, held_s: float) -> None:
    clock = ManualClock()
    sim.script(Raw(429, RATE_LIMITED, headers={"retry-after": header}), model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}), clock=clock)
    assert router.complete("c", "hello").served_by == "sim#default/b"
    row = router.status().candidate("sim#default/a")
    assert row is not None and row["hold"] == "cooldown"
    assert row["hold_left_s"] == held_s


def test_retry_after_ms_of_inf_is_capped_too(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    sim.script(Raw(429, RATE_LIMITED, headers={"retry-after-ms": "inf", "retry-after": "5"}), model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}), clock=clock)
    router.complete("c", "hello")
    row = router.status().candidate("sim#default/a")
    assert row is not None and row["hold_left_s"] == POLICY.rate_limit_cooldown_cap_s


# -- Gemini finish reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_gemini_finish_language_is_a_content_filter_refusal_not_an_empty_answer(sim: Any, make_router: Any, stream: bool) -> None:
    answer = _gemini_answer("LANGUAGE")
    sim.script(Raw(200, sse=[(None, json.dumps(answer))]) if stream else Raw(200, answer), model="g")
    router = make_router(_gemini_and_sim(sim, ["gem/g", "sim/m"]), clock=ManualClock())
    with pytest.raises(StopError) as raised:
        router.complete("c", "hello", stream=stream)
    # a refusal stops (content_filter's default), as SAFETY does; an empty answer would have fallen back
    assert raised.value.kind is ErrorKind.CONTENT_FILTER
    first = raised.value.attempts[0]
    assert first.kind is ErrorKind.CONTENT_FILTER and "LANGUAGE" in first.message
    assert [r.model for r in sim.requests] == ["g"]  # the next target was not tried


def test_gemini_finish_pup_limited_disabled_locks_the_account_and_the_next_provider_serves(sim: Any, make_router: Any) -> None:
    sim.script(Raw(200, _gemini_answer("PUP_LIMITED_DISABLED")), model="g")
    router = make_router(_gemini_and_sim(sim, ["gem/g", "gem/g2", "sim/m"]), clock=ManualClock())
    result = router.complete("c", "hello")
    assert result.served_by == "sim#default/m"
    first = result.attempts[0]
    assert first.kind is ErrorKind.ACCOUNT_LOCKED and "PUP_LIMITED_DISABLED" in first.message
    # the account is held (its other model is skipped without a request), not answered as empty
    assert router.status().accounts[0]["account"] == "gem#default"
    assert router.status().accounts[0]["hold"] == "lock"
    assert [r.model for r in sim.requests] == ["g", "m"]


# -- a wrong base_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "typo"), [("openai", "/v1x"), ("anthropic", "/x"), ("gemini", "/v1betx")])
def test_a_base_url_typo_holds_the_account_once_names_the_url_and_the_next_target_serves(
    sim: Any, make_router: Any, protocol: str, typo: str
) -> None:
    wrong = sim.url + typo
    providers = {
        "typo": {"protocol": protocol, "base_url": wrong, "api_key_env": "SIM_KEY"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    sim.script(Reply("served"), model="m")
    router = make_router(sim_config(sim, {"c": {"targets": ["typo/m1", "typo/m2", "sim/m"]}}, providers=providers),
                         clock=ManualClock())
    result = router.complete("c", "hello")
    assert result.text == "served" and result.served_by == "sim#default/m"
    first, second = result.attempts[0], result.attempts[1]
    assert first.kind is ErrorKind.ENDPOINT_NOT_FOUND and first.status == 404
    # the message says the URL looks wrong and names it, not the model, and holds no key
    assert wrong in first.message and "looks wrong" in first.message
    assert "m1" not in first.message.split("(")[0]
    assert SIM_KEY not in first.message
    assert first.hold == "account lock"
    # one hold, on the account: the second model is skipped without a request, and no model is locked
    assert second.candidate == "typo#default/m2" and second.action is Action.SKIPPED
    assert len([r for r in sim.requests if r.path.startswith(typo + "/")]) == 1
    status = router.status()
    account = next(a for a in status.accounts if a["account"] == "typo#default")
    assert account["hold"] == "lock" and "base_url looks wrong" in account["hold_reason"]
    assert status.candidate("typo#default/m1")["hold"] is None and status.candidate("typo#default/m2")["hold"] is None

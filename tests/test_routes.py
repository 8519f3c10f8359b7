"""Issue 21, "a call resolves its combo once": the combo a request names is resolved into one value (the
combo as the call uses it, its candidates, its strategy), remembered until the configuration changes, and
the decision, the response cache's key, the cost estimate and the batch read that one value."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import sim_config
from nbrouter import ComboConfigError
from nbrouter.router import STRATEGIES, build_request, combo_kind
from nbrouter.router.run.cache import ResponseCache


def _request(combo: str, **options: Any) -> Any:
    return build_request(combo, "hi", stream=False, **options)


def test_a_request_resolves_to_one_combo_until_the_configuration_changes(sim: Any, make_router: Any) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    first = router.check(_request("c"))
    assert router.check(_request("c")) is first  # remembered, not looked up again
    assert router.complete("c", "hi").served_by == "sim#default/a"
    router.save_combo("c", ["sim/b"])
    again = router.check(_request("c"))
    assert again is not first and [s.ref for s in again.steps] == ["sim/b"]
    assert router.complete("c", "hi").served_by == "sim#default/b"


def test_a_call_with_an_unknown_strategy_fails_before_anything_is_sent(sim: Any, make_router: Any) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    with pytest.raises(ComboConfigError) as err:
        router.complete("c", "hi", strategy="fastst")
    assert err.value.field == "strategy" and err.value.combo == "c"
    assert "unknown strategy 'fastst'" in str(err.value) and all(name in str(err.value) for name in STRATEGIES)
    assert sim.requests == []
    assert router.check(_request("c", strategy="fastest")).strategy == "fastest"


def test_the_cache_key_and_the_decision_read_the_same_candidates(sim: Any, make_router: Any) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY", "models": ["a", "b"]}}
    router = make_router(sim_config(sim, {"pool": {"strategy": "auto"}}, providers=providers))
    request = _request("pool")
    decision = router.explain("pool", "hi")
    targets = [f"{r.candidate.provider}/{r.candidate.model}" for r in decision.rows]
    assert sorted(targets) == ["sim/a", "sim/b"]  # the auto combo's pool, filled from the providers' models
    assert router.cache_key(request) == ResponseCache.key(targets, request)
    assert router.check(request).steps and router.check(request).name == "pool"


def test_the_magic_and_the_router_agree_on_what_names_a_combo(sim: Any, make_router: Any) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY", "models": ["a"]}}
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}, providers=providers))
    saved = router.config.combos
    assert [combo_kind(word, saved) for word in ("c", "auto", "auto/coding", "sim/a", "status", "nope")] == [
        "saved", "virtual", "virtual", "target", None, None]
    for word in ("c", "auto", "sim/a"):
        assert router.check(_request(word)).name == word
    with pytest.raises(ComboConfigError, match="no combo named 'nope'"):
        router.check(_request("nope"))

"""`auto` and the virtual combos (routing.md section 4): one test per rule.

State is set up through the router's own state store (`router.state`); calls that must change state
(exclusions) go through `Router.complete` against the provider simulator.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from nbrouter import ComboConfigError
from nbrouter.providers import RateLimits
from nbrouter.router.decide.packs import FACTORS, PACKS, VARIANTS, VIRTUAL_COMBOS
from nbrouter.router.policy import Policy
from nbrouter.router.decide.scoring import exclusion_key, guess_task
from nbrouter.testing import ManualClock

DEAD = "http://127.0.0.1:9/v1"  # never called: these tests only decide


def _provider(models: list[str], base_url: str = DEAD, **extra: Any) -> dict[str, Any]:
    return {"protocol": "openai", "base_url": base_url, "models": models, **extra}


def _rows(decision: Any) -> dict[str, dict[str, Any]]:
    """Inputs of the ordered candidates, by provider name."""
    return {r.candidate.provider: r.inputs for r in decision.rows if not r.skipped}


def _pool(**combo: Any) -> dict[str, Any]:
    """Three candidates that differ in price, latency and tier; combo `pick` scores them."""
    return {
        "providers": {
            "cheap": _provider(["m"], tier="free"),
            "fast": _provider(["m"], tier="pro"),
            "steady": _provider(["m"], tier="ultra"),
        },
        "prices": {
            "cheap/m": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
            "fast/m": {"input_per_mtok": 3, "output_per_mtok": 15},
            "steady/m": {"input_per_mtok": 1, "output_per_mtok": 4},
        },
        "combos": {"pick": {"strategy": "auto", "targets": ["cheap/m", "fast/m", "steady/m"], **combo}},
    }


def _latencies(router: Any, **by_provider: float) -> None:
    now = time.time()
    for provider, latency in by_provider.items():
        for _ in range(3):
            router.state.record_outcome(f"{provider}#default/m", now, ok=True, latency_s=latency, ttft_s=None, streamed=False, cost=None, error=None)


# ---- factors and weights -------------------------------------------------------------------------


def test_factors_are_in_unit_interval_and_normalised_over_the_pool(make_router: Any) -> None:
    router = make_router(_pool())
    _latencies(router, cheap=3.0, fast=0.3, steady=1.0)
    rows = _rows(router.explain("pick", "hello", seed=1))
    for inputs in rows.values():
        assert all(0.0 <= inputs[f] <= 1.0 for f in FACTORS)
    # the best of the pool gets 1, the rest 1 - (value - best) / worst
    assert rows["cheap"]["cost"] == 1.0
    fast_blend, cheap_blend = 0.6 * 3 + 0.4 * 15, 0.6 * 0.1 + 0.4 * 0.4
    assert rows["fast"]["cost"] == pytest.approx(1 - (fast_blend - cheap_blend) / fast_blend, abs=1e-4)
    assert rows["fast"]["latency"] == 1.0
    assert rows["cheap"]["latency"] == pytest.approx(1 - (3.0 - 0.3) / 3.0, abs=1e-4)
    # account tier: ultra 1, pro .67, free 0
    assert (rows["steady"]["tier"], rows["fast"]["tier"], rows["cheap"]["tier"]) == (1.0, 0.67, 0.0)


def test_health_factor_is_1_closed_half_for_half_open(make_router: Any) -> None:
    router = make_router(_pool())
    for _ in range(5):
        router.state.breaker_failure("fast#default/m", time.time() - 40)  # open 30 s, 40 s ago: half-open
    rows = _rows(router.explain("pick", "hello", seed=1))
    assert rows["fast"]["health"] == 0.5 and rows["fast"]["breaker"] == "half_open"
    assert rows["cheap"]["health"] == rows["steady"]["health"] == 1.0


def test_quota_factor_reads_configured_quotas_and_rate_limit_headers(make_router: Any) -> None:
    config = _pool()
    config["providers"]["cheap"]["quota"] = {"requests_per_day": 4}
    router = make_router(config)
    router.state.record_usage("cheap#default", time.time(), 10)  # 3 of 4 left by our count
    router.state.record_ratelimits("fast#default", RateLimits(limit_tokens=1000, remaining_tokens=100, reset_tokens_at=time.time() + 60))
    rows = _rows(router.explain("pick", "hello", seed=1))
    assert rows["cheap"]["quota"] == 0.75 and rows["fast"]["quota"] == 0.1
    assert rows["steady"]["quota"] == 1.0 and rows["steady"]["headroom"] == "untracked"


def test_stability_rewards_low_latency_spread_and_low_error_rate(make_router: Any) -> None:
    router = make_router(_pool())
    now = time.time()
    for latency in (1.0, 1.0, 1.0, 1.1):
        router.state.record_outcome("steady#default/m", now, ok=True, latency_s=latency, ttft_s=None, streamed=False, cost=None, error=None)
    for latency in (0.2, 3.0, 0.2, 3.0):
        router.state.record_outcome("fast#default/m", now, ok=True, latency_s=latency, ttft_s=None, streamed=False, cost=None, error=None)
    router.state.record_outcome("fast#default/m", now, ok=False, latency_s=1.0, ttft_s=None, streamed=False, cost=None, error=None)
    rows = _rows(router.explain("pick", "hello", seed=1))
    assert rows["steady"]["stability"] > rows["fast"]["stability"]
    assert rows["steady"]["stability"] == 1.0  # the pool's lowest spread, no errors


def test_a_new_measurement_moves_the_next_score(make_router: Any) -> None:
    # scoring keeps what only the configuration changes; what the state says is read afresh every decision
    router = make_router(_pool())
    _latencies(router, cheap=1.0, fast=1.0, steady=1.0)
    before = _rows(router.explain("pick", "hello", seed=1))
    assert before["fast"]["latency"] == before["cheap"]["latency"] == 1.0
    _latencies(router, cheap=9.0)  # cheap's p95 is now 9 s
    after = _rows(router.explain("pick", "hello", seed=1))
    assert after["cheap"]["latency"] == pytest.approx(1 - (9.0 - 1.0) / 9.0, abs=1e-4)
    assert after["cheap"]["score"] < before["cheap"]["score"]
    for _ in range(5):
        router.state.breaker_failure("fast#default/m", time.time())
    assert "fast" not in _rows(router.explain("pick", "hello", seed=1))  # open: skipped now


def test_a_reloaded_price_moves_the_cost_factor(make_router: Any, tmp_path: Path) -> None:
    path = tmp_path / "nbrouter.toml"
    body = """
[providers.cheap]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["m"]
[providers.dear]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["m"]
[prices."cheap/m"]
input_per_mtok = PRICE
output_per_mtok = PRICE
[prices."dear/m"]
input_per_mtok = 10
output_per_mtok = 10
[combos.pick]
strategy = "auto"
targets = ["cheap/m", "dear/m"]
"""
    path.write_text(body.replace("PRICE", "1"))
    router = make_router(path)
    assert _rows(router.explain("pick", "hello", seed=1))["cheap"]["cost"] == 1.0
    path.write_text(body.replace("PRICE", "20"))  # now the dearer one
    router.reload()
    rows = _rows(router.explain("pick", "hello", seed=1))
    assert rows["dear"]["cost"] == 1.0 and rows["cheap"]["cost"] == pytest.approx(1 - (20 - 10) / 20, abs=1e-4)


def test_default_weights_are_the_policy_constants_and_the_score_is_the_weighted_sum(make_router: Any) -> None:
    router = make_router(_pool())
    decision = router.explain("pick", "hello", seed=1)
    weights = Policy().auto_weights
    assert sum(weights.values()) == pytest.approx(1.0)
    for inputs in _rows(decision).values():
        for f in FACTORS:
            assert inputs[f"{f}_pts"] == pytest.approx(inputs[f] * weights[f], abs=1e-4)
        assert inputs["score"] == pytest.approx(sum(inputs[f"{f}_pts"] for f in FACTORS), abs=1e-3)
    assert any("default weights: health 0.22" in n for n in decision.notes)


def test_a_pack_replaces_the_default_weights(make_router: Any, tmp_path: Path) -> None:
    router = make_router(_pool(pack="cost-saver"))
    _latencies(router, cheap=3.0, fast=0.3, steady=1.0)
    decision = router.explain("pick", "hello", seed=1)
    for inputs in _rows(decision).values():
        for f in FACTORS:
            assert inputs[f"{f}_pts"] == pytest.approx(inputs[f] * PACKS["cost-saver"].get(f, 0.0), abs=1e-4)
    assert decision.order[0].provider == "cheap"
    fast = make_router(_pool(pack="ship-fast"), state_path=tmp_path / "fast.db")
    _latencies(fast, cheap=3.0, fast=0.3, steady=1.0)
    assert fast.explain("pick", "hello", seed=1).order[0].provider == "fast"


def test_combo_weights_are_any_subset_with_the_rest_default_normalised_to_one(make_router: Any) -> None:
    router = make_router(_pool(weights={"cost": 0.83}))  # with the other defaults the weights sum to 1.66
    defaults = Policy().auto_weights
    total = sum(defaults.values()) - defaults["cost"] + 0.83
    for inputs in _rows(router.explain("pick", "hello", seed=1)).values():
        assert inputs["cost_pts"] == pytest.approx(inputs["cost"] * 0.83 / total, abs=1e-4)
        assert inputs["health_pts"] == pytest.approx(inputs["health"] * defaults["health"] / total, abs=1e-4)


def test_every_pack_row_sums_to_one_and_names_known_factors() -> None:
    for pack in PACKS.values():
        assert sum(pack.values()) == pytest.approx(1.0)
        assert set(pack) <= set(FACTORS)


# ---- task fit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, task", [
    ("Why does this raise a traceback? It used to work, please fix it", "debugging"),
    ("Please review this pull request and critique the naming", "review"),
    ("Write a docstring and a README section for this module", "docs"),
    ("Plan the roadmap: milestones and the architecture", "planning"),
    ("Analyze this dataset and compare the trends by region", "analysis"),
    ("Implement a python function that parses ISO dates", "coding"),
    ("Good morning! How are you?", None),
])
def test_the_task_is_guessed_from_the_prompt_by_keywords(prompt: str, task: str | None) -> None:
    assert guess_task(prompt)[0] == task


def test_task_fit_matches_model_name_patterns_and_the_config_extends_them(make_router: Any) -> None:
    config = {"providers": {"p": _provider(["claude-sonnet-4.5", "qwen2.5-coder-7b", "my-local-7b", "llama-3-8b"])},
              "combos": {"c": {"strategy": "auto", "targets": ["p/claude-sonnet-4.5", "p/qwen2.5-coder-7b", "p/my-local-7b", "p/llama-3-8b"]}}}
    router = make_router(config)
    decision = router.explain("c", "implement a python function", seed=1)
    rows = {r.candidate.model: r.inputs for r in decision.rows}
    assert [rows[m]["task_fit"] for m in ("claude-sonnet-4.5", "qwen2.5-coder-7b", "my-local-7b", "llama-3-8b")] == [1.0, 1.0, 0.0, 0.0]
    # specificity: "*claude*sonnet*" (12 letters) is more specific than "*coder*" (5)
    assert rows["claude-sonnet-4.5"]["specificity"] == 1.0
    assert rows["qwen2.5-coder-7b"]["specificity"] == pytest.approx(5 / 12, abs=1e-3)
    assert any("task coding (keywords" in n for n in decision.notes)

    config["task_fit"] = {"coding": ["my-local-*"], "docs": ["llama-*"]}
    extended = make_router(config, state_path=router.state.path)
    rows = {r.candidate.model: r.inputs for r in extended.explain("c", "implement a python function", seed=1).rows}
    assert rows["my-local-7b"]["task_fit"] == 1.0 and rows["my-local-7b"]["pattern"] == "my-local-*"
    rows = {r.candidate.model: r.inputs for r in extended.explain("c", "write the README docs", seed=1).rows}
    assert rows["llama-3-8b"]["task_fit"] == 1.0


def test_without_a_task_every_candidate_fits_alike(make_router: Any) -> None:
    router = make_router(_pool())
    rows = _rows(router.explain("pick", "good morning", seed=1))
    assert {i["task_fit"] for i in rows.values()} == {Policy().auto_unknown_task_fit}


# ---- exploration --------------------------------------------------------------------------------------


def _virtual_pool() -> dict[str, Any]:
    return {"providers": {p: _provider(["m"]) for p in ("a", "b", "c", "d", "e")}}


def test_auto_explores_5_percent_of_calls_and_auto_smart_10(make_router: Any) -> None:
    router = make_router(_virtual_pool())
    n = 3000
    auto = sum(router.explain("auto", "hi", seed=s).explored for s in range(n)) / n
    smart = sum(router.explain("auto/smart", "hi", seed=s).explored for s in range(n)) / n
    # binomial sd: 0.004 at 5%, 0.0055 at 10%
    assert abs(auto - 0.05) < 0.016, auto
    assert abs(smart - 0.10) < 0.022, smart


def test_exploration_is_off_while_more_than_half_of_the_pool_is_open(make_router: Any) -> None:
    router = make_router(_virtual_pool())
    now = time.time()
    for p in ("a", "b"):
        for _ in range(5):
            router.state.breaker_failure(f"{p}#default/m", now)
    # 2 of 5 open: not an incident, exploration goes on
    assert any(router.explain("auto", "hi", seed=s).explored for s in range(200))
    for _ in range(5):
        router.state.breaker_failure("c#default/m", now)
    # 3 of 5 open: incident mode
    decisions = [router.explain("auto", "hi", seed=s) for s in range(200)]
    assert not any(d.explored for d in decisions)
    assert any("incident mode (3 of 5 breakers open" in n for n in decisions[0].notes)


def test_explain_shows_every_factor_contribution_total_exploration_and_seed(make_router: Any) -> None:
    router = make_router(_virtual_pool())
    explored_seed = next(s for s in range(500) if router.explain("auto", "hi", seed=s).explored)
    decision = router.explain("auto", "hi", seed=explored_seed)
    text = decision.table()
    assert f"seed {explored_seed}" in text and "explored" in text and "tried" in text
    for f in FACTORS:
        assert f"{f}=" in text and f"{f}_pts=" in text
    assert "score=" in text
    # every number the scoring used is a Policy constant, and explain carries them all
    for name in ("auto_explore_rate", "auto_smart_explore_rate", "auto_min_score", "auto_exclude_s", "auto_exclude_cap_s",
                 "auto_incident_open_share", "auto_weights", "auto_health_scores", "auto_tier_scores", "cost_blend_input"):
        assert name in decision.constants
    assert "below 0.2" in text and "300 s" in text and "1800 s" in text


def test_same_seed_and_same_state_give_the_same_choice(make_router: Any, tmp_path: Path) -> None:
    router = make_router(_pool())
    _latencies(router, cheap=3.0, fast=0.3, steady=1.0)
    router.state.flush()
    first = [(tuple(c.key for c in router.explain("pick", "fix this bug", seed=s).order), router.explain("pick", "fix this bug", seed=s).explored) for s in range(300)]
    again = make_router(_pool(), state_path=router.state.path)  # another router reading the same state
    second = [(tuple(c.key for c in again.explain("pick", "fix this bug", seed=s).order), again.explain("pick", "fix this bug", seed=s).explored) for s in range(300)]
    assert first == second
    assert len({order for order, _ in first}) > 1  # the seeds explored differently


# ---- exclusion ------------------------------------------------------------------------------------


def test_a_candidate_scoring_below_0_2_is_excluded_for_5_minutes_doubling_up_to_30(make_router: Any, sim: Any) -> None:
    config = {
        "providers": {"x": _provider(["cheap-m"], sim.openai_url, api_key_env="SIM_KEY"), "y": _provider(["pricey-m"], sim.openai_url, api_key_env="SIM_KEY")},
        "prices": {"x/cheap-m": {"input_per_mtok": 1, "output_per_mtok": 1}, "y/pricey-m": {"input_per_mtok": 100, "output_per_mtok": 100}},
        "combos": {"lean": {"strategy": "auto", "targets": ["x/cheap-m", "y/pricey-m"], "weights": {f: (1.0 if f == "cost" else 0.0) for f in FACTORS}},
                   "also": {"strategy": "auto", "targets": ["x/cheap-m", "y/pricey-m"]},
                   "plain": {"targets": ["y/pricey-m", "x/cheap-m"]}},
    }
    router = make_router(config)
    hold = exclusion_key("lean", "y#default/pricey-m")
    # explain proposes, but the strategy is pure: nothing is recorded
    proposal = router.explain("lean", "hi", seed=1)
    assert _rows(proposal)["y"]["exclude_for_s"] == 300.0 and _rows(proposal)["y"]["score"] < 0.2
    assert "exclude_for_s" not in _rows(proposal)["x"]  # never the first
    assert router.state.hold(hold, time.time()) is None

    for expected in (300, 600, 1200, 1800, 1800):
        now = time.time()
        assert router.complete("lean", "hi", seed=1).served_by == "x#default/cheap-m"
        h = router.state.hold(hold, time.time())
        assert h is not None and h.until - now == pytest.approx(expected, abs=5)
        skipped = router.explain("lean", "hi", seed=1).skipped
        assert [r.candidate.key for r in skipped] == ["y#default/pricey-m"]
        assert skipped[0].reason.startswith("auto: score below 0.2 (")
        router.state.set_hold(hold, "cooldown", time.time() - 1, "expired")  # as if the exclusion ran out
    # the exclusion is this combo's: another auto combo and a written combo still use the candidate
    assert not router.explain("also", "hi", seed=1).skipped
    assert router.explain("plain", "hi").order[0].key == "y#default/pricey-m"
    # an exclusion long after the last one ended starts again at 5 minutes
    router.state.set_pointer("auto-streak:lean:y#default/pricey-m", f"1800@{time.time() - 4000}")
    now = time.time()
    router.complete("lean", "hi", seed=1)
    assert router.state.hold(hold, time.time()).until - now == pytest.approx(300, abs=5)


# ---- virtual combos ----------------------------------------------------------------------------------


def test_virtual_auto_is_every_enabled_provider_model_and_account_and_a_new_provider_joins_at_once(make_router: Any, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[providers.a]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["m1", "m2"]\n'
        'accounts = [{name = "k1"}, {name = "k2"}]\n\n'
        '[providers.nomodels]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n\n'
        '[providers.off]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["x"]\nenabled = false\n'
    )
    router = make_router(path)
    decision = router.explain("auto", "hi", seed=1)
    assert sorted(c.key for c in decision.order) == ["a#k1/m1", "a#k1/m2", "a#k2/m1", "a#k2/m2"]
    assert any("providers without `models` contribute nothing: nomodels" in n for n in decision.notes)
    with path.open("a") as fh:
        fh.write('\n[providers.b]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["m3"]\n')
    router.reload()
    assert "b#default/m3" in {c.key for c in router.explain("auto", "hi", seed=1).order}


def test_each_virtual_variant_uses_its_pack(make_router: Any) -> None:
    router = make_router(_virtual_pool())
    expected = {"auto": None, "auto/fast": "ship-fast", "auto/cheap": "cost-saver", "auto/coding": "quality-first",
                "auto/smart": "quality-first", "auto/offline": "offline-friendly"}
    assert set(expected) == set(VIRTUAL_COMBOS) == set(VARIANTS)
    for name, pack in expected.items():
        decision = router.explain(name, "hi", seed=1)
        assert decision.strategy == "auto"
        weights_note = next(n for n in decision.notes if n.startswith("auto: ") and "health" in n)
        assert (f"pack {pack}" in weights_note) if pack else ("default weights" in weights_note)
    # auto/coding assumes the coding task when the prompt says nothing
    assert any("task coding (auto/coding assumes it)" in n for n in router.explain("auto/coding", "hi", seed=1).notes)


def test_virtual_auto_without_any_model_is_a_config_error_naming_the_fix(make_router: Any) -> None:
    router = make_router({"providers": {"bare": {"protocol": "openai", "base_url": DEAD}}})
    with pytest.raises(ComboConfigError) as err:
        router.explain("auto", "hi")
    assert "models" in str(err.value) and "bare" in str(err.value)


def test_saved_auto_combo_takes_its_pool_from_candidate_pool(make_router: Any) -> None:
    config = {
        "providers": {"a": _provider(["m1", "m2"]), "b": _provider(["n1"]), "c": _provider(["o1"]),
                      "d": {**_provider(["z"]), "accounts": [{"name": "k1"}, {"name": "k2"}]}},
        "combos": {
            "everything": {"strategy": "auto"},
            "some": {"strategy": "auto", "candidate_pool": ["a", "c/o-extra", "d#k2"]},
            "written": {"strategy": "auto", "targets": ["b/n1"]},
        },
    }
    router = make_router(config)
    assert sorted(c.key for c in router.explain("everything", "hi", seed=1).order) == [
        "a#default/m1", "a#default/m2", "b#default/n1", "c#default/o1", "d#k1/z", "d#k2/z"]
    # a provider brings its models, a target is used as given, provider#account keeps to that account
    assert sorted(c.key for c in router.explain("some", "hi", seed=1).order) == ["a#default/m1", "a#default/m2", "c#default/o-extra", "d#k2/z"]
    assert [c.key for c in router.explain("written", "hi", seed=1).order] == ["b#default/n1"]


def test_every_auto_variant_serves_through_complete(make_router: Any, sim: Any) -> None:
    router = make_router({"providers": {
        "s": _provider(["gpt-5-mini", "qwen-coder"], sim.openai_url, api_key_env="SIM_KEY"),
        "t": _provider(["llama"], sim.openai_url, api_key_env="SIM_KEY"),
    }})
    for name in VIRTUAL_COMBOS:
        result = router.complete(name, "implement a python function", seed=3)
        assert result.text and result.decision is not None and result.decision.strategy == "auto"
        assert result.served_by == result.decision.order[0].key


# ---- what scoring keeps between decisions ----------------------------------------------------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PROVIDERS = ("cheap", "fast", "steady")
_OPS = st.lists(st.one_of(
    st.tuples(st.just("outcome"), st.sampled_from(_PROVIDERS), st.booleans(), st.floats(0.01, 20.0)),
    st.tuples(st.just("breaker"), st.sampled_from(_PROVIDERS), st.integers(1, 6), st.floats(0.0, 100.0)),
    st.tuples(st.just("usage"), st.sampled_from(_PROVIDERS), st.integers(0, 3), st.floats(0.0, 1.0)),
    st.tuples(st.just("explain"), st.sampled_from(["fix this bug", "hello", "plan the roadmap"]), st.integers(0, 3), st.floats(0, 1)),
    st.tuples(st.just("advance"), st.just(""), st.integers(0, 0), st.floats(0.0, 90.0)),
), min_size=1, max_size=25)


@settings(max_examples=int(os.environ.get("NBROUTER_FUZZ_EXAMPLES", "50")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
@example(ops=[("outcome", "fast", True, 1.0), ("explain", "hello", 1, 0.0), ("outcome", "fast", True, 5.0)])
@example(ops=[("breaker", "fast", 5, 0.0), ("explain", "hello", 1, 0.0), ("advance", "", 0, 45.0)])
def test_a_decision_with_what_scoring_kept_equals_a_fresh_routers(make_router: Any, tmp_path: Path, ops: list[Any]) -> None:
    # scoring keeps per-pool columns and per-candidate readings between decisions; after any sequence of
    # state changes, its decision must be the one a router that kept nothing makes from the same state
    config = _pool()
    config["providers"]["cheap"]["quota"] = {"requests_per_day": 3}
    path = tmp_path / f"state-{next(_EXAMPLE)}.sqlite3"
    clock = ManualClock()
    router = make_router(config, state_path=path, clock=clock)
    for op in ops:
        kind, name = op[0], op[1]
        now = clock.time()
        if kind == "outcome":
            router.state.record_outcome(f"{name}#default/m", now, ok=op[2], latency_s=op[3], ttft_s=None, streamed=False, cost=None, error=None)
        elif kind == "breaker":
            for _ in range(op[2]):
                router.state.breaker_failure(f"{name}#default/m", now - op[3])
        elif kind == "usage":
            for _ in range(op[2]):
                router.state.record_usage(f"{name}#default", now, 10)
        elif kind == "advance":
            clock.advance(op[3])
        else:
            router.explain("pick", name, seed=op[2])  # decisions in between fill what scoring keeps
    router.state.flush()
    fresh = make_router(config, state_path=path, clock=clock)
    for prompt in ("fix this bug", "hello"):
        for seed in range(3):
            kept, anew = router.explain("pick", prompt, seed=seed), fresh.explain("pick", prompt, seed=seed)
            assert [c.key for c in kept.order] == [c.key for c in anew.order]
            assert [r.reason for r in kept.skipped] == [r.reason for r in anew.skipped]
            assert {k: dict(v) for k, v in kept.inputs.items()} == {k: dict(v) for k, v in anew.inputs.items()}


_EXAMPLE = iter(range(10**9))

"""Strategies (routing.md section 4): one test per rule, a table test over one seeded pool, and every
strategy end to end through `Router.complete` against the provider simulator.

State is set up through the router's own state store (`router.state`), never mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nbrouter import ComboConfigError, Router
from nbrouter.providers import RateLimits
from nbrouter.router.decide.packs import VIRTUAL_COMBOS
from nbrouter.router.decide.strategies import ACCOUNT_STRATEGIES, STRATEGIES
from nbrouter.router.decide.tokens import estimate_prompt, estimate_text

DEAD = "http://127.0.0.1:9/v1"  # never called: the pure tests only decide

SEED = 7


def _provider(models: list[str], base_url: str = DEAD, **extra: Any) -> dict[str, Any]:
    return {"protocol": "openai", "base_url": base_url, "models": models, **extra}


def _keys(decision: Any) -> list[str]:
    return [c.key for c in decision.order]


# ---- the seeded pool ------------------------------------------------------------------------------
#
#  candidate  latency  ttft   requests  headroom          reset    price in/out  window   breaker
#  a/m-a      0.9 s    0.09   3         0.5 (headers)     +1 h     10 / 30       8000     closed
#  b/m-b      0.2 s    0.5    5         0   (headers)     +30 s    1 / 2         128000   closed
#  c/m-c      -        -      0         untracked         -        unknown       unknown  half-open
#  d/m-d      0.5 s    0.05   1         0.8 (rpm quota)   minute   0.5 / 1       32000    closed
#  e/m-e      -        -      0         untracked         -        3 / 15        -        OPEN (filtered)

POOL = ["a/m-a", "b/m-b", "c/m-c", "d/m-d", "e/m-e"]


def pool_config(**combo_options: Any) -> dict[str, Any]:
    combos = {}
    for name in STRATEGIES:
        targets: list[Any] = list(POOL)
        if name == "weighted":
            targets = [{"target": t, "weight": w} for t, w in zip(POOL, [1, 0, 3, 1, 1])]
        combos[f"s-{name}"] = {"targets": targets, "strategy": name, **combo_options}
    return {
        "providers": {
            "a": _provider(["m-a"], context_window={"m-a": 8000}),
            "b": _provider(["m-b"], context_window={"m-b": 128000}),
            "c": _provider(["m-c"]),
            "d": _provider(["m-d"], context_window={"m-d": 32000}, quota={"requests_per_minute": 10}),
            "e": _provider(["m-e"]),
        },
        "prices": {
            "a/m-a": {"input_per_mtok": 10, "output_per_mtok": 30},
            "b/m-b": {"input_per_mtok": 1, "output_per_mtok": 2},
            "d/m-d": {"input_per_mtok": 0.5, "output_per_mtok": 1},
            "e/m-e": {"input_per_mtok": 3, "output_per_mtok": 15},
        },
        "combos": combos,
    }


def seed_pool_state(router: Router) -> None:
    st = router.state
    now = time.time()
    for key, n, latency, ttft in (("a#default/m-a", 3, 0.9, 0.09), ("b#default/m-b", 5, 0.2, 0.5), ("d#default/m-d", 1, 0.5, 0.05)):
        for _ in range(n):
            st.record_outcome(key, now, ok=True, latency_s=latency, ttft_s=ttft, streamed=True, cost=None, error=None)
    st.record_ratelimits("a#default", RateLimits(limit_requests=100, remaining_requests=50, reset_requests_at=now + 3600))
    st.record_ratelimits("b#default", RateLimits(limit_requests=100, remaining_requests=0, reset_requests_at=now + 30))
    st.record_usage("d#default", now, 10)
    st.record_usage("d#default", now, 10)
    for _ in range(5):
        st.breaker_failure("c#default/m-c", now - 40)  # opened 40 s ago for 30 s: half-open now
        st.breaker_failure("e#default/m-e", now)  # open now
    st.set_pointer("lkgp:s-lkgp", "c#default/m-c")


#: the order of the pool (e filtered) under each strategy, seed 7, a non-streamed "hello" with max_tokens 100
EXPECTED = {
    "priority": ["a", "b", "c", "d"],
    "round-robin": ["a", "b", "c", "d"],  # turn 0
    "fastest": ["b", "c", "d", "a"],  # c has no data: the pool median 0.5, a tie with d kept as written
    "cheapest": ["d", "b", "a", "c"],  # c's price is unknown: last
    "p2c": ["c", "a", "d", "b"],  # seed 7 draws c and a: c has more headroom; b has none left: last
    "weighted": ["c", "a", "d", "b"],  # weights 1, 0, 3, 1: seed 7 draws c, a, d; b's weight 0 comes last
    "random": ["d", "b", "a", "c"],  # seed 7's shuffle
    "strict-random": ["c", "a", "b", "d"],  # turn 0: the first card of deck 0 (its shuffle c, a, b, d)
    "least-used": ["c", "d", "a", "b"],
    "fill-first": ["a", "c", "d", "b"],  # b has no quota left: last
    "reset-aware": ["d", "a", "b", "c"],  # b resets sooner but has nothing left
    "lkgp": ["c", "a", "b", "d"],
    "context-fit": ["b", "d", "a", "c"],
    "context-relay": ["a", "b", "c", "d"],  # a single prompt is no conversation: as written
    # health, quota, cost, latency, tier affinity (no task guessed): d .772, c .702, b .697, a .537
    "auto": ["d", "c", "b", "a"],
}


def test_every_strategy_orders_the_seeded_pool_exactly(make_router: Any) -> None:
    router = make_router(pool_config())
    seed_pool_state(router)
    orders = {}
    for name in STRATEGIES:
        decision = router.explain(f"s-{name}", "hello", max_tokens=100, seed=SEED)
        assert [r.candidate.key for r in decision.skipped] == ["e#default/m-e"]  # its breaker is open
        orders[name] = [c.provider for c in decision.order]
    assert orders == EXPECTED
    stream = router.explain("s-fastest", "hello", max_tokens=100, seed=SEED, stream=True)
    assert [c.provider for c in stream.order] == ["d", "a", "c", "b"]  # time to first byte; c gets the median 0.09
    auto = router.explain("s-auto", "hello", max_tokens=100, seed=SEED)
    assert [r.inputs["score"] for r in auto.rows if not r.skipped] == pytest.approx([0.7717, 0.7016, 0.6974, 0.5370], abs=1e-3)


# ---- purity ----------------------------------------------------------------------------------------


def _state_image(router: Router) -> str:
    st = router.state
    parts = {}
    for name in ("holds", "breakers", "latency", "usage", "ratelimits", "counters", "pointers"):
        table = getattr(st, name)
        parts[name] = {k: (v if isinstance(v, (int, str)) else {kk: (list(vv) if hasattr(vv, "maxlen") else vv) for kk, vv in v.__dict__.items() if kk != "updated" and not kk.startswith("_")}) for k, v in table.items()}
    return json.dumps(parts, sort_keys=True, default=str)


def test_strategies_are_pure_and_never_drop_a_candidate(make_router: Any) -> None:
    router = make_router(pool_config(account_strategy="p2c"))
    seed_pool_state(router)
    router.explain("s-priority", "hi")  # reading a breaker moves an elapsed OPEN to HALF_OPEN: the store's own rule
    before = _state_image(router)
    for name in STRATEGIES:
        for seed in range(5):
            decision = router.explain(f"s-{name}", "fix this python traceback", max_tokens=100, seed=seed)
            # every candidate that passed the filter is ordered: nothing dropped, nothing added
            assert sorted(_keys(decision)) == ["a#default/m-a", "b#default/m-b", "c#default/m-c", "d#default/m-d"]
            again = router.explain(f"s-{name}", "fix this python traceback", max_tokens=100, seed=seed)
            assert _keys(again) == _keys(decision)  # same seed, same state: same order
    assert _state_image(router) == before  # deciding changed nothing


def test_deciding_never_calls_a_provider(make_router: Any, sim: Any) -> None:
    router = make_router({"providers": {p: _provider(["m"], sim.openai_url, api_key_env="SIM_KEY") for p in "ab"},
                          "combos": {name: {"targets": ["a/m", "b/m"], "strategy": name} for name in STRATEGIES if name != "auto"}})
    for name in [*STRATEGIES, *VIRTUAL_COMBOS]:
        router.explain(name, "hi", seed=1)  # a strategy-named combo, or a virtual auto combo
    assert sim.requests == []


def test_config_validation_reads_the_strategy_registry(make_router: Any, tmp_path: Path) -> None:
    for name in STRATEGIES:
        make_router({"providers": {"a": _provider(["m"])}, "combos": {"x": {"targets": ["a/m"], "strategy": name}}}, state_path=tmp_path / f"{name}.db")
    with pytest.raises(ComboConfigError) as err:
        make_router({"providers": {"a": _provider(["m"])}, "combos": {"x": {"targets": ["a/m"], "strategy": "fastst"}}}, state_path=tmp_path / "bad.db")
    assert "fastest" in str(err.value) and "reset-aware" in str(err.value)
    for name in ACCOUNT_STRATEGIES:
        make_router({"providers": {"a": _provider(["m"])}, "combos": {"x": {"targets": ["a/m"], "account_strategy": name}}}, state_path=tmp_path / f"acct-{name}.db")


def test_config_refuses_an_unknown_account_strategy_naming_the_known_ones(make_router: Any, tmp_path: Path) -> None:
    with pytest.raises(ComboConfigError) as err:
        make_router({"providers": {"a": _provider(["m"])}, "combos": {"x": {"targets": ["a/m"], "account_strategy": "fill-frist"}}},
                    state_path=tmp_path / "bad.db")
    assert err.value.combo == "x" and err.value.field == "account_strategy"
    assert "fill-frist" in str(err.value) and all(name in str(err.value) for name in ACCOUNT_STRATEGIES)


# ---- weighted ---------------------------------------------------------------------------------------


def test_weighted_70_30_split_is_within_statistical_tolerance(make_router: Any) -> None:
    router = make_router({
        "providers": {"a": _provider(["m"]), "b": _provider(["m"])},
        "combos": {"w": {"strategy": "weighted", "targets": [{"target": "a/m", "weight": 70}, {"target": "b/m", "weight": 30}]}},
    })
    n = 4000
    firsts = Counter(router.explain("w", "hi", seed=seed).order[0].provider for seed in range(n))
    share = firsts["a"] / n
    # binomial sd at p=0.7 and n=4000 is 0.0072: four of them
    assert abs(share - 0.7) < 0.03, share


def test_weight_zero_only_after_every_positive_weight(make_router: Any) -> None:
    router = make_router({
        "providers": {p: _provider(["m"]) for p in "abcd"},
        "combos": {"w": {"strategy": "weighted", "targets": [
            {"target": "a/m", "weight": 0}, {"target": "b/m", "weight": 5}, {"target": "c/m", "weight": 0}, {"target": "d/m", "weight": 1}]}},
    })
    for seed in range(200):
        order = [c.provider for c in router.explain("w", "hi", seed=seed).order]
        assert set(order[:2]) == {"b", "d"} and order[2:] == ["a", "c"]
    # alone, a weight-0 target still serves
    router.state.set_hold("b#default/m", "cooldown", time.time() + 60, "test")
    router.state.set_hold("d#default/m", "cooldown", time.time() + 60, "test")
    assert [c.provider for c in router.explain("w", "hi", seed=1).order] == ["a", "c"]


# ---- fastest / cheapest / least-used / context-fit --------------------------------------------------


def test_fastest_uses_ttft_for_streams_and_total_time_otherwise(make_router: Any) -> None:
    router = make_router({"providers": {"a": _provider(["m"]), "b": _provider(["m"])},
                          "combos": {"f": {"targets": ["a/m", "b/m"], "strategy": "fastest"}}})
    now = time.time()
    router.state.record_outcome("a#default/m", now, ok=True, latency_s=2.0, ttft_s=0.1, streamed=True, cost=None, error=None)
    router.state.record_outcome("b#default/m", now, ok=True, latency_s=1.0, ttft_s=0.6, streamed=True, cost=None, error=None)
    assert [c.provider for c in router.explain("f", "hi", stream=True).order] == ["a", "b"]
    assert [c.provider for c in router.explain("f", "hi", stream=False).order] == ["b", "a"]


def test_fastest_without_data_takes_the_pool_median(make_router: Any) -> None:
    router = make_router({"providers": {p: _provider(["m"]) for p in "abcd"},
                          "combos": {"f": {"targets": ["a/m", "b/m", "c/m", "d/m"], "strategy": "fastest"}}})
    now = time.time()
    for p, latency in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        router.state.record_outcome(f"{p}#default/m", now, ok=True, latency_s=latency, ttft_s=None, streamed=False, cost=None, error=None)
    decision = router.explain("f", "hi")
    # d (no data) counts as 2.0, the median: a new target is tried before the slowest
    assert [c.provider for c in decision.order] == ["b", "c", "d", "a"]
    d_row = next(r for r in decision.rows if r.candidate.provider == "d")
    assert d_row.inputs["latency_s"] == 2.0 and "median" in d_row.inputs["latency_from"]


def test_cheapest_ranks_by_the_estimated_cost_of_this_request_unknown_prices_last(make_router: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("genai_prices")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    router = make_router({
        "providers": {"cheapin": _provider(["m"]), "cheapout": _provider(["m"]), "mystery": _provider(["m"]),
                      "openai": {"models": ["gpt-4o-mini"], "base_url": DEAD}},
        "prices": {"cheapin/m": {"input_per_mtok": 0.1, "output_per_mtok": 10}, "cheapout/m": {"input_per_mtok": 10, "output_per_mtok": 0.1}},
        "combos": {"c": {"targets": ["mystery/m", "cheapin/m", "cheapout/m", "openai/gpt-4o-mini"], "strategy": "cheapest"}},
    })
    short = router.explain("c", "hi", max_tokens=4000)  # output dominates
    assert [c.provider for c in short.order][:2] == ["cheapout", "openai"]
    assert short.order[-1].provider == "mystery"
    long_prompt = "word " * 20000
    long = router.explain("c", long_prompt, max_tokens=10)  # input dominates
    assert long.order[0].provider == "cheapin" and long.order[-1].provider == "mystery"
    rows = {r.candidate.provider: r.inputs for r in long.rows}
    assert rows["mystery"]["estimated_cost"] == "unknown price"
    assert rows["openai"]["estimated_cost"].startswith("$")  # priced by genai-prices


def test_least_used_orders_by_requests_in_the_last_hour(make_router: Any) -> None:
    router = make_router({"providers": {p: _provider(["m"]) for p in "abc"},
                          "combos": {"l": {"targets": ["a/m", "b/m", "c/m"], "strategy": "least-used"}}})
    now = time.time()
    for p, n, age in (("a", 4, 0), ("b", 2, 0), ("c", 9, 2 * 3600)):  # c's requests are two hours old
        for _ in range(n):
            router.state.record_outcome(f"{p}#default/m", now - age, ok=True, latency_s=0.1, ttft_s=None, streamed=False, cost=None, error=None)
    assert [c.provider for c in router.explain("l", "hi").order] == ["c", "b", "a"]


def test_context_fit_puts_the_largest_known_window_first(make_router: Any) -> None:
    router = make_router({"providers": {"a": _provider(["s", "l", "u"], context_window={"s": 8000, "l": 200000})},
                          "combos": {"c": {"targets": ["a/u", "a/s", "a/l"], "strategy": "context-fit"}}})
    assert [c.model for c in router.explain("c", "hi", max_tokens=100).order] == ["l", "s", "u"]


# ---- quota-aware strategies ------------------------------------------------------------------------


def _accounts_config(strategy: str = "priority", account_strategy: str = "round-robin", base_url: str = DEAD) -> dict[str, Any]:
    return {
        "providers": {"p": {"protocol": "openai", "base_url": base_url, "models": ["m"], "accounts": [
            {"name": "k1", "api_key_env": "SIM_KEY"},
            {"name": "k2", "api_key_env": "SIM_KEY", "quota": {"requests_per_day": 10}},
            {"name": "k3", "api_key_env": "SIM_KEY"},
        ]}},
        "combos": {"x": {"targets": ["p/m"], "strategy": strategy, "account_strategy": account_strategy}},
    }


def test_p2c_account_strategy_reads_quota_headroom_and_an_empty_account_goes_last(make_router: Any) -> None:
    router = make_router(_accounts_config(account_strategy="p2c"))
    now = time.time()
    router.state.record_ratelimits("p#k1", RateLimits(limit_requests=100, remaining_requests=0, reset_requests_at=now + 600))
    for _ in range(8):  # configured quota, counted by us: 2 of 10 left
        router.state.record_usage("p#k2", now, 5)
    firsts = Counter()
    for seed in range(60):
        decision = router.explain("x", "hi", seed=seed)
        order = [c.account for c in decision.order]
        assert order[-1] == "k1"  # headers said 0 remaining
        rows = {r.candidate.account: r.inputs for r in decision.rows}
        winner = next(a for a, i in rows.items() if i.get("account_p2c") == "drawn, more headroom")
        loser = next(a for a, i in rows.items() if i.get("account_p2c") == "drawn")
        room = {"k1": 0.0, "k2": 0.2, "k3": 1.0}
        assert room[winner] >= room[loser]
        firsts[order[0]] += 1
    assert rows["k2"]["account_headroom"] == pytest.approx(0.2)
    assert set(firsts) == {"k2", "k3"} and firsts["k3"] > firsts["k2"]


def test_p2c_strategy_puts_the_candidate_with_more_headroom_of_two_first(make_router: Any) -> None:
    router = make_router(pool_config())
    seed_pool_state(router)
    room = {"a": 0.5, "b": 0.0, "c": 1.0, "d": 0.8}
    for seed in range(40):
        decision = router.explain("s-p2c", "hi", max_tokens=100, seed=seed)
        order = [c.provider for c in decision.order]
        assert order[-1] == "b"
        rows = {r.candidate.provider: r.inputs for r in decision.rows}
        winner = next(p for p, i in rows.items() if i.get("p2c") == "drawn, more headroom")
        loser = next(p for p, i in rows.items() if i.get("p2c") == "drawn")
        assert room[winner] >= room[loser] and order[0] == winner


def test_scored_account_strategy_weighs_health_quota_and_latency(make_router: Any) -> None:
    router = make_router(_accounts_config(account_strategy="scored"))
    now = time.time()
    router.state.record_ratelimits("p#k1", RateLimits(limit_requests=100, remaining_requests=0, reset_requests_at=now + 600))
    router.state.record_outcome("p#k2/m", now, ok=True, latency_s=2.0, ttft_s=None, streamed=False, cost=None, error=None)
    router.state.record_outcome("p#k3/m", now, ok=True, latency_s=0.5, ttft_s=None, streamed=False, cost=None, error=None)
    decision = router.explain("x", "hi")
    assert [c.account for c in decision.order] == ["k3", "k2", "k1"]
    assert all("account_score" in r.inputs for r in decision.rows)


def test_fill_first_stays_on_one_account_until_a_cooldown_moves_it(make_router: Any) -> None:
    config = _accounts_config(strategy="fill-first")
    config["providers"]["p"]["models"] = ["m", "n"]
    config["combos"]["x"]["targets"] = ["p/m", "p/n"]
    router = make_router(config)
    order = [c.key for c in router.explain("x", "hi").order]
    assert order == ["p#k1/m", "p#k1/n", "p#k2/m", "p#k2/n", "p#k3/m", "p#k3/n"]
    router.state.set_hold("p#k1", "cooldown", time.time() + 60, "rate limited")
    assert [c.account for c in router.explain("x", "hi").order][:2] == ["k2", "k2"]


def test_reset_aware_uses_the_quota_that_resets_soonest_first(make_router: Any) -> None:
    router = make_router(pool_config())
    seed_pool_state(router)
    decision = router.explain("s-reset-aware", "hi", max_tokens=100)
    # d's per-minute quota resets within a minute; a's header window in an hour; b has nothing left
    assert [c.provider for c in decision.order] == ["d", "a", "b", "c"]
    assert decision.rows[0].inputs["reset_aware"] == "resets soonest"


# ---- round-robin counters, lkgp pointers: state the loop owns ---------------------------------------


def _served(router: Router, combo: str, n: int, **kwargs: Any) -> list[str]:
    return [router.complete(combo, "hi", **kwargs).served_by for _ in range(n)]


def test_rotation_stays_even_while_a_target_cools(make_router: Any, sim: Any) -> None:
    router = make_router({"providers": {p: _provider(["m"], sim.openai_url, api_key_env="SIM_KEY") for p in "abc"},
                          "combos": {"rr": {"targets": ["a/m", "b/m", "c/m"], "strategy": "round-robin"}}})
    assert [s[0] for s in _served(router, "rr", 3)] == ["a", "b", "c"]
    router.state.set_hold("b#default/m", "cooldown", time.time() + 600, "rate limited")
    # b's turns go to the next in rotation, without a double share: a and c alternate
    served = [s[0] for s in _served(router, "rr", 8)]
    assert Counter(served) == {"a": 4, "c": 4}
    assert all(x != y for x, y in zip(served, served[1:]))
    router.state.clear_hold("b#default/m")
    assert Counter(s[0] for s in _served(router, "rr", 9)) == {"a": 3, "b": 3, "c": 3}


def test_account_rotation_stays_even_while_an_account_cools(make_router: Any, sim: Any) -> None:
    router = make_router(_accounts_config(base_url=sim.openai_url))
    assert _served(router, "x", 3) == ["p#k1/m", "p#k2/m", "p#k3/m"]
    router.state.set_hold("p#k3", "cooldown", time.time() + 600, "quota exceeded")
    # lina-router's example: 1 and 2 round-robin while 3 waits for its reset, 12 calls 6:6
    served = _served(router, "x", 12)
    assert Counter(served) == {"p#k1/m": 6, "p#k2/m": 6}
    assert all(x != y for x, y in zip(served, served[1:]))
    router.state.clear_hold("p#k3")
    assert Counter(_served(router, "x", 6)) == {"p#k1/m": 2, "p#k2/m": 2, "p#k3/m": 2}


def test_round_robin_counters_are_independent_per_combo(make_router: Any, sim: Any) -> None:
    router = make_router({"providers": {p: _provider(["m"], sim.openai_url, api_key_env="SIM_KEY") for p in "ab"},
                          "combos": {"one": {"targets": ["a/m", "b/m"], "strategy": "round-robin"},
                                     "two": {"targets": ["a/m", "b/m"], "strategy": "round-robin"}}})
    assert [s[0] for s in _served(router, "one", 3)] == ["a", "b", "a"]
    assert [s[0] for s in _served(router, "two", 2)] == ["a", "b"]


_CHILD = """
import json, sys
from nbrouter import Router
config, path = json.loads(sys.argv[1]), sys.argv[2]
router = Router(config, state_path=path)
try:
    print(router.complete("rr", "hi").served_by)
finally:
    router.close()
"""


def test_round_robin_counters_persist_across_processes(make_router: Any, sim: Any, tmp_path: Path) -> None:
    config = {"providers": {p: _provider(["m"], sim.openai_url, api_key_env="SIM_KEY") for p in "abc"},
              "combos": {"rr": {"targets": ["a/m", "b/m", "c/m"], "strategy": "round-robin"}}}
    first = make_router(config)
    assert _served(first, "rr", 1) == ["a#default/m"]
    first.close()
    # another process takes the next turn
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config), str(tmp_path / "state.sqlite3")],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "b#default/m"
    # and a new router in this process continues after both
    again = make_router(config)
    assert _served(again, "rr", 1) == ["c#default/m"]


def test_lkgp_puts_the_last_good_candidate_of_the_combo_first(make_router: Any, sim: Any) -> None:
    from nbrouter.testing import ServerError

    sim.script([ServerError()], model="lk-a")
    config = {"providers": {"a": _provider(["lk-a"], sim.openai_url, api_key_env="SIM_KEY"), "b": _provider(["lk-b"], sim.openai_url, api_key_env="SIM_KEY")},
              "combos": {"lk": {"targets": ["a/lk-a", "b/lk-b"], "strategy": "lkgp"},
                         "other": {"targets": ["a/lk-a", "b/lk-b"], "strategy": "lkgp"}}}
    router = make_router(config)
    assert router.complete("lk", "hi").served_by == "b#default/lk-b"  # a failed once
    assert [c.key for c in router.explain("lk", "hi").order] == ["b#default/lk-b", "a#default/lk-a"]
    assert [c.key for c in router.explain("other", "hi").order][0] == "a#default/lk-a"  # per combo
    router.close()
    # persisted
    assert [c.key for c in make_router(config).explain("lk", "hi").order][0] == "b#default/lk-b"


# ---- token estimate ----------------------------------------------------------------------------------


def test_token_estimate_matches_the_providers_heuristic_with_its_margin() -> None:
    # providers.md section 7: ascii/4 + non-ascii, x1.2, + about 4 per message; max_tokens on top (the loop)
    assert estimate_text("a" * 400) == 100
    assert estimate_text("日本語") == 3
    assert estimate_text("ab日本") == 1 + 2
    messages = [{"role": "user", "content": "a" * 400}, {"role": "assistant", "content": "b" * 40}]
    assert estimate_prompt(messages, "s" * 80, margin=1.2, per_message=4) == int((100 + 10 + 20) * 1.2) + 3 * 4


def test_context_check_counts_prompt_estimate_margin_and_max_tokens(make_router: Any) -> None:
    router = make_router({"providers": {"a": _provider(["small", "big"], context_window={"small": 1000, "big": 100000})},
                          "combos": {"c": {"targets": ["a/small", "a/big"]}}})
    prompt = "a" * 2800  # 700 tokens, 840 with the margin, + 4 for the message
    assert [c.model for c in router.explain("c", prompt, max_tokens=156).order] == ["small", "big"]  # 844 + 156 = 1000
    decision = router.explain("c", prompt, max_tokens=157)
    assert [c.model for c in decision.order] == ["big"]
    assert decision.skipped[0].reason.startswith("context: ~844 + 157")


# ---- end to end ------------------------------------------------------------------------------------


def test_every_strategy_and_auto_variant_serves_through_complete(make_router: Any, sim: Any) -> None:
    providers = {
        "p": {"protocol": "openai", "base_url": sim.openai_url, "models": ["e2e-gpt-5-mini", "e2e-qwen-coder"],
              "accounts": [{"name": "k1", "api_key_env": "SIM_KEY", "tier": "pro"}, {"name": "k2", "api_key_env": "SIM_KEY", "quota": {"requests_per_day": 1000}}]},
        "q": _provider(["e2e-llama"], sim.openai_url, api_key_env="SIM_KEY"),
    }
    combos = {f"s-{name}": {"targets": ["p/e2e-gpt-5-mini", "q/e2e-llama"], "strategy": name} for name in STRATEGIES}
    combos.update({f"a-{name}": {"targets": ["p/e2e-qwen-coder"], "account_strategy": name} for name in ACCOUNT_STRATEGIES})
    router = make_router({"providers": providers, "combos": combos,
                          "prices": {"p/e2e-gpt-5-mini": {"input_per_mtok": 0.25, "output_per_mtok": 2}}})
    served = {}
    for name in list(combos) + ["auto", "auto/coding", "auto/fast", "auto/cheap", "auto/smart", "auto/offline"]:
        for stream in (False, True):
            result = router.complete(name, "write a python function", max_tokens=50, stream=stream)
            assert result.text and not result.partial
            assert result.decision is not None
            assert result.decision.strategy == combos.get(name, {}).get("strategy", "auto" if name.startswith("auto") else "priority")
            served[name] = result.served_by
    assert set(served.values()) <= {f"p#{a}/{m}" for a in ("k1", "k2") for m in ("e2e-gpt-5-mini", "e2e-qwen-coder")} | {"q#default/e2e-llama"}


# ---- strict-random, least-used by load, partial weights, fallback_on presets (issue 14) ---------------


def _three(sim: Any, strategy: str, **combo: Any) -> dict[str, Any]:
    return {"providers": {p: _provider(["m"], sim.openai_url, api_key_env="SIM_KEY") for p in "abc"},
            "combos": {"sr": {"targets": ["a/m", "b/m", "c/m"], "strategy": strategy, **combo}}}


def test_strict_random_serves_every_target_once_before_any_repeats(make_router: Any, sim: Any) -> None:
    router = make_router(_three(sim, "strict-random"))
    served = [s[0] for s in _served(router, "sr", 12)]
    decks = [served[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(deck) == ["a", "b", "c"] for deck in decks)
    assert len({tuple(deck) for deck in decks}) > 1  # a new shuffle for each deck, not one fixed order


def test_strict_random_deck_survives_a_restart(make_router: Any, sim: Any, tmp_path: Path) -> None:
    config = _three(sim, "strict-random")
    first = make_router(config)
    dealt = [s[0] for s in _served(first, "sr", 2)]
    first.close()
    again = make_router(config)
    rest = [s[0] for s in _served(again, "sr", 1)]
    assert sorted(dealt + rest) == ["a", "b", "c"]  # the third card of the same deck


def test_strict_random_deals_the_deck_over_the_targets_that_can_be_tried(make_router: Any, sim: Any) -> None:
    router = make_router(_three(sim, "strict-random"))
    router.state.set_hold("b#default/m", "cooldown", time.time() + 600, "rate limited")
    served = [s[0] for s in _served(router, "sr", 8)]
    assert all(sorted(served[i:i + 2]) == ["a", "c"] for i in range(0, 8, 2))


def test_strict_random_is_pure_and_explains_its_card(make_router: Any) -> None:
    router = make_router(pool_config())
    before = _state_image(router)
    decision = router.explain("s-strict-random", "hi", seed=1)
    assert _state_image(router) == before
    first = decision.rows[0].inputs
    assert (first["turn"], first["deck"], first["card"]) == (0, 0, 0)


def test_least_used_orders_by_requests_in_flight_then_the_last_hour(make_router: Any, sim: Any) -> None:
    from nbrouter.testing import Hang

    sim.script([Hang(30)], model="busy")
    router = make_router({
        "providers": {"a": _provider(["busy"], sim.openai_url, api_key_env="SIM_KEY"),
                      "b": _provider(["idle"], sim.openai_url, api_key_env="SIM_KEY")},
        "combos": {"hang": {"targets": ["a/busy"]}, "lu": {"targets": ["a/busy", "b/idle"], "strategy": "least-used"}},
    })
    now = time.time()
    for _ in range(3):  # b was used more in the last hour: by that alone it would go last
        router.state.record_outcome("b#default/idle", now, ok=True, latency_s=0.1, ttft_s=None, streamed=False, cost=None, error=None)
    assert _keys(router.explain("lu", "hi")) == ["a#default/busy", "b#default/idle"]

    async def while_busy() -> Any:
        task = asyncio.ensure_future(router.acomplete("hang", "hi"))
        for _ in range(1000):  # until the hanging request has reached the server (real I/O, polled)
            if sim.requests:
                break
            await asyncio.sleep(0.01)
        decision = router.explain("lu", "hi")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return decision

    decision = asyncio.run(while_busy())
    assert _keys(decision) == ["b#default/idle", "a#default/busy"]
    rows = {r.candidate.key: r.inputs for r in decision.rows}
    assert rows["a#default/busy"]["in_flight"] == 1 and rows["b#default/idle"]["in_flight"] == 0
    assert rows["b#default/idle"]["requests_last_hour"] == 3


def test_a_partial_weights_set_with_a_zero_is_not_refused_as_all_zero(make_router: Any) -> None:
    from nbrouter.router.policy import Policy

    router = make_router({"providers": {"a": _provider(["m"])},
                          "combos": {"x": {"strategy": "auto", "weights": {"tier_affinity": 0}}}})
    assert router.config.combos["x"].weights == {"tier_affinity": 0.0}
    decision = router.explain("x", "hi", seed=1)
    defaults = Policy().auto_weights
    total = sum(defaults.values()) - defaults["tier_affinity"]
    assert any(f"health {defaults['health'] / total:.3g}" in note for note in decision.notes)
    assert all("tier_affinity" not in note for note in decision.notes if note.startswith("auto: default weights"))
    with pytest.raises(ComboConfigError, match="weights are all zero"):
        make_router({"providers": {"a": _provider(["m"])},
                     "combos": {"x": {"strategy": "auto", "pack": "ship-fast",
                                      "weights": {f: 0 for f in ("quota", "health", "cost", "latency", "task_fit", "tier")}}}})


def test_fallback_on_transient_is_combycodes_set_and_stops_on_auth(make_router: Any, sim: Any) -> None:
    from nbrouter import StopError
    from nbrouter.router.types import ErrorKind
    from nbrouter.testing import Unauthorized

    router = make_router({"providers": {p: _provider([f"ft-{p}"], sim.openai_url, api_key_env="SIM_KEY") for p in "ab"},
                          "combos": {"t": {"targets": ["a/ft-a", "b/ft-b"], "fallback_on": "transient"}}})
    assert router.config.combos["t"].fallback_on == {
        ErrorKind.RATE_LIMIT, ErrorKind.QUOTA_EXCEEDED, ErrorKind.SERVER_ERROR, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT,
        ErrorKind.NETWORK, ErrorKind.MODEL_NOT_FOUND, ErrorKind.ENDPOINT_NOT_FOUND, ErrorKind.UNSUPPORTED}
    sim.script([Unauthorized()], model="ft-a")
    with pytest.raises(StopError) as err:
        router.complete("t", "hi")
    assert err.value.kind is ErrorKind.AUTH
    assert [r.model for r in sim.requests] == ["ft-a"]  # auth is not transient: b was not tried


def test_fallback_on_all_advances_on_every_kind(make_router: Any, sim: Any) -> None:
    from nbrouter.router.types import ErrorKind
    from nbrouter.testing import ContentFilter

    router = make_router({"providers": {p: _provider([f"fa-{p}"], sim.openai_url, api_key_env="SIM_KEY") for p in "ab"},
                          "combos": {"all": {"targets": ["a/fa-a", "b/fa-b"], "fallback_on": "all"}}})
    assert router.config.combos["all"].fallback_on == frozenset(ErrorKind)
    sim.script([ContentFilter()], model="fa-a")  # content_filter stops by default
    assert router.complete("all", "hi").served_by == "b#default/fa-b"

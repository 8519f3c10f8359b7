"""Issue 14: a session budget in the Python API, and hooks for the record; over real HTTP on loopback."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from conftest import sim_config
from nbrouter import Attempt, BudgetExceeded, RouteResult


def _priced(sim: Any, **combo_options: Any) -> dict[str, Any]:
    # a costs $1 per million tokens both ways, b $100: an estimate of ~1,050 tokens is ~$0.001 and ~$0.1
    return sim_config(
        sim,
        {"c": {"targets": ["sim/b", "sim/a"], **combo_options}},
        prices={"sim/a": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}, "sim/b": {"input_per_mtok": 100.0, "output_per_mtok": 100.0}},
    )


def test_session_budget_counts_every_charged_attempt(sim, make_router) -> None:
    router = make_router(_priced(sim))
    first = router.complete("c", "hi")
    second = router.complete("c", "hi")
    assert router.budget.spent == first.cost_usd + second.cost_usd > 0
    assert router.budget.remaining is None and "no budget" in router.budget.text()


def test_session_budget_stop_refuses_before_sending_when_the_first_choice_does_not_fit(sim, make_router) -> None:
    router = make_router(_priced(sim), budget_usd=0.01)  # b's estimate (~$0.1) does not fit
    with pytest.raises(BudgetExceeded) as err:
        router.complete("c", "hi")
    assert sim.requests == []
    assert "refused before sending: session budget: estimated $0.1" in str(err.value)


def test_session_budget_cheapest_moves_to_the_cheapest_candidate_that_fits(sim, make_router) -> None:
    router = make_router(_priced(sim), budget_usd=0.01, on_budget="cheapest")
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a"
    skipped = [a for a in result.attempts if a.action.value == "skipped"]
    assert [a.candidate for a in skipped] == ["sim#default/b"] and skipped[0].message.startswith("session budget: estimated $0.1")
    decision = router.explain("c", "hi")
    assert [c.key for c in decision.order] == ["sim#default/a"]
    assert any(n.startswith("session budget: spent $") for n in decision.notes)


def test_session_budget_shows_unknown_prices_as_unknown_never_as_zero(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/no-such-priced-model"]}}))
    result = router.complete("c", "hi")
    assert result.cost_usd is None
    assert router.budget.spent == Decimal(0) and router.budget.unknown_calls == 1
    assert "$0.000000 + 1 call at unknown price" in router.budget.text()


def test_strict_session_budget_skips_candidates_with_an_unknown_price(sim, make_router) -> None:
    config = sim_config(sim, {"c": {"targets": ["sim/unpriced", "sim/a"]}}, prices={"sim/a": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}})
    router = make_router(config, budget_usd=1.0, on_budget="cheapest", budget_strict=True)
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a"
    assert result.attempts[0].message == "session budget: unknown price (the budget is strict)"


def test_session_budget_limit_can_change_and_spending_stays(sim, make_router) -> None:
    router = make_router(_priced(sim))
    router.complete("c", "hi")
    spent = router.budget.spent
    router.budget.set_limit(spent)  # nothing left
    with pytest.raises(BudgetExceeded):
        router.complete("c", "hi")
    assert router.budget.spent == spent
    with pytest.raises(ValueError):
        router.budget.set_limit(-1)


def test_hooks_get_every_attempt_and_the_result(sim, make_router) -> None:
    from nbrouter.testing import ServerError

    sim.script([ServerError(500)], model="b")
    attempts: list[Attempt] = []
    results: list[RouteResult] = []
    router = make_router(_priced(sim), on_attempt=attempts.append, on_result=results.append)
    result = router.complete("c", "hi")
    router.complete("c", "again")  # the hooks of the first call have run by the end of the second
    assert [a.candidate for a in attempts[:2]] == ["sim#default/b", "sim#default/a"]
    assert attempts[0].kind.value == "server_error" and attempts[1].action.value == "served"
    assert results[0] is result


def test_an_exception_in_a_hook_is_logged_never_raised_into_the_call(sim, make_router, caplog) -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("hook broke")

    router = make_router(_priced(sim), on_attempt=broken, on_result=broken)
    with caplog.at_level(logging.ERROR, logger="nbrouter"):
        first = router.complete("c", "hi")
        router.complete("c", "again")
    assert first.text
    assert any("a hook" in r.getMessage() and r.exc_info for r in caplog.records)

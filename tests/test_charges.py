"""Issue 26, items 2 and 4: a partial answer is never billed as free, and a call's own limits are checked.

routing.md: partial attempts are charged. A stream cut after text used tokens the provider bills; with no
usage reported before the cut, the attempt is charged an estimate from what it had sent (marked as an
estimate), and the session budget counts it. A call-level `timeout_s=0` is refused, as the config refuses
it, instead of meaning "no limit".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from conftest import sim_config
from nbrouter import TextDelta
from nbrouter.testing import CutStream, Reply


def _priced(sim: Any, *targets: str, **options: Any) -> dict[str, Any]:
    return sim_config(sim, {"c": {"targets": list(targets), **options}},
                      prices={t: {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0} for t in targets})


def test_a_stream_cut_after_text_is_charged_an_estimate_never_zero(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=3)], model="a")
    router = make_router(_priced(sim, "sim/a", "sim/b"))
    events = list(router.stream("c", "tell me a long story please"))
    result = events[-1].result
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert result.partial and shown
    cut = result.attempts[0]
    assert cut.usage is not None and cut.usage_estimated
    assert cut.usage.output_tokens == (len(shown) + 3) // 4 and cut.usage.input_tokens > 0
    expected = (Decimal(cut.usage.input_tokens) * 1000 + Decimal(cut.usage.output_tokens) * 2000) / 1_000_000
    assert cut.cost_usd == expected > 0
    assert result.cost_usd == expected and result.cost_estimated and not result.usage_known
    assert router.budget.spent == expected and router.budget.unknown_calls == 0
    assert "(estimated)" in result.footer() and "0 tokens" not in result.footer()


def test_a_stream_cut_after_text_at_an_unknown_price_counts_as_unknown(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=3)], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}))
    result = list(router.stream("c", "tell me a long story please"))[-1].result
    assert result.partial and result.attempts[0].usage_estimated
    assert result.cost_usd is None and result.cost_text == "unknown"
    assert router.budget.spent == 0 and router.budget.unknown_calls == 1


def test_a_stream_cut_before_any_text_is_not_charged(sim, make_router) -> None:
    sim.script([CutStream(after_chunks=0)], model="a")
    router = make_router(_priced(sim, "sim/a", "sim/b"))
    result = list(router.stream("c", "hi"))[-1].result
    cut = result.attempts[0]
    assert cut.usage is None and not cut.usage_estimated and cut.cost_usd is None and cut.cost_known
    assert router.budget.spent == result.attempts[1].cost_usd


def test_a_hedged_stream_cancelled_after_its_first_byte_is_charged_at_an_unknown_cost(sim, make_router) -> None:
    # a's headers come after the hedge started b; b's text comes first, so a is cancelled with no text of its own
    sim.script([Reply("the slow one", chunks=["the ", "slow ", "one"], delay_s=0.3, tokens_per_s=1.0)], model="a")
    sim.script([Reply("the quick one", chunks=["the ", "quick ", "one"], delay_s=0.15)], model="b")
    router = make_router(_priced(sim, "sim/a", "sim/b", hedge_after_s=0.2))
    result = list(router.stream("c", "hi"))[-1].result
    assert result.served_by == "sim#default/b"
    lost = next(a for a in result.attempts if a.candidate == "sim#default/a")
    assert lost.kind.value == "cancelled"
    if lost.ttft_s is None:
        pytest.fail("the slow candidate's first byte had not come when it was cancelled: the script's delays are off")
    assert lost.cost_usd is None and not lost.cost_known
    assert router.budget.unknown_calls == 1 and result.cost_unknown_attempts == 1


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, float("nan"), float("inf"), True, "10"])
def test_a_call_level_timeout_that_is_not_above_zero_is_refused(sim, make_router, value: Any) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    with pytest.raises((ValueError, TypeError), match="timeout_s must be a number above 0"):
        router.complete("c", "hi", timeout_s=value)
    assert sim.requests == []


def test_a_call_level_timeout_wins_over_the_combo_s(sim, make_router) -> None:
    from nbrouter.testing import Hang

    sim.script([Hang(seconds=5.0)], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"], "timeout_s": 30}}))
    result = router.complete("c", "hi", timeout_s=1.0)
    assert result.served_by == "sim#default/b"
    # the hang is shorter than the combo's 30 s: only the call's own 1 s makes this attempt a timeout
    assert result.attempts[0].kind.value == "timeout"


def test_max_tokens_and_max_cost_are_checked_too(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    with pytest.raises(ValueError, match="max_tokens must be a number above 0"):
        router.complete("c", "hi", max_tokens=0)
    with pytest.raises(ValueError, match="max_cost_usd must be a number of at least 0"):
        router.complete("c", "hi", max_cost_usd=-1)
    assert sim.requests == []

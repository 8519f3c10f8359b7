"""Issue 14: an emergency tier (`[router] emergency`): tried once, after every candidate of any combo failed
or was skipped, shown as its own tier in explain and in the attempt log; off unless set."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import sim_config
from nbrouter import AllTargetsFailed, ComboConfigError
from nbrouter.testing import RateLimited, ServerError


def _config(sim: Any, emergency: str | None = "free-only", **combo_options: Any) -> dict[str, Any]:
    combos = {"free-only": {"targets": ["sim/free"]}, "c": {"targets": ["sim/a", "sim/b"], **combo_options}}
    extra = {"router": {"emergency": emergency}} if emergency else {}
    return sim_config(sim, combos, policy={"server_error_backoff_s": 0.0}, **extra)


def test_emergency_tier_serves_after_every_candidate_failed(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    sim.script([ServerError(503)], model="b")
    router = make_router(_config(sim))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/free"
    assert [r.model for r in sim.requests] == ["a", "b", "free"]
    assert result.attempts[-1].path == "emergency > free-only > sim#default/free"


def test_emergency_tier_serves_when_every_candidate_is_skipped(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=300)], model="a")
    sim.script([RateLimited(retry_after=300)], model="b")
    router = make_router(_config(sim))
    router.complete("c", "hi")  # a and b now cool down for 5 minutes
    sim.reset()
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/free" and [r.model for r in sim.requests] == ["free"]
    assert [a.action.value for a in result.attempts] == ["skipped", "skipped", "served"]


def test_emergency_tier_is_shown_as_its_own_tier_by_explain(sim, make_router) -> None:
    router = make_router(_config(sim))
    decision = router.explain("c", "hi")
    rows = [r for r in decision.rows if r.position is not None]
    assert [r.candidate.path_text for r in rows] == [
        "c > sim#default/a", "c > sim#default/b", "emergency > free-only > sim#default/free"]
    assert rows[-1].reason.startswith("emergency tier")


def test_emergency_tier_is_tried_once_even_past_max_attempts(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    sim.script([ServerError(500)], model="free")
    router = make_router(_config(sim, max_attempts=1))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    assert [r.model for r in sim.requests] == ["a", "free"]
    assert [a.action.value for a in err.value.attempts] == ["advance", "skipped", "advance"]


def test_no_emergency_tier_unless_set(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    sim.script([ServerError(500)], model="b")
    router = make_router(_config(sim, emergency=None))
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    assert [r.model for r in sim.requests] == ["a", "b"]
    assert all(r.candidate.path[0] != "emergency" for r in router.explain("c", "hi").rows)


def test_the_emergency_combo_itself_has_no_second_emergency_tier(sim, make_router) -> None:
    router = make_router(_config(sim))
    assert [r.candidate.path_text for r in router.explain("free-only", "hi").rows] == ["free-only > sim#default/free"]


def test_an_emergency_candidate_already_in_the_combo_is_not_repeated(sim, make_router) -> None:
    config = _config(sim, emergency="sim/b")
    router = make_router(config)
    assert [r.candidate.key for r in router.explain("c", "hi").rows] == ["sim#default/a", "sim#default/b"]


def test_an_unknown_emergency_is_a_config_error(sim, make_router) -> None:
    with pytest.raises(ComboConfigError) as err:
        make_router(_config(sim, emergency="nothing-here"))
    assert err.value.field == "router.emergency" and "nothing-here" in str(err.value)

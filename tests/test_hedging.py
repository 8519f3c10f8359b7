"""Issue 14: hedging for interactive cells (`hedge_after_s`): when the first candidate has sent no first byte
after that long, the next starts too; the first to produce text serves, the other is cancelled; both rows
are logged. Off by default. Over real HTTP on loopback (the simulator's slow replies are real waits)."""

from __future__ import annotations

from typing import Any

from conftest import sim_config
from nbrouter import TextDelta
from nbrouter.testing import Reply, ServerError


def combo(*targets: Any, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def tried(sim: Any) -> list[str]:
    return [r.model for r in sim.requests]


def test_hedging_starts_the_next_candidate_when_the_first_sends_nothing_in_time(sim, make_router) -> None:
    sim.script([Reply("slow", delay_s=3.0)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", hedge_after_s=0.2)))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/b"
    assert sorted(tried(sim)) == ["a", "b"]
    lost = next(a for a in result.attempts if a.candidate == "sim#default/a")
    assert lost.kind.value == "cancelled" and lost.message == "hedge: cancelled, sim#default/b answered first"
    assert lost.action.value == "advance"
    rows = router.log(10)
    assert sorted((r["candidate"], r["action"]) for r in rows) == [("sim#default/a", "advance"), ("sim#default/b", "served")]


def test_a_hedged_stream_shows_only_the_winner_s_text(sim, make_router) -> None:
    sim.script([Reply("the slow one", delay_s=3.0)], model="a")
    sim.script([Reply("the quick one", chunks=["the ", "quick ", "one"])], model="b")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", hedge_after_s=0.2)))
    events = list(router.stream("c", "hi"))
    result = events[-1].result
    assert result.text == "the quick one" == "".join(e.text for e in events if isinstance(e, TextDelta))
    assert result.served_by == "sim#default/b" and not result.partial


def test_no_hedge_when_the_first_answers_in_time(sim, make_router) -> None:
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", hedge_after_s=2.0)))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a" and tried(sim) == ["a"]


def test_a_first_candidate_that_fails_fast_falls_back_as_usual(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", hedge_after_s=1.0), policy={"server_error_backoff_s": 0.0}))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/b" and tried(sim) == ["a", "b"]
    assert [a.action.value for a in result.attempts] == ["advance", "served"]


def test_hedging_is_off_by_default(sim, make_router) -> None:
    sim.script([Reply("slow but sure", delay_s=0.6)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    result = router.complete("c", "hi")
    assert result.served_by == "sim#default/a" and tried(sim) == ["a"]


def test_explain_says_when_hedging_and_retries_will_happen(sim, make_router) -> None:
    router = make_router(sim_config(sim, combo("sim/a", "sim/b", hedge_after_s=0.5, retries={"server_error": 2})))
    notes = " ".join(router.explain("c", "hi").notes)
    assert "hedging: the next candidate starts too after 0.5 s without a first byte" in notes
    assert "retries invalid_output 1, server_error 2" in notes

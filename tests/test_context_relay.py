"""Issue 14: the `context-relay` strategy for conversations: stay on the target that holds the conversation;
when the call must move, hand the history over compacted to fit (the oldest turns summarised by the combo's
cheapest candidate, or dropped if that fails), and say so in the attempt log. Over real HTTP on loopback."""

from __future__ import annotations

from typing import Any

from nbrouter.testing import RateLimited, ServerError


def _config(sim: Any, windows: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                              "context_window": windows or {}}},
        "combos": {"chat": {"targets": ["sim/a", "sim/b", "sim/small", "sim/summariser"], "strategy": "context-relay"}},
        "prices": {"sim/a": {"input_per_mtok": 3, "output_per_mtok": 15}, "sim/b": {"input_per_mtok": 3, "output_per_mtok": 15},
                   "sim/small": {"input_per_mtok": 1, "output_per_mtok": 2},
                   "sim/summariser": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
        "policy": {"server_error_backoff_s": 0.0},
    }


def _history(turns: int, words: int = 8) -> list[dict[str, Any]]:
    out = [{"role": "user", "content": "Let us plan the trip to Lisbon."}]
    for i in range(turns):
        out.append({"role": "assistant", "content": f"answer {i} " + "word " * words})
        out.append({"role": "user", "content": f"question {i + 1} " + "word " * words})
    return out


def test_context_relay_stays_on_the_target_that_holds_the_conversation(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    router = make_router(_config(sim))
    first = router.complete("chat", messages=_history(1))
    assert first.served_by == "sim#default/b"  # a failed: b holds the conversation now
    sim.reset()
    second = router.complete("chat", messages=_history(2))  # a is healthy again, but b holds it
    assert second.served_by == "sim#default/b" and [r.model for r in sim.requests] == ["b"]
    assert router.explain("chat", messages=_history(2)).order[0].key == "sim#default/b"


def test_a_new_conversation_starts_as_written(sim, make_router) -> None:
    router = make_router(_config(sim))
    router.complete("chat", messages=_history(1))
    other = [{"role": "user", "content": "Something else entirely."}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "go on"}]
    assert router.complete("chat", messages=other).served_by == "sim#default/a"


def test_moving_to_a_smaller_window_summarises_the_oldest_turns(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=60)], model="a")
    sim.script([RateLimited(retry_after=60)], model="b")
    router = make_router(_config(sim, windows={"small": 400}))
    history = _history(20, words=12)  # about 900 tokens: more than 0.85 of small's 400
    result = router.complete("chat", messages=history)
    assert result.served_by == "sim#default/small"
    sent = next(r.body for r in sim.requests if r.model == "small")
    assert sent["messages"][0]["role"] == "system" and sent["messages"][0]["content"].startswith("Summary of the earlier conversation")
    assert len(sent["messages"]) < len(history)
    assert sent["messages"][-1] == history[-1]  # the new turn always goes
    note = result.attempts[-1].message
    assert "context-relay: summarised the oldest 30 messages into one (by sim#default/summariser)" in note
    assert any(r.model == "summariser" for r in sim.requests)


def test_when_no_summary_can_be_made_the_oldest_turns_are_dropped(sim, make_router) -> None:
    for m in ("a", "b"):
        sim.script([RateLimited(retry_after=60)], model=m)
    sim.script([ServerError(500)], model="summariser", repeat_last=True)
    router = make_router(_config(sim, windows={"small": 400}))
    history = _history(20, words=12)
    result = router.complete("chat", messages=history)
    assert result.served_by == "sim#default/small"
    sent = next(r.body for r in sim.requests if r.model == "small")
    assert all(m["role"] != "system" for m in sent["messages"]) and sent["messages"][-1] == history[-1]
    assert "(no summary could be made)" in result.attempts[-1].message


def test_a_history_that_fits_is_sent_whole(sim, make_router) -> None:
    router = make_router(_config(sim, windows={"a": 100000}))
    history = _history(3)
    router.complete("chat", messages=history)
    assert sim.requests[0].body["messages"] == history

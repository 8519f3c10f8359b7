"""Issue 17: `Router.map` / `amap` over loopback: order, every item accounted for, budget, interrupt, resume,
structured output into typed columns."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import sim_config
from nbrouter import ComboConfigError
from nbrouter.router.batch.dispatch import CANCELLED, NOT_SENT_BUDGET, NOT_SENT_INTERRUPTED, BatchResult, NotDone
from nbrouter.testing import Hang, Reply, ServerError

pd = pytest.importorskip("pandas")  # the `test` extra installs it; the batch itself never needs it


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBROUTER_CACHE", str(tmp_path / "responses.sqlite3"))


def one(sim: Any, *targets: str, **extra: Any) -> dict[str, Any]:
    return sim_config(sim, {"c": {"targets": list(targets or ["sim/m"])}}, **extra)


def test_answers_come_back_in_input_order_one_entry_per_item(sim, make_router) -> None:
    router = make_router(one(sim))
    items = [f"q{i}" for i in range(40)]
    batch = router.map("c", items, prompt="Say {item}", cache=False)
    assert isinstance(batch, BatchResult) and len(batch) == 40
    assert batch.texts == [f"Simulated reply from m: Say q{i}" for i in range(40)]
    assert batch.served_by_counts == {"sim#default/m": 40}
    assert len(sim.requests) == 40


def test_every_item_is_accounted_for_done_failed_or_not_sent(sim, make_router) -> None:
    ok = Reply("ok", usage={"input_tokens": 10, "output_tokens": 10})  # $0.02 each at these prices
    sim.set_default(ok)
    sim.script([ok, ServerError(500), ok], model="m")
    config = one(sim, prices={"sim/m": {"input_per_mtok": 1000, "output_per_mtok": 1000}})
    router = make_router(config)
    # concurrency 1 keeps the order of sending, so the script's failure lands on the second item
    batch = router.map("c", ["a", "b", "c", "d", "e", "f"], concurrency=1, max_tokens=100, max_cost_usd=0.16, cache=False)
    kinds = ["done" if not isinstance(e, Exception) else "not sent" if isinstance(e, NotDone) else "failed" for e in batch]
    # spent $0.06 after "d"; "e" is estimated at $0.11 (100 tokens out at most): it would pass $0.16
    assert kinds == ["done", "failed", "done", "done", "not sent", "not sent"]
    assert batch.cost_usd == Decimal("0.06")
    assert [f.position for f in batch.failed] == [1]
    assert all(f.error.reason == NOT_SENT_BUDGET for f in batch.not_done)
    assert batch.done + len(batch.failed) + len(batch.not_done) == 6
    text = str(batch)
    assert "6 items" in text and "1 failed" in text and f"{len(batch.not_done)} {NOT_SENT_BUDGET}" in text
    assert "failed #1: server_error" in text


def test_the_batch_budget_stops_cleanly_before_an_item_that_would_pass_it(sim, make_router) -> None:
    config = one(sim, prices={"sim/m": {"input_per_mtok": 1000, "output_per_mtok": 1000}})
    router = make_router(config)
    batch = router.map("c", [f"item {i}" for i in range(30)], max_tokens=100, max_cost_usd=0.15, cache=False, concurrency=4)
    sent = len(sim.requests)
    assert 0 < batch.done < 30 and batch.done == sent  # nothing half-sent: every request sent is an answer
    assert batch.cost_usd <= Decimal("0.15")
    statuses = ["done" if not isinstance(e, Exception) else e.reason for e in batch]
    first_stop = statuses.index(NOT_SENT_BUDGET)
    assert statuses[first_stop:] == [NOT_SENT_BUDGET] * (30 - first_stop)  # the rest are left undone, in order


def test_a_dataframe_fills_the_template_from_its_columns_and_other_braces_stay(sim, make_router) -> None:
    router = make_router(one(sim))
    frame = pd.DataFrame({"name": ["ada", "bob"], "n": [1, 2]}, index=["x", "y"])
    batch = router.map("c", frame, prompt='{name} has {n} {"json": true} {missing}', cache=False)
    assert [r.body["messages"][-1]["content"] for r in sim.requests] == [
        'ada has 1 {"json": true} {missing}', 'bob has 2 {"json": true} {missing}']
    table = batch.to_pandas()
    assert list(table.index) == ["x", "y"]
    assert list(table.columns) == ["name", "n", "text", "served_by", "cost_usd", "latency_s", "attempts", "cached", "error"]
    assert str(table["n"].dtype) == "int64" and table["attempts"].tolist() == [1, 1]


def test_an_input_column_named_like_an_output_column_is_kept_as_input_name(sim, make_router) -> None:
    router = make_router(one(sim))
    table = router.map("c", pd.DataFrame({"text": ["a"], "error": [0.5]}), prompt="{text}", cache=False).to_pandas()
    assert list(table.columns) == ["input_text", "input_error", "text", "served_by", "cost_usd", "latency_s", "attempts", "cached", "error"]
    assert table["input_text"].tolist() == ["a"] and table["text"].tolist() == ["Simulated reply from m: a"]
    assert str(table["input_error"].dtype) == "float64"


def test_messages_may_be_a_function_of_the_item(sim, make_router) -> None:
    router = make_router(one(sim))
    router.map("c", [{"q": "one"}, {"q": "two"}], messages=lambda item: [{"role": "user", "content": item["q"].upper()}], cache=False)
    assert [r.body["messages"][-1]["content"] for r in sim.requests] == ["ONE", "TWO"]


def test_bad_input_fails_before_anything_is_sent(sim, make_router) -> None:
    router = make_router(one(sim))
    with pytest.raises(TypeError, match="give prompt="):
        router.map("c", [{"a": 1}])
    with pytest.raises(TypeError, match="not a str"):
        router.map("c", "abc")
    with pytest.raises(ComboConfigError):
        router.map("nope", ["a"])
    with pytest.raises(ValueError, match="concurrency"):
        router.map("c", ["a"], concurrency=0)
    assert sim.requests == []


def _hang_after(sim: Any, n: int) -> None:
    sim.script([Reply("ok")] * n + [Hang(30)], model="m", repeat_last=True)


def test_cancelling_amap_returns_what_finished_and_logs_the_cancelled_calls(sim, make_router) -> None:
    _hang_after(sim, 3)
    router = make_router(one(sim))
    items = [f"q{i}" for i in range(10)]

    async def main() -> BatchResult:
        finished = asyncio.Event()

        def progress(p: Any) -> None:
            if p.done >= 3:
                finished.set()

        task = asyncio.ensure_future(router.amap("c", items, concurrency=2, progress=progress))
        await finished.wait()
        while len(sim.requests) < 5:  # the two calls after the third answer are on the wire (real I/O, polled)
            await asyncio.sleep(0.01)
        task.cancel()
        return await task

    batch = asyncio.run(main())
    assert batch.interrupted and batch.done == 3
    reasons = [e.reason for e in batch if isinstance(e, NotDone)]
    assert reasons.count(CANCELLED) == 2 and reasons.count(NOT_SENT_INTERRUPTED) == 5
    assert "INTERRUPTED" in str(batch)
    cancelled = [row for row in router.log(50) if row["kind"] == "cancelled"]
    assert len(cancelled) == 2


def test_a_second_run_after_an_interrupt_sends_only_the_missing_items(sim, make_router) -> None:
    _hang_after(sim, 4)
    router = make_router(one(sim))
    items = [f"q{i}" for i in range(8)]

    async def interrupted() -> BatchResult:
        task = asyncio.ensure_future(router.amap("c", items, concurrency=1))
        while len(sim.requests) < 5:  # real I/O: the fifth request has reached the simulator
            await asyncio.sleep(0.01)
        task.cancel()
        return await task

    first = asyncio.run(interrupted())
    assert first.done == 4
    sim.reset()
    second = router.map("c", items, concurrency=1)
    assert second.done == 8 and len(sim.requests) == 4  # the four answers kept came from the cache
    assert [e.cached is not None for e in second] == [True] * 4 + [False] * 4
    assert second.served_by_counts == {"cached": 4, "sim#default/m": 4}
    assert second.texts[:4] == first.texts[:4]


def test_retry_failed_sends_only_the_items_without_an_answer(sim, make_router) -> None:
    sim.script([ServerError(500), Reply("fine")], model="m")
    router = make_router(one(sim))
    batch = router.map("c", ["a", "b", "c"], concurrency=1)
    assert [f.position for f in batch.failed] == [0]
    sim.reset()
    again = batch.retry_failed()
    assert len(sim.requests) == 1 and sim.requests[0].body["messages"][-1]["content"] == "a"
    assert again.done == 3 and not again.failed and again.texts[1:] == batch.texts[1:]


def test_map_works_from_a_running_loop_and_from_threads(sim, make_router) -> None:
    router = make_router(one(sim))

    async def in_a_cell() -> BatchResult:
        return router.map("c", ["a", "b"], cache=False)  # a sync call inside a running loop, as in Jupyter

    assert asyncio.run(in_a_cell()).done == 2
    out: list[int] = []
    threads = [threading.Thread(target=lambda k=k: out.append(router.map("c", [f"t{k}-{i}" for i in range(5)], cache=False).done))
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == [5, 5, 5]


def test_the_summary_has_real_text_plain_and_names_who_served_how_many(sim, make_router) -> None:
    router = make_router(one(sim))
    batch = router.map("c", ["a", "b", "c"], cache=False)
    bundle = batch._repr_mimebundle_()
    assert bundle["text/plain"].splitlines()[0] == "batch over 'c': 3 items · 3 done · 0 failed"
    assert "served by: sim#default/m 3" in bundle["text/plain"] and "items/s" in bundle["text/plain"]
    assert "slowest: #" in bundle["text/plain"]
    assert set(batch._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}


# ---- structured output ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"}, "sure": {"type": "boolean"}},
    "required": ["label", "score", "sure"],
}


def test_schema_fields_come_out_as_typed_columns(sim, make_router) -> None:
    sim.script([Reply('{"label": "pos", "score": 3, "sure": true}'), ServerError(500),
                Reply('{"label": "neg", "score": -1, "sure": false}')], model="m")
    router = make_router(one(sim))
    frame = pd.DataFrame({"review": ["great", "meh", "awful"]})
    batch = router.map("c", frame, prompt="Rate: {review}", schema=SCHEMA, concurrency=1, cache=False)
    assert batch.parsed[0] == {"label": "pos", "score": 3, "sure": True}
    table = batch.to_pandas()
    assert list(table.columns[:4]) == ["review", "label", "score", "sure"]
    assert str(table["score"].dtype) == "Int64" and str(table["sure"].dtype) == "boolean"
    assert str(table["label"].dtype) == "string"
    assert table["score"].tolist()[0] == 3 and pd.isna(table["score"].iloc[1]) and table["error"].iloc[1].startswith("server_error")
    # the schema went out natively as the protocol's response_format
    assert sim.requests[0].body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_an_invalid_answer_is_retried_once_on_the_same_target_then_falls_back(sim, make_router) -> None:
    sim.script([Reply("not json"), Reply('{"label": "x"}')], model="a")
    sim.script([Reply('{"label": "ok", "score": 1, "sure": true}')], model="b")
    router = make_router(one(sim, "sim/a", "sim/b"))
    result = router.complete("c", "rate this", schema=SCHEMA)
    assert [(a.candidate, a.action.value, a.kind.value if a.kind else None) for a in result.attempts] == [
        ("sim#default/a", "retry", "invalid_output"), ("sim#default/a", "advance", "invalid_output"), ("sim#default/b", "served", None)]
    assert "not JSON" in result.attempts[0].message and "score" in result.attempts[1].message
    assert result.parsed == {"label": "ok", "score": 1, "sure": True}


def test_a_pydantic_model_is_a_schema_and_parsed_is_its_instance(sim, make_router) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Review(pydantic.BaseModel):
        label: str
        score: int

    sim.script([Reply('{"label": "pos", "score": 2}')], model="m")
    router = make_router(one(sim))
    batch = router.map("c", ["great"], schema=Review, cache=False)
    assert isinstance(batch.parsed[0], Review) and batch.parsed[0].score == 2
    table = batch.to_pandas()
    assert str(table["score"].dtype) == "Int64" and table["label"].tolist() == ["pos"]


def test_ctrl_c_during_map_returns_what_finished(sim, make_router) -> None:
    import os
    import signal
    import time

    _hang_after(sim, 2)
    router = make_router(one(sim))

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while len(sim.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # real I/O, from another thread: the third request has reached the simulator
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the main thread is waiting in map

    threading.Thread(target=interrupt, daemon=True).start()
    batch = router.map("c", [f"q{i}" for i in range(6)], concurrency=1)
    assert batch.interrupted and batch.done == 2
    assert [e.reason for e in batch if isinstance(e, NotDone)] == [CANCELLED, NOT_SENT_INTERRUPTED, NOT_SENT_INTERRUPTED, NOT_SENT_INTERRUPTED]

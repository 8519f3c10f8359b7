"""Issue 24: `Router.map(..., mode="batch")` through the providers' batch APIs, over loopback, for each of
the three protocols, on one ManualClock shared by the router and the simulator (nothing sleeps).

A DataFrame to typed columns in input order; errored and expired lines falling back live and through a
second provider's batch; a kernel restart in the middle; a cancel; a job split over the provider's limit;
cost at the batch price with the live cost beside it; nothing paid twice.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from nbrouter import Router
from nbrouter.router import Action, BatchJob, NoBatchTarget, StopError
from nbrouter.router.batch.dispatch import NOT_SENT_BUDGET, NotDone
from nbrouter.router.batch.jobs import NOT_SENT_CANCELLED, NOT_SENT_NO_PROMPT, PENDING
from nbrouter.testing import BatchScript, ContentFilter, Hang, ManualClock, ProviderSimulator, RateLimited, Reply, ServerError

pd = pytest.importorskip("pandas")

KEY = "sim-batch-key-0123456789abcdef"
#: protocol -> (provider name, model, genai-prices id); every model has batch prices in genai-prices
TARGETS = {
    "openai": ("oa", "gpt-4o-mini", "openai"),
    "anthropic": ("an", "claude-haiku-4-5", "anthropic"),
    "gemini": ("ge", "gemini-2.5-flash", "google"),
}
PROTOCOLS = list(TARGETS)
#: the next protocol in the order, for the second target of a combo
SECOND = {"openai": "anthropic", "anthropic": "gemini", "gemini": "openai"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def bsim(clock: ManualClock) -> Iterator[ProviderSimulator]:
    with ProviderSimulator(clock=clock) as sim:
        yield sim


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_KEY", KEY)


def url_of(sim: ProviderSimulator, protocol: str) -> str:
    return {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}[protocol]


def config(sim: ProviderSimulator, *protocols: str, **extra: Any) -> dict[str, Any]:
    """Providers for every protocol at the simulator, and combo `c` over the given ones in order."""
    providers = {name: {"protocol": p, "base_url": url_of(sim, p), "api_key_env": "BATCH_KEY", "prices_id": pid}
                 for p, (name, _, pid) in TARGETS.items()}
    targets = [f"{TARGETS[p][0]}/{TARGETS[p][1]}" for p in protocols]
    return {"providers": providers, "combos": {"c": {"targets": targets}}, **extra}


def target(protocol: str) -> str:
    name, model, _ = TARGETS[protocol]
    return f"{name}#default/{model}"


@pytest.fixture
def routers(tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    made: list[Router] = []

    def make(cfg: dict[str, Any], **kwargs: Any) -> Router:
        kwargs.setdefault("state_path", tmp_path / "state.sqlite3")
        router = Router(cfg, clock=clock, **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


def batch_requests(sim: ProviderSimulator) -> list[Any]:
    """The requests that created jobs or uploaded files (not the polls)."""
    return [r for r in sim.requests if r.path.endswith(("/files", "/batches", ":batchGenerateContent"))]


def live_requests(sim: ProviderSimulator) -> list[Any]:
    return [r for r in sim.requests if r.path.endswith(("/chat/completions", "/messages", ":generateContent"))]


# ---- a DataFrame to a result in input order with typed columns -------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dataframe_goes_through_a_batch_job_to_typed_columns_in_input_order(protocol: str, bsim: Any, routers: Any,
                                                                              clock: ManualClock) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    frame = pd.DataFrame({"name": [f"n{i}" for i in range(6)], "n": list(range(6))}, index=[f"r{i}" for i in range(6)])
    schema = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
              "required": ["label", "score"]}
    # each line's answer names its row, so the order of the table shows (OpenAI and Anthropic shuffle result lines)
    answers = {f"row-{i}": Reply(json.dumps({"label": f"label {i}", "score": 10 * i})) for i in range(6)}
    bsim.script_batch(BatchScript(line_s=5, lines=answers))
    job = router.map("c", frame, prompt="Rate {name} ({n})", schema=schema, mode="batch")
    assert isinstance(job, BatchJob) and job.id.startswith("job-")
    assert job.providers == [target(protocol)] and len(job.ids) == 1
    assert job.counts == {"done": 0, "failed": 0, "not sent": 0, "pending": 6}
    assert job.estimated_cost_usd is not None and job.estimated_cost_usd > 0
    assert live_requests(bsim) == []  # nothing went live
    result = job.wait()
    assert result.done == 6 and result.served_by_counts == {target(protocol): 6}
    table = result.to_pandas()
    assert list(table.index) == [f"r{i}" for i in range(6)]
    assert list(table["name"]) == [f"n{i}" for i in range(6)]
    assert str(table["score"].dtype) == "Int64" and str(table["label"].dtype) == "string"
    assert list(table["score"]) == [0, 10, 20, 30, 40, 50] and list(table["label"]) == [f"label {i}" for i in range(6)]
    assert result.parsed == [{"label": f"label {i}", "score": 10 * i} for i in range(6)]
    # each row's attempt log: one `batched` attempt naming the job and the line's status
    first = result[0].attempts
    assert [a.action for a in first] == [Action.BATCHED] and job.ids[0] in first[0].message
    assert live_requests(bsim) == []


# ---- per-row fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_errored_and_expired_lines_fall_back_live_and_a_stop_kind_fails(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    lines = {"row-1": ServerError(503), "row-2": Hang(), "row-3": ContentFilter()}
    if protocol == "gemini":  # an expired Gemini job has no results at all: expiry is its own test below
        lines = {"row-1": ServerError(503), "row-3": ContentFilter()}
    bsim.script_batch(BatchScript(line_s=10, lines=lines, window_s=3600))
    job = router.map("c", ["a", "b", "c", "d", "e"], prompt="Say {item}", mode="batch")
    result = job.wait()
    second = target(SECOND[protocol])
    kinds = ["done" if not isinstance(e, Exception) else "failed" for e in result]
    assert kinds == ["done", "done", "done", "failed", "done"]
    assert result[0].served_by == target(protocol) and result[4].served_by == target(protocol)
    assert result[1].served_by == second  # the 503 line, live on the next target
    assert [a.action for a in result[1].attempts] == [Action.BATCHED, Action.SERVED]
    assert result[1].attempts[0].kind is not None and result[1].attempts[0].kind.value in ("overloaded", "server_error")
    if protocol != "gemini":
        assert result[2].served_by == second  # the line that never ran before the job expired
        assert [a.action for a in result[2].attempts] == [Action.BATCHED, Action.SERVED]
    # a content filter is not something another target fixes: failed with that error, not sent on
    assert isinstance(result[3], StopError) and result[3].kind.value == "content_filter"
    assert [a.action for a in result[3].attempts] == [Action.BATCHED]
    assert len(live_requests(bsim)) == (1 if protocol == "gemini" else 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rows_fall_back_through_a_second_providers_batch_with_fallback_batch(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    bsim.script_batch(BatchScript(line_s=10, lines={"row-0": ServerError(500), "row-2": RateLimited(retry_after=5)}),
                      model=TARGETS[protocol][1])
    job = router.map("c", ["a", "b", "c"], prompt="Say {item}", mode="batch", fallback="batch")
    result = job.wait()
    assert result.done == 3 and live_requests(bsim) == []
    assert job.providers == [target(protocol), target(SECOND[protocol])] and len(job.ids) == 2
    assert [e.served_by for e in result] == [target(SECOND[protocol]), target(protocol), target(SECOND[protocol])]
    assert [a.action for a in result[0].attempts] == [Action.BATCHED, Action.BATCHED]
    assert job.ids[1] in result[0].attempts[1].message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_job_that_expires_sends_its_unfinished_rows_on(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    bsim.script_batch(BatchScript(line_s=100, window_s=250), model=TARGETS[protocol][1])
    job = router.map("c", ["a", "b", "c", "d"], prompt="Say {item}", mode="batch")
    result = job.wait()
    assert result.done == 4
    expired_rows = [e for e in result if e.served_by == target(SECOND[protocol])]
    # lines finish every 100 s from validation: two ran before the window closed, except on Gemini,
    # whose expired jobs have no results at all
    assert len(expired_rows) == (4 if protocol == "gemini" else 2)
    assert all(a.action is Action.BATCHED and "expired" in a.message for a in (e.attempts[0] for e in expired_rows))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rows_refused_before_the_batch_was_accepted_go_to_the_next_target(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    bsim.script_batch(BatchScript(fail="token_limit_exceeded"), model=TARGETS[protocol][1])
    job = router.map("c", ["a", "b"], prompt="Say {item}", mode="batch")
    result = job.wait()
    assert result.done == 2 and all(e.served_by == target(SECOND[protocol]) for e in result)
    assert all(e.attempts[0].action is Action.BATCHED and e.attempts[0].kind is not None for e in result)


# ---- jobs outlive the kernel -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_new_router_finds_the_job_after_a_restart_and_collects_it(protocol: str, bsim: Any, routers: Any,
                                                                    clock: ManualClock) -> None:
    cfg = config(bsim, protocol)
    first = routers(cfg)
    bsim.script_batch(BatchScript(line_s=30))
    # no response cache: a settled job's answers then come from its record alone
    job = first.map("c", ["a", "b", "c"], prompt="Say {item}", mode="batch", cache=False)
    job_id, provider_id = job.id, job.ids[0]
    first.close()  # the kernel dies with the job running
    clock.advance(3600)
    second = routers(cfg)
    listed = second.jobs()
    assert [j.id for j in listed] == [job_id] and not listed[0].settled
    assert listed[0].ids == [provider_id] and listed[0].counts["pending"] == 3
    result = second.job(job_id).result()
    assert result.texts == [f"Simulated reply from {TARGETS[protocol][1]}: Say {x}" for x in "abc"]
    assert second.job(job_id).settled and len(batch_requests(bsim)) == (2 if protocol == "openai" else 1)
    # a third router reads the settled job from its record alone: the answers come back, nothing is sent
    sent = len(bsim.requests)
    third = routers(cfg)
    again = third.job(job_id).result()
    assert again.texts == result.texts and again.cost_usd == result.cost_usd
    assert len(bsim.requests) == sent


# ---- cancel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_cancelled_job_keeps_what_finished_and_sends_nothing_more(protocol: str, bsim: Any, routers: Any,
                                                                  clock: ManualClock) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    bsim.script_batch(BatchScript(validate_s=0, line_s=100), model=TARGETS[protocol][1])
    job = router.map("c", ["a", "b", "c", "d"], prompt="Say {item}", mode="batch")
    clock.advance(150)  # one line has finished
    job.cancel()
    result = job.wait()
    assert job.settled and live_requests(bsim) == []
    not_sent = [e for e in result if isinstance(e, NotDone)]
    assert all(e.reason == NOT_SENT_CANCELLED for e in not_sent) and len(not_sent) >= 2
    if protocol != "gemini":  # partial results of a cancelled Gemini job are not established
        assert result[0].text.endswith("Say a")
    assert result.done + len(not_sent) == 4


# ---- limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_over_the_providers_limit_is_split_into_several_jobs(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol))
    bsim.batch_max_requests = 3
    job = router.map("c", [f"q{i}" for i in range(8)], prompt="Say {item}", mode="batch")
    result = job.wait()
    assert result.done == 8 and result.texts == [f"Simulated reply from {TARGETS[protocol][1]}: Say q{i}" for i in range(8)]
    assert len(job.ids) >= 3 and all(j["lines"] <= 3 for j in bsim.batch_jobs() if j["status"] == "completed")
    assert live_requests(bsim) == []


def test_max_job_rows_splits_before_sending(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "anthropic"))
    job = router.map("c", [f"q{i}" for i in range(5)], mode="batch", max_job_rows=2)
    assert len(job.ids) == 3
    assert job.wait().done == 5


def test_bytes_over_the_limit_split_too(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "openai"))
    bsim.batch_max_bytes = 1500
    job = router.map("c", [f"question {i} " + "x" * 200 for i in range(10)], mode="batch")
    assert job.wait().done == 10 and len(job.ids) > 1


# ---- cost -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cost_is_at_the_batch_price_with_the_live_cost_beside_it(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol))
    result = router.map("c", ["a", "b", "c"], prompt="Say {item}", mode="batch").wait()
    usage = [e.usage for e in result]
    provider = router.config.providers[TARGETS[protocol][0]]
    live = sum((router.prices.cost(provider, TARGETS[protocol][1], u) for u in usage), Decimal(0))
    assert result.cost_usd > 0 and result.cost_usd * 2 == live  # genai-prices' batch variants: exactly half
    assert result.live_cost_usd == live
    text = str(result)
    assert "at the batch price" in text and f"live it would have cost ${live:.6f}" in text
    assert router.budget.spent == result.cost_usd  # the session budget counts what the batch cost


@pytest.mark.parametrize("why", ["a [prices] override", "no batch variant in genai-prices"])
def test_a_batch_price_that_is_not_known_stays_unknown(why: str, bsim: Any, routers: Any) -> None:
    if why == "a [prices] override":
        cfg = config(bsim, "openai", prices={"oa/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}})
    else:  # Groq's llama has a live price, and no batch one
        cfg = config(bsim, "openai")
        cfg["providers"]["oa"]["prices_id"] = "groq"
        cfg["combos"]["c"]["targets"] = ["oa/llama-3.1-8b-instant"]
    router = routers(cfg)
    job = router.map("c", ["a"], mode="batch")
    assert job.estimated_cost_usd is None
    result = job.wait()
    assert result[0].cost_usd is None and result[0].attempts[0].cost_known is False
    assert router.budget.unknown_calls == 1


def test_the_budget_counts_the_batch_estimate_before_submitting(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "openai"))
    job = router.map("c", ["a", "b", "c", "d"], mode="batch", max_tokens=1000, max_cost_usd=0.0007)
    # each row is estimated at ~$0.0003 (1000 tokens out at $0.30/M): two fit
    assert job.counts == {"done": 0, "failed": 0, "not sent": 2, "pending": 2}
    result = job.wait()
    assert [isinstance(e, NotDone) and e.reason == NOT_SENT_BUDGET for e in result] == [False, False, True, True]
    assert [j["lines"] for j in bsim.batch_jobs()] == [2]


# ---- nothing paid twice -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nothing_is_paid_twice_when_the_same_rows_run_again(protocol: str, bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, protocol))
    items = ["a", "b", "c"]
    first = router.map("c", items, prompt="Say {item}", mode="batch").wait()
    jobs, spent = len(bsim.batch_jobs()), router.budget.spent
    live = router.map("c", items, prompt="Say {item}")  # a live map of the same rows: all from the cache
    assert live.texts == first.texts and live.cost_usd == 0 and live_requests(bsim) == []
    again = router.map("c", items, prompt="Say {item}", mode="batch")  # and a batch one: no job at all
    assert again.ids == [] and again.settled and again.wait().texts == first.texts
    assert len(bsim.batch_jobs()) == jobs and router.budget.spent == spent
    job = router.job(router.jobs()[-1].id)  # the first job
    job.refresh()
    job.refresh()  # collecting again never counts a row twice
    assert router.budget.spent == spent


# ---- what a job's record keeps -------------------------------------------------------------------


def _records(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state.jobs.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT record FROM batch_jobs")]


def test_no_key_in_the_job_record_and_no_prompt_with_log_content_false(bsim: Any, routers: Any, tmp_path: Path,
                                                                      clock: ManualClock) -> None:
    cfg = config(bsim, "openai", "anthropic", log_content=False)
    router = routers(cfg)
    bsim.script_batch(BatchScript(line_s=10, lines={"row-1": ServerError(500)}))
    job = router.map("c", ["secret-prompt-one", "secret-prompt-two"], prompt="Say {item}", mode="batch")
    job_id = job.id
    router.close()
    clock.advance(3600)
    text = "\n".join(_records(tmp_path))
    assert KEY not in text and "secret-prompt" not in text
    record = json.loads(text)
    assert all(len(r["h"]) == 64 and "req" not in r for r in record["rows"])
    # after the restart, the row that fails over cannot be sent again: its prompt was not kept
    again = routers(cfg).job(job_id).wait()
    assert again[0].text.endswith("Say secret-prompt-one")
    assert isinstance(again[1], NotDone) and again[1].reason == NOT_SENT_NO_PROMPT
    text = "\n".join(_records(tmp_path))
    assert KEY not in text and "secret-prompt" not in text
    assert KEY not in str(job) and KEY not in repr(job)


def test_the_record_keeps_the_prompts_with_log_content_on_so_a_restart_can_fall_back(bsim: Any, routers: Any,
                                                                                  clock: ManualClock) -> None:
    cfg = config(bsim, "openai", "anthropic")
    bsim.script_batch(BatchScript(line_s=10, lines={"row-1": ServerError(500)}))
    job = routers(cfg).map("c", ["a", "b"], prompt="Say {item}", mode="batch")
    clock.advance(3600)
    result = routers(cfg).job(job.id).wait()
    assert result.done == 2 and result[1].served_by == target("anthropic")


# ---- targets without a batch API, and the rest ---------------------------------------------------------


def test_an_openai_compatible_server_without_batches_is_not_a_batch_target(bsim: Any, routers: Any, raw_server: Any) -> None:
    from nbrouter.testing import RawResponse, http_response

    cfg = config(bsim, "openai")
    cfg["providers"]["local"] = {"protocol": "openai", "base_url": raw_server.url + "/v1", "api_key_env": "BATCH_KEY"}
    cfg["combos"]["c"]["targets"] = ["local/some-model", "oa/gpt-4o-mini"]
    raw_server.script(RawResponse([http_response(404, b'{"error": {"message": "Not Found"}}')]))
    router = routers(cfg)
    job = router.map("c", ["a", "b"], mode="batch")
    assert job.providers == [target("openai")]
    assert job.rows[0].attempts[0].action is Action.SKIPPED and "no batch API" in job.rows[0].attempts[0].message
    assert job.wait().done == 2


def test_a_combo_with_no_batch_target_is_refused(bsim: Any, routers: Any) -> None:
    cfg = config(bsim, "openai")
    cfg["providers"]["ol"] = {"preset": "ollama", "base_url": bsim.openai_url}
    cfg["combos"]["c"]["targets"] = ["ol/llama"]
    with pytest.raises(NoBatchTarget):
        routers(cfg).map("c", ["a"], mode="batch")


def test_wait_gives_up_after_its_timeout_and_leaves_the_job_running(bsim: Any, routers: Any, clock: ManualClock) -> None:
    router = routers(config(bsim, "anthropic"))
    bsim.script_batch(BatchScript(line_s=3600))
    job = router.map("c", ["a", "b"], mode="batch")
    with pytest.raises(TimeoutError):
        job.wait(timeout_s=600)
    assert not job.settled and job.counts["pending"] == 2
    pending = job.result()
    assert all(isinstance(e, NotDone) and e.reason == PENDING for e in pending)
    assert job.wait().done == 2


def test_amap_submits_and_await_result_waits(bsim: Any, routers: Any) -> None:
    import asyncio

    router = routers(config(bsim, "gemini"))

    async def run() -> Any:
        job = await router.amap("c", ["a", "b"], mode="batch")
        return await job.await_result()

    result = asyncio.run(run())
    assert result.done == 2


def test_batch_options_are_refused_on_a_live_map_and_bad_values_are_named(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "openai"))
    with pytest.raises(TypeError, match="mode='batch'"):
        router.map("c", ["a"], fallback="batch")
    with pytest.raises(ValueError, match="mode"):
        router.map("c", ["a"], mode="later")
    with pytest.raises(ValueError, match="fallback"):
        router.map("c", ["a"], mode="batch", fallback="never")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_429_at_create_waits_its_retry_after_on_the_clock_and_submits_again(protocol: str, bsim: Any, routers: Any,
                                                                             clock: ManualClock) -> None:
    router = routers(config(bsim, protocol, SECOND[protocol]))
    bsim.script_batch([BatchScript(refuse=RateLimited(retry_after=45)), BatchScript()], model=TARGETS[protocol][1])
    job = router.map("c", ["a", "b"], mode="batch")
    assert 45 in [round(s) for s in clock.slept]  # the batch endpoint's own limit, honoured
    assert job.providers == [target(protocol)] and len(job.ids) == 1
    result = job.wait()
    assert result.done == 2 and all(e.served_by == target(protocol) for e in result)


def test_ctrl_c_stops_waiting_not_the_job(bsim: Any, routers: Any, clock: ManualClock) -> None:
    import signal
    import threading

    router = routers(config(bsim, "openai"))
    bsim.script_batch(BatchScript(line_s=10**6, window_s=10**8))
    job = router.map("c", ["a", "b"], mode="batch")
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        job.wait()
    timer.cancel()
    assert [j["status"] for j in bsim.batch_jobs()] == ["in_progress"]  # the provider's job runs on
    assert not job.settled
    clock.advance(3 * 10**6)
    assert job.wait().done == 2


def test_a_job_the_provider_no_longer_knows_is_given_up_and_its_rows_fall_back(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "anthropic", "openai"))
    bsim.script_batch(BatchScript(line_s=60))
    job = router.map("c", ["a", "b"], prompt="Say {item}", mode="batch")
    bsim.reset()  # the provider forgets the job: every poll is a 404 now
    result = job.wait(timeout_s=3600)
    assert result.done == 2 and all(e.served_by == target("openai") for e in result)
    first = result[0].attempts[0]
    assert first.action is Action.BATCHED and "could not be read 3 times" in first.message


def test_an_answer_that_does_not_match_the_schema_is_paid_and_falls_back(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "openai", "anthropic"))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    bsim.script_batch(BatchScript(lines={"row-0": Reply('{"n": 1}'), "row-1": Reply("not JSON at all")}))
    bsim.set_default(Reply('{"n": 2}'))
    result = router.map("c", ["a", "b"], schema=schema, mode="batch").wait()
    assert result.parsed == [{"n": 1}, {"n": 2}]
    first, live = result[1].attempts
    assert first.action is Action.BATCHED and first.kind is not None and first.kind.value == "invalid_output"
    assert live.action is Action.SERVED and live.candidate == target("anthropic")
    assert first.cost_usd is not None and first.cost_usd > 0  # the line was billed: it counts
    assert result[1].cost_usd == first.cost_usd + live.cost_usd


def test_the_jobs_file_has_numbered_migrations_and_is_the_users_alone(bsim: Any, routers: Any, tmp_path: Path) -> None:
    from nbrouter.router.batch.records import SCHEMA_VERSION

    routers(config(bsim, "openai")).map("c", ["a"], mode="batch")
    path = tmp_path / "state.jobs.sqlite3"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    assert path.stat().st_mode & 0o077 == 0


def test_retry_failed_sends_the_rows_without_an_answer_again_live(bsim: Any, routers: Any) -> None:
    router = routers(config(bsim, "openai"))
    bsim.script_batch(BatchScript(lines={"row-1": ContentFilter()}))
    result = router.map("c", ["a", "b", "c"], prompt="Say {item}", mode="batch").wait()
    assert [isinstance(e, StopError) for e in result] == [False, True, False]
    again = result.retry_failed()
    assert again.done == 3 and again.texts[1].endswith("Say b") and len(live_requests(bsim)) == 1
    assert again[0] is result[0]  # the answers kept are not sent again

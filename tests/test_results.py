"""routing.md section 7 (what the caller is told), secrets, sync calls from anywhere, and a light import."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from decimal import Decimal

import pytest

import nbrouter
from conftest import SIM_KEY, sim_config
from nbrouter import AllTargetsFailed, AttemptFinished, AttemptStarted, Done, RouteResult, TextDelta
from nbrouter.testing import RateLimited, Reply, ServerError


def test_public_api_is_exactly_what_all_lists() -> None:
    assert sorted(nbrouter.__all__) == sorted(
        [
            "Action", "AllCoolingDown", "AllTargetsFailed", "Attempt", "AttemptFinished", "AttemptStarted", "BatchResult",
            "BudgetExceeded", "Candidate", "ComboConfigError", "Decision", "Done", "ErrorKind", "NoProviders", "RouteError",
            "RouteResult", "Router", "Status", "StopError", "TextDelta", "Usage", "__version__",
            "load_ipython_extension", "unload_ipython_extension",
            # issue 25: images and tools
            "NotCapable", "Tool", "ToolCall", "ToolCalled", "image_part", "image_url_part", "tool_result",
        ]
    )
    for name in nbrouter.__all__:
        assert hasattr(nbrouter, name)


def test_route_result_says_who_served_every_attempt_usage_cost_and_timing(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=30)], model="gpt-4o-mini")
    sim.script([Reply("four", usage={"input_tokens": 1000, "output_tokens": 500, "cached_tokens": 200})], model="gpt-4o")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/gpt-4o-mini", "sim/gpt-4o"]}}))
    result = router.complete("c", "two plus two?")
    assert isinstance(result, RouteResult)
    assert result.text == "four"
    assert result.served_by == "sim#default/gpt-4o" and result.model == "gpt-4o" and result.combo == "c"
    assert [a.action.value for a in result.attempts] == ["advance", "served"]
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.cached_tokens) == (1000, 500, 200)
    # genai-prices' gpt-4o: 800 x $2.5/M + 200 x $1.25/M + 500 x $10/M (providers.md section 6)
    assert result.cost_usd == Decimal("0.00725")
    assert result.latency_s > 0 and not result.partial
    assert result.decision is not None and result.decision.strategy == "priority"
    assert result.attempts[1].request_id
    footer = result.footer()
    assert footer.startswith("served by sim#default/gpt-4o · 2 attempts · 1500 tokens · $0.007250 · ")


def test_unknown_price_is_none_never_zero(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/house-model-7"]}}))
    result = router.complete("c", "hi")
    assert result.cost_usd is None
    assert result.attempts[0].cost_usd is None and not result.attempts[0].cost_known
    assert "cost" not in result.footer() or "unknown" in result.footer()
    assert "unknown" in result.footer()


def test_local_presets_cost_zero(sim, make_router) -> None:
    providers = {"ollama": {"preset": "ollama", "base_url": sim.openai_url}}
    router = make_router(sim_config(sim, {"c": {"targets": ["ollama/gpt-4o"]}}, providers=providers))
    result = router.complete("c", "hi")
    assert result.cost_usd == Decimal(0)


def test_price_overrides_win(sim, make_router) -> None:
    sim.script([Reply("x", usage={"input_tokens": 2_000_000, "output_tokens": 1_000_000})], model="gpt-4o")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/gpt-4o"]}}, prices={"sim/gpt-4o": {"input_per_mtok": 1.0, "output_per_mtok": 3.0}}))
    assert router.complete("c", "hi").cost_usd == Decimal("5")


def test_all_targets_failed_message_is_the_attempt_table(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    sim.script([RateLimited(retry_after=30)], model="b")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}, policy={"server_error_backoff_s": 0.0}))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    text = str(err.value)
    assert text.splitlines()[0] == "every target of 'c' failed (2 tried):"
    assert "sim#default/a" in text and "server_error" in text and "rate_limit" in text
    # the combo path is named once, in the header, not on every row
    assert "candidate (of c)" in text.splitlines()[1] and "action" in text.splitlines()[1]
    assert "c > sim#default" not in text
    assert len(err.value.attempts) == 2


def test_the_headline_counts_what_was_tried_and_what_was_skipped(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=30)], model="a")
    sim.script([Reply("b"), ServerError(500)], model="b")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}, policy={"server_error_backoff_s": 0.0}))
    assert router.complete("c", "hi").served_by == "sim#default/b"  # a is cooling down from now on
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    assert err.value.headline == "every target of 'c' failed (1 tried, 1 skipped)"
    assert [a.action.value for a in err.value.attempts] == ["skipped", "advance"]


def test_stream_events_arrive_in_order_and_end_with_done(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    sim.script([Reply("hello streaming world")], model="b")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}, policy={"server_error_backoff_s": 0.0}))
    events = list(router.stream("c", "hi"))
    names = [type(e).__name__ for e in events]
    assert names[0] == "AttemptStarted" and names[1] == "AttemptFinished" and names[2] == "AttemptStarted"
    assert isinstance(events[-1], Done) and isinstance(events[-2], AttemptFinished)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "hello streaming world" == events[-1].result.text
    assert events[-1].result.ttft_s is not None


def test_a_consumer_that_stops_an_astream_early_finds_the_call_cancelled_and_logged(sim, make_router) -> None:
    import contextlib

    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    sim.script([Reply(chunks=["one ", "two ", "three ", "four"], tokens_per_s=20)], model="a")

    async def go() -> list[dict[str, object]]:
        async with contextlib.aclosing(router.astream("c", "hi")) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break
        rows = router.log(5)  # the generator is closed: the call's end is recorded already
        await router.aclose()
        return rows

    rows = asyncio.run(go())
    assert rows and rows[-1]["candidate"] == "sim#default/a"
    assert rows[-1]["kind"] == "cancelled" and rows[-1]["action"] == "stop"


def test_astream_works_on_the_callers_loop(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))

    async def go() -> list[object]:
        out = [e async for e in router.astream("c", "hi")]
        await router.aclose()
        return out

    events = asyncio.run(go())
    assert isinstance(events[0], AttemptStarted) and isinstance(events[-1], Done)
    assert events[-1].result.served_by == "sim#default/a"


def test_sync_complete_works_from_threads_and_inside_a_running_loop(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}))
    results: list[str] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(router.complete("c", f"thread {i}").text)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()

    async def inside_loop() -> str:
        # a Jupyter cell: a loop is running in this thread, and the sync call still works
        return router.complete("c", "from a running loop").text

    in_loop = asyncio.run(inside_loop())
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == sorted(f"Simulated reply from a: thread {i}" for i in range(8))
    assert in_loop == "Simulated reply from a: from a running loop"


def test_no_api_key_in_any_result_exception_log_row_or_repr(sim, make_router, monkeypatch) -> None:
    # a provider that echoes the key back in its error message must not leak it either
    from nbrouter.testing import Raw

    sim.script([Raw(401, {"error": {"message": f"Incorrect API key provided: {SIM_KEY}", "type": "invalid_request_error", "code": "invalid_api_key"}})], model="a")
    monkeypatch.setenv("OTHER_KEY", "other-key-1234")
    providers = {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
        "alt": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "OTHER_KEY"},
    }
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}, "d": {"targets": ["alt/b"]}}, providers=providers))
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    result = router.complete("d", "hi")
    blobs = [
        str(err.value), repr(err.value), repr(err.value.attempts), repr(result), str(result.attempts),
        json.dumps([a.as_dict() for a in result.attempts]), str(router.status()), repr(router),
        json.dumps(router.log(20), default=str), str(router.explain("d", "hi")),
    ]
    for blob in blobs:
        assert SIM_KEY not in blob
    assert "[redacted]" in str(err.value)


def test_cold_import_is_light() -> None:
    code = "import sys, nbrouter; print(sorted(m for m in ('genai_prices', 'pydantic', 'ipywidgets', 'IPython', 'aiohttp', 'httpx', 'markdown_it', 'tabulate') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_provider_that_reports_no_usage_shows_tokens_and_cost_as_unknown(sim, make_router) -> None:
    from nbrouter.testing import Raw

    body = {"id": "x", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "no usage here"}, "finish_reason": "stop"}]}
    sim.script([Raw(200, body)], model="gpt-4o")
    sim.script([Raw(200, {**body, "model": "llama"})], model="llama")
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
                 "ollama": {"preset": "ollama", "base_url": sim.openai_url}}
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/gpt-4o"]}, "l": {"targets": ["ollama/llama"]}}, providers=providers))
    result = router.complete("c", "hi")
    assert result.cost_usd is None and not result.usage_known
    assert "tokens unknown" in result.footer() and "unknown" in result.cost_text
    local = router.complete("l", "hi")
    assert local.cost_usd == Decimal(0) and "tokens unknown" in local.footer()


def test_a_table_renders_text_markdown_and_html_and_honours_include_and_exclude() -> None:
    from nbrouter.report import Table

    table = Table(["name", "cost"], [["a|b", "$1 <x>"], ["c", 2]], title="spend", notes=["$5 to $10"])
    text = table.text()
    assert text.splitlines()[0] == "spend" and "a|b" in text and "$1 <x>" in text and text.endswith("$5 to $10")
    assert "| a\\|b" in table.markdown() and "\\$1 <x>" in table.markdown()  # a pipe is not a column, $ is not maths
    assert "><span>$</span>1 &lt;x&gt;</td>" in table.html() and "<x>" not in table.html()
    assert table._repr_mimebundle_() == {"text/plain": text, "text/markdown": table.markdown(), "text/html": table.html()}
    assert set(table._repr_mimebundle_(include={"text/plain"})) == {"text/plain"}
    assert set(table._repr_mimebundle_(exclude={"text/html"})) == {"text/plain", "text/markdown"}
    assert Table(["x"], [], empty="(no attempts)").text() == "(no attempts)"


def test_a_table_aligns_numbers_right_under_right_aligned_headers_and_fits_a_width() -> None:
    from nbrouter.report import Table

    note = "a long note that explains what went wrong and what to do about it, in many words " * 2
    table = Table(["candidate", "latency", "cost", "note"], [["sim#default/gpt-4o-mini", "412 ms", "$0.000020", note],
                                                             ["sim#default/b", "9 ms", "unknown", "short"]], cut=120)
    assert table.align == ["left", "right", "right", "left"]
    html = table.html()
    assert "<th style='text-align:right'>latency" in html and "<td style='text-align:left'>sim#default/gpt-4o-mini</td>" in html
    assert "white-space:nowrap" in html.split("<thead>")[0] and "text-align:left;white-space:normal'><details>" in html
    assert "<details><summary>" in html and note.strip() in html  # the whole note on demand
    header = table.text().splitlines()[0]
    assert header.index("latency") + len("latency") == table.text().splitlines()[2].index("412 ms") + len("412 ms")
    lines = table.text(width=80).splitlines()
    assert max(len(line) for line in lines) <= 80 and "gpt-4o-mini" in lines[2]  # names are never cut or wrapped
    assert "…" in table.text() and len(table.text().splitlines()[2]) < len(note) + 40


def test_the_errors_docstring_draws_the_real_exception_tree() -> None:
    import re

    from nbrouter.router import errors

    drawn: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        m = re.match(r"^(\s*(?:[│ ]\s*)*(?:[└├]── )?)(\w+)\b", line)
        if not m or not m.group(2)[0].isupper() or not (line.startswith("    ") and ("──" in line or line.strip() == m.group(2))):
            continue
        depth = len(m.group(1))
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if parents:
            drawn[m.group(2)] = parents[-1][1]
        parents.append((depth, m.group(2)))
    classes = {name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, Exception)
               and cls.__module__ == errors.__name__}
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        assert cls.__bases__[0].__name__ == drawn[name], name


@pytest.mark.parametrize("module_name", ["nbrouter", "nbrouter.testing", "nbrouter.providers", "nbrouter._core", "nbrouter.report"])
def test_all_lists_every_public_name_and_nothing_else(module_name: str) -> None:
    """`__all__` checked both ways, as httpx does: every public name of the module is in it, and every name
    in it exists (submodules and `from __future__` features are not names of the API)."""
    import __future__
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and not isinstance(value, __future__._Feature)
        and not (inspect.isclass(value) and value.__module__ == "typing") and name != "TYPE_CHECKING"
    }
    listed = set(module.__all__)
    lazy = {name for name in listed if name not in vars(module)}  # loaded on first use (module __getattr__)
    assert public == listed - lazy - {"__version__"}
    for name in listed:
        assert getattr(module, name) is not None


def test_status_shows_an_unknown_price_as_unknown_never_as_zero(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a-model-nobody-prices"]}}))
    router.complete("c", "hi")
    status = router.status()
    row = status.candidate("sim#default/a-model-nobody-prices")
    assert row["cost_usd"] == 0.0 and row["cost_unknown"] == 1
    text = str(status)
    assert "$0.000000" not in text and "unknown" in text

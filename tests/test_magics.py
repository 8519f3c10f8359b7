"""The `%%llm` and `%llm` magics in an in-process InteractiveShell, against the provider simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from nbrouter import AllTargetsFailed, BudgetExceeded, ComboConfigError, RouteResult
from nbrouter.notebook.display import LiveAnswer, markdown_html, render_answer
from nbrouter.notebook.interpolation import interpolate
from nbrouter.testing import RateLimited, Reply, ServerError

from conftest import SIM_KEY


def config_toml(sim: Any, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [providers.sim]
        protocol = "openai"
        base_url = "{sim.openai_url}"
        api_key_env = "SIM_KEY"
        models = ["model-a", "model-b", "model-c"]

        [combos.fast]
        targets = ["sim/model-a", "sim/model-b"]

        [combos.solo]
        targets = ["sim/model-a"]

        [combos.unpriced]
        targets = ["sim/model-c"]

        [prices."sim/model-a"]
        input_per_mtok = 1.0
        output_per_mtok = 2.0

        [prices."sim/model-b"]
        input_per_mtok = 1.0
        output_per_mtok = 2.0
    """) + extra


@pytest.fixture
def config_file(tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(config_toml(sim))
    monkeypatch.setenv("NBROUTER_CONFIG", str(path))
    return path


@pytest.fixture
def ip(config_file: Path) -> Iterator[Any]:
    """The InteractiveShell singleton with nbrouter loaded and displays captured; cleared afterwards."""
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "nbrouter")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "nbrouter")
        InteractiveShell.clear_instance()


def magics(shell: Any) -> Any:
    return shell.magics_manager.registry["LLMMagics"]


def run(shell: Any, source: str) -> Any:
    """Run a cell; return the exception it raised (or None)."""
    result = shell.run_cell(source, store_history=True)
    return result.error_in_exec or result.error_before_exec


def outputs(shell: Any) -> list[dict[str, Any]]:
    return list(shell.display_pub.outputs)


def rendered(exc: BaseException) -> str:
    return "\n".join(exc._render_traceback_())  # type: ignore[attr-defined]


# ---- loading -------------------------------------------------------------------------------


#: what `%load_ext nbrouter` must not import: each is paid for on first use (its cost is benchmarks/bench_startup.py's
#: to measure, never a test's to time)
HEAVY_ON_FIRST_USE = ("genai_prices", "pydantic", "ipywidgets", "nbrouter.notebook.builder", "nbrouter.notebook.board",
                      "markdown_it", "tabulate", "jsonschema", "tqdm", "pandas")


def test_load_ext_imports_no_prices_pydantic_widgets_markdown_or_tables(config_file: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from traitlets.config import Config
        from IPython.core.interactiveshell import InteractiveShell
        cfg = Config(); cfg.HistoryManager.enabled = False
        ip = InteractiveShell.instance(config=cfg)
        before = set(sys.modules)
        ip.run_line_magic("load_ext", "nbrouter")
        added = sorted(set(sys.modules) - before)
        print(json.dumps(added))
        ip.run_line_magic("unload_ext", "nbrouter")
    """)
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout.strip().splitlines()[-1])
    assert "nbrouter.notebook.magics" in added  # it did load
    heavy = [m for m in added if m.split(".")[0] in HEAVY_ON_FIRST_USE or m in HEAVY_ON_FIRST_USE]
    assert heavy == []


def test_loading_twice_is_harmless_and_unload_stops_the_router(ip: Any) -> None:
    from nbrouter.notebook.magics import load_ipython_extension

    first = magics(ip)
    load_ipython_extension(ip)
    assert magics(ip) is first
    router = first.router
    assert run(ip, "%%llm fast\nhello") is None
    assert router._bg.running
    ip.run_line_magic("unload_ext", "nbrouter")
    assert router._closed and not router._bg.running
    assert "llm" not in ip.magics_manager.magics["cell"]
    assert first not in ip.configurables
    ip.run_line_magic("load_ext", "nbrouter")
    assert magics(ip) is not first
    assert run(ip, "%%llm fast\nhello again") is None


def test_percent_config_sets_the_default_combo(ip: Any, sim: Any) -> None:
    ip.run_line_magic("config", 'LLMMagics.default_combo = "solo"')
    assert magics(ip).default_combo == "solo"
    assert run(ip, "%%llm\nwhich model?") is None
    assert sim.requests[-1].model == "model-a"
    assert ip.user_ns["_llm"].combo == "solo"


def test_default_combo_from_ipython_config(config_file: Path, sim: Any) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.LLMMagics.default_combo = "solo"
    shell = InteractiveShell.instance(config=cfg)
    try:
        shell.run_line_magic("load_ext", "nbrouter")
        assert magics(shell).default_combo == "solo"
        shell.run_line_magic("unload_ext", "nbrouter")
    finally:
        InteractiveShell.clear_instance()


def test_use_sets_the_default_and_refuses_an_unknown_combo(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ip, "%llm use fast") is None
    assert magics(ip).default_combo == "fast"
    exc = run(ip, "%llm use nope")
    assert isinstance(exc, ComboConfigError)
    assert magics(ip).default_combo == "fast"


def test_a_cell_without_combo_or_default_is_a_usage_error_that_mentions_auto(ip: Any) -> None:
    from IPython.core.error import UsageError

    exc = run(ip, "%%llm\nhello")
    assert isinstance(exc, UsageError)
    assert "`%%llm auto`" in str(exc) and "`%llm use NAME`" in str(exc)


def test_a_mistyped_combo_gets_did_you_mean_in_a_cell_and_in_a_line(ip: Any, sim: Any) -> None:
    from IPython.core.error import UsageError

    exc = run(ip, "%%llm fsat\nhi")
    assert isinstance(exc, ComboConfigError)
    assert "no combo named 'fsat': did you mean 'fast'?" in rendered(exc)
    line = run(ip, "%llm fsat What now?")
    assert isinstance(line, UsageError) and "unknown subcommand or combo 'fsat': did you mean 'fast'?" in str(line)
    assert "did you mean 'status'?" in str(run(ip, "%llm stauts"))
    assert "did you mean" not in str(run(ip, "%llm zzzzzz"))  # nothing near: no guess
    assert sim.requests == []


def test_the_routing_line_does_not_stay_above_an_error_that_replaced_it(ip: Any, sim: Any) -> None:
    magics(ip).live_display = True
    exc = run(ip, "%%llm fsat\nhi")
    assert isinstance(exc, ComboConfigError)
    shown = outputs(ip)
    assert shown, "the live area was drawn"
    last: dict[str, str] = {}
    for o in shown:  # what each display id shows in the end
        last[o["transient"]["display_id"]] = o["data"]["text/plain"]
    assert all("routing to" not in text for text in last.values()), last


# ---- the cell ------------------------------------------------------------------------------


def test_streamed_cell_updates_one_output_in_place_and_ends_with_the_full_bundle(ip: Any, sim: Any) -> None:
    magics(ip).live_display = True
    sim.script(Reply("Hello **world**", chunks=["Hel", "lo ", "**wor", "ld**"]), model="model-a")
    assert run(ip, "%%llm fast\nsay hello") is None
    outs = outputs(ip)
    display_id = outs[0]["transient"]["display_id"]
    assert all(o["transient"]["display_id"] == display_id for o in outs)
    assert not outs[0]["update"] and all(o["update"] for o in outs[1:])
    final = outs[-1]
    assert set(final["data"]) == {"text/plain", "text/markdown", "text/html", "application/vnd.nbrouter.result+json"}
    assert final["data"]["text/plain"].startswith("Hello **world**")
    assert "<strong>world</strong>" in final["data"]["text/html"]
    result = ip.user_ns["_llm"]
    assert isinstance(result, RouteResult) and result.text == "Hello **world**"
    assert result.footer() in final["data"]["text/plain"]
    meta = final["metadata"]["nbrouter"]
    assert meta["combo"] == "fast" and meta["served_by"] == "sim#default/model-a"
    assert meta["cost_usd"] == str(result.cost_usd) and meta["latency_s"] > 0
    assert meta["usage"]["output_tokens"] == result.usage.output_tokens
    assert [a["action"] for a in final["data"]["application/vnd.nbrouter.result+json"]["attempts"]] == ["served"]
    assert ip.user_ns.get("Out", {}) == {}  # the magic returns nothing: the answer is not shown twice


def test_live_output_is_redrawn_at_most_ten_times_a_second() -> None:
    now = [0.0]
    live = LiveAnswer("fast", "markdown", in_kernel=True, clock=lambda: now[0])

    class Handle:
        def __init__(self) -> None:
            self.updates: list[dict[str, str]] = []

        def update(self, data: dict[str, str], **kwargs: Any) -> None:
            self.updates.append(data)

    live.handle = handle = Handle()
    for i in range(100):  # 100 deltas over one second
        now[0] = i * 0.01
        live.add("x")
    assert 9 <= len(handle.updates) <= 11
    live.finish({"text/plain": "x" * 100}, {}, "")
    assert handle.updates[-1] == {"text/plain": "x" * 100}


def test_terminal_shell_prints_the_stream_then_the_footer(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(Reply("streamed words", chunks=["streamed ", "words"]), model="model-a")
    assert run(ip, "%%llm fast\nhi") is None
    out = capsys.readouterr().out
    assert out.startswith("streamed words\n")
    assert "served by sim#default/model-a · 1 attempt" in out
    assert "outcome" not in out  # one attempt that served: the footer says it all, no table under it
    assert outputs(ip) == []


def test_help_is_generated_from_the_arguments(ip: Any) -> None:
    doc = magics(ip).llm.__doc__
    assert doc.lstrip().startswith("::") and "%llm [-s SYSTEM]" in doc
    for option in ("--max-tokens", "--temperature", "--format", "--out", "--no-stream", "--max-cost", "--timeout", "--explain",
                   "--strategy", "--chat", "--new", "--no-interpolate"):
        assert option in doc


def test_options_reach_the_request(ip: Any, sim: Any) -> None:
    assert run(ip, '%%llm fast -s "Be brief." -m 50 -t 0.3 --no-stream -o answer\nhello') is None
    body = sim.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_tokens"] == 50 and body["temperature"] == 0.3
    assert not sim.requests[-1].stream
    assert ip.user_ns["answer"] is ip.user_ns["_llm"]
    final = outputs(ip)[-1]
    assert "nbrouter" in final["metadata"] and "text/markdown" in final["data"]


def test_strategy_option_overrides_the_combos_for_one_cell(ip: Any, sim: Any) -> None:
    exc = run(ip, "%%llm fast --strategy nope\nhi")
    assert isinstance(exc, ComboConfigError) and "strategy" in rendered(exc)
    assert run(ip, "%%llm fast --strategy random --no-stream\nhi") is None
    assert ip.user_ns["_llm"].decision.strategy == "random"


def test_a_fallback_cell_shows_every_attempt(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(RateLimited(retry_after=30), model="model-a")
    sim.script(Reply("from b"), model="model-b")
    capsys.readouterr()
    assert run(ip, "%%llm fast --no-stream\nhi") is None
    result = ip.user_ns["_llm"]
    assert result.served_by == "sim#default/model-b"
    shown = outputs(ip)[-1]["data"]
    assert "2 attempts" in shown["text/plain"]
    # a notebook: the route in the HTML's fold (and the payload the extension draws); a terminal: the table under it
    assert "sim#default/model-a: advance (rate_limit 429)" in shown["text/html"] and "sim#default/model-b: served" in shown["text/html"]
    printed = capsys.readouterr().out
    assert "rate_limit" in printed and "candidate (of fast)" in printed


# ---- interpolation -------------------------------------------------------------------------


def test_interpolation_replaces_known_names_and_leaves_other_braces() -> None:
    ns = {"topic": "cats", "n": 3}
    assert interpolate("about {topic}, {n} times", ns) == "about cats, 3 times"
    code = "def f(d):\n    return {k: v for k, v in d.items()} or {}\n"
    assert interpolate(code, ns) == code
    data = '{"a": {"b": [1, {"c": null}]}, "topic": "{unknown}"}'
    assert interpolate(data, ns) == data
    assert interpolate("{{topic}} is {topic}", ns) == "{topic} is cats"
    assert interpolate("f'{x!r}' {n:>3} {topic }", ns) == "f'{x!r}' {n:>3} {topic }"
    assert interpolate("{In}", {"In": [1]}, hidden={"In"}) == "{In}"


def test_cell_interpolation_keeps_code_and_json_intact(ip: Any, sim: Any) -> None:
    ip.user_ns["lang"] = "Rust"
    cell = '%%llm fast --no-stream\nPort to {lang}:\nfor k in {"a": {"b": 1}}: print(f"{k}")\nliteral {{lang}}'
    assert run(ip, cell) is None
    sent = sim.requests[-1].body["messages"][-1]["content"]
    assert sent == 'Port to Rust:\nfor k in {"a": {"b": 1}}: print(f"{k}")\nliteral {lang}'
    assert run(ip, "%%llm fast --no-stream --no-interpolate\nin {lang}") is None
    assert sim.requests[-1].body["messages"][-1]["content"] == "in {lang}"


# ---- formats -------------------------------------------------------------------------------


def test_json_format_parses_and_stores_the_answer(ip: Any, sim: Any) -> None:
    sim.script(Reply('```json\n{"ok": true, "n": 2}\n```'), model="model-a")
    assert run(ip, "%%llm fast -f json\ngive json") is None
    assert ip.user_ns["_llm_json"] == {"ok": True, "n": 2}


def test_code_format_is_a_fenced_block() -> None:
    answer = render_answer("Here:\n```python\nprint('hi')\n```\nDone.", "code")
    assert answer.plain == "print('hi')"
    assert answer.markdown == "```python\nprint('hi')\n```"
    assert "language-python" in answer.html


def test_markdown_html_escapes_and_renders_the_usual_markdown() -> None:
    out = markdown_html("# Title\n\nSome *em* and `<b>` code.\n\n- one\n- two\n\n```py\nx < 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<h1>Title</h1>" in out and "<em>em</em>" in out and "<code>&lt;b&gt;</code>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out.replace("\n", "")
    assert "x &lt; 1" in out and "<td>1</td>" in out
    assert "<script>" not in markdown_html("<script>alert(1)</script>")


# ---- errors --------------------------------------------------------------------------------


def test_all_targets_failed_shows_the_attempt_table_and_raises_short_lines_saying_what_to_do(ip: Any, sim: Any) -> None:
    sim.script(ServerError(), model="model-a")
    sim.script(ServerError(), model="model-b")
    magics(ip).live_display = True
    exc = run(ip, "%%llm fast\nhi")
    assert isinstance(exc, AllTargetsFailed)
    text = rendered(exc)
    assert text == ("AllTargetsFailed: every target of 'fast' failed (2 tried): server_error ×2.\n"
                    "`%llm status` shows every cooldown and breaker.")
    assert "Traceback" not in text and "Router.status()" not in text
    # the attempt table is where the answer would have been, as HTML, with what was tried in the metadata
    shown = outputs(ip)[-1]
    assert "<table" in shown["data"]["text/html"] and "sim#default/model-b" in shown["data"]["text/html"]
    assert "server_error" in shown["data"]["text/plain"]
    assert [a["candidate"] for a in shown["metadata"]["nbrouter"]["attempts"]] == ["sim#default/model-a", "sim#default/model-b"]
    assert ip.user_ns["_llm"] is None
    assert run(ip, "%%llm fast --no-stream\nnext cell works") is None


def test_a_cooling_down_failure_names_the_soonest_free_candidate_and_how_to_reset_it(ip: Any, sim: Any) -> None:
    sim.script(RateLimited(retry_after=30), model="model-a")
    sim.script(RateLimited(retry_after=90), model="model-b")
    exc = run(ip, "%%llm fast --no-stream\nhi")
    assert isinstance(exc, AllTargetsFailed)
    line = rendered(exc)
    assert "rate_limit ×2" in line and "sim#default/model-a frees up first, in 30 s" in line
    assert "`%llm reset sim#default/model-a` clears its cooldown" in line
    again = run(ip, "%%llm fast --no-stream\nhi")  # nothing is sent now: both are cooling down
    assert "(nothing sent, 2 skipped)" in rendered(again)


LONG_MODELS = [f"{tier}-tier-model-with-a-long-dated-name-2026-01-15-preview" for tier in ("first", "second", "third")]


def test_every_line_of_an_all_fail_error_is_under_160_characters(ip: Any, sim: Any, config_file: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    config_file.write_text(config_toml(sim, f'\n[combos.longnames]\ntargets = {json.dumps([f"sim/{m}" for m in LONG_MODELS])}\n'))
    run(ip, "%llm config reload")
    for i, model in enumerate(LONG_MODELS):
        sim.script(RateLimited(retry_after=30 + i), model=model)
    magics(ip).live_display = True
    exc = run(ip, "%%llm longnames\nhi")
    assert isinstance(exc, AllTargetsFailed)
    shown = outputs(ip)[-1]["data"]["text/plain"]
    for text in (rendered(exc), str(exc), shown):
        too_long = [line for line in text.splitlines() if len(line) >= 160]
        assert too_long == [], too_long
    assert f"sim#default/{LONG_MODELS[0]} frees up first, in 30 s" in rendered(exc)  # still says what to do


def test_llm_help_and_attempt_table_fit_the_output_width(ip: Any, sim: Any, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert run(ip, "%llm help") is None
    help_lines = capsys.readouterr().out.splitlines()
    assert any("--no-interpolate" in line for line in help_lines) and any("cache [stats|clear]" in line for line in help_lines)
    assert [line for line in help_lines if len(line) > 80] == []
    sim.script(ServerError(), model="model-a")
    assert run(ip, "%%llm fast --no-stream\nhi") is None  # model-a fails, model-b serves
    table = ip.user_ns["_llm"].attempt_table()
    assert "sim#default/model-a" in table and "server_error" in table
    assert [line for line in table.splitlines() if len(line) > 80] == []
    wide = ip.user_ns["_llm"].attempt_table(width=200)
    assert "tokens" in wide.splitlines()[0]  # room for every column


def test_attempts_read_as_a_table_not_as_dataclass_fields(ip: Any, sim: Any) -> None:
    sim.script(ServerError(), model="model-a")
    assert run(ip, "%%llm fast --no-stream\nhi") is None
    attempts = ip.user_ns["_llm"].attempts
    for text in (repr(attempts), repr(attempts[0])):
        assert "Decimal(" not in text and "started_at" not in text and "Attempt(candidate=" not in text
    assert repr(attempts).splitlines()[0].split()[:2] == ["#", "candidate"]
    assert "sim#default/model-a" in repr(attempts[0]) and "server_error" in repr(attempts[0])
    assert "<table" in attempts._repr_html_() and "sim#default/model-b" in attempts._repr_html_()
    run(ip, "shown = _llm.attempts")
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(attempts)
    assert "text/html" in data and data["text/plain"] == repr(attempts)


def test_raise_on_failure_false_shows_the_failure_and_lets_the_notebook_go_on(ip: Any, sim: Any,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(ServerError(), model="model-a")
    sim.script(ServerError(), model="model-b")
    ip.run_line_magic("config", "LLMMagics.raise_on_failure = False")
    assert run(ip, "%%llm fast --no-stream\nhi") is None
    assert "AllTargetsFailed: every target of 'fast' failed" in capsys.readouterr().err
    assert "server_error" in outputs(ip)[-1]["data"]["text/plain"]


def test_config_error_is_one_line_naming_file_combo_and_field(tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    path = tmp_path / "bad.toml"
    path.write_text(config_toml(sim, '\n[combos.broken]\ntargets = ["nowhere/model"]\n'))
    monkeypatch.setenv("NBROUTER_CONFIG", str(path))
    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    try:
        shell.run_line_magic("load_ext", "nbrouter")
        err = capsys.readouterr().err
        assert "ComboConfigError" in err and str(path) in err and "'broken'" in err
        exc = run(shell, "%%llm fast\nhi")
        assert isinstance(exc, ComboConfigError)
        lines = exc._render_traceback_()  # type: ignore[attr-defined]
        assert len(lines) == 1 and "\n" not in lines[0]
        assert str(path) in lines[0] and "combo 'broken'" in lines[0] and "field 'targets[0]'" in lines[0]
        path.write_text(config_toml(sim))
        assert run(shell, "%llm config reload") is None
        assert run(shell, "%%llm fast --no-stream\nhi") is None
        shell.run_line_magic("unload_ext", "nbrouter")
    finally:
        InteractiveShell.clear_instance()


def test_an_unknown_combo_in_a_cell_is_one_line(ip: Any) -> None:
    exc = run(ip, "%%llm nope\nhi")
    assert isinstance(exc, ComboConfigError)
    assert rendered(exc).count("\n") == 0 and "'nope'" in rendered(exc)


def test_interrupt_keeps_the_partial_text_and_the_next_cell_works(ip: Any, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    magics(ip).live_display = True
    sim.script(Reply("one two three four five six", tokens_per_s=50), model="model-a")
    seen = []
    original = LiveAnswer.add

    def add_then_interrupt(self: LiveAnswer, delta: str) -> None:
        original(self, delta)
        seen.append(delta)
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(LiveAnswer, "add", add_then_interrupt)
    exc = run(ip, "%%llm fast\ncount")
    assert isinstance(exc, KeyboardInterrupt)
    partial = ip.user_ns["_llm"]
    assert partial.partial and partial.text == "".join(seen)
    assert partial.attempts[-1].kind.value == "cancelled"
    final = outputs(ip)[-1]
    assert final["data"]["text/plain"].startswith(partial.text)
    # the note is said once in each form, and the error line only points to the text
    for mime in ("text/plain", "text/html", "text/markdown"):
        assert final["data"][mime].count("cancelled by the user") == 1, final["data"][mime]
    assert rendered(exc) == "KeyboardInterrupt: the partial text is in _llm"
    # nobody counted the tokens of a cut stream: not "0 tokens"
    assert "tokens unknown" in partial.footer() and "0 tokens" not in final["data"]["text/plain"]
    # the router logs the cancelled attempt from its own loop, just after the interrupt
    deadline = time.monotonic() + 5
    while not (logged := magics(ip).router.log(5)) and time.monotonic() < deadline:
        time.sleep(0.02)  # real threads: the router's loop thread writes the log
    assert logged[-1]["kind"] == "cancelled"
    monkeypatch.setattr(LiveAnswer, "add", original)
    assert run(ip, "%%llm fast\nagain") is None
    assert not ip.user_ns["_llm"].partial


def test_interrupting_a_non_streamed_cell_is_one_line_and_counted_as_unknown(ip: Any, sim: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from nbrouter import Router

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Router, "complete", interrupted)
    exc = run(ip, "%%llm fast --no-stream\nhi")
    assert isinstance(exc, KeyboardInterrupt)
    assert rendered(exc) == "KeyboardInterrupt: cancelled by the user before the answer arrived"
    entry = magics(ip).ledger.cells[-1]
    assert entry.outcome == "cancelled" and entry.spend.text == "unknown"


# ---- cost and budget -----------------------------------------------------------------------


def test_ledger_counts_each_cell_per_combo_and_provider_and_unknown_prices(ip: Any, sim: Any,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(Reply("a", usage={"input_tokens": 1000, "output_tokens": 500}), model="model-a")
    sim.script(Reply("b", usage={"input_tokens": 1000, "output_tokens": 500}), model="model-a")
    sim.script(Reply("c", usage={"input_tokens": 10, "output_tokens": 10}), model="model-c")
    assert run(ip, "%%llm fast --no-stream\none") is None
    assert run(ip, "%%llm solo --no-stream\ntwo") is None
    assert run(ip, "%%llm unpriced --no-stream\nthree") is None
    ledger = magics(ip).ledger
    assert [c.combo for c in ledger.cells] == ["fast", "solo", "unpriced"]
    assert ledger.cells[-1].execution_count == ip.execution_count - 1
    assert ledger.total.usd == Decimal("0.004") and ledger.total.unknown == 1
    assert ledger.by_combo()["fast"].usd == Decimal("0.002")
    assert ledger.by_provider()["sim"].unknown == 1
    capsys.readouterr()
    assert run(ip, "%llm cost") is None
    table = outputs(ip)[-1]["data"]["text/plain"]
    assert "combo fast" in table and "provider sim" in table
    assert "$0.004000 + unknown (1)" in table
    assert "unpriced" in table and "unknown" in table.split("unpriced")[1].splitlines()[0]


def test_ledger_counts_a_provider_only_in_cells_that_sent_it_something(ip: Any, sim: Any, config_file: Path) -> None:
    config_file.write_text(config_toml(sim, textwrap.dedent(f"""
        [providers.alt]
        protocol = "openai"
        base_url = "{sim.openai_url}"
        api_key_env = "SIM_KEY"

        [combos.pair]
        targets = ["alt/model-a", "sim/model-b"]
    """)))
    assert run(ip, "%llm config reload") is None
    sim.script(RateLimited(retry_after=60), model="model-a")
    for _ in range(3):  # alt is cooling down after the first cell: skipped, not sent to, in the next two
        assert run(ip, "%%llm pair --no-stream\nhi") is None
    ledger = magics(ip).ledger
    assert [c.spend.attempts for c in ledger.cells] == [2, 1, 1]
    by_provider = ledger.by_provider()
    assert (by_provider["alt"].cells, by_provider["alt"].attempts) == (1, 1)
    assert (by_provider["sim"].cells, by_provider["sim"].attempts) == (3, 3)
    assert run(ip, "%llm cost") is None
    table = outputs(ip)[-1]["data"]["text/plain"]
    assert "attempts" in table.splitlines()[1]


def test_ledger_records_the_cell_id_the_front_end_sends(ip: Any, sim: Any) -> None:
    class Kernel:  # JupyterLab puts cellId in the execute_request's metadata
        def get_parent(self) -> dict[str, Any]:
            return {"header": {}, "metadata": {"cellId": "6f1c2d7e-aaaa-bbbb"}}

    ip.kernel = Kernel()
    assert run(ip, "%%llm fast\nhi") is None
    entry = magics(ip).ledger.cells[-1]
    # the ledger shows the cell as the notebook numbers it; the id is in the saved metadata, not cut short on screen
    assert entry.cell_id == "6f1c2d7e-aaaa-bbbb" and entry.label == f"[{entry.execution_count}]"
    assert outputs(ip)[-1]["metadata"]["nbrouter"]["cell_id"] == "6f1c2d7e-aaaa-bbbb"


def test_budget_refuses_a_cell_before_anything_is_sent(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ip, "%llm budget 0.0001") is None
    assert "session budget $0.000100" in capsys.readouterr().out
    sent = len(sim.requests)
    exc = run(ip, "%%llm fast -m 1000\nan expensive question")  # estimate: 1000 output tokens x $2/M = $0.002
    assert isinstance(exc, BudgetExceeded)
    assert len(sim.requests) == sent
    assert "session budget" in rendered(exc) and "$0.000100" in rendered(exc)
    assert run(ip, "%%llm fast -m 10\ncheap") is None
    assert len(sim.requests) == sent + 1


def test_a_spent_budget_refuses_every_cell(ip: Any, sim: Any) -> None:
    sim.script(Reply("a", usage={"input_tokens": 1000, "output_tokens": 1000}), model="model-a")
    magics(ip).budget_usd = 0.002
    assert run(ip, "%%llm fast -m 10\nfirst") is None  # costs $0.003: over the budget afterwards
    sent = len(sim.requests)
    exc = run(ip, "%%llm unpriced\nsecond")
    assert isinstance(exc, BudgetExceeded) and "spent" in rendered(exc)
    assert len(sim.requests) == sent
    assert run(ip, "%llm budget off") is None
    assert run(ip, "%%llm unpriced\nthird") is None


def test_max_cost_option_refuses_when_every_estimate_is_above(ip: Any, sim: Any) -> None:
    sent = len(sim.requests)
    exc = run(ip, "%%llm fast -m 1000 --max-cost 0.0000001\nhi")
    assert isinstance(exc, BudgetExceeded)
    assert len(sim.requests) == sent


def test_the_timeout_option_limits_each_attempt_and_refuses_zero(ip: Any, sim: Any) -> None:
    from nbrouter.testing import Hang

    # the hang far outlasts the timeout, and the timeout leaves the next attempt room on a loaded machine
    sim.script([Hang(seconds=60.0)], model="model-a")
    assert run(ip, "%%llm fast --timeout 1\nhi") is None
    result = ip.user_ns["_llm"]
    assert result.attempts[0].kind.value == "timeout" and result.served_by != "sim#default/model-a"
    sent = len(sim.requests)
    exc = run(ip, "%%llm fast --timeout 0\nhi")
    assert isinstance(exc, ValueError) and "timeout_s must be a number above 0" in str(exc)
    assert len(sim.requests) == sent


# ---- explain, chat -------------------------------------------------------------------------


def test_explain_shows_the_decision_and_sends_nothing(ip: Any, sim: Any) -> None:
    sent = len(sim.requests)
    assert run(ip, "%%llm fast --explain\nwhat would happen?") is None
    assert len(sim.requests) == sent
    data = outputs(ip)[-1]["data"]
    assert "strategy priority" in data["text/plain"] and "sim#default/model-a" in data["text/plain"]
    assert "<table" in data["text/html"]
    assert run(ip, "%llm explain fast") is None
    assert len(sim.requests) == sent


def test_chat_continues_the_combos_conversation_and_new_starts_afresh(ip: Any, sim: Any) -> None:
    sim.script([Reply("first answer"), Reply("second answer"), Reply("fresh")], model="model-a")
    assert run(ip, "%%llm fast --chat --no-stream\nfirst question") is None
    assert run(ip, "%%llm fast --chat --no-stream\nsecond question") is None
    assert [m["content"] for m in sim.requests[-1].body["messages"]] == ["first question", "first answer", "second question"]
    assert run(ip, "%%llm fast --new --no-stream\nstart over") is None
    assert [m["content"] for m in sim.requests[-1].body["messages"]] == ["start over"]
    assert run(ip, "%%llm fast --no-stream\nno memory") is None
    assert [m["content"] for m in sim.requests[-1].body["messages"]] == ["no memory"]


# ---- %llm subcommands ----------------------------------------------------------------------


def test_line_subcommands(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(RateLimited(retry_after=30), model="model-a")
    assert run(ip, "%llm fast a one-line prompt") is None
    assert sim.requests[-1].body["messages"][-1]["content"] == "a one-line prompt"
    capsys.readouterr()

    for line in ("combos", "providers", "status", "log 5", "cost", "config", "explain fast hi"):
        assert run(ip, f"%llm {line}") is None, line
    texts = [o["data"]["text/plain"] for o in outputs(ip)]
    combos, providers, status, log = texts[-6], texts[-5], texts[-4], texts[-3]
    assert "fast" in combos and "sim/model-a > sim/model-b" in combos
    assert "SIM_KEY set" in providers and SIM_KEY not in providers
    assert "cooldown" in status and "sim#default/model-a" in status
    assert "rate_limit" in log and "served" in log
    config = capsys.readouterr().out
    assert "config: " + os.environ["NBROUTER_CONFIG"] in config and "combos: fast, solo, unpriced" in config

    assert run(ip, "%llm reset sim/model-a") is None
    assert "cleared 1" in capsys.readouterr().out
    assert magics(ip).router.status().candidate("sim#default/model-a")["hold"] is None


def test_unknown_subcommand_lists_the_valid_ones(ip: Any) -> None:
    from IPython.core.error import UsageError

    exc = run(ip, "%llm frobnicate")
    assert isinstance(exc, UsageError)
    for name in ("combos", "providers", "status", "log", "cost", "budget", "explain", "use", "reset", "config", "builder"):
        assert name in str(exc)


def test_builder_and_live_status_without_the_widgets_module_say_so(ip: Any, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import nbrouter.notebook as package

    for name in ("builder", "board"):
        monkeypatch.setitem(sys.modules, f"nbrouter.notebook.{name}", None)  # import fails
        monkeypatch.delattr(package, name, raising=False)
    assert run(ip, "%llm builder fast") is None
    assert "widgets are not available" in capsys.readouterr().err
    assert run(ip, "%llm status --live") is None
    assert "widgets are not available" in capsys.readouterr().err


def test_builder_calls_the_widget_module_lazily(ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls: list[tuple[str, Any]] = []
    fake = types.ModuleType("nbrouter.notebook.builder")

    class ComboBuilder:
        def __init__(self, router: Any, combo: Any) -> None:
            calls.append(("builder", combo))

        def display(self) -> None:
            calls.append(("shown", None))

    class StatusBoard:
        def __init__(self, router: Any) -> None:
            calls.append(("board", router))

        def display(self) -> None:
            calls.append(("shown", None))

    fake.ComboBuilder, fake.StatusBoard = ComboBuilder, StatusBoard  # type: ignore[attr-defined]
    import nbrouter.notebook as package

    for name in ("builder", "board"):
        monkeypatch.setitem(sys.modules, f"nbrouter.notebook.{name}", fake)
        monkeypatch.setattr(package, name, fake, raising=False)
    assert run(ip, "%llm builder fast") is None
    assert run(ip, "%llm status --live") is None
    assert calls[:2] == [("builder", "fast"), ("shown", None)]
    assert calls[2] == ("board", magics(ip).router)


def test_no_api_key_in_outputs_or_metadata(ip: Any, sim: Any) -> None:
    magics(ip).live_display = True
    sim.script(RateLimited(retry_after=30), model="model-a")
    assert run(ip, "%%llm fast\nhello") is None
    assert run(ip, "%llm providers") is None
    assert run(ip, "%llm status") is None
    blob = json.dumps([{"data": o["data"], "metadata": o["metadata"]} for o in outputs(ip)], default=str)
    assert SIM_KEY not in blob


def test_llm_providers_says_what_zero_config_found_and_where_from(monkeypatch, capsys) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-providers-listing-1")
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "nbrouter")
        shell.run_line_magic("llm", "providers")
        out = capsys.readouterr().out
        assert "openai" in out and "environment: OPENAI_API_KEY" in out
        assert "sk-test-providers-listing-1" not in out
    finally:
        shell.run_line_magic("unload_ext", "nbrouter")
        InteractiveShell.clear_instance()


def test_the_readme_magics_section_names_every_option_and_subcommand(ip: Any) -> None:
    from nbrouter.notebook.magics import SUBCOMMAND_HELP, SUBCOMMANDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Magics\n", 1)[1].split("\n## ", 1)[0]
    for action in magics(ip).llm.parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}" in section or f", {option}" in section, option
    for word in SUBCOMMANDS:
        assert f"| `{word}" in section, word
    for _, _, example in SUBCOMMAND_HELP:  # the same examples as `%llm help`
        assert f"`{example}`" in section, example


def test_a_streaming_answer_shows_its_dollars_as_dollars_while_it_streams() -> None:
    live = LiveAnswer("fast", "markdown", in_kernel=True, clock=lambda: 0.0)
    live.add("It costs $5 to $10, and $$x^2$$")
    bundle = live._live_bundle()
    assert "It costs <span>$</span>5 to <span>$</span>10, and $$x^2$$" in bundle["text/html"]  # the front end prefers HTML
    assert bundle["text/markdown"].startswith("It costs \\$5 to \\$10, and $$x^2$$")


# ---- issue 17: the magic returns its result, and the response cache -------------------------------


def test_a_line_prompt_returns_the_route_result(ip: Any, sim: Any) -> None:
    from nbrouter import RouteResult

    assert run(ip, "x = %llm fast say hi") is None
    x = ip.user_ns["x"]
    assert isinstance(x, RouteResult) and x.served_by == "sim#default/model-a" and x is ip.user_ns["_llm"]


def test_a_bare_line_prompt_shows_its_answer_without_an_out_repr(ip: Any, sim: Any) -> None:
    magics(ip).live_display = True
    assert run(ip, "%llm fast say hi") is None
    assert ip.user_ns["_llm"].served_by == "sim#default/model-a"
    assert ip.user_ns.get("Out", {}) == {}  # the answer is displayed; no Out[] repeats it as a repr
    assert run(ip, "1 + 1\n%llm fast and again") is None
    assert ip.user_ns.get("Out", {}) == {}


def test_cache_answers_a_cell_again_without_sending_it(ip: Any, sim: Any) -> None:
    assert run(ip, "%%llm fast --cache\nthe same question") is None
    sent = len(sim.requests)
    assert run(ip, "%%llm fast --cache\nthe same question") is None
    assert len(sim.requests) == sent  # answered from the cache
    again = ip.user_ns["_llm"]
    assert again.cached is not None and again.cost_usd == 0
    assert run(ip, "%%llm fast\nthe same question") is None  # without --cache: sent
    assert len(sim.requests) == sent + 1


def test_config_cache_makes_every_cell_use_the_cache(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    magics(ip).cache = True  # %config LLMMagics.cache = True: Run All without paying again
    run(ip, "%%llm fast\nrun all")
    sent = len(sim.requests)
    run(ip, "%%llm fast\nrun all")
    assert len(sim.requests) == sent
    assert run(ip, "%llm cache stats") is None
    out = capsys.readouterr().out
    assert "1 hits" in out and "answers" in out
    assert run(ip, "%llm cache clear") is None
    assert "response cache cleared (1 answers)" in capsys.readouterr().out
    run(ip, "%%llm fast\nrun all")
    assert len(sim.requests) == sent + 1


def test_the_magics_budget_is_the_router_s_own(ip: Any, sim: Any) -> None:
    run(ip, "%llm budget 0.25")
    router = magics(ip).router
    assert router.budget.limit == Decimal("0.25")
    run(ip, "%%llm fast -m 10\nhi")
    assert router.budget.spent > 0 and router.budget.remaining < Decimal("0.25")
    run(ip, "%llm budget off")
    assert router.budget.limit is None


def test_a_shared_budget_in_the_config_is_what_the_magics_hold_cells_to(config_file: Path, sim: Any, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the config's [budget] is the magics' budget; another kernel (a Router on the same state file) spends
    # from it, and `%llm budget`, `%llm cost` and `%llm status` say so; a cell that does not fit what the
    # team left is refused before sending
    from nbrouter import Router

    config_file.write_text(config_toml(sim, '\n[budget]\nusd = 0.004\nshared = "team"\n'))
    sim.script(Reply("a", usage={"input_tokens": 1000, "output_tokens": 1000}), model="model-a", repeat_last=True)
    with Router(config_file) as other:  # the other kernel: $0.003
        other.complete("fast", "first")
        other.status()
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.displaypub import CapturingDisplayPublisher

    shell = InteractiveShell.instance()
    shell.display_pub = CapturingDisplayPublisher()
    shell.run_line_magic("load_ext", "nbrouter")
    try:
        assert magics(shell).budget_usd == 0.004
        assert run(shell, "%llm budget") is None
        assert "shared budget 'team' $0.004000: spent $0.003000, $0.001000 left" in capsys.readouterr().out
        sent = len(sim.requests)
        exc = run(shell, "%%llm fast -m 1000\nan expensive question")  # estimate above the $0.001 left
        assert isinstance(exc, BudgetExceeded) and "shared budget 'team'" in rendered(exc)
        assert len(sim.requests) == sent
        assert run(shell, "%%llm fast -m 10\ncheap") is None  # fits: sent, and it costs $0.003 too
        assert run(shell, "%llm cost") is None
        assert "$0.004000 ($0.000000 left of the shared budget 'team')" in outputs(shell)[-1]["data"]["text/plain"]
        assert run(shell, "%llm status") is None
        assert "shared budget 'team': spent $0.006000 of $0.004000" in outputs(shell)[-1]["data"]["text/plain"]
    finally:
        shell.run_line_magic("unload_ext", "nbrouter")
        InteractiveShell.clear_instance()


def test_a_partial_answer_with_no_usage_reported_says_tokens_unknown_not_zero() -> None:
    from nbrouter.router.types import Usage

    partial = RouteResult(text="half an ans", served_by="sim#default/model-a", model="model-a", combo="fast", attempts=[],
                          usage=Usage(), cost_usd=None, latency_s=0.5, ttft_s=None, partial=True)
    assert "tokens unknown" in partial.footer() and "0 tokens" not in partial.footer()
    whole = RouteResult(text="", served_by="sim#default/model-a", model="model-a", combo="fast", attempts=[],
                        usage=Usage(), cost_usd=None, latency_s=0.5, ttft_s=None)
    assert "0 tokens" in whole.footer()  # a finished empty answer did use 0 tokens


def test_the_session_total_counts_cells_batches_and_builder_tests_once(ip: Any, sim: Any) -> None:
    pushed: list[int] = []
    ledger = magics(ip).ledger
    ledger.listeners.append(lambda: pushed.append(ledger.calls))  # as the extension's comm is told
    assert run(ip, "%%llm fast --no-stream\nhi") is None
    ip.user_ns["items"] = ["a", "b", "c"]
    assert run(ip, "%%llm fast --over items\nSay {item}") is None
    assert run(ip, "%llm builder fast") is None
    builder = ip.user_ns["_llm_builder"]
    builder.test()
    builder.wait(30)
    assert builder.last_result is not None
    assert [c.outcome for c in ledger.cells] == ["served", "batch", "test"]
    assert ledger.calls == 5 and pushed == [1, 4, 5]
    # one total: the ledger's (what the status bar shows) is the router's budget's, which every call is held against
    assert ledger.total.usd == magics(ip).router.budget.spent > 0
    builder.close()

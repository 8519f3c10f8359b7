"""The notebook face in a real kernel: one notebook run with nbclient against the provider simulator, and a
test per rule reading what the kernel showed, what it sent and what it saved.

The rules: a `%llm` line ending in `?` is a prompt; `-f code` puts the code in a new cell below;
`%llm error` sends the last error and its cell; `{In[n]}`, `{Out[n]}` and a DataFrame fill a prompt;
`%llm chat show|clear`; a failure is a few short lines above an HTML attempt table, and `raise_on_failure = False`
lets Run All go on; `%llm log N` pages the log; dollars are dollars; `%llm help` lists every subcommand.
"""

from __future__ import annotations

import importlib.util
import os
import re
import textwrap
from typing import Any

import pytest

from conftest import SIM_KEY
from nbrouter.testing import ProviderSimulator, Reply, ServerError

from test_kernel import nbclient, nbformat, pytestmark  # noqa: F401 (the same kernel libraries and their warnings)

CODE_REPLY = "Here you are:\n```python\nprint('hello from a new cell')\n```\nEnjoy."
MONEY_REPLY = "It costs $5 to $10 a month, and the area is $$x^2$$ or \\(y^2\\)."
#: pandas is no dependency of nbrouter (the test extra installs it); without it that one test says so and skips
HAS_PANDAS = importlib.util.find_spec("pandas") is not None
FRAME_CELL = ("import pandas as pd\nframe = pd.DataFrame({'n': range(30), 'sq': [i * i for i in range(30)]})" if HAS_PANDAS
              else "frame = None")
#: the cells, by name; a cell's execution count is its index + 1 (a fresh kernel runs each once)
CELLS = [
    ("load", "%load_ext nbrouter\n%config LLMMagics.default_combo = 'face'"),
    ("question", "%llm face What is the capital of Italy?"),
    ("code", "%%llm coder -f code --no-stream\nprint hello"),
    ("raises", "numbers = [1, 2]\nnumbers[5]"),
    ("error", "%llm error face --no-stream"),
    ("value", "x = 41\nx + 1"),
    ("history", "%%llm face --no-stream\nsource: {In[6]} | output: {Out[6]}"),
    ("frame", FRAME_CELL),
    ("frame_prompt", "%%llm framed --no-stream\nSum this:\n{frame}"),
    ("chat1", "%%llm chatty --chat --no-stream\nfirst message"),
    ("chat2", "%%llm chatty --chat --no-stream\nsecond message"),
    ("chat_show", "%llm chat show chatty"),
    ("chat_clear", "%llm chat clear chatty"),
    ("chat3", "%%llm chatty --chat --no-stream\nthird message"),
    ("fails", "%%llm doomed\nthis fails"),
    ("goes_on", "%config LLMMagics.raise_on_failure = False"),
    ("fails_quietly", "%%llm doomed --no-stream\nthis fails too"),
    ("after", "print('still running')"),
    ("log", "%llm log 3"),
    ("log_all", "%llm log --all"),
    ("money", "%%llm money --no-stream\nhow much?"),
    ("help", "%llm help"),
    ("dollar_line", "price = 7\n%llm face Is it cheaper than $5 to $10, or $price? Say {price}."),
    ("dollar_cell", "%%llm face -s 'Prices in $USD, never $price' --no-stream\nIt costs $5, not $price; say {price}."),
]
INDEX = {name: i for i, (name, _) in enumerate(CELLS)}


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the notebook once; every test below reads it."""
    tmp = tmp_path_factory.mktemp("face")
    sim = ProviderSimulator()
    sim.start()
    sim.script(Reply(CODE_REPLY), model="coder")
    sim.script(Reply(MONEY_REPLY), model="money")
    sim.script([ServerError()], model="dead", repeat_last=True)
    config = tmp / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [providers.sim]
        protocol = "openai"
        base_url = "{sim.openai_url}"
        api_key_env = "SIM_KEY"

        [combos.face]
        targets = ["sim/face"]

        [combos.framed]
        targets = ["sim/framed"]

        [combos.chatty]
        targets = ["sim/chatty"]

        [combos.coder]
        targets = ["sim/coder"]

        [combos.money]
        targets = ["sim/money"]

        [combos.doomed]
        targets = ["sim/dead"]

        [policy]
        server_error_backoff_s = 0.0
    """))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(NBROUTER_CONFIG=str(config), NBROUTER_STATE=str(tmp / "state.sqlite3"), SIM_KEY=SIM_KEY,
               NBROUTER_LOCAL_URLS="", IPYTHONDIR=str(tmp / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for _, source in CELLS]
    for name in ("raises", "fails"):
        nb.cells[INDEX[name]].metadata["tags"] = ["raises-exception"]
    replies: dict[int, Any] = {}

    def executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        replies[cell_index] = execute_reply

    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=60, on_cell_executed=executed,
                                     resources={"metadata": {"path": str(tmp)}})
    try:
        client.execute(env=env)
    finally:
        sim.stop()
    return {"nb": nb, "cells": nb.cells, "replies": replies, "requests": list(sim.requests)}


def _cell(face: dict[str, Any], name: str) -> Any:
    return face["cells"][INDEX[name]]


def _displays(cell: Any) -> list[Any]:
    return [o for o in cell.outputs if o.output_type == "display_data"]


def _stream(cell: Any, name: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def _errors(cell: Any) -> list[Any]:
    return [o for o in cell.outputs if o.output_type == "error"]


def _sent(face: dict[str, Any], model: str) -> list[Any]:
    return [r for r in face["requests"] if r.model == model]


def test_a_llm_line_ending_in_a_question_mark_is_sent_as_a_prompt(face: dict[str, Any]) -> None:
    cell = _cell(face, "question")
    assert not _errors(cell) and "not found" not in _stream(cell)
    # the answer is shown once: no Out[] repeating it as a RouteResult repr
    assert [o for o in cell.outputs if o.output_type == "execute_result"] == []
    assert _sent(face, "face")[0].body["messages"][-1]["content"] == "What is the capital of Italy?"
    (answer,) = _displays(cell)
    assert answer.data["text/plain"].startswith("Simulated reply from face: What is the capital of Italy?")


def test_format_code_puts_the_code_in_a_new_cell_below(face: dict[str, Any]) -> None:
    payload = face["replies"][INDEX["code"]]["content"]["payload"]
    (next_input,) = [p for p in payload if p["source"] == "set_next_input"]
    assert next_input["text"] == "print('hello from a new cell')" and next_input["replace"] is False


def test_llm_error_sends_the_last_traceback_and_the_cell_that_raised(face: dict[str, Any]) -> None:
    assert _errors(_cell(face, "raises"))[0].ename == "IndexError"
    assert not _errors(_cell(face, "error"))
    sent = _sent(face, "face")[1].body["messages"][-1]["content"]
    assert "numbers = [1, 2]\nnumbers[5]" in sent and "IndexError: list index out of range" in sent
    assert sent.startswith("A cell of my notebook raised an error.")
    assert _displays(_cell(face, "error"))  # the answer is shown like any other


def test_in_and_out_of_a_cell_fill_a_prompt(face: dict[str, Any]) -> None:
    assert _cell(face, "value").execution_count == 6
    assert _sent(face, "face")[2].body["messages"][-1]["content"] == "source: x = 41\nx + 1 | output: 42"


@pytest.mark.skipif(not HAS_PANDAS, reason="pandas is not installed (pip install -e '.[test]' brings it)")
def test_a_dataframe_fills_a_prompt_as_a_markdown_table_cut_to_max_rows(face: dict[str, Any]) -> None:
    from nbrouter.notebook.interpolation import MAX_TABLE_ROWS

    sent = _sent(face, "framed")[0].body["messages"][-1]["content"]
    lines = sent.splitlines()
    assert lines[0] == "Sum this:" and lines[1].startswith("|") and "sq" in lines[1]
    assert sum(1 for line in lines if line.startswith("|")) == MAX_TABLE_ROWS + 2  # header, rule, rows
    assert sent.endswith(f"({MAX_TABLE_ROWS} of 30 rows)")


def test_chat_show_lists_the_conversation_and_clear_forgets_it(face: dict[str, Any]) -> None:
    chats = _sent(face, "chatty")
    assert [len(r.body["messages"]) for r in chats] == [1, 3, 1]
    shown = _displays(_cell(face, "chat_show"))[0].data["text/plain"]
    assert "first message" in shown and "second message" in shown and "assistant" in shown
    assert "cleared the chat of chatty" in _stream(_cell(face, "chat_clear"))


def test_a_failure_is_short_lines_above_an_html_attempt_table_and_stops_run_all(face: dict[str, Any]) -> None:
    cell = _cell(face, "fails")
    (error,) = _errors(cell)
    assert error.ename == "AllTargetsFailed"
    assert error.traceback == ["AllTargetsFailed: every target of 'doomed' failed (1 tried): server_error.",
                               "`%llm status` shows every cooldown and breaker."]
    (table,) = _displays(cell)
    assert "<table" in table.data["text/html"] and "sim#default/dead" in table.data["text/html"]
    assert "candidate (of doomed)" in table.data["text/plain"]
    assert table.metadata["nbrouter"]["served_by"] is None and table.metadata["nbrouter"]["attempts"]


def test_raise_on_failure_false_lets_the_notebook_go_on(face: dict[str, Any]) -> None:
    cell = _cell(face, "fails_quietly")
    assert not _errors(cell) and "AllTargetsFailed" in _stream(cell, "stderr")
    assert "server_error" in _displays(cell)[0].data["text/plain"]
    assert _stream(_cell(face, "after")) == "still running\n"


def test_llm_log_shows_n_rows_and_says_how_to_see_more(face: dict[str, Any]) -> None:
    page = _displays(_cell(face, "log"))[0].data["text/plain"]
    assert page.splitlines()[0] == "the last 3 attempts (`%llm log 9` or `--all` for older ones)"
    rows = [line for line in page.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(rows) == 3 and max(len(line) for line in page.splitlines()) <= 120  # fitted: long messages wrap
    everything = _displays(_cell(face, "log_all"))[0].data["text/plain"]
    assert everything.splitlines()[0].startswith("all ")
    assert sum(1 for line in everything.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)) > 3


def test_dollars_in_an_answer_stay_dollars_and_maths_stays_maths(face: dict[str, Any]) -> None:
    (answer,) = _displays(_cell(face, "money"))
    html = answer.data["text/html"]
    assert "costs <span>$</span>5 to <span>$</span>10" in html and "$$x^2$$" in html and "\\(y^2\\)" in html
    assert "costs \\$5 to \\$10" in answer.data["text/markdown"] and "$$x^2$$" in answer.data["text/markdown"]
    assert answer.data["text/plain"].startswith(MONEY_REPLY)


def test_llm_help_lists_every_subcommand_with_an_example(face: dict[str, Any]) -> None:
    from nbrouter.notebook.magics import SUBCOMMANDS

    text = _stream(_cell(face, "help"))
    for word in SUBCOMMANDS:
        assert f"%llm {word}" in text
    assert "--no-interpolate" in text and "(%llm log 30)" in text


def test_no_key_in_the_saved_notebook(face: dict[str, Any]) -> None:
    assert SIM_KEY not in nbformat.writes(face["nb"])


def test_dollars_are_sent_as_written_by_the_line_and_the_cell_magic(face: dict[str, Any]) -> None:
    # IPython expands `$name` in a magic's line unless the magic says not to: `{name}` is nbrouter's one way in
    line, cell = _sent(face, "face")[-2:]
    assert not _errors(_cell(face, "dollar_line")) and not _errors(_cell(face, "dollar_cell"))
    assert line.body["messages"][-1]["content"] == "Is it cheaper than $5 to $10, or $price? Say 7."
    assert cell.body["messages"][0] == {"role": "system", "content": "Prices in $USD, never $price"}
    assert cell.body["messages"][-1]["content"] == "It costs $5, not $price; say 7."

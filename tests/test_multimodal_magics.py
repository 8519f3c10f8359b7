"""Issue 25 in the notebook: `%%llm COMBO --image VAR` (and `_`, the last figure shown) and `--tools f,g`,
in an in-process InteractiveShell against the provider simulator.

pyplot is stood in for by a module with the two functions nbrouter calls (`get_fignums`, `gcf`), and a
figure by an object with `savefig`, as matplotlib's are called; one test runs the real pyplot too.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from nbrouter.testing import Reply, ToolCall
from test_magics import config_file, ip, magics, outputs, run  # noqa: F401 - the fixtures and helpers of the magics' tests
from test_multimodal import Figure, png


def test_image_sends_the_variables_image_with_the_prompt(ip: Any, sim: Any) -> None:
    ip.user_ns["pic"] = png(grey=30)
    assert run(ip, "%%llm solo --image pic --no-stream\nWhat is this?") is None
    request = sim.requests[-1]
    assert request.images == 1 and request.image_types == ("image/png",)
    assert ip.user_ns["_llm"].sent.images == 1
    assert "1 image" in ip.user_ns["_llm"].footer()


def test_a_chat_keeps_the_images_of_its_turns_and_chat_show_names_them(ip: Any, sim: Any) -> None:
    """`--chat --image`: the image stays in the conversation with its prompt, so the next turn (no --image)
    asks about it and the model sees it again; `%llm chat show` counts it, never its bytes."""
    ip.user_ns["pic"] = png(grey=40)
    assert run(ip, "%%llm solo --chat --image pic --no-stream\nWhat is this?") is None
    assert run(ip, "%%llm solo --chat --no-stream\nAnd what colour is it?") is None
    follow_up = sim.requests[-1]
    assert follow_up.images == 1 and follow_up.image_bytes == len(png(grey=40))
    roles = [m["role"] for m in follow_up.body["messages"]]
    assert roles == ["user", "assistant", "user"] and follow_up.body["messages"][-1]["content"] == "And what colour is it?"
    assert run(ip, "%llm chat show solo") is None
    shown = str(outputs(ip)[-1]["data"]["text/plain"])
    assert "What is this? [1 image]" in shown and "base64" not in shown and "iVBOR" not in shown


def test_image_underscore_is_the_last_output_shown(ip: Any, sim: Any) -> None:
    assert run(ip, "from IPython.display import Image\nfrom test_multimodal import png\nImage(data=png(grey=31))") is None
    assert run(ip, "%%llm solo --image _ --no-stream\nWhat is this?") is None
    assert sim.requests[-1].image_bytes == len(png(grey=31))


def test_image_underscore_is_pyplots_current_figure_when_pyplot_is_loaded(ip: Any, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    figure = Figure(png(grey=32))
    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.get_fignums = lambda: [1]  # type: ignore[attr-defined]
    pyplot.gcf = lambda: figure  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    ip.user_ns["_"] = "not this"
    assert run(ip, "%%llm solo --image _ --no-stream\nWhat is this?") is None
    assert sim.requests[-1].image_bytes == len(png(grey=32)) and figure.calls


def test_image_underscore_is_real_pyplots_current_figure(ip: Any, sim: Any) -> None:
    # the real pyplot (the test extra installs matplotlib): a chart drawn in the cell above is what `_` sends
    assert run(ip, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                   "plt.figure(figsize=(2, 1.5), dpi=50)\nplt.bar(['Q1', 'Q2'], [3, 5])\nplt.title('sales')") is None
    ip.user_ns["_"] = "not this"
    try:
        assert run(ip, "%%llm solo --image _ --no-stream\nWhat does this chart show?") is None
        request = sim.requests[-1]
        assert request.images == 1 and request.image_types == ("image/png",) and request.image_bytes > 500
    finally:
        run(ip, "plt.close('all')")


def test_two_images_and_a_streamed_answer(ip: Any, sim: Any) -> None:
    ip.user_ns.update(a=png(grey=33), b=png(grey=34))
    magics(ip).live_display = True
    assert run(ip, "%%llm solo --image a --image b\nCompare these.") is None
    assert sim.requests[-1].images == 2 and sim.requests[-1].stream


def test_an_image_that_cannot_be_read_is_a_usage_error_before_sending(ip: Any, sim: Any, tmp_path: Any) -> None:
    from IPython.core.error import UsageError

    error = run(ip, "%%llm solo --image nothing_here\nWhat is this?")
    assert isinstance(error, UsageError) and "there is no variable of that name" in str(error)
    error = run(ip, f"%%llm solo --image {tmp_path}/missing.png\nWhat is this?")
    assert isinstance(error, UsageError) and "no image file" in str(error)
    ip.user_ns["doc"] = b"%PDF-1.7"
    error = run(ip, "%%llm solo --image doc\nWhat is this?")
    assert isinstance(error, UsageError) and "not an image nbrouter recognises" in str(error)
    assert sim.requests == []


def test_tools_runs_the_kernels_functions_until_the_model_answers(ip: Any, sim: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ip, 'def stock(item: str) -> int:\n    """Units in stock of an item."""\n    return {"pens": 7}[item]') is None
    sim.script([Reply(tool_calls=[ToolCall("stock", {"item": "pens"})]), Reply("There are 7 pens.")], model="model-a")
    assert run(ip, "%%llm solo --tools stock\nHow many pens?") is None
    result = ip.user_ns["_llm"]
    assert result.text == "There are 7 pens."
    assert result.transcript[1]["content"] == "7"
    assert "tool stock(item='pens') -> 7" in capsys.readouterr().out
    assert [r.tools for r in sim.requests] == [("stock",), ("stock",)]
    assert sim.requests[-1].tool_results == 1


def test_tools_names_that_are_no_functions_are_a_usage_error(ip: Any, sim: Any) -> None:
    from IPython.core.error import UsageError

    ip.user_ns["number"] = 3
    error = run(ip, "%%llm solo --tools number\nHi")
    assert isinstance(error, UsageError) and "'number' is not a function" in str(error)
    assert sim.requests == []


def test_image_with_over_names_the_column_of_each_rows_image(ip: Any, sim: Any) -> None:
    ip.user_ns["rows"] = [{"name": "a", "scan": png(grey=35)}, {"name": "b", "scan": png(grey=36)}]
    assert run(ip, "%%llm solo --over rows --image scan\nDescribe scan {name}.") is None
    assert sorted(r.image_bytes for r in sim.requests) == sorted(len(png(grey=g)) for g in (35, 36))
    assert all(r.images == 1 for r in sim.requests) and len(sim.requests) == 2


# ---- a tool round kept in the chat history, in a real kernel (nbclient) -----------------------------------

CHAT_PROTOCOLS = {"oa": "openai", "an": "anthropic", "ge": "gemini"}


def _kernel_config(sim: Any, tmp_path: Any) -> str:
    """One provider per protocol at the simulator, and a combo of one target on each (`oa`, `an`, `ge`)."""
    urls = {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}
    lines = []
    for combo, protocol in CHAT_PROTOCOLS.items():
        lines += [f"[providers.{protocol}]", f'protocol = "{protocol}"', f'base_url = "{urls[protocol]}"', 'api_key_env = "SIM_KEY"',
                  f"[combos.{combo}]", f'targets = ["{protocol}/m-{combo}"]']
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _roles_and_tool_ids(protocol: str, body: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The roles of a request's turns, the ids of the tool calls it carries and the ids its results answer
    (Gemini: the names), read in the protocol's own shape."""
    if protocol == "openai":
        messages = body["messages"]
        calls = [c["id"] for m in messages for c in m.get("tool_calls") or []]
        results = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
        return [m["role"] for m in messages], calls, results
    if protocol == "anthropic":
        messages = body["messages"]
        blocks = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
        return ([m["role"] for m in messages], [b["id"] for b in blocks if b["type"] == "tool_use"],
                [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"])
    contents = body["contents"]  # Gemini pairs a result with its call by the tool's name (an id is optional)
    parts = [p for c in contents for p in c["parts"]]
    return ([c["role"] for c in contents], [p["functionCall"]["name"] for p in parts if "functionCall" in p],
            [p["functionResponse"]["name"] for p in parts if "functionResponse" in p])


def test_a_chat_keeps_its_tool_round_and_the_next_turn_is_a_valid_conversation_in_each_protocol(
        sim: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NBROUTER_CONFIG", _kernel_config(sim, tmp_path))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    for combo in CHAT_PROTOCOLS:
        sim.script([Reply(tool_calls=[ToolCall("stock", {"item": "pens"})]), Reply("There are 7 pens."),
                    Reply("That is 7/12 of a dozen.")], model=f"m-{combo}")
    cells = ["%load_ext nbrouter", 'def stock(item: str) -> int:\n    """Units in stock of an item."""\n    return {"pens": 7}[item]']
    for combo in CHAT_PROTOCOLS:
        cells += [f"%%llm {combo} --chat --tools stock\nHow many pens are in stock?",
                  f"%%llm {combo} --chat\nHow many dozens is that?",  # streamed, no --tools
                  "print(repr(_llm.text))"]
    cells.append("%llm chat show oa")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=90, resources={"metadata": {"path": str(tmp_path)}}).execute()

    for i, (combo, protocol) in enumerate(CHAT_PROTOCOLS.items()):
        printed = "".join(o.get("text", "") for o in nb.cells[4 + 3 * i].outputs)
        assert "That is 7/12 of a dozen." in printed  # the follow-up was answered, not refused
        sent = [r for r in sim.requests if r.model == f"m-{combo}" or f"m-{combo}" in r.path]
        assert len(sent) == 3
        follow_up = sent[-1]
        roles, calls, results = _roles_and_tool_ids(protocol, follow_up.body)
        user, model = "user", "model" if protocol == "gemini" else "assistant"
        # the prompt, the call, its result, the answer, the next prompt (a result is a user turn but in OpenAI)
        assert roles == [user, model, "tool" if protocol == "openai" else user, model, user]
        assert len(calls) == 1 and results == calls  # the result answers the call it follows
        # the tools are declared again (Anthropic refuses tool blocks without them), but none is called
        assert follow_up.tools == ("stock",) and follow_up.tool_choice == "none" and follow_up.tool_results == 1
        assert follow_up.stream
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in nb.cells[-1].outputs)
    assert "[calls stock(item='pens')]" in shown and "[stock returned] 7" in shown

"""Issue 25 in the notebook: `%%llm COMBO --image VAR` (and `_`, the last figure shown) and `--tools f,g`,
in an in-process InteractiveShell against the provider simulator.

matplotlib is not installed here: pyplot is stood in for by a module with the two functions nbrouter
calls (`get_fignums`, `gcf`), and a figure by an object with `savefig`, as matplotlib's are called.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from nbrouter.testing import Reply, ToolCall
from test_magics import config_file, ip, magics, run  # noqa: F401 - the fixtures and helpers of the magics' tests
from test_multimodal import Figure, png


def test_image_sends_the_variables_image_with_the_prompt(ip: Any, sim: Any) -> None:
    ip.user_ns["pic"] = png(grey=30)
    assert run(ip, "%%llm solo --image pic --no-stream\nWhat is this?") is None
    request = sim.requests[-1]
    assert request.images == 1 and request.image_types == ("image/png",)
    assert ip.user_ns["_llm"].sent.images == 1
    assert "1 image" in ip.user_ns["_llm"].footer()


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

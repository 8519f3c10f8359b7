"""Issue 17 in a real kernel: `%%llm COMBO --over VAR` shows a progress bar, the summary and the first rows,
and keeps the BatchResult in `_llm_batch` (or `--out NAME`)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("pandas")

from nbrouter.testing import Reply  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:nbclient.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*"),
    pytest.mark.filterwarnings("ignore:.*zmq.eventloop.ioloop.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture
def kernel_env(tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [providers.sim]
        protocol = "openai"
        base_url = "{sim.openai_url}"
        api_key_env = "SIM_KEY"

        [combos.fast]
        targets = ["sim/m"]
    """))
    monkeypatch.setenv("NBROUTER_CONFIG", str(config))
    monkeypatch.setenv("NBROUTER_CACHE", str(tmp_path / "responses.sqlite3"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp_path


def test_the_batch_magic_shows_progress_summary_and_rows_and_keeps_the_result(kernel_env: Path, sim: Any) -> None:
    sim.set_default(Reply('{"label": "pos", "score": 2}'))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        "%load_ext nbrouter\nimport pandas as pd\n"
        "df = pd.DataFrame({'text': ['good', 'bad', 'fine'], 'n': [1, 2, 3]})\n"
        "schema = {'type': 'object', 'properties': {'label': {'type': 'string'}, 'score': {'type': 'integer'}}}\n"
        "item = 'a variable the template must not pick up'",
        "%%llm fast --over df --column text --concurrency 2\nRate {item} (JSON: {\"label\": ...})",
        "print(type(_llm_batch).__name__, _llm_batch.done, _llm_batch.texts[0][:20])",
        "%%llm fast --over df --schema schema --out scored\nRate {text} #{n}",
        "print(scored.to_pandas().dtypes['score'], scored.parsed[0])",
    )]
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=90, resources={"metadata": {"path": str(kernel_env)}})
    client.execute()
    cells = nb.cells

    sent = [r.body["messages"][-1]["content"] for r in sim.requests]
    assert sent[:3] == ['Rate good (JSON: {"label": ...})', 'Rate bad (JSON: {"label": ...})', 'Rate fine (JSON: {"label": ...})']
    assert sent[3:] == ["Rate good #1", "Rate bad #2", "Rate fine #3"]

    outputs = cells[1].outputs
    # the progress bar: tqdm.auto's widget in a kernel with ipywidgets (its text form goes to stderr)
    bars = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert bars, [o.get("output_type") for o in outputs]
    plain = [o["data"]["text/plain"] for o in outputs if o.output_type == "display_data" and "text/plain" in o.get("data", {})]
    summary = next(p for p in plain if p.startswith("batch over 'fast'"))
    assert summary.splitlines()[0] == "batch over 'fast': 3 items · 3 done · 0 failed"
    assert "served by: sim#default/m 3" in summary
    rows = next(p for p in plain if "served_by" in p)  # the first rows of the table
    assert "input_text" in rows and "good" in rows  # the input column `text` beside the answers' `text`
    printed = "".join(o.get("text", "") for o in cells[2].outputs if o.output_type == "stream")
    assert printed.startswith("BatchResult 3 ")
    printed = "".join(o.get("text", "") for o in cells[4].outputs if o.output_type == "stream")
    assert printed.strip() == "Int64 {'label': 'pos', 'score': 2}"

"""Issue 24 in a real kernel: `%%llm COMBO --over VAR --batch` submits a batch job, shows its live summary
and a bar while it waits, then the result; the job is kept in `_llm_job`, the result in `_llm_batch`; a
plain `job.wait()` shows the same live view."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("pandas")

from nbrouter.testing import BatchScript, Reply  # noqa: E402

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
        [providers.an]
        protocol = "anthropic"
        base_url = "{sim.anthropic_url}"
        api_key_env = "SIM_KEY"
        prices_id = "anthropic"

        [combos.cheap]
        targets = ["an/claude-haiku-4-5"]
    """))
    monkeypatch.setenv("NBROUTER_CONFIG", str(config))
    monkeypatch.setenv("NBROUTER_STATE", str(tmp_path / "state.sqlite3"))
    monkeypatch.setenv("NBROUTER_CACHE", str(tmp_path / "responses.sqlite3"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp_path


def test_the_batch_magic_submits_a_job_shows_it_live_and_keeps_job_and_result(kernel_env: Path, sim: Any) -> None:
    # jobs that finish at once (the real clock runs in the kernel): the first poll collects them
    sim.script_batch(BatchScript(validate_s=0, line_s=0, finalize_s=0), repeat_last=True)
    sim.set_default(Reply('{"label": "pos", "score": 2}'))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        "%load_ext nbrouter\nimport pandas as pd\n"
        "df = pd.DataFrame({'text': ['good', 'bad', 'fine'], 'n': [1, 2, 3]})\n"
        "schema = {'type': 'object', 'properties': {'label': {'type': 'string'}, 'score': {'type': 'integer'}}}",
        "%%llm cheap --over df --schema schema --batch --out scored\nRate {text} #{n}",
        "print(type(_llm_job).__name__, _llm_job.settled, _llm_job.ids[0][:9], scored.to_pandas().dtypes['score'], scored.parsed[0])",
        "from nbrouter import Router\njob = Router().map('cheap', ['x', 'y'], mode='batch')\nresult = job.wait()\nprint(result.done)",
    )]
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=90, resources={"metadata": {"path": str(kernel_env)}})
    client.execute()
    cells = nb.cells

    created = [r for r in sim.requests if r.path == "/v1/messages/batches"]
    assert [len(r.body["requests"]) for r in created] == [3, 2]
    assert [q["params"]["messages"][-1]["content"] for q in created[0].body["requests"]] == ["Rate good #1", "Rate bad #2", "Rate fine #3"]
    assert not [r for r in sim.requests if r.path == "/v1/messages"]  # nothing went live

    outputs = cells[1].outputs
    bars = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert bars, [o.get("output_type") for o in outputs]
    # the live view: one display of the job, updated in place (its last state says every row is done)
    views = [o for o in outputs if o.output_type in ("display_data", "update_display_data")
             and o.get("data", {}).get("text/plain", "").startswith("batch job job-")]
    assert views and "done 3" in views[-1]["data"]["text/plain"]
    assert "at the batch price" in views[-1]["data"]["text/plain"]
    plain = [o["data"]["text/plain"] for o in outputs if o.output_type == "display_data" and "text/plain" in o.get("data", {})]
    summary = next(p for p in plain if p.startswith("batch over 'cheap'"))
    assert "3 done" in summary.splitlines()[0] and "live it would have cost" in summary
    printed = "".join(o.get("text", "") for o in cells[2].outputs if o.output_type == "stream")
    assert printed.strip() == "BatchJob True msgbatch_ Int64 {'label': 'pos', 'score': 2}"
    # a plain job.wait() in the notebook shows the same live view
    waited = cells[3].outputs
    assert any(o.output_type in ("display_data", "update_display_data") and o.get("data", {}).get("text/plain", "").startswith("batch job job-")
               for o in waited)
    assert "".join(o.get("text", "") for o in waited if o.output_type == "stream").strip().endswith("2")

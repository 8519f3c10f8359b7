"""`nbrouter demo` on a machine with nothing configured: it runs the quickstart notebook in a real kernel
against simulated providers, writes the executed notebook, and summarises each prompt cell."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbrouter.providers import managed

#: what the demo's scenario makes each prompt cell of the quickstart do
EXPECTED_SERVERS = ["bigco#work/gpt-4o", "slowco#default/gpt-4.1-mini", "bigco#work/gpt-4o"]


def _run_demo(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NBROUTER_", "DEMO_", "JUPYTER_", "XDG_")) and not k.endswith("_API_KEY")}
    env["HOME"] = str(home)
    script = shutil.which("nbrouter", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "nbrouter"]
    t0 = time.monotonic()
    out = subprocess.run([*command, "demo", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=timeout)
    return out, time.monotonic() - t0


def _served_by(path: Path) -> list[str]:
    import nbformat

    from nbrouter.__main__ import prompt_cells

    nb = nbformat.read(path, as_version=4)
    return [cell["meta"]["served_by"] for cell in prompt_cells(nb)]


def test_demo_runs_the_quickstart_and_summarises_each_prompt_cell(tmp_path: Path) -> None:
    out, elapsed = _run_demo(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "SIMULATED providers" in text
    assert "rate limit" in text and "out of quota" in text and "slow" in text
    for server in EXPECTED_SERVERS:
        assert f"served by {server}" in text
    assert re.search(r"\[\d+\] 'What is the capital of France\?'\n"
                     r"\s+-> Simulated reply from gpt-4o: What is the capital of France\?\n"
                     r"\s+served by bigco#work/gpt-4o  ·  3 attempts  ·  \$0\.\d{6}", text), text
    assert "after: rate_limit (fastco#default/gpt-4o-mini), quota_exceeded (bigco#free/gpt-4o)" in text
    assert "after: overloaded (bigco#work/gpt-4o)" in text
    assert re.search(r"session total: \$0\.\d{6} for 3 prompts", text), text

    written = tmp_path / "nbrouter-demo" / "quickstart.ipynb"
    assert f"the executed notebook: {os.path.join('nbrouter-demo', 'quickstart.ipynb')}" in text
    assert "jupyter lab nbrouter-demo/quickstart.ipynb" in text
    assert _served_by(written) == EXPECTED_SERVERS
    assert elapsed < 60, f"the demo took {elapsed:.0f} s"
    assert not list((tmp_path / "home").rglob("config.toml")), "the demo wrote a config into the user's home"


def test_demo_writes_where_out_says(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "demo.ipynb"
    out, _ = _run_demo(tmp_path, "--out", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"jupyter lab {target}" in out.stdout
    assert _served_by(target) == EXPECTED_SERVERS
    assert not (tmp_path / "nbrouter-demo").exists()


@pytest.mark.timeout(400)
def test_demo_local_adds_the_local_model_as_the_last_tier(tmp_path: Path) -> None:
    if not managed.local_extra_installed():
        out, _ = _run_demo(tmp_path, "--local")
        assert out.returncode == 2
        assert "needs the `local` extra" in out.stderr and "GGML_NATIVE=OFF" in out.stderr
        if os.environ.get("NBROUTER_REQUIRE_LOCAL") == "1":
            pytest.fail("NBROUTER_REQUIRE_LOCAL=1 but the local extra is not installed")
        return
    # the real model: keep its assembled GGUF where the user's cache is, not in the temporary home
    home_cache = Path(managed.bundled_model_path() or "").parent
    (tmp_path / "home" / ".cache").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / home_cache.name).symlink_to(home_cache)
    out, _ = _run_demo(tmp_path, "--local", timeout=360)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a REAL model" in out.stdout
    served = _served_by(tmp_path / "nbrouter-demo" / "quickstart.ipynb")
    assert served == ["bigco#work/gpt-4o", "local#default/gemma-3-270m", "bigco#work/gpt-4o"], out.stdout
    assert "after: overloaded (bigco#work/gpt-4o), server_error (slowco#default/gpt-4.1-mini)" in out.stdout

"""The kernel's side of the JupyterLab / Notebook 7 extension (nbrouter/notebook/frontend.py), the fixture
the front end's unit tests read, the front end's unit tests themselves (vitest, run through npm), and the
packaging: the wheel carries the prebuilt extension.

The payload and the comm are checked against the loopback simulator and in a real kernel; the front-end
tests and the wheel build need Node.js and the extension's node_modules (`pip install -e .` installs
them). CI sets NBROUTER_REQUIRE_BROWSER=1: there a missing Node.js or build fails these tests instead of
skipping them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import time
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import SIM_KEY, sim_config

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "extension"
FIXTURE = EXTENSION / "test" / "fixtures" / "fallback-result.json"
MIME = "application/vnd.nbrouter.result+json"
#: the answer of the fixture: money (shown as written) and maths (still maths)
ANSWER = "It costs $5 to $10 a month.\n\n$$E = mc^2$$\n\nInline maths: \\(a^2 + b^2\\), and `echo $HOME`."


def _required() -> bool:
    return os.environ.get("NBROUTER_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))


def _need(condition: bool, message: str) -> None:
    if condition:
        return
    if _required():
        pytest.fail(message)
    pytest.skip(message + " (CI has it, and there this test fails without it)")


def _fallback_result(sim: Any, make_router: Any) -> Any:
    """A real routed result: the first target is rate limited, the second serves at a configured price."""
    from nbrouter.testing.behaviours import RateLimited, Reply

    sim.script(RateLimited(retry_after=120), model="model-a")
    sim.script(Reply(ANSWER, usage={"input_tokens": 12, "output_tokens": 30}), model="model-b")
    config = sim_config(sim, {"pair": {"targets": ["sim/model-a", "sim/model-b"]}},
                        prices={"sim/model-b": {"input_per_mtok": 1000, "output_per_mtok": 2000}})
    router = make_router(config)
    return router, router.complete("pair", "What does it cost?")


def test_result_payload_lists_every_attempt_with_its_action_and_the_exact_cost(sim: Any, make_router: Any) -> None:
    from nbrouter.notebook.frontend import result_payload

    _, result = _fallback_result(sim, make_router)
    payload = result_payload(result)
    assert payload["served_by"] == "sim#default/model-b"
    # a field that says nothing (None, an empty note, a path that is only combo > candidate) is left out
    assert [(a["candidate"], a["action"], a.get("kind"), a["status"]) for a in payload["attempts"]] == [
        ("sim#default/model-a", "advance", "rate_limit", 429), ("sim#default/model-b", "served", None, 200)]
    assert "kind" not in payload["attempts"][1] and "path" not in payload["attempts"][0]
    # the cost is the Decimal's exact string: 12 * 1000 / 1e6 + 30 * 2000 / 1e6
    assert Decimal(payload["cost"]) == Decimal("0.072")
    assert payload["attempts"][1]["cost"] == payload["cost"]
    assert payload["usage"] == {"input_tokens": 12, "output_tokens": 30}  # no cached tokens: not said
    assert payload["cached"] is False and payload["partial"] is False
    assert all(isinstance(a["latency"], float) for a in payload["attempts"])
    json.dumps(payload, allow_nan=False)  # plain JSON: the notebook file and the comm carry it


def test_an_unknown_price_is_null_never_zero(sim: Any, make_router: Any) -> None:
    from nbrouter.notebook.frontend import result_payload
    from nbrouter.testing.behaviours import Reply

    sim.script(Reply("hi"), model="unpriced-model")
    router = make_router(sim_config(sim))
    result = router.complete("sim/unpriced-model", "hello")
    assert result.cost_usd is None
    payload = result_payload(result)
    assert payload["cost"] is None
    assert payload["attempts"][0].get("cost") is None  # left out: the front end reads a missing cost as unknown
    assert payload["attempts"][0]["usage"] is not None  # it used tokens: the price, not the use, is unknown


def test_the_bundle_carries_the_payload_beside_the_fallbacks_and_no_key(sim: Any, make_router: Any) -> None:
    from nbrouter.notebook.display import result_bundle

    _, result = _fallback_result(sim, make_router)
    data, _ = result_bundle(result, "markdown")
    assert {"text/plain", "text/markdown", "text/html", MIME} <= set(data)
    assert _unescaped(data["text/markdown"]).startswith(ANSWER)  # lone dollars come escaped (the dollar rule)
    assert SIM_KEY not in json.dumps(data)


def _unescaped(markdown: str) -> str:
    return markdown.replace("\\$", "$")


def _fixture_shape(value: Any) -> Any:
    """The keys and types of a bundle, without values that change from run to run."""
    if isinstance(value, dict):
        return {k: _fixture_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fixture_shape(v) for v in value]
    return type(value).__name__


def test_the_front_end_fixture_has_the_payload_the_kernel_sends_today(sim: Any, make_router: Any) -> None:
    """extension/test/fixtures/fallback-result.json is what vitest renders; it must not drift from the kernel.

    `NBROUTER_WRITE_FIXTURE=1 python -m pytest tests/test_extension.py -k fixture` rewrites it."""
    from nbrouter.notebook.display import result_bundle

    _, result = _fallback_result(sim, make_router)
    data, _ = result_bundle(result, "markdown")
    fresh = {"text/markdown": data["text/markdown"], "text/plain": data["text/plain"], MIME: data[MIME]}
    if os.environ.get("NBROUTER_WRITE_FIXTURE") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(fresh, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    stored = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert _fixture_shape(stored[MIME]) == _fixture_shape(fresh[MIME])
    assert [a["action"] for a in stored[MIME]["attempts"]] == [a["action"] for a in fresh[MIME]["attempts"]]
    assert stored[MIME]["cost"] == fresh[MIME]["cost"]
    assert _unescaped(stored["text/markdown"]).startswith(ANSWER) and _unescaped(fresh["text/markdown"]).startswith(ANSWER)
    assert stored["text/markdown"].split("\n\n")[0] == fresh["text/markdown"].split("\n\n")[0]  # escaped alike


# ---- the comm, in a real kernel ---------------------------------------------------------------


def _comm_reply(client: Any, comm_id: str, request_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        content = msg["content"]
        if msg["msg_type"] == "comm_msg" and content.get("comm_id") == comm_id and content["data"].get("id") == request_id:
            return dict(content["data"])
    raise AssertionError(f"no reply to request {request_id} within {timeout} s")


def test_the_comm_answers_status_and_reset_in_a_real_kernel(sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.manager import start_new_kernel

    from nbrouter.testing.behaviours import RateLimited

    config = tmp_path / "config.toml"
    config.write_text(
        f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n'
        'models = ["model-a", "model-b"]\n\n[combos.pair]\ntargets = ["sim/model-a", "sim/model-b"]\n',
        encoding="utf-8")
    monkeypatch.setenv("NBROUTER_CONFIG", str(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    sim.script(RateLimited(retry_after=300), model="model-a")
    km, client = start_new_kernel(kernel_name="python3")
    try:
        hello: list[dict[str, Any]] = []
        reply = client.execute_interactive("%load_ext nbrouter", timeout=60,
                                           output_hook=lambda m: hello.append(m) if m["msg_type"] == "comm_open" else None)
        assert reply["content"]["status"] == "ok"
        # the kernel announces itself (that is how the front end knows nbrouter is loaded), with the session's spend
        assert [(m["content"]["target_name"], m["content"]["data"]) for m in hello] == [
            ("nbrouter", {"hello": 1, "spend": {"usd": "0", "unknown": 0, "calls": 0}})]
        pushed: list[dict[str, Any]] = []
        reply = client.execute_interactive(
            "%%llm pair --no-stream\nhello", timeout=60,
            output_hook=lambda m: pushed.append(m["content"]["data"]) if m["msg_type"] == "comm_msg" else None)
        assert reply["content"]["status"] == "ok"
        # the cell's cost reaches the front end as the ledger's new total, not summed by the front end
        assert pushed == [{"reply": "spend", "spend": {"usd": "0", "unknown": 1, "calls": 1}}]

        comm_id = "test-comm-0001"
        client.shell_channel.send(client.session.msg(
            "comm_open", {"comm_id": comm_id, "target_name": "nbrouter", "data": {"request": "status", "id": 1}}))
        status = _comm_reply(client, comm_id, 1)
        assert status["reply"] == "status"
        rows = {r["candidate"]: r for r in status["candidates"]}
        assert rows["sim#default/model-a"]["hold"] == "cooldown"
        assert 200 < rows["sim#default/model-a"]["hold_left_s"] <= 300
        assert rows["sim#default/model-b"]["hold"] is None
        # each row's health in `%llm status`'s words (one rule): model-a's error rate is 100 %
        assert (rows["sim#default/model-a"]["health"], rows["sim#default/model-a"]["tone"]) == ("! cooling down", "warn")
        assert (rows["sim#default/model-b"]["health"], rows["sim#default/model-b"]["tone"]) == ("✓ healthy", "ok")
        assert status["spend"] == {"usd": "0", "unknown": 1, "calls": 1}
        assert SIM_KEY not in json.dumps(status)

        client.shell_channel.send(client.session.msg(
            "comm_msg", {"comm_id": comm_id, "data": {"request": "reset", "key": "sim#default/model-a", "id": 2}}))
        reset = _comm_reply(client, comm_id, 2)
        assert reset["reply"] == "reset" and reset["cleared"] >= 1
        after = {r["candidate"]: r for r in reset["candidates"]}["sim#default/model-a"]
        # no longer held, and still not "healthy": 1 error in 1 request is flaky, as `%llm status` says
        assert after["hold"] is None and after["health"] == "! flaky" and after["error_rate"] == 1.0

        client.shell_channel.send(client.session.msg(
            "comm_msg", {"comm_id": comm_id, "data": {"request": "launch", "id": 3}}))
        error = _comm_reply(client, comm_id, 3)
        assert error["reply"] == "error" and "unknown request" in error["message"]
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_status_reply_says_the_shared_state_is_down_and_the_shared_budget_in_a_real_kernel(
        sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a Redis URL where nothing listens: the store is "down" from the start (calls go on, paced here); the
    # status reply the status bar and the board read says so, and carries the shared budget's text
    import socket

    from jupyter_client.manager import start_new_kernel

    with socket.socket() as s:  # a loopback port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n'
        'models = ["model-a"]\n\n[combos.solo]\ntargets = ["sim/model-a"]\n\n'
        '[prices."sim/model-a"]\ninput_per_mtok = 1000\noutput_per_mtok = 2000\n\n'
        f'[state]\nurl = "redis://:pw-secret-1@127.0.0.1:{port}/0"\ntimeout_s = 0.2\n\n'
        '[budget]\nusd = 5.0\nshared = "team"\n', encoding="utf-8")
    monkeypatch.setenv("NBROUTER_CONFIG", str(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    from nbrouter.testing import Reply

    sim.script(Reply("hi", usage={"input_tokens": 10, "output_tokens": 10}), model="model-a")
    km, client = start_new_kernel(kernel_name="python3")
    try:
        assert client.execute_interactive("%load_ext nbrouter", timeout=60)["content"]["status"] == "ok"
        assert client.execute_interactive("%%llm solo --no-stream\nhello", timeout=60)["content"]["status"] == "ok"
        comm_id = "test-comm-0002"
        client.shell_channel.send(client.session.msg(
            "comm_open", {"comm_id": comm_id, "target_name": "nbrouter", "data": {"request": "status", "id": 1}}))
        status = _comm_reply(client, comm_id, 1)
        assert status["store"]["kind"] == "redis" and status["store"]["mode"] == "local"
        assert "not answering" in status["store"]["warning"] and "pw-secret-1" not in json.dumps(status)
        assert status["budget"] == "shared budget 'team': spent $0.030000 of $5.000000 (cheapest)"
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def test_loading_in_a_kernel_imports_nothing_heavy_for_the_extension() -> None:
    """`%load_ext nbrouter` stays light: the comm registration imports no widgets, HTTP or table library."""
    code = (
        "import sys\n"
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\n"
        "class Kernel: pass\n"
        "ip.kernel = Kernel()\n"
        "import comm\n"
        "from nbrouter.notebook import frontend\n"
        "assert frontend.register(ip, lambda: None)\n"
        "heavy = [m for m in ('ipywidgets', 'httpx', 'tabulate', 'markdown_it') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---- the front end's unit tests, and the wheel ------------------------------------------------


def test_front_end_unit_tests_pass() -> None:
    """vitest: the renderer from the fixture bundle, the dollar-sign rule, the spend summing, the board."""
    npm = shutil.which("npm")
    _need(npm is not None, "npm is not on PATH: install Node.js 20 to run the extension's unit tests")
    _need((EXTENSION / "node_modules" / "vitest").is_dir(),
          "extension/node_modules is missing: `pip install -e .` (or `cd extension && npm install`) installs it")
    out = subprocess.run([npm, "test", "--silent"], cwd=EXTENSION, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CI": "true", "NO_COLOR": "1"})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-2000:]


def test_the_wheel_ships_the_prebuilt_extension(tmp_path: Path) -> None:
    """`pip wheel .` puts the labextension under share/jupyter/labextensions: `pip install` needs no Node."""
    built = ROOT / "nbrouter" / "labextension" / "package.json"
    _need(built.exists(), "the extension is not built: `pip install -e .` builds it (Node.js 20 and npm)")
    # as a user builds it: pip fetches the build backends into an isolated environment
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next(tmp_path.glob("nbrouter-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    share = "nbrouter-0.1.0.data/data/share/jupyter/labextensions/nbrouter-labextension/"
    assert share + "package.json" in names
    assert share + "install.json" in names
    assert any(n.startswith(share + "static/remoteEntry.") for n in names)
    # the build output goes to share/ only, not into the package as well
    assert not any(n.startswith("nbrouter/labextension/") for n in names)
    meta = json.loads(zipfile.ZipFile(wheel).read(share + "package.json"))
    assert meta["name"] == "nbrouter-labextension"
    assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")

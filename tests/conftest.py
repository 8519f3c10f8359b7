"""Shared fixtures: every test gets its own config and state paths (nothing touches the user's files),
and a loopback provider simulator shared by the session and reset between tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

SIM_KEY = "sim-test-key-0001"


@pytest.fixture(autouse=True)
def _isolated_user_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBROUTER_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("NBROUTER_STATE", str(tmp_path / "state.sqlite3"))
    monkeypatch.setenv("NBROUTER_CACHE", str(tmp_path / "cache.sqlite3"))
    monkeypatch.setenv("SIM_KEY", SIM_KEY)
    monkeypatch.setenv("NBROUTER_LOCAL_URLS", "")  # zero-config probes nothing unless a test says where
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENROUTER_API_KEY",
                 "GROQ_API_KEY", "DEEPSEEK_API_KEY", "MISTRAL_API_KEY", "TOGETHER_API_KEY", "XAI_API_KEY", "ZHIPUAI_API_KEY", "GLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _session_sim() -> Iterator[Any]:
    from nbrouter.testing import ProviderSimulator

    sim = ProviderSimulator()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(_session_sim: Any) -> Iterator[Any]:
    """The session's simulator, with scripts and the request log cleared for this test."""
    _session_sim.reset()
    yield _session_sim
    _session_sim.reset()


@pytest.fixture
def clock_sim(sim: Any) -> Iterator[tuple[Any, Any]]:
    """The simulator with its rate limiter on a ManualClock (the router gets the same clock): (sim, clock)."""
    from nbrouter.testing import ManualClock
    from nbrouter.testing.ratelimits import RateLimiter

    clock = ManualClock()
    kept = sim.rate_limits
    sim.rate_limits = RateLimiter(time=clock.monotonic)
    try:
        yield sim, clock
    finally:
        sim.rate_limits = kept


def sim_config(sim: Any, combos: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A config dict with one OpenAI-compatible provider `sim` (one account) at the simulator."""
    providers = extra.pop("providers", None) or {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    return {"providers": providers, "combos": combos or {}, **extra}


def shared_count(key: str, window: Any = None, *, clock: Any = None, **where: Any) -> float:
    """What a shared store (`path=` a state file, or `url=` and `prefix=` a Redis) counted under `key` in
    `window` (default: one that never ends), read as another process would, on `clock` if given."""
    import asyncio

    from nbrouter.router.state.guarded import open_shared
    from nbrouter.router.state.shared import Window

    async def read() -> float:
        shared = open_shared(timeout_s=5.0, **where, **({"clock": clock} if clock is not None else {}))
        try:
            return await shared.count(key, window or Window.forever())
        finally:
            await shared.close()

    return asyncio.run(read())


@pytest.fixture
def make_router(tmp_path: Path) -> Iterator[Any]:
    """Build Routers on this test's state file; all are closed at the end."""
    from nbrouter import Router

    made: list[Any] = []

    def make(config: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("state_path", tmp_path / "state.sqlite3")
        router = Router(config, **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


# ---- a real redis-server (the shared store's tests) ------------------------------------------------


class RedisServer:
    """One `redis-server` this test run started, on a free loopback port, with nothing saved to disk."""

    def __init__(self, password: str | None = None) -> None:
        import shutil
        import socket
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("NBROUTER_REQUIRE_REDIS") == "1" or os.environ.get("CI"):
                pytest.fail("NBROUTER_REQUIRE_REDIS=1 but redis-server is not installed (apt-get install redis-server)")
            pytest.skip("redis-server is not installed (CI installs it and sets NBROUTER_REQUIRE_REDIS=1)")
        self.password = password
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def _wait_ready(self) -> None:
        import socket
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited at start (status {self.proc.returncode}) on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer on port {self.port} within 20 s")

    def client(self) -> Any:
        """A plain redis-py client (the test's own view of the server)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True)

    def stop(self) -> None:
        """Stop this server (by its PID) and wait for it; a paused one is woken to die."""
        import signal

        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """Start a fresh, empty server on the same port (what a restarted Redis without persistence is)."""
        import subprocess

        self.stop()
        self.proc = subprocess.Popen(self.proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session's tests (each test uses its own key prefix)."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def start_redis() -> Iterator[Any]:
    """Start redis-servers this test may kill, pause or restart; all are stopped at its end."""
    started: list[RedisServer] = []

    def start(password: str | None = None) -> RedisServer:
        server = RedisServer(password)
        started.append(server)
        return server

    yield start
    for server in started:
        try:
            os.kill(server.pid, __import__("signal").SIGCONT)
        except OSError:
            pass
        server.stop()

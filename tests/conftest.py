"""Shared fixtures: every test gets its own config and state paths (nothing touches the user's files),
and a loopback provider simulator shared by the session and reset between tests."""

from __future__ import annotations

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


def sim_config(sim: Any, combos: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A config dict with one OpenAI-compatible provider `sim` (one account) at the simulator."""
    providers = extra.pop("providers", None) or {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    return {"providers": providers, "combos": combos or {}, **extra}


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

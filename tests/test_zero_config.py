"""Zero-config: with no config file, providers come from the usual key variables and from local servers
found listening; a config file, when present, wins; with nothing found, one message says what to do."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from nbrouter import NoProviders, Router
from nbrouter.providers import discovery


@pytest.fixture(autouse=True)
def _fresh_probe_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "_cache", None)


def test_providers_come_from_the_usual_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-zero-config-1")
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-test-zero-config")
    router = Router(state_path=tmp_path / "s.db")
    try:
        providers = router.providers
        assert sorted(providers) == ["gemini", "openai"]
        assert providers["openai"].source == "environment: OPENAI_API_KEY"
        assert providers["gemini"].source == "environment: GOOGLE_API_KEY"
        assert "gpt-4o-mini" in providers["openai"].models
        decision = router.explain("openai/gpt-4o-mini", "hi")
        assert [c.key for c in decision.order] == ["openai#default/gpt-4o-mini"]
    finally:
        router.close()


def test_local_servers_found_listening_are_added_with_their_models(sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sim.models = ["llama3.2:3b", "qwen2.5:7b"]
    monkeypatch.setenv("NBROUTER_LOCAL_URLS", f"ollama={sim.openai_url},lmstudio=http://127.0.0.1:9/v1")
    router = Router(state_path=tmp_path / "s.db")
    try:
        providers = router.providers
        assert list(providers) == ["ollama"]
        assert providers["ollama"].local and providers["ollama"].models == ["llama3.2:3b", "qwen2.5:7b"]
        assert providers["ollama"].source == f"local server found at {sim.openai_url}"
        result = router.complete("ollama/llama3.2:3b", "hello local")
        assert result.served_by == "ollama#default/llama3.2:3b" and result.cost_usd == Decimal(0)
    finally:
        router.close()


def test_a_config_file_when_present_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-zero-config-1")
    path = tmp_path / "config.toml"
    path.write_text('[providers.mine]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    monkeypatch.setenv("NBROUTER_CONFIG", str(path))
    router = Router(state_path=tmp_path / "s.db")
    try:
        assert list(router.providers) == ["mine"]
        assert router.providers["mine"].source == f"config file {path}"
    finally:
        router.close()


def test_with_nothing_found_one_message_names_the_three_ways_forward(tmp_path: Path) -> None:
    router = Router(state_path=tmp_path / "s.db")
    try:
        with pytest.raises(NoProviders) as err:
            router.complete("auto", "hi")
        text = str(err.value)
        assert "set a key" in text and "%llm builder" in text and "nbrouter demo" in text
        assert "\n" not in text
    finally:
        router.close()


def test_auto_works_over_what_zero_config_found(sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sim.models = ["llama3.2:3b"]
    monkeypatch.setenv("NBROUTER_LOCAL_URLS", f"ollama={sim.openai_url}")
    router = Router(state_path=tmp_path / "s.db")
    try:
        result = router.complete("auto", "hello", seed=1)
        assert result.served_by == "ollama#default/llama3.2:3b"
        assert result.decision is not None and result.decision.strategy == "auto"
    finally:
        router.close()


def test_a_key_set_during_the_session_is_noticed_without_a_reload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbrouter.testing import ManualClock

    clock = ManualClock()
    router = Router(state_path=tmp_path / "s.db", clock=clock)
    try:
        with pytest.raises(NoProviders):
            router.explain("auto", "hi")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-set-later-1")  # as `os.environ[...] = ...` in a cell
        clock.advance(1)  # env_recheck_s: the variables are looked at again at most once a second
        assert "openai" in router.providers
        assert any(c.provider == "openai" for c in router.explain("auto", "hi").order)
    finally:
        router.close()


def test_a_local_server_started_later_is_found_by_a_later_probe(sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbrouter.testing import ManualClock

    monkeypatch.setenv("NBROUTER_LOCAL_URLS", "ollama=http://127.0.0.1:9/v1")  # nothing listens there yet
    clock = ManualClock()
    router = Router(state_path=tmp_path / "s.db", clock=clock)
    try:
        assert router.providers == {}
        sim.models = ["llama3.2:3b"]
        monkeypatch.setenv("NBROUTER_LOCAL_URLS", f"ollama={sim.openai_url}")  # the server is up now
        clock.advance(29)
        assert router.providers == {}  # the last probe is recent: not probed again yet
        clock.advance(1)  # local_probe_refresh_s
        assert list(router.providers) == ["ollama"]
    finally:
        router.close()

"""Issue 14: credential refresh. An account's `api_key_command` (run without a shell, with a timeout, its
output never logged) or `api_key_provider` ("package.module:function") runs at first use and again on a
401, after which the attempt is retried once with the fresh key. Over real HTTP on loopback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nbrouter import ComboConfigError
from nbrouter.testing import Unauthorized

COUNTER_SCRIPT = (
    "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1 if p.exists() else 1; "
    "p.write_text(str(n)); print('cmd-key-%d' % n)"
)


def _config(sim: Any, account: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"p": {"protocol": "openai", "base_url": sim.openai_url, "accounts": [{"name": "a", **account}]}},
        "combos": {"c": {"targets": ["p/m"]}},
    }


def test_a_key_command_runs_at_first_use(sim, make_router, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    router = make_router(_config(sim, {"api_key_command": [sys.executable, "-c", COUNTER_SCRIPT, str(counter)]}))
    assert counter.exists() is False  # loading the config runs nothing
    router.complete("c", "hi")
    router.complete("c", "again")
    assert [r.key for r in sim.requests] == ["cmd-key-1", "cmd-key-1"]  # fetched once, then kept


def test_a_401_refreshes_the_key_and_retries_once(sim, make_router, tmp_path: Path) -> None:
    sim.script([Unauthorized()], key="cmd-key-1")
    counter = tmp_path / "n"
    router = make_router(_config(sim, {"api_key_command": [sys.executable, "-c", COUNTER_SCRIPT, str(counter)]}))
    result = router.complete("c", "hi")
    assert result.served_by == "p#a/m"
    assert [r.key for r in sim.requests] == ["cmd-key-1", "cmd-key-2"]
    assert [a.action.value for a in result.attempts] == ["retry", "served"]
    assert "retrying once with the new key" in result.attempts[0].message


def test_a_key_provider_function_is_called_and_refreshed(sim, make_router, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_keys.py").write_text("calls = []\ndef token():\n    calls.append(1)\n    return f'fn-key-{len(calls)}'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sim.script([Unauthorized()], key="fn-key-1")
    router = make_router(_config(sim, {"api_key_provider": "my_keys:token"}))
    result = router.complete("c", "hi")
    assert [r.key for r in sim.requests] == ["fn-key-1", "fn-key-2"] and result.served_by == "p#a/m"


def test_a_failing_key_command_is_an_auth_failure_that_never_shows_its_output(sim, make_router) -> None:
    leaked = "sk-should-never-be-seen-0123456789"
    command = [sys.executable, "-c", f"print({leaked!r}); raise SystemExit(3)"]
    router = make_router({
        "providers": {
            "p": {"protocol": "openai", "base_url": sim.openai_url, "accounts": [{"name": "a", "api_key_command": command}]},
            "q": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
        },
        "combos": {"c": {"targets": ["p/m", "q/m"]}},
    })
    result = router.complete("c", "hi")
    assert result.served_by == "q#default/m"
    failed = result.attempts[0]
    assert failed.kind.value == "auth" and "exited with status 3" in failed.message
    assert leaked not in repr(result.attempts) and leaked not in str(router.log(10))
    assert [r.key for r in sim.requests] == ["sim-test-key-0001"]  # nothing was sent for p


def test_a_fetched_key_is_never_logged_or_stored(sim, make_router, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    state = tmp_path / "state.sqlite3"
    router = make_router(_config(sim, {"api_key_command": [sys.executable, "-c", COUNTER_SCRIPT, str(counter)]}), state_path=state)
    sim.script([Unauthorized()], key="cmd-key-1")
    result = router.complete("c", "hi")
    router.state.flush()
    text = repr(result) + result.attempt_table() + str(router.log(10)) + repr(router.status())
    assert "cmd-key-" not in text
    assert b"cmd-key-" not in state.read_bytes()


@pytest.mark.parametrize("account, field", [
    ({"api_key_env": "X", "api_key_command": ["echo", "k"]}, "api_key_command"),
    ({"api_key_command": []}, "api_key_command"),
    ({"api_key_command": "echo k"}, "api_key_command"),
    ({"api_key_provider": "not a function path"}, "api_key_provider"),
])
def test_key_sources_are_validated(sim, make_router, account, field) -> None:
    with pytest.raises(ComboConfigError) as err:
        make_router(_config(sim, account))
    assert field in (err.value.field or "")

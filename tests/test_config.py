"""routing.md section 2 (resolving a combo) and the configuration file: loading, validation, saving."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nbrouter import ComboConfigError, Router
from nbrouter.router.combos import combo_for, resolve

BASE = """
# my providers
[providers.openai]
preset = "openai"
models = ["gpt-4o-mini", "gpt-4o"]

[providers.kr]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"

[[providers.kr.accounts]]
name = "work"
api_key_env = "KR_WORK"
tier = "pro"
quota = { requests_per_minute = 20 }

[[providers.kr.accounts]]
name = "home"
api_key_env = "KR_HOME"

[policy]
rate_limit_cooldown_s = 45   # shorter than the default

[prices."kr/claude-sonnet-4.5"]
input_per_mtok = 3.0
output_per_mtok = 15.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_config_file_from_nbrouter_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE + '\n[combos.fast]\ntargets = ["kr/claude-sonnet-4.5", "openai/gpt-4o-mini"]\n')
    monkeypatch.setenv("NBROUTER_CONFIG", str(path))
    router = Router(persist=False)
    try:
        assert router.config.path == path
        assert list(router.combos) == ["fast"]
        assert router.policy.rate_limit_cooldown_s == 45
        assert router.config.prices["kr/claude-sonnet-4.5"] == (3.0, 15.0)
        assert [a.name for a in router.config.providers["kr"].accounts] == ["work", "home"]
        assert router.config.providers["kr"].accounts[0].quota.requests_per_minute == 20
    finally:
        router.close()


def test_nested_combos_expand_depth_first_and_keep_their_path() -> None:
    router = Router(
        {
            "providers": {"kr": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}, "free": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "combos": {
                "free-only": {"targets": ["free/llama-3", "free/qwen"]},
                "premium": {"targets": ["kr/claude-sonnet-4.5", "free-only", "kr/gpt-4o"]},
            },
        },
        persist=False,
    )
    try:
        cands = resolve(router.config, combo_for(router.config, "premium"))
        assert [c.path_text for c in cands] == [
            "premium > kr#default/claude-sonnet-4.5",
            "premium > free-only > free#default/llama-3",
            "premium > free-only > free#default/qwen",
            "premium > kr#default/gpt-4o",
        ]
    finally:
        router.close()


def test_target_without_account_means_every_account(tmp_path: Path) -> None:
    router = Router(write(tmp_path, BASE + '\n[combos.c]\ntargets = ["kr/m", "kr#home/n"]\n'), persist=False)
    try:
        keys = [c.key for c in resolve(router.config, router.config.combos["c"])]
        assert keys == ["kr#work/m", "kr#home/m", "kr#home/n"]
    finally:
        router.close()


def test_model_id_may_contain_slashes() -> None:
    router = Router({"providers": {"openrouter": {"preset": "openrouter"}}, "combos": {"c": {"targets": ["openrouter/anthropic/claude-sonnet-4.5"]}}}, persist=False)
    try:
        (cand,) = resolve(router.config, router.config.combos["c"])
        assert (cand.provider, cand.model) == ("openrouter", "anthropic/claude-sonnet-4.5")
    finally:
        router.close()


@pytest.mark.parametrize(
    "combos, fragment",
    [
        ({"a": {"targets": ["b"]}, "b": {"targets": ["a"]}}, "cycle: a > b > a"),
        ({"a": {"targets": ["a"]}}, "cycle: a > a"),
        ({"a": {"targets": ["b"]}, "b": {"targets": ["c"]}, "c": {"targets": ["d"]}, "d": {"targets": ["p/m"]}}, "nesting deeper than 3: a > b > c > d"),
    ],
    ids=["cycle", "self-reference", "depth-4"],
)
def test_cycles_and_depth_over_three_are_refused_at_load_with_the_path(tmp_path: Path, combos: dict, fragment: str) -> None:
    import tomlkit

    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps({"providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1"}}, "combos": combos}))
    with pytest.raises(ComboConfigError) as err:
        Router(path, persist=False)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_depth_three_is_allowed() -> None:
    config = {
        "providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1"}},
        "combos": {"a": {"targets": ["b"]}, "b": {"targets": ["c"]}, "c": {"targets": ["p/m"]}},
    }
    router = Router(config, persist=False)
    try:
        assert [c.path_text for c in resolve(router.config, router.config.combos["a"])] == ["a > b > c > p#default/m"]
    finally:
        router.close()


@pytest.mark.parametrize(
    "combo, field, fragment",
    [
        ({"targets": ["nope/m"]}, "targets[0]", "unknown provider 'nope'"),
        ({"targets": ["ghost"]}, "targets[0]", "unknown combo 'ghost'"),
        ({"targets": []}, "targets", "non-empty"),
        ({"targets": ["p/m"], "strategy": "fastest-ever"}, "strategy", "unknown strategy"),
        ({"targets": [{"target": "p/m", "weight": -1}]}, "targets[0].weight", "non-negative"),
        ({"targets": [{"target": "p/m", "weight": 0}]}, "targets.weight", "all zero"),
        ({"targets": ["p/m"], "max_attempts": "ten"}, "max_attempts", "positive integer"),
        ({"targets": ["p/m"], "timeout_s": -2}, "timeout_s", "positive number"),
        ({"targets": ["p/m"], "fallback_on": ["rate_limit", "oops"]}, "fallback_on", "unknown error kind"),
        ({"targets": ["p/m"], "when_all_cooling": "sometimes"}, "when_all_cooling", "fail"),
        ({"targets": ["p#nobody/m"]}, "targets[0]", "unknown account 'nobody'"),
        ({"targets": ["p/m"], "colour": "red"}, "colour", "unknown field"),
    ],
    ids=["unknown-provider", "unknown-combo", "empty", "unknown-strategy", "negative-weight", "zero-weights",
         "bad-type", "bad-timeout", "bad-kind", "bad-when", "unknown-account", "unknown-field"],
)
def test_bad_combo_is_a_config_error_naming_file_combo_and_field(tmp_path: Path, combo: dict, field: str, fragment: str) -> None:
    import tomlkit

    path = tmp_path / "config.toml"
    path.write_text(tomlkit.dumps({"providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1"}}, "combos": {"broken": combo}}))
    with pytest.raises(ComboConfigError) as err:
        Router(path, persist=False)
    e = err.value
    assert (e.file, e.combo, e.field) == (str(path), "broken", field)
    assert fragment in str(e)
    assert str(path) in str(e) and "'broken'" in str(e)


@pytest.mark.parametrize(
    "text, field",
    [
        ('[providers.x]\nprotocol = "smtp"\nbase_url = "http://a/v1"\n', "providers.x.protocol"),
        ('[providers.x]\npreset = "nonesuch"\n', "providers.x.preset"),
        ('[providers.x]\nprotocol = "openai"\nbase_url = "ftp://a"\n', "providers.x.base_url"),
        ('[[providers.x.accounts]]\nname = "a"\ntier = "gold"\n[providers.x]\n', None),
        ('[policy]\nbreaker_failures = -1\n', "policy.breaker_failures"),
        ('[policy]\nno_such_constant = 1\n', "policy.no_such_constant"),
        ('[prices."a/b"]\ninput_per_mtok = 1\n', "prices.a/b.output_per_mtok"),
    ],
    ids=["protocol", "preset", "url", "tier", "policy-value", "policy-name", "price"],
)
def test_bad_provider_policy_or_price_names_the_field(tmp_path: Path, text: str, field: str | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ComboConfigError) as err:
        Router(path, persist=False)
    assert str(path) in str(err.value)
    if field:
        assert err.value.field == field


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[combos\n")
    with pytest.raises(ComboConfigError, match="not valid TOML") as err:
        Router(path, persist=False)
    assert err.value.file == str(path)


def test_save_combo_keeps_comments_and_other_tables_and_writes_0600(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    router = Router(path, persist=False)
    try:
        router.save_combo("fast", ["kr#work/claude-sonnet-4.5", {"target": "openai/gpt-4o-mini", "weight": 2}], strategy="round-robin", sticky=2, max_attempts=3)
        text = path.read_text()
        assert "# my providers" in text and "# shorter than the default" in text
        assert "[prices.\"kr/claude-sonnet-4.5\"]" in text
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        fresh = Router(path, persist=False)
        try:
            combo = fresh.config.combos["fast"]
            assert combo.strategy == "round-robin" and combo.sticky == 2 and combo.max_attempts == 3
            assert [s.ref for s in combo.steps] == ["kr#work/claude-sonnet-4.5", "openai/gpt-4o-mini"]
            assert combo.steps[1].weight == 2
        finally:
            fresh.close()
        router.delete_combo("fast")
        assert "fast" not in Router(path, persist=False).combos
        assert "# my providers" in path.read_text()
    finally:
        router.close()


def test_save_combo_refuses_a_cycle_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[combos.a]\ntargets = ["kr/m"]\n')
    router = Router(path, persist=False)
    try:
        router.save_combo("b", ["a"])
        before = path.read_text()
        with pytest.raises(ComboConfigError, match="cycle: a > b > a"):
            router.save_combo("a", ["b"])
        assert path.read_text() == before
        assert [s.ref for s in router.config.combos["a"].steps] == ["kr/m"]
    finally:
        router.close()


def test_delete_combo_used_by_another_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[combos.a]\ntargets = ["kr/m"]\n[combos.b]\ntargets = ["a"]\n')
    router = Router(path, persist=False)
    try:
        with pytest.raises(ComboConfigError, match="use it"):
            router.delete_combo("a")
    finally:
        router.close()


def test_keys_are_never_written_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_WORK", "sk-secret-never-written-123456")
    path = write(tmp_path, BASE)
    router = Router(path, persist=False)
    try:
        router.save_combo("x", ["kr/m"])
        assert "sk-secret" not in path.read_text()
    finally:
        router.close()


def test_unknown_combo_at_request_time_is_a_config_error() -> None:
    router = Router({"providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1"}}, "combos": {"a": {"targets": ["p/m"]}}}, persist=False)
    try:
        with pytest.raises(ComboConfigError, match="no combo named 'b'"):
            router.explain("b", "hi")
        decision = router.explain("p/other-model", "hi")
        assert [c.key for c in decision.order] == ["p#default/other-model"]
    finally:
        router.close()


def test_a_saved_auto_combo_without_targets_contributes_its_pool_when_nested() -> None:
    config = {
        "providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1", "models": ["m1", "m2"]}},
        "combos": {"smart": {"strategy": "auto", "candidate_pool": ["p"]}, "outer": {"targets": ["smart", "p/m3"]}},
    }
    router = Router(config, persist=False)
    try:
        keys = [c.path_text for c in resolve(router.config, router.config.combos["outer"])]
        assert keys == ["outer > smart > p#default/m1", "outer > smart > p#default/m2", "outer > p#default/m3"]
    finally:
        router.close()


@pytest.mark.parametrize("name", ["two words", "a/b", "x#y"])
def test_a_combo_name_is_one_word(name: str) -> None:
    config = {"providers": {"p": {"protocol": "openai", "base_url": "http://x.invalid/v1"}}, "combos": {name: {"targets": ["p/m"]}}}
    with pytest.raises(ComboConfigError) as err:
        Router(config, persist=False)
    assert err.value.field == "name" and err.value.combo == name


def test_a_draft_combo_can_be_tried_before_it_is_saved(sim, make_router) -> None:
    from conftest import sim_config

    router = make_router(sim_config(sim, {}))
    draft = router.validate_combo("draft", ["sim/a", "sim/b"])
    assert "draft" not in router.combos
    result = router.complete(draft, "hi")
    assert result.served_by == "sim#default/a" and result.combo == "draft"
    assert "draft" in repr(router.explain(draft, "hi"))

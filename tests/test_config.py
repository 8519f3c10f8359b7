"""routing.md section 2 (resolving a combo) and the configuration file: loading, validation, saving."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nbrouter import ComboConfigError, Router
from nbrouter.router.decide.combos import combo_for, resolve

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
        ({"targets": ["p/m"], "colour": "red"}, "colour", "unknown key 'colour'"),
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


# ---- every field typed and range-checked: one real file per mistake, loaded through Router(path) --------

P = '[providers.p]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["m", "m2"]\n'
PA = '[providers.p]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n[[providers.p.accounts]]\nname = "a"\n'
C = P + '[combos.c]\ntargets = ["p/m"]\n'
AUTO = P + '[combos.c]\nstrategy = "auto"\n'

#: (id, file text, combo named, field named, what the message says)
BAD_FILES: list[tuple[str, str, str | None, str | None, str]] = [
    # the top level
    ("top-unknown-key", "provders = {}\n" + P, None, "provders", "unknown key 'provders' in the top level of the file (did you mean 'providers'?)"),
    ("top-log-content-string", 'log_content = "false"\n' + P, None, "log_content", "must be true or false, not the string 'false' (TOML booleans take no quotes)"),
    ("top-state-path-int", "state_path = 5\n" + P, None, "state_path", "must be a file path (a non-empty string), not 5"),
    ("top-providers-not-table", "providers = 3\n", None, "providers", "must be a table, not 3"),
    ("top-invalid-toml", "[combos\n", None, None, "not valid TOML"),
    # providers
    ("provider-enabled-string", P + 'enabled = "no"\n', None, "providers.p.enabled", "must be true or false, not the string 'no'"),
    ("provider-managed-string", P + 'managed = "false"\n', None, "providers.p.managed", "must be true or false, not the string 'false'"),
    ("provider-local-string", P + 'local = "false"\n', None, "providers.p.local", "must be true or false, not the string 'false'"),
    ("provider-header-table", P + "headers = { X-Title = { a = 1 } }\n", None, "providers.p.headers.X-Title", "a header value must be a string, not a table"),
    ("provider-header-int", P + "headers = { X-Retries = 3 }\n", None, "providers.p.headers.X-Retries", "a header value must be a string, not 3"),
    ("provider-header-name", P + 'headers = { "X Title" = "nb" }\n', None, "providers.p.headers.X Title", "'X Title' is not an HTTP header name"),
    ("provider-prices-id-int", P + "prices_id = 3\n", None, "providers.p.prices_id", "must be a genai-prices provider id (a non-empty string), not 3"),
    ("provider-model-path-int", P + "model_path = 7\n", None, "providers.p.model_path", "must be a file path (a non-empty string), not 7"),
    ("provider-unknown-key", P + 'bse_url = "http://x/v1"\n', None, "providers.p.bse_url", "unknown key 'bse_url' in provider 'p' (did you mean 'base_url'?)"),
    ("provider-protocol-typo", '[providers.p]\nprotocol = "opnai"\nbase_url = "http://x/v1"\n', None, "providers.p.protocol", "unknown protocol 'opnai' (did you mean 'openai'?"),
    ("provider-preset-typo", '[providers.p]\npreset = "openia"\n', None, "providers.p.preset", "unknown preset 'openia' (did you mean 'openai'?"),
    ("provider-url-scheme", '[providers.p]\nprotocol = "openai"\nbase_url = "ftp://x/v1"\n', None, "providers.p.base_url", "must be an http(s) URL such as"),
    ("provider-url-no-host", '[providers.p]\nprotocol = "openai"\nbase_url = "http://"\n', None, "providers.p.base_url", "must be an http(s) URL such as"),
    ("provider-url-int", '[providers.p]\nprotocol = "openai"\nbase_url = 80\n', None, "providers.p.base_url", "must be an http(s) URL (a string), not 80"),
    ("provider-no-protocol", '[providers.p]\nbase_url = "http://x/v1"\n', None, "providers.p.protocol", "provider 'p' needs a `preset` or a `protocol` and `base_url`"),
    ("provider-no-base-url", '[providers.p]\nprotocol = "openai"\n', None, "providers.p.base_url", "provider 'p' needs a `base_url`"),
    ("provider-env-name", P + 'api_key_env = "MY KEY"\n', None, "providers.p.api_key_env", "must be the name of an environment variable"),
    ("provider-models-string", '[providers.p]\nprotocol = "openai"\nbase_url = "http://x/v1"\nmodels = "m"\n', None, "providers.p.models", "must be an array of model ids, not the string 'm'"),
    ("provider-models-empty-id", '[providers.p]\nprotocol = "openai"\nbase_url = "http://x/v1"\nmodels = ["m", ""]\n', None, "providers.p.models", "item 2 is the string ''"),
    ("provider-models-twice", '[providers.p]\nprotocol = "openai"\nbase_url = "http://x/v1"\nmodels = ["m", "m"]\n', None, "providers.p.models", "model 'm' is listed twice"),
    ("provider-window-zero", P + "context_window = { m = 0 }\n", None, "providers.p.context_window.m", "must be a positive integer (tokens), not 0"),
    ("provider-window-both", P + "context_window = { m = 8 }\ncontext_windows = { m = 8 }\n", None, "providers.p.context_windows", "not both"),
    ("provider-command-empty", P + "server_command = []\n", None, "providers.p.server_command", "the array is empty"),
    ("provider-command-string", P + 'server_command = "llama-server"\n', None, "providers.p.server_command", "must be an array of strings (the program and its arguments), not the string 'llama-server'"),
    ("provider-tier", P + 'tier = "gold"\n', None, "providers.p.tier", "unknown tier 'gold' (known: free, standard, pro, ultra)"),
    ("provider-quota-zero", P + "quota = { requests_per_minute = 0 }\n", None, "providers.p.quota.requests_per_minute", "must be a positive integer, not 0"),
    ("provider-quota-typo", P + "quota = { request_per_minute = 5 }\n", None, "providers.p.quota.request_per_minute", "unknown key 'request_per_minute' in the quota of provider 'p' (did you mean 'requests_per_minute'?)"),
    ("provider-name-space", '[providers."my p"]\nprotocol = "openai"\nbase_url = "http://x/v1"\n', None, "providers.my p", "may not be empty or contain spaces"),
    # accounts
    ("account-and-provider-key", PA.replace("base_url", 'api_key_env = "K"\nbase_url'), None, "providers.p.api_key_env",
     "provider 'p' lists `accounts`: `api_key_env` belongs in each [[providers.p.accounts]] entry"),
    ("accounts-empty", '[providers.p]\nprotocol = "openai"\nbase_url = "http://x/v1"\naccounts = []\n', None, "providers.p.accounts", "must be a non-empty array of tables ([[providers.p.accounts]]), not an empty array"),
    ("account-no-name", '[providers.p]\nprotocol = "openai"\nbase_url = "http://x/v1"\n[[providers.p.accounts]]\napi_key_env = "K"\n', None, "providers.p.accounts[0].name", "provider 'p' account 1 needs a `name` without spaces, '/' or '#', and has none"),
    ("account-twice", PA + '[[providers.p.accounts]]\nname = "a"\n', None, "providers.p.accounts[1].name", "duplicate account name 'a' in provider 'p'"),
    ("account-unknown-key", PA + 'api_key = "K"\n', None, "providers.p.accounts[0].api_key", "unknown key 'api_key' in provider 'p' account 'a' (did you mean 'api_key_env'?)"),
    ("account-tier", PA + 'tier = "prro"\n', None, "providers.p.accounts[0].tier", "unknown tier 'prro' (did you mean 'pro'?"),
    ("account-quota-float", PA + "quota = { tokens_per_day = 1.5 }\n", None, "providers.p.accounts[0].quota.tokens_per_day", "must be a positive integer, not 1.5"),
    # policy
    ("policy-timeout-zero", P + "[policy]\nattempt_timeout_s = 0\n", None, "policy.attempt_timeout_s", "must be a positive number, not 0"),
    ("policy-breaker-zero", P + "[policy]\nbreaker_failures = 0\n", None, "policy.breaker_failures", "must be a positive integer, not 0"),
    ("policy-depth-zero", P + "[policy]\nmax_depth = 0\n", None, "policy.max_depth", "must be a positive integer, not 0"),
    ("policy-attempts-float", P + "[policy]\nmax_attempts = 2.5\n", None, "policy.max_attempts", "must be a positive integer, not 2.5"),
    ("policy-rate-above-one", P + "[policy]\nauto_explore_rate = 1.5\n", None, "policy.auto_explore_rate", "must be a number from 0 to 1, not 1.5"),
    ("policy-alpha-zero", P + "[policy]\nlatency_ewma_alpha = 0\n", None, "policy.latency_ewma_alpha", "must be a number from 0 (excluded) to 1, not 0"),
    ("policy-string", P + '[policy]\nrate_limit_cooldown_s = "90"\n', None, "policy.rate_limit_cooldown_s", "must be a non-negative number, not the string '90'"),
    ("policy-typo", P + "[policy]\nbreaker_failurs = 3\n", None, "policy.breaker_failurs", "unknown key 'breaker_failurs' in [policy] (did you mean 'breaker_failures'?)"),
    ("policy-weights-typo", P + "[policy]\nauto_weights = { cots = 1 }\n", None, "policy.auto_weights.cots", "unknown key 'cots' in [policy] auto_weights (did you mean 'cost'?)"),
    ("policy-score-above-one", P + "[policy]\nauto_tier_scores = { pro = 2 }\n", None, "policy.auto_tier_scores.pro", "must be a number from 0 to 1, not 2"),
    ("policy-exclude-over-cap", P + "[policy]\nauto_exclude_s = 4000\n", None, "policy.auto_exclude_s", "auto_exclude_s (4000) may not exceed auto_exclude_cap_s (1800)"),
    # prices and task fit
    ("price-typo", P + '[prices."p/m"]\ninput_per_mtoks = 1\noutput_per_mtok = 2\n', None, "prices.p/m.input_per_mtoks", "unknown key 'input_per_mtoks' in [prices.'p/m'] (did you mean 'input_per_mtok'?)"),
    ("price-no-model", P + '[prices.p]\ninput_per_mtok = 1\noutput_per_mtok = 2\n', None, "prices.p", "a price is for a target `provider/model`, not 'p'"),
    ("price-unknown-provider", P + '[prices."q/m"]\ninput_per_mtok = 1\noutput_per_mtok = 2\n', None, "prices.q/m", "unknown provider 'q' in 'q/m'"),
    ("price-negative", P + '[prices."p/m"]\ninput_per_mtok = -1\noutput_per_mtok = 2\n', None, "prices.p/m.input_per_mtok", "must be a non-negative number (USD per million tokens), not -1"),
    ("task-fit-string", P + '[task_fit]\ncoding = "*coder*"\n', None, "task_fit.coding", "must be an array of model-name patterns, not the string '*coder*'"),
    # steps
    ("step-key-typo", P + '[combos.spread]\ntargets = [{ target = "p/m", wieght = 3 }]\n', "spread", "targets[0].wieght", "unknown key 'wieght' in combo 'spread' step 1 (did you mean 'weight'?)"),
    ("step-target-and-combo", P + '[combos.c]\ntargets = [{ target = "p/m", combo = "d" }]\n', "c", "targets[0]", "combo 'c' step 1: an inline table needs `target = \"provider/model\"` or `combo = \"name\"` (one of them)"),
    ("step-no-target", P + '[combos.c]\ntargets = [{ weight = 2 }]\n', "c", "targets[0]", "(one of them)"),
    ("step-weight-string", P + '[combos.c]\ntargets = [{ target = "p/m", weight = "3" }]\n', "c", "targets[0].weight", "must be a non-negative number, not the string '3'"),
    ("step-temperature", P + '[combos.c]\ntargets = [{ target = "p/m", temperature = 5 }]\n', "c", "targets[0].temperature", "must be a number from 0 to 2, not 5"),
    ("step-max-tokens", P + '[combos.c]\ntargets = [{ target = "p/m", max_tokens = 0 }]\n', "c", "targets[0].max_tokens", "must be a positive integer (tokens), not 0"),
    ("step-not-string", P + "[combos.c]\ntargets = [5]\n", "c", "targets[0]", "combo 'c' step 1 must be a string or an inline table, not 5"),
    ("step-combo-is-target", P + '[combos.c]\ntargets = [{ combo = "p/m" }]\n', "c", "targets[0].combo", "'p/m' is a target: write `target = 'p/m'`"),
    ("step-provider-typo", P + '[combos.c]\ntargets = ["pp/m"]\n', "c", "targets[0]", "unknown provider 'pp' in 'pp/m' (did you mean 'p'?"),
    # combos
    ("combo-key-typo", P + '[combos.c]\ntarget = ["p/m"]\n', "c", "target", "unknown key 'target' in combo 'c' (did you mean 'targets'?)"),
    ("combo-strategy-typo", C + 'strategy = "fastst"\n', "c", "strategy", "unknown strategy 'fastst' (did you mean 'fastest'?"),
    ("combo-account-strategy", C + 'account_strategy = "fill_first"\n', "c", "account_strategy", "unknown account strategy 'fill_first' (did you mean 'fill-first'?"),
    ("combo-fallback-preset", C + 'fallback_on = "transiet"\n', "c", "fallback_on", "unknown fallback_on preset 'transiet' (did you mean 'transient'?)"),
    ("combo-fallback-kind", C + 'fallback_on = ["rate_limt"]\n', "c", "fallback_on", "unknown error kind 'rate_limt' (did you mean 'rate_limit'?"),
    ("combo-fallback-table", C + "fallback_on = { rate_limit = true }\n", "c", "fallback_on", "must be an array of error kinds or one of 'transient', 'all', not a table"),
    ("combo-sticky-zero", C + "sticky = 0\n", "c", "sticky", "must be a positive integer, not 0"),
    ("combo-sticky-bool", C + "sticky = true\n", "c", "sticky", "must be a positive integer, not true"),
    ("combo-deadline-zero", C + "deadline_s = 0\n", "c", "deadline_s", "must be a positive number (seconds), not 0"),
    ("combo-max-wait-negative", C + "max_wait_s = -1\n", "c", "max_wait_s", "must be a non-negative number (seconds), not -1"),
    ("combo-timeout-inf", C + "timeout_s = inf\n", "c", "timeout_s", "must be a positive number (seconds), not inf"),
    ("combo-when-typo", C + 'when_all_cooling = "wiat"\n', "c", "when_all_cooling", "must be \"fail\" or \"wait\", not the string 'wiat'"),
    ("combo-description-int", C + "description = 3\n", "c", "description", "must be a description (a non-empty string), not 3"),
    ("combo-weights-not-auto", C + "weights = { cost = 1 }\n", "c", "weights", "`weights` only applies to strategy = \"auto\" (this combo's strategy is 'priority')"),
    ("combo-pool-not-auto", C + 'candidate_pool = ["p"]\n', "c", "candidate_pool", "`candidate_pool` only applies to strategy = \"auto\""),
    ("combo-pack-typo", AUTO + 'pack = "cost-saving"\n', "c", "pack", "unknown pack 'cost-saving' (did you mean 'cost-saver'?"),
    ("combo-weights-negative", AUTO + "weights = { cost = -1 }\n", "c", "weights.cost", "must be a non-negative number, not -1"),
    ("combo-weights-typo", AUTO + "weights = { latncy = 1 }\n", "c", "weights.latncy", "unknown key 'latncy' in the weights of combo 'c' (did you mean 'latency'?)"),
    ("combo-weights-all-zero", AUTO + "weights = { " + ", ".join(f"{f} = 0" for f in ("health", "quota", "cost", "latency", "task_fit", "specificity", "stability", "tier", "tier_affinity")) + " }\n",
     "c", "weights", "weights are all zero with the default weights underneath"),
    ("combo-pool-provider", AUTO + 'candidate_pool = ["q"]\n', "c", "candidate_pool", "unknown provider 'q' in 'q'"),
    ("combo-pool-account", AUTO + 'candidate_pool = ["p#nobody"]\n', "c", "candidate_pool", "unknown account 'nobody' of provider 'p' in 'p#nobody'"),
    ("combo-unknown-ref", P + '[combos.fast]\ntargets = ["p/m"]\n[combos.c]\ntargets = ["fsat"]\n', "c", "targets[0]", "unknown combo 'fsat' (did you mean 'fast'? known combos: c, fast)"),
    ("combo-name-reserved", P + '[combos.auto]\ntargets = ["p/m"]\n', "auto", "name", "this name is empty or reserved for a virtual combo"),
    ("combo-not-table", P + "[combos]\nc = 3\n", "c", "combos", "must be a table, not 3"),
    ("combo-retries-kind", C + "retries = { sever_error = 1 }\n", "c", "retries.sever_error", "no retries for kind 'sever_error' (did you mean 'server_error'? retriable:"),
    ("combo-retries-negative", C + "retries = { timeout = -1 }\n", "c", "retries.timeout", "must be a non-negative integer, not -1"),
    ("policy-retries-float", P + "[policy]\nretries = { timeout = 0.5 }\n", None, "policy.retries.timeout", "must be a non-negative integer, not 0.5"),
    ("router-unknown-key", '[router]\nemergncy = "c"\n' + C, None, "router.emergncy", "unknown key 'emergncy' in [router] (did you mean 'emergency'?)"),
    ("router-emergency-unknown", '[router]\nemergency = "cc"\n' + C, None, "router.emergency", "no combo or target 'cc' (did you mean 'c'? combos: c; or write provider/model)"),
    ("router-emergency-int", "[router]\nemergency = 1\n" + C, None, "router.emergency", "must be the name of a combo or a provider/model target (a non-empty string), not 1"),
]


def test_at_least_fifty_kinds_of_bad_file_are_tried() -> None:
    assert len(BAD_FILES) >= 50 and len({case[0] for case in BAD_FILES}) == len(BAD_FILES)


@pytest.mark.parametrize("text, combo, field, message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_refused_naming_file_combo_field_and_the_fix(tmp_path: Path, text: str, combo: str | None, field: str | None, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ComboConfigError) as err:
        Router(path, persist=False)
    e = err.value
    assert (e.file, e.combo, e.field) == (str(path), combo, field)
    assert message in str(e)
    assert str(e).startswith(f"file {path}")


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(P.encode() + b'[combos.c]\ntargets = ["p/caf\xe9"]\n')
    with pytest.raises(ComboConfigError) as err:
        Router(path, persist=False)
    assert err.value.file == str(path)
    assert "not UTF-8 text: byte 0xe9 on line 6 cannot be read; save the file as UTF-8" in str(err.value)


def test_a_byte_order_mark_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + C.encode())
    router = Router(path, persist=False)
    try:
        assert list(router.combos) == ["c"]
    finally:
        router.close()


def test_booleans_are_read_only_from_toml_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, "log_content = false\n" + P + "enabled = false\nlocal = true\n")
    router = Router(path, persist=False)
    try:
        assert router.config.log_content is False
        provider = router.config.providers["p"]
        assert provider.enabled is False and provider.local is True and provider.managed is False
    finally:
        router.close()


def test_a_dict_config_is_checked_like_a_file() -> None:
    with pytest.raises(ComboConfigError) as err:
        Router({"providers": {"p": {"protocol": "openai", "base_url": "http://x/v1", "enabled": "no"}}}, persist=False)
    assert (err.value.file, err.value.field) == ("<dict>", "providers.p.enabled")
    assert "must be true or false, not the string 'no'" in str(err.value)

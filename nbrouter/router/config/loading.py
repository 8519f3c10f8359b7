"""Loading and validating the configuration: providers, accounts, combos, policy overrides and prices,
from a TOML file or a dict of the same shape.

Every value is checked for its type and its range (a TOML string is never taken for a boolean, a zero
timeout is refused), every table refuses keys it does not know and suggests the nearest known one, and
every failure is a ComboConfigError naming the file, the combo (or the provider, in the field) and the
field. The data classes are in `model.py`; editing combos is in `editing.py`, writing them back in
`config_file.py`.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, NoReturn
from urllib.parse import urlsplit

from ...providers.presets import ENV_PRESETS, PRESETS, PROTOCOLS, Preset
from .file import combo_table, set_combo, write_document
from ..errors import ComboConfigError
from ..model import (
    ACCOUNT_FIELDS,
    BUDGET_FIELDS,
    CAPABILITY_FIELDS,
    COMBO_FIELDS,
    DEFAULT_ACCOUNT,
    PRICE_FIELDS,
    PROVIDER_FIELDS,
    QUOTA_FIELDS,
    ROUTER_FIELDS,
    STATE_FIELDS,
    STATE_ON_DOWN,
    STEP_FIELDS,
    TIERS,
    TOP_LEVEL_FIELDS,
    Account,
    BudgetSettings,
    Capabilities,
    Combo,
    Config,
    Provider,
    Quota,
    StateSettings,
    Step,
    parse_target,
)
from ..state.shared_redis import parse_redis_url
from ..decide.budget import BUDGET_PER, ON_BUDGET
from ..decide.packs import FACTORS, PACKS, VIRTUAL_COMBOS
from ..keys import KeySource
from ..policy import Policy
from ..decide.strategies import ACCOUNT_STRATEGIES, STRATEGIES
from ..._core import ErrorKind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: names other modules import from here (the data classes live in model.py, the writers in config_file.py)
__all__ = [
    "load_config", "build_config", "validate_graph", "default_config_path", "environment_providers", "local_provider",
    "parse_target", "Quota", "Account", "Provider", "Step", "Combo", "Config", "QUOTA_FIELDS", "COMBO_FIELDS",
    "PROVIDER_FIELDS", "TIERS", "DEFAULT_ACCOUNT", "VIRTUAL_COMBOS", "FALLBACK_PRESETS", "combo_table",
    "write_document", "set_combo",
]

#: `fallback_on = "transient"` or `"all"`: named sets of error kinds, besides an explicit array
FALLBACK_PRESETS: dict[str, frozenset[ErrorKind]] = {
    "transient": frozenset({
        ErrorKind.RATE_LIMIT, ErrorKind.QUOTA_EXCEEDED, ErrorKind.SERVER_ERROR, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT,
        ErrorKind.NETWORK, ErrorKind.MODEL_NOT_FOUND, ErrorKind.ENDPOINT_NOT_FOUND, ErrorKind.UNSUPPORTED,
    }),
    "all": frozenset(ErrorKind),
}

#: `[policy]` constants with a narrower range than "a non-negative number": (minimum, maximum, minimum excluded)
POLICY_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "max_attempts": (1, None, False),
    "max_depth": (1, None, False),
    "attempt_timeout_s": (0, None, True),
    "stream_idle_timeout_s": (0, None, True),
    "sse_max_line_bytes": (1, None, False),
    "breaker_failures": (1, None, False),
    "breaker_window_s": (0, None, True),
    "breaker_open_s": (0, None, True),
    "breaker_max_multiplier": (1, None, False),
    "latency_ewma_alpha": (0, 1, True),
    "latency_samples": (1, None, False),
    "token_safety_margin": (1, None, False),
    "default_max_tokens_estimate": (1, None, False),
    "truncation_ratio": (0, 1, False),
    "auto_explore_rate": (0, 1, False),
    "auto_smart_explore_rate": (0, 1, False),
    "auto_min_score": (0, 1, False),
    "auto_incident_open_share": (0, 1, False),
    "auto_unknown_tier_score": (0, 1, False),
    "auto_unknown_quota_score": (0, 1, False),
    "auto_unknown_task_fit": (0, 1, False),
    "auto_stability_spread_share": (0, 1, False),
    "auto_task_scan_chars": (1, None, False),
    "retry_jitter": (0, 1, False),
    "relay_threshold": (0, 1, True),
    "relay_summary_messages": (1, None, False),
    "relay_summary_max_tokens": (1, None, False),
}
#: `[policy]` tables whose values are scores in [0, 1]
POLICY_SCORE_TABLES = ("auto_health_scores", "auto_tier_scores")
#: `[policy]` tables whose values are counts (non-negative integers)
POLICY_COUNT_TABLES = ("retries",)
#: pairs of `[policy]` constants where the first may not exceed the second
POLICY_ORDER = (("rate_limit_cooldown_s", "rate_limit_cooldown_cap_s"), ("auto_exclude_s", "auto_exclude_cap_s"),
                ("retry_backoff_s", "retry_backoff_cap_s"))
#: the kinds a combo's `retries` may name (the policy's `retries` table)
RETRIABLE = tuple(Policy().retries)

#: the portable reasoning efforts of a step's `reasoning` (or a budget in tokens)
REASONING_EFFORTS = ("low", "medium", "high")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def default_config_path() -> Path:
    """`NBROUTER_CONFIG` if set, else `config.toml` in the platform's user config dir for nbrouter."""
    env = os.environ.get("NBROUTER_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("nbrouter", appauthor=False)) / "config.toml"


def environment_providers() -> dict[str, Provider]:
    """Zero-config: one provider per preset whose usual key variable is set (OPENAI_API_KEY...)."""
    found: dict[str, Provider] = {}
    for name in ENV_PRESETS:
        preset = PRESETS[name]
        env = next((e for e in preset.api_key_env if os.environ.get(e)), None)
        if env is None:
            continue
        found[name] = Provider(
            name=name, protocol=preset.protocol, base_url=preset.base_url, accounts=[Account(DEFAULT_ACCOUNT, env)],
            preset=name, models=list(preset.default_models), prices_id=preset.prices_id, source=f"environment: {env}",
        )
    return found


def local_provider(preset_name: str, base_url: str, models: Iterable[str]) -> Provider:
    """A provider for a local server found listening (zero-config)."""
    preset = PRESETS[preset_name]
    return Provider(
        name=preset_name, protocol=preset.protocol, base_url=base_url, accounts=[Account(DEFAULT_ACCOUNT)],
        preset=preset_name, local=True, models=list(models), source=f"local server found at {base_url}",
    )


# ---- loading -----------------------------------------------------------------------------------


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | None = None, *, strategies: Iterable[str] | None = None) -> Config:
    """Load and validate a configuration from a path, a dict, or the default location.

    Args:
        source: a path to a TOML file, a dict of the same shape, or None for the default location.
        strategies: the strategy names a combo may use (default: the registry, `strategies.STRATEGIES`).
    """
    if isinstance(source, Mapping):
        return build_config(dict(source), path=None, strategies=strategies)
    path = Path(source).expanduser() if source is not None else default_config_path()
    if not path.exists():
        if source is not None:
            raise ComboConfigError(f"no such file: {path}", file=str(path))
        config = build_config({}, path=path, strategies=strategies)
        config.source = "environment"
        config.providers.update(environment_providers())
        return config
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ComboConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some Windows editors write, is fine
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ComboConfigError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be read; "
                               "save the file as UTF-8", file=str(path)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ComboConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    return build_config(raw, path=path, strategies=strategies)


def build_config(raw: dict[str, Any], *, path: Path | None, strategies: Iterable[str] | None = None) -> Config:
    """Validate a parsed TOML document into a Config.

    Args:
        raw: the parsed document.
        path: the file it came from (None for a dict), named in every error.
        strategies: the strategy names a combo may use (default: the registry, `strategies.STRATEGIES`).
    """
    label = str(path) if path else "<dict>"
    top = _At(label)
    _known_keys(raw, TOP_LEVEL_FIELDS, top, "the top level of the file")

    policy = _policy(raw.get("policy", {}), top.at("policy"))
    providers = {}
    for name, table in _table(raw.get("providers", {}), top.at("providers")).items():
        providers[name] = _provider(name, table, top.at(f"providers.{name}"))
    prices = _prices(raw.get("prices", {}), top.at("prices"), providers)
    task_fit = _task_fit(raw.get("task_fit", {}), top.at("task_fit"))
    strategy_names = set(STRATEGIES if strategies is None else strategies)
    combos = {}
    for name, table in _table(raw.get("combos", {}), top.at("combos")).items():
        combos[name] = _combo(name, table, _At(label, combo=name), providers, strategy_names, policy)
    log_content = _bool(raw["log_content"], top.at("log_content")) if "log_content" in raw else True
    state_path = _string(raw["state_path"], top.at("state_path"), "a file path") if "state_path" in raw else None
    emergency = _router_table(raw.get("router", {}), top.at("router"), providers, combos)
    state = _state_table(raw.get("state", {}), top.at("state"))
    budget = _budget_table(raw.get("budget", {}), top.at("budget"))
    config = Config(
        providers=providers, combos=combos, policy=policy, prices=prices, task_fit=task_fit, path=path, raw=raw,
        log_content=log_content, state_path=state_path, emergency=emergency, state=state, budget=budget,
    )
    validate_graph(config)
    return config


# ---- where a value sits, and the checks every field goes through ----------------------------------------


class _At:
    """Where a value sits in the file (file, combo, field): what an error about it names."""

    __slots__ = ("label", "combo", "field")

    def __init__(self, label: str, combo: str | None = None, field: str | None = None) -> None:
        self.label, self.combo, self.field = label, combo, field

    def at(self, field: str) -> _At:
        """The place of `field`, given in full (combo fields are relative to the combo)."""
        return _At(self.label, self.combo, field)

    def key(self, key: str) -> _At:
        """The place of `key` inside this table."""
        return _At(self.label, self.combo, f"{self.field}.{key}" if self.field else key)

    def fail(self, message: str) -> NoReturn:
        raise ComboConfigError(message, file=self.label, combo=self.combo, field=self.field)


def _did_you_mean(word: Any, known: Collection[str]) -> str:
    """`did you mean 'x'? ` for the known word nearest to `word`, or nothing when none is near."""
    close = difflib.get_close_matches(word, [str(k) for k in known], n=1, cutoff=0.6) if isinstance(word, str) else []
    return f"did you mean {close[0]!r}? " if close else ""


def _suggest(word: str, known: Collection[str]) -> str:
    """` (did you mean 'x'?)` for the nearest known word, else the known words."""
    hint = _did_you_mean(word, known)
    return f" ({hint[:-1]})" if hint else f" (known: {', '.join(sorted(known)) or 'none'})"


def _known_keys(table: Mapping[str, Any], known: Collection[str], at: _At, where: str) -> None:
    for key in table:
        if key not in known:
            at.key(key).fail(f"unknown key {key!r} in {where}{_suggest(key, known)}")


def _describe(value: Any) -> str:
    """A TOML value as an error message names it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date or time"
    return f"a {type(value).__name__}"


def _table(value: Any, at: _At) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        at.fail(f"must be a table, not {_describe(value)}")
    return dict(value)


def _bool(value: Any, at: _At) -> bool:
    if not isinstance(value, bool):
        hint = " (TOML booleans take no quotes)" if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "0", "1") else ""
        at.fail(f"must be true or false, not {_describe(value)}{hint}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any, at: _At, minimum: int = 1, unit: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer of at least {minimum}")
        at.fail(f"must be {wanted}{unit}, not {_describe(value)}")
    return value


def _number(value: Any, at: _At, *, minimum: float = 0.0, maximum: float | None = None, exclusive: bool = False,
            unit: str = "") -> float:
    ok = _is_number(value) and math.isfinite(value) and (value > minimum if exclusive else value >= minimum)
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if maximum is not None:
            wanted = f"a number from {minimum:g}{' (excluded)' if exclusive else ''} to {maximum:g}"
        elif minimum == 0:
            wanted = "a positive number" if exclusive else "a non-negative number"
        else:
            wanted = f"a number {'above' if exclusive else 'of at least'} {minimum:g}"
        at.fail(f"must be {wanted}{unit}, not {_describe(value)}")
    return float(value)


def _string(value: Any, at: _At, what: str = "a string") -> str:
    if not isinstance(value, str) or not value.strip():
        at.fail(f"must be {what} (a non-empty string), not {_describe(value)}")
    return value


def _strings(value: Any, at: _At, what: str) -> list[str]:
    if not isinstance(value, list):
        at.fail(f"must be an array of {what}, not {_describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            at.fail(f"must be an array of {what}: item {i + 1} is {_describe(item)}")
    return list(value)


def _choice(value: Any, known: Collection[str], at: _At, what: str) -> str:
    if not isinstance(value, str):
        at.fail(f"must be {what} (a string), not {_describe(value)}")
    if value not in known:
        hint = _did_you_mean(value, list(known))
        at.fail(f"unknown {what} {value!r} ({hint}known: {', '.join(known)})")
    return value


def _env_name(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        at.fail(f"must be the name of an environment variable (letters, digits, '_'), not {_describe(value)}")
    return value


# ---- [state] -----------------------------------------------------------------------------------


def _state_table(raw: Any, at: _At) -> StateSettings:
    """`[state]`: the shared state's store (a Redis URL, or the state file), key prefix, and what happens
    while it is away. A URL is checked here (scheme, host, port, database), never connected to."""
    table = _table(raw, at)
    _known_keys(table, STATE_FIELDS, at, "[state]")
    default = StateSettings()
    url = None
    if "url" in table:
        url = _string(table["url"], at.key("url"), "a Redis URL")
        parse_redis_url(url, where="[state] url", file=at.label)
    prefix = default.prefix
    if "prefix" in table:
        prefix = table["prefix"]
        if not isinstance(prefix, str) or any(c in prefix for c in "{} \t\r\n"):
            at.key("prefix").fail(f"must be a string without braces or spaces (put before every Redis key), not {_describe(prefix)}")
    on_down = _choice(table["on_down"], STATE_ON_DOWN, at.key("on_down"), "on_down mode") if "on_down" in table else default.on_down
    share = (_number(table["share"], at.key("share"), minimum=0.0, maximum=1.0, exclusive=True)
             if "share" in table else default.share)
    timeout_s = (_number(table["timeout_s"], at.key("timeout_s"), minimum=0.0, maximum=60.0, exclusive=True, unit=" (seconds)")
                 if "timeout_s" in table else default.timeout_s)
    return StateSettings(url=url, prefix=prefix, on_down=on_down, share=share, timeout_s=timeout_s)


# ---- [budget] ----------------------------------------------------------------------------------

#: a shared budget's name: it becomes part of a key in the store
_BUDGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def _budget_table(raw: Any, at: _At) -> BudgetSettings:
    """`[budget]`: the spending limit, what a call that does not fit does, and the name every kernel and
    machine that shares it counts it under."""
    table = _table(raw, at)
    _known_keys(table, BUDGET_FIELDS, at, "[budget]")
    usd = _number(table["usd"], at.key("usd"), unit=" (dollars)") if "usd" in table else None
    on_budget = _choice(table["on_budget"], ON_BUDGET, at.key("on_budget"), "on_budget mode") if "on_budget" in table else None
    strict = _bool(table["strict"], at.key("strict")) if "strict" in table else None
    shared = None
    if "shared" in table:
        shared = _string(table["shared"], at.key("shared"), "the budget's name")
        if not _BUDGET_NAME.fullmatch(shared):
            at.key("shared").fail(f"must be a name of letters, digits and '_.:-' (at most 64, a letter or digit first), "
                                  f"not {_describe(shared)}")
    per = _choice(table["per"], BUDGET_PER, at.key("per"), "window") if "per" in table else "total"
    if "per" in table and shared is None:
        at.key("per").fail("goes with `shared = \"NAME\"`: a session budget has no window (it lasts the session)")
    return BudgetSettings(usd=usd, on_budget=on_budget, strict=strict, shared=shared, per=per)


# ---- [router] ----------------------------------------------------------------------------------


def _router_table(raw: Any, at: _At, providers: Mapping[str, Provider], combos: Mapping[str, Combo]) -> str | None:
    """`[router]`: settings of the whole router; `emergency` names the last-resort combo or target."""
    table = _table(raw, at)
    _known_keys(table, ROUTER_FIELDS, at, "[router]")
    if "emergency" not in table:
        return None
    where = at.key("emergency")
    emergency = _string(table["emergency"], where, "the name of a combo or a provider/model target").strip()
    if emergency in combos or emergency in VIRTUAL_COMBOS:
        return emergency
    provider, account, model = parse_target(emergency)
    if "/" in emergency and provider in providers and model:
        if account is not None and providers[provider].account(account) is None:
            known = ", ".join(a.name for a in providers[provider].accounts)
            where.fail(f"unknown account {account!r} of provider {provider!r} (known: {known})")
        return emergency
    known = ", ".join(sorted(combos)) or "none defined"
    hint = _did_you_mean(emergency, list(combos))
    where.fail(f"no combo or target {emergency!r} ({hint}combos: {known}; or write provider/model)")


# ---- policy ------------------------------------------------------------------------------------


def _policy(raw: Any, at: _At) -> Policy:
    table = _table(raw, at)
    names = Policy.names()
    _known_keys(table, names, at, "[policy]")
    defaults = Policy()
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        where = at.key(key)
        default = getattr(defaults, key)
        if isinstance(default, dict):
            overrides[key] = _policy_table(key, value, default, where)
        elif isinstance(default, bool):
            overrides[key] = _bool(value, where)
        elif isinstance(default, int):
            minimum, maximum, _ = POLICY_RANGES.get(key, (0, None, False))
            overrides[key] = _int(value, where, minimum=int(minimum))
            if maximum is not None and value > maximum:
                where.fail(f"must be at most {maximum:g}, not {value!r}")
        else:
            minimum, maximum, exclusive = POLICY_RANGES.get(key, (0, None, False))
            overrides[key] = _number(value, where, minimum=minimum, maximum=maximum, exclusive=exclusive)
    merged = defaults.with_overrides(overrides)
    for low, high in POLICY_ORDER:
        if getattr(merged, low) > getattr(merged, high):
            name = low if low in table else high
            at.key(name).fail(f"{low} ({getattr(merged, low):g}) may not exceed {high} ({getattr(merged, high):g})")
    return merged


def _policy_table(key: str, value: Any, default: dict[str, float], at: _At) -> dict[str, float]:
    table = _table(value, at)
    _known_keys(table, default, at, f"[policy] {key}")
    out = dict(default)
    for name, number in table.items():
        if key in POLICY_COUNT_TABLES:
            out[name] = _int(number, at.key(name), minimum=0)
        else:
            out[name] = _number(number, at.key(name), maximum=1.0 if key in POLICY_SCORE_TABLES else None)
    if key == "auto_weights" and not any(out.values()):
        at.fail("weights are all zero: at least one factor needs a positive weight")
    return out


# ---- providers ---------------------------------------------------------------------------------


def _provider(name: str, raw: Any, at: _At) -> Provider:  # noqa: C901 - one check per field
    table = _table(raw, at)
    if not name.strip() or "/" in name or "#" in name or any(ch.isspace() for ch in name):
        at.fail(f"a provider name may not be empty or contain spaces, '/' or '#' (provider {name!r})")
    _known_keys(table, PROVIDER_FIELDS, at, f"provider {name!r}")
    preset: Preset | None = None
    if "preset" in table:
        preset = PRESETS[_choice(table["preset"], list(PRESETS), at.key("preset"), "preset")]
    elif name in PRESETS and "protocol" not in table:
        preset = PRESETS[name]
    if "protocol" in table:
        protocol = _choice(table["protocol"], list(PROTOCOLS), at.key("protocol"), "protocol")
    elif preset is not None:
        protocol = preset.protocol
    else:
        at.key("protocol").fail(f"provider {name!r} needs a `preset` or a `protocol` and `base_url`")
    base_url = table.get("base_url", preset.base_url if preset else None)
    if base_url is None:
        at.key("base_url").fail(f"provider {name!r} needs a `base_url` (its protocol {protocol!r} has no default)")
    _url(base_url, at.key("base_url"))
    local = _bool(table["local"], at.key("local")) if "local" in table else (preset.local if preset else False)

    accounts: list[Account] = []
    if "accounts" in table:
        for key in ("api_key_env", "api_key_command", "api_key_provider", "quota", "tier"):  # capabilities may be on both
            if key in table:
                at.key(key).fail(f"provider {name!r} lists `accounts`: `{key}` belongs in each [[providers.{name}.accounts]] entry")
        raw_accounts = table["accounts"]
        if not isinstance(raw_accounts, list) or not raw_accounts:
            at.key("accounts").fail(f"must be a non-empty array of tables ([[providers.{name}.accounts]]), not {_describe(raw_accounts)}")
        for i, acc in enumerate(raw_accounts):
            accounts.append(_account(acc, at.key(f"accounts[{i}]"), name, i, accounts))
    else:
        env = table.get("api_key_env")
        if env is None and preset and preset.api_key_env:
            env = next((e for e in preset.api_key_env if os.environ.get(e)), preset.api_key_env[0])
        elif env is not None:
            env = _env_name(env, at.key("api_key_env"))
        quota = _quota(table["quota"], at.key("quota"), f"the quota of provider {name!r}") if "quota" in table else Quota()
        tier = _choice(table["tier"], TIERS, at.key("tier"), "tier") if "tier" in table else None
        source = _key_source(table, at, f"provider {name!r}")
        accounts.append(Account(DEFAULT_ACCOUNT, None if source else env, quota, tier, key_source=source))

    models = _strings(table["models"], at.key("models"), "model ids") if "models" in table else []
    for i, model in enumerate(models):
        if model in models[:i]:
            at.key("models").fail(f"model {model!r} is listed twice")
    if "context_window" in table and "context_windows" in table:
        at.key("context_windows").fail("give `context_window` or `context_windows`, not both")
    window_key = "context_windows" if "context_windows" in table else "context_window"
    windows: dict[str, int] = {}
    for model, size in _table(table.get(window_key, {}), at.key(window_key)).items():
        windows[model] = _int(size, at.key(f"{window_key}.{model}"), unit=" (tokens)")
    headers: dict[str, str] = {}
    for header, value in _table(table.get("headers", {}), at.key("headers")).items():
        where = at.key(f"headers.{header}")
        if not _HEADER_NAME.fullmatch(header):
            where.fail(f"{header!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
        if not isinstance(value, str):
            where.fail(f"a header value must be a string, not {_describe(value)}")
        if "\r" in value or "\n" in value:
            where.fail("a header value may not contain a line break")
        headers[header] = value
    enabled = _bool(table["enabled"], at.key("enabled")) if "enabled" in table else True
    managed = _bool(table["managed"], at.key("managed")) if "managed" in table else False
    model_path = _string(table["model_path"], at.key("model_path"), "a file path") if "model_path" in table else None
    server_command = None
    if "server_command" in table:
        server_command = _strings(table["server_command"], at.key("server_command"), "strings (the program and its arguments)")
        if not server_command:
            at.key("server_command").fail("must name a program to run: the array is empty")
    capabilities = _capabilities(table["capabilities"], at.key("capabilities"), f"provider {name!r}") if "capabilities" in table else Capabilities()
    if "prices_id" in table:
        prices_id: str | None = _string(table["prices_id"], at.key("prices_id"), "a genai-prices provider id")
    else:
        prices_id = preset.prices_id if preset else None
    return Provider(
        name=name, protocol=protocol, base_url=base_url, accounts=accounts, preset=preset.name if preset else None,
        local=local, models=models, context_windows=windows, headers=headers, source=f"config file {at.label}",
        enabled=enabled, prices_id=prices_id, managed=managed, model_path=model_path, server_command=server_command,
        capabilities=capabilities,
    )


def _url(value: Any, at: _At) -> str:
    if not isinstance(value, str):
        at.fail(f"must be an http(s) URL (a string), not {_describe(value)}")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(ch.isspace() for ch in value):
        at.fail(f"must be an http(s) URL such as \"https://api.example.com/v1\", not {_describe(value)}")
    return value


def _account(raw: Any, at: _At, provider: str, index: int, before: list[Account]) -> Account:
    table = _table(raw, at)
    label = f"provider {provider!r} account {table['name']!r}" if isinstance(table.get("name"), str) else f"provider {provider!r} account {index + 1}"
    _known_keys(table, ACCOUNT_FIELDS, at, label)
    name = table.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name or "#" in name or any(ch.isspace() for ch in name):
        given = f"not {_describe(name)}" if name is not None else "and has none"
        at.key("name").fail(f"{label} needs a `name` without spaces, '/' or '#', {given}")
    if any(a.name == name for a in before):
        at.key("name").fail(f"duplicate account name {name!r} in provider {provider!r}")
    env = _env_name(table["api_key_env"], at.key("api_key_env")) if "api_key_env" in table else None
    quota = _quota(table["quota"], at.key("quota"), f"the quota of {label}") if "quota" in table else Quota()
    tier = _choice(table["tier"], TIERS, at.key("tier"), "tier") if "tier" in table else None
    capabilities = _capabilities(table["capabilities"], at.key("capabilities"), label) if "capabilities" in table else Capabilities()
    return Account(name=name, api_key_env=env, quota=quota, tier=tier, key_source=_key_source(table, at, label),
                   capabilities=capabilities)


def _capabilities(raw: Any, at: _At, label: str) -> Capabilities:
    """`capabilities = { vision = true, tools = false, json_schema = true }` for every model, and
    `"model-id" = { vision = false }` tables for one model (which win)."""
    table = _table(raw, at)
    flags: list[tuple[str, bool]] = []
    models: list[tuple[str, tuple[tuple[str, bool], ...]]] = []
    for key, value in table.items():
        where = at.key(key)
        if key in CAPABILITY_FIELDS:
            flags.append((key, _bool(value, where)))
        elif isinstance(value, Mapping):
            _known_keys(value, CAPABILITY_FIELDS, where, f"the capabilities of model {key!r} of {label}")
            models.append((key, tuple((name, _bool(flag, where.key(name))) for name, flag in value.items())))
        else:
            where.fail(f"unknown capability {key!r} of {label}{_suggest(key, CAPABILITY_FIELDS)}; a model's own "
                       f"capabilities are a table: \"{key}\" = {{ vision = false }}")
    return Capabilities(tuple(flags), tuple(models))


def _key_source(table: Mapping[str, Any], at: _At, label: str) -> KeySource | None:
    """`api_key_command = ["prog", "arg"]` or `api_key_provider = "package.module:function"` (one of them,
    and not with `api_key_env`)."""
    given = [k for k in ("api_key_env", "api_key_command", "api_key_provider") if k in table]
    if len(given) > 1:
        at.key(given[1]).fail(f"{label}: give one of `api_key_env`, `api_key_command` or `api_key_provider`, not {' and '.join(given)}")
    if "api_key_command" in table:
        argv = _strings(table["api_key_command"], at.key("api_key_command"), "the command and its arguments (no shell)")
        if not argv:
            at.key("api_key_command").fail("must name a program to run")
        return KeySource(command=tuple(argv))
    if "api_key_provider" in table:
        value = table["api_key_provider"]
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            at.key("api_key_provider").fail(f"must be \"package.module:function\", not {_describe(value)}")
        return KeySource(provider=value)
    return None


def _quota(raw: Any, at: _At, where: str) -> Quota:
    table = _table(raw, at)
    _known_keys(table, QUOTA_FIELDS, at, where)
    return Quota(**{key: _int(value, at.key(key)) for key, value in table.items()})


# ---- prices and task fit -----------------------------------------------------------------------


def _prices(raw: Any, at: _At, providers: Mapping[str, Provider]) -> dict[str, tuple[float, float]]:
    out = {}
    for target, value in _table(raw, at).items():
        where = at.key(target)
        table = _table(value, where)
        _known_keys(table, PRICE_FIELDS, where, f"[prices.{target!r}]")
        for key in PRICE_FIELDS:
            if key not in table:
                where.key(key).fail("needs input_per_mtok and output_per_mtok (USD per million tokens)")
        inp = _number(table["input_per_mtok"], where.key("input_per_mtok"), unit=" (USD per million tokens)")
        outp = _number(table["output_per_mtok"], where.key("output_per_mtok"), unit=" (USD per million tokens)")
        provider, _, model = parse_target(target)
        if "/" not in target or not model or "#" in target.partition("/")[0]:
            where.fail(f"a price is for a target `provider/model`, not {target!r}")
        if provider not in providers:
            where.fail(f"unknown provider {provider!r} in {target!r}{_suggest(provider, providers)}")
        out[target] = (inp, outp)
    return out


def _task_fit(raw: Any, at: _At) -> dict[str, list[str]]:
    return {task: _strings(patterns, at.key(task), "model-name patterns") for task, patterns in _table(raw, at).items()}


# ---- combos ------------------------------------------------------------------------------------


def _combo(name: str, raw: Any, at: _At, providers: dict[str, Provider], strategies: set[str], policy: Policy) -> Combo:  # noqa: C901
    table = _table(raw, _At(at.label, name, "combos"))
    if not name or name in VIRTUAL_COMBOS:
        at.at("name").fail("this name is empty or reserved for a virtual combo")
    if any(ch.isspace() for ch in name) or "/" in name or "#" in name:
        at.at("name").fail("a combo name may not contain spaces, '/' or '#' (`%%llm NAME` reads one word)")
    _known_keys(table, COMBO_FIELDS, at, f"combo {name!r}")
    strategy = _choice(table.get("strategy", "priority"), sorted(strategies) if strategies else [table.get("strategy", "priority")],
                       at.at("strategy"), "strategy")
    raw_targets = table.get("targets")
    if strategy == "auto" and raw_targets is None:
        raw_targets = []
    elif not isinstance(raw_targets, list) or not raw_targets:
        at.at("targets").fail("a combo needs a non-empty `targets` array")
    steps = [_step(item, at, providers, i) for i, item in enumerate(raw_targets)]
    if steps and all(s.weight == 0 for s in steps):
        at.at("targets.weight").fail("weights are all zero: at least one step needs a positive weight")
    account_strategy = _choice(table.get("account_strategy", "round-robin"), list(ACCOUNT_STRATEGIES), at.at("account_strategy"),
                               "account strategy")
    fallback_on = _fallback_on(table["fallback_on"], at.at("fallback_on")) if "fallback_on" in table else None
    max_attempts = _int(table["max_attempts"], at.at("max_attempts")) if "max_attempts" in table else None
    sticky = _int(table["sticky"], at.at("sticky")) if "sticky" in table else 1
    seconds = " (seconds)"
    timeout_s = _number(table["timeout_s"], at.at("timeout_s"), exclusive=True, unit=seconds) if "timeout_s" in table else None
    max_wait_s = _number(table["max_wait_s"], at.at("max_wait_s"), unit=seconds) if "max_wait_s" in table else None
    deadline_s = _number(table["deadline_s"], at.at("deadline_s"), exclusive=True, unit=seconds) if "deadline_s" in table else None
    when = table.get("when_all_cooling", "fail")
    if when not in ("fail", "wait"):
        at.at("when_all_cooling").fail(f"must be \"fail\" or \"wait\", not {_describe(when)}")
    if "description" in table:
        _string(table["description"], at.at("description"), "a description")
    for key in ("weights", "pack", "candidate_pool"):
        if key in table and strategy != "auto":
            at.at(key).fail(f"`{key}` only applies to strategy = \"auto\" (this combo's strategy is {strategy!r})")
    pack = _choice(table["pack"], list(PACKS), at.at("pack"), "pack") if "pack" in table else None
    auto_weights = _combo_weights(table["weights"], at.at("weights"), pack, policy) if "weights" in table else None
    pool = _candidate_pool(table["candidate_pool"], at.at("candidate_pool"), providers) if "candidate_pool" in table else None
    retries = _retries(table["retries"], at.at("retries")) if "retries" in table else None
    hedge_after_s = _number(table["hedge_after_s"], at.at("hedge_after_s"), exclusive=True, unit=seconds) if "hedge_after_s" in table else None
    return Combo(
        name=name, steps=steps, strategy=strategy, account_strategy=account_strategy, fallback_on=fallback_on,
        max_attempts=max_attempts, timeout_s=timeout_s, sticky=sticky, when_all_cooling=when, max_wait_s=max_wait_s,
        deadline_s=deadline_s, weights=auto_weights, pack=pack, candidate_pool=pool, retries=retries,
        hedge_after_s=hedge_after_s,
    )


def _retries(value: Any, at: _At) -> dict[str, int]:
    """`retries = { server_error = 1 }`: same-target retries per error kind, on top of the policy's."""
    table = _table(value, at)
    out = {}
    for kind, count in table.items():
        if kind not in RETRIABLE:
            at.key(kind).fail(f"no retries for kind {kind!r} ({_did_you_mean(kind, RETRIABLE)}retriable: {', '.join(sorted(RETRIABLE))})")
        out[kind] = _int(count, at.key(kind), minimum=0)
    return out


def _fallback_on(value: Any, at: _At) -> frozenset[ErrorKind]:
    """An array of error kinds, or a preset name (`"transient"`, `"all"`)."""
    known = [k.value for k in ErrorKind]
    if isinstance(value, str):
        if value in FALLBACK_PRESETS:
            return FALLBACK_PRESETS[value]
        at.fail(f"unknown fallback_on preset {value!r}{_suggest(value, FALLBACK_PRESETS)}; or give an array of error kinds")
    if not isinstance(value, list):
        at.fail(f"must be an array of error kinds or one of {', '.join(map(repr, FALLBACK_PRESETS))}, not {_describe(value)}")
    parsed = set()
    for kind in value:
        if not isinstance(kind, str) or kind not in known:
            hint = _did_you_mean(kind, known)
            at.fail(f"unknown error kind {kind!r} ({hint}known: {', '.join(known)})")
        parsed.add(ErrorKind(kind))
    return frozenset(parsed)


def _combo_weights(value: Any, at: _At, pack: str | None, policy: Policy) -> dict[str, float]:
    """`weights = { cost = 2 }`: any subset of the factors, on top of the pack's or the default weights."""
    table = _table(value, at)
    _known_keys(table, FACTORS, at, f"the weights of combo {at.combo!r}")
    weights = {key: _number(number, at.key(key)) for key, number in table.items()}
    base = PACKS[pack] if pack else policy.auto_weights
    effective = {f: float(base.get(f, 0.0)) for f in FACTORS}
    effective.update(weights)
    if not any(effective.values()):
        source = f"pack {pack}" if pack else "the default weights"
        at.fail(f"weights are all zero with {source} underneath: at least one factor needs a positive weight")
    return weights


def _candidate_pool(value: Any, at: _At, providers: Mapping[str, Provider]) -> list[str]:
    pool = _strings(value, at, "providers, provider#account or targets")
    for entry in pool:
        provider, account, model = parse_target(entry) if "/" in entry else (*entry.partition("#")[::2], "")
        account = account or None
        if provider not in providers:
            at.fail(f"unknown provider {provider!r} in {entry!r}{_suggest(provider, providers)}")
        if "/" in entry and not model:
            at.fail(f"no model in {entry!r}")
        if account is not None and providers[provider].account(account) is None:
            known = ", ".join(a.name for a in providers[provider].accounts)
            at.fail(f"unknown account {account!r} of provider {provider!r} in {entry!r} (known: {known})")
    return pool


def _step(item: Any, at: _At, providers: dict[str, Provider], index: int) -> Step:
    where = at.at(f"targets[{index}]")
    label = f"combo {at.combo!r} step {index + 1}"
    weight = 1.0
    options: tuple[tuple[str, Any], ...] = ()
    if isinstance(item, Mapping):
        _known_keys(item, STEP_FIELDS, where, label)
        if ("target" in item) == ("combo" in item):
            where.fail(f"{label}: an inline table needs `target = \"provider/model\"` or `combo = \"name\"` (one of them)")
        key = "target" if "target" in item else "combo"
        ref = item[key]
        if not isinstance(ref, str):
            where.key(key).fail(f"must be a string, not {_describe(ref)}")
        if key == "combo" and "/" in ref and ref not in VIRTUAL_COMBOS:
            where.key(key).fail(f"{label}: {ref!r} is a target: write `target = {ref!r}`")
        if "weight" in item:
            weight = _number(item["weight"], where.key("weight"))
        options = tuple(sorted((k, _step_option(k, v, where.key(k))) for k, v in item.items() if k not in ("target", "combo", "weight")))
    elif isinstance(item, str):
        ref = item
    else:
        where.fail(f"{label} must be a string or an inline table, not {_describe(item)}")
    ref = ref.strip()
    if not ref:
        where.fail(f"{label}: empty target")
    head = ref.partition("/")[0].partition("#")[0]
    if "/" not in ref or (ref in VIRTUAL_COMBOS and head not in providers):
        return Step(ref=ref, combo=ref, weight=weight, options=options)
    provider, account, model = parse_target(ref)
    if provider not in providers:
        known = ", ".join(sorted(providers)) or "none configured"
        hint = _did_you_mean(provider, list(providers))
        where.fail(f"unknown provider {provider!r} in {ref!r} ({hint}known: {known})")
    if not model:
        where.fail(f"no model in {ref!r}")
    if account is not None and providers[provider].account(account) is None:
        known = ", ".join(a.name for a in providers[provider].accounts)
        where.fail(f"unknown account {account!r} of provider {provider!r} (known: {known})")
    return Step(ref=ref, provider=provider, account=account, model=model, weight=weight, options=options)


def _step_option(key: str, value: Any, at: _At) -> Any:
    """One request option of a step, typed and range-checked."""
    if key == "max_tokens":
        return _int(value, at, unit=" (tokens)")
    if key == "temperature":
        return _number(value, at, maximum=2.0)
    if key == "top_p":
        return _number(value, at, maximum=1.0, exclusive=True)
    if key == "stop":
        return [value] if isinstance(value, str) and value else _strings(value, at, "stop sequences")
    if key == "reasoning":
        if isinstance(value, str) and value in REASONING_EFFORTS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        at.fail(f"must be one of {', '.join(REASONING_EFFORTS)} or a thinking budget in tokens, not {_describe(value)}")
    if key == "system":
        return _string(value, at, "a system prompt")
    if key == "extra_body":
        return _table(value, at)
    raise AssertionError(key)  # STEP_FIELDS lists every option handled here


def validate_graph(config: Config) -> None:
    """Unknown combo names, cycles and nesting deeper than `max_depth`: each names the whole path."""
    label = config.file_label
    max_depth = config.policy.max_depth

    def visit(name: str, path: tuple[str, ...]) -> None:
        combo = config.combos[name]
        for i, step in enumerate(combo.steps):
            if not step.is_combo:
                continue
            ref = step.combo or ""
            if ref in VIRTUAL_COMBOS:
                continue
            if ref not in config.combos:
                known = ", ".join(sorted(config.combos)) or "none"
                hint = _did_you_mean(ref, list(config.combos))
                raise ComboConfigError(f"unknown combo {ref!r} ({hint}known combos: {known})", file=label, combo=name, field=f"targets[{i}]")
            if ref in path or ref == name:
                cycle = " > ".join((*path, name, ref))
                raise ComboConfigError(f"cycle: {cycle}", file=label, combo=path[0] if path else name, field="targets")
            if len(path) + 2 > max_depth:
                chain = " > ".join((*path, name, ref))
                raise ComboConfigError(f"nesting deeper than {max_depth}: {chain}", file=label, combo=path[0] if path else name, field="targets")
            visit(ref, (*path, name))

    for name in config.combos:
        visit(name, ())

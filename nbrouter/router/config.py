"""The configuration: providers, accounts, combos, policy overrides and prices, loaded from TOML and
validated; combos saved back without losing the user's other tables and comments.

Every validation failure raises ComboConfigError naming the file, the combo and the field.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..providers.presets import ENV_PRESETS, PRESETS, PROTOCOLS
from .config_file import combo_table, set_combo, write_document
from .errors import ComboConfigError
from .model import (
    ACCOUNT_FIELDS,
    COMBO_FIELDS,
    DEFAULT_ACCOUNT,
    PROVIDER_FIELDS,
    QUOTA_FIELDS,
    TIERS,
    Account,
    Combo,
    Config,
    Provider,
    Quota,
    Step,
    parse_target,
)
from .packs import FACTORS, PACKS, VIRTUAL_COMBOS
from .policy import Policy
from .strategies import ACCOUNT_STRATEGIES, STRATEGIES
from .types import ErrorKind

#: names other modules import from here (the data classes live in model.py, the writers in config_file.py)
__all__ = [
    "load_config", "build_config", "validate_graph", "default_config_path", "environment_providers", "local_provider",
    "parse_target", "Quota", "Account", "Provider", "Step", "Combo", "Config", "QUOTA_FIELDS", "COMBO_FIELDS",
    "PROVIDER_FIELDS", "TIERS", "DEFAULT_ACCOUNT", "VIRTUAL_COMBOS", "combo_table", "write_document", "set_combo",
]

#: the kinds a combo's `retries` may name (the policy's `retries` table)
RETRIABLE = tuple(Policy().retries)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


# ---- parsing ---------------------------------------------------------------------------


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
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ComboConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ComboConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return build_config(raw, path=path, strategies=strategies)


def build_config(raw: dict[str, Any], *, path: Path | None, strategies: Iterable[str] | None = None) -> Config:
    """Validate a parsed TOML document into a Config.

    Args:
        raw: the parsed document.
        path: the file it came from (None for a dict), named in every error.
        strategies: the strategy names a combo may use (default: the registry, `strategies.STRATEGIES`).
    """
    label = str(path) if path else "<dict>"
    known = {"providers", "combos", "policy", "prices", "task_fit", "log_content", "state_path", "router"}
    for key in raw:
        if key not in known:
            raise ComboConfigError(f"unknown table or key (known: {', '.join(sorted(known))})", file=label, field=key)

    policy = _policy(raw.get("policy", {}), label)
    providers = {}
    for name, table in _table(raw.get("providers", {}), label, None, "providers").items():
        providers[name] = _provider(name, table, label)
    prices = _prices(raw.get("prices", {}), label)
    task_fit = _task_fit(raw.get("task_fit", {}), label)
    strategy_names = set(STRATEGIES if strategies is None else strategies)
    combos = {}
    for name, table in _table(raw.get("combos", {}), label, None, "combos").items():
        combos[name] = _combo(name, table, label, providers, strategy_names)
    emergency = _router_table(raw.get("router", {}), label, providers, combos)
    config = Config(
        providers=providers, combos=combos, policy=policy, prices=prices, task_fit=task_fit, path=path, raw=raw,
        log_content=bool(raw.get("log_content", True)), state_path=raw.get("state_path"), emergency=emergency,
    )
    validate_graph(config)
    return config


def _router_table(raw: Any, label: str, providers: dict[str, Provider], combos: dict[str, Combo]) -> str | None:
    """`[router]`: settings of the whole router; `emergency` names the last-resort combo or target."""
    table = _table(raw, label, None, "router")
    for key in table:
        if key not in ("emergency",):
            raise ComboConfigError("unknown key (known: emergency)", file=label, field=f"router.{key}")
    emergency = table.get("emergency")
    if emergency is None:
        return None
    if not isinstance(emergency, str) or not emergency.strip():
        raise ComboConfigError("must be the name of a combo or a provider/model target", file=label, field="router.emergency")
    emergency = emergency.strip()
    if emergency in combos or emergency in VIRTUAL_COMBOS:
        return emergency
    if "/" in emergency and parse_target(emergency)[0] in providers and parse_target(emergency)[2]:
        return emergency
    known = ", ".join(sorted(combos)) or "none defined"
    raise ComboConfigError(f"no combo or target {emergency!r} (combos: {known})", file=label, field="router.emergency")


def _table(value: Any, label: str, combo: str | None, fieldname: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ComboConfigError(f"must be a table, not {type(value).__name__}", file=label, combo=combo, field=fieldname)
    return dict(value)


def _policy(raw: Any, label: str) -> Policy:
    table = _table(raw, label, None, "policy")
    names = Policy.names()
    defaults = Policy()
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ComboConfigError(f"unknown policy constant (known: {', '.join(sorted(names))})", file=label, field=f"policy.{key}")
        default = getattr(defaults, key)
        if isinstance(default, dict):
            if not isinstance(value, Mapping) or any(not _is_number(v) or v < 0 for v in value.values()):
                raise ComboConfigError("must be a table of non-negative numbers", file=label, field=f"policy.{key}")
            unknown = set(value) - set(default)
            if unknown:
                raise ComboConfigError(f"unknown factor(s) {sorted(unknown)}", file=label, field=f"policy.{key}")
            overrides[key] = {**default, **{k: float(v) for k, v in value.items()}}
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ComboConfigError("must be a non-negative integer", file=label, field=f"policy.{key}")
            overrides[key] = value
        else:
            if not _is_number(value) or value < 0:
                raise ComboConfigError("must be a non-negative number", file=label, field=f"policy.{key}")
            overrides[key] = float(value)
    return defaults.with_overrides(overrides)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quota(raw: Any, label: str, where: str) -> Quota:
    table = _table(raw, label, None, where)
    values: dict[str, int] = {}
    for key, value in table.items():
        if key not in QUOTA_FIELDS:
            raise ComboConfigError(f"unknown quota field (known: {', '.join(QUOTA_FIELDS)})", file=label, field=f"{where}.{key}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ComboConfigError("must be a positive integer", file=label, field=f"{where}.{key}")
        values[key] = value
    return Quota(**values)


def _provider(name: str, table: Any, label: str) -> Provider:  # noqa: C901 - one validation per field
    where = f"providers.{name}"
    table = _table(table, label, None, where)
    if not name or "/" in name or "#" in name:
        raise ComboConfigError("a provider name may not be empty or contain '/' or '#'", file=label, field=where)
    for key in table:
        if key not in PROVIDER_FIELDS:
            raise ComboConfigError(f"unknown field (known: {', '.join(sorted(PROVIDER_FIELDS))})", file=label, field=f"{where}.{key}")
    preset_name = table.get("preset")
    if preset_name is None and name in PRESETS and "protocol" not in table:
        preset_name = name
    preset = None
    if preset_name is not None:
        preset = PRESETS.get(preset_name)
        if preset is None:
            raise ComboConfigError(f"unknown preset {preset_name!r} (known: {', '.join(PRESETS)})", file=label, field=f"{where}.preset")
    protocol = table.get("protocol", preset.protocol if preset else None)
    if protocol is None:
        raise ComboConfigError("needs a `preset` or a `protocol` and `base_url`", file=label, field=f"{where}.protocol")
    if protocol not in PROTOCOLS:
        raise ComboConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})", file=label, field=f"{where}.protocol")
    base_url = table.get("base_url", preset.base_url if preset else None)
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ComboConfigError("must be an http(s) URL", file=label, field=f"{where}.base_url")
    local = bool(table.get("local", preset.local if preset else False))
    accounts: list[Account] = []
    if "accounts" in table:
        raw_accounts = table["accounts"]
        if not isinstance(raw_accounts, list) or not raw_accounts:
            raise ComboConfigError("must be a non-empty array of tables", file=label, field=f"{where}.accounts")
        for i, acc in enumerate(raw_accounts):
            aw = f"{where}.accounts[{i}]"
            acc = _table(acc, label, None, aw)
            acc_name = acc.get("name")
            if not isinstance(acc_name, str) or not acc_name or "/" in acc_name or "#" in acc_name:
                raise ComboConfigError("each account needs a `name` without '/' or '#'", file=label, field=f"{aw}.name")
            if any(a.name == acc_name for a in accounts):
                raise ComboConfigError(f"duplicate account name {acc_name!r}", file=label, field=f"{aw}.name")
            for key in acc:
                if key not in ACCOUNT_FIELDS:
                    raise ComboConfigError("unknown account field (known: name, api_key_env, quota, tier)", file=label, field=f"{aw}.{key}")
            accounts.append(_account(acc_name, acc, label, aw))
    else:
        env = table.get("api_key_env")
        if env is None and preset and preset.api_key_env:
            env = next((e for e in preset.api_key_env if os.environ.get(e)), preset.api_key_env[0])
        accounts.append(_account(DEFAULT_ACCOUNT, {"api_key_env": env, "quota": table.get("quota", {}), "tier": table.get("tier")}, label, where))
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ComboConfigError("must be an array of model ids", file=label, field=f"{where}.models")
    windows_raw = table.get("context_windows", table.get("context_window", {}))
    windows = _table(windows_raw, label, None, f"{where}.context_window")
    for model, size in windows.items():
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ComboConfigError("must be a positive integer (tokens)", file=label, field=f"{where}.context_window.{model}")
    headers = _table(table.get("headers", {}), label, None, f"{where}.headers")
    server_command = table.get("server_command")
    if server_command is not None and (not isinstance(server_command, list) or not all(isinstance(x, str) for x in server_command)):
        raise ComboConfigError("must be an array of strings", file=label, field=f"{where}.server_command")
    return Provider(
        name=name, protocol=protocol, base_url=base_url, accounts=accounts, preset=preset.name if preset else None,
        local=local, models=list(models), context_windows=dict(windows), headers={str(k): str(v) for k, v in headers.items()},
        source=f"config file {label}",
        enabled=bool(table.get("enabled", True)), prices_id=table.get("prices_id", preset.prices_id if preset else None),
        managed=bool(table.get("managed", False)), model_path=table.get("model_path"), server_command=server_command,
    )


def _account(name: str, table: Mapping[str, Any], label: str, where: str) -> Account:
    env = table.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not env):
        raise ComboConfigError("must be the name of an environment variable", file=label, field=f"{where}.api_key_env")
    tier = table.get("tier")
    if tier is not None and tier not in TIERS:
        raise ComboConfigError(f"unknown tier {tier!r} (known: {', '.join(TIERS)})", file=label, field=f"{where}.tier")
    return Account(name=name, api_key_env=env, quota=_quota(table.get("quota", {}), label, f"{where}.quota"), tier=tier)


def _prices(raw: Any, label: str) -> dict[str, tuple[float, float]]:
    out = {}
    for target, table in _table(raw, label, None, "prices").items():
        table = _table(table, label, None, f"prices.{target}")
        try:
            inp, outp = table["input_per_mtok"], table["output_per_mtok"]
        except KeyError as exc:
            raise ComboConfigError("needs input_per_mtok and output_per_mtok (USD)", file=label, field=f"prices.{target}.{exc.args[0]}") from None
        if not _is_number(inp) or not _is_number(outp) or inp < 0 or outp < 0:
            raise ComboConfigError("prices must be non-negative numbers (USD per million tokens)", file=label, field=f"prices.{target}")
        out[target] = (float(inp), float(outp))
    return out


def _task_fit(raw: Any, label: str) -> dict[str, list[str]]:
    out = {}
    for task, patterns in _table(raw, label, None, "task_fit").items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ComboConfigError("must be an array of model-name patterns", file=label, field=f"task_fit.{task}")
        out[task] = list(patterns)
    return out


def _combo(name: str, table: Any, label: str, providers: dict[str, Provider], strategies: set[str]) -> Combo:
    table = _table(table, label, name, "combos")
    if not name or name in VIRTUAL_COMBOS:
        raise ComboConfigError("this name is empty or reserved for a virtual combo", file=label, combo=name, field="name")
    if any(ch.isspace() for ch in name) or "/" in name or "#" in name:
        raise ComboConfigError("a combo name may not contain spaces, '/' or '#' (`%%llm NAME` reads one word)", file=label, combo=name, field="name")
    for key in table:
        if key not in COMBO_FIELDS:
            raise ComboConfigError(f"unknown field (known: {', '.join(sorted(COMBO_FIELDS))})", file=label, combo=name, field=key)
    strategy = table.get("strategy", "priority")
    if not isinstance(strategy, str) or (strategies and strategy not in strategies):
        raise ComboConfigError(f"unknown strategy {strategy!r} (known: {', '.join(sorted(strategies))})", file=label, combo=name, field="strategy")
    raw_targets = table.get("targets")
    if strategy == "auto" and raw_targets is None:
        raw_targets = []
    elif not isinstance(raw_targets, list) or not raw_targets:
        raise ComboConfigError("a combo needs a non-empty `targets` array", file=label, combo=name, field="targets")
    steps = [_step(item, label, name, providers, i) for i, item in enumerate(raw_targets)]
    weights = [s.weight for s in steps]
    if steps and all(w == 0 for w in weights):
        raise ComboConfigError("weights are all zero", file=label, combo=name, field="targets.weight")
    account_strategy = table.get("account_strategy", "round-robin")
    if account_strategy not in ACCOUNT_STRATEGIES:
        raise ComboConfigError(f"unknown account strategy {account_strategy!r} (known: {', '.join(ACCOUNT_STRATEGIES)})", file=label, combo=name, field="account_strategy")
    fallback_on = None
    if "fallback_on" in table:
        kinds = table["fallback_on"]
        if not isinstance(kinds, list):
            raise ComboConfigError("must be an array of error kinds", file=label, combo=name, field="fallback_on")
        parsed = set()
        for kind in kinds:
            try:
                parsed.add(ErrorKind(kind))
            except ValueError:
                raise ComboConfigError(f"unknown error kind {kind!r} (known: {', '.join(k.value for k in ErrorKind)})", file=label, combo=name, field="fallback_on") from None
        fallback_on = frozenset(parsed)
    max_attempts = _opt_int(table, "max_attempts", label, name)
    sticky = _opt_int(table, "sticky", label, name) or 1
    timeout_s = _opt_number(table, "timeout_s", label, name, positive=True)
    max_wait_s = _opt_number(table, "max_wait_s", label, name)
    deadline_s = _opt_number(table, "deadline_s", label, name, positive=True)
    when = table.get("when_all_cooling", "fail")
    if when not in ("fail", "wait"):
        raise ComboConfigError("must be \"fail\" or \"wait\"", file=label, combo=name, field="when_all_cooling")
    auto_weights = None
    if "weights" in table:
        known = set(FACTORS)
        w = _table(table["weights"], label, name, "weights")
        for key, value in w.items():
            if key not in known:
                raise ComboConfigError(f"unknown factor {key!r} (known: {', '.join(sorted(known))})", file=label, combo=name, field=f"weights.{key}")
            if not _is_number(value) or value < 0:
                raise ComboConfigError("weights must be non-negative numbers", file=label, combo=name, field=f"weights.{key}")
        if w and all(v == 0 for v in w.values()):
            raise ComboConfigError("weights are all zero", file=label, combo=name, field="weights")
        auto_weights = {k: float(v) for k, v in w.items()}
    pack = table.get("pack")
    if pack is not None:
        if pack not in PACKS:
            raise ComboConfigError(f"unknown pack {pack!r} (known: {', '.join(PACKS)})", file=label, combo=name, field="pack")
    pool = table.get("candidate_pool")
    if pool is not None:
        if not isinstance(pool, list) or not all(isinstance(p, str) for p in pool):
            raise ComboConfigError("must be an array of providers or targets", file=label, combo=name, field="candidate_pool")
        for entry in pool:
            provider = parse_target(entry)[0] if "/" in entry else entry.partition("#")[0]
            if provider not in providers:
                raise ComboConfigError(f"unknown provider {provider!r}", file=label, combo=name, field="candidate_pool")
    retries = None
    if "retries" in table:
        known_kinds = set(RETRIABLE)
        r = _table(table["retries"], label, name, "retries")
        for key, value in r.items():
            if key not in known_kinds:
                raise ComboConfigError(f"no retries for kind {key!r} (retriable: {', '.join(sorted(known_kinds))})", file=label, combo=name, field=f"retries.{key}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ComboConfigError("must be a non-negative integer", file=label, combo=name, field=f"retries.{key}")
        retries = {k: int(v) for k, v in r.items()}
    return Combo(
        name=name, steps=steps, strategy=strategy, account_strategy=account_strategy, fallback_on=fallback_on,
        max_attempts=max_attempts, timeout_s=timeout_s, sticky=sticky, when_all_cooling=when, max_wait_s=max_wait_s,
        deadline_s=deadline_s, weights=auto_weights, pack=pack, candidate_pool=pool, retries=retries,
    )


def _opt_int(table: Mapping[str, Any], key: str, label: str, combo: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ComboConfigError("must be a positive integer", file=label, combo=combo, field=key)
    return value


def _opt_number(table: Mapping[str, Any], key: str, label: str, combo: str, positive: bool = False) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if not _is_number(value) or value < 0 or (positive and value == 0):
        raise ComboConfigError(f"must be a {'positive' if positive else 'non-negative'} number (seconds)", file=label, combo=combo, field=key)
    return float(value)


def _step(item: Any, label: str, combo: str, providers: dict[str, Provider], index: int) -> Step:
    fieldname = f"targets[{index}]"
    weight = 1.0
    options: tuple[tuple[str, Any], ...] = ()
    if isinstance(item, Mapping):
        ref = item.get("target", item.get("combo"))
        if not isinstance(ref, str):
            raise ComboConfigError("an inline table needs `target = \"provider/model\"` or `combo = \"name\"`", file=label, combo=combo, field=fieldname)
        if "weight" in item:
            weight = item["weight"]
            if not _is_number(weight) or weight < 0:
                raise ComboConfigError("weight must be a non-negative number", file=label, combo=combo, field=f"{fieldname}.weight")
        options = tuple(sorted((k, v) for k, v in item.items() if k not in ("target", "combo", "weight")))
    elif isinstance(item, str):
        ref = item
    else:
        raise ComboConfigError("must be a string or an inline table", file=label, combo=combo, field=fieldname)
    ref = ref.strip()
    if not ref:
        raise ComboConfigError("empty target", file=label, combo=combo, field=fieldname)
    head = ref.partition("/")[0].partition("#")[0]
    if "/" not in ref or (ref in VIRTUAL_COMBOS and head not in providers):
        return Step(ref=ref, combo=ref, weight=float(weight), options=options)
    provider, account, model = parse_target(ref)
    if provider not in providers:
        known = ", ".join(sorted(providers)) or "none configured"
        raise ComboConfigError(f"unknown provider {provider!r} in {ref!r} (known: {known})", file=label, combo=combo, field=fieldname)
    if not model:
        raise ComboConfigError(f"no model in {ref!r}", file=label, combo=combo, field=fieldname)
    if account is not None and providers[provider].account(account) is None:
        known = ", ".join(a.name for a in providers[provider].accounts)
        raise ComboConfigError(f"unknown account {account!r} of provider {provider!r} (known: {known})", file=label, combo=combo, field=fieldname)
    return Step(ref=ref, provider=provider, account=account, model=model, weight=float(weight), options=options)


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
                raise ComboConfigError(f"unknown combo {ref!r} (known combos: {known})", file=label, combo=name, field=f"targets[{i}]")
            if ref in path or ref == name:
                cycle = " > ".join((*path, name, ref))
                raise ComboConfigError(f"cycle: {cycle}", file=label, combo=path[0] if path else name, field="targets")
            if len(path) + 2 > max_depth:
                chain = " > ".join((*path, name, ref))
                raise ComboConfigError(f"nesting deeper than {max_depth}: {chain}", file=label, combo=path[0] if path else name, field="targets")
            visit(ref, (*path, name))

    for name in config.combos:
        visit(name, ())



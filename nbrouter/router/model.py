"""The configuration as data: providers, accounts, quotas, combos and their steps, and the whole Config.

Plain data classes and the names of their TOML keys; loading and validation live in `config.py`,
writing combos back in `config_file.py`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .._core import ErrorKind
from .keys import KeySource
from .policy import Policy

TIERS = ("free", "standard", "pro", "ultra")
QUOTA_FIELDS = ("requests_per_minute", "requests_per_day", "tokens_per_minute", "tokens_per_day")
#: the keys of a `[combos.NAME]` table
COMBO_FIELDS = {
    "targets", "strategy", "account_strategy", "fallback_on", "max_attempts", "timeout_s", "sticky",
    "when_all_cooling", "max_wait_s", "weights", "pack", "candidate_pool", "deadline_s", "description",
    "retries", "hedge_after_s",
}
#: the keys of a `[providers.NAME]` table
PROVIDER_FIELDS = {
    "preset", "protocol", "base_url", "api_key_env", "accounts", "models", "context_window", "context_windows",
    "tier", "quota", "headers", "enabled", "managed", "model_path", "server_command", "prices_id", "local",
    "api_key_command", "api_key_provider", "capabilities",
}
#: the keys of one `[[providers.NAME.accounts]]` entry
ACCOUNT_FIELDS = ("name", "api_key_env", "api_key_command", "api_key_provider", "quota", "tier", "capabilities")
#: what a target may take besides text, as `capabilities = { vision = true, tools = true, json_schema = true }`
#: names them (on a provider or an account, or per model: `capabilities = { "model-id" = { vision = false } }`)
CAPABILITY_FIELDS = ("vision", "tools", "json_schema")
#: the request options one step's inline table may set (`{ target = "p/m", temperature = 0.2 }`), kept in
#: `Step.options`
STEP_OPTIONS = ("max_tokens", "temperature", "top_p", "stop", "system", "reasoning", "extra_body")
#: the keys of one step's inline table
STEP_FIELDS = ("target", "combo", "weight", *STEP_OPTIONS)
#: the top-level keys and tables of the file
TOP_LEVEL_FIELDS = ("providers", "combos", "policy", "prices", "task_fit", "log_content", "state_path", "router", "state", "budget")
#: the keys of the `[state]` table (where the state shared by kernels and machines is kept)
STATE_FIELDS = ("url", "prefix", "on_down", "share", "timeout_s")
BUDGET_FIELDS = ("usd", "on_budget", "strict", "shared", "per")
#: what `[state] on_down` may say: pace locally at `share` of each limit, or wait for the store
STATE_ON_DOWN = ("local", "wait")
#: the keys of the `[router]` table (settings of the whole router)
ROUTER_FIELDS = ("emergency",)
#: the keys of one `[prices."provider/model"]` table (USD per million tokens)
PRICE_FIELDS = ("input_per_mtok", "output_per_mtok")
DEFAULT_ACCOUNT = "default"


def parse_target(text: str) -> tuple[str, str | None, str]:
    """`provider[#account]/model` -> (provider, account or None, model). The model may contain slashes."""
    head, _, model = text.partition("/")
    provider, _, account = head.partition("#")
    return provider.strip(), (account.strip() or None), model.strip()


@dataclass(frozen=True)
class StateSettings:
    """`[state]`: where the state shared by kernels and machines is kept, and what happens when it is away.

    Attributes:
        url: a Redis URL (`redis://host:6379/0`, `rediss://` for TLS); None: the state file (one machine).
        prefix: put before every Redis key (a team's, a deployment's).
        on_down: "local" (each kernel paces alone at `share` of each limit) or "wait" (calls wait for it).
        share: this kernel's part of each limit while the store is down.
        timeout_s: the longest a store operation waits before the store counts as down.
    """

    url: str | None = None
    prefix: str = "nbrouter:"
    on_down: str = "local"
    share: float = 0.25
    timeout_s: float = 0.25


@dataclass(frozen=True)
class BudgetSettings:
    """`[budget]`: the spending limit every call of a Router is held against (`Router(budget_usd=...)`,
    `on_budget=` and `budget_strict=` win over it), and whether it is shared.

    Attributes:
        usd: the limit in dollars (None: no limit; spending is still counted).
        on_budget: "stop" or "cheapest" (None: the Router's, or the magics', default).
        strict: skip candidates whose price is unknown while a limit is set (None: False).
        shared: a name under which the spending is counted in the state store, for every kernel and machine
            whose configuration names it (None: this process's session only).
        per: the shared budget's window: "total" or "day" (the UTC calendar day).
    """

    usd: float | None = None
    on_budget: str | None = None
    strict: bool | None = None
    shared: str | None = None
    per: str = "total"


@dataclass(frozen=True)
class Quota:
    """Configured limits of one account (None = not limited)."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_empty", all(getattr(self, f) is None for f in QUOTA_FIELDS))

    def is_empty(self) -> bool:
        """No limit configured (checked for every candidate of every call, so computed once)."""
        return self._empty  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class Capabilities:
    """What a configuration says a provider's or an account's targets take: for all of them (`flags`), and
    per model (`models`, which wins). A capability it does not name is not known from here."""

    flags: tuple[tuple[str, bool], ...] = ()
    models: tuple[tuple[str, tuple[tuple[str, bool], ...]], ...] = ()

    def of(self, model: str, capability: str) -> tuple[bool, str] | None:
        """(whether `model` has `capability`, "model" or "all") when this configuration says, else None."""
        for name, flags in self.models:
            if name == model:
                for key, value in flags:
                    if key == capability:
                        return value, "model"
        for key, value in self.flags:
            if key == capability:
                return value, "all"
        return None

    def __bool__(self) -> bool:
        return bool(self.flags or self.models)


@dataclass(frozen=True)
class Account:
    """One credential of a provider; the key is read from the environment at call time, or fetched by a
    command or a function (`key_source`) at first use and again after a 401."""

    name: str
    api_key_env: str | None = None
    quota: Quota = Quota()
    tier: str | None = None
    #: `api_key_command` / `api_key_provider`: where the key is fetched from instead of the environment
    key_source: KeySource | None = field(default=None, compare=False)
    #: `capabilities = {...}` of this account (it wins over its provider's)
    capabilities: Capabilities = Capabilities()

    def api_key(self) -> str | None:
        """The key: the environment variable `api_key_env` (None when unset or empty), or the fetched one."""
        if self.key_source is not None:
            return self.key_source.cached()
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


@dataclass
class Provider:
    """A configured endpoint: protocol, base URL, accounts, known models."""

    name: str
    protocol: str
    base_url: str
    accounts: list[Account]
    preset: str | None = None
    local: bool = False
    models: list[str] = field(default_factory=list)
    context_windows: dict[str, int] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    prices_id: str | None = None
    managed: bool = False
    model_path: str | None = None
    server_command: list[str] | None = None
    source: str = "config"
    #: `capabilities = {...}` of this provider: what its targets take besides text
    capabilities: Capabilities = field(default_factory=Capabilities)

    def account(self, name: str) -> Account | None:
        """The account called `name`, or None."""
        for acc in self.accounts:
            if acc.name == name:
                return acc
        return None

    def context_window(self, model: str) -> int | None:
        """The configured context window of `model` in tokens, or None when not configured."""
        return self.context_windows.get(model)


@dataclass(frozen=True)
class Step:
    """One entry of a combo's `targets`: a target (`provider[#account]/model`) or another combo's name."""

    ref: str
    combo: str | None = None
    provider: str | None = None
    account: str | None = None
    model: str | None = None
    weight: float = 1.0
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def is_combo(self) -> bool:
        return self.combo is not None


@dataclass
class Combo:
    """A named, ordered group of steps with a strategy and options."""

    name: str
    steps: list[Step]
    strategy: str = "priority"
    account_strategy: str = "round-robin"
    fallback_on: frozenset[ErrorKind] | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    sticky: int = 1
    when_all_cooling: str = "fail"
    max_wait_s: float | None = None
    deadline_s: float | None = None
    weights: dict[str, float] | None = None
    pack: str | None = None
    candidate_pool: list[str] | None = None
    virtual: bool = False
    #: same-target retries per error kind (on top of the policy's `retries`)
    retries: dict[str, int] | None = None
    #: start the next candidate too when the first has sent no first byte after this long (off: None)
    hedge_after_s: float | None = None


@dataclass
class Config:
    """Everything the router reads from the configuration."""

    providers: dict[str, Provider]
    combos: dict[str, Combo]
    policy: Policy
    prices: dict[str, tuple[float, float]]
    task_fit: dict[str, list[str]]
    path: Path | None
    raw: dict[str, Any]
    log_content: bool = True
    state_path: str | None = None
    source: str = "file"
    #: `[router] emergency`: a combo or target tried once after every candidate of any combo failed or was skipped
    emergency: str | None = None
    #: `[state]`: the shared state's store and its behaviour when it is away
    state: StateSettings = StateSettings()
    #: `[budget]`: the spending limit and whether every process that names it shares it
    budget: BudgetSettings = BudgetSettings()

    @functools.cached_property
    def hash(self) -> str:
        """A short hash of the configuration, recorded with every decision."""
        blob = json.dumps(self.raw, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def file_label(self) -> str:
        return str(self.path) if self.path else "<dict>"

    def providers_without_models(self, pool: Iterable[str] | None = None) -> list[str]:
        """The enabled providers (of `pool`, default all) that list no `models`: an `auto` pool gets nothing from them.

        Args:
            pool: a `candidate_pool` (providers, `provider#account` or targets); None for every provider.
        """
        names = [e.partition("#")[0] for e in pool if "/" not in e] if pool is not None else list(self.providers)
        found = []
        for name in dict.fromkeys(names):
            prov = self.providers.get(name)
            if prov is not None and prov.enabled and not prov.models:
                found.append(name)
        return found

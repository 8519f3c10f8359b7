"""Resolving a combo into one flat, ordered list of candidates, each with the path it came from; and the
virtual combos (`auto`, `auto/coding`, ...) and saved `auto` combos whose steps are a candidate pool."""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Collection, Iterable, Literal

from ..errors import ComboConfigError
from ..model import Combo, Config, Step, parse_target
from .packs import VARIANTS, VIRTUAL_COMBOS
from ..types import Candidate


def combo_kind(name: str, saved: Collection[str]) -> Literal["saved", "virtual", "target"] | None:
    """What a word names as a combo: one of the `saved` combos, a virtual `auto...` combo, a target (it has
    a `/`: `provider[#account]/model`, checked when it is resolved), or nothing (None)."""
    if name in saved:
        return "saved"
    if name in VIRTUAL_COMBOS:
        return "virtual"
    if "/" in name:
        return "target"
    return None


def combo_for(config: Config, name: str) -> Combo:
    """The named combo, a virtual `auto...` combo, or a bare `provider[#account]/model` as a one-step combo."""
    kind = combo_kind(name, config.combos)
    if kind == "saved":
        combo = config.combos[name]
        if combo.strategy == "auto" and not combo.steps:
            return auto_pool(config, combo)  # a saved auto combo without targets: its pool, also when nested
        return combo
    if kind == "virtual":
        return virtual_combo(config, name)
    if kind == "target":
        provider, account, model = parse_target(name)
        if provider in config.providers and model:
            prov = config.providers[provider]
            if account is not None and prov.account(account) is None:
                known = ", ".join(a.name for a in prov.accounts)
                raise ComboConfigError(f"unknown account {account!r} of provider {provider!r} (known: {known})", file=config.file_label, combo=name, field="target")
            return Combo(name=name, steps=[Step(ref=name, provider=provider, account=account, model=model)])
        if provider not in config.providers:
            known = ", ".join(sorted(config.providers)) or "none configured"
            raise ComboConfigError(f"unknown provider {provider!r} (known: {known})", file=config.file_label, combo=name, field="target")
    known = ", ".join(sorted(config.combos)) or "none defined"
    raise ComboConfigError(f"no combo named {name!r}{nearest_combo(config, name)} (combos: {known}; or write provider/model)",
                           file=config.file_label, combo=name, field="name")


def nearest_combo(config: Config, name: str) -> str:
    """`: did you mean 'everyday'?` for the saved or virtual combo nearest to a mistyped `name`, or nothing."""
    close = difflib.get_close_matches(name, [*config.combos, *VIRTUAL_COMBOS], n=1, cutoff=0.6)
    return f": did you mean {close[0]!r}?" if close else ""


def resolve(config: Config, combo: Combo) -> list[Candidate]:
    """Expand nested combos depth-first; a target without an account yields one candidate per account."""
    out: list[Candidate] = []
    _expand(config, combo, (combo.name,), 1.0, out)
    return out


def _expand(config: Config, combo: Combo, path: tuple[str, ...], weight: float, out: list[Candidate]) -> None:
    for step in combo.steps:
        if step.is_combo:
            inner = combo_for(config, step.combo or "")
            if len(path) >= config.policy.max_depth + 1 or inner.name in path:
                # validated at load; guarded here too so that nothing can loop
                raise ComboConfigError(f"nesting too deep or cyclic: {' > '.join((*path, inner.name))}", file=config.file_label, combo=path[0], field="targets")
            _expand(config, inner, (*path, inner.name), weight * step.weight, out)
            continue
        provider = config.providers[step.provider or ""]
        if not provider.enabled:
            continue
        accounts = [provider.account(step.account)] if step.account else provider.accounts
        index = out[-1].step + 1 if out else 0  # steps are numbered in the order they are expanded
        for acc in accounts:
            if acc is None:
                continue
            out.append(Candidate(provider.name, acc.name, step.model or "", path=path, weight=weight * step.weight, step=index,
                                 options=step.options))


# ---- the candidate pool of auto combos ---------------------------------------------------------


def pool_steps(config: Config, pool: Iterable[str] | None) -> list[Step]:
    """Steps of every enabled candidate: each provider x its `models` (or the pool's providers and targets)."""
    entries = list(pool) if pool is not None else [name for name in config.providers]
    steps: list[Step] = []
    seen: set[str] = set()
    for entry in entries:
        if "/" in entry:
            provider, account, model = parse_target(entry)
            refs = [(provider, account, model)]
        else:
            provider, _, account_text = entry.partition("#")
            prov = config.providers.get(provider)
            refs = [(provider, account_text or None, m) for m in (prov.models if prov else [])]
        for provider, account, model in refs:
            prov = config.providers.get(provider)
            if prov is None or not prov.enabled or not model:
                continue
            ref = f"{provider}#{account}/{model}" if account else f"{provider}/{model}"
            if ref in seen:
                continue
            seen.add(ref)
            steps.append(Step(ref=ref, provider=provider, account=account, model=model))
    return steps


def virtual_combo(config: Config, name: str) -> Combo:
    """The virtual combo `auto`, `auto/coding`, ...: every enabled candidate of the config, built per
    request (a provider added to the config takes part at once)."""
    variant = VARIANTS[name]
    steps = pool_steps(config, None)
    if not steps:
        missing = config.providers_without_models()
        hint = f"providers without models: {', '.join(missing)}" if missing else "no provider is configured"
        raise ComboConfigError(f"{name} has no candidates: list `models` under each provider ({hint})",
                               file=config.file_label, combo=name, field="providers.models")
    return Combo(name=name, steps=steps, strategy="auto", pack=variant.pack, virtual=True)


def auto_pool(config: Config, combo: Combo) -> Combo:
    """A saved `auto` combo without targets, with its steps filled from `candidate_pool` (default: every
    enabled candidate). Other combos come back as they are."""
    if combo.strategy != "auto" or combo.steps or combo.virtual:
        return combo
    steps = pool_steps(config, combo.candidate_pool)
    if not steps:
        missing = config.providers_without_models(combo.candidate_pool)
        hint = f" (providers without models: {', '.join(missing)})" if missing else ""
        raise ComboConfigError(f"the candidate pool is empty: list `models` under the providers{hint}",
                               file=config.file_label, combo=combo.name, field="candidate_pool")
    return replace(combo, steps=steps)

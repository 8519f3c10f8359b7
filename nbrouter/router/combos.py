"""Resolving a combo into one flat, ordered list of candidates, each with the path it came from."""

from __future__ import annotations

from .config import VIRTUAL_COMBOS, Combo, Config, Step, parse_target
from .errors import ComboConfigError
from .types import Candidate


def combo_for(config: Config, name: str) -> Combo:
    """The named combo, a virtual `auto...` combo, or a bare `provider[#account]/model` as a one-step combo."""
    combo = config.combos.get(name)
    if combo is not None:
        if combo.strategy == "auto" and not combo.steps:
            from .scoring import auto_pool  # a saved auto combo without targets: its pool, also when nested

            return auto_pool(config, combo)
        return combo
    if name in VIRTUAL_COMBOS:
        from .scoring import virtual_combo

        return virtual_combo(config, name)
    if "/" in name:
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
    raise ComboConfigError(f"no combo named {name!r} (combos: {known}; or write provider/model)", file=config.file_label, combo=name, field="name")


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
            out.append(Candidate(provider.name, acc.name, step.model or "", path=path, weight=weight * step.weight, step=index))

"""Editing the saved combos (`Router.save_combo`, `delete_combo`, `validate_combo`).

Each edit builds and validates the whole new Config first, so that an invalid combo is refused with a
ComboConfigError naming the field before anything is written; then, for a config read from a file,
`[combos.NAME]` is rewritten there (`config_file.py`: other tables and comments kept). A config given as a
dict changes in memory only.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

from .loading import build_config
from .file import combo_table, set_combo, write_document
from ..errors import ComboConfigError
from ..model import Combo, Config

#: the steps of a combo as the caller gives them: targets, combo names, or `{"target": ..., "weight": ...}` tables
Targets = Sequence[str | Mapping[str, Any]]


def with_combo(config: Config, name: str, table: Mapping[str, Any] | None, strategies: Iterable[str] | None) -> Config:
    """A new Config: `config` with `[combos.NAME]` set to `table` (None: removed), validated."""
    raw = copy.deepcopy(dict(config.raw))
    combos = raw.setdefault("combos", {})
    if table is None:
        combos.pop(name, None)
    else:
        combos[name] = table
    return build_config(raw, path=config.path, strategies=strategies)


def draft_combo(config: Config, name: str, targets: Targets, options: Mapping[str, Any],
                strategies: Iterable[str] | None) -> Combo:
    """The combo as it would be saved, validated against `config`; nothing is written."""
    return with_combo(config, name, combo_table(list(targets), options), strategies).combos[name]


def save_combo(config: Config, name: str, targets: Targets, options: Mapping[str, Any],
               strategies: Iterable[str] | None) -> Config:
    """The Config with the combo saved, written to the config file first when there is one."""
    table = combo_table(list(targets), options)
    new = with_combo(config, name, table, strategies)
    if config.path is not None:
        write_document(config.path, lambda doc: set_combo(doc, name, table))
    return new


def delete_combo(config: Config, name: str, strategies: Iterable[str] | None) -> Config:
    """The Config without the combo, removed from the config file first; refused if another combo names it."""
    if name not in config.combos:
        raise ComboConfigError(f"no combo named {name!r}", file=config.file_label, combo=name, field="name")
    users = [c.name for c in config.combos.values() if any(s.combo == name for s in c.steps)]
    if users:
        raise ComboConfigError(f"combo(s) {', '.join(users)} use it; remove it from them first", file=config.file_label,
                               combo=name, field="name")
    new = with_combo(config, name, None, strategies)
    if config.path is not None:
        write_document(config.path, lambda doc: set_combo(doc, name, None))
    return new

"""Writing combos back to the configuration file: the TOML table of a combo, and an atomic rewrite of
the file through tomlkit (imported on first use) that keeps the user's other tables and comments.
`editing.py` validates an edit before anything here writes it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ComboConfigError
from ..model import COMBO_FIELDS


def combo_table(targets: list[Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The TOML table of a combo, options with None left out."""
    table: dict[str, Any] = {"targets": list(targets)}
    for key, value in options.items():
        if value is None:
            continue
        if key not in COMBO_FIELDS:
            raise ComboConfigError(f"unknown combo option {key!r}", field=key)
        if isinstance(value, (set, frozenset)):
            value = sorted(str(v) for v in value)
        table[key] = value
    return table


def write_document(path: Path, update: Callable[[Any], None]) -> None:
    """Apply `update(doc)` to the TOML file at `path` (comments kept) and write it atomically, mode 0600."""
    import tomlkit

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    doc = tomlkit.parse(text)
    update(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(tomlkit.dumps(doc))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def set_combo(doc: Any, name: str, table: Mapping[str, Any] | None) -> None:
    """Set (or with None delete) `[combos.NAME]` inside a tomlkit document."""
    import tomlkit

    if "combos" not in doc:
        if table is None:
            return
        doc["combos"] = tomlkit.table(is_super_table=True)
    combos = doc["combos"]
    if table is None:
        if name in combos:
            del combos[name]
        return
    new = tomlkit.table()
    for key, value in table.items():
        if key == "targets":
            arr = tomlkit.array()
            for item in value:
                if isinstance(item, Mapping):
                    inline = tomlkit.inline_table()
                    inline.update(item)
                    arr.append(inline)
                else:
                    arr.append(item)
            new[key] = arr
        elif isinstance(value, Mapping):
            inline = tomlkit.inline_table()
            inline.update(value)
            new[key] = inline
        else:
            new[key] = value
    combos[name] = new

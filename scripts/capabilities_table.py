"""Regenerate nbrouter/router/decide/capabilities.json, the bundled table of what well-known models take.

The facts come from LiteLLM's published `model_prices_and_context_window_backup.json` (MIT license; the
file ships in the `litellm` package): per model, `supports_vision`, `supports_function_calling`,
`supports_response_schema` and `max_input_tokens`. Only the facts are read, for the providers nbrouter has
presets for; a flag the source does not give stays unknown (null), never false.

    python scripts/capabilities_table.py [path/to/model_prices_and_context_window_backup.json]

Without a path, the file of the installed `litellm` package is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "nbrouter" / "router" / "decide" / "capabilities.json"
SOURCE_NAME = "model_prices_and_context_window_backup.json"
#: LiteLLM's provider name -> nbrouter's preset, and the prefix LiteLLM puts before that provider's model ids
PROVIDERS = {
    "openai": ("openai", ""),
    "anthropic": ("anthropic", ""),
    "gemini": ("gemini", "gemini/"),
    "groq": ("groq", "groq/"),
    "deepseek": ("deepseek", "deepseek/"),
    "mistral": ("mistral", "mistral/"),
    "xai": ("xai", "xai/"),
    "together_ai": ("together", "together_ai/"),
    "zai": ("glm", "zai/"),
    "ollama": ("ollama", "ollama/"),
}
#: the table's columns, and the LiteLLM key each is read from
FIELDS = (("vision", "supports_vision"), ("tools", "supports_function_calling"),
          ("json_schema", "supports_response_schema"), ("context_window", "max_input_tokens"))
MODES = ("chat", "responses")


def _source() -> tuple[Path, str, str]:
    """The JSON file, the litellm version and its license text."""
    import importlib.metadata
    import importlib.util

    # found, not imported: importing litellm reaches for the network
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("litellm is not installed: give the JSON file's path")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = importlib.metadata.distribution("litellm")
    license_files = [f for f in dist.files or [] if Path(str(f)).name.startswith("LICENSE")]
    license_text = Path(str(dist.locate_file(license_files[0]))).read_text() if license_files else ""
    return root / SOURCE_NAME, dist.version, license_text


def _row(entry: dict[str, Any]) -> list[Any] | None:
    row: list[Any] = []
    for name, key in FIELDS:
        value = entry.get(key)
        if name == "context_window":
            row.append(value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None)
        else:
            row.append(value if isinstance(value, bool) else None)
    return row if any(v is not None for v in row) else None


def build(data: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The table: {preset: {model id as the provider names it: [vision, tools, json_schema, context_window]}}."""
    table: dict[str, dict[str, list[Any]]] = {}
    for key, entry in sorted(data.items()):
        if not isinstance(entry, dict) or entry.get("litellm_provider") not in PROVIDERS or entry.get("mode") not in MODES:
            continue
        preset, prefix = PROVIDERS[entry["litellm_provider"]]
        model = key[len(prefix):] if prefix and key.startswith(prefix) else key
        row = _row(entry)
        if row is None or "/" in model and preset in ("openai", "anthropic"):
            continue
        known = table.setdefault(preset, {}).get(model)
        # the same model under two keys (with and without the prefix): a fact either gives is kept
        table[preset][model] = row if known is None else [k if k is not None else r for k, r in zip(known, row)]
    return table


def _dumps(out: dict[str, Any]) -> str:
    """The JSON with one model per line (a regenerated table diffs by model)."""
    head = {k: v for k, v in out.items() if k != "models"}
    lines = ["{"] + [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()] + ['"models": {']
    presets = sorted(out["models"])
    for i, preset in enumerate(presets):
        lines.append(f"{json.dumps(preset)}: {{")
        models = sorted(out["models"][preset].items())
        lines += [f"{json.dumps(m)}: {json.dumps(row)}{',' if j < len(models) - 1 else ''}" for j, (m, row) in enumerate(models)]
        lines.append("}" + ("," if i < len(presets) - 1 else ""))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    path, version, license_text = _source()
    if len(argv) > 1:
        path = Path(argv[1])
    data = json.loads(path.read_text())
    table = build(data)
    out = {
        "_source": f"LiteLLM {SOURCE_NAME} (litellm {version}); regenerate with scripts/capabilities_table.py",
        "_license": license_text.strip() or "MIT License, Copyright (c) 2023 Berri AI",
        "_fields": [name for name, _ in FIELDS],
        "models": table,
    }
    OUT.write_text(_dumps(out))
    print(f"{OUT}: {sum(len(v) for v in table.values())} models of {len(table)} providers")


if __name__ == "__main__":
    main(sys.argv)

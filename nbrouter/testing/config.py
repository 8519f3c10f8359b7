"""The simulator's settings as plain data: what a `--config` file (JSON or TOML) and `POST /_sim/config` hold.

    {
      "rate_limits": {
        "default": {"requests": 120, "window_s": 60},              # every key, each its own sliding window
        "keys": {"sk-a": {"requests_per_minute": 300, "start_full": false}}   # a token bucket for one key
      },
      "scripts": [{"model": "gpt-x", "behaviours": [{"type": "RateLimited", "retry_after": 3}, {"type": "Reply"}]}],
      "default": {"type": "Reply", "text": "hi"},
      "capabilities": {"text-only": {"vision": false, "tools": false}},
      "batch_scripts": [{"model": "gpt-x", "line_s": 60, "lines": {"row-2": {"type": "ServerError", "status": 503}}}],
      "models": ["gpt-x"], "default_text": null, "tokens_per_s": null
    }

A limit with `requests`, `tokens` or `window_s` is a `WindowLimits`; one with `requests_per_minute` or
`tokens_per_minute` a `KeyLimits` (`"kind": "window" | "bucket"` says so explicitly). A behaviour is its
class name under `type` and the class's own fields. Every section is optional; what is given replaces
that part of the simulator's settings, and anything unknown is an error rather than silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from . import behaviours as _behaviours
from .batches import BatchScript
from .behaviours import Behaviour, Capabilities
from .ratelimits import KeyLimits, Limits, RateLimiter, WindowLimits


class Configurable(Protocol):
    """What `apply` sets on a ProviderSimulator (named here so this module need not import it)."""

    rate_limits: RateLimiter
    default_text: str | None
    tokens_per_s: float | None

    @property
    def models(self) -> list[str]: ...

    @models.setter
    def models(self, value: Iterable[str] | None) -> None: ...

    def set_default(self, behaviour: Behaviour) -> None: ...

    def capabilities(
        self, model: str, *, vision: bool | None = None, tools: bool | None = None, json_schema: bool | None = None
    ) -> Capabilities: ...

    def script_batch(self, scripts: Iterable[BatchScript] | BatchScript, *, model: str | None = None,
                     key: str | None = None, repeat_last: bool = False) -> None: ...

    def script(self, behaviours: Iterable[Behaviour] | Behaviour, *, model: str | None = None, key: str | None = None,
               repeat_last: bool = False) -> None: ...

_SECTIONS = frozenset({"rate_limits", "scripts", "default", "models", "default_text", "tokens_per_s", "capabilities", "batch_scripts"})
_WINDOW_FIELDS = frozenset({"requests", "tokens", "window_s", "start_full"})
_BUCKET_FIELDS = frozenset({"requests_per_minute", "tokens_per_minute", "start_full"})


def load(path: str | Path) -> dict[str, Any]:
    """A config file: TOML when its name ends `.toml`, else JSON."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        with path.open("rb") as fh:
            return tomllib.load(fh)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a JSON object")
    return data


def limits(spec: Mapping[str, Any]) -> Limits:
    """A `WindowLimits` or `KeyLimits` from its fields (see the module)."""
    fields = {k: v for k, v in spec.items() if k != "kind"}
    kind = spec.get("kind") or ("bucket" if set(fields) & {"requests_per_minute", "tokens_per_minute"} else "window")
    allowed = _WINDOW_FIELDS if kind == "window" else _BUCKET_FIELDS if kind == "bucket" else None
    if allowed is None:
        raise ValueError(f"rate limit kind must be 'window' or 'bucket', not {kind!r}")
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown {kind} limit fields {sorted(unknown)}; use {sorted(allowed)}")
    return WindowLimits(**fields) if kind == "window" else KeyLimits(**fields)


def behaviour(spec: Mapping[str, Any]) -> Behaviour:
    """A behaviour from `{"type": "<class name>", **fields}` (a Reply's `tool_calls` as dicts of ToolCall's fields)."""
    fields = dict(spec)
    name = fields.pop("type", None)
    cls = getattr(_behaviours, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, Behaviour)) or cls in (Behaviour, _behaviours.Failure):
        raise ValueError(f"unknown behaviour type {name!r}")
    if isinstance(fields.get("tool_calls"), list):
        fields["tool_calls"] = [_behaviours.ToolCall(**c) if isinstance(c, dict) else c for c in fields["tool_calls"]]
    if "sse" in fields and isinstance(fields["sse"], list):
        fields["sse"] = [tuple(event) for event in fields["sse"]]
    return cls(**fields)


def apply(sim: Configurable, config: Mapping[str, Any]) -> None:
    """Apply a config mapping to a simulator (running or not)."""
    if not isinstance(config, Mapping):
        raise TypeError("the simulator config must be a mapping")
    unknown = set(config) - _SECTIONS
    if unknown:
        raise ValueError(f"unknown simulator config sections {sorted(unknown)}; use {sorted(_SECTIONS)}")
    if "rate_limits" in config:
        _apply_limits(sim, config["rate_limits"] or {})
    if "models" in config:
        sim.models = config["models"]
    if "default_text" in config:
        sim.default_text = config["default_text"]
    if "tokens_per_s" in config:
        sim.tokens_per_s = config["tokens_per_s"]
    if "default" in config:
        sim.set_default(behaviour(config["default"]))
    for entry in config.get("scripts") or ():
        entry = dict(entry)
        items = [behaviour(b) for b in entry.pop("behaviours", [])]
        sim.script(items, **entry)
    for model, caps in (config.get("capabilities") or {}).items():
        unknown = set(caps) - {"vision", "tools", "json_schema"}
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)} for {model!r}; use vision, tools, json_schema")
        sim.capabilities(model, **caps)
    for entry in config.get("batch_scripts") or ():
        _apply_batch_script(sim, dict(entry))


def _apply_limits(sim: Configurable, spec: Mapping[str, Any]) -> None:
    unknown = set(spec) - {"default", "keys"}
    if unknown:
        raise ValueError(f"unknown rate_limits entries {sorted(unknown)}; use 'default' and 'keys'")
    if "default" in spec:
        sim.rate_limits.set_default(limits(spec["default"]) if spec["default"] else None)
    for key, one in (spec.get("keys") or {}).items():
        sim.rate_limits.set(key, limits(one) if one else None)


def _apply_batch_script(sim: Configurable, entry: dict[str, Any]) -> None:
    """`{"model"?, "key"?, "repeat_last"?, **BatchScript fields}`; `lines` and `refuse` hold behaviours as dicts."""
    selectors = {name: entry.pop(name) for name in ("model", "key", "repeat_last") if name in entry}
    lines = entry.get("lines")
    if isinstance(lines, dict):
        entry["lines"] = {custom_id: behaviour(spec) for custom_id, spec in lines.items()}
    elif isinstance(lines, list):
        entry["lines"] = [None if spec is None else behaviour(spec) for spec in lines]
    if isinstance(entry.get("refuse"), dict):
        entry["refuse"] = behaviour(entry["refuse"])
    sim.script_batch(BatchScript(**entry), **selectors)


__all__ = ["apply", "behaviour", "limits", "load"]

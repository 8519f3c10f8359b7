"""Wire protocols: one module per protocol; each builds requests, parses answers and classifies failures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._core.content import Tool, ToolCall
from .base import ChatRequest, Completion, Endpoint, ProviderFailure, RateLimits, StreamDecoder, WireProtocol
from .presets import PRESETS, PROTOCOLS, Preset

_MODULES = {"openai": ("openai", "OpenAIProtocol"), "anthropic": ("anthropic", "AnthropicProtocol"), "gemini": ("gemini", "GeminiProtocol")}
_cache: dict[str, WireProtocol] = {}

if TYPE_CHECKING:
    from ._http import Sender


def get_protocol(name: str) -> WireProtocol:
    """The protocol object for `openai`, `anthropic` or `gemini` (imported on first use)."""
    proto = _cache.get(name)
    if proto is None:
        module_name, cls_name = _MODULES[name]
        module = importlib.import_module(f".{module_name}", __name__)
        proto = _cache[name] = getattr(module, cls_name)()
    return proto


def __getattr__(name: str) -> type[Sender]:
    # Sender imports httpx, which `import nbrouter` must not: it loads on first use
    if name == "Sender":
        from ._http import Sender

        return Sender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "PROTOCOLS",
    "ChatRequest",
    "Completion",
    "Endpoint",
    "Preset",
    "ProviderFailure",
    "RateLimits",
    "Sender",
    "StreamDecoder",
    "Tool",
    "ToolCall",
    "WireProtocol",
    "get_protocol",
]

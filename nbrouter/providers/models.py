"""A provider's model list, read for what each model takes (images, tools, a JSON schema) and its context
window, only where the list says it (multimodal_tools.md section 5):

- OpenRouter `GET {base}/models`: `architecture.input_modalities` has "image" (vision),
  `supported_parameters` has "tools" (tools) and "response_format" or "structured_outputs" (JSON schema),
  `context_length`;
- Anthropic `GET {base}/v1/models`: `capabilities.image_input.supported` (vision),
  `capabilities.structured_outputs.supported` (JSON schema), `max_input_tokens`; no flag for client tools;
- Gemini `GET {base}/models`: `inputTokenLimit` only (the list has no vision or tools flags).

The list is untrusted input: an entry or a field of the wrong shape is left out, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .base import Endpoint

if TYPE_CHECKING:
    from ._http import Sender

#: the presets whose model list says something about capabilities
LISTED_PRESETS = ("openrouter", "anthropic", "gemini")
#: the biggest list read (OpenRouter's whole catalogue is a few MB)
MAX_LIST_BYTES = 32 << 20
#: the most models kept from one list
MAX_MODELS = 20_000
_ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class ListedModel:
    """What a model list says of one model: True/False where it says it, None where it is silent."""

    vision: bool | None = None
    tools: bool | None = None
    json_schema: bool | None = None
    context_window: int | None = None

    def get(self, capability: str) -> bool | None:
        """`vision`, `tools` or `json_schema` as the list says it (None: not said)."""
        value = getattr(self, capability, None) if capability in ("vision", "tools", "json_schema") else None
        return value if isinstance(value, bool) else None


ModelList = dict[str, ListedModel]


def lists_capabilities(preset: str | None) -> bool:
    """Whether this preset's model list says what its models take."""
    return preset in LISTED_PRESETS


def list_request(endpoint: Endpoint) -> tuple[str, dict[str, str]] | None:
    """The URL and headers that list the endpoint's models (the key as its protocol sends it), or None
    for a provider whose list says nothing about capabilities."""
    base = endpoint.base_url.rstrip("/")
    headers = dict(endpoint.headers)
    key = endpoint.api_key
    if endpoint.preset == "openrouter":
        if key:
            headers["authorization"] = f"Bearer {key}"
        return f"{base}/models", headers
    if endpoint.preset == "anthropic":
        headers["anthropic-version"] = _ANTHROPIC_VERSION
        if key:
            headers["x-api-key"] = key
        return f"{base}/v1/models?limit=1000", headers
    if endpoint.preset == "gemini":
        if key:
            headers["x-goog-api-key"] = key  # the header, never the URL (see gemini.py)
        return f"{base}/models?pageSize=1000", headers
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _str_list(value: Any) -> list[str] | None:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else None


def _supported(value: Any) -> bool | None:
    """Anthropic's `{"supported": bool}`."""
    flag = value.get("supported") if isinstance(value, dict) else None
    return flag if isinstance(flag, bool) else None


def _openrouter(item: dict[str, Any]) -> ListedModel:
    arch = item.get("architecture")
    modalities = _str_list(arch.get("input_modalities")) if isinstance(arch, dict) else None
    params = _str_list(item.get("supported_parameters"))
    return ListedModel(
        vision=None if modalities is None else "image" in modalities,
        tools=None if params is None else "tools" in params,
        json_schema=None if params is None else ("response_format" in params or "structured_outputs" in params),
        context_window=_positive_int(item.get("context_length")),
    )


def _anthropic(item: dict[str, Any]) -> ListedModel:
    caps = item.get("capabilities")
    caps = caps if isinstance(caps, dict) else {}
    return ListedModel(vision=_supported(caps.get("image_input")), json_schema=_supported(caps.get("structured_outputs")),
                       context_window=_positive_int(item.get("max_input_tokens")))


def _gemini(item: dict[str, Any]) -> ListedModel:
    return ListedModel(context_window=_positive_int(item.get("inputTokenLimit")))


_PARSERS: dict[str, tuple[str, str, Callable[[dict[str, Any]], ListedModel]]] = {
    "openrouter": ("data", "id", _openrouter),
    "anthropic": ("data", "id", _anthropic),
    "gemini": ("models", "name", _gemini),
}


def parse_model_list(preset: str | None, body: Any) -> ModelList | None:
    """The models a list names and what it says of each; None when the body is not a list of that shape."""
    parser = _PARSERS.get(preset or "")
    if parser is None or not isinstance(body, dict):
        return None
    field, id_field, read = parser
    items = body.get(field)
    if not isinstance(items, list):
        return None
    out: ModelList = {}
    for item in items[:MAX_MODELS]:
        if not isinstance(item, dict):
            continue
        name = item.get(id_field)
        if not isinstance(name, str) or not name or len(name) > 300:
            continue
        if preset == "gemini" and name.startswith("models/"):
            name = name[len("models/"):]
        out[name] = read(item)
    return out


def listed(models: ModelList, model: str) -> ListedModel | None:
    """The list's entry for a model id as a combo names it (Gemini's `models/` prefix or not)."""
    return models.get(model) or (models.get(model[len("models/"):]) if model.startswith("models/") else None)


async def fetch_model_list(sender: Sender, endpoint: Endpoint, *, timeout_s: float) -> ModelList | None:
    """Ask the endpoint's provider for its model list: what it says of each model, or None (no such list,
    an error, a timeout, a body of another shape). Never raises but cancellation."""
    request = list_request(endpoint)
    if request is None:
        return None
    url, headers = request
    body = await sender.get_json(url, headers, timeout_s=timeout_s, max_bytes=MAX_LIST_BYTES)
    return parse_model_list(endpoint.preset, body)


__all__ = ["LISTED_PRESETS", "ListedModel", "ModelList", "fetch_model_list", "list_request", "listed",
           "lists_capabilities", "parse_model_list"]

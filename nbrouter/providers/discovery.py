"""Finding local OpenAI-compatible servers (Ollama, llama.cpp, LM Studio, vLLM) on their default
loopback ports, and asking each for its models. A short probe whose answer is cached for a while."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from .presets import LOCAL_PRESETS, PRESETS

PROBE_TIMEOUT_S = 0.5
CACHE_TTL_S = 300.0


@dataclass(frozen=True)
class LocalServer:
    """A local server that answered the probe."""

    preset: str
    base_url: str
    models: tuple[str, ...]


_cache: tuple[float, tuple[LocalServer, ...]] | None = None


def probe_targets() -> list[tuple[str, str]]:
    """(preset, base_url) pairs to probe: the presets' defaults, or `NBROUTER_LOCAL_URLS`
    (`ollama=http://127.0.0.1:11434/v1,llamacpp=...`; empty to probe nothing)."""
    env = os.environ.get("NBROUTER_LOCAL_URLS")
    if env is None:
        return [(name, PRESETS[name].base_url) for name in LOCAL_PRESETS]
    out = []
    for item in env.split(","):
        name, _, url = item.strip().partition("=")
        if name in PRESETS and url:
            out.append((name, url))
    return out


async def _probe_one(client: object, preset: str, base_url: str) -> LocalServer | None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    try:
        response = await client.get(base_url.rstrip("/") + "/models", timeout=PROBE_TIMEOUT_S)
        if response.status_code != 200:
            return None
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    models = []
    for item in data.get("data", []) if isinstance(data, dict) else []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            models.append(item["id"])
    return LocalServer(preset, base_url, tuple(models))


async def find_local_servers(*, refresh: bool = False) -> tuple[LocalServer, ...]:
    """The local servers listening now (cached for CACHE_TTL_S)."""
    global _cache
    # real time, not the router's Clock: how old a probe of this machine's ports is (I/O shared by every
    # router in the process); the router decides when to ask again on its own clock (local_probe_refresh_s)
    now = time.monotonic()
    if not refresh and _cache is not None and now - _cache[0] < CACHE_TTL_S:
        return _cache[1]
    targets = probe_targets()
    found: tuple[LocalServer, ...] = ()
    if targets:
        import httpx

        async with httpx.AsyncClient(trust_env=False) as client:
            results = await asyncio.gather(*(_probe_one(client, p, u) for p, u in targets))
        found = tuple(r for r in results if r is not None)
    _cache = (now, found)
    return found

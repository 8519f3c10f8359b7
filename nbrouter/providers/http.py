"""The HTTP client nbrouter sends with: httpx over the httpx-aiohttp transport, or a transport of yours."""

from __future__ import annotations

from typing import Any


def new_client(*, transport: Any = None, timeout_s: float = 60.0) -> Any:
    """An `httpx.AsyncClient` for one event loop.

    Args:
        transport: any `httpx.AsyncBaseTransport` (`httpx.MockTransport(handler)` in a test); None for
            httpx over aiohttp, nbrouter's default (several times faster than httpx's own transport).
        timeout_s: the client's default timeout (each request sets its own).
    """
    import httpx

    if transport is None:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
    return httpx.AsyncClient(transport=transport, timeout=timeout_s)

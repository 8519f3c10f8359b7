"""HTTP clients for the router: one per event loop, closed with that loop, or the caller's own.

httpx clients are bound to the event loop that first used them, so a Router keeps one per loop. A loop
other than the router's own (a notebook's, or one `asyncio.run` made) may end at any time: the client is
tied to it through an async generator, which asyncio finalises when the loop shuts down
(`loop.shutdown_asyncgens()`, which `asyncio.run` calls), so the client's connections close with the loop
instead of leaking one client per `asyncio.run(router.acomplete(...))`.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, AsyncIterator


class Clients:
    """The HTTP client of each event loop; built from an injected transport or client, else the default."""

    def __init__(self, *, transport: Any = None, http_client: Any = None, timeout_s: float = 60.0) -> None:
        self._transport = transport
        self._given = http_client
        self._timeout_s = timeout_s
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def get(self) -> Any:
        """The client for the running loop (made on first use)."""
        if self._given is not None:
            return self._given  # the caller's: the caller closes it
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from ..providers.http import new_client

            client = self._clients[loop] = new_client(transport=self._transport, timeout_s=self._timeout_s)
            keeper = _close_with_loop(client)
            self._keepers[loop] = keeper
            # the first step registers the generator with the loop (sys.set_asyncgen_hooks), so that the
            # loop's shutdown_asyncgens() closes it, and the client with it
            asyncio.ensure_future(keeper.__anext__())
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (made by us; an injected client is left to its owner)."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        keeper = self._keepers.pop(loop, None)
        if keeper is not None:
            await keeper.aclose()
        elif client is not None:
            await client.aclose()

    def close_on(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Close the client of `loop` (a loop running in another thread) and wait for it."""
        if loop not in self._clients and loop not in self._keepers:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose_loop(loop), loop).result(timeout=timeout)
        except Exception:
            pass

    async def _aclose_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        await self.aclose()


async def _close_with_loop(client: Any) -> AsyncIterator[None]:
    try:
        yield
        yield  # never reached: the loop's shutdown (or aclose) closes the generator here
    finally:
        await client.aclose()

"""What carries the router's requests: one `providers.Sender` per event loop, closed with that loop.

A Sender's connections belong to the event loop that opened them, so a Router keeps one per loop. A loop
other than the router's own (a notebook's, or one that `asyncio.run` made) may end at any time: its
Sender is tied to it through an async generator, which asyncio finalises when the loop shuts down
(`loop.shutdown_asyncgens()`, which `asyncio.run` calls), so the connections close with the loop instead
of leaking one pool per `asyncio.run(router.acomplete(...))`. A transport or client the caller gave is
never closed here: whoever made it closes it.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, AsyncGenerator

if TYPE_CHECKING:
    import httpx

    from ...providers import Sender

from ..._core.clock import SYSTEM_CLOCK, Clock


class Senders:
    """The Sender of each event loop, made from an injected transport or client, or the default; each reads
    replies' times (rate-limit resets, Retry-After dates, daily resets) on the router's `clock`."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, http_client: httpx.AsyncClient | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        if transport is not None and http_client is not None:
            raise ValueError("give a transport or an http_client, not both")
        self._clock = clock
        self._transport = transport
        self._client = http_client
        self._senders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sender] = weakref.WeakKeyDictionary()
        self._keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = weakref.WeakKeyDictionary()
        #: the loop asked about last and its Sender (every call asks; nearly all on one loop)
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], Sender] | None = None

    def get(self) -> Sender:
        """The Sender of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        sender = self._senders.get(loop)
        if sender is None:
            from ...providers import Sender

            sender = self._senders[loop] = Sender(self._transport, http_client=self._client, clock=self._clock)
            keeper = self._keepers[loop] = _close_with_loop(sender)
            # the first step registers the generator with the loop (sys.set_asyncgen_hooks), so that the
            # loop's shutdown_asyncgens() closes it, and the Sender with it
            asyncio.ensure_future(keeper.__anext__())
        self._last = (weakref.ref(loop), sender)
        return sender

    async def aclose(self) -> None:
        """Close the Sender of the running loop."""
        loop = asyncio.get_running_loop()
        self._last = None
        sender = self._senders.pop(loop, None)
        keeper = self._keepers.pop(loop, None)
        if keeper is not None:
            await keeper.aclose()
        elif sender is not None:
            await sender.aclose()

    def close_on(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Close the Sender of `loop` (a loop running in another thread) and wait for it."""
        if loop not in self._senders:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=timeout)
        except Exception:
            pass


async def _close_with_loop(sender: Sender) -> AsyncGenerator[None, None]:
    try:
        yield
        yield  # never reached: the loop's shutdown (or aclose) closes the generator here
    finally:
        await sender.aclose()

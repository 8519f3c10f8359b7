"""The router's private event loop, in a daemon thread, so that sync calls work everywhere.

A Jupyter cell already runs inside an event loop; instead of patching asyncio (nest-asyncio), sync
methods hand their coroutine to this loop and wait for it. Started on first use, stopped at exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import weakref
from typing import Any, AsyncGenerator, Callable, Coroutine, Iterator, TypeVar

from ..._core.closing import close_at_exit

T = TypeVar("T")

#: made first (engine.py imports this module before those of the other sets): the loops stop last at exit
_loops: "weakref.WeakSet[BackgroundLoop]" = close_at_exit("stop")


class BackgroundLoop:
    """One asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str = "nbrouter-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started if needed."""
        with self._lock:
            if self._loop is None or not self.running:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
                _loops.add(self)
            return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> tuple[concurrent.futures.Future[T], threading.Event]:
        """Schedule `coro`; the event is set once it has really finished (also after a cancel)."""
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coro
            finally:
                finished.set()

        return asyncio.run_coroutine_threadsafe(tracked(), self.loop()), finished

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait. Ctrl-C (KeyboardInterrupt) cancels it, waits until it has
        recorded its cancelled attempt, then re-raises."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("a sync nbrouter method was called from the router's own loop; use the async one")
        future, finished = self.submit(coro)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            finished.wait(2.0)
            raise

    def iterate(self, produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, Any]], last: Callable[[T], bool],
                refusal: str) -> Iterator[T]:
        """Run `produce(put)` on the loop and yield, in the caller's thread, what it puts through a thread-safe
        queue, up to the item for which `last` is true. A consumer that stops early (Ctrl-C, or closing the
        generator) cancels it and waits until it has finished, so that what it recorded is whole. Called from
        the loop's own thread: RuntimeError(refusal)."""
        if self.in_loop_thread():
            raise RuntimeError(refusal)
        items: queue.SimpleQueue[T] = queue.SimpleQueue()
        future, finished = self.submit(produce(items.put))
        try:
            while True:
                item = items.get()
                yield item
                if last(item):
                    break
        finally:
            if not finished.is_set():
                future.cancel()
                finished.wait(2.0)

    @staticmethod
    async def aiterate(produce: Callable[[Callable[[T], None]], Coroutine[Any, Any, Any]], last: Callable[[T], bool]) -> AsyncGenerator[T, None]:
        """`iterate` on the caller's own loop: run `produce(put)` as a task and yield what it puts, up to the
        item for which `last` is true; a consumer that stops early cancels the task and waits for it."""
        items: asyncio.Queue[T] = asyncio.Queue()
        task = asyncio.ensure_future(produce(items.put_nowait))
        try:
            while True:
                item = await items.get()
                yield item
                if last(item):
                    break
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:
                    pass

    def stop(self) -> None:
        """Cancel what is running, stop the loop and join its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5.0)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not thread.is_alive():
            loop.close()

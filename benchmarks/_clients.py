"""One async driver per client, all sending the same chat request to the loopback server.

Each driver does the work a caller needs for a usable answer: send, read the whole body (or the whole
stream), decode the JSON and take the text out. The raw clients do it with the least code that is
correct; nbrouter and LiteLLM do whatever they do.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Awaitable, Callable

from _common import BENCH_KEY, router_config

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
POOL = 256  # connections allowed per client, well above the highest concurrency


class Driver:
    """A client under test: `call(stream)` returns the answer's text."""

    name = ""

    async def call(self, stream: bool) -> str:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class RawHttpx(Driver):
    """`httpx.AsyncClient`, with its default transport or with httpx-aiohttp's transport."""

    def __init__(self, url: str, *, aiohttp_transport: bool) -> None:
        import httpx

        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        if aiohttp_transport:
            from httpx_aiohttp import AiohttpTransport

            self.client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=60.0)
            self.name = "httpx + aiohttp transport"
        else:
            self.client = httpx.AsyncClient(limits=limits, timeout=60.0)
            self.name = "httpx (default transport)"
        self.url = url + "/chat/completions"
        self.headers = {"authorization": f"Bearer {BENCH_KEY}"}

    async def call(self, stream: bool) -> str:
        body: dict[str, Any] = {"model": "bench-model", "messages": MESSAGES}
        if not stream:
            r = await self.client.post(self.url, json=body, headers=self.headers)
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]
        body["stream"] = True
        pieces = []
        async with self.client.stream("POST", self.url, json=body, headers=self.headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices") or ():
                    piece = choice["delta"].get("content")
                    if piece:
                        pieces.append(piece)
        return "".join(pieces)

    async def aclose(self) -> None:
        await self.client.aclose()


class NbRouter(Driver):
    """`Router.acomplete` on a one-target combo, state persisted to a temporary SQLite file."""

    name = "nbrouter Router.acomplete"

    def __init__(self, url: str, state_path: str) -> None:
        from nbrouter import Router

        self.router = Router(router_config(url, {"one": {"targets": ["bench/bench-model"]}}), state_path=state_path)

    async def call(self, stream: bool) -> str:
        result = await self.router.acomplete("one", messages=MESSAGES, stream=stream)
        return result.text

    async def aclose(self) -> None:
        await self.router.aclose()
        self.router.close()


class LiteLLMRouter(Driver):
    """LiteLLM's `Router.acompletion`, one OpenAI-compatible deployment at the loopback server."""

    name = "LiteLLM Router.acompletion"

    def __init__(self, url: str) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm
        from litellm import Router

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self.router = Router(model_list=[{
            "model_name": "bench",
            "litellm_params": {"model": "openai/bench-model", "api_base": url, "api_key": BENCH_KEY},
        }])

    async def call(self, stream: bool) -> str:
        if not stream:
            r = await self.router.acompletion(model="bench", messages=MESSAGES)
            return r.choices[0].message.content or ""
        pieces = []
        response = await self.router.acompletion(model="bench", messages=MESSAGES, stream=True)
        async for chunk in response:
            for choice in chunk.choices or ():
                piece = choice.delta.content if choice.delta else None
                if piece:
                    pieces.append(piece)
        return "".join(pieces)


def litellm_version() -> str | None:
    """LiteLLM's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return None


async def drive(call: Callable[[], Awaitable[str]], n: int, concurrency: int) -> tuple[float, list[float], float]:
    """Send `n` requests, `concurrency` at a time; return (requests per second, per-request latencies,
    this process's CPU seconds per request, all threads counted)."""
    latencies: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            text = await call()
            latencies.append(time.perf_counter() - t0)
            if not text:
                raise RuntimeError("an empty answer: the benchmark would measure nothing")

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return len(latencies) / elapsed, latencies, cpu / len(latencies)

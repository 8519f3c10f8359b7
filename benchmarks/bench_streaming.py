"""Streaming: time to first text through the router against raw httpx, and SSE events parsed per second
on a 10,000-event stream.

    python benchmarks/bench_streaming.py [--rounds 5] [--n 200]

Time to first text: `Router.astream` (time until the first `TextDelta`) against raw httpx clients that
stream the same request and stop the clock at the first non-empty content delta they decode, at
concurrency 1. The server writes its whole stream at once, so this is the cost of starting a streamed
call, not of a slow model.

Parsing: a 10,000-event OpenAI stream held in memory, fed as an async byte iterator either in 64 KiB
pieces (a fast server: many events per read) or one event per piece (a paced model: one token per
read). nbrouter's path is `providers._http.iter_sse` plus the OpenAI stream decoder, which is what
`send` runs; `iter_sse` alone is shown too. The baseline is a plain line split: split the buffer on
newlines, `json.loads` every `data:` line, take `choices[0].delta.content`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from _clients import MESSAGES, RawHttpx
from _common import (
    SERVER_NOTE,
    LoopbackServer,
    fmt_ratio,
    fmt_us,
    heading,
    isolate_user_state,
    machine,
    median,
    router_config,
    spread,
    table,
)

EVENTS = 10_000


def stream_bytes(n: int) -> list[bytes]:
    """One SSE event per item: n content chunks, a finish chunk, a usage chunk, [DONE]."""
    out = []
    for i in range(n):
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "bench-model",
                 "choices": [{"index": 0, "delta": {"content": f" tok{i % 100}"}, "finish_reason": None}]}
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    out.append(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    out.append(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"bench-model","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":10000,"total_tokens":10005}}\n\n')
    out.append(b"data: [DONE]\n\n")
    return out


def pieces(events: list[bytes], size: int | None) -> list[bytes]:
    if size is None:
        return events
    blob = b"".join(events)
    return [blob[i : i + size] for i in range(0, len(blob), size)]


async def _aiter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def parse_nbrouter(items: list[bytes]) -> str:
    from nbrouter._core.clock import SYSTEM_CLOCK
    from nbrouter.providers import ChatRequest, Endpoint, get_protocol
    from nbrouter.providers._http import iter_sse

    protocol = get_protocol("openai")
    endpoint = Endpoint(provider="bench", protocol="openai", base_url="http://127.0.0.1:9/v1", api_key="k",
                        preset=None, local=False, headers={})
    decoder = protocol.decoder(endpoint, ChatRequest(model="bench-model", messages=MESSAGES, stream=True), clock=SYSTEM_CLOCK)
    out = []
    async for event in iter_sse(_aiter(items)):
        text = decoder.feed(event)
        if text:
            out.append(text)
        if decoder.done:
            break
    decoder.finish()
    return "".join(out)


async def parse_sse_only(items: list[bytes]) -> int:
    from nbrouter.providers._http import iter_sse

    n = 0
    async for _event in iter_sse(_aiter(items)):
        n += 1
    return n


async def parse_line_split(items: list[bytes]) -> str:
    out = []
    buffer = b""
    async for chunk in _aiter(items):
        buffer += chunk
        lines = buffer.split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if line.startswith(b"data: "):
                data = line[6:]
                if data == b"[DONE]":
                    return "".join(out)
                for choice in json.loads(data).get("choices") or ():
                    piece = choice["delta"].get("content")
                    if piece:
                        out.append(piece)
    return "".join(out)


def parse_timer(fn: Callable[[list[bytes]], Any], items: list[bytes], repeat: int) -> Callable[[], float]:
    """Events per second, best of `repeat` runs within the round."""
    def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            asyncio.run(fn(items))
            best = min(best, time.perf_counter() - t0)
        return (EVENTS + 3) / best

    return run


async def ttft_router(router: Any, combo: str, n: int) -> float:
    from nbrouter import TextDelta

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        first = None
        async for event in router.astream(combo, messages=MESSAGES):
            if first is None and isinstance(event, TextDelta) and event.text:
                first = time.perf_counter() - t0
        assert first is not None
        times.append(first)
    return median(times)


async def ttft_raw(raw: RawHttpx, model: str, n: int) -> float:
    times = []
    body = {"model": model, "messages": MESSAGES, "stream": True}
    for _ in range(n):
        t0 = time.perf_counter()
        first = None
        async with raw.client.stream("POST", raw.url, json=body, headers=raw.headers) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices") or ():
                    if first is None and choice["delta"].get("content"):
                        first = time.perf_counter() - t0
        assert first is not None
        times.append(first)
    return median(times)


async def ttft(args: argparse.Namespace, paced: bool) -> dict[str, list[float]]:
    from nbrouter import Router

    model = "paced-model" if paced else "bench-model"
    n_calls = max(10, args.n // 4) if paced else args.n
    with LoopbackServer() as server:
        router = Router(router_config(server.openai_url, {"one": {"targets": [f"bench/{model}"]}}),
                        state_path=str(args.tmp / f"state-{model}.sqlite3"))
        raws = [RawHttpx(server.openai_url, aiohttp_transport=False), RawHttpx(server.openai_url, aiohttp_transport=True)]
        clients: dict[str, Callable[[int], Any]] = {
            raws[0].name: lambda n: ttft_raw(raws[0], model, n),
            raws[1].name: lambda n: ttft_raw(raws[1], model, n),
            "nbrouter Router.astream": lambda n: ttft_router(router, "one", n),
        }
        for f in clients.values():
            await f(20)
        res: dict[str, list[float]] = {k: [] for k in clients}
        names = list(clients)
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                res[name].append(await clients[name](n_calls))
        for raw in raws:
            await raw.aclose()
        await router.aclose()
        router.close()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=200, help="streamed calls per client per round")
    p.add_argument("--repeat", type=int, default=3, help="parses per round (the best is kept)")
    args = p.parse_args()
    args.tmp = isolate_user_state()

    trows = []
    for paced in (False, True):
        tt = asyncio.run(ttft(args, paced))
        base = tt["httpx + aiohttp transport"]
        label = "paced: one event per 2 ms" if paced else "burst: the whole stream in one write"
        trows += [[label, name, fmt_us(median(v)), spread([x * 1e6 for x in v], "{:,.0f}"),
                   fmt_ratio(median([a / b for a, b in zip(v, base)]))] for name, v in tt.items()]

    events = stream_bytes(EVENTS)
    expected = asyncio.run(parse_line_split(events))
    assert asyncio.run(parse_nbrouter(events)) == expected  # same text before timing anything
    prows = []
    for label, size in (("64 KiB pieces", 65536), ("one event per piece", None)):
        items = pieces(events, size)
        variants = {
            "plain line split + json.loads (baseline)": parse_timer(parse_line_split, items, args.repeat),
            "nbrouter iter_sse + OpenAI decoder": parse_timer(parse_nbrouter, items, args.repeat),
            "nbrouter iter_sse alone": parse_timer(parse_sse_only, items, args.repeat),
        }
        res: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                res[name].append(variants[name]())
        b = res["plain line split + json.loads (baseline)"]
        for name, v in res.items():
            prows.append([label, name, f"{median(v):,.0f}", spread(v), fmt_ratio(median([x / y for x, y in zip(v, b)]))])

    heading("Streaming: time to first text, and SSE parsing speed", "python benchmarks/bench_streaming.py")
    print(f"Machine: {machine()}.\n")
    print(SERVER_NOTE + "\n")
    print(f"Time to first text at concurrency 1: median of {args.rounds} interleaved rounds (each round's "
          f"median over {args.n} streamed calls, {max(10, args.n // 4)} when paced); ratio = against httpx + "
          "aiohttp in the same round (lower is better). nbrouter's state is persisted to SQLite. Two server "
          "behaviours: the whole stream in one write (then `astream`'s producer task reads on to the end of "
          "the answer before the consumer runs, so its first text arrives with the whole answer), and paced "
          "(the role and first text at once, then one event every 2 ms, as a model produces tokens: the task "
          "waits on the socket after the first text and the consumer gets it then).\n")
    print(table(["server", "client", "time to first text us", "spread of round medians", "ratio"], trows))
    print()
    print(f"Parsing a {EVENTS:,}-event OpenAI stream from memory (no socket), events per second, median of "
          f"{args.rounds} interleaved rounds (best of {args.repeat} parses each); ratio = against the plain "
          "line split in the same round (higher is better).\n")
    print(table(["fed as", "parser", "events/s", "spread", "ratio"], prows))
    print()


if __name__ == "__main__":
    main()

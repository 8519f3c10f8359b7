"""Property-based: whatever bytes a provider sends, `send` ends in a Completion or a ProviderFailure, and a
Router over a two-target combo ends in a RouteResult or a RouteError with every attempt logged.

Replies are built from a valid body or SSE stream of each protocol, then mutated: subtrees replaced by
random JSON (NaN and 1e400 included), keys dropped, values wrapped; bytes truncated, invalid UTF-8
inserted, very long lines; random status codes and headers (absurd numbers, huge cookies, a lying
content-encoding); framing by content-length, by close or chunked; and the whole reply split at random
points into separate TCP writes. Every reply goes over real HTTP on loopback (`testing.RawServer`).
An unmutated reply must come back as the template's answer, so the harness itself is checked.

Bounded: a few dozen examples per case, all sends on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from typing import Any, Awaitable, Iterator, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbrouter._core import ErrorKind, ProviderFailure, remember_secret
from nbrouter.providers import ChatRequest, Completion, Endpoint, Sender, get_protocol
from nbrouter.testing import RawResponse, RawServer

T = TypeVar("T")
KEY = "fz7Qw2Er9Ty4Ui8Op3As"
#: the SSE line cap the sends use: small, so that the long-line cases cost little
LINE_CAP = 64 * 1024
#: `NBROUTER_FUZZ_EXAMPLES=N` runs N random examples per test (and N/3 through a Router) instead of CI's fixed set
_MORE = int(os.environ.get("NBROUTER_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(max_examples=_MORE or 60, deadline=None, derandomize=not _MORE, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ROUTER_FUZZ = settings(FUZZ, max_examples=max(20, _MORE // 3))
PROTOCOLS = ("openai", "anthropic", "gemini")

# -- valid templates, one answer "Hello" each -----------------------------------------------------

BODIES: dict[str, Any] = {
    "openai": {"id": "c1", "object": "chat.completion", "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}}},
    "anthropic": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                  "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
                  "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 0}},
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 6},
               "modelVersion": "gemini-x", "responseId": "r1"},
}
ERRORS: dict[str, Any] = {
    "openai": {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
    "anthropic": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"},
    "gemini": {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED",
                         "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]}},
}
EVENTS: dict[str, list[tuple[str | None, Any]]] = {
    "openai": [(None, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
               (None, {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}),
               (None, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}),
               (None, "[DONE]")],
    "anthropic": [("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 5}}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                  ("ping", {"type": "ping"}),
                  ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
                  ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
                  ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                  ("message_stop", {"type": "message_stop"})],
    "gemini": [(None, {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}], "modelVersion": "gemini-x"}),
               (None, {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}})],
}

# -- strategies --------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e400, -1e400, "²", "1e400", "", "NaN", "STOP", "stop", "text"])
           | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
HEADER_NAMES = st.sampled_from([
    "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests", "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens", "retry-after", "retry-after-ms", "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-requests-reset", "x-request-id", "request-id", "content-type",
    "content-encoding", "set-cookie", "x-anything",
])
HEADER_VALUES = (st.sampled_from(["1e400", "-1", "nan", "inf", "0", "3", "2.5s", "1m30s", "gzip", "br", "text/html",
                                  "Wed, 21 Oct 2015 07:28:00 GMT", "2026-13-45T99:99:99Z", KEY, "x" * 9000])
                 | st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=30))
STATUSES = st.sampled_from([200, 200, 200, 200, 400, 401, 402, 403, 404, 408, 413, 429, 500, 502, 503, 504, 529]) | st.integers(200, 599)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside `value` (the root included)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def dropped(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy = dict(value) if isinstance(value, dict) else list(value)
        del copy[path[0]]
        return copy
    return replaced(value, path[:1], dropped(value[path[0]], path[1:]))


@st.composite
def mutated_json(draw: Any, value: Any) -> tuple[Any, bool]:
    """(value after 0-3 random mutations, whether any happened)."""
    changed = False
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(list(paths(value))))
        op = draw(st.sampled_from(["replace", "drop", "wrap"]))
        if op == "drop" and path:
            value = dropped(value, path)
        elif op == "wrap":
            inner = value
            for step in path:
                inner = inner[step]
            value = replaced(value, path, [inner])
        else:
            value = replaced(value, path, draw(JSON))
        changed = True
    return value, changed


@st.composite
def mutated_bytes(draw: Any, blob: bytes) -> tuple[bytes, bool]:
    """(blob after 0-2 byte-level mutations, whether any happened)."""
    changed = False
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2]))):
        op = draw(st.sampled_from(["truncate", "insert", "garbage", "long"]))
        at = draw(st.integers(0, len(blob)))
        if op == "truncate":
            blob = blob[:at]
        elif op == "insert":
            blob = blob[:at] + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x00", b"\n", b"\r\n\r\n", b"data: {", b"\xed\xa0\x80"])) + blob[at:]
        elif op == "long":
            # a line longer than the cap, without a newline for a while
            blob = blob[:at] + b"data: " + b"z" * draw(st.integers(LINE_CAP - 10, LINE_CAP + 5000)) + blob[at:]
        else:
            blob = draw(st.binary(max_size=64))
        changed = True
    return blob, changed


def sse_bytes(events: list[tuple[str | None, Any]], newline: bytes, comments: bool) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data, allow_nan=True)
        head = (b"event: " + name.encode() + newline) if name else b""
        lines = b"".join(b"data: " + line.encode("utf-8", "surrogatepass") + newline for line in text.split("\n"))
        out.append((b": keep-alive" + newline if comments else b"") + head + lines + newline)
    return b"".join(out)


def chunked(body: bytes, cuts: list[int]) -> bytes:
    bounds = sorted({0, len(body), *[c for c in cuts if 0 < c < len(body)]})
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])]
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


@st.composite
def replies(draw: Any, protocol: str, stream: bool) -> tuple[list[bytes], bool]:
    """(the reply as TCP writes, whether it is the untouched valid template)."""
    status = draw(st.sampled_from([200]) if draw(st.booleans()) else STATUSES)
    pristine = status == 200
    content_type = b"application/json"
    if stream and status == 200:
        events: list[tuple[str | None, Any]] = []
        for name, data in EVENTS[protocol]:
            if isinstance(data, str):
                events.append((name, data))
                continue
            value, changed = draw(mutated_json(data))
            pristine = pristine and not changed
            events.append((name, value))
        if draw(st.booleans()):
            # drop, duplicate or reorder an event
            i = draw(st.integers(0, len(events) - 1))
            events = draw(st.sampled_from([events[:i] + events[i + 1:], events[:i] + [events[i]] + events[i:], events[i:] + events[:i]]))
            pristine = False
        body = sse_bytes(events, draw(st.sampled_from([b"\n", b"\r\n"])), draw(st.booleans()))
        content_type = b"text/event-stream"
    else:
        template = BODIES[protocol] if status == 200 or draw(st.booleans()) else ERRORS[protocol]
        value, changed = draw(mutated_json(template))
        pristine = pristine and not changed
        body = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    body, changed = draw(mutated_bytes(body))
    pristine = pristine and not changed
    headers = [(b"content-type", content_type)]
    for name, val in draw(st.just([]) | st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3)):
        headers.append((name.encode(), val.encode("latin-1")))
        pristine = False
    framing = draw(st.sampled_from(["length", "length", "close", "close", "chunked", "chunked", "short", "long"]))
    if framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
        payload = chunked(body, draw(st.lists(st.integers(0, max(len(body), 1)), max_size=4)))
    else:
        payload = body
        if framing != "close":
            delta = {"length": 0, "short": -draw(st.integers(1, 20)), "long": draw(st.integers(1, 20))}[framing]
            headers.append((b"content-length", str(max(0, len(body) + delta)).encode()))
            pristine = pristine and delta == 0
    status_line = b"HTTP/1.1 %d X" % status
    if draw(st.sampled_from([False] * 19 + [True])):
        status_line = draw(st.sampled_from([b"HTTP/1.1 abc X", b"HTTP/9.9 200 OK", b"garbage", b"HTTP/1.1 200", b""]))
        pristine = False
    headers.append((b"connection", b"close"))
    head = status_line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    whole = head + payload
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(whole) - 1, 1)), max_size=4))))
    bounds = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in zip(bounds, bounds[1:]) if b > a], pristine


# -- harness ------------------------------------------------------------------------------------------


class LoopThread:
    """One event loop on a thread for the whole module: a Sender (and a Router's client) live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[LoopThread, RawServer, Sender]]:
    remember_secret(KEY)
    loop = LoopThread()
    server = RawServer().start()

    async def make() -> Sender:
        return Sender()

    sender = loop.run(make())
    yield loop, server, sender
    loop.run(sender.aclose())
    server.stop()
    loop.close()


def base_url(protocol: str, root: str) -> str:
    return root + {"openai": "/v1", "anthropic": "", "gemini": "/v1beta"}[protocol]


def check_outcome(result: Completion | ProviderFailure, pristine: bool) -> None:
    if pristine:
        assert isinstance(result, Completion) and result.text == "Hello", repr(result)
    if isinstance(result, Completion):
        assert isinstance(result.text, str)
        assert result.request_id is None or (isinstance(result.request_id, str) and len(result.request_id) <= 128)
        for value in (result.usage.input_tokens, result.usage.output_tokens) if result.usage else ():
            assert isinstance(value, int) and 0 <= value
        return
    assert isinstance(result.kind, ErrorKind)
    assert isinstance(result.message, str) and len(result.message) <= 600
    assert KEY not in result.message and KEY not in repr(result) and KEY not in (result.request_id or "")
    for wait in (result.retry_after_s, result.reset_at):
        assert wait is None or math.isfinite(wait)


async def one_send(sender: Sender, ep: Endpoint, stream: bool) -> Completion | ProviderFailure:
    request = ChatRequest("m", [{"role": "user", "content": "hi"}], stream=stream)
    try:
        return await sender.send(get_protocol(ep.protocol), ep, request, timeout_s=5, idle_timeout_s=5, max_line_bytes=LINE_CAP)
    except ProviderFailure as failure:
        return failure
    # anything else propagates and fails the example: that is the property


# -- send -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@FUZZ
@given(data=st.data())
def test_send_ends_in_a_completion_or_a_provider_failure(wire, protocol, stream, data):
    loop, server, sender = wire
    pieces, pristine = data.draw(replies(protocol, stream))
    server.reset()
    server.script(RawResponse(pieces))
    ep = Endpoint("raw", protocol, base_url(protocol, server.url), api_key=KEY)
    result = loop.run(one_send(sender, ep, stream))
    if not server.requests:
        # the request went out on a pooled connection the server had already closed: a network failure
        # (the only way to reach no server here), and the reply was never read
        assert isinstance(result, ProviderFailure) and result.kind is ErrorKind.NETWORK, repr(result)
        return
    check_outcome(result, pristine)
    assert len(server.requests) == 1


# -- a Router over a two-target combo ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def routers(wire, tmp_path_factory) -> Iterator[dict[str, Any]]:
    from nbrouter import Router
    from nbrouter.testing import ProviderSimulator, Reply

    loop, server, _sender = wire
    sim = ProviderSimulator().start()
    sim.set_default(Reply("from the second target"))
    os.environ["FUZZ_KEY"] = KEY
    made: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        config = {
            "providers": {
                "raw": {"protocol": protocol, "base_url": base_url(protocol, server.url), "api_key_env": "FUZZ_KEY"},
                "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "FUZZ_KEY"},
            },
            "combos": {"c": {"targets": ["raw/m", "sim/m"]}},
            "policy": {"server_error_backoff_s": 0.0},
        }
        made[protocol] = Router(config, state_path=tmp_path_factory.mktemp(protocol) / "state.sqlite3")
    yield made
    for router in made.values():
        loop.run(router.aclose())
        router.close()
    sim.stop()
    os.environ.pop("FUZZ_KEY", None)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@ROUTER_FUZZ
@given(data=st.data())
def test_a_router_call_ends_in_a_result_or_a_route_error_with_every_attempt_logged(wire, routers, protocol, stream, data):
    from nbrouter import RouteError, RouteResult
    from nbrouter.router.types import Action

    loop, server, _sender = wire
    router = routers[protocol]
    pieces, pristine = data.draw(replies(protocol, stream))
    router.reset()
    server.reset()
    server.script(RawResponse(pieces))
    before = len(router.log(100_000))

    async def call() -> Any:
        try:
            return await router.acomplete("c", "hi", stream=stream)
        except RouteError as error:
            return error

    outcome = loop.run(call())
    assert isinstance(outcome, (RouteResult, RouteError)), repr(outcome)
    attempts = [a for a in outcome.attempts if a.action is not Action.SKIPPED]
    assert attempts and attempts[0].candidate.startswith("raw")
    reached = bool(server.requests)
    # not reached: a pooled connection the server had closed, a network failure of the first target
    assert reached or attempts[0].kind is ErrorKind.NETWORK, [(a.kind, a.message) for a in attempts]
    assert len(server.requests) <= 1
    rows = router.log(100_000)[before:]
    assert [(r["candidate"], r["kind"]) for r in rows if r["action"] != "skipped"] == [
        (a.candidate, a.kind.value if a.kind else None) for a in attempts
    ]
    for row in rows:
        assert KEY not in json.dumps(row, default=str)
    if pristine and reached:
        assert isinstance(outcome, RouteResult) and outcome.text == "Hello", [(a.kind, a.message) for a in attempts]

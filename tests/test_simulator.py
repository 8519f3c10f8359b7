"""The provider simulator, driven through real HTTP on loopback: every behaviour in every protocol's own
wire format (providers.md sections 1-4), scripts, the request log and the server's lifecycle."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

import nbrouter.testing
from nbrouter.testing import (
    ContentFilter,
    ContextOverflow,
    CutStream,
    Drop,
    Empty,
    Forbidden,
    Hang,
    Malformed,
    NotFound,
    Overloaded,
    ProviderSimulator,
    QuotaExceeded,
    RateLimited,
    Raw,
    RecordedRequest,
    Reply,
    ServerError,
    Unauthorized,
)
from nbrouter.testing._wire import go_duration

PROTOCOLS = ("openai", "anthropic", "gemini", "openrouter")
PROMPT = "Hello simulator"
KEY = "sk-test-0123456789abcdef"
REQUEST_ID_HEADER = {"openai": "x-request-id", "anthropic": "request-id", "openrouter": "x-generation-id"}


# -- how each protocol's client talks ------------------------------------------------------------


def request_parts(sim: ProviderSimulator, protocol: str, model: str, *, stream: bool, key: str | None, include_usage: bool,
                  text: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, body) as a client of `protocol` would send them."""
    headers: dict[str, str] = {}
    if protocol == "gemini":
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        if key:
            headers["x-goog-api-key"] = key
        return f"{sim.gemini_url}/models/{model}:{action}", headers, {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    if protocol == "anthropic":
        body["max_tokens"] = 64
        headers["anthropic-version"] = "2023-06-01"
        if key:
            headers["x-api-key"] = key
        return sim.anthropic_url + "/v1/messages", headers, body
    if stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    if key:
        headers["authorization"] = f"Bearer {key}"
    base = sim.openrouter_url if protocol == "openrouter" else sim.openai_url
    return base + "/chat/completions", headers, body


def post(client: httpx.Client, sim: ProviderSimulator, protocol: str, model: str = "m-1", *, stream: bool = False,
         key: str | None = KEY, include_usage: bool = False, text: str = PROMPT, **body: Any) -> httpx.Response:
    url, headers, payload = request_parts(sim, protocol, model, stream=stream, key=key, include_usage=include_usage, text=text)
    payload.update(body)
    return client.post(url, headers=headers, json=payload)


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event; comment lines dropped, bare lines (Gemini errors) as ('raw', line)."""
    events: list[tuple[str | None, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            else:
                events.append(("raw", line))
        if data:
            events.append((name, "\n".join(data)))
    return events


def reply_text(protocol: str, body: dict[str, Any]) -> str:
    if protocol == "anthropic":
        return "".join(block["text"] for block in body["content"])
    if protocol == "gemini":
        return "".join(part["text"] for part in body["candidates"][0]["content"]["parts"])
    return body["choices"][0]["message"]["content"]


def stream_text(protocol: str, events: list[tuple[str | None, str]]) -> tuple[str, list[str]]:
    """(the text, its pieces) of a stream's content events."""
    pieces: list[str] = []
    for name, data in events:
        if data == "[DONE]" or name == "raw":
            continue
        chunk = json.loads(data)
        if protocol == "anthropic":
            if name == "content_block_delta":
                pieces.append(chunk["delta"]["text"])
        elif protocol == "gemini":
            for candidate in chunk.get("candidates", []):
                pieces.extend(part["text"] for part in candidate["content"]["parts"])
        else:
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
    return "".join(pieces), pieces


def echo(model: str = "m-1", text: str = PROMPT) -> str:
    return f"Simulated reply from {model}: {text[:60]}"


@pytest.fixture
def client() -> Any:
    with httpx.Client(timeout=5.0) as c:
        yield c


@pytest.fixture
def sim(provider_simulator: ProviderSimulator) -> ProviderSimulator:
    """A fresh simulator per test, from the package's own pytest plugin."""
    return provider_simulator


# -- the public API -------------------------------------------------------------------------------


def test_package_exports_the_documented_names() -> None:
    expected = {
        "ProviderSimulator", "RecordedRequest", "Reply", "RateLimited", "QuotaExceeded", "Unauthorized", "Forbidden",
        "NotFound", "ServerError", "Overloaded", "Hang", "Drop", "CutStream", "Malformed", "Empty", "ContextOverflow",
        "ContentFilter", "Raw",
    }
    assert expected <= set(nbrouter.testing.__all__)
    for name in nbrouter.testing.__all__:
        assert getattr(nbrouter.testing, name) is not None


def test_importing_nbrouter_and_the_pytest_plugin_does_not_import_aiohttp() -> None:
    code = "import sys, nbrouter, nbrouter.testing.pytest_plugin, nbrouter.testing; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_behaviours_reject_fields_they_do_not_know() -> None:
    with pytest.raises(ValueError):
        Reply(usage={"prompt_tokens": 3})
    with pytest.raises(ValueError):
        Reply(rate_limit={"remaining": 3})
    with pytest.raises(ValueError):
        CutStream(error="teapot")
    with pytest.raises(TypeError):
        ProviderSimulator().script(["not a behaviour"])  # type: ignore[list-item]


# -- successes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_reply_echoes_the_last_user_message_in_the_protocols_body(sim, client, protocol) -> None:
    r = post(client, sim, protocol, text="first " * 3 + "x" * 80)
    assert r.status_code == 200
    body = r.json()
    assert reply_text(protocol, body) == echo(text="first " * 3 + "x" * 80)
    assert len(echo(text="first " * 3 + "x" * 80)) == len("Simulated reply from m-1: ") + 60
    if protocol in REQUEST_ID_HEADER:
        assert r.headers[REQUEST_ID_HEADER[protocol]]
    else:
        assert "x-request-id" not in r.headers


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reply_usage_is_estimated_from_characters(sim, client, protocol) -> None:
    sim.script([Reply("abcdefghij")], model="m-1")
    body = post(client, sim, protocol).json()
    prompt, output = len(PROMPT) // 4 + 1, len("abcdefghij") // 4 + 1
    if protocol == "anthropic":
        assert body["stop_reason"] == "end_turn"
        assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"]) == (prompt, output)
    elif protocol == "gemini":
        assert body["candidates"][0]["finishReason"] == "STOP"
        meta = body["usageMetadata"]
        assert (meta["promptTokenCount"], meta["candidatesTokenCount"], meta["totalTokenCount"]) == (prompt, output, prompt + output)
    else:
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (prompt, output, prompt + output)
        if protocol == "openrouter":
            assert usage["cost"] == pytest.approx(0.000001 * (prompt + output))
            assert body["id"].startswith("gen-")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_scripted_usage_lands_in_each_protocols_own_fields(sim, client, protocol) -> None:
    usage = {"input_tokens": 100, "output_tokens": 20, "cached_tokens": 30}
    sim.script([Reply("hi", usage=usage)] * 2, model="m-1")
    body = post(client, sim, protocol).json()
    events = sse(post(client, sim, protocol, stream=True, include_usage=True).text)
    if protocol == "anthropic":
        # input_tokens leaves the cache out
        assert {"input_tokens": 70, "cache_read_input_tokens": 30, "output_tokens": 20}.items() <= body["usage"].items()
        start = json.loads(events[0][1])["message"]["usage"]
        assert (start["input_tokens"], start["cache_read_input_tokens"]) == (70, 30)
        delta = next(json.loads(d) for n, d in events if n == "message_delta")
        assert delta["usage"]["output_tokens"] == 20
    elif protocol == "gemini":
        expected = {"promptTokenCount": 100, "cachedContentTokenCount": 30, "candidatesTokenCount": 20, "totalTokenCount": 120}
        assert expected.items() <= body["usageMetadata"].items()
        assert json.loads(events[-1][1])["usageMetadata"]["totalTokenCount"] == 120
    else:
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (100, 20)
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 30
        usage_chunk = json.loads(events[-2][1])
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 30
        if protocol == "openrouter":
            assert body["usage"]["cost"] == pytest.approx(0.00012)


def test_openai_stream_ends_with_done_after_the_usage_chunk(sim, client) -> None:
    r = post(client, sim, "openai", stream=True, include_usage=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(echo()) // 4 + 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]] == [None] * (len(chunks) - 2)
    text, pieces = stream_text("openai", events)
    assert text == echo() and all(len(p) <= 4 for p in pieces)


def test_openai_stream_without_include_usage_has_no_usage_chunk(sim, client) -> None:
    events = sse(post(client, sim, "openai", stream=True).text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_anthropic_stream_has_the_full_event_sequence_with_one_ping(sim, client) -> None:
    r = post(client, sim, "anthropic", stream=True)
    events = sse(r.text)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names.count("ping") == 1
    deltas = [n for n in names if n == "content_block_delta"]
    assert len(deltas) == -(-len(echo()) // 4)
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(data)["type"] == name for name, data in events)
    delta = json.loads(events[-2][1])
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == len(echo()) // 4 + 1
    assert stream_text("anthropic", events)[0] == echo()
    assert r.headers["request-id"]


def test_gemini_stream_last_chunk_holds_finish_reason_and_usage_totals(sim, client) -> None:
    r = post(client, sim, "gemini", stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = [json.loads(data) for _, data in sse(r.text)]
    assert len(chunks) > 2
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    prompt, output = len(PROMPT) // 4 + 1, len(echo()) // 4 + 1
    totals = {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}
    assert totals.items() <= chunks[-1]["usageMetadata"].items()
    assert stream_text("gemini", sse(r.text))[0] == echo()


def test_openrouter_stream_starts_with_a_processing_comment_and_always_reports_cost(sim, client) -> None:
    sim.script([Reply("paid", cost=0.25)], model="m-1")
    r = post(client, sim, "openrouter", stream=True)
    assert r.text.startswith(": OPENROUTER PROCESSING\n\n")
    events = sse(r.text)
    assert events[-1] == (None, "[DONE]")
    assert json.loads(events[-2][1])["usage"]["cost"] == 0.25
    assert r.headers["x-generation-id"] == json.loads(events[0][1])["id"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reply_chunks_are_streamed_exactly(sim, client, protocol) -> None:
    sim.script([Reply(chunks=["Hel", "lo, ", "world"]), Reply(chunks=["Hel", "lo, ", "world"])], model="m-1")
    assert stream_text(protocol, sse(post(client, sim, protocol, stream=True).text))[1] == ["Hel", "lo, ", "world"]
    assert reply_text(protocol, post(client, sim, protocol).json()) == "Hello, world"


def test_tokens_per_s_paces_stream_chunks_and_delay_s_holds_the_headers(sim, client) -> None:
    sim.script([Reply(chunks=["a", "b", "c", "d", "e"], tokens_per_s=50)], model="m-1")
    started = time.monotonic()
    events = sse(post(client, sim, "openai", stream=True).text)
    assert time.monotonic() - started >= 5 / 50 * 0.9
    assert stream_text("openai", events)[1] == ["a", "b", "c", "d", "e"]
    sim.script([Reply("late", delay_s=0.2)], model="m-1")
    started = time.monotonic()
    assert reply_text("openai", post(client, sim, "openai").json()) == "late"
    assert time.monotonic() - started >= 0.19


def test_simulator_tokens_per_s_and_default_text_apply_to_unscripted_replies(client) -> None:
    with ProviderSimulator(tokens_per_s=100, default_text="fixed words") as sim:
        started = time.monotonic()
        _, pieces = stream_text("anthropic", sse(post(client, sim, "anthropic", stream=True).text))
        assert "".join(pieces) == "fixed words" and len(pieces) == 3
        assert time.monotonic() - started >= 3 / 100 * 0.9


@pytest.mark.parametrize(
    ("protocol", "field"),
    [("openai", "finish_reason"), ("anthropic", "stop_reason"), ("gemini", "finishReason"), ("openrouter", "finish_reason")],
)
def test_finish_reason_and_model_overrides_use_each_protocols_words(sim, client, protocol, field) -> None:
    sim.script([Reply("cut", finish_reason="length", model="local-alias", headers={"x-extra": "yes"})], model="m-1")
    r = post(client, sim, protocol)
    body = r.json()
    expected = {"openai": "length", "openrouter": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}[protocol]
    if protocol == "gemini":
        assert body["candidates"][0][field] == expected and body["modelVersion"] == "local-alias"
    elif protocol == "anthropic":
        assert body[field] == expected and body["model"] == "local-alias"
    else:
        assert body["choices"][0][field] == expected and body["model"] == "local-alias"
    assert r.headers["x-extra"] == "yes"


def test_go_durations_match_openai_reset_headers() -> None:
    assert [go_duration(s) for s in (0.006, 1, 20, 1.5, 90, 3600)] == ["6ms", "1s", "20s", "1.5s", "1m30s", "1h0m0s"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rate_limit_headers_in_each_protocols_format(sim, client, protocol) -> None:
    limits = {"remaining_requests": 5, "remaining_tokens": 900, "limit_requests": 10, "limit_tokens": 1000, "reset_s": 20}
    sim.script([Reply("x", rate_limit=limits)], model="m-1")
    headers = post(client, sim, protocol).headers
    if protocol == "anthropic":
        assert headers["anthropic-ratelimit-requests-remaining"] == "5"
        assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
        reset = datetime.strptime(headers["anthropic-ratelimit-tokens-reset"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert 18 <= reset.timestamp() - time.time() <= 22
    elif protocol == "gemini":
        assert not [h for h in headers if "ratelimit" in h]
    else:
        assert headers["x-ratelimit-remaining-requests"] == "5"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == "20s"


# -- provider errors: one row per fact of providers.md ----------------------------------------------

ABSENT = object()


class Has:
    """Expect a string containing `part` (or matching `pattern` when regex=True)."""

    def __init__(self, part: str, *, regex: bool = False) -> None:
        self.part, self.regex = part, regex

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        return bool(re.search(self.part, other)) if self.regex else self.part in other

    def __repr__(self) -> str:
        return f"Has({self.part!r})"


def dig(value: Any, path: str) -> Any:
    """`error.details.@QuotaFailure.violations.0.quotaId`: keys, list indexes, `@Type` picks a detail."""
    for part in path.split("."):
        if value is ABSENT:
            return ABSENT
        if part.startswith("@"):
            value = next((d for d in value if d.get("@type", "").endswith("." + part[1:])), ABSENT)
        elif part.isdigit():
            value = value[int(part)] if int(part) < len(value) else ABSENT
        else:
            value = value.get(part, ABSENT) if isinstance(value, dict) else ABSENT
    return value


ERROR_TABLE: list[tuple[Any, str, int, dict[str, Any], dict[str, Any]]] = [
    # behaviour, protocol, status, body fields, headers
    (RateLimited(retry_after=30), "openai", 429, {"error.code": "rate_limit_exceeded", "error.type": "requests"}, {"retry-after": "30"}),
    (RateLimited(retry_after_ms=1500), "openai", 429, {"error.code": "rate_limit_exceeded"}, {"retry-after-ms": "1500", "retry-after": ABSENT}),
    (RateLimited(), "openai", 429, {"error.code": "rate_limit_exceeded"}, {"retry-after": ABSENT}),
    (RateLimited(retry_after=30), "anthropic", 429, {"error.type": "rate_limit_error", "type": "error"}, {"retry-after": "30"}),
    (RateLimited(), "anthropic", 429, {"error.type": "rate_limit_error", "error.details": ABSENT}, {"retry-after": "20"}),
    (
        RateLimited(retry_after=30), "gemini", 429,
        {
            "error.status": "RESOURCE_EXHAUSTED", "error.code": 429,
            "error.details.@QuotaFailure.violations.0.quotaId": Has("PerMinute"),
            "error.details.@RetryInfo.retryDelay": "30s",
        },
        {},
    ),
    (RateLimited(retry_after_ms=1500), "gemini", 429, {"error.details.@RetryInfo.retryDelay": "1.500s"}, {}),
    (RateLimited(retry_after=7), "openrouter", 429, {"error.code": 429}, {"retry-after": "7"}),
    (
        QuotaExceeded(), "openai", 429,
        {"error.type": "insufficient_quota", "error.code": "insufficient_quota", "error.message": Has("You exceeded your current quota")},
        {"retry-after": ABSENT},
    ),
    (
        QuotaExceeded(), "anthropic", 429,
        {"error.type": "rate_limit_error", "error.details.error_code": "enforced_spend_limit_reached"},
        {"retry-after": ABSENT},
    ),
    (
        QuotaExceeded(), "gemini", 429,
        {
            "error.status": "RESOURCE_EXHAUSTED",
            "error.details.@QuotaFailure.violations.0.quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "error.details.@RetryInfo.retryDelay": "32s",
        },
        {},
    ),
    (QuotaExceeded(), "openrouter", 402, {"error.code": 402}, {"retry-after": ABSENT}),
    (Unauthorized(), "openai", 401, {"error.code": "invalid_api_key", "error.message": Has("sk-***cdef")}, {}),
    (Unauthorized(), "anthropic", 401, {"error.type": "authentication_error"}, {}),
    (
        Unauthorized(), "gemini", 400,
        {"error.status": "INVALID_ARGUMENT", "error.details.@ErrorInfo.reason": "API_KEY_INVALID", "error.message": Has("API key not valid")},
        {},
    ),
    (Unauthorized(), "openrouter", 401, {"error.code": 401}, {}),
    (Forbidden(), "openai", 403, {"error.message": "Country, region, or territory not supported"}, {}),
    (Forbidden(), "anthropic", 403, {"error.type": "permission_error"}, {}),
    (Forbidden(), "gemini", 403, {"error.status": "PERMISSION_DENIED"}, {}),
    (Forbidden(), "openrouter", 403, {"error.code": 403, "error.metadata.limit_source": ABSENT}, {}),
    (
        NotFound(), "openai", 404,
        {"error.code": "model_not_found", "error.message": "The model `m-1` does not exist or you do not have access to it."},
        {},
    ),
    (NotFound(), "anthropic", 404, {"error.type": "not_found_error", "error.message": Has("m-1")}, {}),
    (NotFound(), "gemini", 404, {"error.status": "NOT_FOUND", "error.message": Has("models/m-1")}, {}),
    (NotFound(), "openrouter", 404, {"error.message": Has("No endpoints found for m-1")}, {}),
    (ServerError(), "openai", 500, {"error.type": "server_error"}, {}),
    (ServerError(502), "openai", 502, {"error.type": "server_error"}, {}),
    (ServerError(), "anthropic", 500, {"error.type": "api_error"}, {}),
    (ServerError(504), "anthropic", 504, {"error.type": "timeout_error"}, {}),
    (ServerError(), "gemini", 500, {"error.status": "INTERNAL"}, {}),
    (ServerError(504), "gemini", 504, {"error.status": "DEADLINE_EXCEEDED"}, {}),
    (ServerError(502), "openrouter", 502, {"error.code": 502}, {}),
    (Overloaded(), "openai", 503, {"error.code": "server_is_overloaded"}, {}),
    (Overloaded(), "anthropic", 529, {"error.type": "overloaded_error"}, {}),
    (Overloaded(), "gemini", 503, {"error.status": "UNAVAILABLE", "error.message": Has("The model is overloaded")}, {}),
    (Overloaded(), "openrouter", 503, {"error.code": 503}, {}),
    (
        ContextOverflow(), "openai", 400,
        {"error.code": "context_length_exceeded", "error.param": "messages", "error.message": Has("This model's maximum context length is 8192 tokens")},
        {},
    ),
    (
        ContextOverflow(tokens=9000), "anthropic", 400,
        {"error.type": "invalid_request_error", "error.message": "prompt is too long: 9000 tokens > 8192 maximum"},
        {},
    ),
    (
        ContextOverflow(limit=1000), "gemini", 400,
        {"error.status": "INVALID_ARGUMENT", "error.message": Has(r"^The input token count \(\d+\) exceeds the maximum number of tokens allowed \(1000\)\.$", regex=True)},
        {},
    ),
    (ContextOverflow(), "openrouter", 400, {"error.code": 400, "error.message": Has("maximum context length is 8192 tokens")}, {}),
]


@pytest.mark.parametrize(
    ("behaviour", "protocol", "status", "fields", "headers"),
    ERROR_TABLE,
    ids=[f"{type(row[0]).__name__}-{row[1]}-{i}" for i, row in enumerate(ERROR_TABLE)],
)
def test_failure_renders_in_the_protocols_error_shape(sim, client, behaviour, protocol, status, fields, headers) -> None:
    sim.script([behaviour], model="m-1")
    r = post(client, sim, protocol)
    assert r.status_code == status
    body = r.json()
    for path, expected in fields.items():
        assert dig(body, path) == expected if expected is not ABSENT else dig(body, path) is ABSENT, path
    for name, expected in headers.items():
        assert r.headers.get(name, ABSENT) == expected if expected is not ABSENT else name not in r.headers, name
    if protocol in REQUEST_ID_HEADER:
        assert r.headers[REQUEST_ID_HEADER[protocol]]
    if protocol == "anthropic":
        assert body["request_id"] == r.headers["request-id"]
    assert KEY not in r.text


# -- success-shaped trouble -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_is_a_200_with_no_text_and_no_finish_reason(sim, client, protocol) -> None:
    sim.script([Empty(), Empty()], model="m-1")
    body = post(client, sim, protocol).json()
    events = sse(post(client, sim, protocol, stream=True, include_usage=True).text)
    assert stream_text(protocol, events)[0] == ""
    if protocol == "anthropic":
        assert body["content"] == [] and body["stop_reason"] is None
        assert [n for n, _ in events] == ["message_start", "ping", "message_delta", "message_stop"]
        assert json.loads(events[2][1])["delta"]["stop_reason"] is None
    elif protocol == "gemini":
        assert body["candidates"] == [] and "promptFeedback" not in body
        assert len(events) == 1 and json.loads(events[0][1])["candidates"] == []
    else:
        assert body["choices"][0]["message"]["content"] is None and body["choices"][0]["finish_reason"] is None
        assert events[-1] == (None, "[DONE]")
        finishes = [c["finish_reason"] for _, d in events[:-1] for c in json.loads(d)["choices"]]
        assert finishes and set(finishes) == {None}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_content_filter_is_a_200_the_safety_layer_stopped(sim, client, protocol) -> None:
    sim.script([ContentFilter(), ContentFilter()], model="m-1")
    r = post(client, sim, protocol)
    assert r.status_code == 200
    body = r.json()
    events = sse(post(client, sim, protocol, stream=True).text)
    if protocol == "anthropic":
        assert body["stop_reason"] == "refusal"
        assert json.loads(next(d for n, d in events if n == "message_delta"))["delta"]["stop_reason"] == "refusal"
        assert events[-1][0] == "message_stop"
    elif protocol == "gemini":
        assert "candidates" not in body and body["promptFeedback"]["blockReason"] == "SAFETY"
        assert json.loads(events[0][1])["promptFeedback"]["blockReason"] == "SAFETY"
    else:
        assert body["choices"][0]["finish_reason"] == "content_filter"
        assert body["choices"][0]["message"]["content"] is None
        assert any(c["finish_reason"] == "content_filter" for _, d in events[:-1] for c in json.loads(d)["choices"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malformed_sends_invalid_json_with_a_200(sim, client, protocol) -> None:
    sim.script([Malformed(), Malformed()], model="m-1")
    r = post(client, sim, protocol)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    events = sse(post(client, sim, protocol, stream=True).text)
    with pytest.raises(ValueError):
        json.loads(events[-1][1])


# -- transport faults -------------------------------------------------------------------------------


def read_until_broken(client: httpx.Client, sim: ProviderSimulator, protocol: str, **kwargs: Any) -> tuple[str, Exception | None]:
    """What arrived before the stream ended, and the transport error that ended it (None: a clean end)."""
    url, headers, body = request_parts(sim, protocol, "m-1", stream=True, key=KEY, include_usage=True, text=PROMPT)
    received = b""
    try:
        with client.stream("POST", url, headers=headers, json=body) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
    except httpx.TransportError as exc:
        return received.decode(), exc
    return received.decode(), None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cut_stream_sends_n_chunks_then_closes_without_the_terminator(sim, client, protocol) -> None:
    sim.script([CutStream(after_chunks=2)], model="m-1")
    text, error = read_until_broken(client, sim, protocol)
    assert isinstance(error, httpx.RemoteProtocolError)
    events = sse(text)
    assert stream_text(protocol, events)[1] == ["Simu", "late"]
    assert (None, "[DONE]") not in events
    assert "message_stop" not in text and "finishReason" not in text and "finish_reason\":\"stop" not in text


@pytest.mark.parametrize(
    ("protocol", "check"),
    [
        ("openai", lambda ev: json.loads(ev[-1][1])["error"]["code"] == "server_is_overloaded"),
        ("anthropic", lambda ev: ev[-1][0] == "error" and json.loads(ev[-1][1])["error"]["type"] == "overloaded_error"),
        ("gemini", lambda ev: ev[-1][0] == "raw" and json.loads(ev[-1][1])["error"]["status"] == "UNAVAILABLE"),
        ("openrouter", lambda ev: json.loads(ev[-1][1])["error"]["code"] == 503),
    ],
)
def test_cut_stream_with_error_sends_the_protocols_in_stream_error_event(sim, client, protocol, check) -> None:
    sim.script([CutStream(after_chunks=1, error="overloaded")], model="m-1")
    text, error = read_until_broken(client, sim, protocol)
    assert error is None
    events = sse(text)
    assert check(events)
    assert stream_text(protocol, events)[1] == ["Simu"]
    assert (None, "[DONE]") not in events and "message_stop" not in text


@pytest.mark.parametrize(("kind", "openai_code", "anthropic_type"), [("server_error", None, "api_error"), ("rate_limit", "rate_limit_exceeded", "rate_limit_error")])
def test_cut_stream_error_kinds(sim, client, kind, openai_code, anthropic_type) -> None:
    sim.script([CutStream(error=kind)] * 3, model="m-1")
    assert json.loads(sse(read_until_broken(client, sim, "openai")[0])[-1][1])["error"]["code"] == openai_code
    assert json.loads(sse(read_until_broken(client, sim, "anthropic")[0])[-1][1])["error"]["type"] == anthropic_type
    gemini = json.loads(sse(read_until_broken(client, sim, "gemini")[0])[-1][1])["error"]
    assert gemini["status"] == ("INTERNAL" if kind == "server_error" else "RESOURCE_EXHAUSTED")


def test_cut_stream_on_a_non_stream_request_announces_more_bytes_than_it_sends(sim, client) -> None:
    sim.script([CutStream()], model="m-1")
    with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection without sending complete message body"):
        post(client, sim, "anthropic")


def test_drop_closes_the_connection_without_a_response(sim, client) -> None:
    sim.script([Drop()], model="m-1")
    with pytest.raises(httpx.TransportError):
        post(client, sim, "openai")
    assert post(client, sim, "openai").status_code == 200  # the server itself is fine


def test_hang_is_cut_by_the_client_timeout_and_does_not_block_other_requests(sim) -> None:
    sim.script([Hang(seconds=10)], model="slow")

    async def run() -> tuple[Any, httpx.Response, float]:
        async with httpx.AsyncClient() as client:
            url, headers, body = request_parts(sim, "openai", "slow", stream=False, key=KEY, include_usage=False, text=PROMPT)
            hanging = asyncio.create_task(client.post(url, headers=headers, json=body, timeout=0.5))
            await asyncio.sleep(0.05)  # real I/O: the hanging request is on its way before the quick one
            started = time.monotonic()
            url, headers, body = request_parts(sim, "openai", "fast", stream=False, key=KEY, include_usage=False, text=PROMPT)
            quick = await client.post(url, headers=headers, json=body, timeout=2)
            quick_s = time.monotonic() - started
            try:
                return await hanging, quick, quick_s
            except httpx.ReadTimeout as exc:
                return exc, quick, quick_s

    started = time.monotonic()
    outcome, quick, quick_s = asyncio.run(run())
    assert isinstance(outcome, httpx.ReadTimeout)
    assert time.monotonic() - started < 2
    assert quick.status_code == 200 and quick_s < 1.0  # a blocked loop would take the full 10 s


def test_raw_sends_exactly_the_given_response(sim, client) -> None:
    sim.script(
        [
            Raw(418, {"error": {"message": "teapot"}}, headers={"x-custom": "1"}),
            Raw(503, "<html>busy</html>", content_type="text/html"),
            Raw(sse=[("ping", "{}"), (None, '{"a": 1}'), ("multi", "line one\nline two")]),
        ],
        model="m-1",
    )
    first = post(client, sim, "anthropic")
    assert (first.status_code, first.json(), first.headers["x-custom"]) == (418, {"error": {"message": "teapot"}}, "1")
    assert "request-id" not in first.headers
    second = post(client, sim, "gemini")
    assert (second.status_code, second.text, second.headers["content-type"]) == (503, "<html>busy</html>", "text/html")
    third = post(client, sim, "openai")
    assert third.status_code == 200
    assert third.text == 'event: ping\ndata: {}\n\ndata: {"a": 1}\n\nevent: multi\ndata: line one\ndata: line two\n\n'


def test_every_behaviour_accepts_delay_s(sim, client) -> None:
    sim.script([Overloaded(delay_s=0.15)], model="m-1")
    started = time.monotonic()
    assert post(client, sim, "gemini").status_code == 503
    assert time.monotonic() - started >= 0.14


# -- scripts --------------------------------------------------------------------------------------


def texts(client: httpx.Client, sim: ProviderSimulator, n: int, protocol: str = "openai", model: str = "m-1", key: str = KEY) -> list[Any]:
    out: list[Any] = []
    for _ in range(n):
        r = post(client, sim, protocol, model, key=key)
        out.append(reply_text(protocol, r.json()) if r.status_code == 200 else r.status_code)
    return out


def test_model_script_pops_in_order_then_falls_through_to_the_default(sim, client) -> None:
    sim.script([RateLimited(retry_after=30), Reply("hi")], model="gpt-x")
    assert texts(client, sim, 3, model="gpt-x") == [429, "hi", echo("gpt-x")]
    assert texts(client, sim, 1, model="other") == [echo("other")]


def test_scripts_match_a_model_across_protocols(sim, client) -> None:
    sim.script([Reply("one"), Reply("two"), Reply("three")], model="shared")
    assert [texts(client, sim, 1, p, "shared")[0] for p in ("anthropic", "gemini", "openrouter")] == ["one", "two", "three"]


def test_key_and_model_script_beats_key_only_which_beats_model_only(sim, client) -> None:
    sim.script([Reply("model")], model="m")
    sim.script([Reply("key")], key="k1")
    sim.script([Reply("both")], key="k1", model="m")
    assert texts(client, sim, 1, model="m", key="k1") == ["both"]
    assert texts(client, sim, 1, model="m", key="k1") == ["key"]  # key+model queue is empty: next most specific
    assert texts(client, sim, 1, model="m", key="k2") == ["model"]
    assert texts(client, sim, 1, model="m", key="k1") == [echo("m")]


def test_key_script_matches_every_way_of_sending_a_credential(sim, client) -> None:
    sim.script([Unauthorized()], key="bad-key", repeat_last=True)
    for protocol in PROTOCOLS:
        assert post(client, sim, protocol, key="bad-key").status_code in (400, 401)
        assert post(client, sim, protocol, key="good-key").status_code == 200
    url, _, body = request_parts(sim, "gemini", "m-1", stream=False, key=None, include_usage=False, text=PROMPT)
    assert client.post(url, params={"key": "bad-key"}, json=body).status_code == 400
    url, headers, body = request_parts(sim, "anthropic", "m-1", stream=False, key=None, include_usage=False, text=PROMPT)
    assert client.post(url, headers={**headers, "authorization": "Bearer bad-key"}, json=body).status_code == 401


def test_repeat_last_repeats_the_final_behaviour_forever(sim, client) -> None:
    sim.script([ServerError(), Reply("ok")], model="m-1", repeat_last=True)
    assert texts(client, sim, 4) == [500, "ok", "ok", "ok"]


def test_scripting_the_same_selector_again_appends(sim, client) -> None:
    sim.script([Reply("a")], model="m-1")
    sim.script(Reply("b"), model="m-1")
    assert texts(client, sim, 3) == ["a", "b", echo()]


def test_set_default_and_reset(sim, client) -> None:
    sim.set_default(Overloaded())
    sim.script([Reply("scripted")], model="m-1")
    assert texts(client, sim, 2) == ["scripted", 503]
    sim.reset()
    assert sim.requests == [] and sim.models == []
    assert texts(client, sim, 1) == [echo()]


def test_scripting_from_many_threads_while_serving_delivers_each_behaviour_once_in_order(sim, client) -> None:
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)

    def add(t: int) -> None:
        barrier.wait()
        for j in range(per_thread):
            sim.script([Reply(f"{t}:{j}")], model="m-1")

    workers = [threading.Thread(target=add, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    served = texts(client, sim, 10)  # requests race the scripting
    for w in workers:
        w.join()
    served += texts(client, sim, threads * per_thread - len([s for s in served if s != echo()]) + 1)
    scripted = [s for s in served if s != echo()]
    assert sorted(scripted) == sorted(f"{t}:{j}" for t in range(threads) for j in range(per_thread))
    for t in range(threads):  # each thread's behaviours come out in the order it queued them
        assert [int(s.split(":")[1]) for s in scripted if s.startswith(f"{t}:")] == list(range(per_thread))
    assert served[-1] == echo()


def test_concurrent_requests_each_take_a_different_scripted_behaviour(sim) -> None:
    n = 100
    sim.script([Reply(f"r{i}") for i in range(n)], model="m-1")

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=5) as client:
            url, headers, body = request_parts(sim, "openai", "m-1", stream=False, key=KEY, include_usage=False, text=PROMPT)
            responses = await asyncio.gather(*(client.post(url, headers=headers, json=body) for _ in range(n)))
            return [r.json()["choices"][0]["message"]["content"] for r in responses]

    assert sorted(asyncio.run(run())) == sorted(f"r{i}" for i in range(n))


# -- OpenRouter's models fallback ---------------------------------------------------------------------


def test_openrouter_walks_models_until_one_succeeds_and_records_one_request(sim, client) -> None:
    sim.script([RateLimited()], model="a/one")
    sim.script([ServerError(502)], model="b/two")
    r = post(client, sim, "openrouter", "a/one", models=["a/one", "b/two", "c/three"])
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "c/three"
    assert body["choices"][0]["message"]["content"] == echo("c/three")
    assert body["usage"]["cost"] == pytest.approx(0.000001 * body["usage"]["total_tokens"])
    assert len(sim.requests) == 1
    assert (sim.requests[0].protocol, sim.requests[0].model) == ("openrouter", "a/one")


def test_openrouter_returns_the_last_failure_when_every_model_fails(sim, client) -> None:
    sim.script([RateLimited()], model="a/one")
    sim.script([NotFound()], model="b/two")
    r = post(client, sim, "openrouter", "a/one", models=["a/one", "b/two"])
    assert r.status_code == 404 and r.json()["error"]["message"] == "No endpoints found for b/two."
    assert len(sim.requests) == 1


def test_openrouter_models_walk_streams_from_the_serving_model(sim, client) -> None:
    sim.script([Overloaded()], model="a/one")
    events = sse(post(client, sim, "openrouter", "a/one", stream=True, models=["a/one", "b/two"]).text)
    assert {json.loads(d)["model"] for _, d in events[:-1]} == {"b/two"}
    assert stream_text("openrouter", events)[0] == echo("b/two")


# -- the request log, listings, unknown paths ---------------------------------------------------------


def test_requests_records_each_request_as_sent(sim, client) -> None:
    before = time.monotonic()
    post(client, sim, "openai", "gpt-x", key="k-openai", stream=True)
    post(client, sim, "anthropic", "claude-x", key="k-anthropic")
    url, _, body = request_parts(sim, "gemini", "gem-x", stream=True, key=None, include_usage=False, text=PROMPT)
    client.post(url, params={"key": "k-gemini"}, json=body)
    post(client, sim, "openrouter", "vendor/x", key=None)
    after = time.monotonic()
    log = sim.requests
    assert all(isinstance(r, RecordedRequest) for r in log)
    assert [(r.protocol, r.model, r.key, r.stream) for r in log] == [
        ("openai", "gpt-x", "k-openai", True),
        ("anthropic", "claude-x", "k-anthropic", False),
        ("gemini", "gem-x", "k-gemini", True),
        ("openrouter", "vendor/x", None, False),
    ]
    assert [r.path for r in log] == [
        "/v1/chat/completions", "/v1/messages", "/v1beta/models/gem-x:streamGenerateContent", "/openrouter/v1/chat/completions",
    ]
    assert log[1].body["messages"] == [{"role": "user", "content": PROMPT}]
    assert log[1].headers["anthropic-version"] == "2023-06-01" and log[1].headers["x-api-key"] == "k-anthropic"
    assert before <= log[0].time <= log[1].time <= log[2].time <= log[3].time <= after


def test_model_listings_report_scripted_models_or_the_models_attribute(sim, client) -> None:
    sim.script([Reply("x")], model="alpha")
    sim.script([Reply("y")], model="beta", key="k")
    assert sim.models == ["alpha", "beta"]
    listing = client.get(sim.openai_url + "/models").json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["alpha", "beta"]
    sim.models = ["a", "b"]
    assert [m["name"] for m in client.get(sim.url + "/api/tags").json()["models"]] == ["a", "b"]
    assert [m["id"] for m in client.get(sim.openrouter_url + "/models").json()["data"]] == ["a", "b"]
    assert [m["name"] for m in client.get(sim.gemini_url + "/models").json()["models"]] == ["models/a", "models/b"]


def test_unknown_paths_and_unreadable_bodies_get_json_errors(sim, client) -> None:
    r = client.post(sim.url + "/v2/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = client.get(sim.openai_url + "/chat/completions")
    assert r.status_code == 404
    r = client.post(sim.openai_url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post(sim.anthropic_url + "/v1/messages", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_token_counting_endpoints(sim, client) -> None:
    url = sim.anthropic_url + "/v1/messages/count_tokens"
    assert client.post(url, json={"model": "c", "messages": [{"role": "user", "content": "x" * 40}]}).json() == {"input_tokens": 11}
    url = sim.gemini_url + "/models/g:countTokens"
    assert client.post(url, json={"contents": [{"parts": [{"text": "x" * 40}]}]}).json() == {"totalTokens": 11}


# -- lifecycle ----------------------------------------------------------------------------------------


def test_start_and_stop_are_idempotent_and_the_context_manager_serves(client) -> None:
    sim = ProviderSimulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    sim.start()
    url = sim.url
    sim.start()
    assert sim.url == url and re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    assert (sim.openai_url, sim.anthropic_url, sim.gemini_url, sim.openrouter_url) == (
        url + "/v1", url, url + "/v1beta", url + "/openrouter/v1",
    )
    sim.stop()
    sim.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(url + "/v1/models")
    with ProviderSimulator() as again:
        assert post(client, again, "openai").status_code == 200
    assert not again.running


def test_stop_does_not_wait_for_a_hanging_handler() -> None:
    sim = ProviderSimulator().start()
    sim.script([Hang(seconds=30)], model="m-1")
    outcome: list[Any] = []

    def call() -> None:
        with httpx.Client(timeout=10) as c:
            try:
                outcome.append(post(c, sim, "openai"))
            except httpx.TransportError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 2
    while not sim.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # real I/O, from another thread: the request has reached the simulator
    assert sim.requests
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.5
    caller.join(2)
    assert not caller.is_alive() and isinstance(outcome[0], httpx.TransportError)


# -- RawServer: exactly the scripted bytes -----------------------------------------------------------


def test_raw_server_sends_exactly_the_scripted_bytes_and_records_the_request(raw_server) -> None:
    import socket

    from nbrouter.testing import RawResponse

    raw_server.script(RawResponse([b"HTTP/1.1 200 OK\r\n", b"x-odd: \xff\r\ncontent-length: 3\r\n\r\n", b"a\xffb"], pause_s=0.05))
    host, port = raw_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/x HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nbody")
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got == b"HTTP/1.1 200 OK\r\nx-odd: \xff\r\ncontent-length: 3\r\n\r\na\xffb"
    assert raw_server.requests == [b"POST /v1/x HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nbody"]


def test_raw_server_answers_unscripted_connections_with_a_500(raw_server) -> None:
    import httpx

    from nbrouter.testing import RawResponse, http_response

    raw_server.script(RawResponse([http_response(201, b"{}", [("x-a", "1")])]))
    first = httpx.post(raw_server.url + "/a", content=b"{}")
    second = httpx.post(raw_server.url + "/b", content=b"{}")
    assert (first.status_code, first.headers["x-a"], first.content) == (201, "1", b"{}")
    assert second.status_code == 500
    raw_server.reset()
    assert raw_server.requests == []

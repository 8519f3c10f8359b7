"""The three wire protocols end to end over loopback HTTP: requests as sent, answers and streams as parsed.

Every test drives `nbrouter.providers._http.send` through the aiohttp transport the router uses, against
the ProviderSimulator. Bodies given as `Raw(...)` are hand-written from providers.md; the numbers in the
expected usage are worked out by hand next to them.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from nbrouter.providers import ChatRequest, Completion, Endpoint, ProviderFailure, RateLimits, get_protocol
from nbrouter.providers._http import send
from nbrouter.router.types import ErrorKind, Usage
from nbrouter.testing import ContentFilter, CutStream, Empty, Malformed, Raw, Reply

OPENAI_KEY = "sk-proj-T3stKeyForProtocolsAbcdef123456"
ANTHROPIC_KEY = "sk-ant-api03-T3stKeyForProtocolsAbcdef123456"
GEMINI_KEY = "AIzaSyT3stKeyForProtocolsAbcdef1234567"
OPENROUTER_KEY = "sk-or-v1-T3stKeyForProtocolsAbcdef123456"
SSE = "text/event-stream"


# -- helpers ---------------------------------------------------------------------------------


def endpoint(sim: Any, flavour: str, *, local: bool = False) -> Endpoint:
    """An Endpoint pointing at the simulator: `openai`, `anthropic`, `gemini`, `openrouter`, `llamacpp`."""
    if flavour == "anthropic":
        return Endpoint("anthropic", "anthropic", sim.anthropic_url, api_key=ANTHROPIC_KEY, preset="anthropic", local=local)
    if flavour == "gemini":
        return Endpoint("gemini", "gemini", sim.gemini_url, api_key=GEMINI_KEY, preset="gemini", local=local)
    if flavour == "openrouter":
        return Endpoint("openrouter", "openai", sim.openrouter_url, api_key=OPENROUTER_KEY, preset="openrouter")
    if flavour == "llamacpp":
        return Endpoint("llamacpp", "openai", sim.openai_url, preset="llamacpp", local=True)
    return Endpoint("openai", "openai", sim.openai_url, api_key=OPENAI_KEY, preset="openai", local=local)


def call(
    ep: Endpoint, request: ChatRequest, *, timeout_s: float = 5.0
) -> tuple[Completion | ProviderFailure, list[str]]:
    """Send one request; return the Completion (or the ProviderFailure) and the text deltas seen."""
    seen: list[str] = []

    async def go() -> Completion | ProviderFailure:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            try:
                return await send(client, get_protocol(ep.protocol), ep, request, timeout_s=timeout_s, on_text=seen.append)
            except ProviderFailure as failure:
                return failure

    return asyncio.run(go()), seen


def ask(model: str = "m", *, stream: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}], stream=stream, **kw)


def completed(result: Completion | ProviderFailure) -> Completion:
    assert isinstance(result, Completion), f"expected a Completion, got {result!r}"
    return result


def failed(result: Completion | ProviderFailure, kind: ErrorKind) -> ProviderFailure:
    assert isinstance(result, ProviderFailure), f"expected a {kind} failure, got {result!r}"
    assert result.kind is kind, repr(result)
    return result


def sse(*events: tuple[str | None, Any]) -> list[tuple[str | None, str]]:
    return [(name, data if isinstance(data, str) else json.dumps(data)) for name, data in events]


# -- hand-written bodies (providers.md sections 1-3) -----------------------------------------

OPENAI_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x-2026-01-01",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
    # prompt_tokens already includes the 40 cached ones; completion_tokens includes the 5 reasoning ones
    "usage": {
        "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 5},
    },
}
OPENAI_USAGE = Usage(input_tokens=100, output_tokens=20, cached_tokens=40, reasoning_tokens=5)


def _oa_chunk(content: str | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [] if content is None and finish is None else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-x-2026-01-01", "choices": choices, "usage": usage}


OPENAI_STREAM = sse(
    (None, _oa_chunk("Hello")),
    (None, _oa_chunk(" there")),
    (None, _oa_chunk(finish="stop")),
    (None, _oa_chunk(usage=OPENAI_BODY["usage"])),
    (None, "[DONE]"),
)

# input_tokens (10) leaves the cache out: total input = 10 + 200 (written) + 300 (read) = 510
ANTHROPIC_USAGE_RAW = {"input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 300, "output_tokens": 50}
ANTHROPIC_USAGE = Usage(input_tokens=510, output_tokens=50, cached_tokens=300, cache_write_tokens=200)
ANTHROPIC_BODY = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-20260101",
    "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Hello there"}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_USAGE_RAW,
}


def _an(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **fields}


def anthropic_stream(*, stop: str = "end_turn", end: bool = True, extra: list[tuple[str, Any]] | None = None) -> list[tuple[str | None, str]]:
    start_usage = {"input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 300, "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        _an("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-20260101",
                                       "content": [], "stop_reason": None, "usage": start_usage}),
        _an("ping"),
        _an("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        _an("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "let me think"}),
        _an("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "abc"}),
        _an("content_block_stop", index=0),
        _an("content_block_start", index=1, content_block={"type": "text", "text": ""}),
        _an("content_block_delta", index=1, delta={"type": "text_delta", "text": "Hello"}),
        _an("ping"),
        _an("content_block_delta", index=1, delta={"type": "text_delta", "text": " there"}),
        _an("content_block_stop", index=1),
        *(extra or []),
        # cumulative counts: output_tokens is final here and replaces the 1 of message_start
        _an("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": 50}),
    ]
    if end:
        events.append(_an("message_stop"))
    return sse(*events)


# promptTokenCount (120) already includes the 100 cached; billable output = 30 candidates + 70 thoughts
GEMINI_USAGE_RAW = {"promptTokenCount": 120, "cachedContentTokenCount": 100, "candidatesTokenCount": 30,
                    "thoughtsTokenCount": 70, "totalTokenCount": 220}
GEMINI_USAGE = Usage(input_tokens=120, output_tokens=100, cached_tokens=100, reasoning_tokens=70)


def _gm(parts: list[dict[str, Any]] | None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"modelVersion": "models/gemini-x-flash", "responseId": "resp-42"}
    if parts is not None:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        body["candidates"] = [candidate]
    if usage:
        body["usageMetadata"] = usage
    return body


GEMINI_BODY = _gm([{"text": "thinking...", "thought": True}, {"text": "Hello there"}], "STOP", GEMINI_USAGE_RAW)
GEMINI_STREAM = sse(
    (None, _gm([{"text": "Hello"}], usage={"promptTokenCount": 120, "cachedContentTokenCount": 100})),
    (None, _gm([{"text": " there"}], "STOP", GEMINI_USAGE_RAW)),
)


# -- success, non-stream and stream ----------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "raw", "usage", "model"),
    [
        pytest.param("openai", Raw(200, OPENAI_BODY), OPENAI_USAGE, "gpt-x-2026-01-01", id="openai"),
        pytest.param("anthropic", Raw(200, ANTHROPIC_BODY, headers={"request-id": "req_a1"}), ANTHROPIC_USAGE, "claude-x-20260101", id="anthropic-cache-added"),
        pytest.param("gemini", Raw(200, GEMINI_BODY), GEMINI_USAGE, "gemini-x-flash", id="gemini-thoughts-added"),
    ],
)
def test_non_stream_success_parses_text_usage_and_model(provider_simulator, flavour, raw, usage, model):
    provider_simulator.script([raw], model="m")
    result = completed(call(endpoint(provider_simulator, flavour), ask())[0])
    assert result.text == "Hello there"  # Anthropic thinking blocks and Gemini thought parts are not the answer
    assert result.usage == usage
    assert result.model == model
    assert result.served_model == model


@pytest.mark.parametrize(
    ("flavour", "events", "usage", "model", "finish"),
    [
        pytest.param("openai", OPENAI_STREAM, OPENAI_USAGE, "gpt-x-2026-01-01", "stop", id="openai"),
        pytest.param("anthropic", anthropic_stream(), ANTHROPIC_USAGE, "claude-x-20260101", "end_turn", id="anthropic-pings-and-thinking-skipped"),
        pytest.param("gemini", GEMINI_STREAM, GEMINI_USAGE, "gemini-x-flash", "STOP", id="gemini-last-usage-wins"),
    ],
)
def test_stream_success_parses_deltas_usage_and_model(provider_simulator, flavour, events, usage, model, finish):
    provider_simulator.script([Raw(200, sse=events)], model="m")
    result, seen = call(endpoint(provider_simulator, flavour), ask(stream=True))
    result = completed(result)
    assert seen == ["Hello", " there"]
    assert result.text == "Hello there"
    assert result.usage == usage
    assert result.model == model
    assert result.finish_reason == finish


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini", "openrouter"])
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_simulated_reply_round_trip(provider_simulator, flavour, stream):
    reply = Reply("alpha beta gamma", usage={"input_tokens": 30, "output_tokens": 4, "cached_tokens": 10}, cost=0.25)
    provider_simulator.script([reply], model="m")
    result, seen = call(endpoint(provider_simulator, flavour), ask(stream=stream))
    result = completed(result)
    assert result.text == "alpha beta gamma"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.cached_tokens) == (30, 4, 10)
    if stream:
        assert "".join(seen) == "alpha beta gamma" and len(seen) > 1
    if flavour == "openrouter":
        assert result.reported_cost is not None and float(result.reported_cost) == pytest.approx(0.25)


def test_anthropic_request_shape(provider_simulator):
    ep = endpoint(provider_simulator, "anthropic")
    request = ChatRequest(
        "claude-x", [{"role": "system", "content": "also this"}, {"role": "user", "content": "hi"}],
        system="be brief", temperature=0.2,
    )
    completed(call(ep, request)[0])
    sent = provider_simulator.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "be brief\n\nalso this"
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.body["max_tokens"] == 1024  # required by the API; the request left it open
    assert sent.body["temperature"] == 0.2
    assert "stream" not in sent.body


def test_gemini_request_shape_and_key_only_in_header(provider_simulator):
    ep = endpoint(provider_simulator, "gemini")
    request = ChatRequest(
        "models/gemini-x", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}],
        system="be brief", max_tokens=64, temperature=0.5, stream=True,
    )
    completed(call(ep, request)[0])
    sent = provider_simulator.requests[-1]
    assert sent.path == "/v1beta/models/gemini-x:streamGenerateContent"
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    url, _, _ = get_protocol("gemini").build(ep, request)
    assert url.endswith("/models/gemini-x:streamGenerateContent?alt=sse") and GEMINI_KEY not in url
    assert [c["role"] for c in sent.body["contents"]] == ["user", "model", "user"]
    assert sent.body["contents"][1]["parts"] == [{"text": "yo"}]
    assert sent.body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert sent.body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.5}


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.mark.parametrize(
    ("flavour", "where", "expected"),
    [
        pytest.param("openai", "response_format", {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA, "strict": False}}, id="openai"),
        pytest.param("anthropic", "output_config", {"format": {"type": "json_schema", "schema": SCHEMA}}, id="anthropic"),
        pytest.param("gemini", "generationConfig", {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}, id="gemini"),
    ],
)
def test_response_format_mapping_as_recorded(provider_simulator, flavour, where, expected):
    provider_simulator.script([Reply('{"answer": "x"}')], model="m")
    completed(call(endpoint(provider_simulator, flavour), ask(response_format=SCHEMA))[0])
    assert provider_simulator.requests[-1].body[where] == expected


# -- broken streams --------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini", "openrouter"])
def test_stream_cut_in_the_middle_is_interrupted_with_partial_text(provider_simulator, flavour):
    provider_simulator.default_text = "one two three four five"
    provider_simulator.script([CutStream(after_chunks=2)], model="m")
    result, seen = call(endpoint(provider_simulator, flavour), ask(stream=True))
    failure = failed(result, ErrorKind.STREAM_INTERRUPTED)
    assert failure.partial_text == "one two " == "".join(seen)


@pytest.mark.parametrize(
    ("flavour", "events"),
    [
        pytest.param("openai", OPENAI_STREAM[:-1], id="openai-no-DONE"),
        pytest.param("anthropic", anthropic_stream(end=False), id="anthropic-no-message_stop"),
        pytest.param("gemini", sse((None, _gm([{"text": "Hello"}])), (None, _gm([{"text": " there"}], usage=GEMINI_USAGE_RAW))), id="gemini-no-finishReason"),
    ],
)
def test_stream_closed_cleanly_without_terminator_is_interrupted(provider_simulator, flavour, events):
    provider_simulator.script([Raw(200, sse=events)], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask(stream=True))[0], ErrorKind.STREAM_INTERRUPTED)
    assert failure.partial_text == "Hello there"


@pytest.mark.parametrize(
    ("flavour", "kind"),
    [("openai", ErrorKind.OVERLOADED), ("anthropic", ErrorKind.OVERLOADED), ("gemini", ErrorKind.OVERLOADED), ("openrouter", ErrorKind.OVERLOADED)],
)
def test_error_event_after_200_is_classified_by_its_body(provider_simulator, flavour, kind):
    provider_simulator.default_text = "one two three four five"
    provider_simulator.script([CutStream(after_chunks=1, error="overloaded")], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask(stream=True))[0], kind)
    assert failure.partial_text == "one "


def test_anthropic_ping_only_stream_has_no_text(provider_simulator):
    events = sse(_an("ping"), _an("ping"))
    provider_simulator.script([Raw(200, sse=events)], model="m")
    result, seen = call(endpoint(provider_simulator, "anthropic"), ask(stream=True))
    failed(result, ErrorKind.STREAM_INTERRUPTED)
    assert seen == []


def test_anthropic_error_event_of_unknown_type_after_200_is_server_error(provider_simulator):
    events = anthropic_stream(end=False)[:8] + sse(("error", {"type": "error", "error": {"type": "brand_new_error", "message": "?"}}))
    provider_simulator.script([Raw(200, sse=events)], model="m")
    failure = failed(call(endpoint(provider_simulator, "anthropic"), ask(stream=True))[0], ErrorKind.SERVER_ERROR)
    assert failure.partial_text == "Hello"


def test_anthropic_context_window_exceeded_keeps_partial_text_and_usage(provider_simulator):
    provider_simulator.script([Raw(200, sse=anthropic_stream(stop="model_context_window_exceeded"))], model="m")
    failure = failed(call(endpoint(provider_simulator, "anthropic"), ask(stream=True))[0], ErrorKind.CONTEXT_OVERFLOW)
    assert failure.partial_text == "Hello there"
    assert failure.usage == ANTHROPIC_USAGE


def test_gemini_bare_multiline_error_in_stream_is_classified(provider_simulator):
    error_lines = [
        "[{",
        '  "error": {',
        '    "code": 429,',
        '    "message": "Resource has been exhausted {see details}. Please retry in 7s.",',
        '    "status": "RESOURCE_EXHAUSTED"',
        "  }",
        "}",
        "]",
    ]
    body = "data: " + json.dumps(_gm([{"text": "Hel"}])) + "\r\n\r\n" + "\n".join(error_lines) + "\n"
    provider_simulator.script([Raw(200, body, content_type=SSE)], model="m")
    failure = failed(call(endpoint(provider_simulator, "gemini"), ask(stream=True))[0], ErrorKind.RATE_LIMIT)
    assert failure.retry_after_s == 7
    assert failure.partial_text == "Hel"


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_body_or_stream_event_that_is_not_json_is_malformed_response(provider_simulator, flavour, stream):
    provider_simulator.script([Malformed()], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask(stream=stream))[0], ErrorKind.MALFORMED_RESPONSE)
    assert failure.status == 200 and ("not valid JSON" in failure.message or "malformed JSON" in failure.message)


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini"])
def test_empty_200_is_empty_response(provider_simulator, flavour):
    provider_simulator.script([Empty()], model="m")
    failed(call(endpoint(provider_simulator, flavour), ask())[0], ErrorKind.EMPTY_RESPONSE)


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_content_filter_200_is_content_filter(provider_simulator, flavour, stream):
    provider_simulator.script([ContentFilter()], model="m")
    failed(call(endpoint(provider_simulator, flavour), ask(stream=stream))[0], ErrorKind.CONTENT_FILTER)


# -- rate-limit headers, request ids, local servers ------------------------------------------


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
def test_rate_limit_headers_become_rate_limits(provider_simulator, flavour):
    limits = {"limit_requests": 50, "remaining_requests": 49, "limit_tokens": 40000, "remaining_tokens": 39000, "reset_s": 30}
    provider_simulator.script([Reply("ok", rate_limit=limits)], model="m")
    before = time.time()
    result = completed(call(endpoint(provider_simulator, flavour), ask())[0])
    rl = result.rate_limits
    assert rl is not None
    assert (rl.limit_requests, rl.remaining_requests, rl.limit_tokens, rl.remaining_tokens) == (50, 49, 40000, 39000)
    for reset in (rl.reset_requests_at, rl.reset_tokens_at):
        assert reset is not None and before + 28 <= reset <= time.time() + 32


def test_anthropic_rfc3339_resets_and_split_token_limits(provider_simulator):
    headers = {
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "999",
        "anthropic-ratelimit-requests-reset": "2026-11-03T12:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-remaining": "79000",
        "anthropic-ratelimit-input-tokens-reset": "2026-11-03T12:00:01.5Z",
        "anthropic-ratelimit-output-tokens-limit": "16000",
        "anthropic-ratelimit-output-tokens-remaining": "300",
        "anthropic-ratelimit-output-tokens-reset": "2026-11-03T12:00:10+00:00",
    }
    provider_simulator.script([Raw(200, ANTHROPIC_BODY, headers=headers)], model="m")
    result = completed(call(endpoint(provider_simulator, "anthropic"), ask())[0])
    noon = 1793707200.0  # 2026-11-03T12:00:00Z
    # without combined token headers, the output limit (300 left) is the one that binds
    assert result.rate_limits == RateLimits(1000, 999, noon + 30, 16000, 300, noon + 10)


def test_gemini_sends_no_rate_limit_headers(provider_simulator):
    provider_simulator.script([Reply("ok", rate_limit={"remaining_requests": 1})], model="m")
    assert completed(call(endpoint(provider_simulator, "gemini"), ask())[0]).rate_limits is None


@pytest.mark.parametrize(
    ("flavour", "raw", "expected"),
    [
        pytest.param("openai", Raw(200, OPENAI_BODY, headers={"x-request-id": "req_oa"}), "req_oa", id="openai-x-request-id"),
        pytest.param("anthropic", Raw(200, ANTHROPIC_BODY, headers={"request-id": "req_an"}), "req_an", id="anthropic-request-id"),
        pytest.param("gemini", Raw(200, GEMINI_BODY), "resp-42", id="gemini-responseId"),
        pytest.param("openrouter", Raw(200, OPENAI_BODY, headers={"x-generation-id": "gen-1"}), "gen-1", id="openrouter-generation-id"),
    ],
)
def test_request_id_captured(provider_simulator, flavour, raw, expected):
    provider_simulator.script([raw], model="m")
    assert completed(call(endpoint(provider_simulator, flavour), ask())[0]).request_id == expected


@pytest.mark.parametrize(
    ("flavour", "raw", "expected"),
    [
        pytest.param("openai", Raw(500, {"error": {"message": "boom", "type": "server_error"}}, headers={"x-request-id": "req_oa"}), "req_oa", id="openai"),
        pytest.param("anthropic", Raw(500, {"type": "error", "error": {"type": "api_error", "message": "boom"}, "request_id": "req_body"}), "req_body", id="anthropic-body-request_id"),
        pytest.param("anthropic", Raw(500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}, headers={"request-id": "req_hdr"}), "req_hdr", id="anthropic-header"),
    ],
)
def test_request_id_captured_on_failures(provider_simulator, flavour, raw, expected):
    provider_simulator.script([raw], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask())[0], ErrorKind.SERVER_ERROR)
    assert failure.request_id == expected


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_local_server_model_is_never_a_price_key(provider_simulator, stream):
    provider_simulator.script([Reply("ok", model="qwen2.5-7b-instruct-q4_k_m.gguf")], model="qwen")
    result = completed(call(endpoint(provider_simulator, "llamacpp"), ask("qwen", stream=stream))[0])
    assert result.model == "qwen2.5-7b-instruct-q4_k_m.gguf"  # shown as reported
    assert result.served_model is None
    sent = provider_simulator.requests[-1]
    assert sent.key is None and "authorization" not in sent.headers


def test_local_endpoint_on_anthropic_and_gemini_protocols_has_no_price_key(provider_simulator):
    for flavour in ("anthropic", "gemini"):
        provider_simulator.script([Reply("ok", model="local-alias")], model="m")
        result = completed(call(endpoint(provider_simulator, flavour, local=True), ask())[0])
        assert (result.model, result.served_model) == ("local-alias", None)


def test_openrouter_models_fallback_reports_the_serving_model(provider_simulator):
    from nbrouter.testing import Overloaded

    provider_simulator.script([Overloaded()], model="vendor/a")
    provider_simulator.script([Reply("from b")], model="vendor/b")
    request = ChatRequest("vendor/a", [{"role": "user", "content": "hi"}], models=["vendor/a", "vendor/b"])
    result = completed(call(endpoint(provider_simulator, "openrouter"), request)[0])
    assert provider_simulator.requests[-1].body["models"] == ["vendor/a", "vendor/b"]
    assert (result.text, result.served_model) == ("from b", "vendor/b")


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "key", "raw"),
    [
        pytest.param("openai", OPENAI_KEY, Raw(401, {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}.", "type": "invalid_request_error", "code": "invalid_api_key"}}), id="openai-401-echo"),
        pytest.param("anthropic", ANTHROPIC_KEY, Raw(401, {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {ANTHROPIC_KEY}"}}), id="anthropic-401-echo"),
        pytest.param("gemini", GEMINI_KEY, Raw(400, [{"error": {"code": 400, "message": f"API key not valid: key={GEMINI_KEY}", "status": "INVALID_ARGUMENT"}}]), id="gemini-400-echo"),
        pytest.param("openrouter", OPENROUTER_KEY, Raw(200, sse=[(None, json.dumps({"error": {"code": 401, "message": f"bad key {OPENROUTER_KEY}"}}))]), id="openrouter-in-stream-echo"),
        pytest.param("anthropic", ANTHROPIC_KEY, Raw(200, f"not json {ANTHROPIC_KEY}", content_type="text/plain"), id="anthropic-garbage-body-echo"),
        pytest.param("gemini", GEMINI_KEY, Raw(503, f"<html>upstream {GEMINI_KEY}</html>", content_type="text/html"), id="gemini-html-echo"),
    ],
)
def test_no_api_key_in_any_failure_message(provider_simulator, flavour, key, raw):
    provider_simulator.script([raw], model="m")
    result = call(endpoint(provider_simulator, flavour), ask(stream=raw.sse is not None))[0]
    assert isinstance(result, ProviderFailure)
    for text in (str(result), result.message, repr(result)):
        assert key not in text
        assert key[8:20] not in text


def test_requests_go_to_the_transport_httpx_picks_for_the_url_so_proxies_still_apply() -> None:
    """The sender skips `client.send`'s redirect, auth and cookie layers, not httpx's proxy mounts."""
    import asyncio

    import httpx

    from nbrouter.providers import get_protocol
    from nbrouter.providers._http import send
    from nbrouter.providers.base import ChatRequest, Endpoint

    seen: list[str] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"model": "m", "choices": [{"message": {"content": "via the mount"}, "finish_reason": "stop"}]})

    async def go() -> str:
        async with httpx.AsyncClient(mounts={"http://llm.example": httpx.MockTransport(proxy)}) as client:
            completion = await send(client, get_protocol("openai"), Endpoint("p", "openai", "http://llm.example/v1", api_key="k"),
                                    ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}]), timeout_s=5)
            return completion.text

    assert asyncio.run(go()) == "via the mount"
    assert seen == ["http://llm.example/v1/chat/completions"]


# -- the Sender: what carries a request ------------------------------------------------------------


def _hi() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def test_a_sender_given_a_transport_sends_every_request_through_it() -> None:
    """`Sender(transport=...)` takes any httpx transport (here httpx's MockTransport) and leaves it open."""
    from nbrouter.providers import Sender

    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["authorization"]))
        return httpx.Response(200, json={"model": "m", "choices": [{"message": {"content": "mocked"}, "finish_reason": "stop"}]})

    transport = httpx.MockTransport(handler)

    async def go() -> str:
        sender = Sender(transport=transport)
        completion = await sender.send(get_protocol("openai"), Endpoint("p", "openai", "http://llm.example/v1", api_key=OPENAI_KEY), _hi(), timeout_s=5)
        await sender.aclose()
        # the transport is the caller's: still usable after the sender closed
        again = await Sender(transport=transport).send(get_protocol("openai"), Endpoint("p", "openai", "http://llm.example/v1", api_key=OPENAI_KEY), _hi(), timeout_s=5)
        return completion.text + " " + again.text

    assert asyncio.run(go()) == "mocked mocked"
    assert seen == [("http://llm.example/v1/chat/completions", f"Bearer {OPENAI_KEY}")] * 2


def test_a_sender_given_an_http_client_sends_with_its_headers() -> None:
    """`Sender(http_client=...)`: the client's own default headers and mounts apply."""
    from nbrouter.providers import Sender

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-team", ""))
        return httpx.Response(200, json={"model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    async def go() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"x-team": "blue"}) as client:
            return (await Sender(http_client=client).send(get_protocol("openai"), Endpoint("p", "openai", "http://llm.example/v1"), _hi(), timeout_s=5)).text

    assert asyncio.run(go()) == "ok"
    assert seen == ["blue"]


def test_the_default_sender_honours_http_proxy_and_no_proxy(provider_simulator, monkeypatch) -> None:
    """HTTP_PROXY from the environment carries requests (the simulator plays the proxy: it serves the
    absolute-form request it gets); a host in NO_PROXY goes direct (nothing listens there: refused)."""
    from nbrouter.providers import Sender

    port = provider_simulator.url.rsplit(":", 1)[1]
    target = f"http://127.0.0.2:{port}/v1"  # loopback too, but not the address the simulator listens on
    monkeypatch.setenv("HTTP_PROXY", provider_simulator.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    provider_simulator.script([Reply("through the proxy")], model="m")

    async def go() -> Completion | ProviderFailure:
        sender = Sender()
        try:
            return await sender.send(get_protocol("openai"), Endpoint("p", "openai", target, api_key=OPENAI_KEY), ask(), timeout_s=5)
        except ProviderFailure as failure:
            return failure
        finally:
            await sender.aclose()

    assert completed(asyncio.run(go())).text == "through the proxy"
    assert provider_simulator.requests[-1].headers["host"] == f"127.0.0.2:{port}"
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    failure = failed(asyncio.run(go()), ErrorKind.NETWORK)
    assert failure.refused


def test_loopback_is_never_sent_through_a_proxy(provider_simulator, monkeypatch) -> None:
    """A proxy cannot reach this machine's loopback: local servers stay reachable with HTTP_PROXY set."""
    from nbrouter.providers import Sender

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens on the discard port
    provider_simulator.script([Reply("direct")], model="m")

    async def go() -> str:
        sender = Sender()
        try:
            return (await sender.send(get_protocol("openai"), endpoint(provider_simulator, "openai"), ask(), timeout_s=5)).text
        finally:
            await sender.aclose()

    assert asyncio.run(go()) == "direct"


# -- nothing escapes send: every field type-checked, any exception classified -----------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "flavour, raw, where",
    [
        pytest.param("openai", Raw(200, {"choices": ["x"]}), "choices[0]", id="openai-choices-of-str"),
        pytest.param("openai", Raw(200, {"choices": {"0": {}}}), "choices", id="openai-choices-object"),
        pytest.param("openai", Raw(200, {"choices": [{"message": {"content": 5}, "finish_reason": "stop"}]}), "content", id="openai-content-int"),
        pytest.param("openai", Raw(200, {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": "abc"}}),
                     "usage.prompt_tokens", id="openai-usage-abc"),
        pytest.param("openai", Raw(200, {"choices": [{"message": {"content": "hi"}, "finish_reason": ["stop"]}]}), "finish_reason", id="openai-finish-list"),
        pytest.param("openai", Raw(200, {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1e400}}),
                     "usage.prompt_tokens", id="openai-usage-inf"),
        pytest.param("openai", Raw(200, DEEP), "nested too deep", id="openai-deep-200"),
        pytest.param("anthropic", Raw(200, {"content": "text", "stop_reason": "end_turn"}), "content", id="anthropic-content-str"),
        pytest.param("anthropic", Raw(200, {"content": [{"type": "text", "text": ["a"]}], "stop_reason": "end_turn"}), "text", id="anthropic-text-list"),
        pytest.param("anthropic", Raw(200, {"content": [{"type": "text", "text": "a"}], "stop_reason": "end_turn", "usage": {"input_tokens": -3}}),
                     "usage.input_tokens", id="anthropic-usage-negative"),
        pytest.param("gemini", Raw(200, {"candidates": 5}), "candidates", id="gemini-candidates-5"),
        pytest.param("gemini", Raw(200, {"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": ["STOP"]}]}), "finishReason",
                     id="gemini-finish-list"),
        pytest.param("gemini", Raw(200, {"candidates": [{"content": {"parts": "abc"}}]}), "parts", id="gemini-parts-str"),
        pytest.param("gemini", Raw(200, {"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}],
                                         "usageMetadata": {"promptTokenCount": "²"}}), "promptTokenCount", id="gemini-usage-superscript"),
    ],
)
def test_a_200_of_the_wrong_shape_is_malformed_response(provider_simulator, flavour, raw, where):
    provider_simulator.script([raw], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask())[0], ErrorKind.MALFORMED_RESPONSE)
    assert where in failure.message and failure.status == 200


@pytest.mark.parametrize(
    "flavour, events, where",
    [
        pytest.param("openai", [(None, '{"choices":["x"]}'), (None, "[DONE]")], "choice", id="openai-choice-str"),
        pytest.param("openai", [(None, '{"choices":[{"delta":{"content":["a"]}}]}'), (None, "[DONE]")], "content", id="openai-delta-list"),
        pytest.param("anthropic", [("content_block_delta", '{"type":"content_block_delta","delta":"x"}')], "delta", id="anthropic-delta-str"),
        pytest.param("gemini", [(None, '{"candidates":[{"content":{"parts":[{"text":"a"}]},"finishReason":["STOP"]}]}')], "finishReason",
                     id="gemini-finish-list"),
        pytest.param("gemini", [(None, DEEP)], "nested too deep", id="gemini-deep-chunk"),
    ],
)
def test_a_stream_event_of_the_wrong_shape_is_malformed_response(provider_simulator, flavour, events, where):
    provider_simulator.script([Raw(200, sse=events)], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask(stream=True))[0], ErrorKind.MALFORMED_RESPONSE)
    assert where in failure.message and failure.status == 200


@pytest.mark.parametrize(
    "flavour, body, kind",
    [
        pytest.param("openai", {"error": {"code": "²", "message": "odd"}}, ErrorKind.SERVER_ERROR, id="openai-code-superscript"),
        pytest.param("openai", {"error": {"code": 1e400, "message": ["x"], "type": {"a": 1}}}, ErrorKind.SERVER_ERROR, id="openai-code-inf"),
        pytest.param("gemini", {"error": {"code": 1e400, "message": "odd", "details": "x"}}, ErrorKind.SERVER_ERROR, id="gemini-code-inf"),
        pytest.param("anthropic", {"type": "error", "error": {"type": 7, "message": None, "details": []}}, ErrorKind.SERVER_ERROR, id="anthropic-type-int"),
    ],
)
def test_an_error_object_of_odd_types_in_a_200_is_still_classified(provider_simulator, flavour, body, kind):
    provider_simulator.script([Raw(200, body)], model="m")
    failed(call(endpoint(provider_simulator, flavour), ask())[0], kind)


@pytest.mark.parametrize("flavour", ["openai", "anthropic", "gemini"])
def test_a_429_nested_100000_deep_is_still_a_rate_limit(provider_simulator, flavour):
    provider_simulator.script([Raw(429, DEEP, headers={"retry-after": "3"})], model="m")
    failure = failed(call(endpoint(provider_simulator, flavour), ask())[0], ErrorKind.RATE_LIMIT)
    assert failure.status == 429 and len(failure.message) <= 500


@pytest.mark.parametrize("value", ["1e400", "-5", "nan", "inf", "9" * 400, "abc"])
def test_an_absurd_rate_limit_header_is_ignored_not_a_crash(provider_simulator, value):
    headers = {"x-ratelimit-remaining-requests": value, "x-ratelimit-limit-requests": value, "x-ratelimit-reset-requests": value,
               "retry-after": value}
    provider_simulator.script([Reply("fine", headers=headers)], model="m")
    completion = completed(call(endpoint(provider_simulator, "openai"), ask())[0])
    assert completion.text == "fine"
    assert completion.rate_limits is not None and completion.rate_limits.remaining_requests is None
    assert completion.rate_limits.reset_requests_at is None


def test_an_endless_retry_after_on_a_429_is_capped_and_a_nan_one_is_no_hint(provider_simulator):
    from nbrouter.providers.openai import MAX_WAIT_S

    # issue 26: a wait of forever (1e400 is inf) is the longest wait believed, not none; NaN is no number at all
    provider_simulator.script([Raw(429, {"error": {"message": "slow down"}}, headers={"retry-after": "1e400", "retry-after-ms": "nan"})], model="m")
    failure = failed(call(endpoint(provider_simulator, "openai"), ask())[0], ErrorKind.RATE_LIMIT)
    assert failure.retry_after_s == MAX_WAIT_S
    provider_simulator.script([Raw(429, {"error": {"message": "slow down"}}, headers={"retry-after": "nan"})], model="m")
    failure = failed(call(endpoint(provider_simulator, "openai"), ask())[0], ErrorKind.RATE_LIMIT)
    assert failure.retry_after_s is None


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_9000_byte_set_cookie_header_is_malformed_response(raw_server, stream):
    from nbrouter.testing import RawResponse

    head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nset-cookie: a=" + "x" * 9000 + "\r\ncontent-length: 2\r\n\r\n{}"
    raw_server.script(RawResponse([head.encode()]))
    ep = Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY)
    failure = failed(call(ep, ask(stream=stream))[0], ErrorKind.MALFORMED_RESPONSE)
    assert "ClientResponseError" in failure.message


def test_a_stream_line_past_the_cap_is_malformed_response(raw_server):
    from nbrouter.providers import Sender
    from nbrouter.testing import RawResponse

    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    first = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    raw_server.script(RawResponse([head, first, b"data: " + b"x" * 5000, b"y" * 5000]))
    seen: list[str] = []

    async def go() -> ProviderFailure:
        sender = Sender()
        try:
            await sender.send(get_protocol("openai"), Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY), ask(stream=True),
                              timeout_s=5, max_line_bytes=4096, on_text=seen.append)
        except ProviderFailure as failure:
            return failure
        finally:
            await sender.aclose()
        raise AssertionError("the long line was accepted")

    failure = asyncio.run(go())
    assert failure.kind is ErrorKind.MALFORMED_RESPONSE and "4,096 bytes" in failure.message
    assert failure.status == 200 and failure.partial_text == "Hel" and seen == ["Hel"]


def test_the_sse_reader_caps_one_event_s_data_lines_too() -> None:
    from nbrouter.providers._http import iter_sse

    async def chunks():
        yield b"data: aaaa\n" * 100  # 100 lines of one event, 1,100 bytes of data

    async def go() -> ProviderFailure:
        try:
            async for _ in iter_sse(chunks(), max_line_bytes=500):
                pass
        except ProviderFailure as failure:
            return failure
        raise AssertionError("the event was accepted")

    assert asyncio.run(go()).kind is ErrorKind.MALFORMED_RESPONSE


@pytest.mark.parametrize("size", [1, 7, 64, 4096])
def test_the_sse_reader_yields_the_same_events_whatever_the_chunking(size) -> None:
    from nbrouter.providers._http import iter_sse

    blob = (b": comment\r\nevent: a\r\ndata: one\r\ndata: two\r\n\r\n" + b"data: " + "é".encode() * 3000 + b"\n\n"
            + b"id: 7\nretry: 5\nbare line\n\ndata: tail")

    async def chunks():
        for i in range(0, len(blob), size):
            yield blob[i : i + size]

    async def go() -> list[tuple[str, str]]:
        return [(e.event, e.data) async for e in iter_sse(chunks())]

    assert asyncio.run(go()) == [("a", "one\ntwo"), ("", "é" * 3000), ("raw", "bare line"), ("", "tail")]


def test_a_stream_that_goes_quiet_past_the_idle_limit_is_a_timeout(raw_server):
    from nbrouter.providers import Sender
    from nbrouter.testing import RawResponse

    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    raw_server.script(RawResponse([head, b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n', b"data: [DONE]\n\n"], pause_s=3.0))

    async def go() -> ProviderFailure:
        sender = Sender()
        try:
            await sender.send(get_protocol("openai"), Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY), ask(stream=True),
                              timeout_s=30, idle_timeout_s=0.3)
        except ProviderFailure as failure:
            return failure
        finally:
            await sender.aclose()
        raise AssertionError("the quiet stream was accepted")

    failure = asyncio.run(go())
    assert failure.kind is ErrorKind.TIMEOUT and "no stream event for 0.3 s" in failure.message
    assert failure.status == 200


def test_an_idle_limit_leaves_a_steady_stream_alone(raw_server):
    from nbrouter.providers import Sender
    from nbrouter.testing import RawResponse

    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    events = [b'data: {"choices":[{"delta":{"content":"%d "}}]}\n\n' % i for i in range(6)]
    raw_server.script(RawResponse([head, *events, b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'], pause_s=0.05))

    async def go() -> str:
        sender = Sender()
        try:
            completion = await sender.send(get_protocol("openai"), Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY),
                                           ask(stream=True), timeout_s=30, idle_timeout_s=5)
            return completion.text
        finally:
            await sender.aclose()

    assert asyncio.run(go()) == "0 1 2 3 4 5 "


def test_an_exception_in_on_text_is_the_callers_and_propagates(provider_simulator):
    provider_simulator.script([Reply("hello there")], model="m")

    def sink(text: str) -> None:
        raise KeyError("consumer bug")

    async def go() -> None:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            await send(client, get_protocol("openai"), endpoint(provider_simulator, "openai"), ask(stream=True), timeout_s=5, on_text=sink)

    with pytest.raises(KeyError, match="consumer bug"):
        asyncio.run(go())


@pytest.mark.parametrize("via", ["default", "http_client"])
def test_a_cookie_a_provider_sets_never_rides_on_later_requests(provider_simulator, via):
    """Nothing carries state from one request to the next: an odd (here not ASCII, and big) cookie set by
    one reply is not sent with the next request, which would fail to encode or be refused."""
    from nbrouter.providers import Sender

    cookie = "a=" + "é" * 10 + "; Path=/"
    provider_simulator.script([Reply("first", headers={"set-cookie": cookie}), Reply("second")], model="m")
    ep = Endpoint("p", "openai", provider_simulator.url.replace("127.0.0.1", "localhost") + "/v1", api_key=OPENAI_KEY)

    async def go() -> list[str]:
        # httpx's own transport keeps no cookies: what is tested is that the client's jar is not read
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
            sender = Sender(http_client=client) if via == "http_client" else Sender()
            try:
                return [(await sender.send(get_protocol("openai"), ep, ask(), timeout_s=5)).text for _ in range(2)]
            finally:
                await sender.aclose()

    assert asyncio.run(go()) == ["first", "second"]
    assert "cookie" not in provider_simulator.requests[-1].headers


def test_a_body_past_the_size_cap_is_malformed_response(raw_server, monkeypatch):
    from nbrouter.providers import _http
    from nbrouter.testing import RawResponse, http_response

    monkeypatch.setattr(_http, "MAX_BODY_BYTES", 10_000)
    raw_server.script(RawResponse([http_response(200, b'{"pad": "' + b"x" * 20_000 + b'"}')]))
    failure = failed(call(Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY), ask())[0], ErrorKind.MALFORMED_RESPONSE)
    assert "larger than 10,000 bytes" in failure.message and failure.status == 200


# -- the send path's shortcuts (issue 22's throughput): same bytes on the wire, same answers -------------------


def _sent(sender: Any, ep: Endpoint, request: ChatRequest) -> Completion | ProviderFailure:
    async def go() -> Completion | ProviderFailure:
        try:
            return await sender.send(get_protocol(ep.protocol), ep, request, timeout_s=5.0)
        except ProviderFailure as failure:
            return failure
        finally:
            await sender.aclose()
    return asyncio.run(go())


def _head(raw: bytes) -> dict[str, list[str]]:
    head, _, _ = raw.partition(b"\r\n\r\n")
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def test_headers_made_once_per_endpoint_carry_each_key_host_and_length(raw_server):
    """The Sender makes an endpoint's headers once and copies them per request: each key still reaches the
    wire with its own request, an endpoint's own header overrides a default whatever its case, and Host and
    the body's length are set as httpx would; the made headers show nowhere."""
    from nbrouter.providers import Sender
    from nbrouter.testing import RawResponse, http_response

    body = json.dumps({"model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}).encode()
    raw_server.script(*[RawResponse([http_response(200, body, [("content-type", "application/json")])]) for _ in range(3)])
    other = "sk-proj-AnotherT3stKeyForProtocols987654"

    async def go() -> list[Any]:
        sender = Sender()
        try:
            out = []
            for key, headers in ((OPENAI_KEY, {}), (other, {}), (OPENAI_KEY, {"ACCEPT": "application/x-ndjson"})):
                ep = Endpoint("p", "openai", raw_server.url + "/v1", api_key=key, headers=headers)
                out.append(await sender.send(get_protocol("openai"), ep, ask(), timeout_s=5.0))
            assert OPENAI_KEY not in repr(sender) and other not in repr(sender)
            return out
        finally:
            await sender.aclose()

    results = asyncio.run(go())
    assert [completed(r).text for r in results] == ["ok", "ok", "ok"]
    sent = raw_server.requests[-3:]
    heads = [_head(r) for r in sent]
    assert [h["authorization"] for h in heads] == [[f"Bearer {OPENAI_KEY}"], [f"Bearer {other}"], [f"Bearer {OPENAI_KEY}"]]
    port = raw_server.url.rsplit(":", 1)[1]
    for raw, h in zip(sent, heads):
        assert h["host"] == [f"127.0.0.1:{port}"]
        payload = raw.partition(b"\r\n\r\n")[2]
        assert h["content-length"] == [str(len(payload))] and json.loads(payload)["messages"][0]["content"] == "hi"
    assert heads[0]["accept"] == ["*/*"] and heads[2]["accept"] == ["application/x-ndjson"]


def test_a_gzip_body_is_decompressed_and_a_plain_one_read_as_it_came(raw_server):
    """A reply without content-encoding is read straight from the transport's stream; a gzip one still goes
    through httpx's decoding (and one labelled gzip that is not is malformed_response, as before)."""
    import gzip

    from nbrouter.providers import Sender
    from nbrouter.testing import RawResponse, http_response

    body = json.dumps({"model": "m", "choices": [{"message": {"content": "über"}, "finish_reason": "stop"}]}).encode()
    ep = Endpoint("p", "openai", raw_server.url + "/v1", api_key=OPENAI_KEY)
    raw_server.script(RawResponse([http_response(200, gzip.compress(body), [("content-encoding", "gzip")])]))
    assert completed(_sent(Sender(), ep, ask())).text == "über"
    raw_server.script(RawResponse([http_response(200, body, [("content-encoding", " Identity ")])]))
    assert completed(_sent(Sender(), ep, ask())).text == "über"
    raw_server.script(RawResponse([http_response(200, body)]))
    assert completed(_sent(Sender(), ep, ask())).text == "über"
    raw_server.script(RawResponse([http_response(200, body, [("content-encoding", "gzip")])]))
    failed(_sent(Sender(), ep, ask()), ErrorKind.MALFORMED_RESPONSE)


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_response_a_transport_made_already_read_is_read_whole(stream):
    """A transport of the caller's may hand back `httpx.Response(content=...)`, read already: its body (or its
    events) is taken from what it holds, not read again from a stream that is spent."""
    from nbrouter.providers import Sender

    if stream:
        content = (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
                   b'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
        kind = SSE
    else:
        content = json.dumps({"model": "m", "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}]}).encode()
        kind = "application/json"

    class Made(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": kind}, content=content)

    ep = Endpoint("p", "openai", "http://127.0.0.1:9/v1", api_key=OPENAI_KEY)
    assert completed(_sent(Sender(Made()), ep, ask(stream=stream))).text == "Hello"

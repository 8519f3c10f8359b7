"""Issue 25, the provider layer: images, tools, tool choice, JSON mode, tool calls read from replies and
streams, tool results sent back, and "this model has no images/tools" classified `unsupported`.

Each protocol's wire shape (multimodal_tools.md) is checked on the body the simulator recorded over
loopback; the replies are scripted as the providers send them (`Raw`), read by `_http.send`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from nbrouter._core.content import Tool, ToolCall, image_part, image_url_part, tool_result
from nbrouter.providers import ChatRequest, Completion, Endpoint, ProviderFailure, get_protocol
from nbrouter.providers._http import send
from nbrouter.router.types import ErrorKind
from nbrouter.testing import Raw

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
PNG_B64 = base64.b64encode(PNG).decode("ascii")
# a JPEG's own first bytes: the simulator, as Anthropic does, refuses bytes that do not match their media type
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(40))
JPEG_B64 = base64.b64encode(JPEG).decode("ascii")
WEATHER = Tool("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
OSLO = ToolCall("call_1", "get_weather", {"city": "Oslo"})
PROTOCOLS = ["openai", "anthropic", "gemini"]


def _endpoint(sim: Any, protocol: str) -> Endpoint:
    url = {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}[protocol]
    return Endpoint(protocol, protocol, url, api_key="sk-tools-0123456789abcdef", preset=protocol)


def _send(sim: Any, protocol: str, request: ChatRequest) -> Completion | ProviderFailure:
    async def go() -> Completion | ProviderFailure:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            try:
                return await send(client, get_protocol(protocol), _endpoint(sim, protocol), request, timeout_s=5)
            except ProviderFailure as failure:
                return failure

    return asyncio.run(go())


def _sent(sim: Any, protocol: str, request: ChatRequest, reply: Raw | None = None) -> dict[str, Any]:
    """The JSON body the provider received for `request` (answered with `reply`, or the echo)."""
    if reply is not None:
        sim.script([reply], model="m")
    result = _send(sim, protocol, request)
    assert isinstance(result, Completion), repr(result)
    body = sim.requests[-1].body
    assert isinstance(body, dict)
    return body


def _ask(*messages: dict[str, Any], **kw: Any) -> ChatRequest:
    return ChatRequest("m", list(messages), **kw)


# -- images ------------------------------------------------------------------------------------------

USER_WITH_IMAGES = {"role": "user", "content": ["What is this?", image_part(PNG, "image/png"),
                                                image_url_part(f"data:image/jpeg;base64,{JPEG_B64}"),
                                                image_url_part("https://example.com/cat.webp")]}


def test_openai_sends_image_parts_as_image_url_data_urls(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "openai", _ask(USER_WITH_IMAGES))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
    ]


def test_anthropic_sends_image_parts_as_base64_or_url_image_blocks(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "anthropic", _ask(USER_WITH_IMAGES))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": JPEG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.webp"}},
    ]


def test_gemini_sends_image_parts_as_inline_data_or_file_data(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "gemini", _ask(USER_WITH_IMAGES))
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
        {"inlineData": {"mimeType": "image/jpeg", "data": JPEG_B64}},
        {"fileData": {"fileUri": "https://example.com/cat.webp"}},
    ]


def test_a_text_only_message_goes_out_as_it_came(provider_simulator: Any) -> None:
    message = {"role": "user", "content": "hi"}
    assert _sent(provider_simulator, "openai", _ask(message))["messages"] == [message]
    assert _sent(provider_simulator, "anthropic", _ask(message))["messages"] == [message]


# -- tool declarations and tool_choice -----------------------------------------------------------------

SCHEMA = dict(WEATHER.parameters)


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", "auto"), ("required", "required"), ("none", "none"),
    ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
])
def test_openai_tools_and_tool_choice(provider_simulator: Any, choice: str, wire: Any) -> None:
    body = _sent(provider_simulator, "openai", _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER], tool_choice=choice))
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA,
                                                               "description": "The weather in a city"}}]
    assert body["tool_choice"] == wire


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ("get_weather", {"type": "tool", "name": "get_weather"}),
])
def test_anthropic_tools_and_tool_choice(provider_simulator: Any, choice: str, wire: Any) -> None:
    body = _sent(provider_simulator, "anthropic", _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER], tool_choice=choice))
    assert body["tools"] == [{"name": "get_weather", "input_schema": SCHEMA, "description": "The weather in a city"}]
    assert body["tool_choice"] == wire


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"}), ("none", {"mode": "NONE"}),
    ("get_weather", {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_gemini_tools_and_tool_config(provider_simulator: Any, choice: str, wire: Any) -> None:
    body = _sent(provider_simulator, "gemini", _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER], tool_choice=choice))
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": SCHEMA,
                                                        "description": "The weather in a city"}]}]
    assert body["toolConfig"] == {"functionCallingConfig": wire}


def test_a_tool_without_parameters_declares_an_empty_object(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "openai", _ask({"role": "user", "content": "now?"}, tools=[Tool("now")]))
    assert body["tools"] == [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
    assert "tool_choice" not in body


# -- JSON mode ----------------------------------------------------------------------------------------


def test_json_mode_per_protocol(provider_simulator: Any) -> None:
    hi = {"role": "user", "content": "a json object please"}
    assert _sent(provider_simulator, "openai", _ask(hi, response_format="json"))["response_format"] == {"type": "json_object"}
    assert _sent(provider_simulator, "anthropic", _ask(hi, response_format="json"))["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}}
    config = _sent(provider_simulator, "gemini", _ask(hi, response_format="json"))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}


def test_a_response_format_string_other_than_json_is_an_invalid_request(provider_simulator: Any) -> None:
    result = _send(provider_simulator, "openai", _ask({"role": "user", "content": "x"}, response_format="yaml"))
    assert isinstance(result, ProviderFailure) and result.kind is ErrorKind.INVALID_REQUEST
    assert not provider_simulator.requests  # nothing went on the wire


# -- tool calls in replies ----------------------------------------------------------------------------

OPENAI_CALL = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
               "message": {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
               "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}
ANTHROPIC_CALL = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "tool_use",
                  "content": [{"type": "text", "text": "Let me look."},
                              {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}],
                  "usage": {"input_tokens": 20, "output_tokens": 9}}
GEMINI_CALL = {"candidates": [{"content": {"role": "model", "parts": [
                   {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"}]},
               "finishReason": "STOP", "index": 0}], "modelVersion": "m", "usageMetadata": {"promptTokenCount": 20}}


@pytest.mark.parametrize(("protocol", "reply", "text", "signature"), [
    ("openai", OPENAI_CALL, "", None), ("anthropic", ANTHROPIC_CALL, "Let me look.", None), ("gemini", GEMINI_CALL, "", "c2ln"),
])
def test_tool_calls_are_read_from_a_reply(provider_simulator: Any, protocol: str, reply: Any, text: str, signature: str | None) -> None:
    provider_simulator.script([Raw(200, reply)], model="m")
    result = _send(provider_simulator, protocol, _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER]))
    assert isinstance(result, Completion), repr(result)
    assert result.text == text
    assert result.tool_calls == [ToolCall("call_1", "get_weather", {"city": "Oslo"}, signature)]


def test_a_gemini_call_without_an_id_gets_one_that_is_never_sent_back(provider_simulator: Any) -> None:
    reply = json.loads(json.dumps(GEMINI_CALL))
    del reply["candidates"][0]["content"]["parts"][0]["functionCall"]["id"]
    provider_simulator.script([Raw(200, reply)], model="m")
    result = _send(provider_simulator, "gemini", _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER]))
    assert isinstance(result, Completion) and len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call.id and call.name == "get_weather"
    body = _sent(provider_simulator, "gemini", _ask({"role": "user", "content": "Oslo?"},
                                                    {"role": "assistant", "content": "", "tool_calls": [call.as_dict()]},
                                                    tool_result(call, "12 C")))
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": "c2ln"}]
    assert body["contents"][2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"output": "12 C"}}}]


def _openai_stream() -> list[tuple[str | None, str]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, str]:
        return None, json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    return [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Oslo\"}"}}]}),
        chunk({}, "tool_calls"),
        (None, "[DONE]"),
    ]


def _anthropic_stream() -> list[tuple[str | None, str]]:
    def ev(name: str, data: dict[str, Any]) -> tuple[str, str]:
        return name, json.dumps({"type": name, **data})
    return [
        ev("message_start", {"message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Let me look."}}),
        ev("content_block_stop", {"index": 0}),
        ev("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}}),
        ev("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        ev("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
        ev("content_block_stop", {"index": 1}),
        ev("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}}),
        ev("content_block_stop", {"index": 2}),
        ev("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        ev("message_stop", {}),
    ]


def _gemini_stream() -> list[tuple[str | None, str]]:
    first = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Oslo"}}}]}, "index": 0}], "modelVersion": "m"}
    second = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "call_2", "name": "get_time", "args": {}}}]}, "finishReason": "STOP", "index": 0}], "modelVersion": "m"}
    return [(None, json.dumps(first)), (None, json.dumps(second))]


@pytest.mark.parametrize(("protocol", "events", "text"), [
    ("openai", _openai_stream(), ""), ("anthropic", _anthropic_stream(), "Let me look."), ("gemini", _gemini_stream(), ""),
])
def test_tool_calls_are_read_from_a_stream(provider_simulator: Any, protocol: str, events: Any, text: str) -> None:
    provider_simulator.script([Raw(200, sse=events)], model="m")
    result = _send(provider_simulator, protocol, _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER], stream=True))
    assert isinstance(result, Completion), repr(result)
    assert result.text == text
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("call_1", "get_weather", {"city": "Oslo"}), ("call_2", "get_time", {})]


@pytest.mark.parametrize("arguments", ["{\"city\":", "[1, 2]", "\"Oslo\""])
def test_tool_arguments_that_are_no_json_object_are_invalid_output(provider_simulator: Any, arguments: str) -> None:
    reply = json.loads(json.dumps(OPENAI_CALL))
    reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    provider_simulator.script([Raw(200, reply)], model="m")
    result = _send(provider_simulator, "openai", _ask({"role": "user", "content": "Oslo?"}, tools=[WEATHER]))
    assert isinstance(result, ProviderFailure) and result.kind is ErrorKind.INVALID_OUTPUT


# -- tool results sent back ---------------------------------------------------------------------------

SECOND = ToolCall("call_2", "get_time", {})
HISTORY = (
    {"role": "user", "content": "Weather and time in Oslo?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [OSLO.as_dict(), SECOND.as_dict()]},
    tool_result(OSLO, "12 C"),
    tool_result(SECOND, "clock broken", is_error=True),
)


def test_openai_tool_round_trip(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "openai", _ask(*HISTORY, tools=[WEATHER]))
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "error: clock broken"},
    ]


def test_anthropic_tool_round_trip(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "anthropic", _ask(*HISTORY, tools=[WEATHER]))
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}]},
        # every result of the turn in one user message, right after the calls
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "clock broken", "is_error": True}]},
    ]


def test_gemini_tool_round_trip(provider_simulator: Any) -> None:
    body = _sent(provider_simulator, "gemini", _ask(*HISTORY, tools=[WEATHER]))
    assert body["contents"][1:] == [
        {"role": "model", "parts": [
            {"text": "Let me look."},
            # a call made elsewhere carries no signature: Gemini 3 is told to skip its check
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1"}, "thoughtSignature": "skip_thought_signature_validator"},
            {"functionCall": {"name": "get_time", "args": {}, "id": "call_2"}, "thoughtSignature": "skip_thought_signature_validator"}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "12 C"}, "id": "call_1"}},
            {"functionResponse": {"name": "get_time", "response": {"error": "clock broken"}, "id": "call_2"}}]},
    ]


def test_openai_shaped_tool_calls_in_a_history_are_read_too(provider_simulator: Any) -> None:
    """A history written in OpenAI's own shape (arguments as JSON text) goes to Anthropic as tool_use blocks."""
    openai_shaped = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}
    body = _sent(provider_simulator, "anthropic", _ask({"role": "user", "content": "Oslo?"}, openai_shaped,
                                                       {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}))
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}]


# -- "this model has no images / tools" ---------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "reply"), [
    ("openai", Raw(400, {"error": {"message": "Invalid content type. image_url is only supported by certain models.",
                                   "type": "invalid_request_error", "param": "messages.[0].content.[1].type", "code": None}})),
    ("openai", Raw(400, {"error": {"message": "tools is not supported in this model. For a list of supported models, refer to "
                                              "https://platform.openai.com/docs/guides/function-calling#models-supporting-function-calling."}})),
    ("openai", Raw(400, {"error": {"message": "registry.ollama.ai/library/gemma3:4b does not support tools"}})),
    ("openai", Raw(400, {"error": {"message": "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                                   "type": "BadRequestError", "code": 400}})),
    ("openai", Raw(500, {"error": {"code": 500, "message": "image input is not supported - hint: you may need to provide the mmproj",
                                   "type": "server_error"}})),
    ("gemini", Raw(400, {"error": {"code": 400, "message": "Function calling is not enabled for models/gemma-3-12b-it",
                                   "status": "INVALID_ARGUMENT"}})),
    ("gemini", Raw(400, {"error": {"code": 400, "message": "Json mode is not enabled for models/gemini-pro", "status": "INVALID_ARGUMENT"}})),
], ids=["openai-image", "openai-tools", "ollama-tools", "vllm-tool-parser", "llamacpp-mmproj-500", "gemini-tools", "gemini-json"])
def test_a_model_without_images_or_tools_is_unsupported(provider_simulator: Any, protocol: str, reply: Raw) -> None:
    provider_simulator.script([reply], model="m")
    result = _send(provider_simulator, protocol, _ask(USER_WITH_IMAGES, tools=[WEATHER]))
    assert isinstance(result, ProviderFailure), repr(result)
    assert result.kind is ErrorKind.UNSUPPORTED

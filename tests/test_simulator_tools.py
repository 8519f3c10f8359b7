"""Issue 25, the simulator: images, tools, tool results and JSON mode in each protocol's own shape
(multimodal_tools.md sections 1-3), per-model capabilities refused with each provider's real error, and
what each request carried recorded for tests. Driven with plain httpx, and with the official `openai` SDK
as a client when it is installed (the `anthropic` and `google-genai` SDKs are used the same way when present).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import httpx
import pytest

from nbrouter.testing import Capabilities, ProviderSimulator, Reply, ToolCall
from test_simulator import KEY, PROTOCOLS, post, sse

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
}
TIME = {"name": "get_time", "description": "The time in a zone", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG of grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = png()
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60  # the leading bytes are what tells a JPEG


@pytest.fixture
def client() -> Any:
    with httpx.Client(timeout=10.0) as c:
        yield c


# -- each protocol's request shapes ------------------------------------------------------------------


def tools_field(protocol: str, *tools: dict[str, Any]) -> dict[str, Any]:
    if protocol == "anthropic":
        return {"tools": [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in tools]}
    if protocol == "gemini":
        return {"tools": [{"functionDeclarations": [dict(t) for t in tools]}]}
    return {"tools": [{"type": "function", "function": dict(t)} for t in tools]}


def image_message(protocol: str, data: bytes, media_type: str = "image/png", text: str = "What is in this picture?") -> dict[str, Any]:
    """A user message with text and one inline image, as the body's message list (or Gemini contents)."""
    b64 = base64.b64encode(data).decode()
    if protocol == "anthropic":
        content = [{"type": "text", "text": text}, {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64}}]
        return {"messages": [{"role": "user", "content": content}]}
    if protocol == "gemini":
        return {"contents": [{"role": "user", "parts": [{"text": text}, {"inlineData": {"mimeType": media_type, "data": b64}}]}]}
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{b64}"}}]
    return {"messages": [{"role": "user", "content": content}]}


def tool_calls_of(protocol: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each tool call in a non-stream reply, parsed as each protocol's client does."""
    if protocol == "anthropic":
        return [(b["name"], b["input"]) for b in body["content"] if b["type"] == "tool_use"]
    if protocol == "gemini":
        parts = body["candidates"][0]["content"]["parts"]
        return [(p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p]
    calls = body["choices"][0]["message"].get("tool_calls") or []
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def streamed_tool_calls(protocol: str, text: str) -> tuple[str, list[tuple[str, str, Any]], str | None]:
    """(text, [(id, name, arguments)], finish reason) of a stream, accumulated as each SDK does."""
    events = sse(text)
    said, calls, finish = "", {}, None
    for name, data in events:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        if protocol == "anthropic":
            if name == "content_block_start" and chunk["content_block"]["type"] == "tool_use":
                block = chunk["content_block"]
                calls[chunk["index"]] = [block["id"], block["name"], ""]
            elif name == "content_block_delta" and chunk["delta"]["type"] == "input_json_delta":
                calls[chunk["index"]][2] += chunk["delta"]["partial_json"]
            elif name == "content_block_delta":
                said += chunk["delta"]["text"]
            elif name == "message_delta":
                finish = chunk["delta"]["stop_reason"]
        elif protocol == "gemini":
            candidate = chunk["candidates"][0]
            for part in candidate["content"]["parts"]:
                if "functionCall" in part:
                    calls[len(calls)] = [part["functionCall"].get("id"), part["functionCall"]["name"], part["functionCall"]["args"]]
                else:
                    said += part.get("text", "")
            finish = candidate.get("finishReason", finish)
        else:
            for choice in chunk["choices"]:
                delta = choice["delta"]
                said += delta.get("content") or ""
                for tc in delta.get("tool_calls") or []:
                    entry = calls.setdefault(tc["index"], [None, None, ""])
                    entry[0] = tc.get("id") or entry[0]
                    entry[1] = (tc.get("function") or {}).get("name") or entry[1]
                    entry[2] += (tc.get("function") or {}).get("arguments") or ""
                finish = choice.get("finish_reason") or finish
    out = [(i, n, a if protocol == "gemini" else json.loads(a)) for i, n, a in (calls[k] for k in sorted(calls))]
    return said, out, finish


FINISH = {"openai": "tool_calls", "openrouter": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}


# -- tool calls in replies ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_scripted_tool_call_comes_back_in_the_protocols_shape(sim, client, protocol) -> None:
    sim.script([Reply(tool_calls=[ToolCall("get_weather", {"city": "Oslo", "unit": "C"})])], model="m-1")
    r = post(client, sim, protocol, **tools_field(protocol, WEATHER))
    assert r.status_code == 200
    body = r.json()
    assert tool_calls_of(protocol, body) == [("get_weather", {"city": "Oslo", "unit": "C"})]
    if protocol == "anthropic":
        assert body["stop_reason"] == "tool_use" and body["content"][0]["id"].startswith("toolu_")
        assert [b["type"] for b in body["content"]] == ["tool_use"]  # no text unless scripted
    elif protocol == "gemini":
        candidate = body["candidates"][0]
        assert candidate["finishReason"] == "STOP" and "id" not in candidate["content"]["parts"][0]["functionCall"]
    else:
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        call = choice["message"]["tool_calls"][0]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["arguments"] == '{"city":"Oslo","unit":"C"}'  # a JSON string, not an object
    assert sim.requests[-1].tools == ("get_weather",)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_streamed_tool_calls_reassemble_as_each_sdk_accumulates_them(sim, client, protocol) -> None:
    calls = [ToolCall("get_weather", {"city": "Trondheim", "unit": "C", "days": 3}, id="c-1"), ToolCall("get_time", {"zone": "Europe/Oslo"}, id="c-2")]
    sim.script([Reply("Let me look.", tool_calls=calls)], model="m-1")
    r = post(client, sim, protocol, stream=True, **tools_field(protocol, WEATHER, TIME))
    said, got, finish = streamed_tool_calls(protocol, r.text)
    assert said == "Let me look."
    assert got == [("c-1", "get_weather", {"city": "Trondheim", "unit": "C", "days": 3}), ("c-2", "get_time", {"zone": "Europe/Oslo"})]
    assert finish == FINISH[protocol]
    if protocol == "openai":
        assert r.text.endswith("data: [DONE]\n\n")
        # the arguments arrive in several pieces, as a real stream sends them
        assert sum('"arguments":"' in line for line in r.text.split("\n")) > 4
    if protocol == "anthropic":
        names = [name for name, _ in sse(r.text)]
        assert names.count("content_block_start") == 3 == names.count("content_block_stop")
        assert names[-2:] == ["message_delta", "message_stop"]


def test_arguments_given_as_a_string_are_sent_exactly_even_when_not_json(sim, client) -> None:
    sim.script([Reply(tool_calls=[ToolCall("get_weather", '{"city": "Os')])], model="m-1", repeat_last=True)
    openai = post(client, sim, "openai", **tools_field("openai", WEATHER)).json()
    assert openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Os'
    anthropic = post(client, sim, "anthropic", stream=True, **tools_field("anthropic", WEATHER)).text
    partial = "".join(json.loads(d)["delta"]["partial_json"] for n, d in sse(anthropic) if n == "content_block_delta")
    assert partial == '{"city": "Os'


# -- tool_choice and JSON mode answered as asked ------------------------------------------------------

FORCED = [
    ("openai", {"tool_choice": "required"}, "get_weather"),
    ("openai", {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "get_time"),
    ("openai", {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}}, "get_weather"),
    ("openrouter", {"tool_choice": "required"}, "get_weather"),
    ("anthropic", {"tool_choice": {"type": "any"}}, "get_weather"),
    ("anthropic", {"tool_choice": {"type": "tool", "name": "get_time"}}, "get_time"),
    ("gemini", {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}, "get_weather"),
    ("gemini", {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}}, "get_time"),
    ("gemini", {"tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["get_time", "get_weather"]}}}, "get_time"),
]


@pytest.mark.parametrize("protocol,choice,name", FORCED)
def test_a_tool_choice_that_requires_a_call_is_answered_with_one_that_fits_the_schema(sim, client, protocol, choice, name) -> None:
    r = post(client, sim, protocol, **tools_field(protocol, WEATHER, TIME), **choice)
    [(called, arguments)] = tool_calls_of(protocol, r.json())
    assert called == name
    if name == "get_weather":
        assert arguments == {"city": "example", "unit": "C"}  # the required properties, the first enum value
    else:
        assert arguments == {"zone": "example"}
    assert sim.requests[-1].tool_choice == ("required" if name == "get_weather" or "allowed_function_names" in str(choice) else name)


@pytest.mark.parametrize("protocol,choice", [("openai", {}), ("openai", {"tool_choice": "auto"}), ("openai", {"tool_choice": "none"}),
                                             ("anthropic", {"tool_choice": {"type": "auto"}}),
                                             ("gemini", {"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}})])
def test_tools_without_a_required_call_get_a_text_answer(sim, client, protocol, choice) -> None:
    r = post(client, sim, protocol, **tools_field(protocol, WEATHER), **choice)
    assert tool_calls_of(protocol, r.json()) == []
    assert sim.requests[-1].tools == ("get_weather",)


def test_forced_tool_calls_stream_too(sim, client) -> None:
    r = post(client, sim, "anthropic", stream=True, tool_choice={"type": "any"}, **tools_field("anthropic", WEATHER))
    said, got, finish = streamed_tool_calls("anthropic", r.text)
    assert said == "" and [(n, a) for _, n, a in got] == [("get_weather", {"city": "example", "unit": "C"})] and finish == "tool_use"


SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "rating": {"$ref": "#/$defs/rating"},
    },
    "required": ["title", "year", "tags", "rating"],
    "$defs": {"rating": {"type": "number"}},
}


def answer_text(protocol: str, body: dict[str, Any]) -> str:
    if protocol == "anthropic":
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")
    if protocol == "gemini":
        return "".join(p.get("text", "") for p in body["candidates"][0]["content"]["parts"])
    return str(body["choices"][0]["message"]["content"])


JSON_MODES = [
    ("openai", {"response_format": {"type": "json_schema", "json_schema": {"name": "film", "schema": SCHEMA, "strict": True}}}, "json_schema"),
    ("openrouter", {"response_format": {"type": "json_schema", "json_schema": {"name": "film", "schema": SCHEMA}}}, "json_schema"),
    ("anthropic", {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "json_schema"),
    ("gemini", {"generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}}, "json_schema"),
]


@pytest.mark.parametrize("protocol,field,mode", JSON_MODES)
def test_json_mode_with_a_schema_is_answered_with_json_that_fits_it(sim, client, protocol, field, mode) -> None:
    answer = json.loads(answer_text(protocol, post(client, sim, protocol, **field).json()))
    assert answer == {"title": "example", "year": 1, "tags": ["example"], "rating": 1.5}
    assert sim.requests[-1].json_mode == mode


def test_gemini_openapi_schema_types_and_json_object_modes(sim, client) -> None:
    schema = {"type": "OBJECT", "properties": {"ok": {"type": "BOOLEAN"}, "n": {"type": "INTEGER"}}, "required": ["ok", "n"]}
    body = post(client, sim, "gemini", generationConfig={"responseMimeType": "application/json", "responseSchema": schema}).json()
    assert json.loads(answer_text("gemini", body)) == {"ok": True, "n": 1}
    plain = post(client, sim, "gemini", generationConfig={"responseMimeType": "application/json"}).json()
    assert json.loads(answer_text("gemini", plain)) == {"reply": "Simulated reply from m-1: Hello simulator"}
    assert sim.requests[-1].json_mode == "json_object"
    openai = post(client, sim, "openai", text="Answer in json please", response_format={"type": "json_object"}).json()
    assert json.loads(answer_text("openai", openai)) == {"reply": "Simulated reply from m-1: Answer in json please"}


def test_openai_json_object_mode_needs_the_word_json_in_the_messages(sim, client) -> None:
    r = post(client, sim, "openai", text="Answer briefly", response_format={"type": "json_object"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
        "type": "invalid_request_error", "param": "messages", "code": None,
    }


def test_scripted_text_wins_over_json_mode_and_tool_choice(sim, client) -> None:
    sim.script([Reply("not json at all")], model="m-1", repeat_last=True)
    r = post(client, sim, "openai", text="json", response_format={"type": "json_object"}, tool_choice="required", **tools_field("openai", WEATHER))
    assert answer_text("openai", r.json()) == "not json at all"  # a provider that broke its promise, as scripted


# -- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inline_images_are_accepted_and_recorded_with_their_bytes(sim, client, protocol) -> None:
    r = post(client, sim, protocol, **image_message(protocol, PNG))
    assert r.status_code == 200
    seen = sim.requests[-1]
    assert (seen.images, seen.image_bytes, seen.image_types) == (1, len(PNG), ("image/png",))
    assert r.json()  # an ordinary reply
    assert PNG.hex() not in repr(seen.images)


def test_images_by_reference_count_without_bytes(sim, client) -> None:
    content = [{"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]
    post(client, sim, "openai", messages=[{"role": "user", "content": content}])
    assert (sim.requests[-1].images, sim.requests[-1].image_bytes, sim.requests[-1].image_types) == (1, 0, ("url",))
    source = {"type": "url", "url": "https://example.com/cat.png"}
    post(client, sim, "anthropic", messages=[{"role": "user", "content": [{"type": "image", "source": source}]}])
    assert (sim.requests[-1].images, sim.requests[-1].image_bytes) == (1, 0)
    part = {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}}
    post(client, sim, "gemini", contents=[{"role": "user", "parts": [{"text": "x"}, part]}])
    assert (sim.requests[-1].images, sim.requests[-1].image_types) == (1, ("image/jpeg",))


REFUSED_IMAGES = {
    "openai": (400, {"error": {"message": "Invalid content type. image_url is only supported by certain models.",
                               "type": "invalid_request_error", "param": "messages.[0].content.[1].type", "code": None}}),
    "openrouter": (404, {"error": {"message": "No endpoints found that support image input", "code": 404}}),
    "gemini": (400, {"error": {"code": 400, "message": "Image input modality is not enabled for models/m-1", "status": "INVALID_ARGUMENT"}}),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_without_vision_refuses_images_with_the_providers_error(sim, client, protocol) -> None:
    sim.capabilities("m-1", vision=False)
    r = post(client, sim, protocol, **image_message(protocol, PNG))
    if protocol == "anthropic":
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith("messages.0.content.1: ")
    else:
        assert (r.status_code, r.json()) == REFUSED_IMAGES[protocol]
    assert post(client, sim, protocol).status_code == 200  # text still goes through
    assert sim.requests[-2].images == 1 and sim.requests[-2].status == r.status_code


TOOLS_REFUSED = {
    "openai": (400, "tools is not supported in this model."),
    "openrouter": (404, "No endpoints found that support tool use"),
    "anthropic": (400, "tools: This model does not support tool use."),
    "gemini": (400, "Function calling is not enabled for models/m-1"),
}
JSON_REFUSED = {
    "openai": (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."),
    "openrouter": (404, "No endpoints found that can handle the requested parameters."),
    "anthropic": (400, "output_config.format: Extra inputs are not permitted"),
    "gemini": (400, "Json mode is not enabled for models/m-1"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_without_tools_or_json_schema_refuses_them_with_the_providers_error(sim, client, protocol) -> None:
    assert sim.capabilities("m-1", tools=False, json_schema=False) == Capabilities(vision=True, tools=False, json_schema=False)
    r = post(client, sim, protocol, **tools_field(protocol, WEATHER))
    status, message = TOOLS_REFUSED[protocol]
    assert r.status_code == status and r.json()["error"]["message"].startswith(message)
    r = post(client, sim, protocol, **next(f for p, f, _ in JSON_MODES if p == protocol))
    status, message = JSON_REFUSED[protocol]
    assert r.status_code == status and r.json()["error"]["message"].startswith(message)
    if protocol == "openai":
        assert r.json()["error"]["param"] == "response_format"


def test_openai_json_object_refusal_names_its_type(sim, client) -> None:
    sim.capabilities("m-1", json_schema=False)
    r = post(client, sim, "openai", text="json", response_format={"type": "json_object"})
    assert r.json()["error"]["message"] == "Invalid parameter: 'response_format' of type 'json_object' is not supported with this model."


def test_anthropic_refuses_an_image_whose_bytes_are_not_its_declared_type(sim, client) -> None:
    r = post(client, sim, "anthropic", **image_message("anthropic", JPEG, "image/png"))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "messages.0.content.1.image.source.base64.data: Image format image/png not supported"
    r = post(client, sim, "anthropic", **image_message("anthropic", PNG, "image/bmp"))
    assert r.json()["error"]["message"].startswith("messages.0.content.1.image.source.base64.media_type: Input should be 'image/jpeg'")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_image_data_that_is_not_base64_is_a_400(sim, client, protocol) -> None:
    body = image_message(protocol, PNG)
    text = json.dumps(body).replace(base64.b64encode(PNG).decode(), "not*base64!")
    r = post(client, sim, protocol, **json.loads(text))
    assert r.status_code == 400
    if protocol == "gemini":
        assert r.json()["error"]["message"].startswith("Invalid value at 'contents[0].parts[1].inline_data.data' (TYPE_BYTES)")


# -- tool results --------------------------------------------------------------------------------------


def test_tool_results_are_accepted_in_each_protocol_and_recorded(sim, client) -> None:
    openai = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees"},
    ]
    assert post(client, sim, "openai", messages=openai, **tools_field("openai", WEATHER)).status_code == 200
    assert sim.requests[-1].tool_results == 1
    anthropic = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 degrees"}]},
    ]
    assert post(client, sim, "anthropic", messages=anthropic, **tools_field("anthropic", WEATHER)).status_code == 200
    assert sim.requests[-1].tool_results == 1
    gemini = [
        {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "12 degrees"}}}]},
    ]
    assert post(client, sim, "gemini", contents=gemini, **tools_field("gemini", WEATHER)).status_code == 200
    assert sim.requests[-1].tool_results == 1


def test_a_tool_call_without_its_result_is_refused_as_the_provider_does(sim, client) -> None:
    openai = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "user", "content": "well?"},
    ]
    r = post(client, sim, "openai", messages=openai)
    assert r.status_code == 400 and r.json()["error"]["message"].endswith("did not have response messages: call_1")
    assert r.json()["error"]["param"] == "messages.[2].role"
    anthropic = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": "well?"},
    ]
    r = post(client, sim, "anthropic", messages=anthropic)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1.")


def test_tool_results_count_towards_the_prompts_size(sim, client) -> None:
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "y" * 400},
    ]
    usage = post(client, sim, "openai", messages=messages).json()["usage"]
    assert usage["prompt_tokens"] == (1 + 400) // 4 + 1


# -- listings and config -----------------------------------------------------------------------------


def test_model_listings_say_what_each_model_takes(sim, client) -> None:
    sim.capabilities("text-only", vision=False, tools=False)
    sim.capabilities("seeing", json_schema=True)
    anthropic = client.get(sim.anthropic_url + "/v1/models", headers={"anthropic-version": "2023-06-01", "x-api-key": KEY}).json()
    caps = {m["id"]: m["capabilities"] for m in anthropic["data"]}
    assert caps["text-only"]["image_input"] == {"supported": False} and caps["seeing"]["image_input"] == {"supported": True}
    openrouter = client.get(sim.openrouter_url + "/models").json()
    entries = {m["id"]: m for m in openrouter["data"]}
    assert entries["text-only"]["architecture"]["input_modalities"] == ["text"]
    assert "tools" not in entries["text-only"]["supported_parameters"] and "tools" in entries["seeing"]["supported_parameters"]


def test_capabilities_and_tool_calls_from_a_config(client) -> None:
    config = {
        "capabilities": {"blind": {"vision": False}},
        "scripts": [{"model": "m-1", "behaviours": [{"type": "Reply", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Bergen"}}]}]}],
    }
    with ProviderSimulator() as sim:
        assert client.post(sim.url + "/_sim/config", json=config).status_code == 200
        assert tool_calls_of("openai", post(client, sim, "openai").json()) == [("get_weather", {"city": "Bergen"})]
        assert post(client, sim, "openai", model="blind", **image_message("openai", PNG)).status_code == 400
        bad = client.post(sim.url + "/_sim/config", json={"capabilities": {"x": {"audio": True}}})
        assert bad.status_code == 400


# -- the official SDKs as clients ------------------------------------------------------------------------


def test_the_openai_sdk_parses_tool_calls_json_mode_images_and_refusals(sim) -> None:
    openai = pytest.importorskip("openai", reason="the openai SDK is not installed in this venv")
    sdk = openai.OpenAI(base_url=sim.openai_url, api_key=KEY, max_retries=0)
    tools = tools_field("openai", WEATHER)["tools"]
    forced = sdk.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "Oslo?"}], tools=tools, tool_choice="required")
    call = forced.choices[0].message.tool_calls[0]
    assert forced.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "C"}
    sim.script([Reply("Checking.", tool_calls=[ToolCall("get_weather", {"city": "Oslo", "unit": "C"})])], model="m-1")
    stream = sdk.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "Oslo?"}], tools=tools, stream=True)
    pieces: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names[tc.index] = names.get(tc.index) or (tc.function.name or "")
            pieces[tc.index] = pieces.get(tc.index, "") + (tc.function.arguments or "")
    assert names == {0: "get_weather"} and json.loads(pieces[0]) == {"city": "Oslo", "unit": "C"}
    answer = sdk.chat.completions.create(model="m-1", messages=[{"role": "user", "content": "a json please"}], response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content or "") == {"reply": "Simulated reply from m-1: a json please"}
    picture = sdk.chat.completions.create(model="m-1", messages=image_message("openai", PNG)["messages"])
    assert picture.choices[0].message.content and sim.requests[-1].image_bytes == len(PNG)
    sim.capabilities("m-1", vision=False)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="m-1", messages=image_message("openai", PNG)["messages"])
    assert refused.value.param == "messages.[0].content.[1].type"

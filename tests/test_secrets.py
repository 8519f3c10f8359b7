"""No key, nor any part of one, in what the wire side hands back: request ids, failure messages, excerpts of
malformed replies and stream events, exception reprs and tracebacks. Keys here are shaped like no known
provider's, so only the exact-value net (`remember_secret`) can catch them; every reply comes over
loopback HTTP from the simulator or the raw server.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any

import pytest

from nbrouter._core import ErrorKind, ProviderFailure, remember_secret, scrub
from nbrouter._core.secrets import SCRUB_WINDOW, excerpt
from nbrouter.providers import ChatRequest, Completion, Endpoint, Sender, get_protocol
from nbrouter.testing import Raw, RawResponse, Reply, http_response

#: shaped like no known key (no sk-, AIza, gsk_ ... prefix): only its exact value can be scrubbed
KEY = "zq9Xk2mP4vR8wT1yLc7N"


def fragments(key: str) -> list[str]:
    """Every 6-character piece of the key: none may survive anywhere."""
    return [key[i : i + 6] for i in range(len(key) - 5)]


def assert_clean(text: str, key: str = KEY) -> None:
    for piece in fragments(key):
        assert piece not in text, f"{piece!r} of the key in {text!r}"


def assert_failure_clean(failure: ProviderFailure, key: str = KEY) -> None:
    rendered = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__))
    for text in (str(failure), repr(failure), failure.message, failure.request_id or "", failure.partial_text, rendered):
        assert_clean(text, key)
    assert failure.__context__ is None and failure.__cause__ is None


def endpoint(base: str, protocol: str, key: str = KEY, key_env: str | None = None) -> Endpoint:
    return Endpoint("p", protocol, base, api_key=key, key_env=key_env)


def base_url(sim: Any, protocol: str) -> str:
    return {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}[protocol]


def send(ep: Endpoint, *, stream: bool = False) -> Completion | ProviderFailure:
    async def go() -> Completion | ProviderFailure:
        sender = Sender()
        try:
            return await sender.send(get_protocol(ep.protocol), ep, ChatRequest("m", [{"role": "user", "content": "hi"}], stream=stream),
                                     timeout_s=5)
        except ProviderFailure as failure:
            return failure
        finally:
            await sender.aclose()

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def _remembered() -> None:
    remember_secret(KEY)


# -- request ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol, header, stream", [("openai", "x-request-id", False), ("openai", "x-request-id", True),
                                                      ("anthropic", "request-id", False), ("anthropic", "request-id", True),
                                                      ("gemini", "x-request-id", False)])
def test_a_request_id_header_echoing_the_key_is_scrubbed(provider_simulator, protocol, header, stream):
    provider_simulator.script([Reply("ok", headers={header: f"req-{KEY}-echo"})], model="m")
    completion = send(endpoint(base_url(provider_simulator, protocol), protocol), stream=stream)
    assert isinstance(completion, Completion), repr(completion)
    assert completion.request_id is not None and completion.request_id.startswith("req-")
    assert_clean(completion.request_id)


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_gemini_response_id_echoing_the_key_is_scrubbed(provider_simulator, stream):
    body = {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}], "responseId": f"{KEY}"}
    provider_simulator.script([Raw(200, sse=[(None, json.dumps(body))]) if stream else Raw(200, body)], model="m")
    completion = send(endpoint(provider_simulator.gemini_url, "gemini"), stream=stream)
    assert isinstance(completion, Completion) and completion.request_id == "[redacted]"


def test_a_request_id_is_capped_and_printable(provider_simulator):
    provider_simulator.script([Reply("ok", headers={"x-request-id": "r" * 5000})], model="m")
    completion = send(endpoint(provider_simulator.openai_url, "openai"))
    assert isinstance(completion, Completion) and completion.request_id == "r" * 128
    body = {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}], "responseId": ["not", "a", "string"]}
    provider_simulator.script([Raw(200, body)], model="m")
    completion = send(endpoint(provider_simulator.gemini_url, "gemini"))
    assert isinstance(completion, Completion) and completion.request_id is None


def test_an_error_body_request_id_echoing_the_key_is_scrubbed(provider_simulator):
    body = {"type": "error", "error": {"type": "api_error", "message": "boom"}, "request_id": f"req_{KEY}"}
    provider_simulator.script([Raw(500, body)], model="m")
    failure = send(endpoint(provider_simulator.anthropic_url, "anthropic"))
    assert isinstance(failure, ProviderFailure) and failure.request_id is not None
    assert_failure_clean(failure)


# -- scrubbed first, cut after ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 150, 190, 195, 280, 295, 298, 490, 495])
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_a_key_across_the_cut_of_an_error_body_leaves_no_piece(provider_simulator, protocol, offset):
    provider_simulator.script([Raw(502, "x" * offset + KEY + " upstream", content_type="text/plain")], model="m")
    failure = send(endpoint(base_url(provider_simulator, protocol), protocol))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.SERVER_ERROR
    assert_failure_clean(failure)


@pytest.mark.parametrize("offset", [0, 100, 180, 195, 198])
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_a_key_across_the_cut_of_a_malformed_200_leaves_no_piece(provider_simulator, protocol, offset):
    provider_simulator.script([Raw(200, "{" + "x" * offset + KEY, content_type="application/json")], model="m")
    failure = send(endpoint(base_url(provider_simulator, protocol), protocol))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.MALFORMED_RESPONSE
    assert_failure_clean(failure)


@pytest.mark.parametrize("offset", [0, 60, 110, 115, 118])
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_a_key_across_the_cut_of_a_stream_chunk_leaves_no_piece(provider_simulator, protocol, offset):
    provider_simulator.script([Raw(200, sse=[("content_block_delta" if protocol == "anthropic" else None, "{" + "x" * offset + KEY)])], model="m")
    failure = send(endpoint(base_url(provider_simulator, protocol), protocol), stream=True)
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.MALFORMED_RESPONSE
    assert_failure_clean(failure)


def test_an_exception_message_quoting_the_key_is_scrubbed(raw_server):
    # a header line the HTTP parser rejects, quoting the key in the error aiohttp raises
    raw_server.script(RawResponse([b"HTTP/1.1 200 OK\r\nx-echo: " + KEY.encode() + b"x" * 9000 + b"\r\ncontent-length: 2\r\n\r\n{}"]))
    failure = send(endpoint(raw_server.url + "/v1", "openai"))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.MALFORMED_RESPONSE
    assert_failure_clean(failure)


# -- unusable keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_surrounding_whitespace_is_stripped_from_a_key(provider_simulator, protocol):
    provider_simulator.script([Reply("ok")], model="m")
    completion = send(endpoint(base_url(provider_simulator, protocol), protocol, key=f"  {KEY}\n"))
    assert isinstance(completion, Completion), repr(completion)
    assert provider_simulator.requests[-1].key == KEY


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "é", "\u2028", "\t"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_a_key_with_a_character_no_header_can_hold_is_auth_naming_the_variable(provider_simulator, protocol, bad):
    key = KEY[:8] + bad + KEY[8:]
    failure = send(endpoint(base_url(provider_simulator, protocol), protocol, key=key, key_env="MY_PROVIDER_KEY"))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.AUTH
    assert "MY_PROVIDER_KEY" in failure.message and "character 9" in failure.message
    assert_failure_clean(failure, key)
    assert_failure_clean(failure, KEY)
    assert provider_simulator.requests == []  # nothing went on the wire


def test_a_key_of_whitespace_only_is_auth(provider_simulator):
    failure = send(endpoint(provider_simulator.openai_url, "openai", key=" \n ", key_env="EMPTY_KEY"))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.AUTH and "EMPTY_KEY" in failure.message


def test_an_endpoint_repr_holds_no_key() -> None:
    assert_clean(repr(endpoint("http://127.0.0.1:9/v1", "openai")))


# -- the scrubber itself -----------------------------------------------------------------------------


def test_scrub_removes_the_exact_value_and_its_stripped_form() -> None:
    remember_secret("  custom-value-4471\n")
    assert scrub("a custom-value-4471 b") == "a [redacted] b"


@pytest.mark.parametrize("shape", ["sk-proj-abcdef0123456789", "AIzaSyA1234567890abcdefghijklmnop", "gsk_0123456789abcdef",
                                   "hf_abcdefghijklmnopqrstuvwxyz", "Bearer eyJhbGciOiJIUzI1NiJ9.abc", "x-api-key: qwertyuiop",
                                   "https://h/v1?key=whatever"])
def test_scrub_removes_known_shapes_never_seen_before(shape) -> None:
    assert "[redacted]" in scrub(f"before {shape} after")


def test_excerpt_scrubs_before_it_cuts() -> None:
    text = "x" * 95 + KEY + "y" * 100
    assert excerpt(text, 100) == "x" * 95 + "[reda"
    assert_clean(excerpt(text, 100))
    # a text longer than the scrub window is cut to it first, so scrubbing costs the same whatever came
    assert len(excerpt("z" * (SCRUB_WINDOW * 3), 50)) == 50


def test_json_escapes_do_not_hide_a_key_from_the_failure_message(provider_simulator):
    # the key inside a JSON string, as a proxy quoting the request would put it
    provider_simulator.script([Raw(401, json.dumps({"error": {"message": f"key {KEY} is not valid"}}))], model="m")
    failure = send(endpoint(provider_simulator.openai_url, "openai"))
    assert isinstance(failure, ProviderFailure) and failure.kind is ErrorKind.AUTH
    assert_failure_clean(failure)


def test_http_response_helper_builds_what_it_says() -> None:
    assert http_response(201, b"{}", [("x-a", "1")]).startswith(b"HTTP/1.1 201 X\r\ncontent-length: 2\r\n")


@pytest.mark.parametrize("field", ["type", "code", "status"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_a_key_across_the_cut_of_an_error_field_leaves_no_piece(provider_simulator, protocol, field):
    value = "x" * 95 + KEY  # the short fields (type, code, status) are cut near 100-200 characters
    long_value = "y" * 190 + KEY
    if protocol == "anthropic":
        body: Any = {"type": "error", "error": {"type": long_value if field == "type" else "api_error", "message": "boom"}}
    elif protocol == "gemini":
        body = {"error": {"code": 500, "message": "boom", "status": value}}
    else:
        body = {"error": {"message": "boom", "type": long_value if field == "type" else None, "code": long_value if field == "code" else None}}
    provider_simulator.script([Raw(500, body)], model="m")
    failure = send(endpoint(base_url(provider_simulator, protocol), protocol))
    assert isinstance(failure, ProviderFailure)
    assert_failure_clean(failure)

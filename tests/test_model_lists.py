"""Issue 25, capabilities from the provider's model list: after the configuration and before the bundled
table, what OpenRouter's and Anthropic's lists say a model takes (and Gemini's its context window) keeps a
call that needs it from a target that cannot take it. Over loopback to the simulator (and a RawServer for
lists the simulator would never send)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from conftest import SIM_KEY
from nbrouter.providers.models import ListedModel, parse_model_list
from nbrouter.router.decide.capabilities import LIST_RETRY_S, window_floor
from nbrouter.testing import ManualClock, RawResponse, RawServer, http_response

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")


def lists_asked(sim: Any) -> list[str]:
    return [r.path for r in sim.requests if r.path.endswith("/models")]


def openrouter(url: str, models: tuple[str, ...] = ("m1", "m2")) -> dict[str, Any]:
    """A provider named openrouter (its preset) at `url`, and a combo `c` over its models in order."""
    return {"providers": {"openrouter": {"base_url": url, "api_key_env": "SIM_KEY"}},
            "combos": {"c": {"targets": [f"openrouter/{m}" for m in models]}}}


@pytest.fixture
def raw() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


def chat_reply(model: str) -> RawResponse:
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "seen"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    return RawResponse([http_response(200, json.dumps(body).encode(), [("content-type", "application/json")])])


def test_a_target_the_openrouter_list_says_has_no_vision_is_skipped_before_sending(sim: Any, make_router: Any) -> None:
    sim.capabilities("m1", vision=False)
    sim.capabilities("m2", vision=True)
    router = make_router(openrouter(sim.openrouter_url), persist=False)
    result = router.complete("c", "What is this?", images=[PNG])
    assert result.served_by == "openrouter#default/m2"
    first = result.attempts[0]
    assert (first.candidate, first.action.value) == ("openrouter#default/m1", "skipped")
    assert first.message == "no vision (model list of openrouter)"
    assert lists_asked(sim) == ["/openrouter/v1/models"]
    assert [r.model for r in sim.requests if r.model] == ["m2"]  # nothing went to m1
    listing = [r for r in sim.requests if r.path.endswith("/models")][0]
    assert listing.key == SIM_KEY  # the key went as the protocol sends it

    # asked once for the session: the next call reads what it has, and explain shows it
    router.complete("c", "And this?", images=[PNG])
    assert lists_asked(sim) == ["/openrouter/v1/models"]
    assert router.explain("c", "x", images=[PNG]).skipped[0].reason == "no vision (model list of openrouter)"


def test_tools_and_json_schema_come_from_the_openrouter_list_and_config_wins(sim: Any, make_router: Any) -> None:
    sim.capabilities("m1", tools=False, json_schema=False)
    sim.capabilities("m2")
    cfg = openrouter(sim.openrouter_url)
    router = make_router(cfg, persist=False)
    result = router.complete("c", "Call it.", tools=[{"name": "lookup"}])
    assert result.attempts[0].message == "no tools (model list of openrouter)"
    assert router.explain("c", "x", response_format="json").skipped[0].reason == "no JSON schema (model list of openrouter)"

    cfg["providers"]["openrouter"]["capabilities"] = {"m1": {"tools": True}}
    router = make_router(cfg, persist=False)
    assert not router.explain("c", "x", tools=[{"name": "lookup"}]).skipped  # nothing fetched yet: unknown
    router.complete("c", "Look.", images=[PNG])  # the list is had now (m1 takes images)
    assert lists_asked(sim) == ["/openrouter/v1/models", "/openrouter/v1/models"]
    assert not router.explain("c", "x", tools=[{"name": "lookup"}]).skipped  # the config said it first


def test_a_target_the_anthropic_list_says_has_no_vision_is_skipped_before_sending(sim: Any, make_router: Any) -> None:
    sim.capabilities("m1", vision=False)
    sim.capabilities("m2")
    cfg = {"providers": {"anthropic": {"base_url": sim.anthropic_url, "api_key_env": "SIM_KEY"}},
           "combos": {"c": {"targets": ["anthropic/m1", "anthropic/m2"]}}}
    router = make_router(cfg, persist=False)
    result = router.complete("c", "What is this?", images=[PNG])
    assert result.served_by == "anthropic#default/m2"
    assert result.attempts[0].message == "no vision (model list of anthropic)"
    assert [r.model for r in sim.requests if r.model] == ["m2"]


def test_text_only_calls_fetch_no_list(sim: Any, make_router: Any) -> None:
    sim.capabilities("m1", vision=False)
    router = make_router(openrouter(sim.openrouter_url), persist=False)
    assert router.complete("c", "Just text.").served_by == "openrouter#default/m1"
    router.explain("c", "x", images=[PNG])  # deciding alone sends nothing either
    assert lists_asked(sim) == []
    assert len(sim.requests) == 1


@pytest.mark.parametrize("answer", [
    http_response(500, b'{"error": {"message": "down"}}'),
    http_response(200, b'{"data": "not a list"}'),
    http_response(200, b'{"data": [{"id": "m1", "architecture": "text", "supported_parameters": 7}, 5, null]}'),
    http_response(200, b"<html>not json"),
], ids=["error", "wrong-shape", "malformed-entry", "not-json"])
def test_a_list_that_errors_or_is_malformed_leaves_it_unknown_and_the_target_is_tried(
        make_router: Any, raw: RawServer, answer: bytes) -> None:
    clock = ManualClock()
    raw.script(RawResponse([answer]), chat_reply("m1"))
    router = make_router(openrouter(raw.url, ("m1",)), persist=False, clock=clock)
    result = router.complete("c", "What is this?", images=[PNG])
    assert result.served_by == "openrouter#default/m1"
    heads = [r.split(b"\r\n", 1)[0] for r in raw.requests]
    assert heads == [b"GET /models HTTP/1.1", b"POST /chat/completions HTTP/1.1"]


def test_a_failed_list_is_not_asked_for_again_for_a_while(make_router: Any, raw: RawServer) -> None:
    clock = ManualClock()
    raw.script(RawResponse([http_response(503, b"")]), chat_reply("m1"), chat_reply("m1"),
               RawResponse([http_response(503, b"")]), chat_reply("m1"))
    router = make_router(openrouter(raw.url, ("m1",)), persist=False, clock=clock)
    router.complete("c", "one", images=[PNG])
    clock.advance(LIST_RETRY_S - 1)
    router.complete("c", "two", images=[PNG])
    assert [r.startswith(b"GET") for r in raw.requests] == [True, False, False]
    clock.advance(1)
    router.complete("c", "three", images=[PNG])
    assert [r.startswith(b"GET") for r in raw.requests] == [True, False, False, True, False]


def test_the_lists_are_parsed_only_where_they_say_it() -> None:
    openrouter_body = {"data": [
        {"id": "a/vision", "architecture": {"input_modalities": ["text", "image"]},
         "supported_parameters": ["tools", "structured_outputs"], "context_length": 128000},
        {"id": "a/text", "architecture": {"input_modalities": ["text"]}, "supported_parameters": ["temperature"]},
        {"id": "a/silent", "context_length": -3},
        {"id": 12}, "junk",
    ]}
    assert parse_model_list("openrouter", openrouter_body) == {
        "a/vision": ListedModel(vision=True, tools=True, json_schema=True, context_window=128000),
        "a/text": ListedModel(vision=False, tools=False, json_schema=False),
        "a/silent": ListedModel(),
    }
    anthropic_body = {"data": [{"id": "claude-x", "max_input_tokens": 200000, "capabilities": {
        "image_input": {"supported": False}, "structured_outputs": {"supported": True}}}, {"id": "claude-y", "capabilities": []}]}
    assert parse_model_list("anthropic", anthropic_body) == {
        "claude-x": ListedModel(vision=False, json_schema=True, context_window=200000),
        "claude-y": ListedModel(),
    }
    gemini_body = {"models": [{"name": "models/gemini-z", "inputTokenLimit": 1048576}, {"name": "models/g2", "inputTokenLimit": "1"}]}
    assert parse_model_list("gemini", gemini_body) == {"gemini-z": ListedModel(context_window=1048576), "g2": ListedModel()}
    assert parse_model_list("openai", openrouter_body) is None  # OpenAI's list says none of it
    assert parse_model_list("openrouter", ["data"]) is None


# ---- context windows from the lists (the skip check `context_window`, explain, the attempt log) ----------

#: about 6,000 tokens by the estimate (4 characters a token, with the safety margin): over the
#: smallest window of any listed model (`window_floor`), so a call this long asks for the lists
LONG = "word " * 4000


def gemini(url: str, models: tuple[str, ...] = ("g1", "g2"), **provider: Any) -> dict[str, Any]:
    """A provider named gemini (its preset) at `url`, and a combo `c` over its models in order."""
    return {"providers": {"gemini": {"base_url": url, "api_key_env": "SIM_KEY", **provider}},
            "combos": {"c": {"targets": [f"gemini/{m}" for m in models]}}}


def test_a_gemini_target_whose_list_says_a_small_window_is_skipped_for_a_long_prompt(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=5000)
    sim.capabilities("g2", context_window=1_000_000)
    router = make_router(gemini(sim.gemini_url), persist=False)
    assert window_floor() < 5000  # so the prompt below is long enough to ask for the list
    result = router.complete("c", LONG)
    assert result.served_by == "gemini#default/g2"
    first = result.attempts[0]
    assert (first.candidate, first.action.value) == ("gemini#default/g1", "skipped")
    assert first.message.startswith("context: ~")
    assert first.message.endswith("tokens > window 5000 (model list of gemini)")
    assert lists_asked(sim) == ["/v1beta/models"]
    assert [r.model for r in sim.requests if r.model] == ["g2"]  # nothing went to g1
    # explain reads the same list: the same reason, and nothing fetched again
    skipped = router.explain("c", LONG).skipped
    assert [(r.candidate.key, r.reason) for r in skipped] == [("gemini#default/g1", first.message)]
    assert router.explain("c", "short").skipped == []
    assert lists_asked(sim) == ["/v1beta/models"]


def test_the_configured_window_wins_over_the_list(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=5000)
    sim.capabilities("g2", context_window=5000)
    router = make_router(gemini(sim.gemini_url, context_window={"g1": 900_000}), persist=False)
    result = router.complete("c", LONG)
    assert result.served_by == "gemini#default/g1"  # the config says its window is large
    assert lists_asked(sim) == ["/v1beta/models"]  # asked for g2, whose window the config does not give
    reasons = {r.candidate.key: r.reason for r in router.explain("c", LONG).skipped}
    assert list(reasons) == ["gemini#default/g2"]
    assert reasons["gemini#default/g2"].endswith("> window 5000 (model list of gemini)")


def test_a_configured_small_window_is_named_as_the_config(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=1_000_000)
    router = make_router(gemini(sim.gemini_url, ("g1",), context_window={"g1": 5000}), persist=False)
    reason = router.explain("c", LONG).skipped[0].reason
    assert reason.endswith("> window 5000 (config: context_window of provider gemini)")


def test_a_list_fetched_later_changes_the_next_decision(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=5000)
    sim.capabilities("g2")
    router = make_router(gemini(sim.gemini_url), persist=False)
    # before any list, g1's window is unknown (not in the bundled table): it is first, and remembered so
    assert router.explain("c", LONG).skipped == []
    assert router.context_window(router.explain("c", LONG).order[0]) is None
    router.complete("c", LONG)  # this call asks for the list first
    assert [r.candidate.key for r in router.explain("c", LONG).skipped] == ["gemini#default/g1"]
    assert router.context_window(router.explain("c", "x").order[0]) == 5000


def test_short_text_calls_ask_for_no_list_even_where_it_gives_windows(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=5000)
    router = make_router(gemini(sim.gemini_url), persist=False)
    assert router.complete("c", "A short question.").served_by == "gemini#default/g1"
    assert router.complete("c", "x " * 1000).served_by == "gemini#default/g1"  # long, but under the floor
    assert lists_asked(sim) == []


def test_a_context_fit_combo_asks_for_the_list_it_orders_by(sim: Any, make_router: Any) -> None:
    sim.capabilities("g1", context_window=5000)
    sim.capabilities("g2", context_window=2_000_000)
    cfg = gemini(sim.gemini_url)
    cfg["combos"]["c"]["strategy"] = "context-fit"
    router = make_router(cfg, persist=False)
    assert router.complete("c", "Short.").served_by == "gemini#default/g2"  # the largest window first
    assert lists_asked(sim) == ["/v1beta/models"]

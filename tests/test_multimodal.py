"""Issue 25, the router: images and tools in a call, JSON mode, and routing only to the targets that can
take them. Every call goes over loopback to the simulator in each protocol (OpenAI, Anthropic, Gemini).

A figure is what `savefig` makes and a PIL image what `save` makes: the objects below stand in for them
through those two methods exactly as nbrouter calls them (`savefig(buf, format="png", bbox_inches="tight")`,
`save(buf, format="PNG")`), and one test per protocol sends the real matplotlib and PIL objects (the test
extra installs both; nbrouter never imports either). IPython's own `Image` (`_repr_png_`) is the real thing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any, Literal

import pytest

from conftest import SIM_KEY
from nbrouter import (
    AttemptFinished,
    ComboConfigError,
    Done,
    NotCapable,
    Router,
    ToolCall,
    ToolCalled,
    tool_result,
)
from nbrouter.router.decide.capabilities import CapabilityBook, context_window, table_entry
from nbrouter.router.media import IMAGE_LIMITS, media_type_of
from nbrouter.router.tools import function_tool
from nbrouter.testing import Reply
from nbrouter.testing import ToolCall as SimToolCall

PROTOCOLS = ("openai", "anthropic", "gemini")


def png(width: int = 3, height: int = 2, grey: int = 0x80) -> bytes:
    """A real PNG of grey pixels (a different `grey` makes a different picture)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([grey]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(60))


class Figure:
    """What nbrouter asks of a matplotlib Figure: `savefig(buf, format="png", bbox_inches="tight")`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[dict[str, Any]] = []

    def savefig(self, buf: Any, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        buf.write(self.data)


class Axes:
    """A matplotlib Axes: its figure is `.figure`."""

    def __init__(self, figure: Figure) -> None:
        self.figure = figure


class PilImage:
    """What nbrouter asks of a PIL image: `mode`, `size` and `save(buf, format="PNG")`."""

    mode = "L"
    size = (3, 2)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, buf: Any, format: str) -> None:  # noqa: A002 - PIL's own name
        assert format == "PNG"
        buf.write(self.data)


def url_of(sim: Any, protocol: str) -> str:
    return {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}[protocol]


def config(sim: Any, protocol: str, combos: dict[str, Any] | None = None, **provider: Any) -> dict[str, Any]:
    """One provider `p` of `protocol` at the simulator, and the combos given (default `c`: m1 then m2)."""
    return {"providers": {"p": {"protocol": protocol, "base_url": url_of(sim, protocol), "api_key_env": "SIM_KEY", **provider}},
            "combos": combos or {"c": {"targets": ["p/m1", "p/m2"]}}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wire_images(protocol: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(media type, base64 data) of each inline image in a request body, read in the protocol's own shape."""
    if protocol == "gemini":
        parts = body["contents"][-1]["parts"]
        return [(p["inlineData"]["mimeType"], p["inlineData"]["data"]) for p in parts if "inlineData" in p]
    content = body["messages"][-1]["content"]
    if protocol == "anthropic":
        return [(b["source"]["media_type"], b["source"]["data"]) for b in content if b["type"] == "image"]
    out = []
    for part in content:
        if part["type"] == "image_url":
            head, _, data = part["image_url"]["url"].partition(",")
            out.append((head[len("data:"):].removesuffix(";base64"), data))
    return out


# ---- images reach the wire -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_image_from_a_path_bytes_and_a_figure_reaches_the_wire_in_the_protocols_shape(
        sim: Any, make_router: Any, tmp_path: Path, protocol: str) -> None:
    from IPython.display import Image

    path = tmp_path / "plot.png"
    path.write_bytes(png(grey=1))
    figure = Figure(png(grey=2))
    pictures = [str(path), JPEG, figure, Axes(Figure(png(grey=3))), PilImage(png(grey=4)), Image(data=png(grey=5))]
    router = make_router(config(sim, protocol), persist=False)
    result = router.complete("p/m1", "What is in these pictures?", images=pictures)
    assert result.served_by == "p#default/m1"
    request = sim.requests[-1]
    expected = [("image/png", b64(png(grey=1))), ("image/jpeg", b64(JPEG)), ("image/png", b64(png(grey=2))),
                ("image/png", b64(png(grey=3))), ("image/png", b64(png(grey=4))), ("image/png", b64(png(grey=5)))]
    assert wire_images(protocol, request.body) == expected
    assert request.images == 6 and request.image_types == tuple(t for t, _ in expected)
    assert figure.calls == [{"format": "png", "bbox_inches": "tight"}]
    # the prompt's text comes first, then the images, in the one user message
    text = request.body["contents"][-1]["parts"][0]["text"] if protocol == "gemini" else request.body["messages"][-1]["content"][0]["text"]
    assert text == "What is in these pictures?"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_real_matplotlib_figure_its_axes_and_a_pil_image_reach_the_wire_as_pngs(
        sim: Any, make_router: Any, protocol: str) -> None:
    # the real packages (the test extra installs them; nbrouter never imports either): what the stand-ins
    # above assume of them is what they do
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as RealFigure
    from PIL import Image as PilModule

    figure = RealFigure(figsize=(2, 1.5), dpi=50)
    axes = figure.add_subplot()
    axes.bar(["Q1", "Q2", "Q3"], [3, 5, 4])
    picture = PilModule.new("RGB", (24, 16), (200, 30, 30))
    router = make_router(config(sim, protocol), persist=False)
    router.complete("p/m1", "What do these show?", images=[figure, axes, picture])
    sent = wire_images(protocol, sim.requests[-1].body)
    assert [t for t, _ in sent] == ["image/png"] * 3
    decoded = [PilModule.open(io.BytesIO(base64.b64decode(data))) for _, data in sent]
    assert [d.format for d in decoded] == ["PNG"] * 3
    assert decoded[0].size == decoded[1].size  # the axes sent their figure
    assert decoded[0].size[0] > 10 and decoded[0].size[1] > 10
    assert decoded[2].size == (24, 16) and decoded[2].convert("RGB").getpixel((3, 3)) == (200, 30, 30)


def test_an_image_by_url_is_sent_as_a_url(sim: Any, make_router: Any) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    router.complete("p/m1", "What is this?", images="https://example.com/cat.png")
    assert sim.requests[-1].body["messages"][-1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def test_the_media_type_is_read_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    assert media_type_of(png()) == "image/png"
    assert media_type_of(JPEG) == "image/jpeg"
    assert media_type_of(b"GIF89a" + b"\x00" * 10) == "image/gif"
    assert media_type_of(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert media_type_of(b"\x00\x00\x00\x18ftypheic\x00\x00") == "image/heic"
    assert media_type_of(b"%PDF-1.7") is None
    named_wrong = tmp_path / "photo.jpg"
    named_wrong.write_bytes(png())
    from nbrouter.router.media import image_input

    assert image_input(named_wrong)["media_type"] == "image/png"


def test_what_is_no_image_is_refused_before_anything_is_sent(sim: Any, make_router: Any, tmp_path: Path) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    with pytest.raises(ValueError, match="not an image nbrouter recognises"):
        router.complete("p/m1", "What is this?", images=[b"%PDF-1.7 not a picture"])
    with pytest.raises(FileNotFoundError, match="no image file"):
        router.complete("p/m1", "What is this?", images=[tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="not a int"):
        router.complete("p/m1", "What is this?", images=[42])
    assert sim.requests == []


# ---- capabilities: skipped before sending ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_combo_whose_first_target_has_no_vision_skips_it_with_the_reason_shown(sim: Any, make_router: Any, protocol: str) -> None:
    router = make_router(config(sim, protocol, capabilities={"m1": {"vision": False}}), persist=False)
    decision = router.explain("c", "What is this?", images=[png()])
    assert [c.model for c in decision.order] == ["m2"]
    assert decision.skipped[0].candidate.model == "m1"
    assert decision.skipped[0].reason == "no vision (config: capabilities of provider p for m1)"
    assert "no vision" in str(decision)

    result = router.complete("c", "What is this?", images=[png()])
    assert result.served_by == "p#default/m2"
    first = result.attempts[0]
    assert (first.candidate, first.action.value) == ("p#default/m1", "skipped")
    assert first.message.startswith("no vision")
    assert "skipped" in result.attempt_table() and "no vision" in result.attempt_table()
    assert [r.model for r in sim.requests] == ["m2"]  # nothing went to m1
    # a text-only call is not held back: m1 takes text
    assert router.complete("c", "Just text.").served_by == "p#default/m1"


def test_capabilities_of_an_account_and_a_model_win_over_the_providers(sim: Any, make_router: Any) -> None:
    cfg = config(sim, "openai", combos={"c": {"targets": ["p/m1", "p/m2"]}})
    provider = cfg["providers"]["p"]
    del provider["api_key_env"]
    provider["capabilities"] = {"vision": False, "m2": {"vision": True}}
    provider["accounts"] = [{"name": "a", "api_key_env": "SIM_KEY", "capabilities": {"tools": False}}]
    router = make_router(cfg, persist=False)
    rows = {r.candidate.model: r for r in router.explain("c", "x", images=[png()]).rows}
    assert rows["m1"].reason == "no vision (config: capabilities of provider p)"
    assert not rows["m2"].skipped
    rows = {r.candidate.model: r for r in router.explain("c", "x", tools=[{"name": "f"}]).rows}
    assert rows["m1"].reason == rows["m2"].reason == "no tools (config: capabilities of account p#a)"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_target_that_can_take_the_call_is_a_clear_error_naming_what_and_who(sim: Any, make_router: Any, protocol: str) -> None:
    router = make_router(config(sim, protocol, capabilities={"vision": False, "m2": {"tools": False}}), persist=False)
    with pytest.raises(NotCapable) as caught:
        router.complete("c", "What is this?", images=[png()], tools=[{"name": "lookup"}])
    error = caught.value
    assert error.needed == ["vision", "tools"]
    assert error.lacking == {"p#default/m1": "no vision (config: capabilities of provider p)",
                             "p#default/m2": "no vision (config: capabilities of provider p)"}
    text = str(error)
    assert text.startswith("no target of 'c' can take this call: it needs vision and tools")
    assert "p#default/m1" in text and "p#default/m2" in text and "capabilities = {" in text
    assert sim.requests == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_undeclared_text_only_target_that_refuses_images_falls_back_and_is_remembered(
        sim: Any, make_router: Any, protocol: str) -> None:
    sim.capabilities("m1", vision=False)
    router = make_router(config(sim, protocol), persist=False)
    first = router.complete("c", "What is this?", images=[png()])
    assert first.served_by == "p#default/m2"
    refused = first.attempts[0]
    assert (refused.action.value, refused.kind.value, refused.status) == ("advance", "unsupported", 400)
    assert [r.model for r in sim.requests] == ["m1", "m2"]

    second = router.complete("c", "And this one?", images=[png(grey=9)])
    assert second.served_by == "p#default/m2"
    skipped = second.attempts[0]
    assert skipped.action.value == "skipped"
    assert skipped.message.startswith("no vision (it answered 'unsupported' earlier this session: ")
    assert [r.model for r in sim.requests] == ["m1", "m2", "m2"]  # m1 was not asked again
    assert router.complete("c", "Text still goes to m1.").served_by == "p#default/m1"


def test_an_unsupported_answer_about_something_else_marks_nothing() -> None:
    from nbrouter.router import build_request
    from nbrouter.router.types import Candidate

    book = CapabilityBook()
    c = Candidate("p", "default", "m1")
    req = build_request("p/m1", "x", stream=False, images=[png()])
    assert book.learn(c, req, "Unsupported parameter: 'temperature' is not supported with this model.") == []
    assert book.learned == {}
    assert book.learn(c, req, "Invalid content type. image_url is only supported by certain models.") == ["vision"]


def test_the_bundled_table_knows_well_known_models_and_the_config_wins(sim: Any, make_router: Any) -> None:
    cfg = {"providers": {"openai": {"base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                                    "capabilities": {"gpt-4o-mini": {"vision": False}}, "context_window": {"gpt-4o": 1000}}},
           "combos": {"c": {"targets": ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-3.5-turbo"]}}}
    router = make_router(cfg, persist=False)
    book = CapabilityBook(router.config)
    from nbrouter.router.types import Candidate

    gpt4o, mini, old = (Candidate("openai", "default", m) for m in ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo"))
    assert book.lookup(gpt4o, "vision") == (True, "bundled table (LiteLLM data) for openai/gpt-4o")
    assert book.lookup(mini, "vision") == (False, "config: capabilities of provider openai for gpt-4o-mini")
    assert book.lookup(old, "tools")[0] is True
    assert book.lookup(old, "vision") == (None, "unknown")  # the source does not say: unknown, not false
    provider = router.config.providers["openai"]
    assert context_window(provider, "gpt-3.5-turbo") == 16385  # the table's
    assert context_window(provider, "gpt-4o") == 1000  # the config's
    assert router.context_window(old) == 16385
    assert table_entry(provider, "not-a-model") is None
    openrouter = router.config.providers["openai"].__class__(name="or", protocol="openai", base_url="https://x", accounts=[],
                                                             preset="openrouter")
    assert table_entry(openrouter, "openai/gpt-4o") is not None


def test_the_bundled_table_says_where_it_comes_from_and_under_which_license() -> None:
    data = json.loads((Path(__file__).resolve().parents[1] / "nbrouter/router/decide/capabilities.json").read_text())
    assert "LiteLLM" in data["_source"] and "MIT License" in data["_license"] and "Berri AI" in data["_license"]
    assert data["_fields"] == ["vision", "tools", "json_schema", "context_window"]
    assert len(data["models"]["openai"]) > 50 and len(data["models"]["anthropic"]) > 5


def test_the_capabilities_config_is_validated_naming_the_file_and_field(sim: Any) -> None:
    base = config(sim, "openai")

    def load(capabilities: Any) -> str:
        cfg = json.loads(json.dumps(base))
        cfg["providers"]["p"]["capabilities"] = capabilities
        with pytest.raises(ComboConfigError) as caught:
            Router(cfg, persist=False).close()
        return str(caught.value)

    assert load({"vison": True}) == ("file <dict>, field 'providers.p.capabilities.vison': unknown capability 'vison' of provider "
                                     "'p' (did you mean 'vision'?); a model's own capabilities are a table: \"vison\" = { vision = false }")
    assert "field 'providers.p.capabilities.tools': must be true or false, not the string 'yes'" in load({"tools": "yes"})
    message = load({"gpt-x": {"json_schem": True}})
    assert "field 'providers.p.capabilities.gpt-x.json_schem'" in message and "did you mean 'json_schema'?" in message
    assert "must be a table" in load(True)


# ---- image limits ------------------------------------------------------------------------------------------


# aiohttp warns of a body over 1 MB given as bytes: a large body goes to it in pieces, so none is given
@pytest.mark.filterwarnings("error:Sending a large body:ResourceWarning")
def test_an_image_over_a_providers_limit_skips_that_target_before_sending(sim: Any, make_router: Any) -> None:
    big = png() + b"\x00" * (8 * 1_000_000)  # 8 MB: 10.7 MB as base64, over Anthropic's 10 MB per image
    cfg = {"providers": {"claude": {"protocol": "anthropic", "base_url": sim.anthropic_url, "api_key_env": "SIM_KEY"},
                         "gpt": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"}},
           "combos": {"c": {"targets": ["claude/m1", "gpt/m2"]}}}
    router = make_router(cfg, persist=False)
    result = router.complete("c", "What is this?", images=[big])
    assert result.served_by == "gpt#default/m2"
    assert result.attempts[0].message == "image limit: image 1 is 10.7 MB, over Anthropic's 10 MB per image"
    assert [r.protocol for r in sim.requests] == ["openai"]
    assert sim.requests[-1].image_bytes == len(big)  # the whole body arrived, in pieces
    headers = {k.lower(): v for k, v in sim.requests[-1].headers.items()}
    assert int(headers["content-length"]) > 10_000_000 and "transfer-encoding" not in headers
    assert headers["content-type"] == "application/json"


def test_a_large_body_arrives_whole_through_a_given_http_client() -> None:
    """The pieces a large body is sent in reach any httpx transport (here a client's MockTransport) whole,
    with the client's headers and the body's length."""
    import asyncio

    import httpx

    from nbrouter.providers import ChatRequest, Endpoint, Sender, get_protocol

    big = png() + b"\x01" * 3_000_000
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    request = ChatRequest(model="m", messages=[{"role": "user", "content": ["What is this?", {"type": "image", "media_type": "image/png", "data": b64(big)}]}])

    async def go() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"x-team": "blue"}) as client:
            sender = Sender(http_client=client)
            return (await sender.send(get_protocol("openai"), Endpoint("p", "openai", "http://llm.example/v1"), request, timeout_s=5)).text

    assert asyncio.run(go()) == "ok"
    sent = seen[0]
    assert sent.headers["x-team"] == "blue" and int(sent.headers["content-length"]) == len(sent.content) > 4_000_000
    part = json.loads(sent.content)["messages"][0]["content"][1]
    assert part["image_url"]["url"] == "data:image/png;base64," + b64(big)


def test_an_image_type_a_protocol_does_not_take_skips_it_and_none_left_is_an_error(sim: Any, make_router: Any) -> None:
    gif = b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;"
    router = make_router(config(sim, "gemini", combos={"c": {"targets": ["p/m1"]}}), persist=False)
    with pytest.raises(NotCapable) as caught:
        router.complete("c", "What is this?", images=[gif])
    assert caught.value.lacking == {"p#default/m1": "image limit: image 1 is image/gif, which Gemini does not take "
                                                    "(PNG, JPEG, WEBP, HEIC, HEIF)"}
    assert "1 image within the provider's limits" in str(caught.value)
    assert sim.requests == []
    assert IMAGE_LIMITS["openai"].max_total_bytes == 50_000_000


# ---- tools -------------------------------------------------------------------------------------------------


def get_weather(city: str, unit: Literal["C", "F"] = "C", days: int | None = None) -> str:
    """The weather in a city.

    Args:
        city: the city's name, in English.
        unit: degrees Celsius or
            Fahrenheit.
        days: how many days ahead.
    """
    return f"12 {unit} in {city}"


def test_a_function_becomes_a_tool_from_its_signature_and_docstring() -> None:
    tool = function_tool(get_weather)
    assert tool.name == "get_weather" and tool.description == "The weather in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city's name, in English."},
            "unit": {"enum": ["C", "F"], "description": "degrees Celsius or Fahrenheit."},
            "days": {"type": "integer", "description": "how many days ahead."},
        },
        "required": ["city"],
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tool_call_comes_back_parsed(sim: Any, make_router: Any, protocol: str) -> None:
    sim.script([Reply(tool_calls=[SimToolCall("get_weather", {"city": "Oslo", "unit": "C"})])], model="m1")
    router = make_router(config(sim, protocol), persist=False)
    result = router.complete("p/m1", "Weather in Oslo?", tools=[get_weather], tool_choice="auto")
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Oslo", "unit": "C"})]
    assert isinstance(result.tool_calls[0], ToolCall) and result.tool_calls[0].id
    request = sim.requests[-1]
    assert request.tools == ("get_weather",) and request.tool_choice == "auto"
    assert "1 tool" in result.footer() and result.attempts[-1].message == "sent 1 tool"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tool_call_comes_back_streamed_as_an_event(sim: Any, make_router: Any, protocol: str) -> None:
    sim.script([Reply(tool_calls=[SimToolCall("get_weather", {"city": "Oslo"})])], model="m1")
    router = make_router(config(sim, protocol), persist=False)
    events = list(router.stream("p/m1", "Weather in Oslo?", tools=[get_weather]))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["AttemptStarted", "ToolCalled", "AttemptFinished", "Done"]
    called = events[1]
    assert isinstance(called, ToolCalled) and called.candidate == "p#default/m1"
    assert (called.call.name, called.call.arguments) == ("get_weather", {"city": "Oslo"})
    done = events[-1]
    assert isinstance(done, Done) and done.result is not None and done.result.tool_calls == [called.call]
    assert isinstance(events[2], AttemptFinished) and sim.requests[-1].stream


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_tool_result_goes_back(sim: Any, make_router: Any, protocol: str) -> None:
    sim.script([Reply(tool_calls=[SimToolCall("get_weather", {"city": "Oslo"})]), Reply("It is 12 C in Oslo.")], model="m1")
    router = make_router(config(sim, protocol), persist=False)
    asked = router.complete("p/m1", "Weather in Oslo?", tools=[get_weather])
    call = asked.tool_calls[0]
    history = [{"role": "user", "content": "Weather in Oslo?"}, asked.as_message(), tool_result(call, "12 C")]
    answer = router.complete("p/m1", messages=history, tools=[get_weather])
    assert answer.text == "It is 12 C in Oslo." and answer.tool_calls == []
    assert sim.requests[-1].tool_results == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_run_tools_runs_the_functions_until_the_model_answers(sim: Any, make_router: Any, protocol: str) -> None:
    ran: list[dict[str, Any]] = []

    def lookup(city: str) -> dict[str, Any]:
        """The weather record of a city."""
        ran.append({"city": city})
        if city == "Atlantis":
            raise KeyError(city)
        return {"city": city, "celsius": 12}

    sim.script([Reply(tool_calls=[SimToolCall("lookup", {"city": "Oslo"}), SimToolCall("lookup", {"city": "Atlantis"})],
                      usage={"input_tokens": 30, "output_tokens": 5}),
                Reply("Oslo is 12 C; Atlantis is unknown.", usage={"input_tokens": 60, "output_tokens": 9})], model="m1")
    router = make_router(config(sim, protocol), persist=False)
    result = router.run_tools("p/m1", "Weather in Oslo and Atlantis?", tools=[lookup])
    assert result.text == "Oslo is 12 C; Atlantis is unknown."
    assert ran == [{"city": "Oslo"}, {"city": "Atlantis"}]
    assert [m["role"] for m in result.transcript] == ["assistant", "tool", "tool"]
    assert result.transcript[1]["content"] == '{"city": "Oslo", "celsius": 12}'
    assert result.transcript[2]["is_error"] is True and "KeyError" in result.transcript[2]["content"]
    assert len(result.attempts) == 2 and result.usage.input_tokens == 90 and result.usage.output_tokens == 14
    assert sim.requests[-1].tool_results == 2


def test_run_tools_stops_after_max_rounds_asking_for_an_answer(sim: Any, make_router: Any) -> None:
    sim.script([Reply(tool_calls=[SimToolCall("lookup", {"city": "Oslo"})])], model="m1", repeat_last=True)
    router = make_router(config(sim, "openai"), persist=False)

    def lookup(city: str) -> str:
        return city

    result = router.run_tools("p/m1", "Weather?", tools=[lookup], max_rounds=2)
    assert [r.tool_choice for r in sim.requests] == [None, "none"]
    assert len(result.attempts) == 2


def test_a_tool_is_checked_before_anything_is_sent(sim: Any, make_router: Any) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    with pytest.raises(ValueError, match="not 'bad name'"):
        router.complete("p/m1", "x", tools=[{"name": "bad name"}])
    with pytest.raises(ValueError, match="tool_choice must be one of auto, none, required, get_weather, not 'other'"):
        router.complete("p/m1", "x", tools=[get_weather], tool_choice="other")
    with pytest.raises(ValueError, match="two tools are named 'get_weather'"):
        router.complete("p/m1", "x", tools=[get_weather, get_weather])
    assert sim.requests == []


# ---- JSON mode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_json_mode_is_sent_and_validated(sim: Any, make_router: Any, protocol: str) -> None:
    sim.script([Reply("not JSON at all"), Reply("still not"), Reply('{"city": "Rome"}')], model="m1")
    sim.script([Reply('{"city": "Oslo"}')], model="m2")
    router = make_router(config(sim, protocol), persist=False)
    result = router.complete("c", "Give me a city as JSON.", response_format="json")
    assert result.parsed == {"city": "Oslo"} and result.served_by == "p#default/m2"
    kinds = [(a.candidate, a.kind.value if a.kind else None) for a in result.attempts]
    assert kinds == [("p#default/m1", "invalid_output"), ("p#default/m1", "invalid_output"), ("p#default/m2", None)]
    assert all(r.json_mode is not None for r in sim.requests)


# ---- the record ------------------------------------------------------------------------------------------


def test_the_record_says_what_was_sent_and_never_the_bytes(sim: Any, make_router: Any, tmp_path: Path) -> None:
    picture = png() + b"\x07" * 40_000
    router = make_router(config(sim, "openai", capabilities={"m1": {"vision": False}}), state_path=tmp_path / "state.sqlite3")
    result = router.complete("c", "What is this?", images=[picture], tools=[get_weather])
    assert "1 image (40 KB), 1 tool" in result.footer()
    assert result.attempts[-1].message == "sent 1 image (40 KB), 1 tool"
    assert result.sent.images == 1 and result.sent.image_bytes == len(picture) and result.sent.tools == 1
    rows = router.log(5)
    served = [r for r in rows if r["action"] == "served"][0]
    assert served["message"] == "sent 1 image (40 KB), 1 tool"
    router.state.flush()
    router.close()
    dump = "\n".join(sqlite3.connect(tmp_path / "state.sqlite3").iterdump())
    assert "What is this? [image: 40 KB]" in dump
    assert b64(picture)[:200] not in dump and b64(picture)[-200:] not in dump
    assert SIM_KEY not in dump


def test_a_cached_call_with_a_different_image_is_not_a_hit(sim: Any, make_router: Any) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    first = router.complete("p/m1", "What is this?", images=[png(grey=10)], cache=True)
    again = router.complete("p/m1", "What is this?", images=[png(grey=10)], cache=True)
    other = router.complete("p/m1", "What is this?", images=[png(grey=11)], cache=True)
    assert first.cached is None and again.cached is not None and other.cached is None
    assert len(sim.requests) == 2
    from nbrouter.router import build_request

    from nbrouter.router.media import digest_messages

    request = build_request("p/m1", "What is this?", stream=False, images=[png(grey=10)])
    assert router.cache_key(request) != router.cache_key(build_request("p/m1", "What is this?", stream=False, images=[png(grey=11)]))
    # the key hashes each image's SHA-256, not its base64 text
    digest = hashlib.sha256(b64(png(grey=10)).encode()).hexdigest()
    assert digest_messages(request.messages)[-1]["content"][1] == {"type": "image", "media_type": "image/png", "sha256": digest}


def test_a_cached_call_with_other_tools_is_not_a_hit(sim: Any, make_router: Any) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    router.complete("p/m1", "Weather?", tools=[get_weather], cache=True)
    assert router.complete("p/m1", "Weather?", tools=[get_weather], cache=True).cached is not None
    assert router.complete("p/m1", "Weather?", tools=[{"name": "other"}], cache=True).cached is None
    assert router.complete("p/m1", "Weather?", tools=[get_weather], tool_choice="required", cache=True).cached is None
    assert len(sim.requests) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_answer_that_asks_for_tool_calls_is_cached_with_its_calls(sim: Any, make_router: Any, protocol: str) -> None:
    sim.script([Reply(tool_calls=[SimToolCall("get_weather", {"city": "Oslo", "unit": "C"}, id="call_a"),
                                  SimToolCall("get_weather", {"city": "Bergen", "days": 2}, id="call_b")]),
                Reply("Oslo 12 C, Bergen 9 C."), Reply("A fresh answer.")], model="m1")
    router = make_router(config(sim, protocol), persist=False)
    asked = router.complete("p/m1", "Weather in Oslo and Bergen?", tools=[get_weather], cache=True)
    again = router.complete("p/m1", "Weather in Oslo and Bergen?", tools=[get_weather], cache=True)
    assert asked.cached is None and again.cached is not None
    assert len([r for r in sim.requests if r.model]) == 1
    assert again.tool_calls == asked.tool_calls  # the ids, names, parsed arguments (and Gemini's signature)
    assert [(c.id, c.name, c.arguments) for c in again.tool_calls] == [
        ("call_a", "get_weather", {"city": "Oslo", "unit": "C"}), ("call_b", "get_weather", {"city": "Bergen", "days": 2})]
    assert again.as_message() == asked.as_message()

    # the next round carries the calls and their results: another key, sent, and answered
    history = [{"role": "user", "content": "Weather in Oslo and Bergen?"}, again.as_message(),
               tool_result(again.tool_calls[0], "12 C"), tool_result(again.tool_calls[1], "9 C")]
    answer = router.complete("p/m1", messages=history, tools=[get_weather], cache=True)
    assert answer.cached is None and answer.text == "Oslo 12 C, Bergen 9 C." and sim.requests[-1].tool_results == 2
    # another tool result is another key again
    history[-1] = tool_result(again.tool_calls[1], "10 C")
    other = router.complete("p/m1", messages=history, tools=[get_weather], cache=True)
    assert other.cached is None and other.text == "A fresh answer."
    assert len([r for r in sim.requests if r.model]) == 3


def test_a_cache_file_of_an_earlier_version_gains_the_tool_calls_column(tmp_path: Path) -> None:
    from nbrouter.router.run.cache import ResponseCache

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, model TEXT, served_by TEXT NOT NULL, "
               "input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, cost_usd TEXT, finish_reason TEXT, "
               "created_at REAL NOT NULL)")
    db.execute("INSERT INTO responses VALUES ('k', 'old answer', 'm', 'p#default/m', 1, 2, 0, '0.01', 'stop', 5.0)")
    db.commit()
    db.close()
    cache = ResponseCache(path)
    entry = cache.get("k", 6.0)
    assert entry is not None and entry["text"] == "old answer" and entry["tool_calls"] is None
    cache.close()


def test_the_cost_counts_the_image_tokens_the_provider_reports(sim: Any, make_router: Any) -> None:
    sim.script([Reply("A grey square.", usage={"input_tokens": 1612, "output_tokens": 4})], model="m1")
    cfg = config(sim, "openai")
    cfg["prices"] = {"p/m1": {"input_per_mtok": 2.5, "output_per_mtok": 10.0}}
    router = make_router(cfg, persist=False)
    result = router.complete("p/m1", "What is this?", images=[png()])
    assert result.usage.input_tokens == 1612
    assert float(result.cost_usd) == pytest.approx(1612 * 2.5e-6 + 4 * 10e-6)
    # before sending, an image counts as policy.image_tokens_estimate in the estimate (not its base64 text)
    from nbrouter.router import build_request

    info = router._decider.request_info(build_request("p/m1", "What is this?", stream=False, images=[png() + b"\x00" * 100_000]))
    assert 1600 <= info.prompt_tokens < 2100


# ---- map: an image column --------------------------------------------------------------------------------


def test_map_sends_each_rows_image_from_a_column(sim: Any, make_router: Any) -> None:
    router = make_router(config(sim, "openai"), persist=False)
    rows = [{"name": "a", "scan": png(grey=20)}, {"name": "b", "scan": png(grey=21)}, {"name": "c", "scan": None}]
    batch = router.map("p/m1", rows, prompt="Describe scan {name}.", images="scan", cache=False)
    from nbrouter import RouteResult

    assert len(batch) == 3 and all(isinstance(r, RouteResult) for r in batch)
    sent = sorted((r.body["messages"][-1]["content"] if isinstance(r.body["messages"][-1]["content"], str)
                   else r.body["messages"][-1]["content"][0]["text"], r.images) for r in sim.requests)
    assert sent == [("Describe scan a.", 1), ("Describe scan b.", 1), ("Describe scan c.", 0)]
    with pytest.raises(KeyError, match="no column 'photo'"):
        router.map("p/m1", rows, prompt="x", images="photo")

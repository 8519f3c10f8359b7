"""No key in any record a Router keeps or shows: results, errors and their reprs, the attempt log, status,
and the bytes of the state file, over every failure kind, with providers that echo the key everywhere
they can (error messages, request ids, malformed bodies, stream chunks). The key is shaped like no
known provider's, so only the exact-value net can catch it. Every reply comes over loopback HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbrouter import RouteError
from nbrouter.testing import (
    ContentFilter,
    ContextOverflow,
    CutStream,
    Drop,
    Empty,
    Forbidden,
    Malformed,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    Raw,
    Reply,
    ServerError,
    Unauthorized,
)

KEY = "pv4Lm8Zr2Qx6Hn1Td9Wb"


def fragments(key: str = KEY) -> list[str]:
    return [key[i : i + 6] for i in range(len(key) - 5)]


def leaks(text: str) -> list[str]:
    return [piece for piece in fragments() if piece in text]


def echo(status: int, protocol: str) -> Raw:
    """An error reply in the protocol's shape whose message, request id and headers all quote the key."""
    message = f"upstream rejected key {KEY} (sent as Bearer {KEY})"
    headers = {"x-request-id": f"req-{KEY}", "request-id": f"req-{KEY}"}
    if protocol == "anthropic":
        body: Any = {"type": "error", "error": {"type": "api_error", "message": message}, "request_id": f"req_{KEY}"}
    elif protocol == "gemini":
        body = {"error": {"code": status, "message": message, "status": "INTERNAL"}}
    else:
        body = {"error": {"message": message, "type": None, "code": None}}
    return Raw(status, body, headers=headers)


BEHAVIOURS = [
    pytest.param(lambda p: echo(429, p), id="429-echo"),
    pytest.param(lambda p: echo(401, p), id="401-echo"),
    pytest.param(lambda p: echo(403, p), id="403-echo"),
    pytest.param(lambda p: echo(404, p), id="404-echo"),
    pytest.param(lambda p: echo(400, p), id="400-echo"),
    pytest.param(lambda p: echo(500, p), id="500-echo"),
    pytest.param(lambda p: echo(503, p), id="503-echo"),
    pytest.param(lambda p: Raw(502, f"<html>proxy error for {KEY}</html>" + "x" * 400, content_type="text/html"), id="html-echo"),
    pytest.param(lambda p: Raw(200, "{" + "x" * 190 + KEY, headers={"x-request-id": KEY}), id="malformed-200-echo"),
    pytest.param(lambda p: Raw(200, sse=[(None, "{" + "x" * 110 + KEY)]), id="malformed-chunk-echo"),
    pytest.param(lambda p: Reply("fine", headers={"x-request-id": f"id-{KEY}", "request-id": f"id-{KEY}"}), id="served-id-echo"),
    pytest.param(lambda p: RateLimited(retry_after=1), id="rate_limit"),
    pytest.param(lambda p: QuotaExceeded(), id="quota_exceeded"),
    pytest.param(lambda p: Unauthorized(), id="auth"),
    pytest.param(lambda p: Forbidden(), id="account_locked"),
    pytest.param(lambda p: NotFound(), id="model_not_found"),
    pytest.param(lambda p: ServerError(500), id="server_error"),
    pytest.param(lambda p: Overloaded(), id="overloaded"),
    pytest.param(lambda p: ContextOverflow(limit=10), id="context_overflow"),
    pytest.param(lambda p: ContentFilter(), id="content_filter"),
    pytest.param(lambda p: Empty(), id="empty_response"),
    pytest.param(lambda p: Malformed(), id="malformed_response"),
    pytest.param(lambda p: CutStream(after_chunks=1), id="stream_interrupted"),
    pytest.param(lambda p: Drop(), id="network"),
]


def config(sim: Any, protocol: str) -> dict[str, Any]:
    base = {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}[protocol]
    return {
        "providers": {
            "leaky": {"protocol": protocol, "base_url": base, "api_key_env": "LEAKY_KEY"},
            "backup": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "LEAKY_KEY"},
        },
        "combos": {"one": {"targets": ["leaky/m"]}, "two": {"targets": ["leaky/m", "backup/b"]}},
        "policy": {"server_error_backoff_s": 0.0},
    }


def state_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


@pytest.mark.parametrize("make", BEHAVIOURS)
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
def test_no_piece_of_the_key_in_any_record(sim, tmp_path, monkeypatch, protocol, make) -> None:
    from nbrouter import Router

    monkeypatch.setenv("LEAKY_KEY", KEY)
    folder = tmp_path / "state"
    folder.mkdir()
    router = Router(config(sim, protocol), state_path=folder / "state.sqlite3")
    shown: list[str] = []
    try:
        for combo, stream in (("one", False), ("two", False), ("one", True), ("two", True)):
            sim.reset()
            sim.script([make(protocol)], model="m")
            try:
                result = router.complete(combo, "hi", stream=stream)
                shown += [str(result), repr(result), result.text, *(str(a) for a in result.attempts)]
                shown += [json.dumps(result.attempts[-1].__dict__, default=str)]
            except RouteError as error:
                shown += [str(error), repr(error), *(repr(a) for a in error.attempts)]
            router.reset()
        shown += [json.dumps(router.log(1000), default=str), str(router.status()), str(router.explain("two", "hi"))]
    finally:
        router.close()
    assert all(r.key == KEY for r in sim.requests)  # the key did go on the wire, and came back
    for text in shown:
        assert not leaks(text), (leaks(text), text[:400])
    raw = state_bytes(folder)
    assert raw and not [p for p in fragments() if p.encode() in raw]


@pytest.mark.parametrize("bad", ["é", "\n", "\r", "\u00a0"])
def test_a_key_no_header_can_hold_is_an_auth_failure_and_never_shown(sim, tmp_path, monkeypatch, bad) -> None:
    from nbrouter import ErrorKind, Router

    key = KEY[:8] + bad + KEY[8:]
    monkeypatch.setenv("LEAKY_KEY", key)
    folder = tmp_path / "state"
    folder.mkdir()
    router = Router(config(sim, "openai"), state_path=folder / "state.sqlite3")
    try:
        with pytest.raises(RouteError) as caught:
            router.complete("one", "hi")
        error = caught.value
        assert error.attempts[0].kind is ErrorKind.AUTH
        shown = [str(error), repr(error), *(repr(a) for a in error.attempts), json.dumps(router.log(100), default=str)]
    finally:
        router.close()
    assert sim.requests == []
    for text in shown:
        assert not leaks(text) and key not in text, text[:400]
    assert not [p for p in fragments() if p.encode() in state_bytes(folder)]

"""Issue 22, the provider half: real sliding-window limits per key, shared by every client of one simulator.

The window runs on the simulator's clock: a ManualClock in-process (and `--clock manual` in a process of
its own, moved over HTTP), so every boundary is checked exactly and nothing sleeps. Several OS processes
hammer one simulator process; the server's own counts (`GET /_sim/stats`) must equal what the clients saw.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any, Iterator

import httpx
import pytest

from nbrouter.testing import (
    KeyLimits,
    ManualClock,
    ProviderSimulator,
    Reply,
    ServerError,
    WindowLimits,
    key_id,
    start_simulator_process,
)
from nbrouter.testing.ratelimits import most_in
from test_simulator import KEY, PROTOCOLS, post

OTHER_KEY = "sk-test-other-fedcba9876"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Iterator[ProviderSimulator]:
    with ProviderSimulator(clock=clock) as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def error_message(protocol: str, body: dict[str, Any]) -> str:
    return str(body["error"]["message"])


# -- the window on a ManualClock -------------------------------------------------------------------


def test_sliding_window_admits_the_limit_then_429s_until_the_oldest_request_leaves_it(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=3, window_s=60))
    for _ in range(3):
        assert post(client, sim, "openai").status_code == 200
        clock.advance(10)
    # t=30: a, b, c arrived at 0, 10 and 20; a leaves the window at 60
    r = post(client, sim, "openai")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30" and r.headers["retry-after-ms"] == "30000"
    assert r.headers["x-ratelimit-limit-requests"] == "3" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"] == "50s"  # c (t=20) leaves at 80: the window is empty again
    body = r.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 30s." in body["message"]
    clock.advance(29.5)  # (binary-exact steps: the boundary itself is under test)
    r = post(client, sim, "openai")
    assert r.status_code == 429 and r.headers["retry-after-ms"] == "500"
    clock.advance(0.5)  # exactly the hint: a has left
    ok = post(client, sim, "openai")
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining-requests"] == "0" and ok.headers["x-ratelimit-reset-requests"] == "1m0s"
    r = post(client, sim, "openai")
    assert r.status_code == 429 and r.headers["retry-after"] == "10"  # b (t=10) leaves at 70


def test_a_refusal_takes_nothing_from_the_window(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=1, window_s=60))
    assert post(client, sim, "openai").status_code == 200
    for _ in range(5):
        clock.advance(10)
        assert post(client, sim, "openai").status_code == 429
    clock.advance(10)  # t=60: only the one admitted request ever counted
    assert post(client, sim, "openai").status_code == 200


@pytest.mark.parametrize("protocol", ["anthropic", "gemini", "openrouter"])
def test_the_windows_429_is_each_protocols_own_with_honest_numbers(sim, client, clock, protocol) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=2, window_s=60))
    assert post(client, sim, protocol).status_code == 200
    clock.advance(15)
    assert post(client, sim, protocol).status_code == 200
    clock.advance(15)
    r = post(client, sim, protocol)  # t=30: the first request leaves at 60
    assert r.status_code == 429
    body = r.json()
    if protocol == "anthropic":
        assert r.headers["retry-after"] == "30"
        assert body["error"]["type"] == "rate_limit_error"
        assert "of 2 requests per minute" in body["error"]["message"]
        reset = datetime.strptime(r.headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
        # the window is empty when the second request (t=15) leaves: 45 s from now, on the simulator's clock
        assert reset.replace(tzinfo=timezone.utc).timestamp() == clock.time() + 45
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "0"
    elif protocol == "gemini":
        details = {d["@type"].rsplit(".", 1)[1]: d for d in body["error"]["details"]}
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert details["RetryInfo"]["retryDelay"] == "30s"
        assert details["QuotaFailure"]["violations"][0]["quotaValue"] == "2"
    else:
        assert r.headers["retry-after"] == "30" and body["error"]["code"] == 429


def test_a_token_window_counts_prompt_and_max_tokens_and_names_tokens_in_the_refusal(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(tokens=100, window_s=60))
    first = post(client, sim, "openai", max_tokens=60)  # "Hello simulator": 15 chars, 4 prompt tokens
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "36"
    clock.advance(5)
    r = post(client, sim, "openai", max_tokens=60)
    assert r.status_code == 429 and r.headers["retry-after"] == "55"
    error = r.json()["error"]
    assert error["type"] == "tokens"
    assert "tokens per min (TPM): Limit 100, Used 64, Requested 64." in error["message"]
    assert post(client, sim, "openai", max_tokens=30).status_code == 200  # 34 more still fit


def test_a_key_in_steady_use_frees_one_request_every_window_over_limit(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=4, window_s=60, start_full=False))
    r = post(client, sim, "openai")
    assert r.status_code == 429 and r.headers["retry-after"] == "15"
    clock.advance(15)
    assert post(client, sim, "openai").status_code == 200
    assert post(client, sim, "openai").status_code == 429


def test_the_default_limit_gives_every_key_its_own_window_and_a_keys_own_limit_wins(sim, client, clock) -> None:
    sim.rate_limits.set_default(WindowLimits(requests=1, window_s=60))
    sim.rate_limits.set(OTHER_KEY, KeyLimits(requests_per_minute=2))
    assert post(client, sim, "openai").status_code == 200
    assert post(client, sim, "openai").status_code == 429
    assert [post(client, sim, "openai", key=OTHER_KEY).status_code for _ in range(3)] == [200, 200, 429]
    assert post(client, sim, "openai", key="sk-third-key-000000000").status_code == 200
    assert post(client, sim, "openai", key=None).status_code == 200  # no credential: nothing to count against


def test_one_window_per_key_across_every_protocol(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=len(PROTOCOLS), window_s=60))
    assert [post(client, sim, p).status_code for p in PROTOCOLS] == [200] * len(PROTOCOLS)
    assert [post(client, sim, p).status_code for p in PROTOCOLS] == [429] * len(PROTOCOLS)


def test_the_limit_holds_in_every_window_and_refuses_only_a_full_one_with_an_exact_hint(sim, client, clock) -> None:
    limit, window = 5, 10.0
    sim.rate_limits.set(KEY, WindowLimits(requests=limit, window_s=window))
    rng = random.Random(7)
    admitted: list[float] = []
    for _ in range(300):
        clock.advance(rng.choice([0, 0, 0.25, 0.5, 1, 2.5, 4]))
        now = clock.monotonic()
        r = post(client, sim, "openai")
        in_window = [t for t in admitted if now - t < window]
        if r.status_code == 200:
            assert len(in_window) < limit
            admitted.append(now)
        else:
            assert r.status_code == 429 and len(in_window) == limit  # refused only when the window is full
            assert float(r.headers["retry-after"]) == pytest.approx(in_window[0] + window - now, abs=0.001)
    assert most_in(admitted, window) == limit
    stats = sim.stats(times=True)["keys"][key_id(KEY)]
    assert stats["admitted_times"] == admitted and stats["max_in_window"] == limit


# -- the server's counts ---------------------------------------------------------------------------


def test_stats_count_every_model_call_per_key_without_showing_the_key(sim, client, clock) -> None:
    sim.rate_limits.set(KEY, WindowLimits(requests=3, window_s=60))
    sim.script([ServerError(503), Reply("fine")], key=KEY)
    codes = [post(client, sim, "openai").status_code for _ in range(5)]
    codes.append(post(client, sim, "anthropic", key=OTHER_KEY).status_code)
    assert codes == [503, 200, 200, 429, 429, 200]
    client.get(sim.openai_url + "/models", headers={"authorization": f"Bearer {KEY}"})  # not a model call
    stats = sim.stats()
    mine = stats["keys"][key_id(KEY)]
    assert mine["received"] == 5 and mine["rate_limited"] == 2 and mine["passed_limiter"] == 3
    assert mine["served"] == 2 and mine["answered_429"] == 2
    assert mine["statuses"] == {"200": 2, "429": 2, "503": 1}
    assert mine["max_in_window"] == 3 and mine["window_s"] == 60
    assert mine["limits"] == {"kind": "window", "requests": 3, "tokens": None, "window_s": 60}
    other = stats["keys"][key_id(OTHER_KEY)]
    assert other["received"] == 1 and other["served"] == 1 and other["limits"] is None
    over_http = client.get(sim.url + "/_sim/stats").json()
    assert over_http["keys"] == stats["keys"]
    text = json.dumps(over_http)
    assert KEY not in text and OTHER_KEY not in text and mine["label"] == "sk-***cdef"
    assert all(r.path.startswith(("/v1", "/v1beta")) for r in sim.requests)  # /_sim/ calls are not recorded
    assert [r.status for r in sim.requests[:6]] == codes


def test_stats_mark_a_dropped_connection_as_status_0(sim, client) -> None:
    from nbrouter.testing import Drop

    sim.script([Drop()], model="m-1")
    with pytest.raises(httpx.TransportError):
        post(client, sim, "openai")
    assert sim.stats()["keys"][key_id(KEY)]["statuses"] == {"0": 1}


def test_the_control_routes_configure_reset_and_move_a_manual_clock(sim, client, clock) -> None:
    config = {"rate_limits": {"keys": {KEY: {"requests": 1, "window_s": 30}}}, "scripts": [{"model": "m-1", "behaviours": [{"type": "Reply", "text": "scripted"}]}]}
    assert client.post(sim.url + "/_sim/config", json=config).status_code == 200
    first = post(client, sim, "openai")
    assert first.json()["choices"][0]["message"]["content"] == "scripted"
    assert post(client, sim, "openai").status_code == 429
    moved = client.post(sim.url + "/_sim/clock", json={"seconds": 30}).json()
    assert moved["monotonic"] == clock.monotonic() == 1030.0
    assert post(client, sim, "openai").status_code == 200
    bad = client.post(sim.url + "/_sim/config", json={"rate_limits": {"keys": {KEY: {"requests": 1, "per": "hour"}}}})
    assert bad.status_code == 400 and "per" in bad.json()["error"]["message"]
    assert client.post(sim.url + "/_sim/reset").status_code == 200
    assert sim.stats()["keys"] == {} and sim.requests == [] and sim.rate_limits.limits_of(KEY) is None


def test_the_clock_route_refuses_to_move_the_real_clock(client) -> None:
    with ProviderSimulator() as real:
        r = client.post(real.url + "/_sim/clock", json={"seconds": 5})
        assert r.status_code == 409


# -- one simulator process, many client processes ---------------------------------------------------

WORKER = r"""
import collections, json, sys
import httpx
url, protocol, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = collections.Counter()
with httpx.Client(timeout=30) as c:
    for i in range(n):
        if protocol == "gemini":
            r = c.post(url + "/v1beta/models/m:generateContent", headers={"x-goog-api-key": key},
                       json={"contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]})
        elif protocol == "anthropic":
            r = c.post(url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": f"q{i}"}]})
        else:
            r = c.post(url + "/v1/chat/completions", headers={"authorization": "Bearer " + key},
                       json={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]})
        seen[r.status_code] += 1
print(json.dumps(seen))
"""


def hammer(url: str, jobs: list[tuple[str, str, int]]) -> list[dict[str, int]]:
    """Run one OS process per (protocol, key, n) at once; each sends n calls and reports the statuses it got."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, protocol, key, str(n)], stdout=subprocess.PIPE, text=True)
        for protocol, key, n in jobs
    ]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        out.append({int(k): v for k, v in json.loads(stdout).items()})
    return out


def total(seen: list[dict[str, int]], status: int) -> int:
    return sum(s.get(status, 0) for s in seen)


def test_processes_sharing_one_simulator_process_share_each_keys_window_exactly() -> None:
    config = {"rate_limits": {"default": {"requests": 40, "window_s": 600}}}
    with start_simulator_process(config, clock="manual") as proc:
        jobs = [("openai", KEY, 25), ("anthropic", KEY, 25), ("gemini", KEY, 25), ("openrouter", KEY, 25), ("openai", OTHER_KEY, 30)]
        seen = hammer(proc.url, jobs)
        stats = proc.stats()["keys"]
        mine, other = stats[key_id(KEY)], stats[key_id(OTHER_KEY)]
        # the four processes on KEY shared one window of 40: exactly 40 served, the other 60 refused
        assert total(seen[:4], 200) == mine["served"] == 40
        assert total(seen[:4], 429) == mine["answered_429"] == mine["rate_limited"] == 60
        assert mine["received"] == 100 and mine["max_in_window"] == 40
        assert seen[4] == {200: 30} and other["served"] == 30 and other["answered_429"] == 0  # its own window
        # ten minutes later, on the simulator's clock, the window is whole again, and only just
        proc.advance(599.5)
        assert hammer(proc.url, [("openai", KEY, 3)]) == [{429: 3}]
        proc.advance(0.5)
        seen = hammer(proc.url, [("openai", KEY, 30), ("gemini", KEY, 30)])
        assert total(seen, 200) == 40 and total(seen, 429) == 20
        stats = proc.stats(times=True)["keys"][key_id(KEY)]
        assert stats["received"] == 163 and stats["served"] == 80 and stats["max_in_window"] == 40
        assert most_in(stats["admitted_times"], 600) == 40


def test_processes_hammering_a_simulator_on_the_real_clock_never_exceed_the_window() -> None:
    limit, window = 10, 0.5
    with start_simulator_process({"rate_limits": {"default": {"requests": limit, "window_s": window}}}) as proc:
        seen = hammer(proc.url, [("openai", KEY, 60), ("anthropic", KEY, 60), ("gemini", KEY, 60)])
        stats = proc.stats(times=True)["keys"][key_id(KEY)]
    assert stats["received"] == 180 == total(seen, 200) + total(seen, 429)
    assert stats["served"] == total(seen, 200) and stats["answered_429"] == total(seen, 429)
    admitted, refused = stats["admitted_times"], stats["refused_times"]
    assert len(admitted) >= limit  # the first `limit` calls always fit
    # the limit holds in every window, and a call was refused only when its window was full
    assert most_in(admitted, window) <= limit
    for t in refused:
        assert sum(1 for a in admitted if 0 <= t - a < window) == limit


def test_serve_command_line_limits_every_key_and_stops_on_sigterm(client) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nbrouter.testing", "serve", "--requests", "2", "--window-s", "600"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        assert url.startswith("http://127.0.0.1:")
        codes = [client.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                             json={"model": "m", "messages": [{"role": "user", "content": "x"}]}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        proc.terminate()
        code = proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0

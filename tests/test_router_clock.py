"""Issue 21, one clock: what the router records and holds is read from its Clock, not the machine's.

Each test drives the real Router over loopback HTTP against the simulator on a `ManualClock`, turns the
clock by hand and checks each time against it: an attempt's start and latency, a breaker opening and
closing, a cooldown's end, the jitter of retry waits (from `Router(seed=...)`). Nothing sleeps on real time.
"""

from __future__ import annotations

import random
from typing import Any

import httpx

from conftest import sim_config
from nbrouter import Action, Router
from nbrouter.testing import ManualClock, RateLimited, Reply, ServerError


class SlowWire(httpx.AsyncBaseTransport):
    """Real HTTP to the simulator, through which every answer takes `seconds` of the clock's time: the
    clock moves while the response is on its way, as a slow provider's would."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.wire = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.wire.handle_async_request(request)
        self.clock.advance(self.seconds)
        return response

    async def aclose(self) -> None:
        await self.wire.aclose()


def _combo(*targets: str, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def _slow_router(sim: Any, make_router: Any, clock: ManualClock, seconds: float) -> tuple[Router, SlowWire]:
    wire = SlowWire(clock, seconds)
    return make_router(sim_config(sim, _combo("sim/a", "sim/b")), clock=clock, transport=wire), wire


def test_a_call_records_its_start_and_latency_on_the_router_clock(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    router, wire = _slow_router(sim, make_router, clock, 1.25)
    start = clock.time()
    result = router.complete("c", "hi")
    served = result.attempts[0]
    assert served.action is Action.SERVED and served.started_at == start
    assert served.latency_s == 1.25 and result.latency_s == 1.25
    streamed = router.complete("c", "hi", stream=True)
    assert streamed.attempts[0].started_at == start + 1.25
    assert streamed.ttft_s == 1.25 and streamed.latency_s == 1.25
    assert router.status().candidate("sim#default/a")["p50_s"] == 1.25
    assert clock.slept == []
    router.background.run(wire.aclose())


def test_a_breaker_opens_and_closes_on_the_router_clock(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, _combo("sim/a", "sim/b")), clock=clock)
    sim.script([ServerError(500)] * 5, model="a")
    for _ in range(4):
        router.complete("c", "hi")
    opened_at = clock.time()
    fifth = router.complete("c", "hi").attempts[0]
    assert fifth.hold == "breaker open" and fifth.hold_until == opened_at + 30  # breaker_open_s
    assert clock.slept == [0.25] * 5  # server_error_backoff_s before each advance, on the clock
    clock.advance(opened_at + 30 - clock.time() - 0.001)
    skipped = router.complete("c", "hi").attempts[0]
    assert skipped.action is Action.SKIPPED and skipped.hold_until == opened_at + 30
    clock.advance(0.001)
    assert router.status().candidate("sim#default/a")["breaker"] == "half_open"
    probe = router.complete("c", "hi")
    assert probe.served_by == "sim#default/a" and probe.attempts[0].started_at == opened_at + 30
    assert router.status().candidate("sim#default/a")["breaker"] == "closed"


def test_a_cooldown_holds_until_the_router_clock_passes_it(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, _combo("sim/a", "sim/b")), clock=clock)
    sim.script([RateLimited(retry_after=30)], model="a")
    now = clock.time()
    cooled = router.complete("c", "hi").attempts[0]
    assert cooled.hold_until == now + 30
    assert router.status().candidate("sim#default/a")["hold_left_s"] == 30
    clock.advance(29.5)
    skipped = router.complete("c", "hi").attempts[0]
    assert skipped.action is Action.SKIPPED and skipped.hold_until == now + 30
    assert skipped.message == "cooling down: rate limited (429) (0 s left)"
    assert router.status().candidate("sim#default/a")["hold_left_s"] == 0.5
    clock.advance(0.5)
    assert router.complete("c", "hi").served_by == "sim#default/a"
    assert clock.slept == []


def test_retry_jitter_draws_from_the_router_seed(sim: Any, make_router: Any) -> None:
    waits = []
    for _ in range(2):
        clock = ManualClock()
        router = make_router(sim_config(sim, _combo("sim/a", retries={"server_error": 2})), clock=clock, seed=7)
        sim.script([ServerError(500), ServerError(500), Reply("hi")], model="a")
        assert router.complete("c", "hi").text == "hi"
        waits.append(clock.slept)
    draws = random.Random(7)
    # retry_backoff_s x 2^(n-1), times a factor in [1 - retry_jitter, 1 + retry_jitter]
    expected = [0.5 * (0.75 + 0.5 * draws.random()), 1.0 * (0.75 + 0.5 * draws.random())]
    assert waits == [expected, expected]

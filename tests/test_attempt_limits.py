"""What the loop survives and bounds (issue 12, the loop's side; routing.md section 5, "Time limits"):
nothing raised in an attempt escapes it, time limits are wall-clock, a stream shows one answer, the HTTP
client is injectable and closes with its loop. Over real HTTP on loopback unless a test says otherwise."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from conftest import sim_config
from nbrouter import AllCoolingDown, AllTargetsFailed, ErrorKind, TextDelta
from nbrouter.testing import CutStream, ManualClock, RateLimited, Raw


def combo(*targets: Any, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def tried(sim: Any) -> list[str]:
    return [r.model for r in sim.requests]


class DripServer:
    """A loopback HTTP server that sends its status line and headers at once, then one byte of the body
    every `every_s` seconds, for as long as the client listens."""

    def __init__(self, every_s: float = 0.2, stream: bool = False) -> None:
        self.every_s = every_s
        self.stream = stream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            kind = "text/event-stream" if self.stream else "application/json"
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: 100000\r\n\r\n".encode())
            payload = b": keep-alive\n" if self.stream else b" "
            while not self.stopped.is_set():
                conn.sendall(payload)
                time.sleep(self.every_s)  # real I/O is the point: a server that drips bytes on real time
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


def _drip_config(sim: Any, drip: DripServer, **options: Any) -> dict[str, Any]:
    providers = {
        "slow": {"protocol": "openai", "base_url": drip.url, "api_key_env": "SIM_KEY"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    return sim_config(sim, combo("slow/m", "sim/b", **options), providers=providers)


def test_an_exception_while_reading_an_answer_falls_back_and_is_logged(sim, make_router) -> None:
    sim.script([Raw(200, {"choices": ["x"]})], model="a", repeat_last=True)
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    for _ in range(3):  # the same wall three times: every call still answers
        result = router.complete("c", "hi")
        assert result.served_by == "sim#default/b"
        first = result.attempts[0]
        assert first.kind is ErrorKind.MALFORMED_RESPONSE and first.action.value == "advance"
    rows = router.log(100)
    assert [r["kind"] for r in rows] == ["malformed_response", None] * 3
    assert len(router.state.breakers["sim#default/a"].failures) == 3  # it counts toward the breaker


def test_attempt_timeout_bounds_an_answer_that_drips(sim, make_router, drip) -> None:
    router = make_router(_drip_config(sim, drip, timeout_s=1))
    t0 = time.monotonic()
    result = router.complete("c", "hi")
    elapsed = time.monotonic() - t0
    assert result.served_by == "sim#default/b"
    assert result.attempts[0].kind is ErrorKind.TIMEOUT
    assert "ran past its limit of 1 s" in result.attempts[0].message
    assert elapsed < 1 + 4  # the limit plus a generous margin; without the wall-clock bound it ran until the body ended


def test_attempt_timeout_bounds_a_stream_that_drips(sim, make_router) -> None:
    server = DripServer(stream=True)
    try:
        router = make_router(_drip_config(sim, server, timeout_s=1))
        t0 = time.monotonic()
        events = list(router.stream("c", "hi"))
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    result = events[-1].result
    assert result.served_by == "sim#default/b" and result.attempts[0].kind is ErrorKind.TIMEOUT
    assert elapsed < 1 + 4


def test_call_deadline_bounds_the_whole_call(sim, make_router, drip) -> None:
    router = make_router(_drip_config(sim, drip, timeout_s=30, deadline_s=1))
    t0 = time.monotonic()
    with pytest.raises(AllTargetsFailed) as err:
        router.complete("c", "hi")
    assert time.monotonic() - t0 < 1 + 4
    kinds = [(a.kind, a.message) for a in err.value.attempts]
    assert kinds[0][0] is ErrorKind.TIMEOUT
    assert kinds[1] == (None, "call deadline passed")


def test_when_all_cooling_wait_never_waits_past_the_deadline(sim, make_router) -> None:
    sim.script([RateLimited(retry_after=40)], model="a")
    clock = ManualClock()
    router = make_router(sim_config(sim, combo("sim/a", when_all_cooling="wait", max_wait_s=60, deadline_s=10)), clock=clock)
    with pytest.raises(AllTargetsFailed):
        router.complete("c", "hi")
    with pytest.raises(AllCoolingDown):
        router.complete("c", "hi")
    assert clock.slept == []  # 40 s of cooldown does not fit in a 10 s deadline: fail at once


@pytest.mark.parametrize("error", ["overloaded", "server_error", "rate_limit"])
def test_an_error_event_after_text_stops_with_the_partial_and_the_deltas_add_up(sim, make_router, error) -> None:
    sim.script([CutStream(after_chunks=2, error=error)], model="a")
    router = make_router(sim_config(sim, combo("sim/a", "sim/b")))
    events = list(router.stream("c", "tell me a long story please"))
    result = events[-1].result
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert result.partial and result.text == shown
    assert tried(sim) == ["a"]  # no second answer glued onto the first
    assert [a.action.value for a in result.attempts] == ["stop"]


def test_a_transport_can_be_injected(sim) -> None:
    import httpx

    from nbrouter import Router

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        body = {"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the mock"},
                                                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
        return httpx.Response(200, json=body)

    config = {"providers": {"p": {"protocol": "openai", "base_url": "http://mock.invalid/v1", "api_key_env": "SIM_KEY"}},
              "combos": {"c": {"targets": ["p/m"]}}}
    with Router(config, persist=False, transport=httpx.MockTransport(handler)) as router:
        result = router.complete("c", "hi")
    assert result.text == "from the mock" and seen == ["http://mock.invalid/v1/chat/completions"]


def test_an_http_client_of_yours_is_used_and_left_open(sim) -> None:
    import httpx

    from nbrouter import Router

    async def main() -> tuple[str, bool]:
        async with httpx.AsyncClient() as client:
            router = Router(sim_config(sim, combo("sim/a")), persist=False, http_client=client)
            result = await router.acomplete("c", "hi")
            await router.aclose()
            router.close()
            return result.served_by, client.is_closed

    served, closed = asyncio.run(main())
    assert served == "sim#default/a" and not closed


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_asyncio_run_in_a_loop_does_not_leak_a_client_per_call(sim, make_router) -> None:
    router = make_router(sim_config(sim, combo("sim/a")))
    asyncio.run(router.acomplete("c", "warm up"))
    gc.collect()
    before = _open_fds()
    for _ in range(60):
        asyncio.run(router.acomplete("c", "hi"))
    gc.collect()
    assert _open_fds() - before < 10  # without closing per loop: one connection (and client) per call


# ---- the limit itself (router/deadlines.py, as Loop._attempt uses it) -----------------------------


async def _bounded(seconds: float, work: Any) -> str:
    """What `Loop._attempt` does around the sending: start a limit, tell its expiry from another cancel."""
    from nbrouter.router.run import deadlines

    limit = deadlines.start(seconds)
    try:
        return await work
    except asyncio.CancelledError:
        if not limit.expired:
            raise
        limit.absorb()
        return "timeout"
    finally:
        limit.stop()


def test_an_attempt_limit_fires_never_early_and_the_task_goes_on_normally() -> None:
    from nbrouter.router.run.deadlines import GRAIN_S

    async def main() -> tuple[str, float, int]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        outcome = await _bounded(0.05, asyncio.sleep(30))  # the limit's real timer cuts this wait
        elapsed = loop.time() - start
        await asyncio.sleep(0)  # a cancellation still pending would be raised here
        return outcome, elapsed, asyncio.current_task().cancelling()  # type: ignore[union-attr]

    outcome, elapsed, cancelling = asyncio.run(main())
    assert outcome == "timeout"
    assert elapsed >= 0.05 - GRAIN_S / 10  # the loop's clock: never before the limit
    assert cancelling == 0  # the limit's cancellation was taken back


def test_limits_that_share_a_timer_each_fire_and_the_ones_that_finish_leave_nothing_behind() -> None:
    from nbrouter.router.run import deadlines

    async def one(i: int) -> str:
        # the limits' real timer cuts the long waits (deadlines.py runs on the event loop's time)
        return await _bounded(0.05, asyncio.sleep(0 if i % 2 else 30, result=f"done {i}"))

    async def main() -> tuple[list[str], int]:
        results = await asyncio.gather(*(one(i) for i in range(40)))
        slots = deadlines._by_loop[asyncio.get_running_loop()].slots
        return results, sum(len(s) for s in slots.values())

    results, left = asyncio.run(main())
    assert results == [f"done {i}" if i % 2 else "timeout" for i in range(40)]
    assert left == 0


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> str:
        task = asyncio.ensure_future(_bounded(30, asyncio.sleep(30)))
        await asyncio.sleep(0)  # one turn of the loop: the task starts and waits inside its limit
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled"


def test_a_stopped_limit_never_cancels_what_the_task_does_next() -> None:
    # the next attempt of a call runs in the same task: the first attempt's limit must be gone with it
    async def main() -> list[str]:
        first = await _bounded(0.03, asyncio.sleep(0, result="first"))
        # a real wait: the limits run on the event loop's timer (deadlines.py), and this one outlives the
        # first limit's slot
        second = await _bounded(30, asyncio.sleep(0.1, result="second"))
        return [first, second]

    assert asyncio.run(main()) == ["first", "second"]

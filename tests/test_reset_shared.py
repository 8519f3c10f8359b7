"""What a Router shares with the other kernels through the store, beyond pacing itself: `reset()` refills the
buckets a 429 or a "remaining: 0" header emptied, the quota skip check reads every process's counts, and a
refused local server opens the breaker for every process at once.

Over loopback against the simulator, on an injected ManualClock: a wait the router would have made shows in
`clock.slept` (a ManualClock's sleep advances it), so "went at once" is checked without a stopwatch.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import sim_config
from nbrouter import RouteError
from nbrouter.router.state.pacing import PACING_MARGIN, Limit
from nbrouter.router.types import Action
from nbrouter.testing import ManualClock, RateLimited, Reply


def served_at_once(router: Any, clock: ManualClock, prompt: str) -> None:
    """The next call is sent to the first target without waiting and without a skip."""
    before, slept = clock.time(), len(clock.slept)
    result = router.complete("c", prompt, cache=False)
    assert result.served_by == "sim#default/m"
    assert [a.action for a in result.attempts] == [Action.SERVED], [(a.action, a.message) for a in result.attempts]
    assert clock.slept[slept:] == [] and clock.time() == before


def test_reset_refills_the_bucket_a_429_emptied_so_the_next_call_goes_at_once(sim, make_router) -> None:
    clock = ManualClock()
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}})
    config["providers"]["sim"]["quota"] = {"requests_per_minute": 600}
    router = make_router(config, clock=clock)
    sim.script([RateLimited(retry_after=30)], model="m")
    with pytest.raises(RouteError):
        router.complete("c", "first", cache=False)
    # without a reset the account waits out the retry-after: the store's bucket is empty until then (the
    # candidate's cooldown too, which a reset has always lifted)
    spec = Limit("sim#default", "requests", 60, 600).spec(PACING_MARGIN, 1, "interactive")
    assert router.background.run(router.shared.buckets("sim#default", [spec]))[spec.field] <= 0.0
    router.background.run(router.shared.clear_holds())
    reason, until = router.background.run(router.pacer.admit(_candidate(), 10, _interactive(), clock.time()))
    assert "600 requests/min" in reason and until - clock.time() > 29
    router.reset()
    served_at_once(router, clock, "after the reset")


def test_reset_refills_the_bucket_a_remaining_zero_header_emptied(sim, make_router) -> None:
    clock = ManualClock()
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=clock)
    # the first reply teaches the limit; the second, admitted by the store, says none is left
    sim.script([Reply("ok", rate_limit={"limit_requests": 3, "remaining_requests": left, "reset_requests_s": 60})
                for left in (2, 0)], model="m")
    router.complete("c", "first", cache=False)
    router.complete("c", "second", cache=False)
    reason, until = router.background.run(router.pacer.admit(_candidate(), 10, _interactive(), clock.time()))
    assert "3 requests/min" in reason and until > clock.time()  # a refill of one request is 20 s away
    router.reset()
    served_at_once(router, clock, "after the reset")


def _candidate() -> Any:
    from nbrouter.router.types import Candidate

    return Candidate("sim", "default", "m")


def _interactive() -> Any:
    from nbrouter.router.state.pacing import Lanes

    return Lanes("interactive")


# ---- quotas: every process's uses count --------------------------------------------------------------------


def quota_config(sim: Any, requests_per_day: int) -> dict[str, Any]:
    providers = {
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                "quota": {"requests_per_day": requests_per_day}},
        "spare": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    return sim_config(sim, {"c": {"targets": ["sim/m", "spare/m"]}}, providers=providers)


def test_the_quota_skip_check_counts_the_uses_of_another_router_on_the_same_state_file(sim, make_router) -> None:
    clock = ManualClock()
    a = make_router(quota_config(sim, 3), clock=clock)
    b = make_router(quota_config(sim, 3), clock=clock)  # another kernel: the same state file, its own memory
    assert [a.complete("c", f"a{i}", cache=False).served_by for i in range(2)] == ["sim#default/m"] * 2
    a.background.run(a.pacer.drain())
    clock.advance(1.5)  # (each router reads the store's counts at most once a second)
    assert b.complete("c", "b0", cache=False).served_by == "sim#default/m"
    b.background.run(b.pacer.drain())  # (a call's counts are written just behind it: in the store now)
    clock.advance(1.5)
    # a's own count says 2 of 3: the store's says 3
    result = a.complete("c", "a2", cache=False)
    assert result.served_by == "spare#default/m"
    assert result.attempts[0].action is Action.SKIPPED and "quota used up: 3/3 requests today" in result.attempts[0].message
    clock.advance(1.5)
    # status and explain say the same, in these kernels and in two that sent nothing yet (one asked for its
    # status first, the other for an explanation: each reads the store's counts itself)
    third, fourth = make_router(quota_config(sim, 3), clock=clock), make_router(quota_config(sim, 3), clock=clock)
    for router, status_first in ((third, True), (fourth, False), (a, True), (b, False)):
        for asked in ((True, False) if status_first else (False, True)):
            if asked:
                account = next(x for x in router.status().accounts if x["account"] == "sim#default")
                assert account["requests_day"] == 3 and account["headroom"] == 0.0
            else:
                row = next(r for r in router.explain("c", "next").rows if r.candidate.key == "sim#default/m")
                assert row.skipped and row.reason.startswith("quota used up: 3/3 requests today")


def test_the_quota_skip_check_adds_the_requests_sent_since_the_reading_on_any_model_of_the_account(sim, make_router) -> None:
    clock = ManualClock()
    config = quota_config(sim, 3)
    config["combos"]["n"] = {"targets": ["sim/n"]}  # another model of the same account
    a, b = make_router(config, clock=clock), make_router(config, clock=clock)
    assert [b.complete("c", f"b{i}", cache=False).served_by for i in range(2)] == ["sim#default/m"] * 2
    b.background.run(b.pacer.drain())
    clock.advance(1.5)
    # a reads the store's counts (2 of 3) before this call, then sends one on the account's other model
    assert a.complete("n", "a0", cache=False).served_by == "sim#default/n"
    # no new reading yet (less than a second): the store's 2 plus the 1 a sent since make 3, though a's own
    # count says 1 and the model asked about has sent nothing here
    result = a.complete("c", "a1", cache=False)
    assert result.served_by == "spare#default/m"
    assert "quota used up: 3/3 requests today" in result.attempts[0].message


# ---- a refused local server: the shared breaker opens at once --------------------------------------------------


def closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_refused_local_server_opens_the_shared_breaker_at_once_for_every_process(kind, sim, make_router, request) -> None:
    import uuid

    providers = {
        "local": {"preset": "ollama", "base_url": f"http://127.0.0.1:{closed_port()}/v1"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    config = sim_config(sim, {"c": {"targets": ["local/llama3", "sim/b"]}}, providers=providers,
                        state={"prefix": f"t-{uuid.uuid4().hex[:8]}:", "timeout_s": 2.0})
    options: dict[str, Any] = {"persist": False, "state_path": None} if kind == "memory" else {}
    if kind == "redis":
        options["state_url"] = request.getfixturevalue("redis_server").url()
    one = make_router(config, **options)
    other = one if kind == "memory" else make_router(config, **options)  # (memory: no other process shares it)
    assert one.shared.kind == kind
    result = one.complete("c", "hi")
    assert result.attempts[0].candidate == "local#default/llama3" and "refused" in result.attempts[0].message
    # one refused connection, though the breaker opens after 5 failures otherwise: open in the store too
    view = other.background.run(other.shared.breaker("local#default/llama3"))
    assert view.state == "open" and view.failures == 1

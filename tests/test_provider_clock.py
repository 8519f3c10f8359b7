"""Issue 21, one clock: the times a provider's reply names (a rate-limit reset in N seconds, a Retry-After
date, the next daily reset) are read against the router's Clock, not the machine's.

Each test drives the real Router over loopback against the simulator on a `ManualClock` whose time is
months away from the machine's, so a reset dated on the system clock shows at once (as already passed,
or as the wrong day).
"""

from __future__ import annotations

import email.utils
from datetime import datetime, timezone
from typing import Any

from conftest import sim_config
from nbrouter.testing import ManualClock, QuotaExceeded, Raw, Reply

#: 2027-06-15 17:00 UTC, 10:00 in Los Angeles (daylight time): 14 h before the next Pacific midnight,
#: 7 h before the next UTC midnight, and far from the 30 min a quota is held when no reset is known
JUNE_15_10AM_PACIFIC = datetime(2027, 6, 15, 17, 0, tzinfo=timezone.utc).timestamp()
#: 2027-06-16 00:00 in Los Angeles
JUNE_16_PACIFIC_MIDNIGHT = datetime(2027, 6, 16, 7, 0, tzinfo=timezone.utc).timestamp()


def _account(router: Any, name: str) -> dict[str, Any]:
    return next(a for a in router.status().accounts if a["account"] == name)


def _candidate(router: Any, key: str) -> dict[str, Any]:
    row = router.status().candidate(key)
    assert row is not None, key
    return row


def test_rate_limit_headers_reset_counts_from_the_router_clock(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    sim.script(Reply("hi", rate_limit={"limit_requests": 100, "remaining_requests": 2, "reset_requests_s": 40}), model="m")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}}), clock=clock)
    assert router.complete("c", "hello").text == "hi"
    account = _account(router, "sim#default")
    # 2 of 100 left, for 40 s of the router's time (dated on the system clock it had "already passed": 1.0)
    assert account["remaining_requests"] == 2
    assert account["headroom"] == 0.02
    assert account["reset_requests_in_s"] == 40
    clock.advance(39)
    assert _account(router, "sim#default")["headroom"] == 0.02
    clock.advance(2)
    assert _account(router, "sim#default")["headroom"] == 1.0  # the window reset on the clock's time


def test_retry_after_http_date_counts_from_the_router_clock(sim: Any, make_router: Any) -> None:
    clock = ManualClock()
    date = email.utils.formatdate(clock.time() + 120, usegmt=True)
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    sim.script(Raw(429, body, headers={"retry-after": date}), model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}), clock=clock)
    assert router.complete("c", "hello").served_by == "sim#default/b"
    row = _candidate(router, "sim#default/a")
    assert row["hold"] == "cooldown"
    assert row["hold_left_s"] == 120  # the date's distance from the clock's time, not from the machine's


def test_gemini_daily_quota_holds_the_account_until_the_next_pacific_midnight_of_the_clock(sim: Any, make_router: Any) -> None:
    clock = ManualClock(JUNE_15_10AM_PACIFIC)
    providers = {
        "gem": {"protocol": "gemini", "base_url": sim.gemini_url, "api_key_env": "SIM_KEY"},
        "sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
    }
    router = make_router(sim_config(sim, {"c": {"targets": ["gem/g", "sim/m"]}}, providers=providers), clock=clock)
    sim.script(QuotaExceeded(), model="g")  # 429 RESOURCE_EXHAUSTED, a PerDay quota id
    sim.script([Reply("from gemini")], model="g")
    result = router.complete("c", "hello")
    assert result.served_by == "sim#default/m"
    account = _account(router, "gem#default")
    assert account["hold"] == "cooldown"
    assert account["hold_left_s"] == JUNE_16_PACIFIC_MIDNIGHT - JUNE_15_10AM_PACIFIC  # 14 h, not 30 min
    # a second before midnight (Pacific) the account is still held; a second after, it serves
    clock.advance(JUNE_16_PACIFIC_MIDNIGHT - JUNE_15_10AM_PACIFIC - 1)
    assert router.complete("c", "again").served_by == "sim#default/m"
    clock.advance(2)
    assert router.complete("c", "and again").text == "from gemini"

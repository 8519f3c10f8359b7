"""routing.md section 6: what is remembered, across processes, and what happens when the file is bad."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import sim_config
from nbrouter import Router
from nbrouter.router.state.store import StateStore
from nbrouter.testing import NotFound, RateLimited, ServerError


def run_python(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60)


def test_a_lock_set_in_one_process_is_honoured_by_a_new_process(sim, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n\n[combos.c]\ntargets = ["sim/a", "sim/b"]\n')
    state = tmp_path / "shared.sqlite3"
    sim.script([NotFound()], model="a")
    code = f"""
        from nbrouter import Router
        r = Router({str(config)!r}, state_path={str(state)!r})
        res = r.complete("c", "hi")
        print(res.served_by, [a.action.value for a in res.attempts])
    """
    first = run_python(code)
    assert first.returncode == 0, first.stderr
    assert "sim#default/b ['advance', 'served']" in first.stdout
    sim.reset()
    second = run_python(code)
    assert second.returncode == 0, second.stderr
    assert "sim#default/b ['skipped', 'served']" in second.stdout
    assert [r.model for r in sim.requests] == ["b"]


def test_two_routers_on_one_file_see_each_others_cooldowns(sim, tmp_path: Path) -> None:
    state = tmp_path / "shared.sqlite3"
    config = sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}, policy={"state_refresh_s": 0.0})
    one, two = Router(config, state_path=state), Router(config, state_path=state)
    try:
        sim.script([RateLimited(retry_after=120)], model="a")
        one.complete("c", "hi")
        one.state.flush()
        sim.reset()
        result = two.complete("c", "hi")
        assert result.attempts[0].action.value == "skipped" and "cooling down" in result.attempts[0].message
        assert [r.model for r in sim.requests] == ["b"]
    finally:
        one.close()
        two.close()


def test_round_robin_counter_survives_a_restart(sim, tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite3"
    config = sim_config(sim, {"c": {"targets": ["sim/a", "sim/b", "sim/c"], "strategy": "round-robin"}})
    with Router(config, state_path=state) as r:
        served = [r.complete("c", "hi").served_by for _ in range(2)]
    with Router(config, state_path=state) as r:
        served.append(r.complete("c", "hi").served_by)
    assert served == ["sim#default/a", "sim#default/b", "sim#default/c"]


def test_expired_entries_are_dropped_when_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite3")
    try:
        now = time.time()
        store.set_hold("p#a/m", "cooldown", now + 0.05, "rate limited")
        assert store.hold("p#a/m", now) is not None
        assert store.hold("p#a/m", now + 1) is None
        assert "p#a/m" not in store.holds
        store.flush()
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    assert conn.execute("SELECT count(*) FROM state WHERE kind='hold'").fetchone()[0] == 0
    conn.close()


def test_a_corrupt_state_file_is_moved_aside_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.warns(RuntimeWarning, match="moved aside"):
        store = StateStore(path)
    try:
        assert store.persistent
        assert list(tmp_path.glob("s.sqlite3.*.bad"))
    finally:
        store.close()


def test_a_newer_state_file_is_moved_aside_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.warns(RuntimeWarning, match="newer nbrouter"):
        store = StateStore(path)
    try:
        assert store.persistent
    finally:
        store.close()


def test_an_unavailable_state_store_runs_on_memory_and_says_so(sim, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="running on memory"):
        router = Router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}), state_path=blocker / "state.sqlite3")
    try:
        sim.script([RateLimited(retry_after=60)], model="a")
        assert router.complete("c", "hi").served_by == "sim#default/b"
        assert router.complete("c", "hi").attempts[0].action.value == "skipped"  # memory still remembers
        assert "running on memory" in str(router.status())
    finally:
        router.close()


def test_the_call_log_has_one_row_per_attempt_with_prompt_and_response(sim, make_router) -> None:
    sim.script([ServerError(500)], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}))
    result = router.complete("c", "what is two plus two")
    rows = router.log(10)
    assert [(r["candidate"], r["action"], r["kind"]) for r in rows] == [("sim#default/a", "advance", "server_error"), ("sim#default/b", "served", None)]
    assert rows[0]["prompt"] == "what is two plus two" and rows[1]["response"] == result.text
    assert rows[1]["input_tokens"] == result.usage.input_tokens


def test_log_content_false_keeps_text_out_of_the_call_log(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a"]}}, log_content=False))
    router.complete("c", "a private question")
    (row,) = router.log(5)
    assert row["prompt"] is None and row["response"] is None and row["action"] == "served"


def test_state_memory_stays_bounded(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite3")
    try:
        now = time.time()
        for i in range(5000):
            store.record_outcome("p#a/m", now + i, ok=True, latency_s=0.1, ttft_s=None, streamed=False, cost=None, error=None)
        s = store.latency["p#a/m"]
        assert len(s.samples) == 100 and len(s.outcomes) == 100 and len(s.hour_buckets) <= 61
    finally:
        store.close()


def test_state_file_holds_no_secret(sim, make_router, tmp_path: Path) -> None:
    sim.script([NotFound()], model="a")
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b"]}}))
    router.complete("c", "hi")
    router.state.flush()
    data = (tmp_path / "state.sqlite3").read_bytes()
    wal = tmp_path / "state.sqlite3-wal"
    if wal.exists():
        data += wal.read_bytes()
    from conftest import SIM_KEY

    assert SIM_KEY.encode() not in data
    assert json.dumps(router.status().accounts).find(SIM_KEY) < 0


def test_a_logged_decision_can_be_replayed_to_the_same_order(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/a", "sim/b", "sim/c"], "strategy": "random"}}))
    result = router.complete("c", "hi")  # a seed is drawn and recorded
    (row,) = router.log(1)
    assert row["strategy"] == "random" and row["config_hash"] == router.config.hash
    assert row["seed"] == result.decision.seed
    replay = router.explain("c", "hi", seed=row["seed"])
    assert [c.key for c in replay.order] == [c.key for c in result.decision.order]


def test_an_older_call_log_gains_the_decision_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, call_id TEXT, ts REAL, combo TEXT, candidate TEXT, path TEXT, "
                 "action TEXT, kind TEXT, status INTEGER, latency_s REAL, ttft_s REAL, input_tokens INTEGER, output_tokens INTEGER, "
                 "cached_tokens INTEGER, cost_usd TEXT, message TEXT, request_id TEXT, hold TEXT, hold_until REAL, warning TEXT, "
                 "prompt TEXT, response TEXT)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = StateStore(path)
    try:
        cols = store.backend.columns("calls")
        assert {"strategy", "seed", "config_hash"} <= cols
    finally:
        store.close()


def test_a_rate_limit_window_whose_reset_has_passed_counts_as_refilled(tmp_path: Path) -> None:
    from nbrouter.providers.base import RateLimits

    store = StateStore(tmp_path / "s.sqlite3")
    try:
        now = time.time()
        store.record_ratelimits("p#a", RateLimits(limit_requests=100, remaining_requests=0, reset_requests_at=now + 30,
                                                  limit_tokens=1000, remaining_tokens=10, reset_tokens_at=now - 1))
        r = store.ratelimit("p#a", now)
        assert r is not None and r.remaining_requests == 0 and r.remaining_tokens == 1000
    finally:
        store.close()


# ---- time rules, driven by explicit times or a ManualClock (no sleeping) ------------------------------


def test_a_breaker_opens_after_enough_failures_within_the_window_only() -> None:
    from nbrouter.router.state.health import Breaker, BreakerState
    from nbrouter.router.policy import Policy

    policy = Policy(breaker_failures=3, breaker_window_s=60.0, breaker_open_s=30.0)
    b = Breaker()
    b.failure(1000.0, policy)
    b.failure(1070.0, policy)  # the first has left the window
    b.failure(1080.0, policy)
    assert b.at(1080.0) is BreakerState.CLOSED and b.failures == [1070.0, 1080.0]
    b.failure(1090.0, policy)
    assert b.at(1090.0) is BreakerState.OPEN and b.open_until == 1120.0 and b.failures == []
    assert b.admits(1119.9) == (False, 1120.0)


def test_an_open_breaker_half_opens_when_its_time_is_up_and_admits_one_probe() -> None:
    from nbrouter.router.state.health import Breaker, BreakerState

    b = Breaker()
    b.trip(1000.0, 30.0)
    assert b.at(1029.999) is BreakerState.OPEN
    assert b.admits(1030.0) == (True, None) and b.state is BreakerState.HALF_OPEN
    b.begin_probe(1030.0)
    assert b.admits(1030.5) == (False, None)  # one probe at a time
    b.end_probe()  # no verdict: the next may probe
    assert b.admits(1031.0) == (True, None)


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_cap_and_a_success_closes() -> None:
    from nbrouter.router.state.health import Breaker, BreakerState
    from nbrouter.router.policy import Policy

    policy = Policy(breaker_open_s=10.0, breaker_max_multiplier=4)
    b = Breaker()
    b.trip(0.0, policy.breaker_open_s)
    now = 0.0
    for expected in (20.0, 40.0, 40.0):
        now = b.open_until
        b.begin_probe(now)
        b.failure(now, policy)
        assert b.state is BreakerState.OPEN and b.open_for == expected and b.opened_at == now
    assert b.success() is True
    assert (b.state, b.multiplier, b.failures) == (BreakerState.CLOSED, 1, [])
    assert b.success() is False  # nothing left to change: nothing to write


def test_breaker_states_are_stored_and_shown_as_their_old_strings(tmp_path: Path) -> None:
    from nbrouter.router.state.store import HALF_OPEN, OPEN
    from nbrouter.testing import ManualClock

    clock = ManualClock()
    store = StateStore(tmp_path / "s.sqlite3", clock=clock)
    try:
        now = clock.time()
        b = store.breaker_failure("p#a/m", now, open_now=True)
        assert b.state == "open" and b.state is OPEN and f"{b.state}" == "open"
        store.flush()
        (value,) = sqlite3.connect(tmp_path / "s.sqlite3").execute("SELECT value FROM state WHERE kind='breaker'").fetchone()
        assert json.loads(value)["state"] == "open"
        clock.advance(store.policy.breaker_open_s)
        assert store.breaker_state("p#a/m", clock.time()) == "half_open" == HALF_OPEN
    finally:
        store.close()


def test_a_hold_that_expired_while_no_one_ran_is_not_loaded(tmp_path: Path) -> None:
    from nbrouter.testing import ManualClock

    clock = ManualClock()
    path = tmp_path / "s.sqlite3"
    with_clock = StateStore(path, clock=clock)
    with_clock.set_hold("p#a", "cooldown", clock.time() + 60, "quota exceeded")
    with_clock.set_hold("p#b", "lock", clock.time() + 600, "account locked")
    with_clock.close()
    clock.advance(61)
    later = StateStore(path, clock=clock)
    try:
        assert set(later.holds) == {"p#b"}
        assert later.hold("p#b", clock.time()) is not None
        assert later.holds["p#b"].updated == clock.time() - 61  # stamped by the store's clock
    finally:
        later.close()


def test_usage_windows_roll_over_at_the_minute_and_the_day() -> None:
    store = StateStore(persist=False)
    day = 20_000 * 86400.0
    store.record_usage("p#a", day + 59.0, 10)
    store.record_usage("p#a", day + 59.5, 5)
    w = store.usage_window("p#a", day + 59.9)
    assert (w.minute_requests, w.minute_tokens, w.day_requests, w.day_tokens) == (2, 15, 2, 15)
    w = store.usage_window("p#a", day + 60.0)
    assert (w.minute_requests, w.minute_tokens, w.day_requests, w.day_tokens) == (0, 0, 2, 15)
    w = store.usage_window("p#a", day + 86400.0)
    assert (w.day_requests, w.day_tokens) == (0, 0)


def test_refresh_is_spaced_by_the_stores_clock(tmp_path: Path) -> None:
    from nbrouter.router.policy import Policy
    from nbrouter.testing import ManualClock

    clock = ManualClock()
    path = tmp_path / "s.sqlite3"
    policy = Policy(state_refresh_s=5.0)
    reader, writer = StateStore(path, clock=clock, policy=policy), StateStore(path, clock=clock, policy=policy)
    try:
        reader.refresh()  # the first look
        writer.set_hold("p#a", "cooldown", clock.time() + 60, "quota exceeded")
        writer.flush()
        reader.refresh()
        assert "p#a" not in reader.holds  # not yet: the clock has not moved
        clock.advance(5.0)
        reader.refresh()
        assert "p#a" in reader.holds
    finally:
        reader.close()
        writer.close()


# ---- the file: one list of columns, numbered migrations, backends -------------------------------------


def test_a_file_written_by_schema_1_opens_migrates_and_keeps_everything(tmp_path: Path) -> None:
    import shutil

    from nbrouter.router.state.health import BreakerState, HoldKind
    from nbrouter.router.state.backends import CALL_NAMES, SCHEMA_VERSION

    path = tmp_path / "old.sqlite3"
    shutil.copy(Path(__file__).parent / "data" / "state-schema1.sqlite3", path)  # written by nbrouter before the split
    store = StateStore(path)
    try:
        assert store.persistent and store.warning is None
        assert store.holds["old#default/m"].kind is HoldKind.LOCK and store.holds["old#default"].detail == "fp:abcd"
        assert store.breakers["old#default/b"].state is BreakerState.OPEN
        assert store.counter("rr:c") == 2 and store.pointers["lkgp:c"] == "old#default/m"
        assert store.latency["old#default/m"].requests == 1 and store.usage["old#default"].day_tokens == 42
        r = store.ratelimit("old#default", 1_700_000_000.0)
        assert (r.limit_requests, r.remaining_requests) == (100, 7)
        (old,) = store.recent_log(5)
        assert (old["call_id"], old["response"], old["seed"]) == ("call-1", "hello", 7)
        store.log_attempts("call-2", "c", [], None, None)
        store.next_counter("rr:c")
        store.flush()
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[1] for r in conn.execute("PRAGMA table_info(calls)")] == ["id", *CALL_NAMES]
    assert conn.execute("SELECT value FROM state WHERE kind='counter' AND key='rr:c'").fetchone() == ("3",)
    conn.close()


def test_the_call_log_columns_drive_create_insert_and_select(tmp_path: Path) -> None:
    from nbrouter.router.state.backends import CALL_NAMES
    from nbrouter.router.types import Action, Attempt

    store = StateStore(tmp_path / "s.sqlite3")
    try:
        a = Attempt(candidate="p#a/m", path="c > p/m", action=Action.SERVED, started_at=1.0, status=200, request_id="r-1")
        store.log_attempts("call", "c", [a], "q", "answer", ("priority", 3, "h"))
        (row,) = store.recent_log(1)
        assert tuple(row) == CALL_NAMES
        assert (row["request_id"], row["response"], row["strategy"], row["seed"]) == ("r-1", "answer", "priority", 3)
        assert store.backend.columns("calls") == {"id", *CALL_NAMES}
    finally:
        store.close()


def test_a_memory_store_keeps_a_bounded_call_log_and_writes_no_file(tmp_path: Path, monkeypatch) -> None:
    from nbrouter.router.state.backends import MemoryBackend
    from nbrouter.router.types import Action, Attempt

    monkeypatch.setenv("NBROUTER_STATE", str(tmp_path / "never.sqlite3"))
    store = StateStore(persist=False)
    assert isinstance(store.backend, MemoryBackend) and not store.persistent and store.path is None
    small = StateStore(backend=MemoryBackend(max_calls=3))
    for i in range(5):
        a = Attempt(candidate="p#a/m", path="c", action=Action.SERVED, started_at=float(i))
        store.log_attempts(f"call-{i}", "c", [a], "q", "a")
        small.log_attempts(f"call-{i}", "c", [a], "q", "a")
    assert [r["call_id"] for r in store.recent_log(2)] == ["call-3", "call-4"]
    assert [r["call_id"] for r in small.recent_log(10)] == ["call-2", "call-3", "call-4"]
    assert not list(tmp_path.iterdir())



def test_at_exit_routers_close_first_then_stores_then_writers_and_the_background_loops_last(tmp_path: Path) -> None:
    # atexit is last-in, first-out: each module makes its set of live objects at import, in the reverse order
    code = f"""
        from nbrouter import Router
        from nbrouter.router.run.background import BackgroundLoop
        from nbrouter.router.state.store import StateStore
        from nbrouter.router.state.backends import BatchWriter

        watched = {{}}

        def noting(cls, name):
            original = getattr(cls, name)
            def wrapped(self, *args, **kwargs):
                if id(self) in watched:
                    print(watched[id(self)], flush=True)
                return original(self, *args, **kwargs)
            setattr(cls, name, wrapped)

        for cls, name in [(Router, "close"), (StateStore, "close"), (BatchWriter, "close"), (BackgroundLoop, "stop")]:
            noting(cls, name)
        bg = BackgroundLoop()
        bg.loop()  # started, and no router's
        store = StateStore({str(tmp_path / "state.sqlite3")!r})
        router = Router({{}}, persist=False)  # holds neither
        watched.update({{id(bg): "loop", id(store): "store", id(store._writer): "writer", id(router): "router"}})
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    first_seen = list(dict.fromkeys(done.stdout.split()))  # a store closes its own writer too
    assert first_seen == ["router", "store", "writer", "loop"]

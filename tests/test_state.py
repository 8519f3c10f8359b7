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
from nbrouter.router.state import StateStore
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
        cols = {r[1] for r in store._reader.execute("PRAGMA table_info(calls)")}
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

"""routing.md section 6, the hard cases: damaged, foreign and busy files, values SQLite refuses, killed and
terminated processes, and several processes on one file. Every test uses real files and, where a second
process matters, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import sim_config
from nbrouter import Router
from nbrouter.router.state.store import StateStore
from nbrouter.router.state.backends import SCHEMA_VERSION, SQLiteBackend
from nbrouter.router.types import Action, Attempt
from nbrouter.testing import NotFound, ServerError

SCHEMA_1 = Path(__file__).parent / "data" / "state-schema1.sqlite3"

#: helper code the subprocesses share: a served attempt to log
PRELUDE = """
import os, signal, sys, time
from nbrouter.router.types import Action, Attempt
def attempt(i):
    return Attempt(candidate="p#a/m", path="c > p/m", action=Action.SERVED, started_at=float(i), request_id=f"r-{i}")
"""


def spawn(*parts: str) -> subprocess.Popen[str]:
    """Start a Python subprocess running the code `parts` (after PRELUDE), with pipes for its stdio."""
    code = PRELUDE + "".join(textwrap.dedent(part) for part in parts)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    """Block until the subprocess prints `expected` (it is ready); fail with its stderr if it does not."""
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        proc.wait(timeout=30)
        err = proc.stderr.read()
        raise AssertionError(f"expected {expected!r} from the subprocess, got {line!r}; stderr:\n{err}")


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def moved_aside(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(path.name + ".*.bad"))


def served(i: int, **kw: Any) -> Attempt:
    return Attempt(candidate="p#a/m", path="c > p/m", action=Action.SERVED, started_at=float(i), **kw)


# ---- files that are not ours, or not whole ----------------------------------------------------------------


def _filled_file(path: Path, n: int = 300) -> None:
    store = StateStore(path)
    for i in range(n):
        store.set_hold(f"p#a/m{i}", "lock", 4e9, "model not found " + "x" * 200)
        store.log_attempts(f"call-{i}", "c", [served(i)], "q" * 1000, "a" * 1000)
    store.close()


def _assert_moved_aside_and_fresh(path: Path, record: list[warnings.WarningMessage], store: StateStore) -> None:
    (aside,) = moved_aside(path)
    messages = [str(w.message) for w in record if "moved aside" in str(w.message)]
    assert messages and str(path) in messages[0] and str(aside) in messages[0]
    assert store.persistent and store.holds == {}
    store.set_hold("p#a", "lock", 4e9, "account locked", durable=True)
    assert rows(path, "SELECT key FROM state WHERE kind='hold'") == [("p#a",)]


def test_a_file_with_damaged_pages_is_moved_aside_and_the_router_starts(sim, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    _filled_file(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # garbage over three pages in the middle of a real file
        f.seek(size // 2 // 4096 * 4096)
        f.write(bytes((i * 7 + 3) % 256 for i in range(3 * 4096)))
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        rows(path, "PRAGMA quick_check")  # the damage is real
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        router = Router(sim_config(sim, {"c": {"targets": ["sim/a"]}}), state_path=path)
    try:
        assert "damaged" in str(record[0].message) or "malformed" in str(record[0].message)
        _assert_moved_aside_and_fresh(path, record, router.state)
        assert router.complete("c", "hi").served_by == "sim#default/a"
    finally:
        router.close()


def test_a_file_with_an_undecodable_value_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    _filled_file(path, 3)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO state VALUES ('hold', 'p#x', CAST(x'ff00fe' AS TEXT), 1.0)")
    conn.commit()
    conn.close()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        store = StateStore(path)
    try:
        assert "decode" in str(record[0].message)
        _assert_moved_aside_and_fresh(path, record, store)
    finally:
        store.close()


@pytest.mark.parametrize("schema", [
    "CREATE TABLE state (id INTEGER PRIMARY KEY, name TEXT)",  # our table's name, not our columns
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); CREATE TABLE orders (id INTEGER)",
])
def test_another_programs_file_is_moved_aside_not_written_into(sim, tmp_path: Path, schema: str) -> None:
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.close()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        router = Router(sim_config(sim, {"c": {"targets": ["sim/a"]}}), state_path=path)
    try:
        _assert_moved_aside_and_fresh(path, record, router.state)
        (aside,) = moved_aside(path)
        tables = {t for (t,) in rows(aside, "SELECT name FROM sqlite_master WHERE type='table'")}
        assert "calls" not in tables  # their file was left as it was
    finally:
        router.close()


# ---- a busy file ------------------------------------------------------------------------------------------

HOLDER = """
import sqlite3
conn = sqlite3.connect({path!r}, isolation_level=None)
for sql in {begin!r}:
    conn.execute(sql)
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


#: what another process does to hold the write lock; readers still read a WAL file
IMMEDIATE = ["BEGIN IMMEDIATE"]
#: ... and what shuts readers out as well (a stuck program, a connection in exclusive locking mode)
EXCLUSIVE = ["PRAGMA locking_mode=EXCLUSIVE", "BEGIN EXCLUSIVE"]


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    wait_for_line(holder, "released")
    holder.wait(timeout=30)


def _quick(path: Path) -> SQLiteBackend:
    """The file with short lock waits, so that a held lock is met quickly."""
    return SQLiteBackend(path, busy_timeout_s=0.2, open_wait_s=0.1)


def test_a_write_lock_held_by_another_process_is_waited_out_never_taken_for_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    StateStore(path).close()
    inode = path.stat().st_ino
    with spawn(HOLDER.format(path=str(path), begin=IMMEDIATE)) as holder:
        wait_for_line(holder, "locked")
        store = StateStore(backend=_quick(path))
        with pytest.warns(RuntimeWarning, match="busy"):
            store.set_hold("p#a", "lock", 4e9, "account locked", durable=True)
        assert not store.persistent and "busy" in store.warning and str(path) in store.warning
        assert store.hold("p#a", time.time()) is not None  # memory still holds it
        assert moved_aside(path) == [] and path.stat().st_ino == inode
        _release(holder)
        store.flush()  # tries the file again at once
        assert store.persistent and store.warning is None
        assert rows(path, "SELECT key FROM state WHERE kind='hold'") == [("p#a",)]
        store.close()


@pytest.mark.parametrize("exclusive", [False, True], ids=["write lock, file to migrate", "exclusive lock"])
def test_a_file_busy_at_open_runs_on_memory_says_so_and_recovers(tmp_path: Path, exclusive: bool) -> None:
    import shutil

    path = tmp_path / "s.sqlite3"
    if exclusive:
        old = StateStore(path)
        old.set_hold("old#default/m", "lock", 4e9, "model not found")
        old.log_attempts("call-1", "c", [served(0)], "q", "a")
        old.close()
    else:
        shutil.copy(SCHEMA_1, path)  # it needs a migration, which needs the write lock
    with spawn(HOLDER.format(path=str(path), begin=EXCLUSIVE if exclusive else IMMEDIATE)) as holder:
        wait_for_line(holder, "locked")
        with pytest.warns(RuntimeWarning, match="running on memory") as record:
            store = StateStore(backend=_quick(path))
        assert str(path) in str(record[0].message) and "busy" in str(record[0].message)
        assert not store.persistent and str(path) in store.warning
        store.set_hold("p#new", "cooldown", 4e9, "quota exceeded", durable=True)
        store.log_attempts("call-new", "c", [served(1)], "q", "a")
        assert [r["call_id"] for r in store.recent_log(5)] == ["call-new"]  # waiting in memory
        assert moved_aside(path) == [] and path.exists()
        _release(holder)
    store.flush()  # tries the file again at once
    assert store.persistent and store.warning is None
    store.refresh()
    assert "old#default/m" in store.holds and "p#new" in store.holds  # the file's and our own
    assert ("p#new",) in rows(path, "SELECT key FROM state WHERE kind='hold'")
    assert [r["call_id"] for r in store.recent_log(5)] == ["call-1", "call-new"]
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    store.close()


# ---- values SQLite refuses ----------------------------------------------------------------------------------


def test_one_bad_row_costs_only_itself_and_odd_values_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = StateStore(path)
    try:
        conn = sqlite3.connect(path)  # a row no typing can save: the file itself refuses it
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON calls WHEN NEW.message = 'poison' "
                     "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        conn.commit()
        conn.close()
        odd = served(1, request_id={"id": "resp-1"}, status="429", latency_s="0.5")  # as a provider might send them
        attempts = [odd, served(2, message="poison"), served(3, message="fine \ud800 text")]
        store.set_hold("p#a", "lock", 4e9, "account locked")
        with pytest.warns(RuntimeWarning, match="could not be stored"):
            store.log_attempts("call-1", "c", attempts, "prompt \udcff", "answer")
            store.flush()
        assert "1 value(s)" in store.warning and "poisoned row" in store.warning
        log = store.recent_log(10)
        assert [r["ts"] for r in log] == [1.0, 3.0]
        assert log[0]["request_id"] == '{"id": "resp-1"}' and log[0]["status"] == 429 and log[0]["latency_s"] == 0.5
        assert log[0]["prompt"] == "prompt ?" and log[1]["message"] == "fine ? text"
        assert rows(path, "SELECT key FROM state WHERE kind='hold'") == [("p#a",)]
    finally:
        store.close()


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 257])
def test_a_batch_of_call_rows_lands_whole_in_order_and_typed(tmp_path: Path, n: int) -> None:
    """The call log is written with a few multi-row INSERTs (not a step per row): every row of a batch of any
    size arrives, in order, each value as given (text, real, integer, NULL)."""
    from nbrouter.router.state.backends import CALL_NAMES, typed_call

    backend = SQLiteBackend(tmp_path / "s.sqlite3")
    backend.open()
    try:
        def row(i: int) -> tuple[Any, ...]:
            values = {name: None for name in CALL_NAMES}
            values.update(call_id=f"call-{i}", ts=1000.0 + i, combo="c", candidate=f"p#a/m{i % 7}", action="served",
                          status=200 + i % 3, latency_s=i / 8, input_tokens=i, output_tokens=2 * i,
                          cost_usd=f"0.{i:06d}", message=f"row {i} \u00fc", seed=i * 1_000_003)
            return typed_call([values[name] for name in CALL_NAMES])

        rows_in = [row(i) for i in range(n)]
        assert backend.write([], [], rows_in) == []
        back = list(reversed(backend.recent_calls(n + 10)))
        assert [tuple(r[name] for name in CALL_NAMES) for r in back] == rows_in
    finally:
        backend.close()


# ---- killed and terminated processes ------------------------------------------------------------------------

#: a writer whose batch window never ends: only what is flushed reaches the file
NO_BATCHES = """
from nbrouter.router.state import backends as store_module
store_module.WRITE_BATCH_S = 3600.0
from nbrouter.router.state.store import StateStore
"""


def test_durable_holds_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    proc = spawn(NO_BATCHES, f"""
        s = StateStore({str(path)!r})
        s.log_attempts("call-0", "c", [attempt(0)], "q", "a")
        s.flush()  # the writer is now inside its batch window
        s.set_hold("p#quota", "cooldown", 4e9, "quota exceeded", durable=True)
        s.set_hold("p#locked", "lock", 4e9, "account locked", durable=True)
        s.set_hold("p#a/m", "cooldown", 4e9, "rate limited")  # batched
        print("held", flush=True)
        time.sleep(600)  # a real process, waiting to be killed
    """)
    with proc:
        wait_for_line(proc, "held")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    keys = {k for (k,) in rows(path, "SELECT key FROM state WHERE kind='hold'")}
    assert {"p#quota", "p#locked"} <= keys
    assert "p#a/m" not in keys  # the batch window is real: what was not made durable was lost
    store = StateStore(path)
    try:
        assert store.hold("p#quota", time.time()) is not None and store.hold("p#locked", time.time()) is not None
    finally:
        store.close()


@pytest.mark.parametrize("their_handler", [False, True])
def test_sigterm_flushes_the_pending_batch_and_keeps_what_sigterm_did(tmp_path: Path, their_handler: bool) -> None:
    path = tmp_path / "s.sqlite3"
    install = ('signal.signal(signal.SIGTERM, lambda *a: (print("theirs", flush=True), sys.exit(3)))'
               if their_handler else "")
    proc = spawn(NO_BATCHES, f"""
        {install}
        s = StateStore({str(path)!r})
        s.log_attempts("call-0", "c", [attempt(0)], "q", "a")
        s.flush()  # the writer is now inside its batch window
        for i in range(1, 40):
            s.log_attempts(f"call-{{i}}", "c", [attempt(i)], "q", "a")
        s.set_hold("p#a/m", "cooldown", 4e9, "rate limited")
        print("ready", flush=True)
        time.sleep(600)  # a real process, waiting for its SIGTERM
    """)
    with proc:
        wait_for_line(proc, "ready")
        assert rows(path, "SELECT count(*) FROM calls") == [(1,)]  # the rest waits in the batch
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    if their_handler:
        assert proc.returncode == 3 and "theirs" in out, err
    else:
        assert proc.returncode == -signal.SIGTERM, err
    assert rows(path, "SELECT count(*) FROM calls") == [(40,)]
    assert rows(path, "SELECT key FROM state WHERE kind='hold'") == [("p#a/m",)]


# ---- several processes on one file ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_processes_sharing_a_file_never_see_locked_errors_and_honour_each_others_locks(sim, tmp_path: Path, n: int) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[providers.sim]\nprotocol = "openai"\nbase_url = "{sim.openai_url}"\napi_key_env = "SIM_KEY"\n\n'
        '[policy]\nstate_refresh_s = 0.0\nserver_error_backoff_s = 0.0\n\n'
        '[combos.c]\ntargets = ["sim/a", "sim/b"]\n\n[combos.load]\ntargets = ["sim/x", "sim/y"]\n'
    )
    path = tmp_path / "shared.sqlite3"
    start, locked = tmp_path / "start", tmp_path / "locked"
    sim.script([ServerError(500)] * 10, model="x")  # some load falls back and counts toward a breaker
    sim.script([NotFound()], model="a")
    code = f"""
        import sys, time, warnings
        warnings.simplefilter("error")  # any warning of the store (busy, unavailable) fails the process
        from pathlib import Path
        from nbrouter import Router
        first = sys.argv[1] == "0"
        r = Router({str(config)!r}, state_path={str(path)!r})
        print("up", flush=True)
        while not Path({str(start)!r}).exists():
            time.sleep(0.01)  # real processes meet through files
        for _ in range(25):
            assert r.complete("load", "hi").text
        if first:
            res = r.complete("c", "hi")
            assert [a.action.value for a in res.attempts] == ["advance", "served"], res.attempts
            r.state.flush()
            Path({str(locked)!r}).touch()
        else:
            while not Path({str(locked)!r}).exists():
                time.sleep(0.01)  # real processes meet through files
            for _ in range(5):
                res = r.complete("c", "hi")
                assert res.attempts[0].action.value == "skipped" and res.served_by == "sim#default/b", res.attempts
        assert r.state.warning is None, r.state.warning
        r.close()
        print("done", flush=True)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        for p in procs:
            wait_for_line(p, "up")
        start.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and "done" in out, err
        assert "database is locked" not in err and "Traceback" not in err
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(path, "SELECT count(DISTINCT call_id) FROM calls") == [(n * 25 + 1 + (n - 1) * 5,)]
    assert [r.model for r in sim.requests].count("a") == 1  # the lock one set, every other process honoured


@pytest.mark.parametrize("make_path", [lambda tmp: tmp, lambda tmp: 5], ids=["a directory", "not a path"])
def test_a_state_path_that_cannot_be_a_file_runs_on_memory_and_moves_nothing(tmp_path: Path, make_path: Any) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.warns(RuntimeWarning, match="running on memory"):
        store = StateStore(make_path(tmp_path))
    try:
        assert not store.persistent and "running on memory" in store.warning
        store.set_hold("p#a", "lock", 4e9, "account locked", durable=True)
        assert store.hold("p#a", time.time()) is not None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    finally:
        store.close()


def test_sigterm_is_left_alone_when_ignored_or_when_the_store_starts_off_the_main_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with spawn(f"""
        import threading
        from nbrouter.router.state.store import StateStore
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        StateStore({str(path)!r})
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, flush=True)
    """) as ignored, spawn(f"""
        import threading
        from nbrouter.router.state.store import StateStore
        t = threading.Thread(target=StateStore, args=({str(path)!r},))
        t.start(); t.join()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
    """) as threaded:
        wait_for_line(ignored, "True")
        wait_for_line(threaded, "True")


def test_a_quota_hold_set_by_a_call_survives_kill_9_right_after_the_call_returns(sim, tmp_path: Path) -> None:
    """routing.md section 6: the holds that protect an account for long are on disk before the call returns."""
    from nbrouter import Router
    from nbrouter.testing import QuotaExceeded

    sim.script([QuotaExceeded()], model="a")
    state = tmp_path / "state.sqlite3"
    config = {"providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"},
                            "other": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"}},
              "combos": {"c": {"targets": ["sim/a", "other/b"]}}}
    code = (
        "import json, os, signal, sys\n"
        "from nbrouter import Router\n"
        f"router = Router(json.loads({json.dumps(json.dumps(config))}), state_path={str(state)!r})\n"
        "result = router.complete('c', 'hi')\n"
        "print(result.served_by, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == -signal.SIGKILL and done.stdout.strip() == "other#default/b", done.stderr
    with Router(config, state_path=state) as after:
        account = after.status().account("sim#default")
        assert account["hold"] == "cooldown" and account["hold_reason"] == "quota exceeded"
        assert [r.candidate.key for r in after.explain("c", "hi").skipped] == ["sim#default/a"]


def test_a_reset_stays_reset_when_the_store_reads_its_file_again(sim, make_router) -> None:
    """A reset is written in a batch; a refresh that reads the file before it lands must not bring the hold back."""
    from nbrouter.testing import ManualClock, RateLimited

    sim.script([RateLimited(retry_after=300)], model="a")
    clock = ManualClock()
    config = {"providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY"}},
              "combos": {"c": {"targets": ["sim/a", "sim/b"]}}}
    router = make_router(config, clock=clock)
    router.complete("c", "hi")
    router.state.flush()  # the hold is in the file
    clock.advance(2)  # past state_refresh_s: the next status() reads the file
    assert router.reset("sim#default/a") == 1
    assert router.status().candidate("sim#default/a")["hold"] is None
    clock.advance(2)
    assert router.status().candidate("sim#default/a")["hold"] is None
    assert router.complete("c", "again").served_by == "sim#default/a"

"""The Redis store against a real redis-server when things go wrong: killed in the middle of use, restarted
empty, paused (SIGSTOP), a wrong password; and what it keeps: every key of a script in one Cluster slot,
no API key anywhere in the keyspace, one round trip per admission, a mirror read at most once a second.

No test asserts how long anything took: a paused server is shown by what the verbs counted (they returned,
and reported a timeout), not by a stopwatch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import uuid
from typing import Any, Awaitable, Iterator, TypeVar

import pytest

from nbrouter._core import remember_secret
from nbrouter.router.errors import ComboConfigError
from nbrouter.router.state.guarded import GuardedState, open_shared
from nbrouter.router.state.shared import (
    AddCount,
    AdmitRequest,
    BucketSpec,
    ExtendHold,
    ReleaseSlot,
    SlotRequest,
    StoreDown,
    Window,
)
from nbrouter.router.state.shared_redis import RedisShared, parse_redis_url, redact_url
from nbrouter.testing import ManualClock

T = TypeVar("T")
ACCOUNT = "sim#main"
CANDIDATE = "sim#main/model-a"
#: the store's timeout in tests that are not about it: two shared cores under load can take longer than
#: the default 250 ms to answer, and a test must not see an outage that did not happen
SLACK_S = 2.0


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def runner(loop: asyncio.AbstractEventLoop) -> Any:
    def run(coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro
        return loop.run_until_complete(wrap())
    return run


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}:"


def bucket(capacity: float = 100.0) -> BucketSpec:
    return BucketSpec(ACCOUNT, "requests/60", rate=capacity / 60, capacity=capacity, initial=capacity)


def admit_request() -> AdmitRequest:
    return AdmitRequest(ACCOUNT, holds=(CANDIDATE, ACCOUNT), buckets=(bucket(),), slot=SlotRequest(4, 60))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nbrouter" and "not answering" in r.getMessage()]


# ---- killed, restarted empty -------------------------------------------------------------------------------


def test_a_killed_redis_leaves_calls_going_locally_with_one_warning_and_the_mode_shown(
        start_redis: Any, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    run, server = runner(loop), start_redis()
    g = open_shared(url=server.url(), prefix=prefix(), share=0.5, timeout_s=SLACK_S)
    assert isinstance(g, GuardedState) and g.mode == "shared" and g.warning is None
    import time as _time

    run(g.extend_hold(CANDIDATE, "cooldown", _time.time() + 600, "429 met before the outage"))
    assert all(run(g.admit(AdmitRequest(ACCOUNT, buckets=(bucket(),)))).admitted for _ in range(5))
    run(g.apply([AddCount("sent", 5, Window.forever())]))
    server.stop()  # SIGKILL, in the middle of use
    caplog.set_level(logging.WARNING, logger="nbrouter")
    answers = [run(g.admit(AdmitRequest(ACCOUNT, buckets=(bucket(),), slot=SlotRequest(4, 60)))) for _ in range(40)]
    run(g.apply([AddCount("sent", 3, Window.forever()), ReleaseSlot(ACCOUNT, "x")]))
    assert not run(g.probe()) and not run(g.probe())  # tried again, twice, and still down
    assert g.mode == "local" and g.warning is not None and "not answering" in g.warning and "50%" in g.warning
    assert g.failures == 3 and g.outages == 1
    assert len(warnings_of(caplog)) == 1  # one warning for the outage, not one per call or per try
    assert all(a.local for a in answers) and sum(a.admitted for a in answers) == 2  # half of 4 slots
    # the hold met before the outage still keeps calls back (the mirror has it)
    held = run(g.admit(AdmitRequest(ACCOUNT, holds=(CANDIDATE,))))
    assert not held.admitted and held.reason == "held" and held.local
    assert g.local_answers >= 40
    assert run(g.count("sent", Window.forever())) == 3  # locally, what was added while down
    run(g.close())


def test_a_redis_restarted_empty_gets_the_holds_again_and_what_was_counted_meanwhile(
        start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    import time as _time

    run, server, p = runner(loop), start_redis(), prefix()
    g = open_shared(url=server.url(), prefix=p, timeout_s=SLACK_S)
    assert isinstance(g, GuardedState)
    run(g.extend_hold(CANDIDATE, "cooldown", _time.time() + 600, "before"))
    run(g.settle())
    server.stop()
    run(g.extend_hold("sim#spare/model-b", "lock", _time.time() + 900, "set while Redis was away"))
    run(g.add("budget", 0.25, Window.forever()))
    assert g.mode == "local"
    server.restart()  # the same port, nothing kept
    other = RedisShared(server.url(), prefix=p)
    assert run(other.holds()) == {}
    assert run(g.probe())
    run(g.settle())
    assert g.mode == "shared" and g.warning is None and g.recoveries == 1
    assert sorted(run(other.holds())) == sorted([CANDIDATE, "sim#spare/model-b"])
    assert run(other.count("budget", Window.forever())) == 0.25
    run(other.close())
    run(g.close())


def test_a_restart_between_calls_is_noticed_by_the_marker_and_the_mirror_writes_the_holds_back(
        start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    import time as _time

    run, server, p = runner(loop), start_redis(), prefix()
    clock = ManualClock(_time.time())
    g = open_shared(url=server.url(), prefix=p, clock=clock, timeout_s=SLACK_S)
    assert isinstance(g, GuardedState)
    run(g.extend_hold(ACCOUNT, "lock", clock.time() + 3600, "daily quota"))
    run(g.settle())
    server.restart()  # no verb failed: the next one simply finds an empty server
    assert run(g.admit(AdmitRequest(ACCOUNT, buckets=(bucket(),)))).admitted  # its scripts are loaded again
    run(g.refresh(force=True))
    other = RedisShared(server.url(), prefix=p)
    assert list(run(other.holds())) == [ACCOUNT]
    run(other.close())
    run(g.close())


def test_write_back_only_extends_a_hold_another_kernel_set_longer(start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    import time as _time

    run, server, p = runner(loop), start_redis(), prefix()
    g = open_shared(url=server.url(), prefix=p, timeout_s=SLACK_S)
    assert isinstance(g, GuardedState)
    run(g.admit(AdmitRequest(ACCOUNT)))
    os.kill(server.pid, signal.SIGSTOP)
    try:
        run(g.extend_hold(CANDIDATE, "cooldown", _time.time() + 30, "short, here"))
        assert g.mode == "local"
    finally:
        os.kill(server.pid, signal.SIGCONT)
    other = RedisShared(server.url(), prefix=p)
    run(other.extend_hold(CANDIDATE, "cooldown", _time.time() + 3000, "long, elsewhere"))
    assert run(g.probe())
    run(g.settle())
    after = run(other.holds())[CANDIDATE]
    assert after.reason == "long, elsewhere" and after.until > _time.time() + 2000
    assert g.mirror_holds()[CANDIDATE].reason == "long, elsewhere"  # and the mirror was read afresh
    run(other.close())
    run(g.close())


# ---- paused: the timeout holds --------------------------------------------------------------------------------


def test_a_paused_redis_costs_one_timeout_then_answers_locally_until_it_is_tried_again(
        start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    run, server = runner(loop), start_redis()
    g = open_shared(url=server.url(), prefix=prefix(), timeout_s=SLACK_S)
    raw = RedisShared(server.url(), prefix=prefix(), timeout_s=SLACK_S)
    assert isinstance(g, GuardedState)
    assert run(g.admit(admit_request())).admitted and run(raw.count("x", Window.minute())) == 0
    os.kill(server.pid, signal.SIGSTOP)
    try:
        # the raw store gives up at its timeout and says so
        with pytest.raises(StoreDown) as caught:
            run(raw.add("x", 1, Window.minute()))
        assert caught.value.timeout and "no answer within 2000 ms" in str(caught.value)
        # the guarded store: the first verb met the timeout, the 30 after it did not try the store at all
        answers = [run(g.admit(admit_request())) for _ in range(31)]
        assert g.timeouts == 1 and g.failures == 1 and g.local_answers == 31
        assert all(a.local for a in answers) and g.mode == "local"
        assert not run(g.probe())  # tried again now: one more timeout, and still down
        assert g.timeouts == 2
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert run(g.probe()) and g.mode == "shared"
    run(raw.close())
    run(g.close())


def test_in_wait_mode_admissions_wait_for_the_store_and_other_verbs_go_on(start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    run, server = runner(loop), start_redis()
    g = open_shared(url=server.url(), prefix=prefix(), on_down="wait")
    assert isinstance(g, GuardedState)
    server.stop()
    refused = run(g.admit(admit_request()))
    assert not refused.admitted and refused.reason == "store" and refused.wait_s > 0 and refused.local
    assert g.mode == "wait" and g.warning is not None and "calls wait for it" in g.warning
    assert run(g.add("n", 2, Window.minute())) == 2 and run(g.next_turn("rr", 3)) == 0
    run(g.close())


def test_a_host_that_does_not_answer_at_start_is_down_not_an_error(loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = open_shared(url=f"redis://:secret-pw-123@127.0.0.1:{port}/0")
    assert isinstance(g, GuardedState) and g.mode == "local"
    assert g.warning is not None and "secret-pw-123" not in g.warning and "***" in g.warning
    run = runner(loop)
    assert run(g.admit(admit_request())).admitted
    run(g.close())


# ---- URLs and credentials -----------------------------------------------------------------------------------------


def test_a_wrong_password_is_a_clear_error_without_the_password(start_redis: Any, loop: asyncio.AbstractEventLoop) -> None:
    server = start_redis(password="right-pw-4711")
    for url in (f"redis://:wrong-pw-0815@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0",
                f"redis://someone:wrong-pw-0815@127.0.0.1:{server.port}/0"):
        with pytest.raises(ComboConfigError) as caught:
            open_shared(url=url, where="NBROUTER_STATE_URL")
        text = str(caught.value)
        assert "refused the credentials" in text and "NBROUTER_STATE_URL" in text and str(server.port) in text
        assert "wrong-pw-0815" not in text and "right-pw-4711" not in text
    g = open_shared(url=server.url(), prefix=prefix(), timeout_s=SLACK_S)
    assert isinstance(g, GuardedState) and g.mode == "shared"
    run = runner(loop)
    assert run(g.admit(admit_request())).admitted
    run(g.close())


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:6379/0", "unknown scheme 'http'"),
    ("127.0.0.1:6379", "no scheme"),
    ("redis://:pw-9999@127.0.0.1:notaport/0", "Port could not be cast"),
    ("redis://:pw-9999@127.0.0.1:6379/zero", "the database must be a number"),
    ("redis://:pw-9999@/0", "no host"),
    ("redis://:pw-9999@127.0.0.1:6379/0?ssl_cert_reqs=none", "options after"),
])
def test_a_malformed_url_or_unknown_scheme_is_a_clear_error_without_the_password(url: str, why: str) -> None:
    with pytest.raises(ComboConfigError) as caught:
        open_shared(url=url, where="Router(state_url=)")
    text = str(caught.value)
    assert why in text and "Router(state_url=)" in text and "pw-9999" not in text


def test_rediss_means_tls_and_urls_are_shown_without_their_password() -> None:
    u = parse_redis_url("rediss://app:s3cret-pw@cache.example.org:6380/2")
    assert (u.tls, u.host, u.port, u.db, u.username, u.password) == (True, "cache.example.org", 6380, 2, "app", "s3cret-pw")
    assert u.shown == "rediss://app:***@cache.example.org:6380/2"
    plain = parse_redis_url("redis://localhost")
    assert (plain.tls, plain.port, plain.db, plain.password) == (False, 6379, 0, None) and plain.shown == "redis://localhost:6379/0"
    assert redact_url("redis://:p%40ss@h:1/0") == "redis://:***@h:1/0"
    assert "s3cret" not in repr(RedisShared("rediss://app:s3cret-pw@cache.example.org:6380/2"))


# ---- what is kept in Redis ----------------------------------------------------------------------------------------


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as Redis Cluster computes key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The Cluster slot of a key: the hash tag between the first "{" and the next "}" if not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key.encode()) % 16384


def test_crc16_matches_redis_clusters_reference_value() -> None:
    assert crc16(b"123456789") == 0x31C3  # the reference check value of CRC-16/XMODEM
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")


def every_verb(run: Any, store: Any) -> None:
    import time as _time

    now = _time.time()
    run(store.add(ACCOUNT + ":requests", 1, Window.minute(sliding=True)))
    run(store.count(ACCOUNT + ":requests", Window.day()))
    run(store.extend_hold(CANDIDATE, "cooldown", now + 60, "429"))
    run(store.holds())
    run(store.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=0.001))
    run(store.breaker_admits(CANDIDATE, probe_ttl_s=5))
    run(store.end_probe(CANDIDATE))
    run(store.breaker(CANDIDATE))
    run(store.deal("combo:x", 4))
    run(store.least_used("combo:x", ["a", "b"]))
    run(store.admit(AdmitRequest(ACCOUNT, holds=(ACCOUNT,), buckets=(bucket(),), slot=SlotRequest(2, 60), breaker=CANDIDATE)))
    slot = run(store.acquire_slot(ACCOUNT, SlotRequest(2, 60)))
    run(store.buckets(ACCOUNT, [bucket()]))
    run(store.apply([ReleaseSlot(ACCOUNT, slot or "x"), ExtendHold("sim#spare/m", "lock", now + 60, "x"),
                     AddCount("budget", 0.5, Window.forever())]))
    run(store.clear_holds("spare"))
    run(store.clear_buckets(CANDIDATE))  # a script per account found, each on its own key


def test_every_script_call_keeps_its_keys_in_one_cluster_slot(redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    run, p = runner(loop), prefix()
    store = RedisShared(redis_server.url(), prefix=p)
    run(store.count("warm", Window.minute()))  # the monitor below sees the verbs, not the first connect
    seen: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    def watch() -> None:
        with redis_server.client() as client, client.monitor() as m:
            ready.set()
            for event in m.listen():
                seen.append(event["command"])
                if "STOP-MONITOR" in event["command"] or stop.is_set():
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    every_verb(run, store)
    with redis_server.client() as plain:
        plain.echo("STOP-MONITOR")
    t.join(10)
    scripts = [c.split() for c in seen if c.upper().startswith(("EVALSHA", "EVAL "))]
    assert len(scripts) >= 12
    for words in scripts:
        n = int(words[2].strip('"'))
        keys = [w.strip('"') for w in words[3:3 + n]]
        assert keys and all(k.startswith(p) for k in keys)
        assert len({key_slot(k) for k in keys}) == 1, keys
    admits = [w for w in scripts if int(w[2].strip('"')) == 4]
    assert admits and all(len({key_slot(k.strip('"')) for k in w[3:7]}) == 1 for w in admits)
    run(store.close())


def test_clear_buckets_finds_every_account_of_its_prefix_and_no_other_prefix(redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    run = runner(loop)
    odd = RedisShared(redis_server.url(), prefix=f"t-{uuid.uuid4().hex[:6]}*?:", timeout_s=SLACK_S)  # glob characters
    near = RedisShared(redis_server.url(), prefix=odd.prefix.replace("*?", "[x]y"), timeout_s=SLACK_S)
    accounts = [f"sim#acct{i}" for i in range(25)]
    for store in (odd, near):
        for account in accounts:
            spec = BucketSpec(account, "requests/60", rate=1e-6, capacity=1, initial=1)
            assert run(store.admit(AdmitRequest(account, buckets=(spec,)))).admitted
    assert run(odd.clear_buckets("acct1")) == 11  # acct1, acct10..acct19
    assert run(odd.clear_buckets()) == 14
    # the other prefix (a pattern of the first would match it, were its glob characters not escaped) keeps its own
    spec = BucketSpec(accounts[0], "requests/60", rate=1e-6, capacity=1, initial=1)
    assert not run(near.admit(AdmitRequest(accounts[0], buckets=(spec,)))).admitted
    assert run(odd.admit(AdmitRequest(accounts[0], buckets=(spec,)))).admitted
    run(odd.close())
    run(near.close())


def dump_keyspace(client: Any) -> str:
    """Every key and every value in the server, as text."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(client.get(key))
        elif kind == "hash":
            parts += [f"{k}={v}" for k, v in client.hgetall(key).items()]
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += sorted(client.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    return "\n".join(str(x) for x in parts)


def test_no_api_key_or_any_part_of_one_is_kept_in_redis(redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    import hashlib
    import time as _time

    run = runner(loop)
    secret = "zq7-" + uuid.uuid4().hex  # a key of no well-known shape: only the remembered value catches it
    remember_secret(secret)
    g = open_shared(url=redis_server.url(), prefix=prefix(), timeout_s=SLACK_S)
    now = _time.time()
    every_verb(run, g)
    fp = hashlib.sha256(secret.encode()).hexdigest()[:12]
    run(g.extend_hold(CANDIDATE, "disabled", now + 600, f"401: the key {secret} was refused", detail=fp))
    run(g.apply([ExtendHold(ACCOUNT, "lock", now + 60, f"quota of {secret[:20]}... Bearer {secret}")]))
    run(g.settle())
    with redis_server.client() as plain:
        text = dump_keyspace(plain)
    assert "refused" in text and fp in text  # the test did see the values it wrote
    pieces = {secret[i:i + 8] for i in range(len(secret) - 7)}
    assert not [piece for piece in pieces if piece in text]
    run(g.close())


# ---- round trips and the mirror ------------------------------------------------------------------------------------


def test_an_admission_is_one_command_on_the_server_and_the_writes_after_a_call_one_round_trip(
        redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    run = runner(loop)
    store = RedisShared(redis_server.url(), prefix=prefix())
    run(store.admit(admit_request()))  # scripts loaded, connection made
    with redis_server.client() as plain:
        plain.config_resetstat()
        trips = store.round_trips
        for _ in range(10):
            run(store.admit(admit_request()))
        calls = {name: v["calls"] for name, v in plain.info("commandstats").items()}
    # one EVALSHA per admission; the commands it ran inside count too, but nothing else was sent
    assert calls["cmdstat_evalsha"] == 10 and store.round_trips - trips == 10
    assert not {"cmdstat_ping", "cmdstat_script|load", "cmdstat_eval"} & set(calls)
    trips = store.round_trips
    run(store.apply([ReleaseSlot(ACCOUNT, "a"), AddCount("sent", 1, Window.minute()), AddCount("tok", 99, Window.minute()),
                     ExtendHold(CANDIDATE, "cooldown", 1e10, "x")]))
    assert store.round_trips - trips == 1
    run(store.close())


def test_the_mirror_of_holds_is_read_at_most_once_a_second(redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    import time as _time

    run, p = runner(loop), prefix()
    clock = ManualClock(_time.time())
    g = open_shared(url=redis_server.url(), prefix=p, clock=clock, timeout_s=SLACK_S)
    assert isinstance(g, GuardedState)
    other = RedisShared(redis_server.url(), prefix=p)
    run(g.admit(admit_request()))
    run(g.settle())
    run(other.extend_hold(ACCOUNT, "cooldown", _time.time() + 600, "met by another kernel"))
    for _ in range(20):
        run(g.count("n", Window.minute()))
    run(g.settle())
    assert ACCOUNT not in g.mirror_holds()  # the clock has not moved: no read since the first
    clock.advance(1.0)
    run(g.count("n", Window.minute()))
    run(g.settle())
    assert g.mirror_holds()[ACCOUNT].reason == "met by another kernel"
    run(other.close())
    run(g.close())


# ---- where the URL comes from: Router(state_url=) > NBROUTER_STATE_URL > [state] url -----------------------------

PROVIDERS = {"providers": {"sim": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "SIM_KEY"}}}


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Any, state: str) -> Any:
    path = tmp_path / "nbrouter.toml"
    path.write_text('[providers.sim]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "SIM_KEY"\n\n'
                    f"[state]\n{state}\n")
    return path


def test_the_state_url_comes_from_the_argument_then_the_environment_then_the_file(
        redis_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, make_router: Any) -> None:
    from nbrouter import Router

    file_port, arg_port = dead_port(), dead_port()
    config = write_config(tmp_path, f'url = "redis://127.0.0.1:{file_port}/0"\nprefix = "team-a:"\non_down = "wait"\nshare = 0.5\ntimeout_s = {SLACK_S}')
    r = make_router(config)
    assert r.shared.kind == "redis" and f":{file_port}/" in r.shared.where and r.shared.mode == "wait"
    assert r.shared.store.prefix == "team-a:" and r.shared.share == 0.5
    monkeypatch.setenv("NBROUTER_STATE_URL", redis_server.url())
    r = make_router(config)
    assert f":{redis_server.port}/" in r.shared.where and r.shared.mode == "shared"
    r = make_router(config, state_url=f"redis://127.0.0.1:{arg_port}/0")
    assert f":{arg_port}/" in r.shared.where and r.shared.mode == "wait"
    monkeypatch.delenv("NBROUTER_STATE_URL")
    assert isinstance(Router(PROVIDERS, persist=False), Router)


def test_without_a_url_the_kernels_of_a_machine_share_the_state_file(tmp_path: Any, make_router: Any) -> None:
    r = make_router(PROVIDERS)
    assert r.shared.kind == "sqlite" and str(tmp_path / "state.sqlite3") in r.shared.where
    assert make_router(PROVIDERS, persist=False, state_path=None).shared.kind == "memory"


def test_a_router_with_a_refused_password_or_a_bad_url_fails_at_construction_without_the_password(
        start_redis: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbrouter import Router

    server = start_redis(password="good-pw-1234")
    with pytest.raises(ComboConfigError) as caught:
        Router(PROVIDERS, persist=False, state_url=f"redis://:bad-pw-5678@127.0.0.1:{server.port}/0")
    assert "Router(state_url=)" in str(caught.value) and "bad-pw-5678" not in str(caught.value)
    monkeypatch.setenv("NBROUTER_STATE_URL", "memcached://:bad-pw-5678@127.0.0.1:1/0")
    with pytest.raises(ComboConfigError) as caught:
        Router(PROVIDERS, persist=False)
    assert "NBROUTER_STATE_URL" in str(caught.value) and "unknown scheme 'memcached'" in str(caught.value)
    assert "bad-pw-5678" not in str(caught.value)


@pytest.mark.parametrize("state, field, why", [
    ('url = "redis://:pw-3141@127.0.0.1:6379/x"', "state.url", "the database must be a number"),
    ('on_down = "pause"', "state.on_down", "unknown on_down mode 'pause'"),
    ("share = 1.5", "state.share", "must be a number from 0 (excluded) to 1"),
    ("timeout_s = 0", "state.timeout_s", "must be a number from 0 (excluded) to 60"),
    ('prefix = "a {team}"', "state.prefix", "without braces or spaces"),
    ('urls = "redis://h"', "state.urls", "did you mean 'url'"),
])
def test_a_wrong_state_table_names_the_file_and_the_field(tmp_path: Any, state: str, field: str, why: str) -> None:
    from nbrouter import Router

    config = write_config(tmp_path, state)
    with pytest.raises(ComboConfigError) as caught:
        Router(config, persist=False)
    text = str(caught.value)
    assert str(config) in text and f"field {field!r}" in text and why in text and "pw-3141" not in text


def test_machines_with_skewed_clocks_agree_on_a_hold_because_the_server_keeps_the_time(
        redis_server: Any, loop: asyncio.AbstractEventLoop) -> None:
    import time as _time

    run, p = runner(loop), prefix()
    ahead, behind = ManualClock(_time.time() + 3600), ManualClock(_time.time() - 600)  # an hour fast, ten minutes slow
    a = RedisShared(redis_server.url(), prefix=p, clock=ahead)
    b = RedisShared(redis_server.url(), prefix=p, clock=behind)
    run(a.extend_hold(CANDIDATE, "cooldown", ahead.time() + 30, "429: retry after 30 s"))
    seen = run(b.holds())[CANDIDATE]
    # 30 s from now on b's own clock (the wire carried a duration), not an hour and a half off
    assert abs(seen.until - (behind.time() + 30)) < 5
    refused = run(b.admit(AdmitRequest(ACCOUNT, holds=(CANDIDATE,))))
    assert not refused.admitted and 25 < refused.wait_s <= 30
    run(a.close())
    run(b.close())

"""The admission's fast paths (issue 22, throughput while every call passes the store): leases of a busy
candidate's next takes, the writes sent behind the calls, and a state file locked by another process not
stalling the event loop. Behaviour only (what the store admits and counts, what the loop does meanwhile),
on an injected clock where time matters; never how long anything took."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from nbrouter._core import ErrorKind, ProviderFailure
from nbrouter.router.state.lease import LEASE_S, LEASE_TTL_S
from nbrouter.router.state.pacing import PACING_MARGIN, SENT_PREFIX, Lanes, Limit, Pacer, Ticket, WriteBehind
from nbrouter.router.state.shared import AddCount, LowerBucket, MemoryShared, ReleaseSlot, SlotRequest, Window
from nbrouter.router.state.shared_sqlite import SQLiteShared
from nbrouter.router.types import Candidate
from nbrouter.testing import ManualClock

#: a limit high enough to be leased from: 9,900 requests a second at the pacing margin
PER_MINUTE = 600_000
C = Candidate("p", "default", "m")
ACCOUNT = "p#default"
#: what the account's bucket holds full: its burst (within the sliding window's slack) and the interactive reserve
CAPACITY = Limit(ACCOUNT, "requests", 60, PER_MINUTE).spec(PACING_MARGIN, 1.0, "interactive").capacity


class Counted(MemoryShared):
    """The memory store, counting the admissions and the write round trips asked of it."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.asked = 0
        self.applied = 0

    async def admit(self, request: Any) -> Any:
        self.asked += 1
        return await super().admit(request)

    async def apply(self, writes: Any) -> None:
        self.applied += 1
        await super().apply(writes)


def _pacer(store: Counted, clock: ManualClock, per_minute: int = PER_MINUTE) -> Pacer:
    from nbrouter.router.config.loading import build_config
    from nbrouter.router.decide.strategies import STRATEGIES

    config = build_config({"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "X",
                                               "quota": {"requests_per_minute": per_minute}}}}, path=None, strategies=STRATEGIES)
    return Pacer(config, store, clock=clock)


def _level(pacer: Pacer, lane: str = "interactive") -> float:
    spec = pacer.limits_of(C)[0].spec(pacer.margin, 1.0, "interactive" if lane == "interactive" else "batch")
    return asyncio.run(pacer.shared.buckets(ACCOUNT, [spec]))[spec.field]


def _full(pacer: Pacer, clock: ManualClock) -> None:
    """The account's bucket in the store, full (a first call makes it; two seconds refill it)."""
    async def first() -> None:
        ticket = await pacer.admit(C, 10, Lanes("interactive"), clock.time())
        assert isinstance(ticket, Ticket)
        pacer.end(C)
    asyncio.run(first())
    clock.advance(2.0)
    assert _level(pacer) == pytest.approx(CAPACITY)


async def _one_by_one(pacer: Pacer, clock: ManualClock, n: int, lane: str = "interactive") -> list[Any]:
    """`n` admissions, each asked alone (one after another, as calls at concurrency 1 are)."""
    out = []
    for _ in range(n):
        answer = await pacer.admit(C, 10, Lanes(lane), clock.time())
        if isinstance(answer, Ticket):
            pacer.end(C)
        out.append(answer)
    return out


async def _settled() -> None:
    """Let a lease's top-up asked beside the calls (a task) finish."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_busy_candidates_calls_are_admitted_from_a_lease_with_a_round_trip_per_lease_not_per_call() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)
    store.asked = 0

    async def calls() -> list[Any]:
        answers = await _one_by_one(pacer, clock, 1000)
        held = _level_now(pacer)
        await pacer.drain()  # (what the lease holds unspent goes back)
        return [answers, held]

    answers, held = asyncio.run(calls())
    assert all(isinstance(a, Ticket) for a in answers)
    assert store.asked <= 50  # a thousand calls one after another: a round trip per lease, not per call
    assert held < CAPACITY - 1000  # a lease held takes for calls not yet made...
    assert _level(pacer) == pytest.approx(CAPACITY - 1000)  # ...and gave back what it did not spend


def _level_now(pacer: Pacer) -> float:
    spec = pacer.limits_of(C)[0].spec(pacer.margin, 1.0, "interactive")
    return pacer.shared.run(lambda tx, now: tx.get("bucket", f"{ACCOUNT}|{spec.field}"))[0]  # type: ignore[attr-defined, no-any-return]


def test_a_lease_is_topped_up_beside_the_calls_so_that_none_waits_for_the_store() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    async def calls() -> tuple[int, int]:
        await _one_by_one(pacer, clock, 100)
        await _settled()
        before, waited = store.asked, 0
        for _ in range(2000):
            admission = pacer.admit(C, 10, Lanes("interactive"), clock.time())
            try:
                admission.send(None)
            except StopIteration as done:  # answered without yielding to the loop: no store round trip
                assert isinstance(done.value, Ticket)
                pacer.end(C)
            else:
                waited += 1
                admission.close()
            await _settled()  # (the top-ups asked meanwhile run)
        return waited, store.asked - before

    waited, asked = asyncio.run(calls())
    assert waited == 0 and asked > 0  # the store was asked (for more), never by a call


def test_a_hold_another_process_sets_reaches_a_leasing_process_by_its_next_top_up() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    async def calls() -> tuple[int, Any]:
        await _one_by_one(pacer, clock, 100)
        await _settled()
        await store.extend_hold(C.key, "cooldown", clock.time() + 30, "rate limited (another kernel)")
        for n in range(1, 10_000):
            answer = (await _one_by_one(pacer, clock, 1))[0]
            await _settled()
            if not isinstance(answer, Ticket):
                return n, answer
        return -1, None

    n, answer = asyncio.run(calls())
    lease = int(9_900 * LEASE_S)  # the most a lease of this account holds (a sliver of its refill)
    # the lease holds at most half a lease more than its last top-up put in; the next top-up heard the hold
    assert 0 < n <= lease + 1
    assert answer[0].startswith("cooling down: rate limited (another kernel)")


def test_leases_of_two_processes_never_admit_more_than_the_bucket_holds() -> None:
    # two pacers (two kernels) on one store, taking turns until both are refused, on a frozen clock: the
    # calls admitted are exactly what the bucket held, as one by one they would be
    clock = ManualClock()
    store = Counted(clock)
    one, two = _pacer(store, clock), _pacer(store, clock)
    _full(one, clock)

    async def until_refused() -> int:
        admitted, refused = 0, set()
        while len(refused) < 2:
            for pacer in (one, two):
                if pacer in refused:
                    continue
                answer = (await _one_by_one(pacer, clock, 1))[0]
                if isinstance(answer, Ticket):
                    admitted += 1
                else:
                    refused.add(pacer)
        await one.drain()
        await two.drain()
        return admitted

    assert asyncio.run(until_refused()) == int(CAPACITY)
    assert _level(one) == pytest.approx(0.0, abs=1e-6)


def test_a_lease_is_spent_only_within_its_time_on_the_router_clock() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    async def calls() -> tuple[int, int]:
        await _one_by_one(pacer, clock, 100)  # a lease holds takes now
        await _settled()
        before = store.asked
        await _one_by_one(pacer, clock, 1)
        spent_from_lease = store.asked - before
        await _settled()
        clock.advance(LEASE_TTL_S)
        before = store.asked
        await _one_by_one(pacer, clock, 1)
        return spent_from_lease, store.asked - before

    from_lease, after_expiry = asyncio.run(calls())
    assert from_lease == 0 and after_expiry == 1


def test_a_429_ends_the_accounts_leases_and_every_later_call_asks_the_store() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    async def calls() -> tuple[list[Any], int]:
        answers = await _one_by_one(pacer, clock, 100)
        await _settled()
        ticket = answers[-1]
        pacer._in_flight[C.key] = 1  # (it is on the wire)
        limited = ProviderFailure(ErrorKind.RATE_LIMIT, "429", status=429, retry_after_s=5.0)
        await store.apply(pacer.settle(C, ticket, clock.time(), failure=limited))
        before = store.asked
        after = await _one_by_one(pacer, clock, 5)
        await pacer.drain()
        return after, store.asked - before

    after, asked = asyncio.run(calls())
    assert asked == 5  # no lease: each call asks (and the store says the 429 emptied the bucket)
    assert all(isinstance(a, tuple) for a in after)
    assert _level(pacer) <= 0.0  # what the lease held went with the 429: nothing was given back to the bucket


def test_a_batchs_leases_leave_the_interactive_reserve() -> None:
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    async def calls() -> tuple[int, Any]:
        admitted = 0
        while isinstance((await _one_by_one(pacer, clock, 1, "batch"))[0], Ticket):
            admitted += 1
        return admitted, (await _one_by_one(pacer, clock, 1, "interactive"))[0]

    admitted, cell = asyncio.run(calls())
    assert admitted > CAPACITY - 10 and isinstance(cell, Ticket)  # (a batch take costs a little more than one)


# ---- writes behind the calls ------------------------------------------------------------------------


def _count(store: MemoryShared) -> float:
    return asyncio.run(store.count(SENT_PREFIX + ACCOUNT, Window.forever()))


SENT = AddCount(SENT_PREFIX + ACCOUNT, 1, Window.forever())


def test_writes_of_calls_ending_one_after_another_share_a_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)  # (the gathering outlasts the test: no timing in it)
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)

    async def calls() -> tuple[int, int]:
        pacer.write_behind([SENT])  # after a quiet spell: written at the next turn
        for _ in range(3):
            await asyncio.sleep(0)
        first = store.applied
        for _ in range(10):  # ten calls ending in turns of their own
            pacer.write_behind([SENT])
            await asyncio.sleep(0)
        gathered = store.applied
        await pacer.drain()
        return first, gathered

    first, gathered = asyncio.run(calls())
    assert first == 1 and gathered == 1  # the ten wait for one round trip together...
    assert store.applied == 2 and _count(store) == 11  # ...which drain sends, every count in it


def test_writes_added_while_a_round_trip_is_out_wait_to_go_together(monkeypatch: pytest.MonkeyPatch) -> None:
    # a store over the network (Redis): a write's round trip yields to the loop; the calls ending meanwhile
    # gather for the next one rather than each following at once
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)
    clock = ManualClock()

    class Slow(Counted):
        gate: asyncio.Event

        async def apply(self, writes: Any) -> None:
            await self.gate.wait()
            await super().apply(writes)

    store = Slow(clock)
    pacer = _pacer(store, clock)

    async def calls() -> int:
        store.gate = asyncio.Event()
        pacer.write_behind([SENT])
        for _ in range(3):
            await asyncio.sleep(0)  # its round trip is out
        for _ in range(5):
            pacer.write_behind([SENT])
            await asyncio.sleep(0)
        store.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        before_drain = store.applied
        await pacer.drain()
        return before_drain

    assert asyncio.run(calls()) == 1
    assert store.applied == 2 and _count(store) == 6


def test_calls_served_one_after_another_are_counted_exactly_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)

    class Answer:
        usage = type("Usage", (), {"total_tokens": 7})()
        rate_limits = None

    async def calls() -> int:
        pacer.write_behind([])  # (a quiet spell ended: the next round trip waits for the gathering)
        for _ in range(3):
            await asyncio.sleep(0)
        applied = store.applied
        for _ in range(50):
            ticket = await pacer.admit(C, 10, Lanes("interactive"), clock.time())
            assert isinstance(ticket, Ticket) and pacer.served(C, ticket, Answer())
            await asyncio.sleep(0)
        await pacer.drain()
        return store.applied - applied

    assert asyncio.run(calls()) == 1
    counts = {what: asyncio.run(store.count(f"usage:{ACCOUNT}|{what}", Window.minute())) for what in ("requests", "tokens")}
    assert _count(store) == 50 and counts == {"requests": 50, "tokens": 350}


def test_a_slot_given_back_is_written_at_the_next_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)

    async def calls() -> tuple[int, list[str]]:
        slot = await store.acquire_slot(ACCOUNT, SlotRequest(1, 300.0))
        assert slot is not None
        pacer.write_behind([SENT])
        for _ in range(3):
            await asyncio.sleep(0)
        pacer.write_behind([SENT])  # waits for the gathering...
        await asyncio.sleep(0)
        pacer.write_behind([ReleaseSlot(ACCOUNT, slot)])  # ...until a slot another call may wait for comes back
        for _ in range(3):
            await asyncio.sleep(0)
        again = await store.acquire_slot(ACCOUNT, SlotRequest(1, 300.0))
        return store.applied, [again] if again else []

    applied, again = asyncio.run(calls())
    assert applied == 2 and len(again) == 1


def test_a_replys_remaining_count_is_written_at_the_next_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # it is about the moment the reply came: held back with others, it would lower the bucket for refills
    # that came since
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)
    _full(pacer, clock)
    spec = pacer.limits_of(C)[0].spec(pacer.margin, 1.0, "interactive")

    async def calls() -> int:
        pacer.write_behind([SENT])
        for _ in range(3):
            await asyncio.sleep(0)
        pacer.write_behind([SENT])
        await asyncio.sleep(0)
        pacer.write_behind([LowerBucket(ACCOUNT, spec, 100.0)])
        for _ in range(3):
            await asyncio.sleep(0)
        return store.applied

    applied = asyncio.run(calls())
    assert applied == 2 and _level(pacer) == pytest.approx(100.0)


def test_writes_still_gathering_when_the_event_loop_ends_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WriteBehind, "FLUSH_S", 3600.0)
    clock = ManualClock()
    store = Counted(clock)
    pacer = _pacer(store, clock)

    async def calls() -> None:
        pacer.write_behind([SENT])
        for _ in range(3):
            await asyncio.sleep(0)
        pacer.write_behind([SENT, SENT])  # gathering: the loop ends first (no drain, no close)

    asyncio.run(calls())
    assert _count(store) == 3


# ---- a state file locked by another process -----------------------------------------------------------

HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


def test_a_verb_waiting_for_a_state_file_another_process_locked_leaves_the_event_loop_running(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteShared(path, busy_timeout_s=60.0)
    asyncio.run(store.add("warm", 1, Window.forever()))  # (the file and its table exist)
    assert store.waited == 0  # a free file: tried once, not waited for in a thread
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ticked = threading.Event()
    released: list[bool] = []

    def release() -> None:
        # the other process lets go once the loop has shown it runs (or, if it never does, after a while:
        # then the verb was holding the loop, and the test fails)
        released.append(ticked.wait(20.0))
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()

    async def main() -> float:
        async def ticker() -> None:
            for _ in range(5):
                await asyncio.sleep(0.001)
            ticked.set()
        ticking = asyncio.create_task(ticker())
        threading.Thread(target=release, daemon=True).start()
        total = await store.add("k", 2, Window.forever())
        await ticking
        await store.close()
        return total

    with holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            total = asyncio.run(main())
        finally:
            holder.kill()
    assert released == [True]  # the loop went on while the verb waited for the lock
    assert total == 2 and store.waited == 1

"""One contract for the shared state, held against all three stores: memory, SQLite and a real Redis.

Every verb of `SharedState` is checked for what it answers, on an injected clock where time matters (the
Redis store's scripts read the server's clock, shifted by the test: `RedisShared.shift_s` moves with the
`ManualClock`), and under concurrency: threads on one store, and several OS processes on one file or one
server, whose totals must equal the work done (an update lost is a count short).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import threading
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pytest

from nbrouter.router.state.shared import (
    SLICES,
    AddCount,
    AdjustBucket,
    AdmitRequest,
    BreakerSuccess,
    BucketSpec,
    EmptyBuckets,
    ExtendHold,
    LowerBucket,
    MemoryShared,
    ReleaseSlot,
    SharedState,
    SlotRequest,
    Window,
)
from nbrouter.router.state.shared_sqlite import SQLiteShared
from nbrouter.testing import ManualClock

T = TypeVar("T")
#: the three stores, and the two that can fail behind the guard the router uses (it must pass every verb through)
KINDS = ["memory", "sqlite", "redis", "guarded-sqlite", "guarded-redis"]
#: a minute boundary (1.8e9 / 60 is whole): the tests start at the top of a minute
START = 1_800_000_000.0
ACCOUNT = "sim#main"
CANDIDATE = "sim#main/model-a"


#: the test's event loop (a Redis client belongs to the loop it was made on: one loop per test, closed
#: after its clients)
_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Awaitable[T]) -> T:
    assert _loop is not None
    return _loop.run_until_complete(_wrap(coro))


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


def run_closing(store: Any, coro: Awaitable[T]) -> T:
    """Run one coroutine on a loop of its own, then close the store's clients on that loop."""
    async def both() -> T:
        try:
            return await coro
        finally:
            await store.close()
    return asyncio.run(both())


class Subject:
    """A store of one kind, on a ManualClock, and the means to open more handles onto the same state."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        self.clock = ManualClock(START)
        self.path = tmp_path / "state.sqlite3"
        self.url = redis_url
        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.shift = 0.0
        self.handles: list[Any] = []
        self._plain: Any = None
        self.store = self.another()
        if self.base == "redis":
            # the server's clock, shifted onto the manual clock: the test starts at the top of a minute too
            raw = getattr(self.store, "store", self.store)
            with raw.make_client(asyncio_client=False) as plain:
                server_now = plain.time()
            self.shift = START - (server_now[0] + server_now[1] / 1e6)
            raw.shift_s = self.shift

    @property
    def base(self) -> str:
        """The store's kind without the guard."""
        return self.kind.removeprefix("guarded-")

    def another(self) -> Any:
        """A second handle onto the same state (memory: the same store; SQLite: a new connection; Redis: a
        new client), guarded if the subject is."""
        store = self.raw()
        if self.kind.startswith("guarded-"):
            from nbrouter.router.state.guarded import GuardedState

            store = GuardedState(store, clock=self.clock)
        self.handles.append(store)
        return store

    def raw(self) -> Any:
        if self.base == "memory":
            store: Any = self.handles[0] if self.handles else MemoryShared(self.clock)
        elif self.base == "sqlite":
            store = SQLiteShared(self.path, clock=self.clock)
        else:
            from nbrouter.router.state.shared_redis import RedisShared

            assert self.url is not None
            store = RedisShared(self.url, prefix=self.prefix, clock=self.clock, timeout_s=5.0)
            store.shift_s = self.shift
        return store

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.shift += seconds
        self._shift_all()

    def _shift_all(self) -> None:
        for h in self.handles:
            raw = getattr(h, "store", h)
            if hasattr(raw, "shift_s"):
                raw.shift_s = self.shift

    def pin(self) -> None:
        """Redis: set the shift again so that the server's now is the manual clock's now (its own clock moved
        on in real time meanwhile), for a test that counts every take over many steps. Others: nothing."""
        if self.base != "redis":
            return
        if self._plain is None:
            self._plain = getattr(self.store, "store", self.store).make_client(asyncio_client=False)
        server_now = self._plain.time()
        self.shift = self.clock.time() - (server_now[0] + server_now[1] / 1e6)
        self._shift_all()

    def close(self) -> None:
        for h in self.handles:
            run(h.close())
        if self._plain is not None:
            self._plain.close()


@pytest.fixture(autouse=True)
def _test_loop() -> Iterator[None]:
    global _loop
    _loop = asyncio.new_event_loop()
    yield
    _loop.close()
    _loop = None


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    url = request.getfixturevalue("redis_server").url() if request.param.endswith("redis") else None
    s = Subject(request.param, tmp_path, url)
    yield s
    s.close()


def near(a: float, b: float) -> bool:
    """Equal but for the real time a Redis server's clock moves during the test (well under a second)."""
    return abs(a - b) < 0.5


# ---- the port -------------------------------------------------------------------------------------------


def test_every_store_implements_the_port(subject: Subject) -> None:
    assert isinstance(subject.store, SharedState)
    assert subject.store.kind == subject.base
    assert subject.store.mode == "shared" and subject.store.warning is None


# ---- counters -------------------------------------------------------------------------------------------


def test_a_calendar_minute_counts_its_adds_and_starts_again_at_the_next_minute(subject: Subject) -> None:
    s, minute = subject.store, Window.minute()
    assert run(s.add("reqs", 1, minute)) == 1
    assert run(s.add("reqs", 2, minute)) == 3
    subject.advance(59)
    assert run(s.add("reqs", 4, minute)) == 7
    subject.advance(1.5)  # 12:01 now: a new calendar minute
    assert run(s.count("reqs", minute)) == 0
    assert run(s.add("reqs", 1, minute)) == 1
    assert run(s.count("other", minute)) == 0


def test_a_sliding_window_drops_an_add_one_window_later_and_never_sooner(subject: Subject) -> None:
    s, sliding = subject.store, Window.minute(sliding=True)
    run(s.add("tok", 10, sliding))
    subject.advance(30)
    assert run(s.add("tok", 5, sliding)) == 15
    subject.advance(30)  # 60 s after the first add: within window + one slice, still counted
    assert run(s.count("tok", sliding)) == 15
    subject.advance(60 / SLICES + 1)
    assert run(s.count("tok", sliding)) == 5
    subject.advance(30)
    assert run(s.count("tok", sliding)) == 0


def test_a_day_window_and_a_window_that_never_ends(subject: Subject) -> None:
    s = subject.store
    run(s.add("d", 3, Window.day()))
    run(s.add("budget", 0.25, Window.forever()))
    subject.advance(3600)
    assert run(s.add("budget", 0.5, Window.forever())) == 0.75
    assert run(s.count("d", Window.day())) == 3
    subject.advance(2 * 86400)
    assert run(s.count("d", Window.day())) == 0
    assert run(s.count("budget", Window.forever())) == 0.75


def test_windows_of_one_key_are_counted_apart(subject: Subject) -> None:
    s = subject.store
    run(s.add("k", 1, Window.minute()))
    run(s.add("k", 2, Window.minute(sliding=True)))
    run(s.add("k", 4, Window.day()))
    assert [run(s.count("k", w)) for w in (Window.minute(), Window.minute(True), Window.day())] == [1, 2, 4]


# ---- holds ---------------------------------------------------------------------------------------------------


def test_a_hold_only_ever_extends(subject: Subject) -> None:
    s, now = subject.store, subject.clock.time()
    first = run(s.extend_hold(CANDIDATE, "cooldown", now + 30, "429"))
    assert near(first.until, now + 30)
    shorter = run(s.extend_hold(CANDIDATE, "cooldown", now + 10, "a shorter one"))
    assert near(shorter.until, now + 30) and shorter.reason == "429"
    longer = run(s.extend_hold(CANDIDATE, "lock", now + 90, "quota"))
    assert near(longer.until, now + 90) and longer.kind.value == "lock"
    held = run(s.holds())
    assert list(held) == [CANDIDATE] and near(held[CANDIDATE].until, now + 90)


def test_holds_end_at_their_deadline_and_are_read_on_another_handle(subject: Subject) -> None:
    s, other, now = subject.store, subject.another(), subject.clock.time()
    run(s.extend_hold(CANDIDATE, "cooldown", now + 30, "429"))
    run(s.extend_hold(ACCOUNT, "lock", now + 120, "rpd"))
    run(s.extend_hold("other#acct/m", "disabled", now + 10 * 365 * 86400, "401", detail="fp123"))
    assert sorted(run(other.holds())) == sorted([CANDIDATE, ACCOUNT, "other#acct/m"])
    assert run(other.holds())["other#acct/m"].detail == "fp123"
    subject.advance(31)
    assert sorted(run(other.holds())) == sorted([ACCOUNT, "other#acct/m"])
    # an expired hold is extended as if new: its old deadline is no floor
    assert near(run(s.extend_hold(CANDIDATE, "cooldown", subject.clock.time() + 5, "again")).until, subject.clock.time() + 5)


def test_clear_holds_lifts_those_matching_or_all(subject: Subject) -> None:
    s, now = subject.store, subject.clock.time()
    for key in (CANDIDATE, "sim#main/model-b", "sim#spare/model-a", ACCOUNT):
        run(s.extend_hold(key, "cooldown", now + 60, "x"))
    assert run(s.clear_holds("model-a")) == 2
    assert sorted(run(s.holds())) == sorted(["sim#main/model-b", ACCOUNT])
    assert run(s.clear_holds()) == 2
    assert run(s.holds()) == {}


def test_hold_reasons_are_stored_without_anything_key_shaped(subject: Subject) -> None:
    s = subject.store
    h = run(s.extend_hold(CANDIDATE, "disabled", subject.clock.time() + 60, "401: Incorrect API key sk-proj-abcdefghijklmnop"))
    assert "abcdefghijklmnop" not in h.reason
    assert "abcdefghijklmnop" not in run(s.holds())[CANDIDATE].reason


# ---- breakers ------------------------------------------------------------------------------------------------


def test_a_breaker_opens_at_its_threshold_within_its_window(subject: Subject) -> None:
    s = subject.store
    fail = lambda: run(s.breaker_failure(CANDIDATE, window_s=60, threshold=3, open_s=30))  # noqa: E731
    assert fail().state == "closed"
    subject.advance(61)  # the first failure leaves the window
    assert [fail().state for _ in range(3)] == ["closed", "closed", "open"]
    view = run(s.breaker(CANDIDATE))
    assert view.state == "open" and near(view.open_until, subject.clock.time() + 30)
    admitted, _ = run(s.breaker_admits(CANDIDATE, probe_ttl_s=10))
    assert not admitted


def test_exactly_one_caller_takes_the_half_open_probe(subject: Subject) -> None:
    s, other = subject.store, subject.another()
    run(s.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    subject.advance(31)
    assert run(s.breaker(CANDIDATE)).state == "half_open"
    assert run(s.breaker_admits(CANDIDATE, probe_ttl_s=10))[0] is True
    assert run(other.breaker_admits(CANDIDATE, probe_ttl_s=10))[0] is False
    assert run(other.breaker(CANDIDATE)).probing
    subject.advance(11)  # the probe's holder never reported: after its ttl the next one may probe
    assert run(other.breaker_admits(CANDIDATE, probe_ttl_s=10))[0] is True
    run(other.end_probe(CANDIDATE))  # no verdict: the next one goes at once
    assert run(s.breaker_admits(CANDIDATE, probe_ttl_s=10))[0] is True


def test_a_failed_probe_opens_twice_as_long_and_a_success_closes(subject: Subject) -> None:
    s = subject.store
    run(s.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    subject.advance(31)
    assert run(s.breaker_admits(CANDIDATE, probe_ttl_s=10))[0]
    view = run(s.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    assert view.state == "open" and near(view.open_until, subject.clock.time() + 60)
    subject.advance(61)
    run(s.breaker_success(CANDIDATE))
    assert run(s.breaker(CANDIDATE)).state == "closed"
    assert run(s.breaker_admits(CANDIDATE, probe_ttl_s=10)) == (True, run(s.breaker(CANDIDATE)))


def test_open_now_opens_at_the_first_failure(subject: Subject) -> None:
    view = run(subject.store.breaker_failure(CANDIDATE, window_s=60, threshold=5, open_s=10, open_now=True))
    assert view.state == "open"


# ---- rotation ------------------------------------------------------------------------------------------------


def test_round_robin_turns_go_round_across_handles(subject: Subject) -> None:
    s, other = subject.store, subject.another()
    turns = [run((s if i % 2 else other).next_turn("combo:fast", 3)) for i in range(7)]
    assert turns == [0, 1, 2, 0, 1, 2, 0]


def test_a_deck_deals_every_index_once_before_it_is_shuffled_again(subject: Subject) -> None:
    s, other = subject.store, subject.another()
    dealt = [run((s if i % 2 else other).deal("combo:random", 5)) for i in range(15)]
    for deck in (dealt[0:5], dealt[5:10], dealt[10:15]):
        assert sorted(deck) == [0, 1, 2, 3, 4]
    # a deck of another size starts afresh
    assert run(s.deal("combo:random", 2)) in (0, 1)


def test_least_used_takes_the_member_used_least_and_counts_it(subject: Subject) -> None:
    s = subject.store
    taken = [run(s.least_used("combo:even", ["a", "b", "c"])) for _ in range(6)]
    assert taken == ["a", "b", "c", "a", "b", "c"]
    assert run(s.least_used("combo:even", ["c", "d"])) == "d"


# ---- admission ---------------------------------------------------------------------------------------------


def requests_bucket(capacity: float = 2, rate: float = 1.0, initial: float = 2, amount: float = 1, reserve: float = 0.0) -> BucketSpec:
    return BucketSpec(ACCOUNT, "requests/60", rate=rate, capacity=capacity, initial=initial, amount=amount, reserve=reserve)


def test_admission_takes_from_the_bucket_until_it_is_empty_and_says_how_long_to_wait(subject: Subject) -> None:
    s = subject.store
    req = AdmitRequest(ACCOUNT, buckets=(requests_bucket(rate=0.5),))
    assert run(s.admit(req)).admitted and run(s.admit(req)).admitted
    refused = run(s.admit(req))
    assert not refused.admitted and refused.reason == "bucket" and refused.bucket == f"{ACCOUNT}|requests/60"
    assert near(refused.wait_s, 2.0)  # one request at 0.5 per second
    subject.advance(2.01)
    assert run(s.admit(req)).admitted
    assert not run(s.admit(req)).admitted


def test_admission_is_all_or_nothing_over_its_buckets(subject: Subject) -> None:
    s = subject.store
    reqs = requests_bucket(capacity=10, rate=1e-6, initial=10)
    tokens = BucketSpec(ACCOUNT, "tokens/60", rate=1e-6, capacity=100, initial=100, amount=80)
    assert run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs, tokens)))).admitted
    refused = run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs, tokens))))
    assert not refused.admitted and refused.bucket == f"{ACCOUNT}|tokens/60"
    levels = run(s.buckets(ACCOUNT, [reqs, tokens]))
    assert near(levels[reqs.field], 9) and near(levels[tokens.field], 20)  # the refused call took nothing


def test_a_hold_on_the_candidate_or_its_account_keeps_the_call_back(subject: Subject) -> None:
    s, now = subject.store, subject.clock.time()
    req = AdmitRequest(ACCOUNT, holds=(CANDIDATE, ACCOUNT), buckets=(requests_bucket(),))
    run(s.extend_hold(ACCOUNT, "cooldown", now + 20, "429 from the account"))
    refused = run(s.admit(req))
    assert not refused.admitted and refused.reason == "held" and refused.hold is not None
    assert refused.hold.reason == "429 from the account" and near(refused.wait_s, 20)
    subject.advance(21)
    assert run(s.admit(req)).admitted
    assert run(s.buckets(ACCOUNT, [requests_bucket()]))[requests_bucket().field] < 2


def test_admission_passes_the_breaker_and_hands_out_one_probe(subject: Subject) -> None:
    s, other = subject.store, subject.another()
    req = AdmitRequest(ACCOUNT, breaker=CANDIDATE, probe_ttl_s=10)
    run(s.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    refused = run(s.admit(req))
    assert not refused.admitted and refused.reason == "breaker" and near(refused.wait_s, 30)
    subject.advance(31)
    first = run(s.admit(req))
    assert first.admitted and first.probe
    assert not run(other.admit(req)).admitted
    run(s.breaker_success(CANDIDATE))
    after = run(other.admit(req))
    assert after.admitted and not after.probe


def test_the_batch_lane_leaves_the_reserve_to_interactive_calls(subject: Subject) -> None:
    s = subject.store
    batch = AdmitRequest(ACCOUNT, buckets=(requests_bucket(capacity=4, initial=4, rate=1e-6, reserve=0.5),), lane="batch")
    cell = AdmitRequest(ACCOUNT, buckets=(requests_bucket(capacity=4, initial=4, rate=1e-6, reserve=0.5),), lane="interactive")
    assert [run(s.admit(batch)).admitted for _ in range(3)] == [True, True, False]
    assert [run(s.admit(cell)).admitted for _ in range(3)] == [True, True, False]


def test_a_new_bucket_is_kept_from_its_first_ask_even_when_that_ask_is_refused(subject: Subject) -> None:
    s, other = subject.store, subject.another()
    # a new bucket starts at its initial level (here the interactive reserve only): a batch waits for a refill
    bucket = requests_bucket(capacity=2, initial=1, rate=1.0, reserve=0.5)
    refused = run(s.admit(AdmitRequest(ACCOUNT, buckets=(bucket,), lane="batch")))
    assert not refused.admitted and refused.reason == "bucket" and near(refused.wait_s, 1.0)
    subject.advance(1.05)
    # the store kept the bucket from that ask on, so it has refilled (one started afresh would still hold 1),
    # for every handle onto the store
    assert near(run(other.buckets(ACCOUNT, [bucket]))[bucket.field], 2.0)
    assert run(other.admit(AdmitRequest(ACCOUNT, buckets=(bucket,), lane="batch"))).admitted
    assert not run(s.admit(AdmitRequest(ACCOUNT, buckets=(bucket,), lane="batch"))).admitted


def _saturate(subject: Subject, spec_of: Callable[[], BucketSpec], seconds: float, taken: list[float]) -> None:
    """Callers that always want more, for `seconds`: each admission that passes is followed by another at
    once, a refusal by the next ask at the moment the store said (as the pacer does); the times of the
    takes are added to `taken`."""
    end = subject.clock.time() + seconds
    while subject.clock.time() < end:
        subject.pin()
        answer = run(subject.store.admit(AdmitRequest(ACCOUNT, buckets=(spec_of(),), lane="batch")))
        if answer.admitted:
            taken.append(subject.clock.time())
        else:
            subject.advance(min(max(answer.wait_s, 1e-4) + 1e-4, max(end - subject.clock.time(), 1e-4)))


def test_a_minute_limits_bucket_admits_no_more_than_the_limit_in_any_sliding_window_even_after_a_pause(subject: Subject) -> None:
    from nbrouter.router.state.pacing import PACING_MARGIN, Limit
    from nbrouter.testing.ratelimits import most_in

    limit = Limit(ACCOUNT, "requests", 60.0, 1200.0)
    batch = limit.spec(PACING_MARGIN, 1.0, "batch")
    taken: list[float] = []
    start = subject.clock.time()
    _saturate(subject, lambda: batch, 20.0, taken)  # the account in use
    subject.advance(65.0)  # every caller pauses for longer than a window: the bucket fills up
    _saturate(subject, lambda: batch, 62.0, taken)  # ... and all come back at once
    # what a provider's sliding window of a minute counts never passes the limit (a burst of a second's refill
    # on top of a window of paced takes would)
    assert most_in(taken, 60.0) <= 1200
    # and no throughput is lost: the paced rate (less the reserve a batch leaves) over the time it ran
    assert len(taken) >= (20.0 + 62.0 - 0.1) * batch.rate / batch.amount
    # a new bucket let no batch take through at once: the account may be in use elsewhere
    assert taken[0] - start >= batch.amount / batch.rate - 0.01


def test_concurrency_slots_are_limited_released_and_heal_when_a_holder_dies(subject: Subject) -> None:
    s = subject.store
    req = AdmitRequest(ACCOUNT, buckets=(requests_bucket(capacity=100, initial=100),), slot=SlotRequest(limit=2, ttl_s=30))
    a, b = run(s.admit(req)), run(s.admit(req))
    assert a.admitted and b.admitted and a.slot and b.slot and a.slot != b.slot
    refused = run(s.admit(req))
    assert not refused.admitted and refused.reason == "slots"
    assert near(run(s.buckets(ACCOUNT, [requests_bucket(capacity=100, initial=100)]))[requests_bucket().field], 98)
    run(s.apply([ReleaseSlot(ACCOUNT, a.slot)]))
    assert run(s.acquire_slot(ACCOUNT, SlotRequest(limit=2, ttl_s=30))) is not None
    assert run(s.acquire_slot(ACCOUNT, SlotRequest(limit=2, ttl_s=30))) is None
    subject.advance(31)  # both holders died without releasing
    assert run(s.admit(req)).admitted


# ---- writes after a call ---------------------------------------------------------------------------------------


def test_writes_after_a_call_adjust_lower_and_empty_the_buckets(subject: Subject) -> None:
    s, now = subject.store, subject.clock.time()
    tokens = BucketSpec(ACCOUNT, "tokens/60", rate=1e-6, capacity=1000, initial=1000, amount=300)
    assert run(s.admit(AdmitRequest(ACCOUNT, buckets=(tokens,)))).admitted
    # the reply used 100 tokens, not the 300 estimated: 200 go back; never above the capacity
    run(s.apply([AdjustBucket(ACCOUNT, BucketSpec(ACCOUNT, "tokens/60", rate=1e-6, capacity=1000, amount=200))]))
    assert near(run(s.buckets(ACCOUNT, [tokens]))[tokens.field], 900)
    run(s.apply([AdjustBucket(ACCOUNT, BucketSpec(ACCOUNT, "tokens/60", rate=1e-6, capacity=1000, amount=5000))]))
    assert near(run(s.buckets(ACCOUNT, [tokens]))[tokens.field], 1000)
    run(s.apply([LowerBucket(ACCOUNT, tokens, 400), LowerBucket(ACCOUNT, tokens, 700)]))
    assert near(run(s.buckets(ACCOUNT, [tokens]))[tokens.field], 400)
    reqs = requests_bucket(capacity=5, initial=5, rate=10)
    run(s.apply([EmptyBuckets(ACCOUNT, (reqs,), until=now + 20)]))
    refused = run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs,))))
    assert not refused.admitted and near(refused.wait_s, 20)  # refilled long since, but blocked until the retry-after
    subject.advance(20.5)
    assert run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs,)))).admitted


def test_writes_after_a_call_count_hold_and_close_together(subject: Subject) -> None:
    s, now = subject.store, subject.clock.time()
    run(s.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    run(s.apply([AddCount("usage", 3, Window.minute()), AddCount("usage", 4, Window.minute()),
                 ExtendHold(CANDIDATE, "cooldown", now + 15, "429"), ExtendHold(CANDIDATE, "cooldown", now + 5, "429"),
                 BreakerSuccess(CANDIDATE)]))
    assert run(s.count("usage", Window.minute())) == 7
    assert near(run(s.holds())[CANDIDATE].until, now + 15)
    assert run(s.breaker(CANDIDATE)).state == "closed"


def test_clear_buckets_refills_what_a_429_emptied_for_every_handle(subject: Subject) -> None:
    s, other, now = subject.store, subject.another(), subject.clock.time()
    reqs = requests_bucket(capacity=5, initial=5, rate=1e-6)
    spare = BucketSpec("sim#spare", "requests/60", rate=1e-6, capacity=5, initial=5)
    mine = BucketSpec(CANDIDATE, "tokens/60", rate=1e-6, capacity=100, initial=100, amount=10)
    assert run(s.admit(AdmitRequest("sim#spare", buckets=(spare,)))).admitted
    run(s.apply([EmptyBuckets(ACCOUNT, (reqs, mine), until=now + 600), LowerBucket("sim#spare", spare, 0)]))
    refused = run(other.admit(AdmitRequest(ACCOUNT, buckets=(reqs,))))
    assert not refused.admitted and refused.wait_s >= 599
    # a reset of one model drops that model's buckets only: the account's own bucket stays empty
    assert run(other.clear_buckets("model-a")) == 1
    assert near(run(s.buckets(ACCOUNT, [mine]))[mine.field], 100)
    assert not run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs,)))).admitted
    assert run(other.clear_buckets(ACCOUNT)) == 1
    assert near(run(s.buckets(ACCOUNT, [reqs]))[reqs.field], 5)  # as new: its initial level, no retry-after block
    assert run(s.admit(AdmitRequest(ACCOUNT, buckets=(reqs,)))).admitted
    assert not run(s.admit(AdmitRequest("sim#spare", buckets=(spare,)))).admitted
    assert run(s.clear_buckets()) == 2  # all: the spare's, and the account's (taken from again since)
    assert run(other.admit(AdmitRequest("sim#spare", buckets=(spare,)))).admitted
    assert run(s.clear_buckets("nothing-like-it")) == 0


# ---- under concurrency: threads --------------------------------------------------------------------------------

THREADS = 8


def in_threads(subject: Subject, work: Callable[[Any], Awaitable[T]]) -> list[T]:
    """Run `work(handle)` in THREADS threads at once, each on its own handle and event loop."""
    handles = [subject.another() for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            barrier.wait()
            results[i] = run_closing(handles[i], work(handles[i]))
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_threads_lose_no_count_and_share_no_turn(subject: Subject) -> None:
    async def work(h: Any) -> list[int]:
        turns = []
        for _ in range(50):
            await h.add("n", 1, Window.minute(sliding=True))
            turns.append(await h.next_turn("rr", 10**9))
        return turns

    turns = [t for ts in in_threads(subject, work) for t in ts]
    assert run(subject.store.count("n", Window.minute(sliding=True))) == THREADS * 50
    assert sorted(turns) == list(range(THREADS * 50))
    # (a guard that took a busy store for a store down counted locally: its count would be short)
    assert [getattr(h, "failures", 0) for h in subject.handles] == [0] * len(subject.handles)


def test_a_state_file_busy_with_another_writer_is_slow_not_down(tmp_path: Path) -> None:
    """Another process commits again and again, each transaction well within the busy timeout but all of
    them, one after another, for three busy timeouts (a loaded machine, many kernels): a verb waits in line
    behind them, the guard stays shared, the count is exact. (Told by the file's progress, not by time.)"""
    import sqlite3

    from nbrouter.router.state.guarded import GuardedState

    clock, path, busy_s = ManualClock(START), tmp_path / "state.sqlite3", 0.5
    g = GuardedState(SQLiteShared(path, clock=clock, busy_timeout_s=busy_s), clock=clock)
    run(g.add("n", 1, Window.forever()))  # the file and its table exist before the other writer starts
    holding = threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        for i in range(15):  # 15 x busy/5: three busy timeouts of a lock taken again as soon as it is given back
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            threading.Event().wait(busy_s / 5)
            conn.execute("INSERT OR REPLACE INTO shared VALUES ('other', 'x', ?, 1e300)", (str(i),))
            conn.execute("COMMIT")
        conn.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    holding.wait(30)
    try:
        total = run(g.add("n", 1, Window.forever()))
    finally:
        writer.join()
    assert (g.mode, g.failures, g.local_answers) == ("shared", 0, 0)
    assert total == 2
    other = SQLiteShared(path, clock=clock)
    assert run(other.count("n", Window.forever())) == 2
    run(other.close())
    run(g.close())


def test_threads_take_a_bucket_exactly_to_its_capacity_and_one_probe(subject: Subject) -> None:
    run(subject.store.breaker_failure(CANDIDATE, window_s=60, threshold=1, open_s=30))
    subject.advance(31)
    bucket = requests_bucket(capacity=37, initial=37, rate=1e-9)

    async def work(h: Any) -> tuple[int, int, int]:
        probes = int((await h.breaker_admits(CANDIDATE, probe_ttl_s=60))[0])
        taken = sum([(await h.admit(AdmitRequest(ACCOUNT, buckets=(bucket,)))).admitted for _ in range(10)])
        slots = sum([(await h.acquire_slot("sim#other", SlotRequest(limit=5, ttl_s=60))) is not None for _ in range(3)])
        return probes, taken, slots

    results = in_threads(subject, work)
    assert sum(r[0] for r in results) == 1
    assert sum(r[1] for r in results) == 37
    assert sum(r[2] for r in results) == 5


# ---- under concurrency: processes --------------------------------------------------------------------------------

ADDS = 120


def _process(kind: str, target: str, prefix: str, shift: float, barrier: Any, out: Any) -> None:
    """One process's share of the work: adds, turns, admissions and a probe, reported on `out`."""
    from nbrouter.router.state.shared import AdmitRequest, BucketSpec, SlotRequest, Window

    if kind == "sqlite":
        from nbrouter.router.state.shared_sqlite import SQLiteShared

        store: Any = SQLiteShared(target, busy_timeout_s=30.0)
    else:
        from nbrouter.router.state.shared_redis import RedisShared

        store = RedisShared(target, prefix=prefix, timeout_s=10.0)

    async def work() -> tuple[int, list[int], int, int, int]:
        bucket = BucketSpec("sim#main", "requests/60", rate=1e-9, capacity=29, initial=29)
        barrier.wait()
        turns, taken, slots = [], 0, 0
        for _ in range(ADDS):
            await store.add("sent", 1, Window.forever())
            turns.append(await store.next_turn("rr", 10**9))
        probe = int((await store.breaker_admits("sim#main/m", probe_ttl_s=600))[0])
        for _ in range(20):
            taken += (await store.admit(AdmitRequest("sim#main", buckets=(bucket,)))).admitted
            slots += (await store.acquire_slot("sim#other", SlotRequest(limit=3, ttl_s=600))) is not None
        return ADDS, turns, probe, taken, slots

    try:
        out.put(("ok", run_closing(store, work())))
    except BaseException as exc:
        out.put(("error", repr(exc)))


@pytest.mark.parametrize("processes", [2, 4, 8])
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_processes_lose_no_update(kind: str, processes: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    subject = Subject(kind, tmp_path, request.getfixturevalue("redis_server").url() if kind == "redis" else None)
    subject.close()
    target = str(subject.path) if kind == "sqlite" else str(subject.url)
    # a half-open breaker for the processes to race for its probe, on the real clock (no shift across processes)
    if kind == "sqlite":
        store: Any = SQLiteShared(subject.path)
    else:
        from nbrouter.router.state.shared_redis import RedisShared

        store = RedisShared(target, prefix=subject.prefix)
    run_closing(store, store.breaker_failure("sim#main/m", window_s=60, threshold=1, open_s=0.0))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_process, args=(kind, target, subject.prefix, 0.0, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(status == "ok" for status, _ in results), results
    done = [r for _, r in results]
    adds = sum(r[0] for r in done)
    # the server here is the file (or the Redis server): its count is compared with the adds made
    counted = run_closing(store, store.count("sent", Window.forever()))
    assert counted == adds == processes * ADDS
    turns = sorted(t for r in done for t in r[1])
    assert turns == list(range(processes * ADDS))
    assert sum(r[2] for r in done) == 1
    assert sum(r[3] for r in done) == 29
    assert sum(r[4] for r in done) == 3


def test_window_slots_cover_at_least_the_window() -> None:
    w = Window.minute(sliding=True)
    slots = w.slots(START + 0.5)
    assert len(slots) == SLICES + 1 and w.expires(slots[0]) > START + 0.5
    assert math.isinf(Window.forever().expires(0))


# ---- the guard over the file ---------------------------------------------------------------------------------


def test_a_locked_state_file_is_answered_for_locally_and_caught_up_when_it_frees(tmp_path: Path) -> None:
    import sqlite3

    from nbrouter.router.state.guarded import GuardedState, open_shared

    clock, path = ManualClock(START), tmp_path / "state.sqlite3"
    g = open_shared(path=path, clock=clock, timeout_s=0.1, share=0.5)
    assert isinstance(g, GuardedState) and g.kind == "sqlite"
    run(g.extend_hold(CANDIDATE, "cooldown", START + 600, "before"))
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another program holds the file's write lock, for long
    try:
        answer = run(g.admit(AdmitRequest(ACCOUNT, buckets=(requests_bucket(capacity=4, initial=4, rate=1e-6),))))
        assert answer.admitted and answer.local and g.mode == "local" and g.warning and str(path) in g.warning
        assert [run(g.admit(AdmitRequest(ACCOUNT, buckets=(requests_bucket(capacity=4, initial=4, rate=1e-6),)))).admitted
                for _ in range(2)] == [True, False]  # half of the bucket of 4, here alone
        assert not run(g.admit(AdmitRequest(ACCOUNT, holds=(CANDIDATE,)))).admitted  # the mirror keeps the hold
        run(g.extend_hold("sim#spare/m", "lock", START + 900, "while the file was locked"))
        run(g.add("budget", 1.5, Window.forever()))
        assert g.failures == 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert run(g.probe())
    run(g.settle())
    other = SQLiteShared(path, clock=clock)
    assert sorted(run(other.holds())) == sorted([CANDIDATE, "sim#spare/m"])
    assert run(other.count("budget", Window.forever())) == 1.5
    run(other.close())
    run(g.close())

"""Issue 22: a budget shared by every kernel (and machine) whose config names it: `[budget] shared = "NAME"`.

In one process, two Routers on one state file stand for two kernels of one machine; over loopback against
the simulator, on a ManualClock (the store's count is read again at most once a second of it). The
multi-process and two-machine runs, compared with the server's counts, are in test_sharing_processes.py.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_count, sim_config
from nbrouter.router.decide.budget import BUDGET_PREFIX, NANO, SHARED_BUDGET_READ_S
from nbrouter.router.errors import BudgetExceeded, ComboConfigError
from nbrouter.router.state.shared import Window
from nbrouter.testing import ManualClock, Reply

#: every reply's usage, and the prices that make each call cost COST exactly
USAGE = {"input_tokens": 1000, "output_tokens": 500}
PRICES = {"sim/m": {"input_per_mtok": 3, "output_per_mtok": 15}}
COST = Decimal("0.0105")


def budget_config(sim: Any, **budget: Any) -> dict[str, Any]:
    config = sim_config(sim, {"c": {"targets": ["sim/m"]}}, prices=PRICES)
    config["budget"] = budget
    return config


@pytest.fixture
def priced(sim: Any) -> Any:
    sim.script([Reply("ok", usage=USAGE)], model="m", repeat_last=True)
    return sim


def store_count(path: Path, name: str, window: Window | None = None, clock: Any = None) -> float:
    """What the state file counted for a shared budget, read as another process would (on `clock`)."""
    return shared_count(f"{BUDGET_PREFIX}{name}|usd", window, clock=clock, path=path)


def test_a_shared_budget_counts_what_every_kernel_spent_and_holds_each_to_it(priced, make_router, tmp_path) -> None:
    clock = ManualClock()
    config = budget_config(priced, shared="team")
    one, two = make_router(config, clock=clock), make_router(config, clock=clock)  # two kernels, one state file
    results = [one.complete("c", "a"), one.complete("c", "b"), two.complete("c", "c")]
    assert [r.cost_usd for r in results] == [COST] * 3
    # status() sends this kernel's spending and reads every kernel's (a call's own reading is a second old)
    for router in (one, two, one):
        router.status()
    assert one.budget.spent == two.budget.spent == 3 * COST
    assert one.status().budget == "shared budget 'team': spent $0.031500 (no budget)"
    # the store counted in billionths of a dollar, what the calls cost and no more
    assert store_count(tmp_path / "state.sqlite3", "team") == float(3 * COST * NANO)
    # a limit the others' spending has used up: the next call is refused before anything is sent
    two.budget.set_limit(3 * COST)
    sent = len(priced.requests)
    with pytest.raises(BudgetExceeded) as refused:
        two.complete("c", "e")
    assert "shared budget 'team'" in str(refused.value) and len(priced.requests) == sent
    # a session budget of the same size would have let it go: two spent only COST itself
    alone = make_router(budget_config(priced), clock=clock, budget_usd=float(3 * COST))
    assert alone.complete("c", "f").cost_usd == COST


def test_the_stores_count_is_read_at_most_once_a_second_and_this_kernels_spending_adds_to_it(priced, make_router) -> None:
    clock = ManualClock()
    config = budget_config(priced, shared="team")
    one, two = make_router(config, clock=clock), make_router(config, clock=clock)
    one.complete("c", "a")
    reads = one.budget.shared.reads
    two.complete("c", "b")
    two.status()  # (two's spending sent to the store now, not with the writes gathered after calls)
    one.complete("c", "c")  # within the second: no reading, its own spending counts at once
    assert one.budget.shared.reads == reads
    assert one.budget.spent == 2 * COST  # its own two; two's call is not read yet
    clock.advance(SHARED_BUDGET_READ_S)
    one.complete("c", "d")
    assert one.budget.shared.reads == reads + 1
    assert one.budget.spent == 4 * COST  # the store's three (two's among them) and its own since


def test_a_budget_per_day_starts_again_at_the_utc_day(priced, make_router, tmp_path) -> None:
    clock = ManualClock()
    config = budget_config(priced, shared="team", per="day", usd=1.0)
    one, two = make_router(config, clock=clock), make_router(config, clock=clock)
    one.complete("c", "a")
    two.complete("c", "b")
    for router in (one, two, one):
        router.status()
    assert one.budget.spent == 2 * COST and one.budget.label == "shared budget 'team' (today)"
    clock.advance(86400 - clock.time() % 86400)  # the next UTC day
    assert one.budget.spent == 0 and two.budget.spent == 0
    two.complete("c", "c")
    two.status()
    clock.advance(SHARED_BUDGET_READ_S)
    one.explain("c", "x")  # (a decision reads the store's count again once it is a second old)
    assert one.budget.spent == COST
    assert store_count(tmp_path / "state.sqlite3", "team", window=Window.day(), clock=clock) == float(COST * NANO)


def test_calls_at_an_unknown_price_are_counted_for_every_kernel_too(sim, make_router) -> None:
    sim.script([Reply("ok", usage=USAGE)], model="unpriced", repeat_last=True)
    clock = ManualClock()
    config = sim_config(sim, {"c": {"targets": ["sim/unpriced"]}}, budget={"shared": "team"})
    one, two = make_router(config, clock=clock), make_router(config, clock=clock)
    one.complete("c", "a")
    two.complete("c", "b")
    for router in (one, two, one):
        router.status()
    assert one.budget.unknown_calls == 2 and one.budget.spent == 0
    assert "2 calls at unknown price" in one.budget.text()


def test_budgets_of_other_names_are_apart_and_a_session_budget_is_not_shared(priced, make_router) -> None:
    clock = ManualClock()
    team, other = budget_config(priced, shared="team"), budget_config(priced, shared="other-team")
    one, two, three = make_router(team, clock=clock), make_router(other, clock=clock), make_router(budget_config(priced), clock=clock)
    for router in (one, two, three):
        router.complete("c", "a")
    for router in (one, two, three, one, two):
        router.status()
    assert [r.budget.spent for r in (one, two, three)] == [COST, COST, COST]
    assert three.budget.shared is None and three.budget.label == "session budget"


def test_router_arguments_win_over_the_budget_table_and_an_edited_table_applies(priced, tmp_path) -> None:
    from nbrouter import Router

    path = tmp_path / "config.toml"
    base = (f'[providers.sim]\nprotocol = "openai"\nbase_url = "{priced.openai_url}"\napi_key_env = "SIM_KEY"\n'
            '[combos.c]\ntargets = ["sim/m"]\n')
    path.write_text(base + '[budget]\nusd = 2.0\non_budget = "cheapest"\nstrict = true\n')
    with Router(path, persist=False) as from_file, Router(path, persist=False, budget_usd=5.0, on_budget="stop") as given:
        assert (from_file.budget.limit, from_file.budget.on_budget, from_file.budget.strict) == (Decimal("2.0"), "cheapest", True)
        assert (given.budget.limit, given.budget.on_budget, given.budget.strict) == (Decimal("5.0"), "stop", True)
        path.write_text(base + '[budget]\nusd = 3.0\nshared = "team"\n')
        from_file.reload()
        given.reload()
        assert from_file.budget.limit == Decimal("3.0") and from_file.budget.on_budget == "stop"
        assert given.budget.limit == Decimal("5.0") and given.budget.shared is not None and given.budget.shared.name == "team"


@pytest.mark.parametrize(("table", "field", "why"), [
    ('per = "day"', "per", "goes with `shared"),
    ('shared = "a team"', "shared", "a name of letters"),
    ('shared = "team"\nper = "week"', "per", "unknown window 'week' (known: total, day)"),
    ("usd = -1", "usd", "must be a non-negative number"),
    ('on_budget = "first"', "on_budget", "unknown on_budget mode 'first'"),
    ('spend = 1', "spend", "unknown key 'spend' in [budget]"),
])
def test_a_wrong_budget_table_names_the_file_and_the_field(tmp_path, table: str, field: str, why: str) -> None:
    from nbrouter import Router

    path = tmp_path / "config.toml"
    path.write_text(f"[budget]\n{table}\n")
    with pytest.raises(ComboConfigError) as caught:
        Router(path, persist=False)
    text = str(caught.value)
    assert str(path) in text and f"field 'budget.{field}'" in text and why in text, text


def test_a_clusters_workers_get_no_budget_so_the_driver_counts_their_spending_once(priced, make_router) -> None:
    from nbrouter.router.batch.worker import config_data

    router = make_router(budget_config(priced, shared="team", usd=1.0))
    data = config_data(router.config)
    assert "budget" not in data and "budget" in router.config.raw


def test_a_cost_still_on_its_way_to_the_store_is_counted_while_the_count_is_read() -> None:
    # another kernel spent 0.02 (in the store); this one's 0.01 is on its way when the count is read: the
    # reading does not hold it yet, so it is added to the reading, never dropped
    from nbrouter.router.decide.budget import Budget, SharedBudget
    from nbrouter.router.state.shared import AddCount, MemoryShared
    from nbrouter.router.types import Action, Attempt

    clock = ManualClock()

    class Slow(MemoryShared):
        """The memory store, its writes held until `gate` opens (a slow round trip)."""

        gate: asyncio.Event

        async def apply(self, writes: Any) -> None:
            await self.gate.wait()
            await super().apply(writes)

    async def run() -> list[Decimal]:
        store = Slow(clock)
        store.gate = asyncio.Event()
        await MemoryShared.apply(store, [AddCount(f"{BUDGET_PREFIX}team|usd", float(Decimal("0.02") * NANO), Window.forever())])
        budget = Budget()
        budget.share(SharedBudget("team", "total", lambda: None, clock))
        budget.record([Attempt("sim#default/m", "sim#default/m", Action.SERVED, 0.0, cost_usd=Decimal("0.01"))])
        flush = asyncio.ensure_future(budget.flush(store))
        await asyncio.sleep(0)
        seen = []
        await budget.refresh(store, force=True)
        seen.append(budget.spent)  # the store's 0.02 and this kernel's 0.01 on its way
        store.gate.set()
        await flush
        seen.append(budget.spent)  # (it landed after the reading: still counted once)
        await budget.refresh(store, force=True)
        seen.append(budget.spent)
        return seen

    assert asyncio.run(run()) == [Decimal("0.03"), Decimal("0.03"), Decimal("0.03")]


def test_a_shared_budget_goes_on_while_redis_is_away_and_what_was_spent_meanwhile_is_written_back(
        priced, start_redis, make_router, tmp_path) -> None:
    import time as _time
    import uuid

    server = start_redis()
    config = budget_config(priced, shared="team", usd=1.0)
    config["state"] = {"prefix": f"budget-{uuid.uuid4().hex[:8]}:", "timeout_s": 0.5}
    # two machines: a state file each, one Redis
    one = make_router(config, state_url=server.url(), state_path=tmp_path / "one.sqlite3")
    two = make_router(config, state_url=server.url(), state_path=tmp_path / "two.sqlite3")
    one.complete("c", "a")
    two.complete("c", "b")
    two.status()
    assert one.status().budget == "shared budget 'team': spent $0.021000 of $1.000000 (stop)"
    server.stop()  # SIGKILL
    one.complete("c", "c")  # calls go on
    one.complete("c", "d")
    status = one.status()
    assert status.store["mode"] == "local" and "not answering" in status.warning
    assert one.budget.spent == 4 * COST  # the last reading (both machines' two) and its own two since
    server.restart()  # empty: what it counted before is gone
    deadline = _time.monotonic() + 30
    while one.status().store["mode"] != "shared" and _time.monotonic() < deadline:
        _time.sleep(0.1)  # (the guard tries the store again after its retry spacing)
    assert one.status().store["mode"] == "shared"
    written = 0.0
    while written < float(2 * COST * NANO) and _time.monotonic() < deadline:
        written = shared_count(f"{BUDGET_PREFIX}team|usd", url=server.url(), prefix=config["state"]["prefix"])
        _time.sleep(0.05)
    assert written == float(2 * COST * NANO)  # what one spent while Redis was away, written back


def test_a_kernel_that_closes_right_after_its_calls_leaves_what_it_spent_in_the_store(priced, make_router, tmp_path) -> None:
    router = make_router(budget_config(priced, shared="team"))
    for prompt in ("a", "b", "c"):
        router.complete("c", prompt)
    assert router.budget.unsent  # (written behind the calls: not yet)
    router.close()
    assert store_count(tmp_path / "state.sqlite3", "team") == float(3 * COST * NANO)

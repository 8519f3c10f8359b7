"""Issue 17, the response cache: the same request is never paid for twice, and a hit says so."""

from __future__ import annotations

import datetime
import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import SIM_KEY, sim_config
from nbrouter.router.run.cache import ResponseCache
from nbrouter.testing import ManualClock, Reply

PRICES = {"sim/m": {"input_per_mtok": 100, "output_per_mtok": 100}}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBROUTER_CACHE", str(tmp_path / "responses.sqlite3"))


def config(sim: Any, **extra: Any) -> dict[str, Any]:
    return sim_config(sim, {"c": {"targets": ["sim/m"]}}, prices=PRICES, **extra)


def test_a_cached_call_is_answered_without_a_request_and_shown_as_cached(sim, make_router) -> None:
    sim.set_default(Reply("the answer", usage={"input_tokens": 6, "output_tokens": 6}))
    router = make_router(config(sim))
    first = router.complete("c", "question", cache=True)
    assert first.cached is None and first.cost_usd == Decimal("0.0012")
    second = router.complete("c", "question", cache=True)
    assert len(sim.requests) == 1
    assert second.text == "the answer" and second.cost_usd == 0 and second.cached is not None
    assert second.cached.cost_usd == Decimal("0.0012") and second.cached.served_by == "sim#default/m"
    day = datetime.date.today().isoformat()
    assert second.footer() == f"cached · served by sim#default/m on {day} · $0 now ($0.0012 then)"
    assert [(a.action.value, a.candidate) for a in second.attempts] == [("cached", "sim#default/m")]
    assert router.log(1)[0]["action"] == "cached"
    stats = router.cache.stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1 and stats["saved_usd"] == Decimal("0.0012")


def test_without_cache_true_a_single_call_neither_reads_nor_writes_the_cache(sim, make_router) -> None:
    router = make_router(config(sim))
    router.complete("c", "q")
    router.complete("c", "q")
    assert len(sim.requests) == 2 and router.cache.stats()["entries"] == 0


@pytest.mark.parametrize("change", [
    {"system": "be brief"}, {"max_tokens": 7}, {"temperature": 0.5},
    {"schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
])
def test_the_key_covers_messages_system_options_and_schema(sim, make_router, change: dict[str, Any]) -> None:
    sim.set_default(Reply('{"a": "x"}'))
    router = make_router(config(sim))
    router.complete("c", "q", cache=True)
    router.complete("c", "q", cache=True, **change)
    router.complete("c", "another q", cache=True)
    assert len(sim.requests) == 3


def test_the_key_is_the_resolved_targets_so_two_combos_of_one_target_share_it(sim, make_router) -> None:
    router = make_router(sim_config(sim, {"c": {"targets": ["sim/m"]}, "d": {"targets": ["sim/m"], "max_attempts": 2}}))
    router.complete("c", "q", cache=True)
    assert router.complete("d", "q", cache=True).cached is not None
    assert router.complete("sim/m", "q", cache=True).cached is not None
    router.complete("sim/other", "q", cache=True)
    assert [r.model for r in sim.requests] == ["m", "other"]


def test_an_entry_older_than_the_ttl_is_not_used(sim, make_router, tmp_path: Path) -> None:
    clock = ManualClock()
    router = make_router(config(sim), clock=clock)
    router.cache = ResponseCache(tmp_path / "ttl.sqlite3", ttl_s=3600)
    router.complete("c", "q", cache=True)
    clock.advance(3599)
    assert router.complete("c", "q", cache=True).cached is not None
    clock.advance(2)
    assert router.complete("c", "q", cache=True).cached is None
    assert len(sim.requests) == 2


def test_clear_empties_it(sim, make_router) -> None:
    router = make_router(config(sim))
    router.map("c", ["a", "b"])
    assert router.cache.clear() == 2 and router.cache.stats()["entries"] == 0
    router.map("c", ["a", "b"])
    assert len(sim.requests) == 4


def test_with_log_content_false_map_does_not_cache_unless_asked(sim, make_router) -> None:
    router = make_router(config(sim, log_content=False))
    router.map("c", ["a"])
    router.map("c", ["a"])
    assert len(sim.requests) == 2 and router.cache.stats()["entries"] == 0
    router.map("c", ["a"], cache=True)
    assert router.map("c", ["a"], cache=True)[0].cached is not None
    assert len(sim.requests) == 3


def test_the_cache_file_is_private_and_holds_no_key(sim, make_router, tmp_path: Path) -> None:
    router = make_router(config(sim))
    router.complete("c", "q", cache=True)
    path = tmp_path / "responses.sqlite3"
    assert Path(router.cache.stats()["path"]) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    router.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("responses.sqlite3*"))
    assert SIM_KEY.encode() not in blob and SIM_KEY[-8:].encode() not in blob


def test_a_router_that_persists_nothing_caches_in_memory(sim, make_router, tmp_path: Path) -> None:
    router = make_router(config(sim), persist=False)
    router.complete("c", "q", cache=True)
    assert router.complete("c", "q", cache=True).cached is not None
    assert router.cache.stats()["path"] == ":memory:" and not (tmp_path / "responses.sqlite3").exists()

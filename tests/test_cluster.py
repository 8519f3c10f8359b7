"""Issue 23, what a cluster needs before any cluster runs: every value that crosses to a worker and back
pickles whole (each kind of RouteError, results, requests without their pacer), the driver's configuration
travels as data without a key, a key about to be shipped is refused, and `import nbrouter` loads neither
Dask nor Ray. The engines themselves are tested in test_cluster_dask.py and test_cluster_ray.py."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import SIM_KEY, sim_config
from nbrouter import (
    AllCoolingDown,
    AllTargetsFailed,
    BudgetExceeded,
    ComboConfigError,
    NoProviders,
    RouteError,
    RouteResult,
    StopError,
)
from nbrouter.router import build_request
from nbrouter.router.batch.cluster import ClusterExecutor, executor_for
from nbrouter.router.batch.dispatch import CANCELLED, NotDone, pacer_for
from nbrouter.router.batch.worker import (
    KeyLeak,
    WorkerError,
    WorkerLost,
    config_data,
    keys_of,
    pack,
    spec_for,
    unpack,
)
from nbrouter.testing import ContentFilter, RateLimited, Reply, ServerError

ROOT = Path(__file__).resolve().parents[1]


def combo(*targets: str, **options: Any) -> dict[str, Any]:
    return {"c": {"targets": list(targets), **options}}


def _raised(call: Any) -> RouteError:
    with pytest.raises(RouteError) as err:
        call()
    return err.value


def _same_error(a: RouteError, b: RouteError) -> None:
    assert type(b) is type(a)
    assert str(b) == str(a) and b.args == a.args
    assert [x.as_dict() for x in b.attempts] == [x.as_dict() for x in a.attempts]
    mine = {k: v for k, v in vars(a).items() if k != "attempts"}
    theirs = {k: v for k, v in vars(b).items() if k != "attempts"}
    assert theirs == mine


def test_every_kind_of_route_error_survives_a_pickle_round_trip(sim, make_router) -> None:
    priced = {t: {"input_per_mtok": 1000, "output_per_mtok": 1000} for t in ("sim/a", "sim/b")}
    router = make_router(sim_config(sim, combo("sim/a", "sim/b"), prices=priced))
    errors: list[RouteError] = []
    sim.script([ServerError(500)], model="a")
    sim.script([ServerError(503)], model="b")
    errors.append(_raised(lambda: router.complete("c", "hi")))                              # AllTargetsFailed
    sim.reset()
    sim.script([ContentFilter()], model="a")
    errors.append(_raised(lambda: router.complete("c", "hi")))                              # StopError
    sim.reset()
    errors.append(_raised(lambda: router.complete("c", "hi", max_tokens=100, max_cost_usd=1e-9)))  # BudgetExceeded
    router.reset()
    sim.script([RateLimited(retry_after=300)], model="a")
    sim.script([RateLimited(retry_after=40)], model="b")
    _raised(lambda: router.complete("c", "hi"))
    errors.append(_raised(lambda: router.complete("c", "hi")))                              # AllCoolingDown
    errors.append(_raised(lambda: router.complete("nope", "hi")))                           # ComboConfigError
    errors += [NoProviders("a config file"), RouteError("plain", errors[0].attempts), NotDone(CANCELLED),
               WorkerError("ValueError on a worker: x"), WorkerLost("lost")]
    kinds = [type(e) for e in errors]
    assert kinds[:5] == [AllTargetsFailed, StopError, BudgetExceeded, AllCoolingDown, ComboConfigError]
    for error in errors:
        for dumps in (pickle.dumps, pack):
            copy = unpack(dumps(error))
            _same_error(error, copy)
    assert unpack(pack(errors[3])).first_free == "sim#default/b"


def test_results_and_requests_pickle_and_the_request_leaves_its_pacer_behind(sim, make_router) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY", "models": ["a", "b"]}}
    router = make_router(sim_config(sim, {**combo("sim/a", "sim/b"), "smart": {"strategy": "auto"}}, providers=providers))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    sim.script([ServerError(500)], model="a")
    results: list[RouteResult] = [router.complete("c", "hi"), router.complete("smart", "hello", seed=3)]
    sim.set_default(Reply('{"n": 4}'))
    results.append(router.complete("c", "give n", schema=schema, cache=True))
    results.append(router.complete("c", "give n", schema=schema, cache=True))  # from the cache
    assert results[3].cached is not None and results[0].attempts[0].kind is not None
    for result in results:
        copy = unpack(pack(result))
        assert repr(copy) == repr(result) and copy.text == result.text and copy.parsed == result.parsed
        assert copy.footer() == result.footer() and copy.attempt_table() == result.attempt_table()
        assert (copy.decision is None) == (result.decision is None)
        if result.decision is not None:
            assert copy.decision is not None and copy.decision.table() == result.decision.table()

    request = build_request("c", "hi", stream=False, cache=True, schema=schema)
    request.pacer = pacer_for(router)
    assert request.prompt_text == "hi"
    copy = unpack(pack(request))
    assert copy.pacer is None and request.pacer is not None  # the original keeps pacing this process
    assert copy.messages == request.messages and copy.schema == request.schema and copy.prompt_text == "hi"
    assert b"Pacer" not in pack(request) and b"lock" not in pack(request)


def test_the_driver_configuration_travels_as_data_and_builds_the_same_router(sim, make_router, monkeypatch) -> None:
    from nbrouter import Router

    monkeypatch.setenv("OPENAI_API_KEY", "sk-envfound-0123456789abcdef")
    found = make_router(None)  # zero-config: the providers come from the environment
    data = config_data(found.config)
    assert data["providers"]["openai"]["api_key_env"] == "OPENAI_API_KEY"
    blob = pack(data)
    assert b"sk-envfound-0123456789abcdef" not in blob
    rebuilt = Router(data, persist=False)
    try:
        assert sorted(rebuilt.config.providers) == sorted(found.config.providers)
        assert rebuilt.config.providers["openai"].accounts[0].api_key() == "sk-envfound-0123456789abcdef"  # its own env
    finally:
        rebuilt.close()

    accounts = [{"name": "a", "api_key_env": "SIM_KEY", "quota": {"requests_per_minute": 120}},
                {"name": "b", "api_key_command": ["printf", "k"]}]
    config = {"providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "accounts": accounts}}, **{"combos": combo("sim/m")}}
    router = make_router(config)
    spec = spec_for(router, account_concurrency=3, share=0.5)
    assert spec.config == config and spec.state_path == str(router.state.path) and spec.share == 0.5
    again = spec.factory(spec.config, persist=False)
    try:
        assert again.config.hash == router.config.hash
    finally:
        again.close()


def test_a_key_about_to_be_shipped_is_refused_before_anything_is_sent(sim, make_router) -> None:
    providers = {"sim": {"protocol": "openai", "base_url": sim.openai_url, "api_key_env": "SIM_KEY",
                         "headers": {"x-team": SIM_KEY}}}  # a key written into the config: it would travel
    router = make_router(sim_config(sim, combo("sim/m"), providers=providers))
    assert keys_of(router.config) == [SIM_KEY.encode()]

    class Nowhere:
        """An engine that must never be reached."""

        name = "nowhere"
        submitted = 0

        def slots(self) -> int:
            return 1

        def pacers(self) -> int:
            return 1

        def submit(self, spec: bytes, chunk: bytes) -> Any:
            Nowhere.submitted += 1
            raise AssertionError("shipped")

        def stop_check(self) -> None:
            return None

        def stopped(self) -> None:
            pass

        def close(self) -> None:
            pass

    with pytest.raises(KeyLeak, match="holds an account's key") as err:
        router.map("c", ["a", "b"], executor=ClusterExecutor(router, Nowhere()))
    assert SIM_KEY not in str(err.value)
    assert Nowhere.submitted == 0 and sim.requests == []


def test_an_executor_that_is_none_of_the_known_kinds_is_a_type_error(sim, make_router) -> None:
    router = make_router(sim_config(sim, combo("sim/m")))
    with pytest.raises(TypeError, match="distributed.Client"):
        router.map("c", ["a"], executor=object())
    with pytest.raises(TypeError, match="distributed.Client"):
        executor_for("dask", router, account_concurrency=None)
    assert sim.requests == []


def test_import_nbrouter_and_a_local_batch_load_neither_dask_nor_ray(sim) -> None:
    script = textwrap.dedent(f"""
        import sys
        import nbrouter
        router = nbrouter.Router({{"providers": {{"sim": {{"protocol": "openai", "base_url": "{sim.openai_url}",
                                  "api_key_env": "SIM_KEY"}}}}, "combos": {{"c": {{"targets": ["sim/m"]}}}}}}, persist=False)
        assert router.map("c", ["a", "b"], cache=False).done == 2
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("distributed", "dask", "ray", "cloudpickle"))
        print(loaded)
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SIM_KEY": SIM_KEY, "NBROUTER_LOCAL_URLS": "",
           "NBROUTER_CONFIG": "/nonexistent/nbrouter.toml"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


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
    spec = spec_for(router)
    assert spec.config == config and spec.state_path == str(router.state.path)
    assert spec.cache_path == str(router.cache.path) and spec.persist
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
        executor_for("dask", router)
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



# ---- shared by the engines' tests (test_cluster_dask.py, test_cluster_ray.py) ---------------------------

#: two accounts' keys for the limit tests; set before a cluster starts, so its workers have them
KEY_A = "sim-account-a-key-7f3a9c"
KEY_B = "sim-account-b-key-2b8e41"
#: set on the driver only (a worker started before it has no such variable)
DRIVER_ONLY_ENV = "NBROUTER_TEST_DRIVER_ONLY_KEY"


def require(module: str) -> Any:
    """The module; without it the test is skipped, or fails under NBROUTER_REQUIRE_CLUSTER=1 (CI)."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("NBROUTER_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"{module} is required (NBROUTER_REQUIRE_CLUSTER=1): pip install nbrouter[dask,ray]")
        pytest.skip(f"{module} is not installed (the dask / ray extras)")


def cluster_env() -> dict[str, str]:
    """What a test cluster's workers find in their environment (they read their keys from it)."""
    return {"SIM_KEY": SIM_KEY, "SIM_KEY_A": KEY_A, "SIM_KEY_B": KEY_B}


#: each key's real limit at the simulator: REQUESTS per WINDOW_S seconds, sliding (scaled down, as in
#: test_sharing_processes.py, so that a run of a few hundred items meets it within seconds)
REQUESTS, WINDOW_S = 20, 2.0
#: the same limit as the config states it
PER_MINUTE = int(REQUESTS * 60 / WINDOW_S)


def limited_config(sim: Any) -> dict[str, Any]:
    """One provider with two accounts (keys A and B), each with `quota` at the server's real limit, which the
    simulator now enforces per key."""
    from nbrouter.testing import WindowLimits

    sim.rate_limits.set_default(WindowLimits(requests=REQUESTS, window_s=WINDOW_S))
    accounts = [{"name": name, "api_key_env": env, "quota": {"requests_per_minute": PER_MINUTE}}
                for name, env in (("a", "SIM_KEY_A"), ("b", "SIM_KEY_B"))]
    return {"providers": {"sim": {"protocol": "openai", "base_url": sim.openai_url, "accounts": accounts}},
            "combos": combo("sim/m")}


def _prompt(request: Any) -> str | None:
    if isinstance(request.body, dict) and request.body.get("messages"):
        return str(request.body["messages"][-1]["content"])
    return None


def prompts_received(sim: Any, status: int | None = None) -> dict[str, int]:
    """How many times the server received each prompt (its last user message), answered `status` if given."""
    counts: dict[str, int] = {}
    for request in sim.requests:
        text = _prompt(request)
        if text is not None and (status is None or request.status == status):
            counts[text] = counts.get(text, 0) + 1
    return counts


def sent_after_answered(sim: Any) -> set[str]:
    """The prompts the server received again after it had answered one of them 200 (never right)."""
    answered: set[str] = set()
    again: set[str] = set()
    for request in sorted(sim.requests, key=lambda r: r.time):
        text = _prompt(request)
        if text in answered:
            again.add(text)
        if text is not None and request.status == 200:
            answered.add(text)
    return again


def check_limits_kept(sim: Any, sent: int) -> None:
    """The server's own counts: fewer than 1 % of requests answered 429, every key within its limit in every
    window, and both keys used."""
    keys = sim.stats()["keys"]
    received = sum(k["received"] for k in keys.values())
    limited = sum(k["rate_limited"] for k in keys.values())
    assert received >= sent and len(keys) == 2
    assert limited < 0.01 * received, f"{limited} of {received} requests answered 429"
    assert all(k["max_in_window"] <= REQUESTS for k in keys.values())


class Watch:
    """An Executor around another: notes each item's position as its outcome reaches the driver, and calls
    `at(n)` once, after the n-th (a test's moment to kill a worker or press Ctrl-C)."""

    def __init__(self, inner: Any, n: int, at: Any) -> None:
        self.inner = inner
        self.concurrency = inner.concurrency
        self.got: list[int] = []
        self._n = n
        self._at = at

    async def run(self, item: Any) -> Any:
        outcome = await self.inner.run(item)
        self.got.append(item.position)
        if len(self.got) == self._n:
            self._at()
        return outcome

    def close(self) -> None:
        self.inner.close()


class Recording:
    """An Engine around another that keeps every byte shipped to the workers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.shipped: list[bytes] = []

    def slots(self) -> int:
        return int(self.inner.slots())

    def submit(self, spec: bytes, chunk: bytes) -> Any:
        self.shipped += [spec, chunk]
        return self.inner.submit(spec, chunk)

    def stop_check(self) -> Any:
        return self.inner.stop_check()

    def stopped(self) -> None:
        self.inner.stopped()

    def close(self) -> None:
        self.inner.close()


def cache_keys(path: Any) -> set[str]:
    """The keys in a response cache file now (read as another process would)."""
    import sqlite3

    db = sqlite3.connect(str(path))
    try:
        return {row[0] for row in db.execute("SELECT key FROM responses")}
    except sqlite3.OperationalError:  # no table yet: nothing stored
        return set()
    finally:
        db.close()


def descendants(root: int) -> set[int]:
    """`root` and every process started under it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def listeners(pids: set[int]) -> list[tuple[str, str, int]]:
    """(local address, process name, pid) of every TCP or UDP socket those processes listen on (`ss -ltunpH`)."""
    import re

    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        local = parts[4] if len(parts) > 4 else ""
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                found.append((local, name, int(pid)))
    return found


def beyond_loopback(found: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The listeners whose address is not a loopback one (`*`, 0.0.0.0, the machine's own address...)."""
    def loopback(local: str) -> bool:
        host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        host = host[len("::ffff:"):] if host.startswith("::ffff:") else host
        return host.startswith("127.") or host in ("::1", "localhost")

    return [f for f in found if not loopback(f[0])]


def processes_titled(prefix: str, pids: set[int]) -> list[int]:
    """Those of `pids` whose command line (a Ray worker's process title) starts with `prefix`."""
    found = []
    for pid in pids:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            found.append(pid)
    return found


def answered_at_seventh(sim: Any, router: Any, executor: Any) -> int:
    """One chunk of 8 items whose last call to arrive is answered 3 s after the others: how many the server
    had answered when the 7th outcome reached the driver (7 when outcomes come back as items finish; 8 when
    they come back with their chunk)."""
    sim.script([Reply()] * 7 + [Reply(delay_s=3.0)], model="m")
    seen: dict[str, int] = {}

    def note() -> None:
        seen["answered"] = sum(1 for r in sim.requests if r.status == 200)

    watch = Watch(executor, 7, note)
    batch = router.map("c", [f"q{i}" for i in range(8)], executor=watch, cache=False)
    assert batch.done == 8 and executor.chunks == 1  # one chunk
    return seen["answered"]

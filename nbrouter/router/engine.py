"""The Router: the one object users, magics and widgets call. It wires the parts and keeps the public methods.

    config (config.py) ─> Decider (decide.py: resolve, skip checks, strategy) ─> Loop (loop.py: attempts,
    policy table) ─> providers (the wire) ; StateStore (state.py) remembers ; Status (status.py) reports

Around them: combo edits (editing.py), zero-config discovery (discovery.py), one HTTP sender per event loop
(clients.py), the session budget (budget.py), batch work and the response cache (batch.py, cache.py, loaded
on first use). The async core runs on the caller's loop (`acomplete`, `astream`) or, for the sync methods,
on a private loop in a daemon thread (`background.py`), so a sync call works in plain Python, inside a
running event loop (a Jupyter cell) and from several threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any, AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Literal, Mapping, Sequence, overload

from .._core import Clock
from .._core.clock import SYSTEM_CLOCK
from .._core.closing import close_at_exit
from ..providers.models import ModelList, fetch_model_list
from .run.background import BackgroundLoop
from .decide.budget import Budget, SharedBudget
from .config import editing
from .config.loading import load_config
from .run.clients import Senders
from .decide.decider import Decider
from .config.discovery import Discovery
from .run.loop import Emit, Hooks, Loop
from .model import Combo, Config, Provider
from .decide.pricing import PriceBook
from .policy import Policy
from .requests import CallOptions, CallRequest, build_request
from .state.backends import StateBackend
from .state.guarded import open_shared
from .state.pacing import Pacer
from .state.shared import SharedState
from .state.store import StateStore
from .status import Status, collect_status, reset_holds, reset_matches
from .decide.strategies import STRATEGIES
from .types import Attempt, Candidate, Decision, Done, RouteEvent, RouteResult

if TYPE_CHECKING:  # batch work and the response cache load on first use: `import nbrouter` stays light
    import httpx
    from typing_extensions import Unpack

    from ..providers import ChatRequest, Completion, Endpoint, WireProtocol
    from .batch.dispatch import BatchResult
    from .batch.jobs import BatchJob, JobList
    from .run.cache import ResponseCache
    from .structured import SchemaSpec

# made after the sets of state.py, store.py and background.py (imported above): closed before them at exit
_routers: "weakref.WeakSet[Router]" = close_at_exit()


log = logging.getLogger("nbrouter")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _is_done(event: RouteEvent) -> bool:
    return isinstance(event, Done)


def _batch_mode(mode: str, options: dict[str, Any]) -> bool:
    """Whether `map` goes through the batch APIs; the batch-only options are refused for a live map."""
    if mode not in ("live", "batch"):
        raise ValueError(f"mode must be 'live' or 'batch', not {mode!r}")
    if mode == "live" and ("fallback" in options or "max_job_rows" in options):
        raise TypeError("fallback= and max_job_rows= are options of mode='batch'")
    return mode == "batch"


class Router:
    """Routes calls to combos of provider/model targets, with fallback, remembered state and costs.

    Args:
        config: a TOML file's path, a dict of the same shape, or None for `NBROUTER_CONFIG` or the user
            config dir (with no file at all: the providers found in the environment).
        state_path: the SQLite state file (default: `NBROUTER_STATE`, the config's `state_path`, the user state dir).
        persist: False keeps all state in memory only.
        clock: what the router reads the time from and waits on (tests: `nbrouter.testing.ManualClock`).
        transport: an `httpx.AsyncBaseTransport` to send through (a test's `httpx.MockTransport`); default httpx
            over aiohttp.
        http_client: an `httpx.AsyncClient` of yours to send with; you close it.
        budget_usd: a session budget in dollars for every call of this Router (`router.budget`); default: the
            config's `[budget] usd`. With `[budget] shared = "NAME"` every Router naming it on the same state
            store (the state file, or Redis) spends from one budget.
        on_budget: "stop" (refuse a call whose first choice does not fit what is left) or "cheapest" (move to
            the cheapest candidate whose estimate fits); default: `[budget] on_budget`, else "stop".
        budget_strict: with a budget, also skip candidates whose price is unknown (default: `[budget] strict`).
        on_attempt: called with each `Attempt` as it ends (off the request path; what it raises is logged, never
            raised into the call).
        on_result: called with each `RouteResult` (likewise).
        backend: where the state is kept, a `StateBackend` (default: the SQLite file of `state_path`, or memory
            with persist=False).
        seed: the seed of the router's own draws (the jitter of retry waits), so that a test can fix them
            (default: drawn from the system).
        state_url: where the state shared with other machines is kept: a Redis URL (`redis://host:6379/0`,
            `rediss://` for TLS). Default: `NBROUTER_STATE_URL`, else the config's `[state] url`, else the
            state file (shared by the kernels of this machine). A malformed URL or a refused password is a
            ComboConfigError; a server that does not answer is "down" (`router.shared.mode`), not an error.
    """

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any] | None = None, *,
                 state_path: str | os.PathLike[str] | None = None, persist: bool = True, clock: Clock | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, http_client: httpx.AsyncClient | None = None,
                 budget_usd: float | None = None, on_budget: str | None = None, budget_strict: bool | None = None,
                 on_attempt: Callable[[Attempt], object] | None = None,
                 on_result: Callable[[RouteResult], object] | None = None, backend: StateBackend | None = None,
                 seed: int | None = None, state_url: str | None = None) -> None:
        self._config_source = config
        self.config: Config = load_config(config, strategies=STRATEGIES)
        self.clock: Clock = clock or SYSTEM_CLOCK
        if state_path is None and persist:
            state_path = os.environ.get("NBROUTER_STATE") or self.config.state_path
        self.state = StateStore(state_path, policy=self.config.policy, persist=persist, log_content=self.config.log_content,
                                clock=self.clock, backend=backend)
        try:
            #: the state shared with the other kernels and machines (atomic verbs; see state/shared.py)
            self.shared: SharedState = self._open_shared(state_url)
        except BaseException:  # a wrong URL or password: the state file opened above is closed again
            self.state.close()
            raise
        self.prices = PriceBook(self.config)
        #: the session budget (spent is counted even without a limit); the arguments win over `[budget]`
        self._budget_args = (budget_usd, on_budget, budget_strict)
        settings = self.config.budget
        self.budget = Budget(budget_usd if budget_usd is not None else settings.usd,
                             on_budget=on_budget or settings.on_budget or "stop",
                             strict=budget_strict if budget_strict is not None else bool(settings.strict))
        self._decider = Decider(self.config, self.state, self.prices, self.clock, self.budget,
                                pacer=Pacer(self.config, self.shared, clock=self.clock))
        self._senders = Senders(transport=transport, http_client=http_client, clock=self.clock)
        self._loop = Loop(self._decider, self.state, self.clock, self._send, Hooks(on_attempt, on_result), random.Random(seed),
                          list_models=self._list_models)
        self._bg = BackgroundLoop()
        self._closed = False
        self._discovery = Discovery(self.config, self._decider, self.clock)
        self._cache: ResponseCache | None = None
        self._persist = persist
        self._flushes: set[asyncio.Task[None]] = set()
        self._share_budget(self.config)
        _routers.add(self)

    def _open_shared(self, state_url: str | None) -> SharedState:
        """The shared state: `state_url`, `NBROUTER_STATE_URL` or `[state] url` (in that order) on Redis;
        else the state file; else (persist=False) memory."""
        settings = self.config.state
        env = os.environ.get("NBROUTER_STATE_URL") or None
        url = state_url or env or settings.url
        where = ("Router(state_url=)" if state_url else "NBROUTER_STATE_URL" if env
                 else f"[state] url in {self.config.file_label}")
        path = self.state.path if self.state.backend.persistent else None
        return open_shared(url=url, path=path, prefix=settings.prefix, on_down="wait" if settings.on_down == "wait" else "local",
                           share=settings.share, timeout_s=settings.timeout_s, clock=self.clock, where=where)

    @property
    def pacer(self) -> Pacer:
        """The pacing of every call over the shared store (what `map` and the status board read)."""
        return self._decider.pacer

    @property
    def policy(self) -> Policy:
        """The named constants in force (`[policy]` overrides on top of routing.md's defaults)."""
        return self.config.policy

    # ---- configuration ----------------------------------------------------------------------

    def reload(self) -> None:
        """Read the configuration again (from the same file or dict); with none, look for keys and local servers again."""
        self._set_config(load_config(self._config_source, strategies=STRATEGIES))
        self._discovery.reset(self.config)

    def _set_config(self, config: Config) -> None:
        if config.budget != self.config.budget:
            self._set_budget(config)
        self.config = config
        self.state.policy = config.policy
        self.prices = PriceBook(config)
        self._decider.set_config(config, self.prices)
        self._loop.forget_endpoints()

    def _set_budget(self, config: Config) -> None:
        """A `[budget]` table that changed in the config: its fields apply, but for those given to Router()."""
        usd, on_budget, strict = self._budget_args
        settings = config.budget
        if usd is None:
            self.budget.set_limit(settings.usd)
        if on_budget is None:
            self.budget.on_budget = settings.on_budget or "stop"
        if strict is None:
            self.budget.strict = bool(settings.strict)
        self._share_budget(config)

    def _share_budget(self, config: Config) -> None:
        """`[budget] shared`: count the spending in the shared store under that name."""
        settings = config.budget
        self.budget.share(None if settings.shared is None else
                          SharedBudget(settings.shared, settings.per, self._spend_behind, self.clock))

    def _spend_behind(self) -> None:
        """Send what the shared budget has not sent, behind the call: a flush on the loop running here, or
        on the router's loop (a batch's driver records outcomes from a thread of its own)."""
        running = _running_loop()
        if running is not None:
            self._flush_budget()
            return
        try:
            self._bg.loop().call_soon_threadsafe(self._flush_budget)
        except RuntimeError:  # the router's loop is closed: the router is too
            log.warning("nbrouter: a cost recorded after the router closed was not counted in the shared budget")

    async def _settle_budget(self) -> None:
        """Everything this process spent in the shared budget's store: what is unsent, and the writes the
        flushes of this loop have out (close)."""
        await self.budget.drain(self.shared)
        loop = asyncio.get_running_loop()
        here = [t for t in self._flushes if t.get_loop() is loop]
        if here:
            await asyncio.gather(*here, return_exceptions=True)
            await self.budget.drain(self.shared)

    def _flush_budget(self) -> None:
        task = asyncio.get_running_loop().create_task(self.budget.flush(self.shared))
        self._flushes.add(task)  # (kept until done: a task only the loop refers to may be collected)
        task.add_done_callback(self._flushes.discard)

    @property
    def combos(self) -> dict[str, Combo]:
        """The saved combos by name."""
        return dict(self.config.combos)

    def save_combo(self, name: str, targets: Sequence[str | Mapping[str, Any]], **options: Any) -> Combo:
        """Validate and save `[combos.NAME]` to the config file (atomically, mode 0600, other tables and comments
        kept); a config given as a dict is updated in memory.

        Args:
            name: the combo's name (one word).
            targets: its steps: targets, other combos' names, or `{"target": ..., "weight": ...}` tables.
            **options: strategy, account_strategy, fallback_on, max_attempts, timeout_s, ...

        Raises:
            ComboConfigError: naming the field, when the combo is invalid; nothing is written then.
        """
        self._set_config(editing.save_combo(self.config, name, targets, options, STRATEGIES))
        return self.config.combos[name]

    def delete_combo(self, name: str) -> None:
        """Remove `[combos.NAME]` from the config file; refused if another combo names it.

        Args:
            name: the combo's name.
        """
        self._set_config(editing.delete_combo(self.config, name, STRATEGIES))

    def validate_combo(self, name: str, targets: Sequence[str | Mapping[str, Any]], **options: Any) -> Combo:
        """Validate a draft combo against the current config without saving it (the builder's Test uses it).

        Args:
            name, targets, **options: as for `save_combo`.
        """
        return editing.draft_combo(self.config, name, targets, options, STRATEGIES)

    def context_window(self, c: Candidate) -> int | None:
        """The candidate's known context window in tokens (the config's, else the model list's, else the bundled table's), or None."""
        return self._decider.context_window(c)

    # ---- the public calls -------------------------------------------------------------------

    def complete(self, combo: str | Combo, prompt: str | None = None, **options: Unpack[CallOptions]) -> RouteResult:
        """Send a prompt through a combo and wait for the answer.

        Args:
            combo: a combo name, a virtual `auto...` name, a `provider[#account]/model` target, or a
                Combo (from `validate_combo`, to try a draft before saving it).
            prompt: the user message (or give `messages`).
            **options: as for `acomplete`.

        Raises:
            AllTargetsFailed: every candidate failed or was skipped (its message is the attempt table).
        """
        return self._bg.run(self.acomplete(combo, prompt, **options))

    async def acomplete(self, combo: str | Combo, prompt: str | None = None, *,
                        messages: list[dict[str, Any]] | None = None, system: str | None = None,
                        max_tokens: int | None = None, temperature: float | None = None,
                        max_cost_usd: float | None = None, timeout_s: float | None = None, seed: int | None = None,
                        response_format: dict[str, Any] | str | None = None, strategy: str | None = None,
                        stream: bool = False, top_p: float | None = None, stop: list[str] | None = None,
                        reasoning: str | int | None = None, extra_body: dict[str, Any] | None = None,
                        schema: SchemaSpec | None = None, cache: bool = False, images: Any = None, tools: Any = None,
                        tool_choice: str | None = None) -> RouteResult:
        """The async `complete`, on the caller's event loop.

        Args:
            combo: as for `complete`.
            prompt: the user message, appended after `messages` when both are given.
            messages: the conversation so far (chat messages).
            system: the system prompt.
            max_tokens: the answer's limit (also used to estimate cost and fit).
            temperature: sampling temperature.
            max_cost_usd: skip candidates whose estimated cost is above it.
            timeout_s: one attempt's limit, from connect to its last byte.
            seed: the seed of the strategy's draws (the same seed and state give the same order).
            response_format: "json" for any JSON object (checked as `schema=` is; `result.parsed` holds it), or
                an OpenAI-style `response_format`, mapped per protocol.
            strategy: overrides the combo's strategy for this call.
            stream: stream from the provider (the result is the same).
            top_p: nucleus sampling.
            stop: stop sequences.
            reasoning: "low", "medium", "high" or a thinking budget in tokens, mapped per protocol
                (`reasoning_effort`, Anthropic's `thinking`, Gemini's `thinkingConfig`).
            extra_body: merged into the request's JSON body as given.
            schema: a JSON schema dict or a pydantic model class the answer must match (sent natively;
                `result.parsed` holds the validated value; a mismatch is retried once, then falls back).
            cache: answer from the response cache when it holds this request, and store the answer.
            images: an image or a list, each a path, bytes, an `http(s)://` or `data:` URL, a PIL image or a
                matplotlib figure (rendered to PNG), put after the prompt in the last user message; the media
                type is read from the bytes. Targets that lack vision, or whose provider's limits an image
                passes, are skipped before sending.
            tools: functions the model may call: dicts `{"name", "description", "parameters"}` or plain
                Python functions (the schema read from the signature and docstring). `result.tool_calls`
                holds the calls the model asked for; send each answer back with `tool_result(call, text)`
                after `result.as_message()` (or let `run_tools` do it).
            tool_choice: "auto", "required", "none", or the name of the tool the model must call.

        A step's own options (`{ target = "p/m", temperature = 0.2, ... }`) apply where the call gives none.
        """
        req = build_request(combo, prompt, stream=stream, messages=messages, system=system, max_tokens=max_tokens,
                            temperature=temperature, max_cost_usd=max_cost_usd, timeout_s=timeout_s, seed=seed,
                            response_format=response_format, strategy=strategy, top_p=top_p, stop=stop,
                            reasoning=reasoning, extra_body=extra_body, schema=schema, cache=cache, images=images,
                            tools=tools, tool_choice=tool_choice)
        return await self._route(req, None)

    def run_tools(self, combo: str | Combo, prompt: str | None = None, *, tools: Sequence[Any], max_rounds: int = 5,
                  **options: Any) -> RouteResult:
        """Send a prompt with Python functions as tools, run the calls the model asks for, send the results
        back, and repeat until the model answers without calling (at most `max_rounds` requests).

        Args:
            combo: as for `complete`.
            prompt: the user message (or give `messages`).
            tools: the functions (dict tools are declared too, but a call to one is answered as an error).
            max_rounds: the most requests; the last one is sent with `tool_choice="none"`.
            **options: as for `acomplete`.

        Returns:
            the last answer, with the attempts, usage and cost of every round, and `transcript`: the
            assistant's calls and the tool results in between.
        """
        return self._bg.run(self.arun_tools(combo, prompt, tools=tools, max_rounds=max_rounds, **options))

    async def arun_tools(self, combo: str | Combo, prompt: str | None = None, *, tools: Sequence[Any], max_rounds: int = 5,
                         **options: Any) -> RouteResult:
        """The async `run_tools`, on the caller's event loop."""
        from .tools import functions_of, run_tool_loop

        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, not {max_rounds}")
        functions = functions_of(tools)
        first_choice = options.pop("tool_choice", None)
        messages = list(options.pop("messages", None) or [])
        if prompt is not None:
            messages.append({"role": "user", "content": prompt})

        def ask(history: list[dict[str, Any]], choice: str | None) -> Awaitable[RouteResult]:
            return self.acomplete(combo, None, messages=history, tools=tools, tool_choice=choice, **options)

        return await run_tool_loop(ask, functions, messages, max_rounds, first_choice)

    async def astream(self, combo: str | Combo, prompt: str | None = None,
                      **options: Unpack[CallOptions]) -> AsyncGenerator[RouteEvent, None]:
        """Yield AttemptStarted, TextDelta, ToolCalled (each tool call an answer asks for) and AttemptFinished
        events, and last Done (with the result or the error)."""
        req = build_request(combo, prompt, stream=True, **options)
        # closed with this generator, so that a consumer that stops early finds the call cancelled and logged
        async with contextlib.aclosing(self._bg.aiterate(lambda put: self._route_events(req, put), _is_done)) as events:
            async for event in events:
                yield event

    def stream(self, combo: str | Combo, prompt: str | None = None,
               **options: Unpack[CallOptions]) -> Generator[RouteEvent, None, None]:
        """The sync `astream`: events arrive through a thread-safe queue from the router's loop."""
        req = build_request(combo, prompt, stream=True, **options)
        return self._bg.iterate(lambda put: self._route_events(req, put), _is_done,
                                "Router.stream was called from the router's own loop; use astream")

    async def _route_events(self, req: CallRequest, emit: Emit) -> None:
        try:
            result = await self._route(req, emit)
        except asyncio.CancelledError:
            emit(Done(None, KeyboardInterrupt("cancelled")))
            raise
        except Exception as exc:  # the error travels to the consumer in the Done event
            emit(Done(getattr(exc, "partial", None), exc))
            return
        emit(Done(result))

    def route(self, request: CallRequest) -> Awaitable[RouteResult]:
        """Route one built request (`nbrouter.router.build_request`) and return its result, to await.

        The public call under `acomplete` and batch work: an executor that runs calls elsewhere uses this.

        Raises:
            RouteError: when no candidate served the call.
        """
        return self._route(request, None)

    def check(self, request: CallRequest) -> Combo:
        """The combo a request names, resolved now: an unknown name fails here, before anything is sent.

        Raises:
            ComboConfigError: the combo is not known (the message suggests the nearest name).
        """
        return self._decider.route(request).combo

    def estimate(self, request: CallRequest) -> Decimal | None:
        """The most this request may cost: 0 when its answer is cached, else its dearest candidate's estimate
        (None when no candidate's price is known)."""
        route = self._decider.route(request)
        if request.cache:
            from .run.cache import request_key

            if self.cache.contains(request_key(self.cache, route, request), self.clock.time()):
                return Decimal(0)
        return self._decider.max_estimate(route, request)

    def cache_key(self, request: CallRequest) -> str:
        """The response cache's key for a request (its combo's targets and what decides the answer)."""
        from .run.cache import request_key

        return request_key(self.cache, self._decider.route(request), request)

    @property
    def background(self) -> BackgroundLoop:
        """The router's own event loop, in a daemon thread: the sync methods run their coroutines there."""
        return self._bg

    def _route(self, req: CallRequest, emit: Emit | None) -> Awaitable[RouteResult]:
        """The call's route, to await (the common case adds no coroutine of its own to a request's path)."""
        if self._closed:
            raise RuntimeError("this Router is closed")
        if req.cache or self._discovery.due(self.config) or self._usage_due():
            return self._route_first(req, emit)
        self.state.refresh()
        return self._loop.run(self._decider.route(req), req, emit)

    def _usage_due(self) -> bool:
        """Is the mirror of the quota accounts' shared usage, or of a shared budget, to be read again before
        this call?"""
        shared = self.budget.shared
        return (bool(self._decider.quota_accounts) and self._decider.usage.due()) or (shared is not None and shared.due())

    async def _route_first(self, req: CallRequest, emit: Emit | None) -> RouteResult:
        if self._discovery.due(self.config):
            await self._discovery.probe(self.config)
        # the quota skip check counts every process's uses: the store's counts, read at most once a second
        await self._decider.refresh_usage()
        self.state.refresh()
        route = self._decider.route(req)  # after the probe: it may have found the providers
        if req.cache:
            from .run.cache import through_cache

            return await through_cache(self.cache, route, self.state, self.clock.time(), req,
                                       lambda: self._loop.run(route, req, emit))
        return await self._loop.run(route, req, emit)

    # ---- batch work (batch.py) ----------------------------------------------------------------

    @overload
    def map(self, combo: str | Combo, items: Any, *, mode: Literal["live"] = "live", **options: Any) -> BatchResult: ...

    @overload
    def map(self, combo: str | Combo, items: Any, *, mode: Literal["batch"], **options: Any) -> BatchJob: ...

    def map(self, combo: str | Combo, items: Any, *, mode: str = "live", **options: Any) -> BatchResult | BatchJob:
        """Run one prompt over many items, pacing every account to its limit; Ctrl-C returns what finished.

        Args:
            combo: as for `complete`.
            items: a list (any iterable), a pandas Series or a DataFrame (one call per row).
            mode: "live" (calls now; returns the BatchResult) or "batch" (through the first target with a
                batch API, at its batch price; returns a `BatchJob` at once: `job.wait()` is the BatchResult).
            **options: `prompt` (a template: `{item}`, or `{column}` of a row or dict), `messages` (or a function
                of the item), `images` (a column holding each row's image, "item", or a function of the item),
                `concurrency`, `account_concurrency`, `max_cost_usd` (the whole batch's), `deadline_s`, `cache`,
                `progress`, `schema` (its fields become columns), and any option of `acomplete`; each is
                described in `batch.prepare`. With mode="batch" also `fallback` ("live", the default, or
                "batch": where rows go that a batch line could not answer) and `max_job_rows` (see `batch.jobs`).

        Returns:
            a BatchResult (one RouteResult or RouteError per item, in input order), or with mode="batch" a BatchJob.
        """
        if _batch_mode(mode, options):
            from .batch.jobs import submit

            return submit(self, combo, items, **options)
        from .batch.dispatch import prepare, run_sync

        return run_sync(self, prepare(self, combo, items, **options))

    @overload
    async def amap(self, combo: str | Combo, items: Any, *, mode: Literal["live"] = "live", **options: Any) -> BatchResult: ...

    @overload
    async def amap(self, combo: str | Combo, items: Any, *, mode: Literal["batch"], **options: Any) -> BatchJob: ...

    async def amap(self, combo: str | Combo, items: Any, *, mode: str = "live", **options: Any) -> BatchResult | BatchJob:
        """The async `map`, on the caller's event loop; cancelling it returns what finished (mode="batch":
        the BatchJob once submitted; `await job.await_result()` waits for it)."""
        if _batch_mode(mode, options):
            from .batch.jobs import asubmit

            return await asubmit(self, combo, items, **options)
        from .batch.dispatch import arun, prepare

        return await arun(prepare(self, combo, items, **options))

    def jobs(self) -> JobList:
        """The batch jobs recorded beside the state file (open and settled, newest first), also those of an
        earlier kernel: a `JobList`."""
        from .batch.jobs import listing

        return listing(self)

    def job(self, job_id: str) -> BatchJob:
        """One batch job by id (`job.result()` collects it, `job.wait()` waits for it).

        Raises:
            KeyError: no job of that id is recorded.
        """
        from .batch.jobs import find

        return find(self, job_id)

    @property
    def cache(self) -> ResponseCache:
        """The response cache (`NBROUTER_CACHE` or the user cache dir; in memory with persist=False)."""
        if self._cache is None:
            from .run.cache import MEMORY, ResponseCache

            self._cache = ResponseCache(None if self._persist else MEMORY)
        return self._cache

    @cache.setter
    def cache(self, value: ResponseCache) -> None:
        self._cache = value

    def _send(self, protocol: WireProtocol, endpoint: Endpoint, request: ChatRequest, **options: Any) -> Awaitable[Completion]:
        """The sending through this loop's Sender, to await (no coroutine of its own per request)."""
        policy = self.config.policy
        return self._senders.get().send(protocol, endpoint, request, idle_timeout_s=policy.stream_idle_timeout_s,
                                        max_line_bytes=policy.sse_max_line_bytes, **options)

    def _list_models(self, endpoint: Endpoint, timeout_s: float) -> Awaitable[ModelList | None]:
        """A provider's model list, fetched through this loop's Sender (what the capability lookup reads)."""
        return fetch_model_list(self._senders.get(), endpoint, timeout_s=timeout_s)

    def explain(self, combo: str | Combo, prompt: str | None = None, *, stream: bool = False,
                **options: Unpack[CallOptions]) -> Decision:
        """What the loop would do now: resolution, filtering and ordering with the live state and the
        given (or a drawn) seed. Sends nothing, changes nothing.

        Args:
            combo: as for `complete`.
            prompt: the prompt to decide for (its size and task matter to some strategies).
            stream: decide for a streamed call.
            **options: as for `acomplete` (`seed=` replays a logged decision).
        """
        req = build_request(combo, prompt, stream=stream, **options)
        self._ensure_discovered()
        self._refresh_usage()
        self.state.refresh()
        decision, _ = self._decider.decide(self._decider.route(req), req, self.clock.time())
        return decision

    def explain_combo(self, combo: Combo, prompt: str | None = None, **options: Unpack[CallOptions]) -> Decision:
        """`explain` for a draft Combo object that is not saved (the combo builder's explain button)."""
        return self.explain(combo, prompt, **options)

    # ---- zero-config ------------------------------------------------------------------------

    async def discover(self, *, refresh: bool = False) -> None:
        """Zero-config (no config file): add the local servers listening on their default ports.

        Args:
            refresh: probe again even when a probe has run, past the cache of its answers.
        """
        await self._discovery.discover(self.config, refresh=refresh)

    def _ensure_discovered(self) -> None:
        if self._discovery.due(self.config) and not self._bg.in_loop_thread():
            self._bg.run(self._discovery.probe(self.config))

    @property
    def providers(self) -> dict[str, Provider]:
        """The providers in use, each with `.source` saying where it came from (file, environment, local probe)."""
        self._ensure_discovered()
        return dict(self.config.providers)

    # ---- status, log, reset ------------------------------------------------------------------

    def status(self) -> Status:
        """Per candidate and per account: breaker, cooldown or lock with time left, latency, usage, quota; the
        shared state's mode (`Status.store`: "shared", or "local"/"wait" while it is down); and a shared
        budget as every process spent it (`Status.budget`)."""
        self._ensure_discovered()
        self.state.refresh()
        # an account with a quota is counted by every process sharing it: the store's counts (not asked
        # from the router's own loop, where a sync call cannot wait)
        usage, holds = None, None
        if not self._bg.in_loop_thread():
            self.sync_budget()  # (a shared budget: this process's spending sent, and every process's read)
            if self.pacer.quota_accounts:
                usage = self._bg.run(self.pacer.usage())
                self._refresh_usage()  # (the headroom shown is held to every process's counts too)
            holds = self._bg.run(self.shared.holds())  # another kernel's cooldowns too
        return collect_status(self._decider, self.state, self.clock.time(), usage, holds)

    def sync_budget(self) -> Budget:
        """With a shared budget: send what this process spent, and read what every process spent (not from
        the router's own loop, where a sync call cannot wait: the last reading stands). Returns
        `router.budget`."""
        if self.budget.shared is not None and not self._bg.in_loop_thread():
            self._bg.run(self.budget.drain(self.shared))
            self._bg.run(self.budget.refresh(self.shared, force=True))
        return self.budget

    def _refresh_usage(self) -> None:
        """Read the quota accounts' shared usage for a sync method (`explain`, `status`) if it is due; not
        from the router's own loop, where a sync call cannot wait (the last reading stands)."""
        if self._usage_due() and not self._bg.in_loop_thread():
            self._bg.run(self._decider.refresh_usage())

    def reset(self, target: str | None = None) -> int:
        """Clear cooldowns, locks and breakers (of keys containing `target`, or all), here and in the store
        every process shares, and refill the pacing buckets a 429 or a "remaining: 0" header emptied there
        (the next call goes at once). Returns how many holds and breakers this process held."""
        matches = reset_matches(self.config, target)
        breakers = [k for k in self.state.breakers if any(m is None or m in k for m in matches)]
        n = reset_holds(self.config, self.state, target)
        self.pacer.forget(matches)
        self._on_shared(self._reset_shared(matches, breakers), start=True)
        return n

    async def _reset_shared(self, matches: list[str | None], breakers: list[str]) -> None:
        for match in matches:
            await self.shared.clear_holds(match)
            await self.shared.clear_buckets(match)
        for key in breakers:
            await self.shared.breaker_success(key)

    def log(self, n: int = 20) -> list[dict[str, Any]]:
        """The last `n` attempts of the call log (one row per attempt), oldest first."""
        return self.state.recent_log(n)

    # ---- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (call it before that loop ends; a loop that ends
        without it closes the client itself on shutdown)."""
        await self.pacer.drain()  # the writes of the last calls on this loop, sent behind them
        if self.budget.unsent:
            await self._settle_budget()
        await self._senders.aclose()

    def close(self) -> None:
        """Close HTTP clients, flush the state file and stop the background loop."""
        if self._closed:
            return
        self._closed = True
        if self._bg.running and not self._bg.in_loop_thread():
            try:  # the writes of the last calls, sent behind them
                self._bg.run(self.pacer.drain())
                if self.budget.unsent:
                    self._bg.run(self._settle_budget())
            except Exception:
                pass
        if self.shared.kind != "memory":
            try:  # the shared store's connections (the file's, Redis's); it keeps nothing unwritten
                self._bg.run(self.shared.close())
            except Exception:
                pass
        if self._bg.running:
            self._senders.close_on(self._bg.loop())
            self._bg.stop()
        self.state.close()
        if self._cache is not None:
            self._cache.close()

    def _on_shared(self, work: Coroutine[Any, Any, None], *, start: bool = False) -> None:
        """Run a verb of the shared store from a sync method: on the router's loop and waited for (`start`:
        starting that loop if it is not running), or as a task of the loop this thread runs (the router's
        own, or the caller's: `asyncio.run(main())` closing the router inside)."""
        running = _running_loop()
        if running is not None and (self._bg.in_loop_thread() or not (self._bg.running or start)):
            running.create_task(work)
        elif self._bg.running or start:
            self._bg.run(work)
        else:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(work)
            finally:
                loop.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Router(config={self.config.file_label!r}, combos={sorted(self.config.combos)}, providers={sorted(self.config.providers)})"


__all__ = ["Router", "Status"]

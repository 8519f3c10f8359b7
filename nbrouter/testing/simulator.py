"""A loopback HTTP server that speaks the OpenAI, Anthropic, Gemini and OpenRouter wire formats, for tests,
benchmarks and notebooks that must not touch a real provider.

The server is aiohttp's low-level `web.Server` on its own event loop in a daemon thread, bound to
127.0.0.1 on an ephemeral port. Each request is answered by a scripted `Behaviour` (see `behaviours`),
or by the default `Reply()` echo. Per-request work is kept small so benchmarks measure the client:
one JSON parse, one locked queue lookup, one JSON render and, for an unpaced stream, one write.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Protocol

from aiohttp import web
from multidict import CIMultiDict

from nbrouter._core.clock import SYSTEM_CLOCK

from ._anthropic_wire import AnthropicWire
from ._batch_http import BatchService
from ._batch_jobs import LineResult
from ._features import ANTHROPIC_IMAGE_TYPES, Features, Image, example, sniffed_type
from ._features import read as read_features
from ._gemini_wire import GeminiWire
from ._openai_wire import OpenAIWire, OpenRouterWire
from ._scripts import ScriptBook
from ._wire import CHARS_PER_TOKEN, CHUNK_CHARS, Call, Outcome, RenderedTool, Wire, canonical_finish, dumps, text_of
from .urls import ProviderURLs
from .behaviours import (
    Behaviour,
    Capabilities,
    ContentFilter,
    CutStream,
    Drop,
    Empty,
    Failure,
    Hang,
    Malformed,
    RateLimited,
    Raw,
    Reply,
    ToolCall,
    is_failure,
)
from .batches import BatchScript
from .ratelimits import RateLimiter, Verdict
from .stats import SimStats

#: how long `stop()` waits for the server's loop to wind down before giving up on it
STOP_TIMEOUT_S = 5.0
#: the biggest request body read (images and batch files are big; aiohttp's own default is 1 MiB)
MAX_BODY_BYTES = 1 << 30
_SSE_TYPE = "text/event-stream; charset=utf-8"
_GEMINI_PREFIX = "/v1beta/models/"
_GEMINI_ACTIONS = {"generateContent": ("chat", False), "streamGenerateContent": ("chat", True), "countTokens": ("count", False)}
_POST_ROUTES = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1beta/openai/chat/completions": ("openai", "chat"),
    "/openrouter/v1/chat/completions": ("openrouter", "chat"),
    "/v1/messages": ("anthropic", "chat"),
    "/v1/messages/count_tokens": ("anthropic", "count"),
}
_GET_ROUTES = {
    "/v1/models": ("openai", "list"),
    "/openrouter/v1/models": ("openrouter", "list"),
    "/api/tags": ("openai", "tags"),
    "/v1beta/models": ("gemini", "list"),
}


class SimClock(Protocol):
    """What the simulator asks of time: a ManualClock, or the real clock by default."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass
class RecordedRequest:
    """One request the simulator received, as sent, for tests to assert on."""

    #: "openai" | "anthropic" | "gemini" | "openrouter"
    protocol: str
    path: str
    model: str | None
    #: the credential as sent: bearer token, x-api-key, x-goog-api-key or `key` query parameter
    key: str | None
    stream: bool
    #: the parsed JSON body (None for a GET or a body that is not JSON)
    body: Any
    #: request headers, names lower-cased
    headers: dict[str, str]
    #: time.monotonic() at arrival
    time: float
    #: the status the simulator answered with (0: the connection closed without an answer; None: not yet,
    #: or a request outside the model calls)
    status: int | None = None
    #: image parts in the messages (inline and by URL), and the decoded bytes of the inline ones
    images: int = 0
    image_bytes: int = 0
    #: each image's declared media type ("url" for a plain URL reference), in order
    image_types: tuple[str, ...] = ()
    #: the names of the declared tools, in order
    tools: tuple[str, ...] = ()
    #: "auto" | "none" | "required" | a tool's name (each protocol's spelling reduced to these), or None
    tool_choice: str | None = None
    #: "json_object" | "json_schema" | None
    json_mode: str | None = None
    #: tool results sent back (OpenAI `tool` messages, Anthropic `tool_result` blocks, Gemini `functionResponse`)
    tool_results: int = 0

    def carried(self, features: Features) -> None:
        """Fill in what the body carried beyond text."""
        self.images = len(features.images)
        self.image_bytes = features.image_bytes
        self.image_types = tuple(i.media_type for i in features.images)
        self.tools = tuple(t.name for t in features.tools)
        self.tool_choice = features.tool_choice
        self.json_mode = features.json_mode
        self.tool_results = features.tool_results


class ProviderSimulator(ProviderURLs):
    """A fake LLM provider on loopback that answers with scripted successes, errors and faults.

    Args:
        tokens_per_s: stream pacing, one chunk per token (None: as fast as possible).
        default_text: the text of unscripted replies (None: echo the last user message).
        clock: the time rate limits count on and dated fields carry (a ManualClock, or the real clock).
        port: the loopback port to listen on (0: any free one).

    Example:
        with ProviderSimulator() as sim:
            sim.script([RateLimited(retry_after=30), Reply("hi")], model="gpt-x")
            httpx.post(sim.openai_url + "/chat/completions", json={"model": "gpt-x", "messages": [...]})
    """

    def __init__(
        self,
        tokens_per_s: float | None = None,
        default_text: str | None = None,
        *,
        clock: SimClock | None = None,
        port: int = 0,
    ) -> None:
        self.tokens_per_s = tokens_per_s
        self.default_text = default_text
        self.clock: SimClock = clock if clock is not None else SYSTEM_CLOCK
        self._book: ScriptBook[Behaviour] = ScriptBook()
        self._batch_book: ScriptBook[BatchScript] = ScriptBook(BatchScript(), BatchScript, "BatchScript")
        self._log: list[RecordedRequest] = []
        self._log_lock = threading.Lock()
        self._models: list[str] | None = None
        self._caps: dict[str, Capabilities] = {}
        #: per-key limits: token buckets (`KeyLimits`) or sliding windows (`WindowLimits`), on `clock`
        self.rate_limits = RateLimiter(time=self.clock.monotonic)
        self._stats = SimStats()
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._listen_port = port
        self._port: int | None = None
        # handler tasks in flight, touched only on the server's loop; stop() cancels them
        self._active: set[asyncio.Task[Any]] = set()
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._wires: dict[str, Wire] = {
            "openai": OpenAIWire(),
            "openrouter": OpenRouterWire(),
            "anthropic": AnthropicWire(),
            "gemini": GeminiWire(),
        }
        for wire in self._wires.values():
            wire.wall = self.clock.time
        self._batches = BatchService(self._wires, self.clock.time, self._render_line, self._batch_book.next, _credential, self._record_batch)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ProviderSimulator:
        """Start serving (a no-op when already running); returns self."""
        with self._state_lock:
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run_loop, args=(loop,), name="nbrouter-provider-simulator", daemon=True)
            thread.start()
            try:
                self._port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(STOP_TIMEOUT_S)
                raise
            self._loop, self._thread = loop, thread
            return self

    def stop(self) -> None:
        """Stop serving, without waiting for hanging handlers (a no-op when not running)."""
        with self._state_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=STOP_TIMEOUT_S)
            except Exception:  # a wedged shutdown must not keep the caller; the loop is stopped below
                pass
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            self._loop = self._thread = self._runner = None
            self._port = None

    def __enter__(self) -> ProviderSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        if self._port is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return f"http://127.0.0.1:{self._port}"

    # -- scripting --------------------------------------------------------------------------

    def script(
        self,
        behaviours: Iterable[Behaviour] | Behaviour,
        *,
        model: str | None = None,
        key: str | None = None,
        repeat_last: bool = False,
    ) -> None:
        """Queue behaviours for the requests that name `model` and/or send credential `key`.

        Precedence: key+model, then key, then model, then a script with neither. Each matching request
        takes the next behaviour; an empty queue falls through (to a less specific script, then to the
        default) unless `repeat_last`, which repeats the last behaviour forever. Calling again for the
        same selector appends. Safe to call while the server runs.
        """
        items = [behaviours] if isinstance(behaviours, Behaviour) else list(behaviours)
        self._book.add(items, model=model, key=key, repeat_last=repeat_last)

    def script_batch(
        self,
        scripts: Iterable[BatchScript] | BatchScript,
        *,
        model: str | None = None,
        key: str | None = None,
        repeat_last: bool = False,
    ) -> None:
        """Queue how the next batch jobs run (see `batches.BatchScript`), with the same selectors and
        precedence as `script`; a job nothing is queued for runs as `BatchScript()`: one second to
        validate, one per line, one to finalize, every line taking the scripts a live call would."""
        items = [scripts] if isinstance(scripts, BatchScript) else list(scripts)
        self._batch_book.add(items, model=model, key=key, repeat_last=repeat_last)

    def batch_jobs(self) -> list[dict[str, Any]]:
        """Every batch job now: id, protocol, model, status (OpenAI's words), lines, done and pending."""
        return self._batches.jobs()

    @property
    def batch_max_bytes(self) -> int | None:
        """The biggest batch input taken: an uploaded file, an Anthropic create body, a Gemini inline
        create (None: each provider's own, 200 MB / 256 MB / 20 MB, and 2 GB for a Gemini file)."""
        return self._batches.max_bytes

    @batch_max_bytes.setter
    def batch_max_bytes(self, value: int | None) -> None:
        self._batches.max_bytes = value

    @property
    def batch_max_requests(self) -> int | None:
        """The most requests one batch takes (None: 50,000 OpenAI, 100,000 Anthropic)."""
        return self._batches.max_requests

    @batch_max_requests.setter
    def batch_max_requests(self, value: int | None) -> None:
        self._batches.max_requests = value

    def set_default(self, behaviour: Behaviour) -> None:
        """What unscripted requests get (initially `Reply()`, the echo)."""
        self._book.set_default(behaviour)

    def capabilities(
        self, model: str, *, vision: bool | None = None, tools: bool | None = None, json_schema: bool | None = None,
        context_window: int | None = None,
    ) -> Capabilities:
        """Say what `model` accepts (arguments left None keep their value; every model starts with all).

        A request carrying images without `vision`, tools without `tools`, or JSON mode or a schema
        without `json_schema` is refused with the provider's own error (multimodal_tools.md). The model
        listings of Anthropic (`capabilities`) and OpenRouter (`architecture.input_modalities`,
        `supported_parameters`) say the same; `context_window` is what the listings give as the window
        (Gemini's `inputTokenLimit`, Anthropic's `max_input_tokens`, OpenRouter's `context_length`).
        Returns the model's capabilities now.
        """
        with self._state_lock:
            current = self._caps.get(model, Capabilities())
            given: dict[str, Any] = {"vision": vision, "tools": tools, "json_schema": json_schema, "context_window": context_window}
            updated = replace(current, **{k: v for k, v in given.items() if v is not None})
            self._caps[model] = updated
            return updated

    def reset(self) -> None:
        """Forget scripts, the default, the `models` list, capabilities, rate limits, stats, batch jobs and
        files, and the request log."""
        self._book.clear()
        self._batch_book.clear()
        self._batches.clear()
        self._batches.max_bytes = self._batches.max_requests = None
        self._models = None
        self._caps = {}
        self.rate_limits.clear()
        self._stats.clear()
        with self._log_lock:
            self._log.clear()

    def stats(self, *, times: bool = False) -> dict[str, Any]:
        """What the simulator counted per key, as `GET /_sim/stats` answers it (see `stats.SimStats`).

        `{"keys": {key_id(key): {"received", "rate_limited", "passed_limiter", "served", "answered_429",
        "statuses", "window_s", "max_in_window", "limits", "label"}}}`: every model call counts, keys are
        named by `key_id` (never shown), `max_in_window` is the most requests the limiter let through in
        any window of the key's limit. `times=True` adds each key's `admitted_times` and `refused_times`
        (the clock's monotonic seconds).
        """
        keys = self._stats.snapshot(self.rate_limits.limits_of, times=times)
        return {"keys": keys, "clock": {"time": self.clock.time(), "monotonic": self.clock.monotonic()}}

    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply a config mapping (what `--config` files and `POST /_sim/config` hold; see `config.apply`)."""
        from .config import apply

        apply(self, config)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a snapshot)."""
        with self._log_lock:
            return list(self._log)

    @property
    def models(self) -> list[str]:
        """What the model listings report; by default every model named in a script or given capabilities."""
        if self._models is not None:
            return list(self._models)
        named = self._book.models()
        return named + [m for m in self._caps if m not in named]

    @models.setter
    def models(self, value: Iterable[str] | None) -> None:
        self._models = None if value is None else list(value)

    # -- the server thread ------------------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES)

        server = web.Server(self._handle, request_factory=request_factory, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._listen_port, backlog=1024)
        await site.start()
        self._runner = runner
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        active = list(self._active)
        for task in active:
            task.cancel()
        if active:
            await asyncio.wait(active, timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            if request.path.startswith("/_sim/"):
                return await self._control(request)
            if self._batches.owns(request.method, request.path):
                return await self._batches.handle(request, arrived)
            return await self._dispatch(request, arrived)
        finally:
            if task is not None:
                self._active.discard(task)

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        """The simulator's own routes: stats, reset, config and the manual clock (never recorded)."""
        path, method = request.path, request.method
        if method == "GET" and path == "/_sim/stats":
            return _json_response(200, self.stats(times=request.query.get("times") in ("1", "true")), {})
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return _json_response(200, {"reset": True}, {})
        if method == "POST" and path == "/_sim/config":
            try:
                self.configure(json.loads(await request.read()))
            except (ValueError, TypeError) as exc:
                return _json_response(400, {"error": {"message": str(exc)}}, {})
            return _json_response(200, {"configured": True}, {})
        if path == "/_sim/clock":
            if method == "POST":
                advance = getattr(self.clock, "advance", None)
                if advance is None:
                    return _json_response(409, {"error": {"message": "the simulator runs on the real clock"}}, {})
                try:
                    advance(float(json.loads(await request.read())["seconds"]))
                except (ValueError, TypeError, KeyError) as exc:
                    return _json_response(400, {"error": {"message": f"POST {{\"seconds\": N}}: {exc}"}}, {})
            return _json_response(200, {"time": self.clock.time(), "monotonic": self.clock.monotonic()}, {})
        return _json_response(404, {"error": {"message": f"Unknown simulator route: {method} {path}"}}, {})

    # -- one request ------------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest, arrived: float) -> web.StreamResponse:
        path = request.path
        method = request.method
        stream = False
        model: str | None = None
        route = _POST_ROUTES.get(path) if method == "POST" else _GET_ROUTES.get(path) if method == "GET" else None
        if route is None and method == "POST" and path.startswith(_GEMINI_PREFIX):
            model, _, action = path[len(_GEMINI_PREFIX) :].rpartition(":")
            if model and action in _GEMINI_ACTIONS:
                kind, stream = _GEMINI_ACTIONS[action]
                route = ("gemini", kind)
        if route is None:
            return self._unknown(request, arrived)
        protocol, kind = route
        if kind == "list" and protocol == "openai" and "anthropic-version" in request.headers:
            protocol = "anthropic"
        key = _credential(protocol, request)
        body: Any = None
        bad = ""
        if method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                bad = "We could not parse the JSON body of your request."
            if not bad and not isinstance(body, dict):
                bad = "The request body must be a JSON object."
        if isinstance(body, dict):
            if protocol != "gemini":
                model = body.get("model") if isinstance(body.get("model"), str) else None
                stream = body.get("stream") is True
        recorded = RecordedRequest(protocol, path, model, key, stream, body, _headers(request), arrived)
        features = read_features(protocol, body) if kind in ("chat", "count") else Features()
        recorded.carried(features)
        self._record(recorded)

        wire = self._wires[protocol]
        if kind in ("list", "tags"):
            return _json_response(200, _model_list(protocol, kind, self.models, dict(self._caps)), {})
        call = self._call(protocol, model, key, stream, body, features)
        if not bad and kind == "chat" and model is None and not (protocol == "openrouter" and _models_field(body)):
            bad = "you must provide a model parameter"
        if kind == "chat":
            self._stats.arrived(key)
        if bad:
            status, payload = wire.bad_request(call, bad)
            return self._answered(request, recorded, self._json(wire, call, status, payload, {}))
        refused = self._refuse(wire, call) if kind == "chat" else None
        if refused is not None:
            return self._answered(request, recorded, self._json(wire, call, refused[0], refused[1], {}))
        if kind == "count":
            count = {"input_tokens": call.prompt_tokens} if protocol == "anthropic" else {"totalTokens": call.prompt_tokens}
            return self._json(wire, call, 200, count, {})
        response = await self._model_call(request, wire, call, body)
        return self._answered(request, recorded, response)

    def _answered(self, request: web.BaseRequest, recorded: RecordedRequest, response: web.StreamResponse) -> web.StreamResponse:
        """Note the status a model call got, in the request log and the per-key stats."""
        transport = request.transport
        dropped = not response.prepared and (transport is None or transport.is_closing())
        recorded.status = 0 if dropped else response.status
        self._stats.answered(recorded.key, recorded.status)
        return response

    async def _model_call(self, request: web.BaseRequest, wire: Wire, call: Call, body: Any) -> web.StreamResponse:
        """Past the limiter (a real 429 with its headers when over), then the scripted behaviour."""
        key, model, protocol = call.key, call.model or None, call.protocol
        verdict = self.rate_limits.admit(key, body, call.prompt_tokens)
        if verdict is not None and not verdict.ok:
            self._stats.refused(key, verdict.at)
            status, payload, extra = wire.failure(call, self._refusal(verdict))
            return self._json(wire, call, status, payload, {**extra, **wire.rate_limit_headers(verdict.fields)})
        self._stats.admitted(key, verdict.at if verdict is not None else self.clock.monotonic())
        fallbacks = _models_field(body) if protocol == "openrouter" else None
        if fallbacks:
            behaviour = await self._walk(call, fallbacks)
        else:
            behaviour = self._book.next(key, model)
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
        if isinstance(behaviour, Reply):
            behaviour = self._shaped(call, behaviour)
            if verdict is not None:
                behaviour = replace(behaviour, rate_limit={**verdict.fields, **(behaviour.rate_limit or {})})
        return await self._perform(request, wire, call, behaviour)

    def _refuse(self, wire: Wire, call: Call) -> tuple[int, Any] | None:
        """(status, body) when the provider would refuse what the body carries: unreadable images, a broken
        tool-call sequence, a feature the model lacks, JSON mode without the word "json"; else None."""
        f = call.features
        for image in f.images:
            problem = _image_problem(call.protocol, image)
            if problem is not None:
                return wire.bad_request(call, *problem)
        if f.sequence_error is not None:
            return wire.bad_request(call, *f.sequence_error)
        model = call.model or (_models_field(call.body) or [""])[0]
        caps = self._caps.get(model)
        if caps is not None:
            if f.images and not caps.vision:
                return wire.unsupported(call, "vision", f.images[0].where)
            if f.tools and not caps.tools:
                return wire.unsupported(call, "tools", "tools")
            if f.json_mode and not caps.json_schema:
                return wire.unsupported(call, f.json_mode, "response_format")
        if call.protocol == "openai" and f.json_mode == "json_object" and "json" not in _all_text(call.body).lower():
            message = "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
            return wire.bad_request(call, message, "messages")
        return None

    def _shaped(self, call: Call, reply: Reply) -> Reply:
        """Fill what the script left open as the request asks: a required tool call, or JSON in JSON mode."""
        if reply.tool_calls is not None or reply.text is not None or reply.chunks is not None:
            return reply
        f = call.features
        forced = f.forced_tool()
        if forced is not None:
            return replace(reply, text="", tool_calls=(ToolCall(forced.name, example(forced.schema)),))
        if f.json_mode == "json_schema" and isinstance(f.schema, dict):
            return replace(reply, text=dumps(example(f.schema)))
        if f.json_mode is not None:
            return replace(reply, text=dumps({"reply": self._echo(call)}))
        return reply

    def _echo(self, call: Call) -> str:
        if self.default_text is not None:
            return self.default_text
        return f"Simulated reply from {call.model}: {call.last_user[:60]}"

    def _refusal(self, verdict: Verdict) -> RateLimited:
        """The limiter's 429 as a behaviour: its wait as `retry-after` (and `-ms`), its numbers in the message."""
        wait = verdict.retry_after_s
        return RateLimited(
            retry_after=wait,
            retry_after_ms=round(wait * 1000) if wait is not None else None,
            limit=verdict.limit,
            used=verdict.used,
            requested=verdict.requested,
            metric=verdict.metric or "requests",
            window_s=verdict.window_s,
        )

    async def _walk(self, call: Call, models: list[str]) -> Behaviour:
        """OpenRouter's `models` fallback: the first model whose behaviour is not a failure serves the call;
        if all fail, the last failure answers. Each tried behaviour's delay is waited in turn."""
        behaviour: Behaviour = Reply()
        for model in models:
            behaviour = self._book.next(call.key, model)
            call.model = model
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
            if not is_failure(behaviour):
                break
        return behaviour

    def _record(self, recorded: RecordedRequest) -> None:
        with self._log_lock:
            self._log.append(recorded)

    def _record_batch(self, protocol: str, request: web.BaseRequest, model: str | None, key: str | None, body: Any,
                      arrived: float, status: int) -> None:
        self._record(RecordedRequest(protocol, request.path, model, key, False, body, _headers(request), arrived, status))

    def _render_line(self, protocol: str, key: str | None, model: str, params: Any, behaviour: Behaviour | None) -> LineResult:
        """What one batch line comes to: its behaviour (scripted for the line, else the scripts a live call
        takes) rendered as the protocol's non-stream body or error, after the checks a live call gets."""
        wire = self._wires[protocol]
        body = params if isinstance(params, dict) else {}
        call = self._call(protocol, model, key, False, body, read_features(protocol, body))
        b = behaviour if behaviour is not None else self._book.next(key, model)
        if not isinstance(params, dict):
            return _errored(wire, call, wire.bad_request(call, "The request body must be a JSON object."))
        if protocol == "anthropic" and params.get("stream") is True:
            return _errored(wire, call, wire.bad_request(call, "stream: Streaming is not supported for message batches."))
        refused = self._refuse(wire, call)
        if refused is not None:
            return _errored(wire, call, refused)
        if isinstance(b, Reply):
            return _succeeded(wire, call, self._outcome(call, self._shaped(call, b)))
        if isinstance(b, (Empty, ContentFilter)):
            return _succeeded(wire, call, self._silent(call, None if isinstance(b, Empty) else "content_filter"))
        if isinstance(b, Failure):
            status, payload, _ = wire.failure(call, b)
            return _errored(wire, call, (status, payload))
        if isinstance(b, Malformed):
            return replace(_succeeded(wire, call, self._outcome(call, Reply())), kind="malformed")
        if isinstance(b, Raw):
            kind = "errored" if b.status >= 400 else "succeeded"
            return LineResult(kind, b.status, b.body, wire.request_id(call))
        return LineResult("never", 0, None, wire.request_id(call))  # Hang, Drop, CutStream: never finishes

    def _call(self, protocol: str, model: str | None, key: str | None, stream: bool, body: Any, features: Features) -> Call:
        chars, last_user = _prompt(protocol, body) if isinstance(body, dict) else (0, "")
        chars += features.tool_result_chars
        include_usage = False
        if stream and isinstance(body, dict):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
        ident = f"{self._id_prefix}{next(self._ids):016x}"
        return Call(protocol, model or "", key, stream, body, ident, chars, last_user, include_usage, int(self.clock.time()), features)

    def _outcome(self, call: Call, reply: Reply) -> Outcome:
        tools = tuple(_rendered(call, i, t) for i, t in enumerate(reply.tool_calls or ()))
        text = reply.text
        chunks = reply.chunks
        if text is None:
            if chunks is not None:
                text = "".join(chunks)
            elif tools:
                text = ""  # a reply that calls tools says nothing unless scripted to
            else:
                text = self._echo(call)
        if chunks is None:
            chunks = tuple(text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS))
        usage = reply.usage or {}
        written = len(text) + sum(len(t.name) + len(t.text) for t in tools)
        return Outcome(
            model=reply.model or call.model,
            text=text,
            chunks=tuple(chunks),
            finish=canonical_finish(reply.finish_reason) or ("tool_calls" if tools else "stop"),
            input_tokens=int(usage.get("input_tokens", call.prompt_tokens)),
            output_tokens=int(usage.get("output_tokens", written // CHARS_PER_TOKEN + 1)),
            cached_tokens=int(usage.get("cached_tokens", 0)),
            cost=reply.cost,
            tool_calls=tools,
        )

    def _silent(self, call: Call, finish: str | None) -> Outcome:
        """An answer without text: Empty (no finish reason) or ContentFilter."""
        return Outcome(call.model, "", (), finish, call.prompt_tokens, 0, 0)

    async def _perform(self, request: web.BaseRequest, wire: Wire, call: Call, b: Behaviour) -> web.StreamResponse:
        if isinstance(b, Reply):
            outcome = self._outcome(call, b)
            headers = CIMultiDict(wire.headers(call))
            if b.rate_limit:
                headers.update(wire.rate_limit_headers(b.rate_limit))
            if b.headers:
                headers.update(b.headers)
            pace = b.tokens_per_s if b.tokens_per_s is not None else self.tokens_per_s
            return await self._answer(request, wire, call, outcome, headers, pace)
        if isinstance(b, Failure):
            status, body, extra = wire.failure(call, b)
            return self._json(wire, call, status, body, extra)
        if isinstance(b, Empty):
            return await self._answer(request, wire, call, self._silent(call, None), wire.headers(call), None)
        if isinstance(b, ContentFilter):
            return await self._answer(request, wire, call, self._silent(call, "content_filter"), wire.headers(call), None)
        if isinstance(b, CutStream):
            return await self._cut(request, wire, call, b)
        if isinstance(b, Malformed):
            return await self._malformed(request, wire, call)
        if isinstance(b, Hang):
            await asyncio.sleep(b.seconds)
            return _drop(request)
        if isinstance(b, Drop):
            return _drop(request)
        if isinstance(b, Raw):
            return await _raw(request, b)
        raise TypeError(f"unknown behaviour {b!r}")

    async def _answer(
        self,
        request: web.BaseRequest,
        wire: Wire,
        call: Call,
        outcome: Outcome,
        headers: Any,
        pace: float | None,
    ) -> web.StreamResponse:
        if not call.stream:
            return self._json(wire, call, 200, wire.body(call, outcome), headers)
        # with tool calls after it, no text piece is the last event (Gemini's carries the finish reason)
        last = len(outcome.chunks) - 1 if not outcome.tool_calls else -1
        pieces = [wire.stream_piece(call, outcome, piece, i == last) for i, piece in enumerate(outcome.chunks)]
        resp = await _open_stream(request, headers)
        head, tail = wire.stream_head(call, outcome), wire.stream_tools(call, outcome) + wire.stream_tail(call, outcome)
        if pace:
            await _paced(resp, head, pieces, 1.0 / pace)
            if tail:
                await resp.write(tail.encode())
        else:
            await resp.write((head + "".join(pieces) + tail).encode())
        await resp.write_eof()
        return resp

    async def _cut(self, request: web.BaseRequest, wire: Wire, call: Call, b: CutStream) -> web.StreamResponse:
        outcome = self._outcome(call, Reply())
        headers = wire.headers(call)
        if not call.stream:
            full = dumps(wire.body(call, outcome)).encode()
            headers["Content-Type"] = wire.json_type
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_length = len(full)
            await resp.prepare(request)
            await resp.write(full[: len(full) // 2])
            return _drop(request, resp)
        pieces = [wire.stream_piece(call, outcome, piece, False) for piece in outcome.chunks[: b.after_chunks]]
        resp = await _open_stream(request, headers)
        head = wire.stream_head(call, outcome)
        if self.tokens_per_s:
            await _paced(resp, head, pieces, 1.0 / self.tokens_per_s)
        else:
            await resp.write((head + "".join(pieces)).encode())
        if b.error is None:
            return _drop(request, resp)
        await resp.write(wire.stream_error(call, b.error).encode())
        await resp.write_eof()
        return resp

    async def _malformed(self, request: web.BaseRequest, wire: Wire, call: Call) -> web.StreamResponse:
        headers = wire.headers(call)
        if not call.stream:
            headers["Content-Type"] = wire.json_type
            return web.Response(status=200, body=wire.malformed_body(call).encode(), headers=headers)
        resp = await _open_stream(request, headers)
        head = wire.stream_head(call, self._outcome(call, Reply()))
        await resp.write((head + wire.malformed_event(call)).encode())
        await resp.write_eof()
        return resp

    def _json(self, wire: Wire, call: Call, status: int, body: Any, extra: Any) -> web.Response:
        headers = CIMultiDict(wire.headers(call))
        headers["Content-Type"] = wire.json_type
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=dumps(body).encode(), headers=headers)

    def _unknown(self, request: web.BaseRequest, arrived: float) -> web.Response:
        path = request.path
        protocol = (
            "openrouter" if path.startswith("/openrouter")
            else "gemini" if path.startswith("/v1beta")
            else "anthropic" if path.startswith("/v1/messages")
            else "openai"
        )
        self._record(RecordedRequest(protocol, path, None, _credential(protocol, request), False, None, _headers(request), arrived))
        body = {"error": {"message": f"Unknown request URL: {request.method} {path}", "type": "invalid_request_error", "code": "unknown_url"}}
        return _json_response(404, body, {})


# -- helpers --------------------------------------------------------------------------------


def _succeeded(wire: Wire, call: Call, outcome: Outcome) -> LineResult:
    body = wire.body(call, outcome)
    if call.protocol == "anthropic":
        body["usage"]["service_tier"] = "batch"
    tokens = (outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens)
    return LineResult("succeeded", 200, body, wire.request_id(call), *tokens)


def _errored(wire: Wire, call: Call, refusal: tuple[int, Any]) -> LineResult:
    return LineResult("errored", refusal[0], refusal[1], wire.request_id(call))


def _rendered(call: Call, index: int, tool: ToolCall) -> RenderedTool:
    """A scripted tool call in wire form: an id in the protocol's style, arguments as text and object."""
    prefix = "toolu_" if call.protocol == "anthropic" else "call_"
    ident = tool.id or f"{prefix}{call.id}{index:02d}"
    if isinstance(tool.arguments, str):
        text = tool.arguments
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {}
        value = parsed if isinstance(parsed, dict) else {}
    else:
        value = dict(tool.arguments)
        text = dumps(value)
    return RenderedTool(ident, tool.name, text, value, given_id=tool.id is not None)


def _image_problem(protocol: str, image: Image) -> tuple[str, str] | None:
    """(message, param) of a 400 for an image the provider cannot read, or None."""
    if protocol == "anthropic" and image.where.endswith(".base64"):
        if image.media_type not in ANTHROPIC_IMAGE_TYPES:
            allowed = ", ".join(f"'{t}'" for t in ANTHROPIC_IMAGE_TYPES[:-1]) + f" or '{ANTHROPIC_IMAGE_TYPES[-1]}'"
            return f"{image.where}.media_type: Input should be {allowed}", image.where
        if image.data is not None and sniffed_type(image.data) not in (None, image.media_type):
            # the bytes say another type than media_type (multimodal_tools.md section 2)
            return f"{image.where}.data: Image format {image.media_type} not supported", image.where
    if image.bad is None:
        return None
    if protocol == "gemini":  # Google's JSON decoding error for a bytes field
        return f"Invalid value at '{image.where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed", image.where
    if protocol == "anthropic":
        return f"{image.where}.data: {image.bad}", image.where
    return f"Invalid image: {image.bad}.", image.where + ".image_url.url"


def _all_text(body: Any) -> str:
    """Every message's text, for OpenAI's check that JSON mode's messages say "json"."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return " ".join(text_of(m.get("content")) for m in messages or [] if isinstance(m, dict))


def _credential(protocol: str, request: web.BaseRequest) -> str | None:
    headers = request.headers
    key: str | None = None
    if protocol == "gemini":
        key = headers.get("x-goog-api-key") or request.query.get("key")
    elif protocol == "anthropic":
        key = headers.get("x-api-key")
    if not key:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip() or None
    if not key:
        key = headers.get("x-api-key") or headers.get("x-goog-api-key") or None
    return key


def _headers(request: web.BaseRequest) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def _models_field(body: Any) -> list[str] | None:
    models = body.get("models") if isinstance(body, dict) else None
    if isinstance(models, list) and models and all(isinstance(m, str) for m in models):
        return models
    return None


def _prompt(protocol: str, body: dict[str, Any]) -> tuple[int, str]:
    """(characters of all messages, text of the last user message) of a chat body."""
    chars = 0
    last_user = ""
    if protocol == "gemini":
        messages = body.get("contents") or []
        system = body.get("systemInstruction") or body.get("system_instruction")
        chars += len(text_of(system)) if system else 0
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict):
                text = text_of(message.get("parts"))
                chars += len(text)
                if message.get("role", "user") == "user":
                    last_user = text
        return chars, last_user
    if protocol == "anthropic" and body.get("system"):
        chars += len(text_of(body["system"]))
    messages = body.get("messages") or []
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            text = text_of(message.get("content"))
            chars += len(text)
            if message.get("role") == "user":
                last_user = text
    return chars, last_user


def _model_list(protocol: str, kind: str, models: list[str], caps: dict[str, Capabilities]) -> Any:
    if kind == "tags":  # Ollama's native listing
        details = {"format": "gguf", "family": "", "parameter_size": "", "quantization_level": ""}
        return {
            "models": [
                {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 0, "digest": "", "details": details}
                for m in models
            ]
        }
    if protocol == "gemini":
        methods = ["generateContent", "streamGenerateContent", "countTokens", "batchGenerateContent"]
        return {"models": [{"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": methods,
                            **_window("inputTokenLimit", caps.get(m))} for m in models]}
    if protocol == "anthropic":
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z", "capabilities": _anthropic_caps(caps.get(m)),
             **_window("max_input_tokens", caps.get(m))}
            for m in models
        ]
        return {"data": data, "has_more": False, "first_id": models[0] if models else None, "last_id": models[-1] if models else None}
    if protocol == "openrouter":
        return {"object": "list", "data": [_openrouter_model(m, caps.get(m)) for m in models]}
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in models]}


def _window(field: str, caps: Capabilities | None) -> dict[str, Any]:
    """The listing's window field of a model, when the test gave it one."""
    return {} if caps is None or caps.context_window is None else {field: caps.context_window}


def _anthropic_caps(caps: Capabilities | None) -> dict[str, Any]:
    """`capabilities` of an Anthropic model listing (multimodal_tools.md section 5)."""
    caps = caps or Capabilities()
    return {"image_input": {"supported": caps.vision}, "structured_outputs": {"supported": caps.json_schema}}


def _openrouter_model(model: str, caps: Capabilities | None) -> dict[str, Any]:
    """An OpenRouter model entry: input modalities and supported parameters say what it takes."""
    caps = caps or Capabilities()
    params = ["max_tokens", "temperature", "top_p", "stop"]
    params += ["tools", "tool_choice"] if caps.tools else []
    params += ["response_format", "structured_outputs"] if caps.json_schema else []
    modalities = ["text", "image"] if caps.vision else ["text"]
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "simulator",
        "architecture": {"input_modalities": modalities, "output_modalities": ["text"]},
        "supported_parameters": params,
        **_window("context_length", caps),
    }


def _json_response(status: int, body: Any, headers: Any) -> web.Response:
    return web.Response(status=status, body=dumps(body).encode(), headers={"Content-Type": "application/json", **headers})


async def _open_stream(request: web.BaseRequest, headers: Any) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers=headers)
    resp.headers["Content-Type"] = _SSE_TYPE
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(request)
    return resp


async def _paced(resp: web.StreamResponse, head: str, pieces: list[str], interval: float) -> None:
    if head:
        await resp.write(head.encode())
    for piece in pieces:
        await asyncio.sleep(interval)
        await resp.write(piece.encode())


def _drop(request: web.BaseRequest, resp: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection; aiohttp's attempt to finish the response then fails quietly."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp if resp is not None else web.Response()


async def _raw(request: web.BaseRequest, b: Raw) -> web.StreamResponse:
    headers: CIMultiDict[str] = CIMultiDict(b.headers or {})
    if b.sse is not None:
        headers.setdefault("Content-Type", _SSE_TYPE)
        resp = web.StreamResponse(status=b.status, headers=headers)
        await resp.prepare(request)
        events = []
        for event, data in b.sse:
            lines = "".join(f"data: {line}\n" for line in data.split("\n"))
            events.append((f"event: {event}\n" if event else "") + lines + "\n")
        await resp.write("".join(events).encode())
        await resp.write_eof()
        return resp
    body = b.body
    if isinstance(body, (dict, list)):
        payload = dumps(body).encode()
    elif isinstance(body, str):
        payload = body.encode()
    elif body is None:
        payload = b""
    else:
        payload = bytes(body)
    headers.setdefault("Content-Type", b.content_type)
    return web.Response(status=b.status, body=payload, headers=headers)

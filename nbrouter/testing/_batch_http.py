"""The three batch APIs on the wire (batch_apis.md sections 1-3): OpenAI's Files and /v1/batches,
Anthropic's /v1/messages/batches, Gemini's batchGenerateContent, /batches and resumable file uploads.

Jobs and files belong to the credential that made them (another key gets a 404). Every object is worked
out from the job and the simulator's clock when it is read (see `_batch_jobs`); result files exist once
a job has ended. Error wording that batch_apis.md does not establish is the simulator's own, in the
provider's error shape.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from ._batch_jobs import BatchJob, BatchLine, LineResult, Phase
from ._wire import Call, Wire, dumps, rfc3339
from .batches import DEFAULT_MAX_BYTES, DEFAULT_MAX_REQUESTS, DEFAULT_WINDOW_S, BatchScript
from .behaviours import Behaviour

#: (protocol, key, model, params, scripted behaviour or None) -> the line's result
LineRenderer = Callable[[str, "str | None", str, Any, "Behaviour | None"], LineResult]
#: (key, model) -> the script of the next job
ScriptSource = Callable[["str | None", "str | None"], BatchScript]
#: (protocol, request) -> the credential sent
CredentialOf = Callable[[str, web.BaseRequest], "str | None"]
#: (protocol, request, model, key, body, arrived, status) -> None: the request log
Recorder = Callable[[str, web.BaseRequest, "str | None", "str | None", Any, float, int], None]

#: the paths the batch endpoints live under (besides Gemini's `models/{model}:batchGenerateContent`)
_PREFIXES = ("/v1/files", "/v1/batches", "/v1/messages/batches", "/v1beta/batches", "/v1beta/files", "/upload/", "/download/")
_ANTHROPIC_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_GEMINI_OP = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_GEMINI_STATES = {
    "validating": "PENDING", "in_progress": "RUNNING", "finalizing": "RUNNING", "cancelling": "RUNNING",
    "completed": "SUCCEEDED", "failed": "FAILED", "expired": "EXPIRED", "cancelled": "CANCELLED",
}
_OPENAI_FAILURE_TEXT = {
    "invalid_json_line": "This line is not parseable as valid JSON.",
    "token_limit_exceeded": (
        "Enqueued token limit reached for {model} in organization org-simulated. Limit: 2,000,000 enqueued "
        "tokens. Please try again once some in_progress batches have been completed."
    ),
    "duplicate_custom_id": "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.",
    "url_mismatch": "The url provided for this request does not match the endpoint of the batch.",
    "model_mismatch": "The provided model does not match the model of the other requests in the batch file.",
    "empty_file": "The batch input file is empty.",
    "too_many_tasks": "The batch input file has more than {limit} requests.",
}
_CUT_TEXT = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was cancelled before it could be executed.",
}


@dataclass
class StoredFile:
    """An uploaded file (OpenAI Files API, Gemini Files API)."""

    id: str
    key: str | None
    name: str
    data: bytes
    purpose: str
    created: float
    mime: str = "application/jsonl"


@dataclass
class _Upload:
    """A Gemini resumable upload between `start` and `finalize`."""

    key: str | None
    name: str
    mime: str
    size: int
    data: bytearray


@dataclass
class _Ctx:
    """One batch request: who sent what, the route's parameters, and the time on the simulator's clock."""

    request: web.BaseRequest
    protocol: str
    key: str | None
    params: dict[str, str]
    raw: bytes
    body: Any
    now: float
    call: Call
    model: str | None = None

    @property
    def base(self) -> str:
        return f"http://{self.request.host}"


class BatchService:
    """The batch endpoints of one simulator: its jobs, files and uploads."""

    def __init__(
        self,
        wires: Mapping[str, Wire],
        wall: Callable[[], float],
        render_line: LineRenderer,
        next_script: ScriptSource,
        credential: CredentialOf,
        record: Recorder,
    ) -> None:
        self._wires = wires
        self._wall = wall
        self._render_line = render_line
        self._next_script = next_script
        self._credential = credential
        self._record = record
        self._lock = threading.Lock()
        self._jobs: dict[str, BatchJob] = {}
        self._files: dict[str, StoredFile] = {}
        self._uploads: dict[str, _Upload] = {}
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        #: the biggest input taken (None: each provider's own, `batches.DEFAULT_MAX_BYTES`)
        self.max_bytes: int | None = None
        #: the most requests in one batch (None: each provider's own)
        self.max_requests: int | None = None
        self._routes: list[tuple[str, re.Pattern[str], str, Callable[[_Ctx], Awaitable[web.StreamResponse]]]] = [
            (method, re.compile(pattern), protocol, handler)
            for method, pattern, protocol, handler in (
                ("POST", r"/v1/files", "openai", self._openai_upload),
                ("GET", r"/v1/files", "openai", self._openai_files),
                ("GET", r"/v1/files/(?P<id>[^/]+)", "openai", self._openai_file),
                ("DELETE", r"/v1/files/(?P<id>[^/]+)", "openai", self._openai_delete_file),
                ("GET", r"/v1/files/(?P<id>[^/]+)/content", "openai", self._openai_content),
                ("POST", r"/v1/batches", "openai", self._openai_create),
                ("GET", r"/v1/batches", "openai", self._openai_list),
                ("GET", r"/v1/batches/(?P<id>[^/]+)", "openai", self._openai_get),
                ("POST", r"/v1/batches/(?P<id>[^/]+)/cancel", "openai", self._openai_cancel),
                ("POST", r"/v1/messages/batches", "anthropic", self._anthropic_create),
                ("GET", r"/v1/messages/batches", "anthropic", self._anthropic_list),
                ("GET", r"/v1/messages/batches/(?P<id>[^/]+)", "anthropic", self._anthropic_get),
                ("GET", r"/v1/messages/batches/(?P<id>[^/]+)/results", "anthropic", self._anthropic_results),
                ("POST", r"/v1/messages/batches/(?P<id>[^/]+)/cancel", "anthropic", self._anthropic_cancel),
                ("DELETE", r"/v1/messages/batches/(?P<id>[^/]+)", "anthropic", self._anthropic_delete),
                ("POST", r"/v1beta/models/(?P<model>[^:]+):batchGenerateContent", "gemini", self._gemini_create),
                ("GET", r"/v1beta/batches", "gemini", self._gemini_list),
                ("GET", r"/v1beta/batches/(?P<id>[^/:]+)", "gemini", self._gemini_get),
                ("POST", r"/v1beta/batches/(?P<id>[^/:]+):cancel", "gemini", self._gemini_cancel),
                ("DELETE", r"/v1beta/batches/(?P<id>[^/:]+)", "gemini", self._gemini_delete),
                ("POST", r"/upload/v1beta/files", "gemini", self._gemini_upload),
                ("GET", r"/v1beta/files/(?P<id>[^/:]+)", "gemini", self._gemini_file),
                ("GET", r"/v1beta/files/(?P<id>[^/:]+):download", "gemini", self._gemini_download),
                ("GET", r"/download/v1beta/files/(?P<id>[^/:]+):download", "gemini", self._gemini_download),
                ("DELETE", r"/v1beta/files/(?P<id>[^/:]+)", "gemini", self._gemini_delete_file),
            )
        ]

    # -- the service's own surface ----------------------------------------------------------------

    def owns(self, method: str, path: str) -> bool:
        """Whether a request is for a batch or file endpoint (a prefix check first: model calls pass here)."""
        if not (path.startswith(_PREFIXES) or path.endswith(":batchGenerateContent")):
            return False
        return any(m == method and pattern.fullmatch(path) for m, pattern, _, _ in self._routes)

    async def handle(self, request: web.BaseRequest, arrived: float) -> web.StreamResponse:
        for method, pattern, protocol, handler in self._routes:
            match = pattern.fullmatch(request.path) if method == request.method else None
            if match is None:
                continue
            raw = await request.read() if request.method == "POST" else b""
            body: Any = None
            if raw and request.content_type == "application/json":
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
            key = self._credential(protocol, request)
            call = Call(protocol, "", key, False, None, f"{self._prefix}b{next(self._ids):012x}", 0, "")
            ctx = _Ctx(request, protocol, key, match.groupdict(), raw, body, self._wall(), call)
            response = await handler(ctx)
            self._record(protocol, request, ctx.model, key, body, arrived, response.status)
            return response
        raise LookupError(request.path)

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._files.clear()
            self._uploads.clear()

    def jobs(self) -> list[dict[str, Any]]:
        """A summary of every job: id, protocol, model, status (OpenAI's words) and its lines' counts."""
        now = self._wall()
        with self._lock:
            jobs = list(self._jobs.values())
        out = []
        for job in jobs:
            phase = job.phase(now)
            out.append({
                "id": job.id, "protocol": job.protocol, "model": job.model, "status": phase.status,
                "lines": len(job.lines), "done": len(phase.done), "pending": len(phase.pending),
            })
        return out

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):010x}"

    def _limit_bytes(self, which: str) -> int:
        return self.max_bytes if self.max_bytes is not None else DEFAULT_MAX_BYTES[which]

    def _limit_requests(self, protocol: str) -> int:
        return self.max_requests if self.max_requests is not None else DEFAULT_MAX_REQUESTS[protocol]

    def _job(self, ctx: _Ctx, ident: str) -> BatchJob | None:
        with self._lock:
            job = self._jobs.get(ident)
        return job if job is not None and job.protocol == ctx.protocol and job.key == ctx.key else None

    def _file(self, ctx: _Ctx, ident: str) -> StoredFile | None:
        with self._lock:
            stored = self._files.get(ident)
        return stored if stored is not None and stored.key == ctx.key else None

    # -- responses --------------------------------------------------------------------------------

    def _json(self, ctx: _Ctx, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
        wire = self._wires[ctx.protocol]
        merged = {**wire.headers(ctx.call), "Content-Type": wire.json_type, **(headers or {})}
        return web.Response(status=status, body=dumps(payload).encode(), headers=merged)

    def _jsonl(self, ctx: _Ctx, lines: list[str]) -> web.Response:
        headers = {**self._wires[ctx.protocol].headers(ctx.call), "Content-Type": "application/octet-stream"}
        return web.Response(status=200, body=("".join(line + "\n" for line in lines)).encode(), headers=headers)

    def _error(self, ctx: _Ctx, status: int, message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
        """An error in the protocol's shape for `status` (400, 404, 409, 413)."""
        if ctx.protocol == "openai":
            payload: Any = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        elif ctx.protocol == "anthropic":
            etype = {404: "not_found_error", 409: "conflict_error", 413: "request_too_large"}.get(status, "invalid_request_error")
            payload = {"type": "error", "error": {"type": etype, "message": message}, "request_id": self._wires["anthropic"].request_id(ctx.call)}
        else:
            state = {404: "NOT_FOUND", 409: "FAILED_PRECONDITION"}.get(status, "INVALID_ARGUMENT")
            payload = {"error": {"code": status, "message": message, "status": state}}
        return self._json(ctx, status, payload)

    def _refused(self, ctx: _Ctx, script: BatchScript) -> web.Response | None:
        """The scripted refusal of a create request, in the protocol's error shape."""
        if script.refuse is None:
            return None
        ctx.call.model = ctx.model or ""
        status, payload, headers = self._wires[ctx.protocol].failure(ctx.call, script.refuse)
        return self._json(ctx, status, payload, headers)

    # -- making a job -----------------------------------------------------------------------------

    def _make_job(self, ctx: _Ctx, ident: str, model: str, script: BatchScript, entries: list[tuple[str, str, Any]],
                  failure: list[dict[str, Any]] | None, extra: dict[str, Any]) -> BatchJob:
        """A job of (custom id, model, params) entries; its lines take their outcomes now, unless it fails."""
        window = script.window_s if script.window_s is not None else DEFAULT_WINDOW_S[ctx.protocol]
        job = BatchJob(ident, ctx.protocol, ctx.key, model, ctx.now, script, [], window, extra, failure)
        if failure is None:
            for index, (custom_id, line_model, params) in enumerate(entries):
                scripted = script.behaviour_for(custom_id, index)
                result = self._render_line(ctx.protocol, ctx.key, line_model, params, scripted)
                done_at = None if result.kind == "never" else job.validated_at + (index + 1) * script.line_s
                job.lines.append(BatchLine(custom_id, index, line_model, result, done_at))
        with self._lock:
            self._jobs[ident] = job
        return job

    # -- OpenAI: files -----------------------------------------------------------------------------

    def _openai_file_object(self, stored: StoredFile) -> dict[str, Any]:
        return {
            "id": stored.id, "object": "file", "bytes": len(stored.data), "created_at": int(stored.created),
            "filename": stored.name, "purpose": stored.purpose, "status": "processed",
            "expires_at": int(stored.created + 30 * 86400), "status_details": None,
        }

    async def _openai_upload(self, ctx: _Ctx) -> web.StreamResponse:
        form = await _multipart(ctx)
        if form is None:
            return self._error(ctx, 400, "The request must be multipart/form-data with `file` and `purpose`.")
        fields, (filename, data) = form
        purpose = fields.get("purpose")
        if not purpose:
            return self._error(ctx, 400, "Missing required parameter: 'purpose'.", param="purpose")
        if not filename:
            return self._error(ctx, 400, "Missing required parameter: 'file'.", param="file")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            return self._error(ctx, 400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        limit = self._limit_bytes("openai")
        if purpose == "batch" and len(data) > limit:
            message = f"File is too large: {len(data)} bytes. The batch input file may be at most {limit} bytes."
            return self._error(ctx, 400, message, param="file", code="file_too_large")
        stored = StoredFile("file-" + self._new_id(), ctx.key, filename, data, purpose, ctx.now)
        with self._lock:
            self._files[stored.id] = stored
        return self._json(ctx, 200, self._openai_file_object(stored))

    async def _openai_files(self, ctx: _Ctx) -> web.StreamResponse:
        with self._lock:
            mine = [f for f in self._files.values() if f.key == ctx.key]
        data = [self._openai_file_object(f) for f in mine]
        data += [self._openai_file_object(f) for f in self._openai_results_files(ctx)]
        return self._json(ctx, 200, {"object": "list", "data": data, "has_more": False})

    def _openai_results_files(self, ctx: _Ctx, only: str | None = None) -> list[StoredFile]:
        """The output and error files of this key's ended OpenAI jobs (made when read)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.protocol == "openai" and j.key == ctx.key]
        files = []
        for job in jobs:
            if only is not None and not only.startswith(f"file-{job.id[6:]}-"):
                continue
            phase = job.phase(ctx.now)
            output, errors = _openai_file_ids(job, phase)
            for ident, which in ((output, "output"), (errors, "error")):
                if ident:
                    lines = _openai_result_lines(job, phase, which)
                    data = ("".join(line + "\n" for line in lines)).encode()
                    stamp = phase.ended_at or ctx.now
                    files.append(StoredFile(ident, ctx.key, f"{job.id}_{which}.jsonl", data, "batch_output", stamp))
        return files

    def _openai_any_file(self, ctx: _Ctx, ident: str) -> StoredFile | None:
        stored = self._file(ctx, ident)
        if stored is not None:
            return stored
        return next((f for f in self._openai_results_files(ctx, ident) if f.id == ident), None)

    async def _openai_file(self, ctx: _Ctx) -> web.StreamResponse:
        stored = self._openai_any_file(ctx, ctx.params["id"])
        if stored is None:
            return self._error(ctx, 404, f"No such File object: {ctx.params['id']}", param="id")
        return self._json(ctx, 200, self._openai_file_object(stored))

    async def _openai_content(self, ctx: _Ctx) -> web.StreamResponse:
        stored = self._openai_any_file(ctx, ctx.params["id"])
        if stored is None:
            return self._error(ctx, 404, f"No such File object: {ctx.params['id']}", param="id")
        headers = {**self._wires["openai"].headers(ctx.call), "Content-Type": "application/octet-stream"}
        return web.Response(status=200, body=stored.data, headers=headers)

    async def _openai_delete_file(self, ctx: _Ctx) -> web.StreamResponse:
        ident = ctx.params["id"]
        if self._file(ctx, ident) is None:
            return self._error(ctx, 404, f"No such File object: {ident}", param="id")
        with self._lock:
            self._files.pop(ident, None)
        return self._json(ctx, 200, {"id": ident, "object": "file", "deleted": True})

    # -- OpenAI: batches ---------------------------------------------------------------------------

    async def _openai_create(self, ctx: _Ctx) -> web.StreamResponse:
        body = ctx.body if isinstance(ctx.body, dict) else {}
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            return self._error(ctx, 400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
        endpoint = body.get("endpoint")
        if endpoint != "/v1/chat/completions":
            message = f"Invalid value: {endpoint!r}. The simulator runs batches for '/v1/chat/completions'."
            return self._error(ctx, 400, message, param="endpoint", code="invalid_value")
        if body.get("completion_window") != "24h":
            message = f"Invalid value: {body.get('completion_window')!r}. Supported values are: '24h'."
            return self._error(ctx, 400, message, param="completion_window", code="invalid_value")
        stored = self._file(ctx, file_id)
        if stored is None:
            return self._error(ctx, 404, f"No such File object: {file_id}", param="input_file_id")
        entries, failure = self._openai_lines(stored.data, endpoint)
        ctx.model = entries[0][1] if entries else ""
        script = self._next_script(ctx.key, ctx.model or None)
        refused = self._refused(ctx, script)
        if refused is not None:
            return refused
        if failure is None and script.fail is not None:
            message = _OPENAI_FAILURE_TEXT[script.fail].format(model=ctx.model, limit=self._limit_requests("openai"))
            failure = [{"code": script.fail, "line": None, "message": message, "param": None}]
        extra = {"input_file_id": file_id, "endpoint": endpoint, "metadata": body.get("metadata")}
        job = self._make_job(ctx, "batch_" + self._new_id(), ctx.model, script, entries, failure, extra)
        return self._json(ctx, 200, self._openai_batch(job, ctx.now))

    def _openai_lines(self, data: bytes, endpoint: str) -> tuple[list[tuple[str, str, Any]], list[dict[str, Any]] | None]:
        """The (custom id, model, body) of each line, or the validation errors that fail the batch."""
        entries: list[tuple[str, str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, text in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                line = None
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
                errors.append(_openai_failure("invalid_json_line", number))
                continue
            custom_id, body = str(line.get("custom_id")), line["body"]
            model = str(body.get("model") or "")
            if custom_id in seen:
                errors.append(_openai_failure("duplicate_custom_id", number, "custom_id"))
            elif line.get("url") != endpoint:
                errors.append(_openai_failure("url_mismatch", number, "url"))
            elif entries and model != entries[0][1]:
                errors.append(_openai_failure("model_mismatch", number, "body.model"))
            seen.add(custom_id)
            entries.append((custom_id, model, body))
        if not entries and not errors:
            errors.append(_openai_failure("empty_file", None))
        limit = self._limit_requests("openai")
        if len(entries) > limit:
            errors.append({**_openai_failure("too_many_tasks", None), "message": _OPENAI_FAILURE_TEXT["too_many_tasks"].format(limit=limit)})
        return entries, errors or None

    def _openai_batch(self, job: BatchJob, now: float) -> dict[str, Any]:
        phase = job.phase(now)
        done_ok = [line for line in phase.done if line.result.kind in ("succeeded", "malformed")]
        done_bad = [line for line in phase.done if line.result.kind == "errored"]
        output, errors = _openai_file_ids(job, phase)
        stamps = {f"{status}_at": int(when) for status, when in phase.stamps.items() if status != "validating"}
        usage = _usage(done_ok)
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": job.extra["endpoint"],
            "model": job.model,
            "errors": {"object": "list", "data": job.failure} if job.failure is not None else None,
            "input_file_id": job.extra["input_file_id"],
            "completion_window": "24h",
            "status": phase.status,
            "output_file_id": output,
            "error_file_id": errors,
            "created_at": int(job.created),
            "in_progress_at": stamps.get("in_progress_at"),
            "expires_at": int(job.expires_at),
            "finalizing_at": stamps.get("finalizing_at"),
            "completed_at": stamps.get("completed_at"),
            "failed_at": stamps.get("failed_at"),
            "expired_at": stamps.get("expired_at"),
            "cancelling_at": stamps.get("cancelling_at"),
            "cancelled_at": stamps.get("cancelled_at"),
            "request_counts": {
                "total": 0 if phase.status == "validating" or job.failure is not None else len(job.lines),
                "completed": len(done_ok),
                "failed": len(done_bad),
            },
            "usage": {
                "input_tokens": usage[0],
                "input_tokens_details": {"cached_tokens": usage[2]},
                "output_tokens": usage[1],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage[0] + usage[1],
            },
            "metadata": job.extra.get("metadata"),
        }

    async def _openai_get(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"No batch found with id '{ctx.params['id']}'.", param="batch_id")
        return self._json(ctx, 200, self._openai_batch(job, ctx.now))

    async def _openai_cancel(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"No batch found with id '{ctx.params['id']}'.", param="batch_id")
        phase = job.phase(ctx.now)
        if phase.ended:
            return self._error(ctx, 400, f"Cannot cancel a batch with status '{phase.status}'.")
        if job.cancel_at is None:
            job.cancel_at = ctx.now
        return self._json(ctx, 200, self._openai_batch(job, ctx.now))

    async def _openai_list(self, ctx: _Ctx) -> web.StreamResponse:
        jobs = self._newest_first(ctx, ctx.request.query.get("after"), None)
        limit = _page_size(ctx.request.query.get("limit"), 20, 100)
        page = jobs[:limit]
        data = [self._openai_batch(job, ctx.now) for job in page]
        return self._json(ctx, 200, {
            "object": "list", "data": data, "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None, "has_more": len(jobs) > limit,
        })

    def _newest_first(self, ctx: _Ctx, after: str | None, before: str | None) -> list[BatchJob]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.protocol == ctx.protocol and j.key == ctx.key]
        jobs.reverse()
        ids = [j.id for j in jobs]
        if after in ids:
            jobs = jobs[ids.index(after) + 1 :]
        elif before in ids:
            jobs = jobs[: ids.index(before)]
        return jobs

    # -- Anthropic ---------------------------------------------------------------------------------

    async def _anthropic_create(self, ctx: _Ctx) -> web.StreamResponse:
        limit = self._limit_bytes("anthropic")
        if len(ctx.raw) > limit:
            return self._error(ctx, 413, "Request exceeds the maximum allowed number of bytes.")
        body = ctx.body if isinstance(ctx.body, dict) else {}
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return self._error(ctx, 400, f"requests: List should have at least 1 item after validation, not {len(requests or [])}")
        if len(requests) > self._limit_requests("anthropic"):
            return self._error(ctx, 400, f"requests: List should have at most {self._limit_requests('anthropic')} items after validation, not {len(requests)}")
        entries: list[tuple[str, str, Any]] = []
        for i, item in enumerate(requests):
            item = item if isinstance(item, dict) else {}
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or len(custom_id) > 64:
                return self._error(ctx, 400, f"requests.{i}.custom_id: String should have at most 64 characters")
            if not _ANTHROPIC_ID.fullmatch(custom_id):
                return self._error(ctx, 400, f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            params = item.get("params")
            if not isinstance(params, dict):
                return self._error(ctx, 400, f"requests.{i}.params: Field required")
            entries.append((custom_id, str(params.get("model") or ""), params))
        ctx.model = entries[0][1]
        script = self._next_script(ctx.key, ctx.model)
        refused = self._refused(ctx, script)
        if refused is not None:
            return refused
        if script.fail is not None:  # Anthropic validates the envelope at once: a 400, never a failed job
            message = _OPENAI_FAILURE_TEXT[script.fail].format(model=ctx.model, limit=self._limit_requests("anthropic"))
            return self._error(ctx, 400, f"requests: {message}")
        job = self._make_job(ctx, "msgbatch_" + self._new_id(), ctx.model, script, entries, None, {})
        return self._json(ctx, 200, self._anthropic_batch(ctx, job))

    def _anthropic_batch(self, ctx: _Ctx, job: BatchJob) -> dict[str, Any]:
        phase = job.phase(ctx.now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if phase.ended:  # the other counts stay 0 until the whole batch ends
            for line in phase.done:
                counts["errored" if line.result.kind == "errored" else "succeeded"] += 1
            counts["canceled" if phase.cut == "cancelled" else "expired"] += len(phase.pending)
        else:
            counts["processing"] = len(job.lines)
        status = "ended" if phase.ended else "canceling" if phase.status == "cancelling" else "in_progress"
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(phase.ended_at) if phase.ended_at is not None else None,
            "created_at": rfc3339(job.created),
            "expires_at": rfc3339(job.expires_at),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(job.cancel_at) if job.cancel_at is not None else None,
            "results_url": f"{ctx.base}/v1/messages/batches/{job.id}/results" if phase.ended else None,
        }

    async def _anthropic_get(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"Message batch {ctx.params['id']} not found.")
        return self._json(ctx, 200, self._anthropic_batch(ctx, job))

    async def _anthropic_results(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"Message batch {ctx.params['id']} not found.")
        phase = job.phase(ctx.now)
        if not phase.ended:
            return self._error(ctx, 400, f"Message batch {job.id} is still processing; its results are not ready.")
        lines = [_anthropic_line(line) for line in phase.done]
        gone = "canceled" if phase.cut == "cancelled" else "expired"
        lines += [dumps({"custom_id": line.custom_id, "result": {"type": gone}}) for line in phase.pending]
        random.Random(job.id).shuffle(lines)  # any order: clients match on custom_id
        return self._jsonl(ctx, lines)

    async def _anthropic_cancel(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"Message batch {ctx.params['id']} not found.")
        if job.cancel_at is None and not job.phase(ctx.now).ended:
            job.cancel_at = ctx.now
        return self._json(ctx, 200, self._anthropic_batch(ctx, job))

    async def _anthropic_delete(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, f"Message batch {ctx.params['id']} not found.")
        if not job.phase(ctx.now).ended:
            return self._error(ctx, 400, f"Message batch {job.id} cannot be deleted while it is still processing.")
        with self._lock:
            self._jobs.pop(job.id, None)
        return self._json(ctx, 200, {"id": job.id, "type": "message_batch_deleted"})

    async def _anthropic_list(self, ctx: _Ctx) -> web.StreamResponse:
        query = ctx.request.query
        jobs = self._newest_first(ctx, query.get("after_id"), query.get("before_id"))
        limit = _page_size(query.get("limit"), 20, 1000)
        page = jobs[:limit]
        return self._json(ctx, 200, {
            "data": [self._anthropic_batch(ctx, job) for job in page], "has_more": len(jobs) > limit,
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
        })

    # -- Gemini: batches ---------------------------------------------------------------------------

    async def _gemini_create(self, ctx: _Ctx) -> web.StreamResponse:
        ctx.model = ctx.params["model"].removeprefix("models/")
        ctx.call.model = ctx.model
        limit = self._limit_bytes("gemini")
        if len(ctx.raw) > limit:
            return self._error(ctx, 400, f"Request payload size exceeds the limit: {limit} bytes.")
        body: dict[str, Any] = ctx.body if isinstance(ctx.body, dict) else {}
        inner = body.get("batch")
        batch: dict[str, Any] = inner if isinstance(inner, dict) else body
        name = batch.get("displayName", batch.get("display_name"))
        if not isinstance(name, str) or not name:
            return self._error(ctx, 400, "batch.display_name is required.")
        config = batch.get("inputConfig", batch.get("input_config"))
        config = config if isinstance(config, dict) else {}
        found = self._gemini_entries(ctx, config)
        if isinstance(found, web.Response):
            return found
        entries, mode = found
        if len(entries) > self._limit_requests("gemini"):
            return self._error(ctx, 400, f"The batch has {len(entries)} requests; at most {self._limit_requests('gemini')} are allowed.")
        script = self._next_script(ctx.key, ctx.model)
        refused = self._refused(ctx, script)
        if refused is not None:
            return refused
        failure = None
        if script.fail is not None:
            message = _OPENAI_FAILURE_TEXT[script.fail].format(model=ctx.model, limit=self._limit_requests("gemini"))
            failure = [{"code": script.fail, "line": None, "message": message, "param": None}]
        extra = {"display_name": name, "mode": mode, "priority": batch.get("priority")}
        job = self._make_job(ctx, "batches/" + self._new_id(), ctx.model, script, entries, failure, extra)
        return self._json(ctx, 200, self._gemini_operation(job, ctx.now))

    def _gemini_entries(self, ctx: _Ctx, config: dict[str, Any]) -> tuple[list[tuple[str, str, Any]], str] | web.Response:
        """The (key, model, request) entries of an inline or file batch, and which it was."""
        requests = _mapping(config.get("requests"))
        file_name = config.get("fileName", config.get("file_name")) or requests.get("fileName", requests.get("file_name"))
        if isinstance(file_name, str):
            stored = self._file(ctx, file_name.removeprefix("files/"))
            if stored is None:
                return self._error(ctx, 404, "Requested entity was not found.")
            entries = []
            for number, text in enumerate(stored.data.decode("utf-8", "replace").split("\n"), start=1):
                if not text.strip():
                    continue
                try:
                    line = json.loads(text)
                except ValueError:
                    return self._error(ctx, 400, f"Invalid JSON in the input file at line {number}.")
                if not isinstance(line, dict):
                    return self._error(ctx, 400, f"Invalid request in the input file at line {number}.")
                entries.append((str(line.get("key", number - 1)), ctx.model or "", line.get("request")))
            return entries, "file"
        inline = requests.get("requests")
        if not isinstance(inline, list) or not inline:
            return self._error(ctx, 400, "batch.input_config must hold requests or a file_name.")
        entries = []
        for index, item in enumerate(inline):
            item = item if isinstance(item, dict) else {}
            metadata = _mapping(item.get("metadata"))
            entries.append((str(metadata.get("key", index)), ctx.model or "", item.get("request")))
        return entries, "inline"

    def _gemini_operation(self, job: BatchJob, now: float) -> dict[str, Any]:
        phase = job.phase(now)
        ok = [line for line in phase.done if line.result.kind in ("succeeded", "malformed")]
        bad = [line for line in phase.done if line.result.kind == "errored"]
        latest = max(phase.stamps.values())
        metadata: dict[str, Any] = {
            "@type": _GEMINI_OP + "GenerateContentBatch",
            "model": f"models/{job.model}",
            "displayName": job.extra["display_name"],
            "state": "BATCH_STATE_" + _GEMINI_STATES[phase.status],
            "createTime": rfc3339(job.created),
            "updateTime": rfc3339(latest),
            # int64 fields travel as strings in Google's JSON
            "batchStats": {
                "requestCount": str(len(job.lines)),
                "successfulRequestCount": str(len(ok)),
                "failedRequestCount": str(len(bad)),
                "pendingRequestCount": str(len(job.lines) - len(phase.done)),
            },
        }
        if job.extra.get("priority") is not None:
            metadata["priority"] = str(job.extra["priority"])
        operation: dict[str, Any] = {"name": job.id, "metadata": metadata, "done": phase.ended}
        if phase.ended:
            metadata["endTime"] = rfc3339(phase.ended_at or latest)
        if phase.status == "failed" and job.failure:
            operation["error"] = {"code": 3, "message": job.failure[0]["message"]}
        elif phase.status in ("completed", "cancelled"):  # an expired job has no results at all
            output = self._gemini_output(job, phase)
            metadata["output"] = output
            operation["response"] = {"@type": _GEMINI_OP + "GenerateContentBatchOutput", **output}
        return operation

    def _gemini_output(self, job: BatchJob, phase: Phase) -> dict[str, Any]:
        if job.extra["mode"] == "file":
            return {"responsesFile": "files/" + _gemini_results_id(job)}
        entries = []
        for line in sorted(phase.done, key=lambda item: item.index):
            entry: dict[str, Any] = {}
            if line.result.kind == "succeeded":
                entry["response"] = line.result.body
            elif line.result.kind == "errored":
                entry["error"] = _gemini_status(line.result.body)
            # a malformed line inline: neither a response nor an error, as close as JSON allows
            entry["metadata"] = {"key": line.custom_id}
            entries.append(entry)
        return {"inlinedResponses": {"inlinedResponses": entries}}

    async def _gemini_get(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, "batches/" + ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        return self._json(ctx, 200, self._gemini_operation(job, ctx.now))

    async def _gemini_cancel(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, "batches/" + ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        if job.phase(ctx.now).ended:
            return self._error(ctx, 400, f"Batch {job.id} has already ended and cannot be cancelled.")
        if job.cancel_at is None:
            job.cancel_at = ctx.now
        return self._json(ctx, 200, {})

    async def _gemini_delete(self, ctx: _Ctx) -> web.StreamResponse:
        job = self._job(ctx, "batches/" + ctx.params["id"])
        if job is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        with self._lock:
            self._jobs.pop(job.id, None)
        return self._json(ctx, 200, {})

    async def _gemini_list(self, ctx: _Ctx) -> web.StreamResponse:
        jobs = self._newest_first(ctx, None, None)
        size = _page_size(ctx.request.query.get("pageSize"), 50, 1000)
        token = ctx.request.query.get("pageToken") or "0"
        start = int(token) if token.isdigit() else 0
        page = jobs[start : start + size]
        payload: dict[str, Any] = {"operations": [self._gemini_operation(job, ctx.now) for job in page]}
        if start + size < len(jobs):
            payload["nextPageToken"] = str(start + size)
        return self._json(ctx, 200, payload)

    # -- Gemini: files -----------------------------------------------------------------------------

    def _gemini_file_object(self, ctx: _Ctx, stored: StoredFile) -> dict[str, Any]:
        digest = base64.b64encode(hashlib.sha256(stored.data).digest()).decode()
        return {
            "name": "files/" + stored.id, "displayName": stored.name, "mimeType": stored.mime,
            "sizeBytes": str(len(stored.data)), "createTime": rfc3339(stored.created), "updateTime": rfc3339(stored.created),
            "expirationTime": rfc3339(stored.created + 48 * 3600), "sha256Hash": digest,
            "uri": f"{ctx.base}/v1beta/files/{stored.id}", "state": "ACTIVE", "source": "UPLOADED",
        }

    async def _gemini_upload(self, ctx: _Ctx) -> web.StreamResponse:
        """The resumable protocol: `start` answers an upload URL; `upload` appends; `finalize` makes the file."""
        headers = ctx.request.headers
        command = {c.strip() for c in headers.get("x-goog-upload-command", "").lower().split(",")}
        upload_id = ctx.request.query.get("upload_id")
        limit = self._limit_bytes("gemini-file")
        if "start" in command:
            if headers.get("x-goog-upload-protocol", "").lower() != "resumable":
                return self._error(ctx, 400, "The simulator takes resumable uploads only (X-Goog-Upload-Protocol: resumable).")
            size = int(headers.get("x-goog-upload-header-content-length") or 0)
            if size > limit:
                return self._error(ctx, 400, f"Request payload size exceeds the limit: {limit} bytes.")
            spec = _mapping(_mapping(ctx.body).get("file"))
            mime = headers.get("x-goog-upload-header-content-type") or "application/jsonl"
            ident = self._new_id()
            with self._lock:
                self._uploads[ident] = _Upload(ctx.key, str(spec.get("displayName") or ident), mime, size, bytearray())
            url = f"{ctx.base}/upload/v1beta/files?upload_id={ident}&upload_protocol=resumable"
            return self._json(ctx, 200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        with self._lock:
            upload = self._uploads.get(upload_id or "")
        if upload is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        if "upload" in command:
            upload.data += ctx.raw
        if len(upload.data) > limit:
            with self._lock:
                self._uploads.pop(upload_id or "", None)
            return self._error(ctx, 400, f"Request payload size exceeds the limit: {limit} bytes.")
        if "finalize" not in command:
            return self._json(ctx, 200, {}, {"x-goog-upload-status": "active", "x-goog-upload-size-received": str(len(upload.data))})
        stored = StoredFile(self._new_id(), upload.key, upload.name, bytes(upload.data), "batch", ctx.now, upload.mime)
        with self._lock:
            self._uploads.pop(upload_id or "", None)
            self._files[stored.id] = stored
        return self._json(ctx, 200, {"file": self._gemini_file_object(ctx, stored)}, {"x-goog-upload-status": "final"})

    def _gemini_any_file(self, ctx: _Ctx, ident: str) -> StoredFile | None:
        stored = self._file(ctx, ident)
        if stored is not None:
            return stored
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.protocol == "gemini" and j.key == ctx.key and j.extra.get("mode") == "file"]
        for job in jobs:
            phase = job.phase(ctx.now)
            if _gemini_results_id(job) == ident and phase.status in ("completed", "cancelled"):
                lines = [_gemini_line(line) for line in sorted(phase.done, key=lambda item: item.index)]
                data = ("".join(line + "\n" for line in lines)).encode()
                return StoredFile(ident, ctx.key, f"{job.id} results", data, "batch_output", phase.ended_at or ctx.now)
        return None

    async def _gemini_file(self, ctx: _Ctx) -> web.StreamResponse:
        stored = self._gemini_any_file(ctx, ctx.params["id"])
        if stored is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        return self._json(ctx, 200, self._gemini_file_object(ctx, stored))

    async def _gemini_download(self, ctx: _Ctx) -> web.StreamResponse:
        stored = self._gemini_any_file(ctx, ctx.params["id"])
        if stored is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        return web.Response(status=200, body=stored.data, headers={"Content-Type": "application/octet-stream"})

    async def _gemini_delete_file(self, ctx: _Ctx) -> web.StreamResponse:
        if self._file(ctx, ctx.params["id"]) is None:
            return self._error(ctx, 404, "Requested entity was not found.")
        with self._lock:
            self._files.pop(ctx.params["id"], None)
        return self._json(ctx, 200, {})


# -- result lines ----------------------------------------------------------------------------------


def _broken(line: dict[str, Any]) -> str:
    """A result line cut in half: one undecodable line among good ones."""
    text = dumps(line)
    return text[: len(text) // 2]


def _openai_failure(code: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": line, "message": _OPENAI_FAILURE_TEXT[code], "param": param}


def _openai_file_ids(job: BatchJob, phase: Phase) -> tuple[str | None, str | None]:
    """(output_file_id, error_file_id) of an ended job: null output when no line succeeded, and an empty
    error id for a clean batch, as OpenAI answers them (batch_apis.md section 1)."""
    if not phase.ended or phase.status == "failed":
        return None, None
    hexid = job.id[6:]
    ok = any(line.result.kind in ("succeeded", "malformed") for line in phase.done)
    bad = any(line.result.kind == "errored" for line in phase.done) or bool(phase.pending)
    return (f"file-{hexid}-output" if ok else None), (f"file-{hexid}-errors" if bad else "")


def _openai_result_lines(job: BatchJob, phase: Phase, which: str) -> list[str]:
    lines: list[str] = []
    for line in phase.done:
        result = line.result
        if (result.kind == "errored") != (which == "error"):
            continue
        entry = {
            "id": f"batch_req_{job.id[6:]}{line.index:06d}",
            "custom_id": line.custom_id,
            "response": {"status_code": result.status, "request_id": result.request_id, "body": result.body},
            "error": None,
        }
        lines.append(_broken(entry) if result.kind == "malformed" else dumps(entry))
    if which == "error" and phase.cut is not None:
        code = "batch_expired" if phase.cut == "expired" else "batch_cancelled"
        for line in phase.pending:
            entry = {"id": f"batch_req_{job.id[6:]}{line.index:06d}", "custom_id": line.custom_id, "response": None,
                     "error": {"code": code, "message": _CUT_TEXT[code]}}
            lines.append(dumps(entry))
    random.Random(job.id + which).shuffle(lines)  # not input order: clients match on custom_id
    return lines


def _anthropic_line(line: BatchLine) -> str:
    result = line.result
    if result.kind == "errored":
        return dumps({"custom_id": line.custom_id, "result": {"type": "errored", "error": result.body}})
    entry = {"custom_id": line.custom_id, "result": {"type": "succeeded", "message": result.body}}
    return _broken(entry) if result.kind == "malformed" else dumps(entry)


def _gemini_status(body: Any) -> Any:
    """The `google.rpc.Status` inside the protocol's error body."""
    return body.get("error", body) if isinstance(body, dict) else body


def _gemini_line(line: BatchLine) -> str:
    result = line.result
    if result.kind == "errored":
        return dumps({"key": line.custom_id, "error": _gemini_status(result.body)})
    entry = {"key": line.custom_id, "response": result.body}
    return _broken(entry) if result.kind == "malformed" else dumps(entry)


def _gemini_results_id(job: BatchJob) -> str:
    return "batch-" + job.id.removeprefix("batches/") + "-results"


def _usage(lines: list[BatchLine]) -> tuple[int, int, int]:
    return (
        sum(line.result.input_tokens for line in lines),
        sum(line.result.output_tokens for line in lines),
        sum(line.result.cached_tokens for line in lines),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _page_size(value: str | None, default: int, most: int) -> int:
    return max(1, min(most, int(value))) if value and value.isdigit() else default


async def _multipart(ctx: _Ctx) -> tuple[dict[str, str], tuple[str, bytes]] | None:
    """The text fields and the one file of a multipart/form-data upload (read from the raw body)."""
    if not ctx.request.content_type.startswith("multipart/"):
        return None
    header = ctx.request.headers.get("content-type", "")
    match = re.search(r'boundary="?([^";]+)"?', header)
    if match is None:
        return None
    boundary = match.group(1)
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] = ("", b"")
    for part in ctx.raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        data = data[:-2] if data.endswith(b"\r\n") else data
        disposition = next((h for h in head.decode("utf-8", "replace").split("\r\n") if h.lower().startswith("content-disposition")), "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if filename is not None:
            upload = (filename.group(1), data)
        elif name is not None:
            fields[name.group(1)] = data.decode("utf-8", "replace")
    return fields, upload


__all__ = ["BatchService", "StoredFile"]

"""Gemini's Batch Mode (`:batchGenerateContent`), at half price: inline requests, or an uploaded JSONL file.

    POST {base}/models/{model}:batchGenerateContent
         {"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request", "metadata": {"key"}}]}}}}
         or, past INLINE_MAX_BYTES, "inputConfig": {"fileName": "files/..."} after a resumable upload
    GET  {base}/batches/{id}            an Operation: metadata.state BATCH_STATE_PENDING > _RUNNING > _SUCCEEDED ...
    results: inline in the Operation (`response.inlinedResponses.inlinedResponses`, in input order), or
             `response.responsesFile` downloaded as JSONL ({"key", "response"} | {"key", "error"})
    POST {base}/batches/{id}:cancel

Facts from shared/docs/batch_apis.md section 3. An expired job has no results at all. A line's `error` is
a `google.rpc.Status` whose `code` may be HTTP or gRPC numbering (not established): a gRPC code is mapped
to the HTTP status it stands for before the chat protocol classifies it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .._core import ErrorKind, ProviderFailure
from .._core.secrets import excerpt
from . import get_protocol
from .base import Endpoint, malformed
from .batches import (
    MAX_RESULT_BYTES,
    BatchAPI,
    BatchHTTP,
    BatchLimits,
    BatchLine,
    JobState,
    JobStatus,
    LineOutcome,
    LineResult,
    ResultSet,
    as_count,
    as_obj,
    auth_headers,
    jsonl,
    read_jsonl,
    text_of,
)

#: an input file may hold 2 GB [g-doc]; the number of requests per job is not established: our own cap
LIMITS = BatchLimits(max_requests=500_000, max_bytes=2 * 1024**3)
#: inline requests must stay under 20 MB [g-doc]: past this the lines go in an uploaded file
INLINE_MAX_BYTES = 19 * 1024 * 1024
_STATES = {
    "PENDING": JobState.VALIDATING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "EXPIRED": JobState.EXPIRED,
    "UNSPECIFIED": JobState.VALIDATING,
}
#: google.rpc.Code -> the HTTP status it stands for (a line's `error.code` below 100 is read as gRPC)
GRPC_STATUS = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501,
               13: 500, 14: 503, 15: 500, 16: 401}
_NAME = re.compile(r"^(batches|files)/[A-Za-z0-9_-]{1,200}$")


def _name(value: Any, prefix: str, where: str) -> str:
    """A resource name (`batches/123`, `files/abc`), checked before it goes into a URL."""
    if isinstance(value, str) and _NAME.match(value) and value.startswith(prefix + "/"):
        return value
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,200}", value):
        return f"{prefix}/{value}"  # a bare id
    raise malformed(f"{where} is {excerpt(repr(value), 80)}, not a {prefix} name")


class GeminiBatchAPI(BatchAPI):
    """The Gemini API's Batch Mode."""

    protocol_name = "gemini"
    limits = LIMITS

    def __init__(self) -> None:
        self.chat = get_protocol("gemini")

    def _body(self, endpoint: Endpoint, line: BatchLine) -> dict[str, Any]:
        _, _, body = self.chat.build(endpoint, line.request)
        return body

    def line_bytes(self, endpoint: Endpoint, line: BatchLine) -> int:
        return len(jsonl([{"key": line.custom_id, "request": self._body(endpoint, line)}]))

    def _base(self, endpoint: Endpoint) -> str:
        return endpoint.base_url.rstrip("/")

    def _upload_url(self, endpoint: Endpoint) -> str:
        """`{root}/upload/v1beta/files` from a base of `{root}/v1beta`."""
        base = self._base(endpoint)
        root, _, version = base.rpartition("/")
        return f"{root}/upload/{version}/files"

    async def submit(self, http: BatchHTTP, endpoint: Endpoint, model: str, lines: Sequence[BatchLine], label: str) -> JobStatus:
        headers = {**auth_headers(self.chat, endpoint, model), "content-type": "application/json"}
        bodies = [(line.custom_id, self._body(endpoint, line)) for line in lines]
        size = sum(len(json.dumps(b, ensure_ascii=False)) for _, b in bodies)
        if size <= INLINE_MAX_BYTES:
            requests = [{"request": body, "metadata": {"key": key}} for key, body in bodies]
            config: dict[str, Any] = {"requests": {"requests": requests}}
        else:
            config = {"fileName": await self._upload(http, endpoint, headers, jsonl([{"key": k, "request": b} for k, b in bodies]))}
        model_id = model[len("models/"):] if model.startswith("models/") else model
        url = f"{self._base(endpoint)}/models/{model_id}:batchGenerateContent"
        body = {"batch": {"displayName": label[:120] or "nbrouter", "inputConfig": config}}
        reply = await http.send(endpoint, "POST", url, headers=headers, body=body, missing_means_unsupported=True)
        return self.job(reply.json("the batch creation"), now=http.clock.time())

    async def _upload(self, http: BatchHTTP, endpoint: Endpoint, headers: dict[str, str], content: bytes) -> str:
        """A resumable upload in one piece; the file's name (`files/...`)."""
        start = {**headers, "x-goog-upload-protocol": "resumable", "x-goog-upload-command": "start",
                 "x-goog-upload-header-content-length": str(len(content)),
                 "x-goog-upload-header-content-type": "application/jsonl"}
        began = await http.send(endpoint, "POST", self._upload_url(endpoint), headers=start, body={"file": {"displayName": "rows"}},
                                missing_means_unsupported=True)
        target = began.headers.get("x-goog-upload-url", "")
        if not target:
            raise malformed("the upload's start answered without x-goog-upload-url")
        finish = {k: v for k, v in headers.items() if k != "content-type"}
        finish.update({"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"})
        done = await http.send(endpoint, "POST", target, headers=finish, content=content)
        file = done.json("the upload").get("file")
        return _name(file.get("name") if isinstance(file, dict) else None, "files", "the uploaded file's name")

    async def status(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        name = _name(job_id, "batches", "the batch name")
        reply = await http.send(endpoint, "GET", f"{self._base(endpoint)}/{name}", headers=auth_headers(self.chat, endpoint, ""))
        return self.job(reply.json("the batch"), now=http.clock.time())

    async def cancel(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        name = _name(job_id, "batches", "the batch name")
        await http.send(endpoint, "POST", f"{self._base(endpoint)}/{name}:cancel", headers=auth_headers(self.chat, endpoint, ""))
        return await self.status(http, endpoint, job_id)

    async def results(self, http: BatchHTTP, endpoint: Endpoint, job: JobStatus, custom_ids: Sequence[str]) -> ResultSet:
        out = ResultSet()
        if job.inline is not None:
            for i, raw in enumerate(job.inline):
                # inline responses keep input order: a response without its key is the i-th line's
                key = custom_ids[i] if i < len(custom_ids) else None
                line = self.line(endpoint, raw, fallback_key=key, now=http.clock.time()) if isinstance(raw, dict) else None
                if line is None:
                    out.unreadable += 1
                else:
                    out.add(line)
            return out
        file = job.handles.get("responses_file")
        if not file:
            return out  # an expired job has no results at all
        reply = await self._download(http, endpoint, _name(file, "files", "the responses file"))
        for i, raw in enumerate(read_jsonl(reply)):
            key = custom_ids[i] if i < len(custom_ids) else None  # the file keeps input order too
            line = self.line(endpoint, raw, fallback_key=key, now=http.clock.time()) if raw is not None else None
            if line is None:
                out.unreadable += 1
            else:
                out.add(line)
        return out

    async def _download(self, http: BatchHTTP, endpoint: Endpoint, name: str) -> bytes:
        """A file's bytes: the documented `/download/...` route, else the SDK's `{base}/files/..:download`."""
        base = self._base(endpoint)
        root, _, version = base.rpartition("/")
        headers = {**auth_headers(self.chat, endpoint, ""), "accept": "application/binary"}
        try:
            reply = await http.send(endpoint, "GET", f"{root}/download/{version}/{name}:download?alt=media", headers=headers,
                                    max_bytes=MAX_RESULT_BYTES, missing_means_unsupported=True)
        except ProviderFailure as failure:
            if failure.kind is not ErrorKind.UNSUPPORTED:
                raise
            reply = await http.send(endpoint, "GET", f"{base}/{name}:download?alt=media", headers=headers, max_bytes=MAX_RESULT_BYTES)
        return reply.raw

    # ---- reading ----------------------------------------------------------------------------

    def job(self, body: dict[str, Any], *, now: float) -> JobStatus:
        """An Operation (or a bare batch object) as a JobStatus."""
        meta = as_obj(body.get("metadata")) or body
        name = body.get("name") or meta.get("name")
        job_id = _name(name, "batches", "the batch name")
        wire = meta.get("state")
        suffix = wire.rsplit("_", 1)[-1] if isinstance(wire, str) and wire.startswith(("BATCH_STATE_", "JOB_STATE_")) else ""
        state = _STATES.get(suffix)
        if state is None:
            raise malformed(f"the batch's state is {excerpt(repr(wire), 60)}")
        stats = as_obj(meta.get("batchStats"))
        status = JobStatus(job_id, state, str(wire), total=as_count(stats.get("requestCount")),
                           succeeded=as_count(stats.get("successfulRequestCount")),
                           failed=as_count(stats.get("failedRequestCount")), pending=as_count(stats.get("pendingRequestCount")))
        output = _output(body, meta)
        inline = output.get("inlinedResponses")
        if isinstance(inline, dict):
            inline = inline.get("inlinedResponses")
        if isinstance(inline, list):
            status.inline = inline
        file = output.get("responsesFile")
        if isinstance(file, str) and file:
            status.handles["responses_file"] = file
        error = body.get("error")
        if isinstance(error, dict) and (state is JobState.FAILED or error):
            code = error.get("code")
            http_status = _http_status(code)
            status.error = excerpt(f"{code}: {text_of(error.get('message')) or 'the batch failed'}", 400)
            status.error_kind = self.chat.classify(Endpoint("gemini", "gemini", ""), http_status, {}, {"error": error}, "", now=now).kind
        return status

    def line(self, endpoint: Endpoint, raw: dict[str, Any], fallback_key: str | None, *, now: float) -> LineResult | None:
        """One result (file line or inline response); None when it names no key."""
        meta = as_obj(raw.get("metadata"))
        key: Any = raw.get("key") if isinstance(raw.get("key"), str) else meta.get("key")
        if not isinstance(key, str) or not key:
            key = fallback_key
        if key is None:
            return None
        if "response" in raw and raw.get("response") is not None:
            try:
                completion = self.chat.parse(endpoint, 200, {}, raw["response"], now=now)
            except ProviderFailure as failure:
                return LineResult(key, LineOutcome.ERRORED, "response", failure=failure)
            return LineResult(key, LineOutcome.SUCCEEDED, "response", completion=completion)
        error = raw.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            refused = self.chat.classify(endpoint, _http_status(code), {}, {"error": error}, "", now=now)
            refused.status = None  # the line had no HTTP status of its own
            return LineResult(key, LineOutcome.ERRORED, f"error {code}" if code is not None else "error", failure=refused)
        return LineResult(key, LineOutcome.ERRORED, "malformed", failure=malformed("a result line with neither response nor error"))


def _output(body: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Where the results are: `response` of a done Operation, or `metadata.output`."""
    for holder in (body.get("response"), meta.get("output"), body.get("output")):
        if isinstance(holder, dict) and (holder.get("inlinedResponses") is not None or holder.get("responsesFile")):
            return holder
    return {}


def _http_status(code: Any) -> int:
    """A `google.rpc.Status` code as an HTTP status: 100-599 as is, a gRPC code mapped, else 500."""
    if isinstance(code, int) and not isinstance(code, bool):
        if 100 <= code <= 599:
            return code
        return GRPC_STATUS.get(code, 500)
    return 500


__all__ = ["GeminiBatchAPI", "INLINE_MAX_BYTES", "LIMITS"]

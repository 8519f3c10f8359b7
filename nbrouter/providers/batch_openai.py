"""OpenAI's Batch API (`/v1/files` + `/v1/batches`), for chat completions, at half price.

    POST {base}/files (multipart: file=rows.jsonl, purpose=batch)  ->  {id: file-...}
    POST {base}/batches {input_file_id, endpoint: /v1/chat/completions, completion_window: 24h, metadata}
    GET  {base}/batches/{id}                                    validating > in_progress > finalizing > completed
    GET  {base}/files/{output_file_id}/content, .../{error_file_id}/content   (JSONL, any order: match custom_id)
    POST {base}/batches/{id}/cancel                             cancelling > cancelled (partial results kept)

Facts from shared/docs/batch_apis.md section 1. A line's body is exactly what the chat protocol builds for a
live call; a result line's `response.body` is read by the chat protocol's `parse` (status 200) or
`classify` (any other status), so a batch answer and a live one are read alike. A server without these
routes (vLLM, llama.cpp, Ollama) answers 404: `BatchUnsupported`, the target is not batch-capable.
"""

from __future__ import annotations

import json
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
    safe_id,
    text_of,
)

#: the chat endpoint every line calls (one endpoint per batch)
CHAT_URL = "/v1/chat/completions"
#: ≤50,000 requests and ≤200 MB per input file [oa-sdk; oa-guide]
LIMITS = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
STATES = {
    "validating": JobState.VALIDATING,
    "in_progress": JobState.RUNNING,
    "finalizing": JobState.FINALIZING,
    "cancelling": JobState.CANCELLING,
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "expired": JobState.EXPIRED,
    "cancelled": JobState.CANCELLED,
}
#: the error codes of a line that never ran
UNFINISHED_CODES = frozenset({"batch_expired", "batch_cancelled"})
#: whole-batch validation codes another target (or a later try) may get past
_RETRYABLE_JOB_CODES = {"token_limit_exceeded": ErrorKind.RATE_LIMIT, "too_many_tasks": ErrorKind.INVALID_REQUEST}


class OpenAIBatchAPI(BatchAPI):
    """The Batch API of OpenAI and OpenAI-compatible servers that have one (LiteLLM's proxy, Groq...)."""

    protocol_name = "openai"
    limits = LIMITS

    def __init__(self) -> None:
        self.chat = get_protocol("openai")

    def request_line(self, endpoint: Endpoint, line: BatchLine) -> dict[str, Any]:
        _, _, body = self.chat.build(endpoint, line.request)
        body.pop("stream", None)
        body.pop("stream_options", None)
        return {"custom_id": line.custom_id, "method": "POST", "url": CHAT_URL, "body": body}

    def line_bytes(self, endpoint: Endpoint, line: BatchLine) -> int:
        return len(jsonl([self.request_line(endpoint, line)]))

    def _base(self, endpoint: Endpoint) -> str:
        return endpoint.base_url.rstrip("/")

    async def submit(self, http: BatchHTTP, endpoint: Endpoint, model: str, lines: Sequence[BatchLine], label: str) -> JobStatus:
        headers = auth_headers(self.chat, endpoint, model)
        content = jsonl([self.request_line(endpoint, line) for line in lines])
        upload = await http.send(endpoint, "POST", self._base(endpoint) + "/files", headers=headers,
                                 files={"file": ("rows.jsonl", content, "application/jsonl")}, data={"purpose": "batch"},
                                 missing_means_unsupported=True)
        file_id = upload.json("the file upload").get("id")
        if not isinstance(file_id, str) or not file_id:
            raise malformed("the file upload answered without an id")
        body = {"input_file_id": file_id, "endpoint": CHAT_URL, "completion_window": "24h",
                "metadata": {"nbrouter_job": label[:512]}}
        created = await http.send(endpoint, "POST", self._base(endpoint) + "/batches", headers={**headers, "content-type": "application/json"},
                                  body=body, missing_means_unsupported=True)
        return self.job(created.json("the batch creation"), now=http.clock.time())

    async def status(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        reply = await http.send(endpoint, "GET", f"{self._base(endpoint)}/batches/{safe_id(job_id, 'the batch id')}",
                                headers=auth_headers(self.chat, endpoint, ""))
        return self.job(reply.json("the batch"), now=http.clock.time())

    async def cancel(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        reply = await http.send(endpoint, "POST", f"{self._base(endpoint)}/batches/{safe_id(job_id, 'the batch id')}/cancel",
                                headers=auth_headers(self.chat, endpoint, ""))
        return self.job(reply.json("the batch"), now=http.clock.time())

    async def results(self, http: BatchHTTP, endpoint: Endpoint, job: JobStatus, custom_ids: Sequence[str]) -> ResultSet:
        out = ResultSet()
        headers = {**auth_headers(self.chat, endpoint, ""), "accept": "application/binary"}
        for handle in ("output_file_id", "error_file_id"):
            file_id = job.handles.get(handle)
            if not file_id:  # null when no line went there, and "" seen for a clean batch's error file
                continue
            reply = await http.send(endpoint, "GET", f"{self._base(endpoint)}/files/{safe_id(file_id, handle)}/content",
                                    headers=headers, max_bytes=MAX_RESULT_BYTES)
            for raw in read_jsonl(reply.raw):
                line = self.line(endpoint, raw, now=http.clock.time()) if raw is not None else None
                if line is None:
                    out.unreadable += 1
                else:
                    out.add(line)
        return out

    # ---- reading ----------------------------------------------------------------------------

    def job(self, body: dict[str, Any], *, now: float) -> JobStatus:
        """A Batch object as a JobStatus."""
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise malformed("the batch object has no id")
        wire = body.get("status")
        state = STATES.get(wire) if isinstance(wire, str) else None
        if state is None:
            raise malformed(f"the batch's status is {excerpt(repr(wire), 60)}, not one the Batch API names")
        counts = as_obj(body.get("request_counts"))
        total, done, failed = (as_count(counts.get(k)) for k in ("total", "completed", "failed"))
        pending = None if total is None or done is None or failed is None else max(0, total - done - failed)
        status = JobStatus(job_id, state, str(wire), total=total, succeeded=done, failed=failed, pending=pending)
        for handle in ("output_file_id", "error_file_id", "input_file_id"):
            value = body.get(handle)
            if isinstance(value, str) and value:
                status.handles[handle] = value
        if state is JobState.FAILED:
            status.error, status.error_kind = _job_error(body.get("errors"))
        return status

    def line(self, endpoint: Endpoint, raw: dict[str, Any], *, now: float) -> LineResult | None:
        """One result line (None when it names no custom id)."""
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return None
        response, error = raw.get("response"), raw.get("error")
        if isinstance(response, dict):
            status = response.get("status_code")
            body = response.get("body")
            if isinstance(status, int) and not isinstance(status, bool) and 200 <= status < 300:
                try:
                    completion = self.chat.parse(endpoint, status, {}, body, now=now)
                except ProviderFailure as failure:
                    return LineResult(custom_id, LineOutcome.ERRORED, str(status), failure=failure)
                completion.request_id = completion.request_id or _request_id(response)
                return LineResult(custom_id, LineOutcome.SUCCEEDED, str(status), completion=completion)
            if isinstance(status, int) and not isinstance(status, bool):  # read status_code, not only `error`
                text = json.dumps(body)[:2000] if body is not None else ""
                refused = self.chat.classify(endpoint, status, {}, body, text, now=now)
                refused.request_id = refused.request_id or _request_id(response)
                return LineResult(custom_id, LineOutcome.ERRORED, str(status), failure=refused)
        if isinstance(error, dict):
            code = str(error.get("code")) if isinstance(error.get("code"), str) else ""
            message = text_of(error.get("message")) or code or "no message"
            if code in UNFINISHED_CODES:
                return LineResult(custom_id, LineOutcome.UNFINISHED, code,
                                  failure=ProviderFailure(ErrorKind.CANCELLED, f"{code}: {message}"))
            kind = ErrorKind.TIMEOUT if code == "request_timeout" else ErrorKind.SERVER_ERROR
            return LineResult(custom_id, LineOutcome.ERRORED, code or "error", failure=ProviderFailure(kind, f"{code}: {message}"))
        return LineResult(custom_id, LineOutcome.ERRORED, "malformed",
                          failure=malformed("a result line with neither a response nor an error"))


def _request_id(response: dict[str, Any]) -> str | None:
    value = response.get("request_id")
    return excerpt(value, 128) if isinstance(value, str) and value else None


def _job_error(errors: Any) -> tuple[str, ErrorKind]:
    """Why a batch failed validation: the first error's code, line and message, and its kind."""
    data = errors.get("data") if isinstance(errors, dict) else None
    first = as_obj(data[0]) if isinstance(data, list) and data else {}
    code = str(first.get("code")) if isinstance(first.get("code"), str) else ""
    message = text_of(first.get("message")) or "the batch failed validation"
    line = first.get("line")
    where = f" (line {line})" if isinstance(line, int) and not isinstance(line, bool) else ""
    kind = _RETRYABLE_JOB_CODES.get(code, ErrorKind.INVALID_REQUEST)
    return excerpt(f"{code or 'failed'}{where}: {message}", 400), kind


__all__ = ["LIMITS", "OpenAIBatchAPI"]

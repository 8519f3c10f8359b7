"""Anthropic's Message Batches (`/v1/messages/batches`), at half price: requests go inline, no upload.

    POST {base}/v1/messages/batches {"requests": [{"custom_id", "params": <Messages body>}]}
    GET  {base}/v1/messages/batches/{id}            in_progress > (canceling >) ended
    GET  {base}/v1/messages/batches/{id}/results    JSONL, any order: succeeded | errored | expired | canceled
    POST {base}/v1/messages/batches/{id}/cancel

Facts from shared/docs/batch_apis.md section 2. Counts other than `processing` stay 0 until the batch
ends. `results_url` is followed only when it is on the endpoint's own origin (the key goes with it);
otherwise the results route is built from the id. An `errored` line's inner error is classified by the
chat protocol, with the HTTP status its error type stands for.
"""

from __future__ import annotations

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
    same_origin,
)

#: 100,000 requests or 256 MB per batch, whichever first [an-doc]
LIMITS = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)
#: the HTTP status each error type of an `errored` line stands for (the line carries no status of its own)
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicBatchAPI(BatchAPI):
    """Anthropic's Message Batches API."""

    protocol_name = "anthropic"
    limits = LIMITS

    def __init__(self) -> None:
        self.chat = get_protocol("anthropic")

    def _route(self, endpoint: Endpoint) -> str:
        base = endpoint.base_url.rstrip("/")
        return base + ("/messages/batches" if base.endswith("/v1") else "/v1/messages/batches")

    def _request(self, endpoint: Endpoint, line: BatchLine) -> dict[str, Any]:
        _, _, body = self.chat.build(endpoint, line.request)
        body.pop("stream", None)  # refused in a batch
        return {"custom_id": line.custom_id, "params": body}

    def line_bytes(self, endpoint: Endpoint, line: BatchLine) -> int:
        return len(jsonl([self._request(endpoint, line)]))

    async def submit(self, http: BatchHTTP, endpoint: Endpoint, model: str, lines: Sequence[BatchLine], label: str) -> JobStatus:
        headers = {**auth_headers(self.chat, endpoint, model), "content-type": "application/json"}
        body = {"requests": [self._request(endpoint, line) for line in lines]}
        reply = await http.send(endpoint, "POST", self._route(endpoint), headers=headers, body=body, missing_means_unsupported=True)
        return self.job(reply.json("the batch creation"), now=http.clock.time())

    async def status(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        reply = await http.send(endpoint, "GET", f"{self._route(endpoint)}/{safe_id(job_id, 'the batch id')}",
                                headers=auth_headers(self.chat, endpoint, ""))
        return self.job(reply.json("the batch"), now=http.clock.time())

    async def cancel(self, http: BatchHTTP, endpoint: Endpoint, job_id: str) -> JobStatus:
        reply = await http.send(endpoint, "POST", f"{self._route(endpoint)}/{safe_id(job_id, 'the batch id')}/cancel",
                                headers=auth_headers(self.chat, endpoint, ""))
        return self.job(reply.json("the batch"), now=http.clock.time())

    async def results(self, http: BatchHTTP, endpoint: Endpoint, job: JobStatus, custom_ids: Sequence[str]) -> ResultSet:
        url = job.handles.get("results_url") or ""
        if not same_origin(url, endpoint.base_url):
            url = f"{self._route(endpoint)}/{safe_id(job.id, 'the batch id')}/results"
        headers = {**auth_headers(self.chat, endpoint, ""), "accept": "application/binary"}
        reply = await http.send(endpoint, "GET", url, headers=headers, max_bytes=MAX_RESULT_BYTES)
        out = ResultSet()
        for raw in read_jsonl(reply.raw):
            line = self.line(endpoint, raw, now=http.clock.time()) if raw is not None else None
            if line is None:
                out.unreadable += 1
            else:
                out.add(line)
        return out

    # ---- reading ----------------------------------------------------------------------------

    def job(self, body: dict[str, Any], *, now: float) -> JobStatus:
        """A MessageBatch as a JobStatus: `ended` is read as completed, expired or cancelled by its counts."""
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise malformed("the message batch has no id")
        wire = body.get("processing_status")
        counts = as_obj(body.get("request_counts"))
        processing, succeeded, errored, canceled, expired = (
            as_count(counts.get(k)) for k in ("processing", "succeeded", "errored", "canceled", "expired"))
        if wire == "in_progress":
            state = JobState.RUNNING
        elif wire == "canceling":
            state = JobState.CANCELLING
        elif wire == "ended":
            state = JobState.CANCELLED if body.get("cancel_initiated_at") else JobState.EXPIRED if expired else JobState.COMPLETED
        else:
            raise malformed(f"the batch's processing_status is {excerpt(repr(wire), 60)}")
        known = [c for c in (processing, succeeded, errored, canceled, expired) if c is not None]
        failed = None if errored is None else errored + (canceled or 0) + (expired or 0)
        status = JobStatus(job_id, state, str(wire), total=sum(known) if known else None, succeeded=succeeded,
                           failed=failed, pending=processing)
        url = body.get("results_url")
        if isinstance(url, str) and url:
            status.handles["results_url"] = url
        return status

    def line(self, endpoint: Endpoint, raw: dict[str, Any], *, now: float) -> LineResult | None:
        """One result line (None when it names no custom id)."""
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return None
        result = as_obj(raw.get("result"))
        kind = result.get("type")
        if kind == "succeeded":
            try:
                completion = self.chat.parse(endpoint, 200, {}, result.get("message"), now=now)
            except ProviderFailure as failure:
                return LineResult(custom_id, LineOutcome.ERRORED, "succeeded", failure=failure)
            return LineResult(custom_id, LineOutcome.SUCCEEDED, "succeeded", completion=completion)
        if kind == "errored":
            return LineResult(custom_id, LineOutcome.ERRORED, "errored", failure=self._line_failure(endpoint, result.get("error"), now))
        if kind in ("expired", "canceled"):
            return LineResult(custom_id, LineOutcome.UNFINISHED, str(kind),
                              failure=ProviderFailure(ErrorKind.CANCELLED, f"the line was {kind} before it ran"))
        return LineResult(custom_id, LineOutcome.ERRORED, "malformed",
                          failure=malformed(f"a result line of type {excerpt(repr(kind), 40)}"))

    def _line_failure(self, endpoint: Endpoint, error: Any, now: float) -> ProviderFailure:
        envelope = as_obj(error)
        inner = as_obj(envelope.get("error")) or envelope
        etype = str(inner.get("type")) if isinstance(inner.get("type"), str) else ""
        status = ERROR_STATUS.get(etype, 500)
        body = {"type": "error", "error": inner}
        failure = self.chat.classify(endpoint, status, {}, body, "", now=now)
        failure.status = None  # the status was ours, read from the error type: the line had none
        request_id = envelope.get("request_id")
        if isinstance(request_id, str) and request_id:
            failure.request_id = excerpt(request_id, 128)
        return failure


__all__ = ["AnthropicBatchAPI", "LIMITS"]

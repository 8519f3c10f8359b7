"""Issue 24, the wire: the three batch API modules read what batch_apis.md says providers send, and never
trust it (ids checked before they go in a URL, the key sent only to the endpoint's own origin, a bad
result line costing only itself). Replies come from a RawServer (exact bytes) or straight from the doc's
examples."""

from __future__ import annotations

from types import SimpleNamespace

from nbrouter.testing import ManualClock

import asyncio
import json
from typing import Any

import httpx
import pytest

from nbrouter._core import ErrorKind, ProviderFailure
from nbrouter.providers import ChatRequest, Endpoint
from nbrouter.providers.batch_anthropic import AnthropicBatchAPI
from nbrouter.providers.batch_gemini import GeminiBatchAPI
from nbrouter.providers.batch_openai import OpenAIBatchAPI
from nbrouter.providers.batches import BatchHTTP, BatchLine, BatchUnsupported, JobState, LineOutcome, get_batch_api
from nbrouter.router.batch.jobs import plan_parts
from nbrouter.testing import RawResponse, RawServer, http_response

KEY = "sk-wire-secret-0123456789abcdef"

#: the time the parsed replies are dated at (any fixed instant: these tests read no reset)
NOW = 1_800_000_000.0


def endpoint(protocol: str, base_url: str) -> Endpoint:
    return Endpoint(provider=protocol, protocol=protocol, base_url=base_url, api_key=KEY)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def send(api: Any, call: str, ep: Endpoint, *args: Any) -> Any:
    async with httpx.AsyncClient(timeout=5.0) as client:
        wire = BatchHTTP(client, api.chat)
        return await getattr(api, call)(wire, ep, *args)


def jsonl(*objs: Any, extra: bytes = b"") -> bytes:
    return b"\n".join(json.dumps(o).encode() for o in objs) + b"\n" + extra


# ---- OpenAI ---------------------------------------------------------------------------------------


def test_openai_lines_are_the_chat_body_with_a_custom_id_and_the_status_is_read_with_its_counts() -> None:
    api = OpenAIBatchAPI()
    ep = endpoint("openai", "https://api.example/v1")
    line = api.request_line(ep, BatchLine("row-1", ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)))
    assert line == {"custom_id": "row-1", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}
    job = api.job({"id": "batch_1", "object": "batch", "status": "in_progress", "output_file_id": None, "error_file_id": "",
                   "request_counts": {"total": 9, "completed": 3, "failed": 1}}, now=NOW)
    assert (job.state, job.total, job.succeeded, job.failed, job.pending) == (JobState.RUNNING, 9, 3, 1, 5)
    assert job.handles == {}  # null and "" both mean no file
    failed = api.job({"id": "batch_2", "status": "failed", "errors": {"object": "list", "data": [
        {"code": "token_limit_exceeded", "line": None, "message": "Enqueued token limit reached for gpt-4o-mini"}]}}, now=NOW)
    assert failed.state is JobState.FAILED and failed.error_kind is ErrorKind.RATE_LIMIT and "token_limit_exceeded" in (failed.error or "")


def test_openai_result_lines_read_status_code_not_only_error() -> None:
    api = OpenAIBatchAPI()
    ep = endpoint("openai", "https://api.example/v1")
    ok = api.line(ep, {"id": "batch_req_1", "custom_id": "row-1", "response": {"status_code": 200, "request_id": "req_1", "body": {
        "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}}, "error": None}, now=NOW)
    assert ok is not None and ok.outcome is LineOutcome.SUCCEEDED and ok.completion is not None
    assert ok.completion.text == "fine" and ok.completion.usage is not None and ok.completion.usage.input_tokens == 3
    assert ok.completion.request_id == "req_1"
    bad = api.line(ep, {"custom_id": "row-2", "response": {"status_code": 400, "request_id": "req_2", "body": {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}}, "error": None}, now=NOW)
    assert bad is not None and bad.outcome is LineOutcome.ERRORED and bad.failure is not None
    assert bad.failure.kind is ErrorKind.INVALID_REQUEST and bad.line_status == "400"
    # a status with a body that is no error object at all: the status says what happened
    down = api.line(ep, {"custom_id": "row-5", "response": {"status_code": 502, "body": {"detail": "upstream"}}, "error": None}, now=NOW)
    assert down is not None and down.failure is not None and down.failure.kind is ErrorKind.SERVER_ERROR
    busy = api.line(ep, {"custom_id": "row-4", "response": {"status_code": 429, "body": {"error": {"message": "slow down", "type": "requests"}}}}, now=NOW)
    assert busy is not None and busy.failure is not None and busy.failure.kind is ErrorKind.RATE_LIMIT
    expired = api.line(ep, {"custom_id": "row-3", "response": None, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}, now=NOW)
    assert expired is not None and expired.outcome is LineOutcome.UNFINISHED and expired.line_status == "batch_expired"
    assert api.line(ep, {"response": None}, now=NOW) is None  # no custom id: the caller counts it unreadable


def test_openai_results_keep_every_good_line_around_an_undecodable_one() -> None:
    api = OpenAIBatchAPI()
    good = {"custom_id": "row-1", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "a"}, "finish_reason": "stop"}]}}}
    also = {"custom_id": "row-2", "response": None, "error": {"code": "batch_cancelled", "message": "cancelled"}}
    with RawServer() as raw:
        raw.script(RawResponse([http_response(200, jsonl(good) + b"{not json\n\n" + jsonl(also))]))
        ep = endpoint("openai", raw.url + "/v1")
        status = api.job({"id": "batch_1", "status": "completed", "output_file_id": "file-out", "error_file_id": ""}, now=NOW)
        results = run(send(api, "results", ep, status, ["row-1", "row-2"]))
        request = raw.requests[0].decode("latin-1")
    assert sorted(results.lines) == ["row-1", "row-2"] and results.unreadable == 1
    assert results.lines["row-2"].outcome is LineOutcome.UNFINISHED
    assert request.startswith("GET /v1/files/file-out/content ") and f"bearer {KEY}" in request.lower()


def test_an_id_a_provider_sends_is_checked_before_it_goes_into_a_url() -> None:
    api = OpenAIBatchAPI()
    with RawServer() as raw:
        ep = endpoint("openai", raw.url + "/v1")
        status = api.job({"id": "batch_1", "status": "completed", "output_file_id": "../../admin?x=1"}, now=NOW)
        with pytest.raises(ProviderFailure) as caught:
            run(send(api, "results", ep, status, []))
        assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE and raw.requests == []
        with pytest.raises(ProviderFailure):
            run(send(api, "status", ep, "batch_1/../../files"))
        assert raw.requests == []


def test_a_server_without_the_batch_routes_is_not_batch_capable() -> None:
    api = get_batch_api("openai")
    with RawServer() as raw:
        raw.script(RawResponse([http_response(404, b'{"error": {"message": "Not Found"}}')]))
        ep = endpoint("openai", raw.url + "/v1")
        line = BatchLine("row-0", ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}]))
        with pytest.raises(BatchUnsupported):
            run(send(api, "submit", ep, "m", [line], "job-1"))


def test_a_key_a_server_echoes_in_an_error_never_reaches_the_failure() -> None:
    api = OpenAIBatchAPI()
    body = json.dumps({"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"}}).encode()
    with RawServer() as raw:
        raw.script(RawResponse([http_response(400, body)]))
        ep = endpoint("openai", raw.url + "/v1")
        from nbrouter._core import remember_secret

        remember_secret(KEY)
        with pytest.raises(ProviderFailure) as caught:
            run(send(api, "status", ep, "batch_1"))
    assert KEY not in caught.value.message and KEY not in repr(caught.value)


# ---- Anthropic ------------------------------------------------------------------------------------


def test_anthropic_ended_batches_and_their_lines() -> None:
    api = AnthropicBatchAPI()
    ep = endpoint("anthropic", "https://api.example")
    running = api.job({"id": "msgbatch_1", "type": "message_batch", "processing_status": "in_progress",
                       "request_counts": {"processing": 4, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}}, now=NOW)
    assert running.state is JobState.RUNNING and running.pending == 4 and running.total == 4
    ended = api.job({"id": "msgbatch_1", "processing_status": "ended", "cancel_initiated_at": "2026-11-03T12:00:30Z",
                     "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 3, "expired": 0},
                     "results_url": "https://api.example/v1/messages/batches/msgbatch_1/results"}, now=NOW)
    assert ended.state is JobState.CANCELLED and ended.handles["results_url"].endswith("/results")
    lines = {
        "ok": {"custom_id": "a", "result": {"type": "succeeded", "message": {"id": "m", "type": "message", "role": "assistant",
               "model": "claude-haiku-4-5", "content": [{"type": "text", "text": "yes"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 5, "output_tokens": 1}}}},
        "invalid": {"custom_id": "b", "result": {"type": "errored", "error": {"type": "error", "error": {
            "type": "invalid_request_error", "message": "max_tokens: field required"}, "request_id": "req_1"}}},
        "overloaded": {"custom_id": "c", "result": {"type": "errored", "error": {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}}}},
        "expired": {"custom_id": "d", "result": {"type": "expired"}},
        "canceled": {"custom_id": "e", "result": {"type": "canceled"}},
    }
    read = {name: api.line(ep, raw, now=NOW) for name, raw in lines.items()}
    assert read["ok"] is not None and read["ok"].completion is not None and read["ok"].completion.text == "yes"
    assert read["invalid"] is not None and read["invalid"].failure is not None
    assert read["invalid"].failure.kind is ErrorKind.INVALID_REQUEST and read["invalid"].failure.request_id == "req_1"
    assert read["overloaded"] is not None and read["overloaded"].failure is not None
    assert read["overloaded"].failure.kind is ErrorKind.OVERLOADED
    assert all(read[k] is not None and read[k].outcome is LineOutcome.UNFINISHED for k in ("expired", "canceled"))


def test_anthropic_results_url_on_another_origin_is_not_followed_with_the_key() -> None:
    api = AnthropicBatchAPI()
    line = {"custom_id": "a", "result": {"type": "expired"}}
    with RawServer() as ours, RawServer() as elsewhere:
        ours.script(RawResponse([http_response(200, jsonl(line))]))
        elsewhere.script(RawResponse([http_response(200, jsonl(line))]))
        ep = endpoint("anthropic", ours.url)
        status = api.job({"id": "msgbatch_9", "processing_status": "ended", "request_counts": {"expired": 1},
                          "results_url": elsewhere.url + "/steal"}, now=NOW)
        results = run(send(api, "results", ep, status, ["a"]))
        assert elsewhere.requests == []
        assert ours.requests[0].decode("latin-1").startswith("GET /v1/messages/batches/msgbatch_9/results ")
    assert list(results.lines) == ["a"]


# ---- Gemini ---------------------------------------------------------------------------------------


def test_gemini_operations_inline_results_in_order_and_grpc_codes() -> None:
    api = GeminiBatchAPI()
    ep = endpoint("gemini", "https://api.example/v1beta")
    response = {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1}}
    op = {"name": "batches/123", "metadata": {"@type": "x", "state": "BATCH_STATE_SUCCEEDED",
          "batchStats": {"requestCount": "3", "successfulRequestCount": "2", "failedRequestCount": "1"}},
          "done": True, "response": {"@type": "y", "inlinedResponses": {"inlinedResponses": [
              {"response": response, "metadata": {"key": "row-0"}},
              {"response": response},  # no key: the second line sent
              {"error": {"code": 8, "message": "Resource has been exhausted"}, "metadata": {"key": "row-2"}}]}}}
    job = api.job(op, now=NOW)
    assert (job.state, job.total, job.succeeded, job.failed) == (JobState.COMPLETED, 3, 2, 1)
    # inline: nothing is downloaded, so the results only read the wire's clock (what the replies are dated at)
    wire = SimpleNamespace(clock=ManualClock(NOW))
    results = run(api.results(wire, ep, job, ["row-0", "row-1", "row-2"]))  # type: ignore[arg-type]
    assert sorted(results.lines) == ["row-0", "row-1", "row-2"]
    assert results.lines["row-1"].completion is not None and results.lines["row-1"].completion.text == "hi"
    failure = results.lines["row-2"].failure
    assert failure is not None and failure.kind is ErrorKind.RATE_LIMIT  # gRPC 8 RESOURCE_EXHAUSTED
    assert api.job({"name": "batches/9", "metadata": {"state": "JOB_STATE_RUNNING"}}, now=NOW).state is JobState.RUNNING
    with pytest.raises(ProviderFailure):
        api.job({"name": "batches/../files/x", "metadata": {"state": "BATCH_STATE_RUNNING"}}, now=NOW)


def test_gemini_uploads_past_the_inline_limit_and_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbrouter.providers import batch_gemini

    monkeypatch.setattr(batch_gemini, "INLINE_MAX_BYTES", 10)  # any job is past it: the file route
    api = GeminiBatchAPI()
    with RawServer() as raw:
        upload_url = raw.url + "/upload/v1beta/files?upload_id=u1"
        raw.script(
            RawResponse([http_response(200, b"{}", [("x-goog-upload-url", upload_url)])]),
            RawResponse([http_response(200, json.dumps({"file": {"name": "files/abc", "uri": "u"}}).encode())]),
            RawResponse([http_response(200, json.dumps({"name": "batches/7", "metadata": {"state": "BATCH_STATE_PENDING"}}).encode())]),
        )
        ep = endpoint("gemini", raw.url + "/v1beta")
        lines = [BatchLine(f"row-{i}", ChatRequest(model="gemini-2.5-flash", messages=[{"role": "user", "content": f"q{i}"}])) for i in range(2)]
        job = run(send(api, "submit", ep, "gemini-2.5-flash", lines, "job-1"))
        start, finish, create = (r.decode("utf-8") for r in raw.requests)
    assert job.id == "batches/7" and job.state is JobState.VALIDATING
    assert start.startswith("POST /upload/v1beta/files ") and "x-goog-upload-command: start" in start.lower()
    assert finish.startswith("POST /upload/v1beta/files?upload_id=u1 ") and "upload, finalize" in finish.lower()
    assert '{"key":"row-1","request":{"contents":[{"role":"user","parts":[{"text":"q1"}]}]}}' in finish
    assert create.startswith("POST /v1beta/models/gemini-2.5-flash:batchGenerateContent ")
    assert '"inputConfig":{"fileName":"files/abc"}' in create


# ---- planning parts ---------------------------------------------------------------------------------


def test_parts_are_planned_within_each_providers_documented_limits() -> None:
    ep = endpoint("anthropic", "https://api.example")
    lines = [BatchLine(f"row-{i}", ChatRequest(model="m", messages=[{"role": "user", "content": "x"}])) for i in range(250_001)]
    parts = plan_parts(AnthropicBatchAPI(), ep, lines, None)
    assert [len(p) for p in parts] == [100_000, 100_000, 50_001]
    assert [line.custom_id for p in parts for line in p] == [line.custom_id for line in lines]
    parts = plan_parts(OpenAIBatchAPI(), endpoint("openai", "https://api.example/v1"), lines[:120_000], None)
    assert [len(p) for p in parts] == [50_000, 50_000, 20_000]
    assert [len(p) for p in plan_parts(OpenAIBatchAPI(), endpoint("openai", "https://x/v1"), lines[:5], 2)] == [2, 2, 1]

"""Issue 24, the simulator: OpenAI's Files + /v1/batches, Anthropic's /v1/messages/batches and Gemini's
batchGenerateContent (batch_apis.md sections 1-3 and 6), driven with httpx on a ManualClock: jobs that
validate, run and end as the clock moves, lines that error, expire or come back malformed, uploads
refused as too large, cancels. Nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

from nbrouter.testing import (
    BatchScript,
    ContextOverflow,
    Hang,
    Malformed,
    ManualClock,
    NotFound,
    ProviderSimulator,
    QuotaExceeded,
    RateLimited,
    Reply,
    ServerError,
)

KEY = "sk-batch-0123456789abcdef"
OTHER = "sk-batch-other-99999999"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Iterator[ProviderSimulator]:
    with ProviderSimulator(clock=clock) as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def parse_jsonl(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(the lines that parse, the ones that do not), skipping blank lines, as a careful client reads them."""
    good, bad = [], []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            good.append(json.loads(line))
        except ValueError:
            bad.append(line)
    return good, bad


# -- OpenAI ------------------------------------------------------------------------------------------

OA = {"authorization": f"Bearer {KEY}"}


def openai_jsonl(ids: list[str], model: str = "gpt-b") -> bytes:
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": f"question {cid}"}]}}
        for cid in ids
    ]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def openai_upload(client: httpx.Client, sim: ProviderSimulator, data: bytes, name: str = "rows.jsonl", headers: dict[str, str] = OA) -> httpx.Response:
    return client.post(sim.openai_url + "/files", headers=headers, data={"purpose": "batch"}, files={"file": (name, data, "application/jsonl")})


def openai_batch(client: httpx.Client, sim: ProviderSimulator, ids: list[str], headers: dict[str, str] = OA) -> dict[str, Any]:
    file_id = openai_upload(client, sim, openai_jsonl(ids), headers=headers).json()["id"]
    r = client.post(sim.openai_url + "/batches", headers=headers,
                    json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"run": "t"}})
    assert r.status_code == 200, r.text
    return r.json()


def openai_get(client: httpx.Client, sim: ProviderSimulator, batch_id: str) -> dict[str, Any]:
    r = client.get(f"{sim.openai_url}/batches/{batch_id}", headers=OA)
    assert r.status_code == 200, r.text
    return r.json()


def openai_file(client: httpx.Client, sim: ProviderSimulator, file_id: str) -> str:
    r = client.get(f"{sim.openai_url}/files/{file_id}/content", headers={**OA, "accept": "application/binary"})
    assert r.status_code == 200, r.text
    return r.text


def test_openai_job_validates_runs_finalizes_and_completes_as_the_clock_moves(sim, client, clock) -> None:
    sim.script_batch(BatchScript(validate_s=10, line_s=5, finalize_s=20))
    upload = openai_upload(client, sim, openai_jsonl(["a", "b", "c"]))
    assert upload.json()["object"] == "file" and upload.json()["purpose"] == "batch" and upload.json()["filename"] == "rows.jsonl"
    batch = openai_batch(client, sim, ["a", "b", "c"])
    created = batch["created_at"]
    assert batch["status"] == "validating" and batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["object"] == "batch" and batch["model"] == "gpt-b" and batch["metadata"] == {"run": "t"}
    assert batch["expires_at"] == created + 86400 and batch["output_file_id"] is None
    clock.advance(10)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "in_progress" and batch["in_progress_at"] == created + 10
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    clock.advance(10)  # two of the three lines are done: the counts grow while it runs
    assert openai_get(client, sim, batch["id"])["request_counts"] == {"total": 3, "completed": 2, "failed": 0}
    clock.advance(5)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "finalizing" and batch["finalizing_at"] == created + 25 and batch["output_file_id"] is None
    clock.advance(19.5)
    assert openai_get(client, sim, batch["id"])["status"] == "finalizing"  # finalizing outlasts the last line
    clock.advance(0.5)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "completed" and batch["completed_at"] == created + 45
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert batch["error_file_id"] == ""  # a clean batch, as OpenAI answers it
    good, bad = parse_jsonl(openai_file(client, sim, batch["output_file_id"]))
    assert bad == [] and sorted(line["custom_id"] for line in good) == ["a", "b", "c"]
    by_id = {line["custom_id"]: line for line in good}
    assert by_id["b"]["error"] is None and by_id["b"]["response"]["status_code"] == 200
    completion = by_id["b"]["response"]["body"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Simulated reply from gpt-b: question b"
    usage = batch["usage"]
    assert usage["input_tokens"] == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in good)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = client.get(f"{sim.openai_url}/files/{batch['output_file_id']}", headers=OA).json()
    assert meta["purpose"] == "batch_output" and meta["bytes"] == len(openai_file(client, sim, batch["output_file_id"]).encode())


def test_openai_error_lines_of_each_kind_go_to_the_error_file_in_the_protocols_shape(sim, client, clock) -> None:
    lines = {"r1": RateLimited(retry_after=5), "r2": ServerError(503), "r3": NotFound(), "r5": ContextOverflow(limit=100)}
    sim.script_batch(BatchScript(lines=lines))
    batch = openai_batch(client, sim, ["r1", "r2", "r3", "r4", "r5"])
    clock.advance(100)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 5, "completed": 1, "failed": 4}
    errors, _ = parse_jsonl(openai_file(client, sim, batch["error_file_id"]))
    by_id = {line["custom_id"]: line["response"] for line in errors}
    assert {cid: r["status_code"] for cid, r in by_id.items()} == {"r1": 429, "r2": 503, "r3": 404, "r5": 400}
    assert by_id["r1"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert by_id["r3"]["body"]["error"]["code"] == "model_not_found"
    assert by_id["r5"]["body"]["error"]["code"] == "context_length_exceeded"
    output, _ = parse_jsonl(openai_file(client, sim, batch["output_file_id"]))
    assert [line["custom_id"] for line in output] == ["r4"]


def test_openai_lines_without_their_own_script_take_the_live_scripts(sim, client, clock) -> None:
    sim.script([ServerError(500), Reply("second")], model="gpt-b")
    batch = openai_batch(client, sim, ["x", "y", "z"])
    clock.advance(100)
    batch = openai_get(client, sim, batch["id"])
    errors, _ = parse_jsonl(openai_file(client, sim, batch["error_file_id"]))
    output, _ = parse_jsonl(openai_file(client, sim, batch["output_file_id"]))
    assert [line["custom_id"] for line in errors] == ["x"]
    texts = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in output}
    assert texts["y"] == "second" and texts["z"].startswith("Simulated reply")


def test_openai_job_expires_with_unfinished_lines_marked_batch_expired(sim, client, clock) -> None:
    sim.script_batch(BatchScript(window_s=600, lines={"b": Hang()}))
    batch = openai_batch(client, sim, ["a", "b", "c"])
    clock.advance(599)
    assert openai_get(client, sim, batch["id"])["status"] == "in_progress"
    clock.advance(1)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "expired" and batch["expired_at"] == batch["created_at"] + 600
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 0}
    output, _ = parse_jsonl(openai_file(client, sim, batch["output_file_id"]))
    assert sorted(line["custom_id"] for line in output) == ["a", "c"]
    errors, _ = parse_jsonl(openai_file(client, sim, batch["error_file_id"]))
    assert errors == [{"id": errors[0]["id"], "custom_id": "b", "response": None, "error": {
        "code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}]


def test_openai_malformed_result_line_sits_among_good_ones(sim, client, clock) -> None:
    sim.script_batch(BatchScript(lines={"m": Malformed()}))
    batch = openai_batch(client, sim, ["a", "m", "b"])
    clock.advance(100)
    text = openai_file(client, sim, openai_get(client, sim, batch["id"])["output_file_id"])
    assert text.endswith("\n")
    good, bad = parse_jsonl(text)
    assert sorted(line["custom_id"] for line in good) == ["a", "b"] and len(bad) == 1 and '"custom_id":"m"' in bad[0]


def test_openai_upload_refused_as_too_large_or_not_jsonl(sim, client) -> None:
    sim.batch_max_bytes = 100
    r = openai_upload(client, sim, openai_jsonl(["a", "b"]))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "file_too_large" and r.json()["error"]["param"] == "file"
    sim.batch_max_bytes = None
    r = openai_upload(client, sim, b"{}", name="rows.csv")
    assert r.status_code == 400 and r.json()["error"]["message"] == "Invalid file format for Batch API. Must be .jsonl"


def test_openai_cancel_keeps_finished_lines_and_marks_the_rest_batch_cancelled(sim, client, clock) -> None:
    sim.script_batch(BatchScript(validate_s=0, line_s=10, cancel_s=30))
    batch = openai_batch(client, sim, ["a", "b", "c"])
    clock.advance(15)  # a is done, b and c are not
    r = client.post(f"{sim.openai_url}/batches/{batch['id']}/cancel", headers=OA)
    assert r.status_code == 200 and r.json()["status"] == "cancelling" and r.json()["cancelling_at"] == batch["created_at"] + 15
    clock.advance(29)
    assert openai_get(client, sim, batch["id"])["status"] == "cancelling"
    clock.advance(1)
    batch = openai_get(client, sim, batch["id"])
    assert batch["status"] == "cancelled" and batch["cancelled_at"] == batch["created_at"] + 45
    output, _ = parse_jsonl(openai_file(client, sim, batch["output_file_id"]))
    errors, _ = parse_jsonl(openai_file(client, sim, batch["error_file_id"]))
    assert [line["custom_id"] for line in output] == ["a"]
    assert sorted((line["custom_id"], line["error"]["code"]) for line in errors) == [("b", "batch_cancelled"), ("c", "batch_cancelled")]
    again = client.post(f"{sim.openai_url}/batches/{batch['id']}/cancel", headers=OA)
    assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]


def test_openai_batch_that_fails_validation(sim, client, clock) -> None:
    data = openai_jsonl(["a"]) + b"{not json\n" + openai_jsonl(["c"])
    file_id = openai_upload(client, sim, data).json()["id"]
    r = client.post(sim.openai_url + "/batches", headers=OA, json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert r.status_code == 200 and r.json()["status"] == "validating"  # the failure comes later, not as a 400
    clock.advance(1)
    batch = openai_get(client, sim, r.json()["id"])
    assert batch["status"] == "failed" and batch["failed_at"] == batch["created_at"] + 1
    assert batch["errors"]["data"] == [{"code": "invalid_json_line", "line": 2, "message": "This line is not parseable as valid JSON.", "param": None}]
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    sim.script_batch(BatchScript(fail="token_limit_exceeded"))
    failed = openai_batch(client, sim, ["a"])
    clock.advance(1)
    error = openai_get(client, sim, failed["id"])["errors"]["data"][0]
    assert error["code"] == "token_limit_exceeded" and error["message"].startswith("Enqueued token limit reached for gpt-b")


def test_openai_create_refused_as_scripted_and_jobs_belong_to_their_key(sim, client, clock) -> None:
    sim.script_batch(BatchScript(refuse=RateLimited(retry_after=7)))
    file_id = openai_upload(client, sim, openai_jsonl(["a"])).json()["id"]
    r = client.post(sim.openai_url + "/batches", headers=OA, json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    batch = openai_batch(client, sim, ["a"])
    other = {"authorization": f"Bearer {OTHER}"}
    assert client.get(f"{sim.openai_url}/batches/{batch['id']}", headers=other).status_code == 404
    assert client.get(f"{sim.openai_url}/files/{file_id}/content", headers=other).status_code == 404
    bad = client.post(sim.openai_url + "/batches", headers=OA, json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "48h"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "completion_window"


def test_openai_list_pages_newest_first(sim, client) -> None:
    made = [openai_batch(client, sim, ["a"])["id"] for _ in range(3)]
    first = client.get(sim.openai_url + "/batches", headers=OA, params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == made[::-1][:2] and first["has_more"] is True
    rest = client.get(sim.openai_url + "/batches", headers=OA, params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [made[0]] and rest["has_more"] is False


# -- Anthropic ---------------------------------------------------------------------------------------

AN = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def anthropic_batch(client: httpx.Client, sim: ProviderSimulator, ids: list[str], **params: Any) -> httpx.Response:
    requests = [{"custom_id": cid, "params": {"model": "claude-b", "max_tokens": 32, "messages": [{"role": "user", "content": f"q {cid}"}], **params}} for cid in ids]
    return client.post(sim.anthropic_url + "/v1/messages/batches", headers=AN, json={"requests": requests})


def anthropic_get(client: httpx.Client, sim: ProviderSimulator, batch_id: str) -> dict[str, Any]:
    r = client.get(f"{sim.anthropic_url}/v1/messages/batches/{batch_id}", headers=AN)
    assert r.status_code == 200, r.text
    return r.json()


def test_anthropic_job_counts_jump_only_when_it_ends_and_results_hold_each_kind(sim, client, clock) -> None:
    sim.script_batch(BatchScript(line_s=60, lines={"bad": ContextOverflow(limit=10), "down": ServerError(500)}))
    r = anthropic_batch(client, sim, ["ok-1", "bad", "down", "ok-2"])
    assert r.status_code == 200
    batch = r.json()
    assert batch["type"] == "message_batch" and batch["id"].startswith("msgbatch_") and batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {"processing": 4, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    assert batch["results_url"] is None and batch["ended_at"] is None
    clock.advance(180)  # three of four done: still all "processing"
    assert anthropic_get(client, sim, batch["id"])["request_counts"]["processing"] == 4
    early = client.get(f"{sim.anthropic_url}/v1/messages/batches/{batch['id']}/results", headers=AN)
    assert early.status_code == 400
    clock.advance(60)
    batch = anthropic_get(client, sim, batch["id"])
    assert batch["processing_status"] == "ended"
    assert batch["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 2, "canceled": 0, "expired": 0}
    results = client.get(batch["results_url"], headers=AN)
    good, bad = parse_jsonl(results.text)
    assert bad == []
    by_id = {line["custom_id"]: line["result"] for line in good}
    assert by_id["ok-1"]["type"] == "succeeded" and by_id["ok-1"]["message"]["usage"]["service_tier"] == "batch"
    assert by_id["ok-1"]["message"]["content"][0]["text"] == "Simulated reply from claude-b: q ok-1"
    assert by_id["bad"]["error"]["error"]["type"] == "invalid_request_error"  # needs a fixed body
    assert by_id["down"]["error"]["error"]["type"] == "api_error"  # can be sent again as is
    assert by_id["bad"]["error"]["type"] == "error" and by_id["bad"]["error"]["request_id"]


def test_anthropic_expired_and_canceled_lines(sim, client, clock) -> None:
    sim.script_batch(BatchScript(window_s=1000, lines={"b": Hang()}))
    expiring = anthropic_batch(client, sim, ["a", "b"]).json()
    sim.script_batch(BatchScript(line_s=100, cancel_s=5))
    cancelled = anthropic_batch(client, sim, ["c", "d", "e"]).json()
    clock.advance(150)
    r = client.post(f"{sim.anthropic_url}/v1/messages/batches/{cancelled['id']}/cancel", headers=AN)
    assert r.json()["processing_status"] == "canceling" and r.json()["cancel_initiated_at"]
    clock.advance(1000)
    ended = anthropic_get(client, sim, expiring["id"])
    assert ended["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 1}
    good, _ = parse_jsonl(client.get(ended["results_url"], headers=AN).text)
    assert {line["custom_id"]: line["result"]["type"] for line in good} == {"a": "succeeded", "b": "expired"}
    stopped = anthropic_get(client, sim, cancelled["id"])
    assert stopped["processing_status"] == "ended"
    assert stopped["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 2, "expired": 0}


def test_anthropic_refuses_bad_custom_ids_and_too_large_bodies_at_once(sim, client) -> None:
    r = anthropic_batch(client, sim, ["x" * 65])
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "requests.0.custom_id: String should have at most 64 characters"}
    assert anthropic_batch(client, sim, ["has space"]).status_code == 400
    sim.batch_max_bytes = 300
    r = anthropic_batch(client, sim, ["a", "b", "c"])
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_anthropic_delete_only_after_the_job_ended(sim, client, clock) -> None:
    batch = anthropic_batch(client, sim, ["a"]).json()
    url = f"{sim.anthropic_url}/v1/messages/batches/{batch['id']}"
    assert client.delete(url, headers=AN).status_code == 400
    clock.advance(5)
    assert client.delete(url, headers=AN).json() == {"id": batch["id"], "type": "message_batch_deleted"}
    assert client.get(url, headers=AN).status_code == 404


def test_anthropic_stream_lines_error_as_batches_refuse_them(sim, client, clock) -> None:
    batch = anthropic_batch(client, sim, ["s"], stream=True).json()
    clock.advance(5)
    good, _ = parse_jsonl(client.get(anthropic_get(client, sim, batch["id"])["results_url"], headers=AN).text)
    assert good[0]["result"]["type"] == "errored"


# -- Gemini ------------------------------------------------------------------------------------------

GE = {"x-goog-api-key": KEY}


def gemini_inline(client: httpx.Client, sim: ProviderSimulator, keys: list[str], model: str = "gemini-b") -> httpx.Response:
    requests = [{"request": {"contents": [{"role": "user", "parts": [{"text": f"q {k}"}]}]}, "metadata": {"key": k}} for k in keys]
    body = {"batch": {"displayName": "df", "inputConfig": {"requests": {"requests": requests}}}}
    return client.post(f"{sim.gemini_url}/models/{model}:batchGenerateContent", headers=GE, json=body)


def gemini_get(client: httpx.Client, sim: ProviderSimulator, name: str) -> dict[str, Any]:
    r = client.get(f"{sim.gemini_url}/{name}", headers=GE)
    assert r.status_code == 200, r.text
    return r.json()


def gemini_upload(client: httpx.Client, sim: ProviderSimulator, data: bytes) -> httpx.Response:
    """The resumable protocol as the SDK speaks it: start, then upload in two pieces, the last with finalize."""
    start = client.post(sim.url + "/upload/v1beta/files", headers={
        **GE, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(len(data)), "X-Goog-Upload-Header-Content-Type": "application/jsonl",
    }, json={"file": {"displayName": "rows"}})
    if start.status_code != 200:
        return start
    url = start.headers["x-goog-upload-url"]
    half = len(data) // 2
    first = client.post(url, headers={**GE, "X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"}, content=data[:half])
    assert first.headers["x-goog-upload-status"] == "active"
    return client.post(url, headers={**GE, "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": str(half)}, content=data[half:])


def test_gemini_inline_job_goes_pending_running_succeeded_with_results_in_input_order(sim, client, clock) -> None:
    sim.script_batch(BatchScript(validate_s=30, line_s=10, lines={"k2": QuotaExceeded()}))
    r = gemini_inline(client, sim, ["k1", "k2", "k3"])
    assert r.status_code == 200
    op = r.json()
    assert op["name"].startswith("batches/") and op["done"] is False
    meta = op["metadata"]
    assert meta["state"] == "BATCH_STATE_PENDING" and meta["model"] == "models/gemini-b" and meta["displayName"] == "df"
    clock.advance(40)
    meta = gemini_get(client, sim, op["name"])["metadata"]
    assert meta["state"] == "BATCH_STATE_RUNNING"
    assert meta["batchStats"] == {"requestCount": "3", "successfulRequestCount": "1", "failedRequestCount": "0", "pendingRequestCount": "2"}
    clock.advance(20)
    op = gemini_get(client, sim, op["name"])
    assert op["done"] is True and op["metadata"]["state"] == "BATCH_STATE_SUCCEEDED" and op["metadata"]["endTime"]
    entries = op["response"]["inlinedResponses"]["inlinedResponses"]
    assert [e["metadata"]["key"] for e in entries] == ["k1", "k2", "k3"]
    assert entries[0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == "Simulated reply from gemini-b: q k1"
    assert entries[1]["error"]["code"] == 429 and entries[1]["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert op["metadata"]["output"] == {k: v for k, v in op["response"].items() if k != "@type"}


def test_gemini_file_job_through_a_resumable_upload_with_a_malformed_line(sim, client, clock) -> None:
    sim.script_batch(BatchScript(lines={"b": Malformed()}))
    lines = [{"key": k, "request": {"contents": [{"parts": [{"text": f"q {k}"}]}]}} for k in ("a", "b", "c")]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    done = gemini_upload(client, sim, data)
    assert done.status_code == 200 and done.headers["x-goog-upload-status"] == "final"
    stored = done.json()["file"]
    assert stored["name"].startswith("files/") and stored["sizeBytes"] == str(len(data)) and stored["state"] == "ACTIVE"
    body = {"batch": {"displayName": "from-file", "inputConfig": {"fileName": stored["name"]}}}
    op = client.post(f"{sim.gemini_url}/models/gemini-b:batchGenerateContent", headers=GE, json=body).json()
    clock.advance(100)
    op = gemini_get(client, sim, op["name"])
    results = op["response"]["responsesFile"]
    assert results.startswith("files/") and op["metadata"]["output"]["responsesFile"] == results
    text = client.get(f"{sim.url}/download/v1beta/{results}:download", params={"alt": "media"}, headers=GE).text
    good, bad = parse_jsonl(text)
    assert [line["key"] for line in good] == ["a", "c"] and len(bad) == 1  # input order, one line unreadable
    assert client.get(f"{sim.gemini_url}/{results}:download", params={"alt": "media"}, headers=GE).text == text


def test_gemini_expired_job_has_no_results_and_cancel_ends_it_cancelled(sim, client, clock) -> None:
    sim.script_batch(BatchScript(window_s=500, lines={"b": Hang()}))
    expiring = gemini_inline(client, sim, ["a", "b"]).json()
    sim.script_batch(BatchScript(line_s=100, cancel_s=10))
    cancelled = gemini_inline(client, sim, ["c", "d"]).json()
    clock.advance(150)
    assert client.post(f"{sim.gemini_url}/{cancelled['name']}:cancel", headers=GE).json() == {}
    clock.advance(400)
    ended = gemini_get(client, sim, expiring["name"])
    assert ended["metadata"]["state"] == "BATCH_STATE_EXPIRED" and ended["done"] is True
    assert "response" not in ended and "output" not in ended["metadata"]
    stopped = gemini_get(client, sim, cancelled["name"])
    assert stopped["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert [e["metadata"]["key"] for e in stopped["response"]["inlinedResponses"]["inlinedResponses"]] == ["c"]


def test_gemini_refusals_too_large_quota_and_a_failed_job(sim, client, clock) -> None:
    sim.batch_max_bytes = 50
    big = gemini_upload(client, sim, b"x" * 200)
    assert big.status_code == 400 and big.json()["error"]["message"] == "Request payload size exceeds the limit: 50 bytes."
    assert gemini_inline(client, sim, ["a"]).status_code == 400
    sim.batch_max_bytes = None
    sim.script_batch(BatchScript(refuse=QuotaExceeded()))
    r = gemini_inline(client, sim, ["a"])
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    sim.script_batch(BatchScript(fail="token_limit_exceeded"))
    op = gemini_inline(client, sim, ["a"]).json()
    clock.advance(1)
    failed = gemini_get(client, sim, op["name"])
    assert failed["metadata"]["state"] == "BATCH_STATE_FAILED" and failed["done"] is True and failed["error"]["message"]
    assert client.get(f"{sim.gemini_url}/{op['name']}", headers={"x-goog-api-key": OTHER}).status_code == 404


def test_gemini_listing_says_models_take_batches_and_lists_jobs(sim, client) -> None:
    sim.models = ["gemini-b"]
    listing = client.get(sim.gemini_url + "/models", headers=GE).json()
    assert "batchGenerateContent" in listing["models"][0]["supportedGenerationMethods"]
    names = [gemini_inline(client, sim, ["a"]).json()["name"] for _ in range(3)]
    page = client.get(sim.gemini_url + "/batches", headers=GE, params={"pageSize": 2}).json()
    assert [op["name"] for op in page["operations"]] == names[::-1][:2]
    rest = client.get(sim.gemini_url + "/batches", headers=GE, params={"pageSize": 2, "pageToken": page["nextPageToken"]}).json()
    assert [op["name"] for op in rest["operations"]] == [names[0]] and "nextPageToken" not in rest


# -- across the three ----------------------------------------------------------------------------------


def test_batch_requests_are_recorded_and_jobs_listed_and_reset(sim, client, clock) -> None:
    openai_batch(client, sim, ["a"])
    anthropic_batch(client, sim, ["b"])
    gemini_inline(client, sim, ["c"])
    paths = [(r.protocol, r.path, r.status) for r in sim.requests]
    assert ("openai", "/v1/files", 200) in paths and ("anthropic", "/v1/messages/batches", 200) in paths
    assert ("gemini", "/v1beta/models/gemini-b:batchGenerateContent", 200) in paths
    assert all(r.key == KEY for r in sim.requests)
    jobs = sim.batch_jobs()
    assert [(j["protocol"], j["status"], j["lines"]) for j in jobs] == [("openai", "validating", 1), ("anthropic", "in_progress", 1), ("gemini", "validating", 1)]
    clock.advance(10)
    assert [j["status"] for j in sim.batch_jobs()] == ["completed", "completed", "completed"]
    sim.reset()
    assert sim.batch_jobs() == []


def test_batch_scripts_from_a_config(client) -> None:
    clock = ManualClock()
    with ProviderSimulator(clock=clock) as sim:
        config = {"batch_scripts": [{"model": "gpt-b", "window_s": 50, "lines": {"b": {"type": "Hang"}}}]}
        assert client.post(sim.url + "/_sim/config", json=config).status_code == 200
        batch = openai_batch(client, sim, ["a", "b"])
        clock.advance(50)
        assert openai_get(client, sim, batch["id"])["status"] == "expired"


def test_the_openai_sdk_uploads_creates_polls_and_reads_a_batch(sim, clock) -> None:
    openai = pytest.importorskip("openai", reason="the openai SDK is not installed in this venv")
    sdk = openai.OpenAI(base_url=sim.openai_url, api_key=KEY, max_retries=0)
    sim.script_batch(BatchScript(lines={"b": ServerError(500)}))
    uploaded = sdk.files.create(file=("rows.jsonl", openai_jsonl(["a", "b", "c"])), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"
    clock.advance(100)
    batch = sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    output, _ = parse_jsonl(sdk.files.content(batch.output_file_id).text)
    errors, _ = parse_jsonl(sdk.files.content(batch.error_file_id).text)
    assert sorted(line["custom_id"] for line in output) == ["a", "c"] and errors[0]["response"]["status_code"] == 500
    second = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert sdk.batches.cancel(second.id).status == "cancelling"
    assert [b.id for b in sdk.batches.list()] == [second.id, batch.id]

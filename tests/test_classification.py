"""The classification tables of providers.md section 8, one test row per table line, over loopback HTTP.

`TABLE` holds exactly one row per line of the tables (transport, OpenAI, Anthropic, Gemini, OpenRouter,
local servers), in the order the file lists them; each id names its line. Where a line names several
signals, the first is in `TABLE` and the others are in `VARIANTS`, with ids naming the same line. Every
response is sent by the ProviderSimulator (mostly as `Raw(...)`) and read by `_http.send` through the
aiohttp transport the router uses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from nbrouter.providers import ChatRequest, Completion, Endpoint, ProviderFailure, get_protocol
from nbrouter.providers._http import send
from nbrouter.providers.gemini import SAFETY_FINISH_REASONS
from nbrouter.router.types import ErrorKind
from nbrouter.testing import Behaviour, CutStream, Drop, Hang, Raw, Reply

K = ErrorKind
#: a port nothing listens on (the "server not running" rows)
CLOSED_PORT = "closed-port"
#: `Row.reset_at` for resets that move with the clock (next month, next Pacific midnight)
FUTURE = "future"
#: 2026-12-01T00:00:00Z
DEC_1_2026 = 1796083200.0
SSE = "text/event-stream"


@dataclass(frozen=True)
class Row:
    """One line of a classification table: who answers, what they send, what nbrouter must conclude.

    `kind` None means the protocol layer reports success and the router decides (the Ollama
    silent-truncation line). `retry_after_s` is checked when given; `no_retry` asserts there is none
    (a quota line: retrying never helps). `partial` is the text that arrived before a stream failed;
    `reset_at` is when a quota frees up.
    """

    flavour: str
    response: Behaviour | str
    kind: ErrorKind | None
    stream: bool = False
    retry_after_s: float | None = None
    no_retry: bool = False
    partial: str | None = None
    refused: bool = False
    timeout_s: float = 5.0
    input_tokens: int | None = None
    #: when a quota frees up: epoch seconds, or FUTURE for "some time after now" (a rolling reset)
    reset_at: float | str | None = None
    #: the HTTP status the failure reports, when the row says
    status: int | None = None
    #: the reset a header named, in seconds from the response
    reset_in_s: float | None = None


def row(id: str, flavour: str, response: Behaviour | str, kind: ErrorKind | None, **kw: Any) -> Any:
    if isinstance(response, Raw) and response.sse is not None:
        kw.setdefault("stream", True)
    return pytest.param(Row(flavour, response, kind, **kw), id=id)


# -- body builders, in each provider's own shape ----------------------------------------------


def oa(message: str, type: str | None = None, code: Any = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI `{"error":{message,type,param,code}}` (providers.md section 1)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def an(type: str, message: str, **details: Any) -> dict[str, Any]:
    """Anthropic `{"type":"error","error":{type,message,details?},"request_id"}` (section 2)."""
    err: dict[str, Any] = {"type": type, "message": message}
    if details:
        err["details"] = details
    return {"type": "error", "error": err, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


_G = "type.googleapis.com/google.rpc."


def gm(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    """Google `{"error":{code,message,status,details[]}}` (section 3)."""
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = list(details)
    return {"error": err}


def quota_failure(quota_id: str) -> dict[str, Any]:
    return {
        "@type": _G + "QuotaFailure",
        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": quota_id, "quotaValue": "250"}],
    }


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": _G + "RetryInfo", "retryDelay": delay}


def error_info(reason: str) -> dict[str, Any]:
    return {"@type": _G + "ErrorInfo", "reason": reason, "domain": "googleapis.com"}


def orr(code: int, message: str, **metadata: Any) -> dict[str, Any]:
    """OpenRouter `{"error":{code,message,metadata?}}` (section 4)."""
    err: dict[str, Any] = {"code": code, "message": message}
    if metadata:
        err["metadata"] = metadata
    return {"error": err}


def oa_chunk(text: str) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                       "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def oa_body(text: str | None, finish: str | None, **message: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def an_body(stop: str, text: str = "") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": text}] if text else [], "stop_reason": stop,
            "usage": {"input_tokens": 5, "output_tokens": 1}}


def an_events(*tail: tuple[str, dict[str, Any]]) -> list[tuple[str | None, str]]:
    head = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                 "model": "claude-x", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    ]
    return [(name, json.dumps(data)) for name, data in (*head, *tail)]


def gm_chunk(text: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"modelVersion": "gemini-x", **extra}
    if text is not None:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}] if text else []}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        body["candidates"] = [candidate]
    return body


BLOCKED = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]},
           "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}, "modelVersion": "gemini-x"}


# -- the tables, one row per line --------------------------------------------------------------

TABLE = [
    # Transport (httpx; every provider)
    row("transport: ConnectError (connection refused) -> network", "openai", CLOSED_PORT, K.NETWORK, refused=True),
    row("transport: ReadTimeout -> timeout", "openai", Hang(seconds=1.0), K.TIMEOUT, timeout_s=0.2),
    row("transport: ReadError after some SSE data -> stream_interrupted", "openai", CutStream(after_chunks=2), K.STREAM_INTERRUPTED,
        stream=True, partial="one two "),
    row("transport: the same errors before any byte -> network", "openai", Drop(), K.NETWORK),
    # OpenAI (and OpenAI-shaped)
    row("openai: 429 insufficient_quota -> quota_exceeded", "openai",
        Raw(429, oa("You exceeded your current quota, please check your plan and billing details.", "insufficient_quota", "insufficient_quota")),
        K.QUOTA_EXCEEDED),
    row("openai: 429 rate_limit_exceeded -> rate_limit", "openai",
        Raw(429, oa("Rate limit reached for gpt-x on requests per min (RPM): Limit 3, Used 3.", "requests", "rate_limit_exceeded"),
            headers={"retry-after": "3"}),
        K.RATE_LIMIT, retry_after_s=3),
    row("openai: 401 invalid key -> auth", "openai",
        Raw(401, oa("Incorrect API key provided: sk-proj-****abcd.", "invalid_request_error", "invalid_api_key")), K.AUTH),
    row("openai: 403 unsupported country -> account_locked", "openai",
        Raw(403, oa("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory")),
        K.ACCOUNT_LOCKED),
    row("openai: 404 model_not_found -> model_not_found", "openai",
        Raw(404, oa("The model `gpt-nope` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found")),
        K.MODEL_NOT_FOUND),
    row("openai: 400 context_length_exceeded -> context_overflow", "openai",
        Raw(400, oa("This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
                    "invalid_request_error", "context_length_exceeded", "messages")),
        K.CONTEXT_OVERFLOW),
    row("openai: 400 invalid_prompt -> content_filter", "openai",
        Raw(400, oa("Invalid prompt: your prompt was flagged as potentially violating our usage policy.", "invalid_request_error", "invalid_prompt")),
        K.CONTENT_FILTER),
    # providers.md section 8 says invalid_request; issue 14 (newer) makes a feature this model refuses the kind
    # `unsupported`, which falls back: another model of the combo may take the same request
    row("openai: 400 unsupported_parameter -> unsupported", "openai",
        Raw(400, oa("Unsupported parameter: 'max_tokens' is not supported with this model.", "invalid_request_error", "unsupported_parameter", "max_tokens")),
        K.UNSUPPORTED),
    row("openai: 503 server_is_overloaded -> overloaded", "openai",
        Raw(503, oa("That model is currently overloaded with other requests.", "service_unavailable_error", "server_is_overloaded")),
        K.OVERLOADED),
    row("openai: 500 -> server_error", "openai",
        Raw(500, oa("The server had an error while processing your request. Sorry about that!", "server_error")), K.SERVER_ERROR),
    row("openai: 408 -> timeout", "openai", Raw(408, oa("Request timed out.")), K.TIMEOUT),
    row("openai: error chunk mid-stream without code or type -> server_error", "openai",
        Raw(200, sse=[(None, oa_chunk("Hel")), (None, json.dumps({"error": {"message": "upstream went away"}}))]),
        K.SERVER_ERROR, partial="Hel"),
    # Anthropic
    row("anthropic: 429 enforced_spend_limit_reached without retry-after -> quota_exceeded", "anthropic",
        Raw(429, an("rate_limit_error", "You have exceeded your monthly spend limit.", error_code="enforced_spend_limit_reached")),
        K.QUOTA_EXCEEDED, no_retry=True, reset_at=FUTURE),
    row("anthropic: 429 rate_limit_error with retry-after -> rate_limit", "anthropic",
        Raw(429, an("rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute."),
            headers={"retry-after": "12"}),
        K.RATE_LIMIT, retry_after_s=12),
    row("anthropic: 401 authentication_error -> auth", "anthropic", Raw(401, an("authentication_error", "invalid x-api-key")), K.AUTH),
    row("anthropic: 403 permission_error -> account_locked", "anthropic",
        Raw(403, an("permission_error", "Your API key does not have permission to use the specified resource.")), K.ACCOUNT_LOCKED),
    row("anthropic: 404 not_found_error -> model_not_found", "anthropic",
        Raw(404, an("not_found_error", "model: claude-nope")), K.MODEL_NOT_FOUND),
    row("anthropic: 400 prompt is too long -> context_overflow", "anthropic",
        Raw(400, an("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")), K.CONTEXT_OVERFLOW),
    row("anthropic: 413 request_too_large -> invalid_request", "anthropic",
        Raw(413, an("request_too_large", "Request exceeds the maximum allowed number of bytes.")), K.INVALID_REQUEST),
    row("anthropic: 200 stop_reason refusal -> content_filter", "anthropic", Raw(200, an_body("refusal")), K.CONTENT_FILTER),
    row("anthropic: 529 overloaded_error -> overloaded", "anthropic", Raw(529, an("overloaded_error", "Overloaded")), K.OVERLOADED),
    row("anthropic: 500 api_error -> server_error", "anthropic", Raw(500, an("api_error", "Internal server error")), K.SERVER_ERROR),
    row("anthropic: 504 timeout_error -> timeout", "anthropic", Raw(504, an("timeout_error", "Request timed out")), K.TIMEOUT),
    row("anthropic: other 400 -> invalid_request", "anthropic",
        Raw(400, an("invalid_request_error", "messages: roles must alternate between \"user\" and \"assistant\"")), K.INVALID_REQUEST),
    # Gemini (native)
    row("gemini: 429 RESOURCE_EXHAUSTED with a PerDay quotaId -> quota_exceeded", "gemini",
        Raw(429, gm(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.",
                    quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier"), retry_info("32s"))),
        K.QUOTA_EXCEEDED, no_retry=True, reset_at=FUTURE),
    row("gemini: 429 RESOURCE_EXHAUSTED otherwise (PerMinute, RetryInfo) -> rate_limit", "gemini",
        Raw(429, gm(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                    quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"), retry_info("32s"))),
        K.RATE_LIMIT, retry_after_s=32),
    row("gemini: 400 INVALID_ARGUMENT API_KEY_INVALID -> auth", "gemini",
        Raw(400, gm(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", error_info("API_KEY_INVALID"))), K.AUTH),
    row("gemini: 403 PERMISSION_DENIED -> account_locked", "gemini",
        Raw(403, gm(403, "PERMISSION_DENIED", "You do not have permission to access the tuned model.")), K.ACCOUNT_LOCKED),
    row("gemini: 404 NOT_FOUND naming a model -> model_not_found", "gemini",
        Raw(404, gm(404, "NOT_FOUND", "models/gemini-nope is not found for API version v1beta.")), K.MODEL_NOT_FOUND),
    row("gemini: 400 input token count exceeds the maximum -> context_overflow", "gemini",
        Raw(400, gm(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")),
        K.CONTEXT_OVERFLOW),
    row("gemini: 200 no candidates with promptFeedback.blockReason -> content_filter", "gemini", Raw(200, BLOCKED), K.CONTENT_FILTER),
    row("gemini: other 400 INVALID_ARGUMENT -> invalid_request", "gemini",
        Raw(400, gm(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"foo\": Cannot find field.")), K.INVALID_REQUEST),
    row("gemini: 503 UNAVAILABLE -> overloaded", "gemini",
        Raw(503, gm(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")), K.OVERLOADED),
    row("gemini: 500 INTERNAL -> server_error", "gemini", Raw(500, gm(500, "INTERNAL", "An internal error has occurred.")), K.SERVER_ERROR),
    row("gemini: 504 DEADLINE_EXCEEDED -> timeout", "gemini",
        Raw(504, gm(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")), K.TIMEOUT),
    # OpenRouter
    row("openrouter: 402 without Retry-After -> quota_exceeded", "openrouter",
        Raw(402, orr(402, "Insufficient credits. Add more using https://openrouter.ai/credits")), K.QUOTA_EXCEEDED),
    row("openrouter: 402 with Retry-After (in-flight budget) -> rate_limit", "openrouter",
        Raw(402, orr(402, "Too many concurrent paid requests.", limit_source="openrouter_in_flight_budget"), headers={"Retry-After": "2"}),
        K.RATE_LIMIT, retry_after_s=2),
    row("openrouter: 401 -> auth", "openrouter", Raw(401, orr(401, "No auth credentials found")), K.AUTH),
    row("openrouter: 403 guardrail block without a budget source -> account_locked", "openrouter",
        Raw(403, orr(403, "Request blocked by your guardrail settings.")), K.ACCOUNT_LOCKED),
    row("openrouter: 400 is not a valid model ID -> model_not_found", "openrouter",
        Raw(400, orr(400, "vendor/nope is not a valid model ID")), K.MODEL_NOT_FOUND),
    row("openrouter: 400 maximum context length -> context_overflow", "openrouter",
        Raw(400, orr(400, "This endpoint's maximum context length is 8192 tokens. However, you requested about 9000 tokens.")),
        K.CONTEXT_OVERFLOW),
    row("openrouter: 403 moderation metadata.reasons -> content_filter", "openrouter",
        Raw(403, orr(403, "vendor/m requires moderation. Your input was flagged for \"harassment\".",
                     reasons=["harassment"], flagged_input="...", provider_name="P", model_slug="vendor/m")),
        K.CONTENT_FILTER),
    row("openrouter: other 400 -> invalid_request", "openrouter",
        Raw(400, orr(400, "Input required: specify \"prompt\" or \"messages\"")), K.INVALID_REQUEST),
    row("openrouter: 503 no provider meets the routing requirements -> overloaded", "openrouter",
        Raw(503, orr(503, "No available provider meets your routing requirements.")), K.OVERLOADED),
    row("openrouter: 408 -> timeout", "openrouter", Raw(408, orr(408, "Request timed out")), K.TIMEOUT),
    row("openrouter: HTTP 200 with error in the body -> by its numeric code", "openrouter",
        Raw(200, orr(429, "Provider returned error: rate limited upstream")), K.RATE_LIMIT),
    # Local servers (additions)
    row("local: connection refused on localhost -> network (refused)", "llamacpp", CLOSED_PORT, K.NETWORK, refused=True),
    row("local: llama-server 503 unavailable_error Loading model -> overloaded", "llamacpp",
        Raw(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}), K.OVERLOADED),
    row("local: Ollama 404 model not found -> model_not_found", "ollama",
        Raw(404, {"error": "model 'llama9' not found"}), K.MODEL_NOT_FOUND),
    # The router compares prompt_tokens with its own estimate; the protocol's part is to report them.
    row("local: Ollama 200 with prompt_tokens below the estimate -> router decides, usage reported", "ollama",
        Reply("ok", usage={"input_tokens": 2048, "output_tokens": 1}), None, input_tokens=2048),
]

#: the other signals a table line names (ids name the line they belong to)
VARIANTS = [
    # transport: a stream that ends without its terminator
    row("transport: stream without terminator -> stream_interrupted", "openai",
        Raw(200, sse=[(None, oa_chunk("Hel"))]), K.STREAM_INTERRUPTED, partial="Hel"),
    row("transport: ReadError after the 200 headers but before any SSE event -> stream_interrupted", "gemini", CutStream(after_chunks=0),
        K.STREAM_INTERRUPTED, stream=True, partial="", status=200),
    row("transport: ReadError after message_start only -> stream_interrupted", "anthropic", CutStream(after_chunks=0), K.STREAM_INTERRUPTED,
        stream=True, partial=""),
    # openai quota codes and text
    *[row(f"openai: 429 code {code} -> quota_exceeded", "openai", Raw(429, oa("billing", None, code)), K.QUOTA_EXCEEDED)
      for code in ("credit_balance_exhausted", "organization_spend_limit_exceeded", "project_spend_limit_exceeded",
                   "organization_usage_limit_exceeded")],
    row("openai: 429 text exceeded your current quota -> quota_exceeded", "openai",
        Raw(429, oa("You exceeded your current quota, please check your plan and billing details.")), K.QUOTA_EXCEEDED),
    row("openai: 429 slow_down -> rate_limit", "openai", Raw(429, oa("Please reduce your rate.", "rate_limit_error", "slow_down")), K.RATE_LIMIT),
    row("openai: any other 429 (retry-after-ms) -> rate_limit", "openai", Raw(429, oa("Too many requests"), headers={"retry-after-ms": "1500"}),
        K.RATE_LIMIT, retry_after_s=1.5),
    row("openai: 401 IP not authorized -> auth", "openai", Raw(401, oa("IP not authorized", "invalid_request_error")), K.AUTH),
    row("openai: 404 does not exist text without code -> model_not_found", "openai",
        Raw(404, oa("The model `x` does not exist or you do not have access to it.")), K.MODEL_NOT_FOUND),
    row("openai: 400 vLLM context length is only -> context_overflow", "vllm",
        Raw(400, {"error": {"message": "You passed 9000 input tokens and requested 100 output tokens. However, the model's context length is only 8192 tokens.",
                            "type": "BadRequestError", "param": "input_tokens", "code": 400}}), K.CONTEXT_OVERFLOW),
    row("openai: 400 vLLM flat object error maximum context length -> context_overflow", "vllm",
        Raw(400, {"object": "error", "message": "This model's maximum context length is 4096 tokens.", "type": "BadRequestError", "param": None, "code": 400}),
        K.CONTEXT_OVERFLOW),
    row("openai: 400 llama exceed_context_size_error -> context_overflow", "llamacpp",
        Raw(400, {"error": {"code": 400, "message": "request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it",
                            "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 8192}}), K.CONTEXT_OVERFLOW),
    row("openai: 200 finish_reason content_filter -> content_filter", "openai", Raw(200, oa_body("", "content_filter")), K.CONTENT_FILTER),
    row("openai: 200 message.refusal -> content_filter", "openai", Raw(200, oa_body(None, "stop", refusal="I can't help with that.")),
        K.CONTENT_FILTER),
    row("openai: 422 -> invalid_request", "openai", Raw(422, oa("Unprocessable")), K.INVALID_REQUEST),
    row("openai: 400 unsupported_value -> unsupported", "openai",
        Raw(400, oa("Only the default (1) value is supported.", "invalid_request_error", "unsupported_value", "temperature")), K.UNSUPPORTED),
    row("openai-compatible: 400 'does not support streaming' -> unsupported", "openai",
        Raw(400, oa("This model does not support streaming.", "invalid_request_error")), K.UNSUPPORTED),
    row("anthropic: 400 a feature this model does not support -> unsupported", "anthropic",
        Raw(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "This model does not support extended thinking."}}),
        K.UNSUPPORTED),
    row("gemini: 400 INVALID_ARGUMENT 'is not supported for this model' -> unsupported", "gemini",
        Raw(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Function calling is not supported for this model."}}),
        K.UNSUPPORTED),
    row("openai: 503 type service_unavailable_error -> overloaded", "openai", Raw(503, oa("Slow Down", "service_unavailable_error")), K.OVERLOADED),
    row("openai: 502 -> server_error", "openai", Raw(502, "<html>Bad gateway</html>", content_type="text/html"), K.SERVER_ERROR),
    row("openai: 504 -> server_error", "openai", Raw(504, "upstream timed out", content_type="text/plain"), K.SERVER_ERROR),
    row("openai: error chunk mid-stream with a code -> by its code", "openai",
        Raw(200, sse=[(None, oa_chunk("Hel")), (None, json.dumps(oa("Rate limit reached", "requests", "rate_limit_exceeded")))]),
        K.RATE_LIMIT, partial="Hel"),
    row("openai: vLLM flat object error in a stream -> by its code", "vllm",
        Raw(200, sse=[(None, json.dumps({"object": "error", "message": "This model's maximum context length is 4096 tokens.",
                                        "type": "BadRequestError", "param": None, "code": 400}))]), K.CONTEXT_OVERFLOW),
    row("openai: llama-server bare error line in a stream -> by its type", "llamacpp",
        Raw(200, "data: " + oa_chunk("Hel") + "\n\nerror: " + json.dumps({"code": 500, "message": "slot failed", "type": "server_error"}) + "\n\n",
            content_type=SSE),
        K.SERVER_ERROR, stream=True, partial="Hel"),
    # anthropic
    row("anthropic: 402 billing_error -> quota_exceeded", "anthropic",
        Raw(402, an("billing_error", "Your credit balance is too low to access the Anthropic API.")), K.QUOTA_EXCEEDED, no_retry=True),
    row("anthropic: 400 You have reached your specified API usage limits -> quota_exceeded", "anthropic",
        Raw(400, an("invalid_request_error", "You have reached your specified workspace API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.")),
        K.QUOTA_EXCEEDED, no_retry=True, reset_at=DEC_1_2026),
    row("anthropic: 400 exceed context limit -> context_overflow", "anthropic",
        Raw(400, an("invalid_request_error", "input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000")), K.CONTEXT_OVERFLOW),
    row("anthropic: 200 stop_reason model_context_window_exceeded -> context_overflow", "anthropic",
        Raw(200, an_body("model_context_window_exceeded", "Hel")), K.CONTEXT_OVERFLOW, partial="Hel"),
    row("anthropic: stream stop_reason refusal -> content_filter", "anthropic",
        Raw(200, sse=an_events(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "refusal"}, "usage": {"output_tokens": 2}}),
                               ("message_stop", {"type": "message_stop"}))), K.CONTENT_FILTER, partial="Hel"),
    row("anthropic: SSE event error overloaded_error after 200 -> overloaded", "anthropic",
        Raw(200, sse=an_events(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))),
        K.OVERLOADED, partial="Hel"),
    row("anthropic: 409 conflict_error -> server_error", "anthropic", Raw(409, an("conflict_error", "Conflict")), K.SERVER_ERROR),
    row("anthropic: 422 -> invalid_request", "anthropic", Raw(422, an("invalid_request_error", "Unprocessable")), K.INVALID_REQUEST),
    row("anthropic: unknown error type -> by status 503", "anthropic", Raw(503, an("brand_new_error", "?")), K.OVERLOADED),
    row("anthropic: unknown error type -> by status 429", "anthropic", Raw(429, an("brand_new_error", "?")), K.RATE_LIMIT),
    # gemini
    row("gemini: 429 message limit: 0 -> quota_exceeded", "gemini",
        Raw(429, gm(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric: generate_content_free_tier_requests, limit: 0, model: gemini-x")),
        K.QUOTA_EXCEEDED, no_retry=True),
    row("gemini: 429 Please retry in Xs without RetryInfo -> rate_limit", "gemini",
        Raw(429, gm(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota. Please retry in 12.5s.")), K.RATE_LIMIT, retry_after_s=12.5),
    row("gemini: 429 wrapped in a JSON array -> rate_limit", "gemini",
        Raw(429, [gm(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", retry_info("5s"))]), K.RATE_LIMIT, retry_after_s=5),
    row("gemini: 401 -> auth", "gemini", Raw(401, gm(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")), K.AUTH),
    row("gemini: 400 FAILED_PRECONDITION -> account_locked", "gemini",
        Raw(400, gm(400, "FAILED_PRECONDITION", "User location is not supported for the API use without a billing account linked.")),
        K.ACCOUNT_LOCKED),
    *[row(f"gemini: 200 finishReason {reason} -> content_filter", "gemini", Raw(200, gm_chunk("", reason)), K.CONTENT_FILTER)
      for reason in sorted(SAFETY_FINISH_REASONS)],
    row("gemini: stream blockReason in the first chunk -> content_filter", "gemini", Raw(200, sse=[(None, json.dumps(BLOCKED))]), K.CONTENT_FILTER),
    row("gemini: stream finishReason SAFETY after text -> content_filter", "gemini",
        Raw(200, sse=[(None, json.dumps(gm_chunk("Hel"))), (None, json.dumps(gm_chunk("", "SAFETY")))]), K.CONTENT_FILTER, partial="Hel"),
    row("gemini: 200 no candidates and no block reason -> empty_response", "gemini",
        Raw(200, {"usageMetadata": {"promptTokenCount": 8}, "modelVersion": "gemini-x"}), K.EMPTY_RESPONSE),
    # openrouter
    row("openrouter: limit_source openrouter_credits -> quota_exceeded", "openrouter",
        Raw(402, orr(402, "Insufficient credits", limit_source="openrouter_credits"), headers={"Retry-After": "5"}), K.QUOTA_EXCEEDED,
        no_retry=True),
    *[row(f"openrouter: 403 limit_source {source} -> quota_exceeded", "openrouter",
          Raw(403, orr(403, "Budget spent", limit_source=source, resets_at="2026-12-01T00:00:00Z")), K.QUOTA_EXCEEDED,
          reset_at=DEC_1_2026)
      for source in ("openrouter_guardrail_budget", "openrouter_workspace_budget", "openrouter_key_limit")],
    row("openrouter: 429 -> rate_limit", "openrouter", Raw(429, orr(429, "Rate limit exceeded"), headers={"Retry-After": "4"}),
        K.RATE_LIMIT, retry_after_s=4),
    row("openrouter: 404 guardrail and data policy -> account_locked", "openrouter",
        Raw(404, orr(404, "No endpoints available matching your guardrail restrictions and data policy.")), K.ACCOUNT_LOCKED),
    row("openrouter: 404 No endpoints found for X -> model_not_found", "openrouter",
        Raw(404, orr(404, "No endpoints found for vendor/m.")), K.MODEL_NOT_FOUND),
    row("openrouter: 404 No endpoints found that support tool use -> unsupported (the model is there, without tools)", "openrouter",
        Raw(404, orr(404, "No endpoints found that support tool use.")), K.UNSUPPORTED),
    row("openrouter: 200 finish_reason content_filter -> content_filter", "openrouter", Raw(200, oa_body("", "content_filter")), K.CONTENT_FILTER),
    row("openrouter: 502 -> server_error", "openrouter", Raw(502, orr(502, "Provider returned error")), K.SERVER_ERROR),
    row("openrouter: 200 with error in the body code 402 -> quota_exceeded", "openrouter",
        Raw(200, orr(402, "Insufficient credits")), K.QUOTA_EXCEEDED),
    # after generation started the partial text is set, and the router reports stream_interrupted
    row("openrouter: SSE error after generation started -> by code, partial text kept", "openrouter",
        Raw(200, sse=[(None, oa_chunk("Hel")), (None, json.dumps({**orr(502, "Provider disconnected"), "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))]),
        K.SERVER_ERROR, partial="Hel"),
    row("openrouter: SSE error without code -> server_error", "openrouter",
        Raw(200, sse=[(None, json.dumps({"error": {"message": "?"}}))]), K.SERVER_ERROR),
    # local
    row("local: Ollama 404 model not found (Ollama endpoint not marked local) -> model_not_found", "openai",
        Raw(404, {"error": "model 'llama9' not found"}), K.MODEL_NOT_FOUND),
]


#: the next 00:00 UTC, for `Row.reset_at` (a daily quota with no reset header)
UTC_MIDNIGHT = "next UTC midnight"


def _gemini_no_text(reason: str) -> str:
    # a 200 whose only candidate has no parts: how generateContent reports a stop before any text
    return ('{"candidates": [{"content": {"role": "model"},"finishReason": "' + reason + '","index": 0}],'
            '"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash",'
            '"responseId": "m3ohaLbTIsKq1MkPlqG7sQs"}')


#: real providers' payloads that were misread (issue 12 section 3, issue 14), byte for byte as the
#: providers' SDKs, documentation and users' reports show them
REAL_PAYLOADS = [
    row("anthropic: 429 details.error_code contract_spend_limit_reached -> quota_exceeded (account-wide)", "anthropic",
        Raw(429, '{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your organization\'s contract spend '
                 'limit. Please contact your account team to raise it.","details":{"error_code":"contract_spend_limit_reached"}},'
                 '"request_id":"req_011CUFe7mGm5TSb4cuqSZa4m"}'),
        K.QUOTA_EXCEEDED, no_retry=True),
    row("anthropic: 400 error_code organization_on_hold -> account_locked", "anthropic",
        Raw(400, '{"type":"error","error":{"type":"invalid_request_error","message":"This organization has been disabled. An '
                 'organization admin can appeal at https://console.anthropic.com/appeal","details":{"error_code":"organization_on_hold"}},'
                 '"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}'),
        K.ACCOUNT_LOCKED),
    *[row(f"gemini: 200 finishReason {reason} with no text -> content_filter", "gemini", Raw(200, _gemini_no_text(reason)), K.CONTENT_FILTER)
      for reason in ("PROHIBITED_CONTENT", "SPII", "BLOCKLIST", "ESCALATION", "MODEL_ARMOR", "LANGUAGE")],
    row("gemini: 200 finishReason PUP_LIMITED_DISABLED with no text -> account_locked", "gemini",
        Raw(200, _gemini_no_text("PUP_LIMITED_DISABLED")), K.ACCOUNT_LOCKED),
    row("gemini: stream whose last chunk is finishReason LANGUAGE with no text -> content_filter", "gemini",
        Raw(200, sse=[(None, _gemini_no_text("LANGUAGE"))]), K.CONTENT_FILTER),
    *[row(f"gemini: 200 finishReason {reason} with no text -> empty_response", "gemini", Raw(200, _gemini_no_text(reason)), K.EMPTY_RESPONSE)
      for reason in ("MALFORMED_FUNCTION_CALL", "MALFORMED_RESPONSE", "OTHER")],
    row("gemini: stream whose last chunk is finishReason OTHER with no text -> empty_response", "gemini",
        Raw(200, sse=[(None, _gemini_no_text("OTHER"))]), K.EMPTY_RESPONSE),
    row("litellm proxy: 400 ContextWindowExceededError -> context_overflow", "openai",
        Raw(400, '{"error":{"message":"litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: '
                 'VertexAIException - The input token count (1250000) exceeds the maximum number of tokens allowed (1048576).\n'
                 'model=gemini-2.5-flash. context_window_fallbacks=None. fallbacks=None.\n\nSet \'context_window_fallback\' - '
                 'https://docs.litellm.ai/docs/routing#fallbacks. Received Model Group=gemini-2.5-flash\nAvailable Model Group '
                 'Fallbacks=None","type":null,"param":null,"code":"400"}}'),
        K.CONTEXT_OVERFLOW),
    row("litellm proxy: 400 Invalid model name passed in model= -> model_not_found", "openai",
        Raw(400, '{"error":{"message":"{\'error\': \'/chat/completions: Invalid model name passed in model=gpt-nope. Call `/v1/models` '
                 'to view available models for your key.\'}","type":"None","param":"None","code":"400"}}'),
        K.MODEL_NOT_FOUND),
    row("azure: 400 code content_filter, innererror ResponsibleAIPolicyViolation -> content_filter", "openai",
        Raw(400, '{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI\'s content management '
                 'policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our '
                 'documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter",'
                 '"status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,'
                 '"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},'
                 '"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":true,"severity":"medium"}}}}}'),
        K.CONTENT_FILTER),
    row("azure: 400 innererror ResponsibleAIPolicyViolation alone -> content_filter", "openai",
        Raw(400, '{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI\'s content management '
                 'policy.","type":null,"param":"prompt","code":null,"status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}'),
        K.CONTENT_FILTER),
    row("gemini: 403 Method doesn't allow unregistered callers (no key sent) -> auth", "gemini",
        Raw(403, '{\n  "error": {\n    "code": 403,\n    "message": "Method doesn\'t allow unregistered callers (callers without '
                 'established identity). Please use API Key or other form of API consumer identity to call this API.",\n    '
                 '"status": "PERMISSION_DENIED"\n  }\n}\n'),
        K.AUTH),
    row("a 404 naming no model (wrong base_url, nginx) -> endpoint_not_found", "openai",
        Raw(404, "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n"
                 "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n", content_type="text/html"),
        K.ENDPOINT_NOT_FOUND),
    row("a 404 naming no model (wrong base_url, FastAPI) -> endpoint_not_found", "openai",
        Raw(404, '{"detail":"Not Found"}'), K.ENDPOINT_NOT_FOUND),
    row("openai: 404 Invalid URL (a typo in the path) -> endpoint_not_found", "openai",
        Raw(404, oa("Invalid URL (POST /v1/chat/completionz)", "invalid_request_error")), K.ENDPOINT_NOT_FOUND),
    row("azure openai: 404 DeploymentNotFound -> model_not_found (a deployment is the model)", "openai",
        Raw(404, oa("The API deployment for this resource does not exist. If you created the deployment within the last "
                    "5 minutes, please wait a moment and try again.", None, "DeploymentNotFound")), K.MODEL_NOT_FOUND),
    row("anthropic: 404 not_found_error Not Found (a wrong path) -> endpoint_not_found", "anthropic",
        Raw(404, an("not_found_error", "Not Found")), K.ENDPOINT_NOT_FOUND),
    row("gemini: 404 HTML page of the front end (a wrong path, quoting /models/) -> endpoint_not_found", "gemini",
        Raw(404, "<!DOCTYPE html>\n<html lang=en><title>Error 404 (Not Found)!!1</title><p><b>404.</b> <ins>That's an "
                 "error.</ins><p>The requested URL <code>/v1betx/models/gemini-2.5-flash:generateContent</code> was not found "
                 "on this server.  <ins>That's all we know.</ins>", content_type="text/html"), K.ENDPOINT_NOT_FOUND),
    row("openai: 429 requests per day (RPD), no reset header -> quota_exceeded until the next UTC midnight", "openai",
        Raw(429, '{\n    "error": {\n        "message": "Rate limit reached for gpt-4o-mini in organization org-Xb1PqR7sT2uVw3Yz on '
                 'requests per day (RPD): Limit 10000, Used 10000, Requested 1. Please try again in 8.64s. Visit '
                 'https://platform.openai.com/account/rate-limits to learn more.",\n        "type": "requests",\n        '
                 '"param": null,\n        "code": "rate_limit_exceeded"\n    }\n}\n'),
        K.QUOTA_EXCEEDED, no_retry=True, reset_at=UTC_MIDNIGHT),
    row("openai: 429 tokens per day (TPD) with x-ratelimit-reset-tokens -> quota_exceeded until the header's reset", "openai",
        Raw(429, '{\n    "error": {\n        "message": "Rate limit reached for gpt-4o in organization org-Xb1PqR7sT2uVw3Yz on '
                 'tokens per day (TPD): Limit 900000, Used 899852, Requested 1200. Please try again in 3m6.048s. Visit '
                 'https://platform.openai.com/account/rate-limits to learn more.",\n        "type": "tokens",\n        '
                 '"param": null,\n        "code": "rate_limit_exceeded"\n    }\n}\n',
            headers={"x-ratelimit-reset-tokens": "3m6.048s", "x-ratelimit-remaining-tokens": "0"}),
        K.QUOTA_EXCEEDED, no_retry=True, reset_in_s=186.048),
]


# -- running a row ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoint(sim: Any, flavour: str, response: Behaviour | str) -> Endpoint:
    url = {
        "anthropic": sim.anthropic_url,
        "gemini": sim.gemini_url,
        "openrouter": sim.openrouter_url,
    }.get(flavour, sim.openai_url)
    if response == CLOSED_PORT:
        url = f"http://127.0.0.1:{_free_port()}" + ("/v1" if flavour not in ("anthropic",) else "")
    protocol = flavour if flavour in ("anthropic", "gemini") else "openai"
    local = flavour in ("ollama", "llamacpp", "vllm", "lmstudio")
    key = None if local else "sk-classify-0123456789abcdef"
    return Endpoint(flavour, protocol, url, api_key=key, preset=flavour, local=local)


def _send(ep: Endpoint, request: ChatRequest, timeout_s: float) -> Completion | ProviderFailure:
    async def go() -> Completion | ProviderFailure:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            try:
                return await send(client, get_protocol(ep.protocol), ep, request, timeout_s=timeout_s)
            except ProviderFailure as failure:
                return failure

    return asyncio.run(go())


def check(sim: Any, r: Row) -> None:
    sim.default_text = "one two three four"
    if isinstance(r.response, Behaviour):
        sim.script([r.response], model="m")
    ep = _endpoint(sim, r.flavour, r.response)
    sent_at = time.time()
    result = _send(ep, ChatRequest("m", [{"role": "user", "content": "hi"}], stream=r.stream), r.timeout_s)
    if r.kind is None:
        assert isinstance(result, Completion), repr(result)
        assert result.usage is not None and result.usage.input_tokens == r.input_tokens
        assert result.served_model is None
        return
    assert isinstance(result, ProviderFailure), f"expected {r.kind}, got {result!r}"
    assert result.kind is r.kind, f"expected {r.kind}, got {result!r}"
    if r.retry_after_s is not None:
        assert result.retry_after_s == pytest.approx(r.retry_after_s)
    if r.no_retry:
        assert result.retry_after_s is None
    if r.partial is not None:
        assert result.partial_text == r.partial
    if r.reset_at == FUTURE:
        assert result.reset_at is not None and result.reset_at > time.time()
    elif r.reset_at == UTC_MIDNIGHT:
        now = time.time()
        assert result.reset_at is not None and result.reset_at % 86400 == 0 and now < result.reset_at <= now + 86400
    elif r.reset_in_s is not None:
        # the header's reset counted from when the answer came, which was at most the test's run time ago
        assert result.reset_at is not None and sent_at + r.reset_in_s <= result.reset_at <= time.time() + r.reset_in_s
    elif r.reset_at is not None:
        assert result.reset_at == r.reset_at
    assert result.refused is r.refused
    if r.status is not None:
        assert result.status == r.status
    assert "sk-classify-0123456789abcdef" not in str(result)


@pytest.mark.parametrize("r", TABLE)
def test_table_line(provider_simulator: Any, r: Row) -> None:
    check(provider_simulator, r)


@pytest.mark.parametrize("r", VARIANTS)
def test_other_signal_of_a_table_line(provider_simulator: Any, r: Row) -> None:
    check(provider_simulator, r)


@pytest.mark.parametrize("r", REAL_PAYLOADS)
def test_real_provider_payload(provider_simulator: Any, r: Row) -> None:
    check(provider_simulator, r)


def test_table_has_one_row_per_line_of_providers_md() -> None:
    """Guards the promise of this file: as many TABLE rows as §8 has classification lines."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "providers.md"
    if not doc.exists():
        pytest.skip("providers.md is not next to this checkout")
    section = doc.read_text(encoding="utf-8").split("## 8.", 1)[1].split("### What to do with each kind", 1)[0]
    lines = [
        line for line in section.splitlines()
        if line.startswith("| ") and not line.startswith(("| condition", "| signal"))
    ]
    assert len(TABLE) == len(lines)


def test_readmes_failure_table_names_every_kind() -> None:
    """The README's "What happens on failure" table has a row naming each kind the classifier can give."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What happens on failure", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {kind.value for kind in ErrorKind if any(f"`{kind.value}`" in cell for cell in first_cells)}
    assert named == {kind.value for kind in ErrorKind}, sorted({k.value for k in ErrorKind} - named)

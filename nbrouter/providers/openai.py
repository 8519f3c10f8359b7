"""The OpenAI chat-completions wire protocol (also OpenRouter, Groq, DeepSeek, local servers...)."""

from __future__ import annotations

import email.utils
import json
import re
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from .._core import scrub
from .._core import ErrorKind, Usage
from .base import ChatRequest, Completion, Endpoint, ProviderFailure, RateLimits, SSEEvent, StreamDecoder, WireProtocol

QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
    }
)
RATE_CODES = frozenset({"rate_limit_exceeded", "slow_down"})
_CONTEXT_TEXT = re.compile(
    r"maximum context length|context length is only|exceeds the available context size|context_length_exceeded"
    r"|prompt is too long|too many tokens",
    re.I,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """A Go-style duration (`6ms`, `1m30s`, `2.5s`) in seconds."""
    if not value:
        return None
    total = 0.0
    found = False
    for number, unit in _DURATION.findall(value):
        found = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if not found:
        try:
            return float(value)
        except ValueError:
            return None
    return total


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, then `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def header_int(value: str | None) -> int | None:
    """A numeric header value as an int; None when absent or not a number."""
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def is_openrouter(endpoint: Endpoint) -> bool:
    """OpenRouter has its own error rules (status in `error.code`, budgets in `metadata`)."""
    return endpoint.preset == "openrouter" or "openrouter.ai" in endpoint.base_url


def error_parts(body: Any) -> tuple[str, str, str, Any]:
    """(type, code, message, metadata) of an OpenAI-shaped error body, tolerant of its variants."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", "", None
    err = body.get("error", body)
    if isinstance(err, str):
        return "", "", err, None
    if not isinstance(err, dict):
        return "", "", "", None
    etype = str(err.get("type") or body.get("object") or "")
    code = err.get("code")
    message = str(err.get("message") or "")
    return etype, "" if code is None else str(code), message, err.get("metadata")


class OpenAIProtocol(WireProtocol):
    """Chat completions: `POST {base_url}/chat/completions`, SSE ending in `[DONE]`."""

    name = "openai"

    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        messages = list(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.models:
            body["models"] = request.models
        if request.max_tokens is not None:
            # OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens);
            # every compatible server still reads max_tokens.
            key = "max_completion_tokens" if endpoint.preset == "openai" else "max_tokens"
            body[key] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.response_format is not None:
            body["response_format"] = _response_format(request.response_format)
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        headers = {"content-type": "application/json", **endpoint.headers}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return endpoint.base_url.rstrip("/") + "/chat/completions", headers, body

    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any) -> Completion:
        if not isinstance(body, dict):
            raise ProviderFailure(ErrorKind.SERVER_ERROR, "response is not a JSON object", status=status)
        if body.get("error") or body.get("object") == "error":
            raise self._failure_from_body(endpoint, status, headers, body, in_stream=False)
        choices = body.get("choices") or []
        choice = choices[0] if choices else {}
        message = choice.get("message") or {}
        text = message.get("content") or ""
        if isinstance(text, list):
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        finish = choice.get("finish_reason")
        usage, cost = self._usage(body.get("usage"))
        model = body.get("model")
        if finish == "content_filter" or message.get("refusal"):
            raise ProviderFailure(
                ErrorKind.CONTENT_FILTER,
                scrub(f"the model declined: {message.get('refusal') or finish}"),
                status=status, usage=usage, model=model,
            )
        if not text and not finish:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "200 with no text and no finish reason", status=status, usage=usage)
        return Completion(
            text=text, model=model, finish_reason=finish, usage=usage, reported_cost=cost,
            served_model=_price_model(endpoint, model),
        )

    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        return _OpenAIStream(self, endpoint)

    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str
    ) -> ProviderFailure:
        return self._failure_from_body(endpoint, status, headers, body, in_stream=False, raw=text)

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits | None:
        if "x-ratelimit-remaining-requests" not in headers and "x-ratelimit-remaining-tokens" not in headers:
            return None
        now = time.time()
        reset_r = parse_duration(headers.get("x-ratelimit-reset-requests"))
        reset_t = parse_duration(headers.get("x-ratelimit-reset-tokens"))
        return RateLimits(
            limit_requests=header_int(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=header_int(headers.get("x-ratelimit-remaining-requests")),
            reset_requests_at=now + reset_r if reset_r is not None else None,
            limit_tokens=header_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=header_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens_at=now + reset_t if reset_t is not None else None,
        )

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _usage(raw: Any) -> tuple[Usage | None, Decimal | None]:
        if not isinstance(raw, dict):
            return None, None
        pdet = raw.get("prompt_tokens_details") or {}
        cdet = raw.get("completion_tokens_details") or {}
        usage = Usage(
            input_tokens=int(raw.get("prompt_tokens") or 0),
            output_tokens=int(raw.get("completion_tokens") or 0),
            cached_tokens=int(pdet.get("cached_tokens") or 0),
            cache_write_tokens=int(pdet.get("cache_write_tokens") or 0),
            reasoning_tokens=int(cdet.get("reasoning_tokens") or 0),
        )
        cost = None
        if raw.get("cost") is not None:
            try:
                cost = Decimal(str(raw["cost"]))
            except InvalidOperation:
                cost = None
        return usage, cost

    def _failure_from_body(
        self,
        endpoint: Endpoint,
        status: int,
        headers: Mapping[str, str],
        body: Any,
        *,
        in_stream: bool,
        raw: str = "",
    ) -> ProviderFailure:
        etype, code, message, metadata = error_parts(body)
        if not message:
            message = raw[:300] if raw else f"HTTP {status}"
        # An error object inside a 200 (a stream chunk, or OpenRouter's and vLLM's bodies) carries
        # the real status as a numeric `code`: classify by it.
        judged = int(code) if status < 300 and code.isdigit() else status
        kind = self.kind_for(endpoint, judged, etype, code, message, metadata, headers, in_stream=in_stream)
        # a quota does not come back after a Retry-After (providers.md section 8): only its reset counts
        quota = kind is ErrorKind.QUOTA_EXCEEDED
        wait = None if quota else retry_after(headers)
        reset_at = _reset_at(metadata) if quota else None
        label = " ".join(p for p in (str(status), etype, code if code != str(status) else "") if p)
        text = scrub(f"{label}: {message}")
        return ProviderFailure(
            kind,
            text[:500],
            status=status,
            retry_after_s=wait,
            reset_at=reset_at,
            request_id=self.request_id(headers),
            rate_limits=self.rate_limits(headers),
        )

    def kind_for(
        self,
        endpoint: Endpoint,
        status: int,
        etype: str,
        code: str,
        message: str,
        metadata: Any,
        headers: Mapping[str, str],
        *,
        in_stream: bool = False,
    ) -> ErrorKind:
        """The classification table of providers.md section 8 for OpenAI-shaped servers."""
        low = message.lower()
        meta = metadata if isinstance(metadata, dict) else {}
        if is_openrouter(endpoint):
            kind = _openrouter_kind(status, low, meta, headers)
            if kind is not None:
                return kind
        if etype == "insufficient_quota" or code in QUOTA_CODES or "exceeded your current quota" in low:
            return ErrorKind.QUOTA_EXCEEDED
        if status == 429 or code in RATE_CODES or etype == "rate_limit_error":
            return ErrorKind.RATE_LIMIT
        if status == 401 or etype == "authentication_error" or code == "invalid_api_key":
            return ErrorKind.AUTH
        if status == 403 or etype == "permission_error":
            return ErrorKind.ACCOUNT_LOCKED
        if code == "model_not_found" or "does not exist or you do not have access" in low:
            return ErrorKind.MODEL_NOT_FOUND
        if status == 404:
            if endpoint.local or "model" in low or etype == "not_found_error":
                return ErrorKind.MODEL_NOT_FOUND
            return ErrorKind.INVALID_REQUEST
        if code == "context_length_exceeded" or etype == "exceed_context_size_error" or _CONTEXT_TEXT.search(message):
            return ErrorKind.CONTEXT_OVERFLOW
        if code == "invalid_prompt" or "flagged as potentially violating" in low:
            return ErrorKind.CONTENT_FILTER
        if status == 408 or etype == "timeout_error":
            return ErrorKind.TIMEOUT
        if status in (503, 529) or code == "server_is_overloaded" or etype in ("service_unavailable_error", "unavailable_error", "overloaded_error"):
            return ErrorKind.OVERLOADED
        if status >= 500:
            return ErrorKind.SERVER_ERROR
        if status in (400, 413, 422) or 400 <= status < 500:
            return ErrorKind.INVALID_REQUEST
        # an error object with no status information (mid-stream): the server failed
        return ErrorKind.SERVER_ERROR


def _openrouter_kind(status: int, low: str, meta: dict[str, Any], headers: Mapping[str, str]) -> ErrorKind | None:
    source = str(meta.get("limit_source") or "")
    if source == "openrouter_credits":
        return ErrorKind.QUOTA_EXCEEDED
    if status == 402:
        # only the in-flight budget (sent with Retry-After) frees itself; credits do not come back
        if headers.get("retry-after") or source == "openrouter_in_flight_budget":
            return ErrorKind.RATE_LIMIT
        return ErrorKind.QUOTA_EXCEEDED
    if status == 403:
        if source in ("openrouter_guardrail_budget", "openrouter_workspace_budget", "openrouter_key_limit"):
            return ErrorKind.QUOTA_EXCEEDED
        if meta.get("reasons") or meta.get("flagged_input"):
            return ErrorKind.CONTENT_FILTER
        return ErrorKind.ACCOUNT_LOCKED
    if status == 404:
        if "guardrail" in low or "data policy" in low:
            return ErrorKind.ACCOUNT_LOCKED
        return ErrorKind.MODEL_NOT_FOUND
    if status == 400 and "not a valid model id" in low:
        return ErrorKind.MODEL_NOT_FOUND
    if status == 502:
        return ErrorKind.SERVER_ERROR
    if status == 503:
        return ErrorKind.OVERLOADED
    return None


def _reset_at(metadata: Any) -> float | None:
    """OpenRouter's budget `metadata.resets_at` (an ISO timestamp, or epoch seconds or milliseconds)."""
    value = metadata.get("resets_at") if isinstance(metadata, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str) and value:
        text = value.strip()
        text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _price_model(endpoint: Endpoint, model: Any) -> str | None:
    """The served model, as a price key. Local servers report their own alias or GGUF file name,
    never a priceable id (providers.md section 5), so they get None."""
    if endpoint.local or not isinstance(model, str) or not model:
        return None
    return model


def _response_format(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") in ("json_schema", "json_object"):
        return schema
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "response"))[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


class _OpenAIStream(StreamDecoder):
    def __init__(self, protocol: OpenAIProtocol, endpoint: Endpoint) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self.done = False
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.cost: Decimal | None = None
        self.refusal = ""
        self.any_text = False

    def feed(self, event: SSEEvent) -> str | None:
        data = event.data
        if event.event == "raw":
            # Not an SSE field. llama-server writes a failure as a bare `error: {...}` line; any
            # other bare line is noise (a missing [DONE] is still caught by finish()).
            data = data[6:] if data.startswith("error:") else data
            try:
                chunk = json.loads(data)
            except ValueError:
                return None
            if isinstance(chunk, dict) and "error" not in chunk and chunk.get("object") != "error" and "code" in chunk:
                chunk = {"error": chunk}
            if not isinstance(chunk, dict):
                return None
            return self._chunk(chunk)
        if data.startswith("[DONE]"):
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderFailure(ErrorKind.STREAM_INTERRUPTED, f"malformed stream chunk: {scrub(data[:120])!r}") from None
        if not isinstance(chunk, dict):
            raise ProviderFailure(ErrorKind.STREAM_INTERRUPTED, "stream chunk is not a JSON object")
        if event.event == "error" and "error" not in chunk:
            chunk = {"error": chunk}
        return self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> str | None:
        if chunk.get("error") or chunk.get("object") == "error":
            raise self.protocol._failure_from_body(self.endpoint, 200, {}, chunk, in_stream=True)
        if chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage, self.cost = OpenAIProtocol._usage(chunk["usage"])
        text = None
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            if piece:
                text = (text or "") + piece
            if delta.get("refusal"):
                self.refusal += delta["refusal"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if text:
            self.any_text = True
        return text

    def finish(self) -> Completion:
        if not self.done:
            raise ProviderFailure(ErrorKind.STREAM_INTERRUPTED, "stream ended without [DONE]", usage=self.usage)
        if self.finish_reason == "content_filter" or self.refusal:
            raise ProviderFailure(ErrorKind.CONTENT_FILTER, scrub(f"the model declined: {self.refusal or self.finish_reason}"), usage=self.usage)
        if not self.any_text and not self.finish_reason:
            raise ProviderFailure(ErrorKind.EMPTY_RESPONSE, "stream with no text and no finish reason", usage=self.usage)
        return Completion(
            text="", model=self.model, finish_reason=self.finish_reason, usage=self.usage,
            reported_cost=self.cost, served_model=_price_model(self.endpoint, self.model),
        )

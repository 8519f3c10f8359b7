"""Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`) on the wire (providers.md section 3)."""

from __future__ import annotations

from typing import Any

from ._wire import (
    IMPLIED_RETRY_S,
    Call,
    Outcome,
    RenderedTool,
    Wire,
    amount_text,
    dumps,
    overflow_tokens,
    protocol_finish,
    retry_hint_s,
)
from .behaviours import (
    ContextOverflow,
    Forbidden,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    ServerError,
    Unauthorized,
)

_TYPE = "type.googleapis.com/google.rpc."
_FREE_TIER_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_FREE_TIER_TOKENS = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
_OVERLOADED = "The model is overloaded. Please try again later."
_INTERNAL = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"


def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def _delay(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.3f}s"


def _quota_details(model: str, quota_id: str, value: str, retry_s: float, metric: str = _FREE_TIER_METRIC) -> list[Any]:
    return [
        {
            "@type": _TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": value,
                }
            ],
        },
        {"@type": _TYPE + "Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": _TYPE + "RetryInfo", "retryDelay": _delay(retry_s)},
    ]


def _function_call(tool: RenderedTool) -> dict[str, Any]:
    call: dict[str, Any] = {"id": tool.id} if tool.given_id else {}
    return {**call, "name": tool.name, "args": tool.value}


class GeminiWire(Wire):
    """`models/{model}:generateContent` bodies; `:streamGenerateContent?alt=sse` chunks with no sentinel,
    the last one holding `finishReason` and the usage totals. No rate-limit headers."""

    name = "gemini"
    request_id_header = ""
    json_type = "application/json; charset=UTF-8"

    # -- success ----------------------------------------------------------------------------

    @staticmethod
    def _usage(outcome: Outcome, *, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": outcome.input_tokens}
        if final:
            usage["candidatesTokenCount"] = outcome.output_tokens
        usage["totalTokenCount"] = outcome.total_tokens if final else outcome.input_tokens
        if outcome.cached_tokens:
            usage["cachedContentTokenCount"] = outcome.cached_tokens
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": outcome.input_tokens}]
        return usage

    def _response(
        self, call: Call, outcome: Outcome, text: str | None, final: bool, tools: tuple[RenderedTool, ...] = ()
    ) -> dict[str, Any]:
        """One GenerateContentResponse: a candidate with `text` and `tools` (text None: no candidate at all)."""
        body: dict[str, Any] = {}
        if text is None:
            body["candidates"] = []
            if outcome.finish == "content_filter":
                body = {
                    "promptFeedback": {
                        "blockReason": "SAFETY",
                        "safetyRatings": [
                            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
                        ],
                    }
                }
        else:
            parts: list[Any] = [{"text": text}] if text or not tools else []
            parts += [{"functionCall": _function_call(t)} for t in tools]
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if final and outcome.finish is not None:
                candidate["finishReason"] = protocol_finish(self.name, outcome.finish)
            candidate["index"] = 0
            body["candidates"] = [candidate]
        body["usageMetadata"] = self._usage(outcome, final=final)
        body["modelVersion"] = outcome.model
        body["responseId"] = call.id
        return body

    @staticmethod
    def _no_candidate(outcome: Outcome) -> bool:
        # Empty (no finish reason) and a blocked prompt come without candidates
        no_text = not outcome.text and not outcome.tool_calls
        return no_text and (outcome.finish is None or outcome.finish == "content_filter")

    def body(self, call: Call, outcome: Outcome) -> Any:
        text = None if self._no_candidate(outcome) else outcome.text
        return self._response(call, outcome, text, True, outcome.tool_calls)

    def stream_piece(self, call: Call, outcome: Outcome, piece: str, final: bool) -> str:
        return "data: " + dumps(self._response(call, outcome, piece, final)) + "\r\n\r\n"

    def stream_tools(self, call: Call, outcome: Outcome) -> str:
        """One chunk per whole `functionCall` part (Gemini streams no partial arguments); the last one
        carries the finish reason and the usage totals."""
        last = len(outcome.tool_calls) - 1
        return "".join(
            "data: " + dumps(self._response(call, outcome, "", i == last, (tool,))) + "\r\n\r\n"
            for i, tool in enumerate(outcome.tool_calls)
        )

    def stream_tail(self, call: Call, outcome: Outcome) -> str:
        if outcome.chunks or outcome.tool_calls:
            return ""  # the last piece carried finishReason: the stream simply ends
        text = None if self._no_candidate(outcome) else ""
        return "data: " + dumps(self._response(call, outcome, text, True)) + "\r\n\r\n"

    # -- faults -----------------------------------------------------------------------------

    def stream_error(self, call: Call, kind: str) -> str:
        if kind == "overloaded":
            body = _error(503, "UNAVAILABLE", _OVERLOADED)
        elif kind == "rate_limit":
            body = self.rate_limited(call, RateLimited())[1]
        else:
            body = _error(500, "INTERNAL", _INTERNAL)
        # errors inside a stream come as bare JSON lines, without `data:`
        return dumps(body) + "\n"

    def malformed_body(self, call: Call) -> str:
        return '{"candidates":[{"content":{"parts":[{"text":"Simulated bro'

    def malformed_event(self, call: Call) -> str:
        return 'data: {"candidates":[{"content":{"parts":[{"te\r\n\r\n'

    def rate_limited(self, call: Call, b: RateLimited) -> tuple[int, Any, dict[str, str]]:
        hint = retry_hint_s(b)
        retry_s = hint if hint is not None else IMPLIED_RETRY_S
        limit = amount_text(b.limit) if b.limit is not None else "10"
        if b.metric == "tokens":
            quota_id, metric = "GenerateContentInputTokensPerModelPerMinute-FreeTier", _FREE_TIER_TOKENS
        else:
            quota_id, metric = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", _FREE_TIER_METRIC
        details = _quota_details(call.model, quota_id, limit, retry_s, metric)
        return 429, _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", details), {}

    def quota_exceeded(self, call: Call, b: QuotaExceeded) -> tuple[int, Any, dict[str, str]]:
        message = (
            "You exceeded your current quota, please check your plan and billing details. For more information "
            "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
            f"* Quota exceeded for metric: {_FREE_TIER_METRIC}, limit: 250, model: {call.model}\n"
            "Please retry in 32.5s."
        )
        # a daily quota still carries retryDelay, as real ones do; retrying is pointless anyway
        details = _quota_details(call.model, "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250", 32)
        return 429, _error(429, "RESOURCE_EXHAUSTED", message, details), {}

    def unauthorized(self, call: Call, b: Unauthorized) -> tuple[int, Any, dict[str, str]]:
        message = "API key not valid. Please pass a valid API key."
        details = [
            {
                "@type": _TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": message},
        ]
        return 400, _error(400, "INVALID_ARGUMENT", message, details), {}

    def forbidden(self, call: Call, b: Forbidden) -> tuple[int, Any, dict[str, str]]:
        return 403, _error(403, "PERMISSION_DENIED", "The caller does not have permission"), {}

    def not_found(self, call: Call, b: NotFound) -> tuple[int, Any, dict[str, str]]:
        message = (
            f"models/{call.model} is not found for API version v1beta, or is not supported for generateContent. "
            "Call ListModels to see the list of available models and their supported methods."
        )
        return 404, _error(404, "NOT_FOUND", message), {}

    def server_error(self, call: Call, b: ServerError) -> tuple[int, Any, dict[str, str]]:
        if b.status == 504:
            return 504, _error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), {}
        return b.status, _error(b.status, "INTERNAL", _INTERNAL), {}

    def overloaded(self, call: Call, b: Overloaded) -> tuple[int, Any, dict[str, str]]:
        return 503, _error(503, "UNAVAILABLE", _OVERLOADED), {}

    def context_overflow(self, call: Call, b: ContextOverflow) -> tuple[int, Any, dict[str, str]]:
        message = (
            f"The input token count ({overflow_tokens(call, b)}) exceeds the maximum number of tokens "
            f"allowed ({b.limit})."
        )
        return 400, _error(400, "INVALID_ARGUMENT", message), {}

    def bad_request(self, call: Call, message: str, param: str | None = None) -> tuple[int, Any]:
        return 400, _error(400, "INVALID_ARGUMENT", message)

    def unsupported(self, call: Call, feature: str, where: str) -> tuple[int, Any]:
        # multimodal_tools.md section 3; the image wording is google/generative-ai-docs#513's
        message = {
            "vision": f"Image input modality is not enabled for models/{call.model}",
            "tools": f"Function calling is not enabled for models/{call.model}",
        }.get(feature, f"Json mode is not enabled for models/{call.model}")
        return 400, _error(400, "INVALID_ARGUMENT", message)

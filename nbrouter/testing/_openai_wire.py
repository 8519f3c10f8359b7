"""OpenAI chat completions on the wire, and OpenRouter's variant of it (providers.md sections 1 and 4)."""

from __future__ import annotations

from typing import Any, Mapping

from ._wire import (
    COST_PER_TOKEN,
    Call,
    Outcome,
    Wire,
    amount_text,
    argument_pieces,
    dumps,
    go_duration,
    masked,
    overflow_tokens,
    protocol_finish,
    retry_hint_s,
    seconds_text,
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

_SERVER_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}


def _error(message: str, etype: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


class OpenAIWire(Wire):
    """`POST /v1/chat/completions`: `chat.completion` bodies, `chat.completion.chunk` SSE ending `[DONE]`."""

    name = "openai"
    request_id_header = "x-request-id"

    def rate_limit_headers(self, limits: Mapping[str, float]) -> dict[str, str]:
        out: dict[str, str] = {}
        for field in ("limit_requests", "limit_tokens", "remaining_requests", "remaining_tokens"):
            if field in limits:
                out["x-ratelimit-" + field.replace("_", "-")] = str(int(limits[field]))
        for what in ("requests", "tokens"):
            reset = limits.get(f"reset_{what}_s", limits.get("reset_s"))
            if reset is not None:
                out[f"x-ratelimit-reset-{what}"] = go_duration(float(reset))
        return out

    # -- success ----------------------------------------------------------------------------

    def completion_id(self, call: Call) -> str:
        return "chatcmpl-" + call.id

    def usage(self, outcome: Outcome) -> dict[str, Any]:
        return {
            "prompt_tokens": outcome.input_tokens,
            "completion_tokens": outcome.output_tokens,
            "total_tokens": outcome.total_tokens,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def extras(self) -> dict[str, Any]:
        """Top-level fields this flavour adds to bodies and chunks."""
        return {"service_tier": "default", "system_fingerprint": "fp_simulated"}

    def body(self, call: Call, outcome: Outcome) -> Any:
        silent = outcome.finish == "content_filter" or outcome.finish is None or bool(outcome.tool_calls)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": outcome.text or (None if silent else ""),
            "refusal": None,
            "annotations": [],
        }
        if outcome.tool_calls:
            message["tool_calls"] = [
                {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.text}} for t in outcome.tool_calls
            ]
        return {
            "id": self.completion_id(call),
            "object": "chat.completion",
            "created": call.created,
            "model": outcome.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": protocol_finish(self.name, outcome.finish),
                }
            ],
            "usage": self.usage(outcome),
            **self.extras(),
        }

    def _chunk(self, call: Call, outcome: Outcome, choices: list[Any], usage: Any = None, *, last: bool = False) -> str:
        chunk: dict[str, Any] = {
            "id": self.completion_id(call),
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": outcome.model,
            **self.extras(),
            "choices": choices,
        }
        if self.sends_usage(call):
            chunk["usage"] = usage if last else None
        return "data: " + dumps(chunk) + "\n\n"

    def sends_usage(self, call: Call) -> bool:
        return call.include_usage

    def stream_head(self, call: Call, outcome: Outcome) -> str:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._chunk(call, outcome, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def stream_piece(self, call: Call, outcome: Outcome, piece: str, final: bool) -> str:
        choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
        return self._chunk(call, outcome, [choice])

    def stream_tools(self, call: Call, outcome: Outcome) -> str:
        """Per call: a delta with its index, id, name and empty arguments, then the arguments in pieces."""
        out = ""
        for index, tool in enumerate(outcome.tool_calls):
            start = {"index": index, "id": tool.id, "type": "function", "function": {"name": tool.name, "arguments": ""}}
            out += self._chunk(call, outcome, [{"index": 0, "delta": {"tool_calls": [start]}, "logprobs": None, "finish_reason": None}])
            for piece in argument_pieces(tool.text):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                out += self._chunk(call, outcome, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        return out

    def stream_tail(self, call: Call, outcome: Outcome) -> str:
        out = ""
        if outcome.finish is not None:
            finish = protocol_finish(self.name, outcome.finish)
            out += self._chunk(call, outcome, [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if self.sends_usage(call):
            out += self._chunk(call, outcome, [], self.usage(outcome), last=True)
        return out + "data: [DONE]\n\n"

    # -- faults -----------------------------------------------------------------------------

    def stream_error(self, call: Call, kind: str) -> str:
        if kind == "overloaded":
            body = _error(_SERVER_MESSAGES[503], "service_unavailable_error", "server_is_overloaded")
        elif kind == "rate_limit":
            body = _error(self._rate_text(call.model, None), "requests", "rate_limit_exceeded")
        else:
            body = _error(_SERVER_MESSAGES[500], "server_error", None)
        return "data: " + dumps(body) + "\n\n"

    def malformed_body(self, call: Call) -> str:
        return '{"id":"' + self.completion_id(call) + '","object":"chat.completion","choices":[{"index":0,"message":{"role":"assis'

    def malformed_event(self, call: Call) -> str:
        return 'data: {"id":"' + self.completion_id(call) + '","object":"chat.completion.chunk","choices":[{"delta":{"content":"br\n\n'

    @staticmethod
    def _rate_text(model: str, wait: float | None, b: RateLimited | None = None) -> str:
        after = f"Please try again in {go_duration(wait)}. " if wait is not None else ""
        b = b or RateLimited()
        day = b.window_s >= 86400
        what = ("requests per day (RPD)" if day else "requests per min (RPM)") if b.metric == "requests" else (
            "tokens per day (TPD)" if day else "tokens per min (TPM)")
        limit = amount_text(b.limit) if b.limit is not None else "3"
        used = amount_text(b.used) if b.used is not None else limit
        requested = amount_text(b.requested) if b.requested is not None else "1"
        return (
            f"Rate limit reached for {model} in organization org-simulated on {what}: "
            f"Limit {limit}, Used {used}, Requested {requested}. {after}"
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )

    def rate_limited(self, call: Call, b: RateLimited) -> tuple[int, Any, dict[str, str]]:
        headers: dict[str, str] = {}
        if b.retry_after is not None:
            headers["retry-after"] = seconds_text(b.retry_after)
        if b.retry_after_ms is not None:
            headers["retry-after-ms"] = seconds_text(b.retry_after_ms)
        body = _error(self._rate_text(call.model, retry_hint_s(b), b), b.metric, "rate_limit_exceeded")
        return 429, body, headers

    def quota_exceeded(self, call: Call, b: QuotaExceeded) -> tuple[int, Any, dict[str, str]]:
        message = (
            "You exceeded your current quota, please check your plan and billing details. For more information "
            "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return 429, _error(message, "insufficient_quota", "insufficient_quota"), {}

    def unauthorized(self, call: Call, b: Unauthorized) -> tuple[int, Any, dict[str, str]]:
        message = (
            f"Incorrect API key provided: {masked(call.key)}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return 401, _error(message, "invalid_request_error", "invalid_api_key"), {}

    def forbidden(self, call: Call, b: Forbidden) -> tuple[int, Any, dict[str, str]]:
        body = _error("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory")
        return 403, body, {}

    def not_found(self, call: Call, b: NotFound) -> tuple[int, Any, dict[str, str]]:
        message = f"The model `{call.model}` does not exist or you do not have access to it."
        return 404, _error(message, "invalid_request_error", "model_not_found"), {}

    def server_error(self, call: Call, b: ServerError) -> tuple[int, Any, dict[str, str]]:
        message = _SERVER_MESSAGES.get(b.status, _SERVER_MESSAGES[500])
        return b.status, _error(message, "server_error", None), {}

    def overloaded(self, call: Call, b: Overloaded) -> tuple[int, Any, dict[str, str]]:
        return 503, _error(_SERVER_MESSAGES[503], "service_unavailable_error", "server_is_overloaded"), {}

    def context_overflow(self, call: Call, b: ContextOverflow) -> tuple[int, Any, dict[str, str]]:
        message = (
            f"This model's maximum context length is {b.limit} tokens. However, your messages resulted in "
            f"{overflow_tokens(call, b)} tokens. Please reduce the length of the messages."
        )
        return 400, _error(message, "invalid_request_error", "context_length_exceeded", "messages"), {}

    def bad_request(self, call: Call, message: str, param: str | None = None) -> tuple[int, Any]:
        return 400, _error(message, "invalid_request_error", None, param)

    def unsupported(self, call: Call, feature: str, where: str) -> tuple[int, Any]:
        # multimodal_tools.md section 1: the errors of models without images, tools or JSON modes
        if feature == "vision":
            message = "Invalid content type. image_url is only supported by certain models."
            return 400, _error(message, "invalid_request_error", None, where + ".type")
        if feature == "tools":
            message = (
                "tools is not supported in this model. For a list of supported models, refer to "
                "https://platform.openai.com/docs/guides/function-calling#models-supporting-function-calling."
            )
            return 400, _error(message, "invalid_request_error", None, "tools")
        message = f"Invalid parameter: 'response_format' of type '{feature}' is not supported with this model."
        if feature == "json_schema":
            message += (
                " Learn more about supported models at the Structured Outputs guide: "
                "https://platform.openai.com/docs/guides/structured-outputs"
            )
        return 400, _error(message, "invalid_request_error", None, "response_format")


def _or_error(code: int, message: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "code": code}
    if metadata is not None:
        err["metadata"] = metadata
    return {"error": err}


class OpenRouterWire(OpenAIWire):
    """OpenRouter: OpenAI's format plus `usage.cost`, `X-Generation-Id`, keep-alive comments and
    `{"error": {"code": <number>, "message": ...}}` errors."""

    name = "openrouter"
    request_id_header = "x-generation-id"

    def request_id(self, call: Call) -> str:
        return "gen-" + call.id

    def completion_id(self, call: Call) -> str:
        return "gen-" + call.id

    def extras(self) -> dict[str, Any]:
        return {"provider": "Simulated"}

    def usage(self, outcome: Outcome) -> dict[str, Any]:
        usage = super().usage(outcome)
        cost = outcome.cost if outcome.cost is not None else COST_PER_TOKEN * outcome.total_tokens
        usage["cost"] = cost
        usage["is_byok"] = False
        usage["cost_details"] = {"upstream_inference_cost": None}
        return usage

    def sends_usage(self, call: Call) -> bool:
        # usage accounting is always on now; include_usage has no effect (providers.md section 4)
        return True

    def body(self, call: Call, outcome: Outcome) -> Any:
        body = super().body(call, outcome)
        body["choices"][0]["native_finish_reason"] = body["choices"][0]["finish_reason"]
        return body

    def stream_head(self, call: Call, outcome: Outcome) -> str:
        return ": OPENROUTER PROCESSING\n\n" + super().stream_head(call, outcome)

    def stream_error(self, call: Call, kind: str) -> str:
        code, message = {
            "overloaded": (503, "Provider overloaded"),
            "rate_limit": (429, "Provider returned error: rate limit exceeded"),
        }.get(kind, (502, "Provider disconnected unexpectedly"))
        chunk = {
            "id": self.completion_id(call),
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "provider": "Simulated",
            "error": {"code": code, "message": message},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        return "data: " + dumps(chunk) + "\n\n"

    def rate_limited(self, call: Call, b: RateLimited) -> tuple[int, Any, dict[str, str]]:
        headers: dict[str, str] = {}
        if b.retry_after is not None:
            headers["retry-after"] = seconds_text(b.retry_after)
        elif b.retry_after_ms is not None:
            headers["retry-after"] = seconds_text(max(1, round(b.retry_after_ms / 1000)))
        body = _or_error(429, f"Rate limit exceeded: {call.model} is temporarily rate-limited upstream.")
        return 429, body, headers

    def quota_exceeded(self, call: Call, b: QuotaExceeded) -> tuple[int, Any, dict[str, str]]:
        return 402, _or_error(402, "Insufficient credits. Add more using https://openrouter.ai/settings/credits"), {}

    def unauthorized(self, call: Call, b: Unauthorized) -> tuple[int, Any, dict[str, str]]:
        return 401, _or_error(401, "User not found."), {}

    def forbidden(self, call: Call, b: Forbidden) -> tuple[int, Any, dict[str, str]]:
        return 403, _or_error(403, "Request blocked by a guardrail on this API key."), {}

    def not_found(self, call: Call, b: NotFound) -> tuple[int, Any, dict[str, str]]:
        return 404, _or_error(404, f"No endpoints found for {call.model}."), {}

    def server_error(self, call: Call, b: ServerError) -> tuple[int, Any, dict[str, str]]:
        message = {502: "Provider returned error", 504: "Gateway timeout"}.get(b.status, "Internal Server Error")
        return b.status, _or_error(b.status, message), {}

    def overloaded(self, call: Call, b: Overloaded) -> tuple[int, Any, dict[str, str]]:
        return 503, _or_error(503, f"No available provider for {call.model} can serve this request right now."), {}

    def context_overflow(self, call: Call, b: ContextOverflow) -> tuple[int, Any, dict[str, str]]:
        tokens = overflow_tokens(call, b)
        message = (
            f"This endpoint's maximum context length is {b.limit} tokens. However, you requested about "
            f"{tokens} tokens ({tokens} of text input). Please reduce the length of either one, or use the "
            '"middle-out" transform to compress your prompt automatically.'
        )
        return 400, _or_error(400, message), {}

    def bad_request(self, call: Call, message: str, param: str | None = None) -> tuple[int, Any]:
        return 400, _or_error(400, message)

    def unsupported(self, call: Call, feature: str, where: str) -> tuple[int, Any]:
        # OpenRouter finds no endpoint for the model that takes the feature (multimodal_tools.md section 1)
        message = {
            "vision": "No endpoints found that support image input",
            "tools": "No endpoints found that support tool use",
        }.get(feature, "No endpoints found that can handle the requested parameters.")
        return 404, _or_error(404, message)

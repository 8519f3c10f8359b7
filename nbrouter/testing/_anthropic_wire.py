"""Anthropic's Messages API on the wire (providers.md section 2)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from ._wire import (
    IMPLIED_RETRY_S,
    Call,
    Outcome,
    Wire,
    amount_text,
    argument_pieces,
    dumps,
    overflow_tokens,
    per_window,
    protocol_finish,
    retry_hint_s,
    rfc3339_in,
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


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {dumps(data)}\n\n"


class AnthropicWire(Wire):
    """`POST /v1/messages`: `message` bodies; named SSE events from `message_start` to `message_stop`."""

    name = "anthropic"
    request_id_header = "request-id"

    def rate_limit_headers(self, limits: Mapping[str, float]) -> dict[str, str]:
        out: dict[str, str] = {}
        for what in ("requests", "tokens"):
            if f"limit_{what}" in limits:
                out[f"anthropic-ratelimit-{what}-limit"] = str(int(limits[f"limit_{what}"]))
            if f"remaining_{what}" in limits:
                out[f"anthropic-ratelimit-{what}-remaining"] = str(int(limits[f"remaining_{what}"]))
            reset = limits.get(f"reset_{what}_s", limits.get("reset_s"))
            if reset is not None:
                out[f"anthropic-ratelimit-{what}-reset"] = rfc3339_in(float(reset), self.wall())
        return out

    # -- success ----------------------------------------------------------------------------

    @staticmethod
    def _usage(outcome: Outcome, output_tokens: int) -> dict[str, Any]:
        # input_tokens leaves the cached part out: total input = input + cache_creation + cache_read
        return {
            "input_tokens": outcome.input_tokens - outcome.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": outcome.cached_tokens,
            "output_tokens": output_tokens,
        }

    def _message(self, call: Call, outcome: Outcome, content: list[Any], stop: str | None, output_tokens: int) -> dict[str, Any]:
        usage = self._usage(outcome, output_tokens)
        usage["service_tier"] = "standard"
        return {
            "id": "msg_" + call.id,
            "type": "message",
            "role": "assistant",
            "model": outcome.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def body(self, call: Call, outcome: Outcome) -> Any:
        content: list[Any] = [{"type": "text", "text": outcome.text}] if outcome.text or outcome.finish == "stop" else []
        content += [{"type": "tool_use", "id": t.id, "name": t.name, "input": t.value} for t in outcome.tool_calls]
        return self._message(call, outcome, content, protocol_finish(self.name, outcome.finish), outcome.output_tokens)

    def stream_head(self, call: Call, outcome: Outcome) -> str:
        start = _event("message_start", {"type": "message_start", "message": self._message(call, outcome, [], None, 1)})
        if not outcome.chunks:
            return start + _event("ping", {"type": "ping"})
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return start + _event("content_block_start", block) + _event("ping", {"type": "ping"})

    def stream_piece(self, call: Call, outcome: Outcome, piece: str, final: bool) -> str:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        return _event("content_block_delta", delta)

    def stream_tools(self, call: Call, outcome: Outcome) -> str:
        """The text block's stop, then per call a `tool_use` block: start, `input_json_delta` pieces, stop."""
        if not outcome.tool_calls:
            return ""
        out = _event("content_block_stop", {"type": "content_block_stop", "index": 0}) if outcome.chunks else ""
        for index, tool in enumerate(outcome.tool_calls, start=1 if outcome.chunks else 0):
            block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
            out += _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            for piece in argument_pieces(tool.text):
                delta = {"type": "input_json_delta", "partial_json": piece}
                out += _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            out += _event("content_block_stop", {"type": "content_block_stop", "index": index})
        return out

    def stream_tail(self, call: Call, outcome: Outcome) -> str:
        text_open = outcome.chunks and not outcome.tool_calls  # stream_tools closed it otherwise
        out = _event("content_block_stop", {"type": "content_block_stop", "index": 0}) if text_open else ""
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": protocol_finish(self.name, outcome.finish), "stop_sequence": None},
            # cumulative counts, output final here
            "usage": self._usage(outcome, outcome.output_tokens),
        }
        return out + _event("message_delta", delta) + _event("message_stop", {"type": "message_stop"})

    # -- faults -----------------------------------------------------------------------------

    def _error(self, call: Call, etype: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"type": etype, "message": message}
        if details is not None:
            err["details"] = details
        return {"type": "error", "error": err, "request_id": self.request_id(call)}

    def stream_error(self, call: Call, kind: str) -> str:
        etype, message = {
            "overloaded": ("overloaded_error", "Overloaded"),
            "rate_limit": ("rate_limit_error", "This request would exceed your organization's rate limit."),
        }.get(kind, ("api_error", "Internal server error"))
        return _event("error", {"type": "error", "error": {"type": etype, "message": message}})

    def malformed_body(self, call: Call) -> str:
        return '{"id":"msg_' + call.id + '","type":"message","role":"assistant","content":[{"type":"te'

    def malformed_event(self, call: Call) -> str:
        return 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_del\n\n'

    def rate_limited(self, call: Call, b: RateLimited) -> tuple[int, Any, dict[str, str]]:
        # a rate limit always carries retry-after; the spend-limit 429 is the one without it
        hint = retry_hint_s(b)
        headers = {"retry-after": seconds_text(math.ceil(hint)) if hint is not None else str(IMPLIED_RETRY_S)}
        if b.retry_after_ms is not None:
            headers["retry-after-ms"] = seconds_text(b.retry_after_ms)
        limit = amount_text(b.limit) if b.limit is not None else "50"
        what = "requests" if b.metric == "requests" else "input tokens"
        message = (
            f"This request would exceed the rate limit for your organization of {limit} {what} per "
            f"{per_window(b.window_s)}. For details, refer to: https://docs.claude.com/en/api/rate-limits."
        )
        return 429, self._error(call, "rate_limit_error", message), headers

    def quota_exceeded(self, call: Call, b: QuotaExceeded) -> tuple[int, Any, dict[str, str]]:
        message = (
            "Your organization has reached its monthly spend limit. "
            "Access resumes at 00:00 UTC on the 1st of next month."
        )
        details = {"error_code": "enforced_spend_limit_reached"}
        return 429, self._error(call, "rate_limit_error", message, details), {}

    def unauthorized(self, call: Call, b: Unauthorized) -> tuple[int, Any, dict[str, str]]:
        return 401, self._error(call, "authentication_error", "invalid x-api-key"), {}

    def forbidden(self, call: Call, b: Forbidden) -> tuple[int, Any, dict[str, str]]:
        message = "Your API key does not have permission to use the specified resource."
        return 403, self._error(call, "permission_error", message), {}

    def not_found(self, call: Call, b: NotFound) -> tuple[int, Any, dict[str, str]]:
        return 404, self._error(call, "not_found_error", f"model: {call.model}"), {}

    def server_error(self, call: Call, b: ServerError) -> tuple[int, Any, dict[str, str]]:
        if b.status == 504:
            return 504, self._error(call, "timeout_error", "Request timed out"), {}
        return b.status, self._error(call, "api_error", "Internal server error"), {}

    def overloaded(self, call: Call, b: Overloaded) -> tuple[int, Any, dict[str, str]]:
        return 529, self._error(call, "overloaded_error", "Overloaded"), {}

    def context_overflow(self, call: Call, b: ContextOverflow) -> tuple[int, Any, dict[str, str]]:
        message = f"prompt is too long: {overflow_tokens(call, b)} tokens > {b.limit} maximum"
        return 400, self._error(call, "invalid_request_error", message), {}

    def bad_request(self, call: Call, message: str, param: str | None = None) -> tuple[int, Any]:
        return 400, self._error(call, "invalid_request_error", message)

    def unsupported(self, call: Call, feature: str, where: str) -> tuple[int, Any]:
        # structured output: the real refusal (multimodal_tools.md section 2); for images and tools the
        # first-party wording is not established, so these messages are the simulator's, in the same style
        if feature == "vision":
            message = f"{where.rsplit('.image.', 1)[0]}: This model does not support image input."
        elif feature == "tools":
            message = "tools: This model does not support tool use."
        else:
            message = "output_config.format: Extra inputs are not permitted"
        return 400, self._error(call, "invalid_request_error", message)

"""Why an attempt failed: the error kinds every layer speaks (routing.md section 5)."""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    """Why an attempt failed; each kind has one default action (routing.md section 5)."""

    RATE_LIMIT = "rate_limit"
    QUOTA_EXCEEDED = "quota_exceeded"
    AUTH = "auth"
    ACCOUNT_LOCKED = "account_locked"
    MODEL_NOT_FOUND = "model_not_found"
    #: a 404 that names no model: the account's base_url looks wrong (every model there would answer so)
    ENDPOINT_NOT_FOUND = "endpoint_not_found"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    NETWORK = "network"
    STREAM_INTERRUPTED = "stream_interrupted"
    EMPTY_RESPONSE = "empty_response"
    CONTEXT_OVERFLOW = "context_overflow"
    CONTENT_FILTER = "content_filter"
    INVALID_REQUEST = "invalid_request"
    CANCELLED = "cancelled"
    MALFORMED_RESPONSE = "malformed_response"
    UNSUPPORTED = "unsupported"
    INVALID_OUTPUT = "invalid_output"

    def __str__(self) -> str:
        return self.value

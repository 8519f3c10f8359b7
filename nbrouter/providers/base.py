"""What every wire protocol module provides, and the values it hands back to the router.

A protocol module knows how to build a request, parse a response or a stream, read rate-limit headers
and classify a failure into an :class:`~nbrouter._core.ErrorKind`. It never decides what to do
about a failure: that is the router's policy.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping

from .._core import ErrorKind, ProviderFailure, RateLimits, Usage  # noqa: F401 - re-exported for the protocol modules


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to send: one provider account, resolved at call time."""

    provider: str
    protocol: str
    base_url: str
    api_key: str | None = None
    preset: str | None = None
    local: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ChatRequest:
    """A provider-neutral chat request."""

    model: str
    messages: list[dict[str, Any]]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    #: OpenRouter only: the whole fallback list, sent as one request with the `models` array.
    models: list[str] | None = None


@dataclass
class Completion:
    """A successful answer as the wire gave it."""

    text: str
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    rate_limits: RateLimits | None = None
    #: a cost the provider itself reported (OpenRouter's `usage.cost`)
    reported_cost: Decimal | None = None
    warning: str | None = None
    #: set when the provider routed internally (OpenRouter `models`): which model served
    served_model: str | None = None


@dataclass
class SSEEvent:
    """One server-sent event: its name (may be empty) and its data lines joined."""

    event: str
    data: str


class StreamDecoder(abc.ABC):
    """Turns one response's SSE events into text deltas; keeps what the final Completion needs."""

    #: True once the protocol's terminator (or final chunk) has been seen
    done: bool = False

    @abc.abstractmethod
    def feed(self, event: SSEEvent) -> str | None:
        """Take one event; return new text or None. Raise ProviderFailure for an error event."""

    @abc.abstractmethod
    def finish(self) -> Completion:
        """The completed answer. Raise ProviderFailure when the stream ended without its terminator."""


class WireProtocol(abc.ABC):
    """One wire protocol (OpenAI chat completions, Anthropic messages, Gemini generateContent)."""

    name: str = ""

    @abc.abstractmethod
    def build(self, endpoint: Endpoint, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
        """URL, headers and JSON body for this request."""

    @abc.abstractmethod
    def parse(self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any) -> Completion:
        """Parse a 2xx JSON body. Raise ProviderFailure when the body says it failed."""

    @abc.abstractmethod
    def decoder(self, endpoint: Endpoint, request: ChatRequest) -> StreamDecoder:
        """A fresh decoder for one streamed response."""

    @abc.abstractmethod
    def classify(
        self, endpoint: Endpoint, status: int, headers: Mapping[str, str], body: Any, text: str
    ) -> ProviderFailure:
        """Classify a non-2xx response (`body` is the parsed JSON or None, `text` the raw body)."""

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits | None:
        """Quota headroom from response headers; None when the provider sent none."""
        return None

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        for name in ("x-request-id", "request-id", "x-generation-id"):
            value = headers.get(name)
            if value:
                return value
        return None

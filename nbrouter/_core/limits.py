"""What a provider's rate-limit headers said about an account's headroom."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RateLimits:
    """What a provider's rate-limit headers said about an account's remaining headroom."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_at: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_at: float | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())

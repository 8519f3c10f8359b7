"""The one failure type of an attempt: a provider's answer (or silence), classified into an ErrorKind."""

from __future__ import annotations

from .kinds import ErrorKind
from .limits import RateLimits
from .usage import Usage


class ProviderFailure(Exception):
    """A classified failure of one attempt. The message never holds a secret."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        reset_at: float | None = None,
        request_id: str | None = None,
        rate_limits: RateLimits | None = None,
        partial_text: str = "",
        usage: Usage | None = None,
        model: str | None = None,
        refused: bool = False,
        start_failed: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.reset_at = reset_at
        self.request_id = request_id
        self.rate_limits = rate_limits
        self.partial_text = partial_text
        self.usage = usage
        self.model = model
        #: a refused connection (a local server that is not running): the breaker opens at once
        self.refused = refused
        #: a managed local server could not be started (the policy holds its account for a while)
        self.start_failed = start_failed

    def __repr__(self) -> str:
        return f"ProviderFailure({self.kind.value}, status={self.status}, {self.message!r})"

"""A simulated batch job's life, worked out from its script and the clock: no timers, no background work.

A job knows when it was created, when each line finishes (or that it never does), and when it was asked
to cancel; `phase(now)` says where it stands at any moment, so a ManualClock moved forward between two
polls finds it validated, running, finalizing or ended exactly as the script says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .batches import BatchScript


@dataclass
class LineResult:
    """What one line came to, rendered when the job was created and revealed when the line finishes."""

    #: "succeeded" | "errored" | "malformed" | "never" (the line does not finish)
    kind: str
    status: int = 200
    #: the response body (succeeded) or the protocol's error body (errored); for "malformed", the text
    body: Any = None
    request_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class BatchLine:
    custom_id: str
    index: int
    model: str
    result: LineResult
    #: the wall time it finishes on the simulator's clock (None: never)
    done_at: float | None


@dataclass
class Phase:
    """A job at one moment: its status (OpenAI's words), the lines finished, and the unfinished ones."""

    status: str
    done: list[BatchLine]
    pending: list[BatchLine]
    #: when each status was entered, for the `*_at` stamps (only those reached by now)
    stamps: dict[str, float] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "expired", "cancelled")

    @property
    def ended_at(self) -> float | None:
        return self.stamps.get(self.status) if self.ended else None

    @property
    def cut(self) -> str | None:
        """Why the pending lines will never run: "expired" | "cancelled" (None while the job may still run them)."""
        return self.status if self.status in ("expired", "cancelled") else None


@dataclass
class BatchJob:
    """One job: who made it, what it holds, its script, and the moments that decide its phase."""

    id: str
    protocol: str
    key: str | None
    model: str
    created: float
    script: BatchScript
    lines: list[BatchLine]
    window_s: float
    #: protocol-specific facts the renderers need (input file, endpoint, display name, metadata, mode)
    extra: dict[str, Any] = field(default_factory=dict)
    #: a whole-job failure found at validation: [{code, line, message, param}] (OpenAI's `errors.data`)
    failure: list[dict[str, Any]] | None = None
    cancel_at: float | None = None

    @property
    def validated_at(self) -> float:
        return self.created + (0.0 if self.protocol == "anthropic" else self.script.validate_s)

    @property
    def expires_at(self) -> float:
        return self.created + self.window_s

    def completes_at(self) -> float | None:
        """When the job would complete untouched (every line done before expiry, then finalizing), or None."""
        ends = [line.done_at for line in self.lines]
        if any(t is None or t > self.expires_at for t in ends):
            return None
        last = max((t for t in ends if t is not None), default=self.validated_at)
        finalize = self.script.finalize_s if self.protocol == "openai" else 0.0  # only OpenAI has `finalizing`
        return last + finalize

    def natural_end(self) -> float:
        """When the job ends on its own: completed, failed at validation, or expired."""
        if self.failure is not None:
            return self.validated_at
        completes = self.completes_at()
        return completes if completes is not None else self.expires_at

    def phase(self, now: float) -> Phase:
        """Where the job stands at `now`."""
        stamps: dict[str, float] = {"validating": self.created}
        if self.failure is not None:
            if now < self.validated_at:
                return Phase("validating", [], list(self.lines), stamps)
            return Phase("failed", [], list(self.lines), {**stamps, "failed": self.validated_at})
        cancel_at = self.cancel_at if self.cancel_at is not None and self.cancel_at < self.natural_end() else None
        cut = cancel_at if cancel_at is not None else self.expires_at
        until = min(now, cut)
        done: list[BatchLine] = []
        pending: list[BatchLine] = []
        for line in self.lines:
            (done if line.done_at is not None and line.done_at <= until else pending).append(line)
        if now >= self.validated_at:
            stamps["in_progress"] = self.validated_at
        if cancel_at is not None and now >= cancel_at:
            stamps["cancelling"] = cancel_at
            ended = cancel_at + self.script.cancel_s
            if now < ended:
                return Phase("cancelling", done, pending, stamps)
            return Phase("cancelled", done, pending, {**stamps, "cancelled": ended})
        if now < self.validated_at:
            return Phase("validating", done, pending, stamps)
        completes = self.completes_at()
        if completes is None:
            if now < self.expires_at:
                return Phase("in_progress", done, pending, stamps)
            return Phase("expired", done, pending, {**stamps, "expired": self.expires_at})
        last = max((line.done_at for line in self.lines if line.done_at is not None), default=self.validated_at)
        if now < last:
            return Phase("in_progress", done, pending, stamps)
        stamps["finalizing"] = last
        if now < completes:
            return Phase("finalizing", done, pending, stamps)
        return Phase("completed", done, pending, {**stamps, "completed": completes})


__all__ = ["BatchJob", "BatchLine", "LineResult", "Phase"]

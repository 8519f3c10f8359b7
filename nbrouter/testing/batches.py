"""How a simulated batch job runs: `sim.script_batch(BatchScript(...))`, plain data like the behaviours.

    sim = ProviderSimulator(clock=ManualClock())
    sim.script_batch(BatchScript(line_s=60, lines={"row-2": ServerError(503), "row-3": Hang()}))
    ...                      # create a batch through any of the three APIs, then
    clock.advance(3600)      # poll it: it has validated, run, and expired with row-3 unfinished

A job goes through its provider's statuses on the simulator's clock (batch_apis.md section 6): it
validates for `validate_s` (OpenAI `validating`, Gemini `BATCH_STATE_PENDING`; Anthropic starts
`in_progress`), then line i (0-based, input order) finishes `(i + 1) * line_s` later, then OpenAI
finalizes for `finalize_s`. A line's outcome is its behaviour: `lines` by custom id (or by position),
else the simulator's scripts for the line's key and model, as a live call would take them. `Reply`,
`Empty` and `ContentFilter` succeed; a `Failure` errors in the protocol's shape; `Malformed` makes its
result line unreadable JSON; `Hang`, `Drop` and `CutStream` never finish, so the job expires at
`window_s` with them unfinished. `fail` fails the whole job at validation (an OpenAI error code such as
`token_limit_exceeded`); `refuse` answers the create request itself with that error (Gemini's 429).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .behaviours import Behaviour, Failure

#: how long a job may run before it expires, per protocol (Gemini: pending or running for over 48 h)
DEFAULT_WINDOW_S = {"openai": 24 * 3600.0, "anthropic": 24 * 3600.0, "gemini": 48 * 3600.0}
#: the biggest input each provider takes: OpenAI's batch file, Anthropic's create body, Gemini's inline
#: create body (a Gemini file may be 2 GB)
DEFAULT_MAX_BYTES = {"openai": 200 * 1024 * 1024, "anthropic": 256 * 1024 * 1024, "gemini": 20 * 1024 * 1024, "gemini-file": 2 * 1024**3}
#: the most requests one batch takes
DEFAULT_MAX_REQUESTS = {"openai": 50_000, "anthropic": 100_000, "gemini": 1_000_000}
#: the whole-batch failures OpenAI reports in `errors.data` (batch_apis.md section 1)
OPENAI_FAILURES = frozenset(
    {"invalid_json_line", "token_limit_exceeded", "duplicate_custom_id", "url_mismatch", "model_mismatch", "empty_file", "too_many_tasks"}
)


@dataclass(frozen=True)
class BatchScript:
    """How the next batch job (for a key and/or model) runs.

    Args:
        validate_s: seconds of validation before the lines start (Anthropic jobs have none).
        line_s: seconds between one line finishing and the next.
        finalize_s: seconds of OpenAI's `finalizing` after the last line.
        cancel_s: how long `cancelling` / `canceling` lasts after a cancel.
        window_s: when the job expires (None: 24 h, Gemini 48 h).
        lines: behaviours by custom id (a mapping) or by position (a sequence; None items and lines past
            its end take the simulator's scripts).
        fail: fail the whole job at validation with this OpenAI error code (any protocol: the Gemini
            job's `error`; an Anthropic job answers its create with a 400 instead).
        refuse: answer the create request itself with this error, in the protocol's shape.
    """

    validate_s: float = 1.0
    line_s: float = 1.0
    finalize_s: float = 1.0
    cancel_s: float = 1.0
    window_s: float | None = None
    lines: Mapping[str, Behaviour] | Sequence[Behaviour | None] | None = None
    fail: str | None = None
    refuse: Failure | None = None

    def __post_init__(self) -> None:
        for name in ("validate_s", "line_s", "finalize_s", "cancel_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.fail is not None and self.fail not in OPENAI_FAILURES:
            raise ValueError(f"BatchScript fail must be one of {sorted(OPENAI_FAILURES)}, not {self.fail!r}")
        if self.refuse is not None and not isinstance(self.refuse, Failure):
            raise TypeError("BatchScript refuse must be a Failure behaviour (RateLimited, QuotaExceeded, ...)")
        lines = self.lines
        items = list(lines.values()) if isinstance(lines, Mapping) else list(lines or ())
        if not all(item is None or isinstance(item, Behaviour) for item in items):
            raise TypeError("BatchScript lines must be simulator behaviours")

    def behaviour_for(self, custom_id: str, index: int) -> Behaviour | None:
        """The scripted behaviour of one line, or None when the simulator's scripts decide."""
        if isinstance(self.lines, Mapping):
            return self.lines.get(custom_id)
        if self.lines is not None and index < len(self.lines):
            return self.lines[index]
        return None


__all__ = ["BatchScript", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_REQUESTS", "DEFAULT_WINDOW_S", "OPENAI_FAILURES"]

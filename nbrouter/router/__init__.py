"""The router: decides where each call goes and remembers what happened. This module is its one face.

Everything above the router (`nbrouter.notebook`, `nbrouter.__main__`, the package's `__init__`) imports
from here and nowhere deeper; `tests/test_layers.py` holds it. Inside, the parts are folders:

    router/                the vocabulary: types (results, events, and one call's footer, attempt and
                           decision tables), errors, requests, model (the config as data), policy (every
                           number, the table of error kinds), keys, structured output, views (the status
                           and log tables); engine (the Router facade) and status
    router/config/         loading and validating the configuration, writing it back, editing combos,
                           zero-config discovery
    router/decide/         the decider (skip checks), combos, strategies, auto scoring and its packs,
                           pricing, the session budget, token estimates
    router/state/          what is remembered: the backend port (memory, SQLite), the store, health
                           (holds, breakers, latency), pacing
    router/run/            the attempt loop, attempt deadlines, the background event loop, the HTTP
                           senders, the response cache
    router/batch/          batch work: items, the dispatcher, the executor port, the result

The ports (something a user or a test swaps), each a typed protocol accepted by a public argument:
`Clock` (`Router(clock=...)`), `StateBackend` (`Router(backend=...)`), `Executor`
(`Router.map(..., executor=...)`); the transport is httpx's (`Router(transport=...)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._core import ErrorKind, Usage
from .._core.clock import Clock
from .._core.content import Tool, ToolCall, image_part, image_url_part, tool_result
from .decide.combos import combo_kind
from .decide.packs import FACTORS, PACKS, VIRTUAL_COMBOS
from .decide.strategies import ACCOUNT_STRATEGIES, STRATEGIES
from .engine import Router
from .media import image_input
from .errors import (
    AllCoolingDown,
    AllTargetsFailed,
    BudgetExceeded,
    ComboConfigError,
    NoProviders,
    NotCapable,
    RouteError,
    StopError,
)
from .model import Combo, Config, Provider
from .policy import DEFAULT_FALLBACK_ON, Policy
from .requests import CallRequest, build_request
from .state.backends import MemoryBackend, SQLiteBackend, StateBackend
from .status import Status, status_tables
from .types import (
    Action,
    Attempt,
    AttemptFinished,
    AttemptStarted,
    Candidate,
    Decision,
    Done,
    RouteEvent,
    RouteResult,
    TextDelta,
    ToolCalled,
    attempt_line,
    attempt_table,
    attempt_text,
    decision_html,
    decision_text,
    output_width,
)
from .views import account_cells, account_health, candidate_cells, candidate_health, health_text, log_table

if TYPE_CHECKING:  # batch work loads on first use, so that `import nbrouter` stays light
    from .batch.dispatch import BatchResult, Executor, LocalExecutor, Progress
    from .batch.jobs import BatchJob, JobList, JobResult, NoBatchTarget
    from .batch.waiting import set_wait_display

_BATCH = ("BatchResult", "Executor", "LocalExecutor", "Progress")
_JOBS = ("BatchJob", "JobList", "JobResult", "NoBatchTarget")


def __getattr__(name: str) -> Any:
    if name in _BATCH:
        from .batch import dispatch

        return getattr(dispatch, name)
    if name == "set_wait_display":
        from .batch import waiting

        return waiting.set_wait_display
    if name in _JOBS:
        from .batch import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCOUNT_STRATEGIES",
    "Action",
    "AllCoolingDown",
    "AllTargetsFailed",
    "Attempt",
    "AttemptFinished",
    "AttemptStarted",
    "BatchJob",
    "BatchResult",
    "BudgetExceeded",
    "CallRequest",
    "Candidate",
    "Clock",
    "Combo",
    "ComboConfigError",
    "Config",
    "DEFAULT_FALLBACK_ON",
    "Decision",
    "Done",
    "ErrorKind",
    "Executor",
    "FACTORS",
    "JobList",
    "JobResult",
    "LocalExecutor",
    "MemoryBackend",
    "NoBatchTarget",
    "NoProviders",
    "NotCapable",
    "PACKS",
    "Policy",
    "Progress",
    "Provider",
    "RouteError",
    "RouteEvent",
    "RouteResult",
    "Router",
    "SQLiteBackend",
    "STRATEGIES",
    "StateBackend",
    "Status",
    "StopError",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCalled",
    "Usage",
    "VIRTUAL_COMBOS",
    "account_cells",
    "attempt_line",
    "attempt_table",
    "attempt_text",
    "build_request",
    "candidate_cells",
    "combo_kind",
    "decision_html",
    "decision_text",
    "image_input",
    "image_part",
    "image_url_part",
    "log_table",
    "output_width",
    "set_wait_display",
    "status_tables",
    "account_health",
    "candidate_health",
    "health_text",
    "tool_result",
]

"""nbrouter: LLM routing for Jupyter and IPython.

A combo is a named, ordered group of provider/model targets used as one model: the router picks a
target by the combo's strategy, falls back on failure, remembers cooldowns across restarts, and tells
you which target served each call, every attempt, and what it cost.

    from nbrouter import Router
    router = Router("config.toml")
    result = router.complete("fast", "Say hello")
    print(result.text, result.footer())
"""

from __future__ import annotations

from typing import Any

from .router import Router, Status
from .router import (
    AllCoolingDown,
    AllTargetsFailed,
    BudgetExceeded,
    ComboConfigError,
    NoProviders,
    NotCapable,
    RouteError,
    StopError,
)
from .router import (
    Action,
    Attempt,
    AttemptFinished,
    AttemptStarted,
    Candidate,
    Decision,
    Done,
    ErrorKind,
    RouteResult,
    TextDelta,
    Tool,
    ToolCall,
    ToolCalled,
    Usage,
    image_part,
    image_url_part,
    tool_result,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # BatchResult loads with batch work (router/batch.py), not with `import nbrouter`
    if name == "BatchResult":
        from .router import BatchResult

        return BatchResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%load_ext nbrouter`: register the `%%llm` magics."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """`%unload_ext nbrouter`: stop the router's background loop."""
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the built JupyterLab extension is, for `jupyter labextension develop .` (extension/ builds it)."""
    return [{"src": "labextension", "dest": "nbrouter-labextension"}]


__all__ = [
    "Action",
    "AllCoolingDown",
    "AllTargetsFailed",
    "Attempt",
    "AttemptFinished",
    "AttemptStarted",
    "BatchResult",
    "BudgetExceeded",
    "Candidate",
    "ComboConfigError",
    "Decision",
    "Done",
    "ErrorKind",
    "NoProviders",
    "NotCapable",
    "RouteError",
    "RouteResult",
    "Router",
    "Status",
    "StopError",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCalled",
    "Usage",
    "__version__",
    "image_part",
    "image_url_part",
    "load_ipython_extension",
    "tool_result",
    "unload_ipython_extension",
]

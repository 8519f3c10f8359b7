"""The executor port of batch work: what the dispatcher (dispatch.py) and any executor share.

An executor runs one item's call and returns how it ended (`Executor.run`); `LocalExecutor` runs it in
this process, `cluster.ClusterExecutor` on a Dask or Ray cluster. The dispatcher decides what is sent and
when; both speak of `BatchItem`s, of a router through the public calls in `BatchRouter`, and of items
that end without an answer as `NotDone` with one of the reasons below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Awaitable, Protocol

from ..._core import Clock
from ..decide.budget import Budget
from ..errors import RouteError
from ..model import Combo, Config
from ..requests import CallRequest
from ..run.background import BackgroundLoop
from ..run.cache import ResponseCache
from ..state.pacing import Pacer
from ..state.store import StateStore
from ..types import RouteResult


class BatchRouter(Protocol):
    """What batch work needs of a router: public calls of `nbrouter.Router`, which is one."""

    config: Config
    clock: Clock
    #: where its state is kept (a cluster's workers are pointed at the same file)
    state: StateStore
    #: the session budget (a cluster's outcomes are counted in it)
    budget: Budget

    @property
    def cache(self) -> ResponseCache: ...

    def cache_key(self, request: CallRequest) -> str: ...

    @property
    def background(self) -> BackgroundLoop: ...

    @property
    def pacer(self) -> Pacer: ...

    def route(self, request: CallRequest) -> Awaitable[RouteResult]: ...

    def check(self, request: CallRequest) -> Combo: ...

    def estimate(self, request: CallRequest) -> Decimal | None: ...

    async def discover(self, *, refresh: bool = False) -> None: ...


NOT_SENT_BUDGET = "not sent: batch budget"
NOT_SENT_DEADLINE = "not sent: batch deadline"
NOT_SENT_INTERRUPTED = "not sent: interrupted"
CANCELLED = "cancelled: in flight when interrupted"


class NotDone(RouteError):
    """An item of a batch that has no answer and was not failed by a provider: never sent, or cancelled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class BatchItem:
    """One item of a batch: where it stands in the input, the input itself, the call it becomes."""

    position: int
    value: Any
    request: CallRequest
    #: attempts of earlier sends of this item (a re-send after a 429 keeps the whole story)
    earlier: list[Any] = field(default_factory=list)
    sends: int = 0
    #: sends that met only rate limits (a 429, the rest paced or cooling): they spend none of its tries
    limited: int = 0


class Executor(Protocol):
    """Runs one item's call and returns how it ended (never raises a RouteError)."""

    async def run(self, item: BatchItem) -> RouteResult | RouteError: ...


class LocalExecutor:
    """Runs calls in this process, on the caller's event loop, through a Router."""

    def __init__(self, router: BatchRouter) -> None:
        self.router = router

    async def run(self, item: BatchItem) -> RouteResult | RouteError:
        try:
            return await self.router.route(item.request)
        except RouteError as error:
            return error


__all__ = ["BatchItem", "BatchRouter", "CANCELLED", "Executor", "LocalExecutor", "NOT_SENT_BUDGET", "NOT_SENT_DEADLINE",
           "NOT_SENT_INTERRUPTED", "NotDone"]

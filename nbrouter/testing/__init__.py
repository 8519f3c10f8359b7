"""A loopback provider simulator that tests, benchmarks, notebooks and users share.

    from nbrouter.testing import KeyLimits, ProviderSimulator, RateLimited, Reply, WindowLimits

    with ProviderSimulator() as sim:
        sim.script([RateLimited(retry_after=30), Reply("hi")], model="gpt-x")
        sim.rate_limits.set("key-a", KeyLimits(requests_per_minute=300))  # real 429s past the limit
        sim.rate_limits.set_default(WindowLimits(requests=120, window_s=60))  # every key: a sliding window
        ...  # point a client at sim.openai_url, sim.anthropic_url, sim.gemini_url or sim.openrouter_url

`sim.script_batch(BatchScript(...))` scripts the three batch APIs (OpenAI Files + /v1/batches, Anthropic
/v1/messages/batches, Gemini batchGenerateContent), whose jobs run on the simulator's clock.
`start_simulator_process(config)` runs one in a process of its own (`python -m nbrouter.testing serve`)
that several router processes share; `GET /_sim/stats` (or `sim.stats()`) gives its counts per key.

The behaviours are plain data and import at once; `ProviderSimulator` and `RecordedRequest` load aiohttp,
so they are imported on first use (the pytest plugin and `import nbrouter` stay light). `RawServer` answers
with exactly scripted bytes (`RawResponse`), for replies no HTTP server library would send.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .behaviours import (
    Behaviour,
    Capabilities,
    ContentFilter,
    ContextOverflow,
    CutStream,
    Drop,
    Empty,
    Failure,
    Forbidden,
    Hang,
    Malformed,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    Raw,
    Reply,
    ServerError,
    ToolCall,
    Unauthorized,
)
from .batches import BatchScript
from .clock import ManualClock
from .ratelimits import KeyLimits, WindowLimits
from .stats import key_id

if TYPE_CHECKING:
    from .process import SimulatorProcess, start_simulator_process
    from .rawserver import RawResponse, RawServer, http_response
    from .simulator import ProviderSimulator, RecordedRequest

__all__ = [
    "BatchScript",
    "Behaviour",
    "Capabilities",
    "ContentFilter",
    "ContextOverflow",
    "CutStream",
    "Drop",
    "Empty",
    "Failure",
    "Forbidden",
    "Hang",
    "KeyLimits",
    "Malformed",
    "ManualClock",
    "NotFound",
    "Overloaded",
    "ProviderSimulator",
    "QuotaExceeded",
    "RateLimited",
    "Raw",
    "RawResponse",
    "RawServer",
    "RecordedRequest",
    "Reply",
    "ServerError",
    "SimulatorProcess",
    "ToolCall",
    "Unauthorized",
    "WindowLimits",
    "http_response",
    "key_id",
    "start_simulator_process",
]

_LAZY = frozenset({"ProviderSimulator", "RecordedRequest"})
_RAW = frozenset({"RawResponse", "RawServer", "http_response"})
_PROCESS = frozenset({"SimulatorProcess", "start_simulator_process"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import simulator

        return getattr(simulator, name)
    if name in _RAW:
        from . import rawserver

        return getattr(rawserver, name)
    if name in _PROCESS:
        from . import process

        return getattr(process, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

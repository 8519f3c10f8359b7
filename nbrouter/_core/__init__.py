"""The floor every layer stands on: error kinds, token usage, rate limits, the failure of an attempt,
secret scrubbing, the clock, closing what is live at exit and the small text formats shared by every table.

Nothing here imports any other part of nbrouter; providers, router, report and notebook all import it.
"""

from __future__ import annotations

from .clock import Clock, SystemClock
from .failure import ProviderFailure
from .kinds import ErrorKind
from .limits import RateLimits
from .secrets import remember_secret, scrub, scrub_pieces
from .usage import Usage

__all__ = ["Clock", "ErrorKind", "ProviderFailure", "RateLimits", "SystemClock", "Usage", "remember_secret", "scrub", "scrub_pieces"]

"""What `BatchJob.wait()` shows when it is given no `progress=`: nothing, unless a front end set a display
(the notebook extension sets its live view when loaded). A module of its own, without imports, so that
setting it does not load the batch machinery.
"""

from __future__ import annotations

from typing import Any, Callable

#: made from the job: (called after each poll with the job, called at the end)
WaitDisplay = Callable[[Any], "tuple[Callable[[Any], None], Callable[[], None]]"]
_shown: list[WaitDisplay] = []


def set_wait_display(factory: WaitDisplay | None) -> None:
    """Show `factory(job)` under every `wait()` without `progress=`; None: show nothing."""
    _shown.clear()
    if factory is not None:
        _shown.append(factory)


def display() -> WaitDisplay | None:
    """The display set, or None."""
    return _shown[0] if _shown else None


__all__ = ["WaitDisplay", "display", "set_wait_display"]

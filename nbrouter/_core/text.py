"""The small text formats every table shares: durations, milliseconds, dollars."""

from __future__ import annotations

from decimal import Decimal


def span(seconds: float | None) -> str:
    """`42 s`, `3 min`, `1.5 h`."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ms(seconds: float | None) -> str:
    """`412 ms`, or empty when unknown."""
    return "" if seconds is None else f"{seconds * 1000:.0f} ms"


def duration(seconds: float) -> str:
    """A call's time: milliseconds under a second, else seconds."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def dollars(value: Decimal | float | None) -> str:
    """`$0.000020`, or `unknown` when no price is known (never a silent 0)."""
    return "unknown" if value is None else f"${value:.6f}"

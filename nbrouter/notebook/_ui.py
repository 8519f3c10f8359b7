"""What the builder and the board share: the style of their tables, inline notes, showing and closing widgets."""

from __future__ import annotations

import html
from typing import Any

#: the router's HTML tables have no spacing of their own; inside nbrouter's widgets they get some
STYLE = ("<style>.nbrouter-widget .nbrouter-table td, .nbrouter-widget .nbrouter-table th "
         "{padding: 1px 10px 1px 0; vertical-align: top}</style>")


def note(text: str, tone: str = "") -> str:
    """An inline note: the words carry the meaning, colour only repeats it.

    Args:
        text: what to say (escaped here).
        tone: `ok`, `bad`, `busy`, or empty for the text colour.
    """
    colour = {"ok": "#1b5e20", "bad": "#b71c1c", "busy": "#6d4c00"}.get(tone, "inherit")
    return f"<div style='color:{colour};white-space:pre-wrap'>{html.escape(text)}</div>"


def show_widget(widget: Any, visible: bool) -> None:
    """Show or hide a widget (its layout keeps its place in the box)."""
    widget.layout.display = None if visible else "none"


def close_tree(widget: Any) -> None:
    """Close a widget and every widget inside it."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()

"""Colours that read in JupyterLab's light and dark themes: its CSS variables, with fallbacks for other
front ends (Notebook 7, VS Code, nbviewer) that do not define them.

Text always keeps the theme's own font colour; a tone only adds a coloured mark (a left border) or a
light tint of the background, so that it reads on white and on black alike. The words carry the
meaning; the colour only repeats it.
"""

from __future__ import annotations

#: the theme's accent colour for each tone, as CSS (JupyterLab variable, fallback)
TONE_COLOURS = {
    "ok": "var(--jp-success-color1, #43a047)",
    "warn": "var(--jp-warn-color1, #fb8c00)",
    "bad": "var(--jp-error-color1, #e53935)",
    "busy": "var(--jp-info-color1, #00acc1)",
    "idle": "var(--jp-border-color1, #bdbdbd)",
}
#: how much of the accent colour tints a background: enough to see, little enough for any text colour
TINT_PERCENT = 18
#: quieter text (a footer, a caption) in the theme's secondary font colour
MUTED_TEXT = "var(--jp-ui-font-color2, #757575)"
#: the marks that say a tone in words for those who do not see the colour
TONE_MARKS = {"ok": "✓", "warn": "!", "bad": "✗", "busy": "…", "idle": "·"}


def tone_border(tone: str) -> str:
    """CSS for a coloured mark on the left of a block in `tone` (empty for no tone)."""
    colour = TONE_COLOURS.get(tone)
    return f"border-left:3px solid {colour};padding-left:6px" if colour else ""


def tone_tint(tone: str) -> str:
    """CSS for a background lightly tinted with `tone`, over whatever the theme's background is."""
    colour = TONE_COLOURS.get(tone)
    return f"background:color-mix(in srgb, {colour} {TINT_PERCENT}%, transparent)" if colour else ""

"""What the builder and the board share: the style of their tables, inline notes, showing and closing widgets."""

from __future__ import annotations

from typing import Any

from ..report import html_text, tone_border

#: the router's HTML tables have no spacing of their own; inside nbrouter's widgets they get some, and a
#: wide table scrolls inside its own box instead of being cut off. A folded section's title is in the
#: theme's main font colour: ipywidgets' secondary colour on its grey is 4.4:1 in the light theme, under
#: the 4.5:1 every text of nbrouter keeps
STYLE = ("<style>.nbrouter-widget .nbrouter-table td, .nbrouter-widget .nbrouter-table th "
         "{padding: 1px 10px 1px 0; vertical-align: top}"
         " .nbrouter-widget .nbrouter-scroll {overflow-x: auto; max-width: 100%}"
         " .nbrouter-widget .widget-html-content {min-width: 0}"
         " .nbrouter-widget .jupyter-widget-Collapse-header {color: var(--jp-ui-font-color1)}</style>")


def scrolling(html: str) -> str:
    """HTML (a wide table) in a box that scrolls sideways when it is wider than the output."""
    return f"<div class='nbrouter-scroll'>{html}</div>"


def note(text: str, tone: str = "") -> str:
    """An inline note in the theme's text colour, with a mark in the tone's colour: the words carry the
    meaning, colour only repeats it (and reads on a light or a dark theme alike).

    Args:
        text: what to say (escaped here).
        tone: `ok`, `bad`, `warn`, `busy`, or empty for no mark.
    """
    return f"<div style='white-space:pre-wrap;{tone_border(tone)}'>{html_text(text)}</div>"


def show_widget(widget: Any, visible: bool) -> None:
    """Show or hide a widget (its layout keeps its place in the box)."""
    widget.layout.display = None if visible else "none"


def close_tree(widget: Any) -> None:
    """Close a widget and every widget inside it."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


class Kit:
    """Makes the widgets of one builder or board so that they share models: one Layout for every widget
    that needs none of its own, and one style model per widget class.

    ipywidgets gives each widget a Layout and a style model of its own by default, three models a
    widget, and a notebook saved with its widget state keeps them all; sharing keeps it small.
    """

    def __init__(self) -> None:
        import ipywidgets as w

        self._w = w
        self.layout = w.Layout()
        self._layouts: dict[tuple[tuple[str, str], ...], Any] = {}
        self._styles: dict[type, Any] = {}

    def layout_of(self, **css: str) -> Any:
        """A Layout with these settings, shared by every widget that asks for the same ones."""
        key = tuple(sorted(css.items()))
        if key not in self._layouts:
            self._layouts[key] = self._w.Layout(**css)
        return self._layouts[key]

    def __call__(self, cls: Any, *, own_layout: bool = False, **kwargs: Any) -> Any:
        """A widget of class `cls`; `own_layout` for one that is shown and hidden on its own."""
        if own_layout:
            kwargs.setdefault("layout", self._w.Layout())
        kwargs.setdefault("layout", self.layout)
        style_trait = cls.class_traits().get("style")
        style_cls = getattr(style_trait, "klass", None)
        if isinstance(style_cls, type) and "style" not in kwargs:
            if style_cls not in self._styles:
                self._styles[style_cls] = style_cls()
            kwargs["style"] = self._styles[style_cls]
        return cls(**kwargs)

    def close(self) -> None:
        """Close the shared models (the widgets are closed by their owner)."""
        for model in [self.layout, *self._layouts.values(), *self._styles.values()]:
            model.close()

"""How nbrouter shows things: one table value and Markdown answers as HTML.

`Table` renders the same headers and rows as plain text (tabulate), Markdown and HTML, and carries a
`_repr_mimebundle_` so IPython and Jupyter pick the right one; `Tables` stacks several under one title.
`markdown_html` turns an answer's Markdown into safe HTML through markdown-it-py, with the rule for
dollar signs (markdown.py); theme.py holds the colours that read in light and dark themes. tabulate and
markdown-it-py are imported on first use, so importing this package costs nothing at start-up.

This layer imports only `nbrouter._core`; it knows nothing of routers, attempts or notebooks.
"""

from __future__ import annotations

from .markdown import escape_dollars, html_text, markdown_html
from .table import Shown, Table, Tables, escape_markdown
from .theme import MUTED_TEXT, TONE_MARKS, tone_border, tone_tint

__all__ = ["MUTED_TEXT", "TONE_MARKS", "Shown", "Table", "Tables", "escape_dollars", "escape_markdown", "html_text",
           "markdown_html", "tone_border", "tone_tint"]

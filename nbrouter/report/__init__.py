"""How nbrouter shows things: one table value and Markdown answers as HTML.

`Table` renders the same headers and rows as plain text (tabulate), Markdown and HTML, and carries a
`_repr_mimebundle_` so IPython and Jupyter pick the right one; `Tables` stacks several under one title.
`markdown_html` turns an answer's Markdown into safe HTML through markdown-it-py. Both heavy libraries
are imported on first use, so importing this package costs nothing at start-up.

This layer imports only `nbrouter._core`; it knows nothing of routers, attempts or notebooks.
"""

from __future__ import annotations

from .markdown import markdown_html
from .table import Shown, Table, Tables, escape_markdown

__all__ = ["Shown", "Table", "Tables", "escape_markdown", "markdown_html"]

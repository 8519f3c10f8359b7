"""An answer's Markdown as HTML, through markdown-it-py (imported on first use)."""

from __future__ import annotations

from typing import Any

_renderer: Any = None


def _markdown_it() -> Any:
    global _renderer
    if _renderer is None:
        from markdown_it import MarkdownIt

        # CommonMark with GitHub's tables and strikethrough; raw HTML in an answer is shown as text,
        # never run (a model's reply is untrusted input), and markdown-it refuses javascript: links
        _renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        _renderer.enable(["table", "strikethrough"])
    return _renderer


def markdown_html(text: str) -> str:
    """HTML for the Markdown an LLM writes: headings, paragraphs, lists, code, tables, quotes, links.

    Args:
        text: the answer as the model wrote it (untrusted: any HTML in it is escaped).
    """
    return _markdown_it().render(text)

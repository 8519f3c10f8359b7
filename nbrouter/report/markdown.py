"""An answer's Markdown as HTML, through markdown-it-py (imported on first use), with nbrouter's rule for
dollar signs.

The rule: a `$` is a dollar, shown as written ("costs $5 to $10" stays that). Maths is what is written
between `$$ ... $$`, `\\( ... \\)` or `\\[ ... \\]`: those are passed through untouched for the notebook's
MathJax to typeset. JupyterLab's MathJax also reads a pair of single `$` as maths, so each single `$`
of the answer is put in an element of its own, where no pair can form (MathJax never pairs delimiters
across elements); code spans and code blocks are left alone (MathJax skips them).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # markdown-it is imported on first use
    from markdown_it import MarkdownIt
    from markdown_it.rules_inline import StateInline

#: the maths delimiters that are kept, longest first: (opening, closing)
MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"))
#: a lone dollar sign, in an element of its own so that MathJax cannot pair it with another
DOLLAR_HTML = "<span>$</span>"

_renderer: MarkdownIt | None = None


def html_text(text: str) -> str:
    """Plain text for HTML: escaped, with each `$` where MathJax cannot pair it (shown as written).

    Args:
        text: any text, trusted or not.
    """
    return html.escape(text).replace("$", DOLLAR_HTML)


def _math(state: StateInline, silent: bool) -> bool:
    """markdown-it inline rule: a maths span, kept as written (the escape rule would eat `\\(`)."""
    for opening, closing in MATH_DELIMITERS:
        if state.src.startswith(opening, state.pos):
            start = state.pos + len(opening)
            end = state.src.find(closing, start)
            if end <= start:
                continue
            if not silent:
                token = state.push("nbrouter_math", "", 0)
                token.content = state.src[state.pos:end + len(closing)]
            state.pos = end + len(closing)
            return True
    return False


def _markdown_it() -> MarkdownIt:
    global _renderer
    if _renderer is None:
        from markdown_it import MarkdownIt
        from markdown_it.common.utils import escapeHtml

        # CommonMark with GitHub's tables and strikethrough; raw HTML in an answer is shown as text,
        # never run (a model's reply is untrusted input), and markdown-it refuses javascript: links
        md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        md.enable(["table", "strikethrough"])
        md.inline.ruler.before("escape", "nbrouter_math", _math)
        md.add_render_rule("nbrouter_math", lambda self, tokens, idx, options, env: escapeHtml(tokens[idx].content))
        md.add_render_rule("text", lambda self, tokens, idx, options, env:
                           escapeHtml(tokens[idx].content).replace("$", DOLLAR_HTML))
        _renderer = md
    return _renderer


def markdown_html(text: str) -> str:
    """HTML for the Markdown an LLM writes: headings, paragraphs, lists, code, tables, quotes, links, maths.

    Args:
        text: the answer as the model wrote it (untrusted: any HTML in it is escaped).
    """
    rendered: str = _markdown_it().render(text)  # markdown-it types it Any; its HTML renderer returns a str
    return rendered


# code (fenced or inline) and maths, where a `$` is left as it is; anything else is prose
_KEEP = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[ \t]*$|\Z)|(`+).+?\2|\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)",
                   re.M | re.S)


def escape_dollars(markdown: str) -> str:
    """The Markdown with each dollar sign of its prose escaped (`\\$`), so that a notebook's Markdown
    renderer shows it as written; code and `$$`, `\\(`, `\\[` maths are unchanged.

    Args:
        markdown: an answer in Markdown.
    """
    out, pos = [], 0
    for m in _KEEP.finditer(markdown):
        out.append(_escape_prose(markdown[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape_prose(markdown[pos:]))
    return "".join(out)


def _escape_prose(text: str) -> str:
    return re.sub(r"(?<!\\)\$", r"\\$", text)

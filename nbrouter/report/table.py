"""The one table value nbrouter shows: plain text, Markdown and HTML from the same headers and rows."""

from __future__ import annotations

import re
from typing import Container, Sequence

from .markdown import html_text
from .theme import tone_tint

#: a cell that reads as a number (a count, a duration, a share, a price, tokens in+out): aligned right
_NUMERIC = re.compile(r"^[-+]?\$?\d[\d,]*(\.\d+)?( ?(ms|s|min|h|%|k|M))?( \+ unknown)?$|^\d+\+\d+$|^\d+/\d+$")
#: cells that stand for a missing number and do not make a column textual
_BLANKS = frozenset({"", "-", "?", "unknown"})
#: the narrowest a wrapped column is made when a table is fitted to a width
MIN_WRAP_WIDTH = 16
#: the space tabulate's `simple` format puts between columns
_GAP = 2


def escape_markdown(text: str) -> str:
    """A cell or a line that Jupyter's Markdown shows as written: `$` is not maths, `|` is not a column."""
    return text.replace("$", "\\$").replace("|", "\\|")


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: max(1, width - 1)] + "…"


class Shown:
    """Something with text(), markdown() and html() forms, which IPython and Jupyter display by themselves."""

    def text(self, width: int | None = None) -> str:
        raise NotImplementedError

    def markdown(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def _repr_mimebundle_(self, include: Container[str] | None = None, exclude: Container[str] | None = None) -> dict[str, str]:
        """Real text/plain, text/markdown and text/html, honouring IPython's include and exclude."""
        renders = {"text/plain": self.text, "text/markdown": self.markdown, "text/html": self.html}
        return {mime: render() for mime, render in renders.items()
                if (include is None or mime in include) and (exclude is None or mime not in exclude)}


class Table(Shown):
    """Headers and rows, with an optional title above and notes below, shown as text, Markdown or HTML.

    Numbers are aligned right (their headers too), words left. Short cells never wrap; the columns in
    `wrap` (by default the last one, when it holds words) take what room is left, and in plain text
    fitted to a width they are wrapped there.

    Args:
        headers: the column titles.
        rows: one sequence of cells per row; each cell is shown as `str(cell)`.
        title: a line above the table.
        notes: lines below the table.
        empty: what stands in for the table when there are no rows.
        wrap: indexes of the columns that may wrap (None: the last column if it is not numeric).
        cut: a cell of a `wrap` column longer than this is cut in text and Markdown with `…`; the HTML
            shows the cut cell and the whole text on demand (a `<details>`).
        tones: one tone per row (`ok`, `warn`, `bad`, `idle` or ""), a light tint of the row in HTML.
    """

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str = "",
                 notes: Sequence[str] = (), empty: str = "(none)", wrap: Sequence[int] | None = None,
                 cut: int | None = None, tones: Sequence[str] | None = None) -> None:
        self.headers = [str(h) for h in headers]
        self.rows = [[str(c) for c in row] for row in rows]
        self.title = title
        self.notes = list(notes)
        self.empty = empty
        self.cut = cut
        self.tones = list(tones) if tones is not None else None
        self.align = [self._column_align(i) for i in range(len(self.headers))]
        if wrap is None:
            wrap = [len(self.headers) - 1] if self.headers and self.align[-1] == "left" else []
        self.wrap = frozenset(wrap)

    def _column_align(self, index: int) -> str:
        cells = [row[index] for row in self.rows if index < len(row) and row[index] not in _BLANKS]
        return "right" if cells and all(_NUMERIC.match(c) for c in cells) else "left"

    def _shown_rows(self) -> list[list[str]]:
        """The rows with the `wrap` columns cut at `cut`."""
        return [[_cut(c, self.cut) if i in self.wrap else c for i, c in enumerate(row)] for row in self.rows]

    # ---- plain text --------------------------------------------------------------------------

    def body_text(self, width: int | None = None) -> str:
        """The table alone, as aligned plain text (tabulate's `simple` format), fitted to `width` columns
        by wrapping the `wrap` columns when it is given."""
        if not self.rows:
            return self.empty
        from tabulate import tabulate  # on first use: `import nbrouter` stays light

        rows = self._shown_rows()
        maxcolwidths: list[int | None] | None = None
        if width is not None and self.wrap:
            # tabulate gives a header two spaces more than its text
            natural = [max(len(h) + _GAP, *(len(r[i]) for r in rows if i < len(r))) for i, h in enumerate(self.headers)]
            total = sum(natural) + _GAP * (len(natural) - 1)
            if total > width:
                fixed = sum(n for i, n in enumerate(natural) if i not in self.wrap) + _GAP * (len(natural) - 1)
                # share the room left: a narrow wrap column keeps its width, the wide ones split the rest
                remaining, widths = width - fixed, {}
                for left, i in enumerate(sorted(self.wrap, key=lambda i: natural[i])):
                    widths[i] = min(natural[i], max(MIN_WRAP_WIDTH, remaining // (len(self.wrap) - left)))
                    remaining -= widths[i]
                maxcolwidths = [widths[i] if i in widths and widths[i] < natural[i] else None for i in range(len(natural))]
        text: str = tabulate(rows, headers=self.headers, tablefmt="simple", colalign=self.align, disable_numparse=True,
                             maxcolwidths=maxcolwidths)  # tabulate ships no types
        return text

    def text(self, width: int | None = None) -> str:
        """Title, table and notes as plain text.

        Args:
            width: fit the table to this many columns (a terminal's width); None: as wide as it is.
        """
        return "\n".join([*([self.title] if self.title else []), self.body_text(width), *self.notes])

    # ---- Markdown ----------------------------------------------------------------------------

    def markdown(self) -> str:
        """Title, table (a pipe table) and notes as Markdown, with `$` and `|` shown as written."""
        parts = [f"**{escape_markdown(self.title)}**", ""] if self.title else []
        if self.rows:
            from tabulate import tabulate

            rows = [[escape_markdown(c) for c in row] for row in self._shown_rows()]
            parts.append(tabulate(rows, headers=[escape_markdown(h) for h in self.headers], tablefmt="pipe",
                                  colalign=self.align, disable_numparse=True))
        else:
            parts.append(escape_markdown(self.empty))
        if self.notes:
            parts.extend(["", *(escape_markdown(n) + "  " for n in self.notes)])
        return "\n".join(parts)

    # ---- HTML --------------------------------------------------------------------------------

    def _cell_html(self, index: int, text: str) -> str:
        align = self.align[index] if index < len(self.align) else "left"
        wraps = index in self.wrap
        # the table does not wrap (white-space is inherited); only a wrap column's cells may
        style = f"text-align:{align}" + (";white-space:normal" if wraps else "")
        shown = _cut(text, self.cut) if wraps else text
        if shown != text:  # the whole note on demand
            body = f"<details><summary>{html_text(shown)}</summary>{html_text(text)}</details>"
        else:
            body = html_text(text)
        return f"<td style='{style}'>{body}</td>"

    def body_html(self) -> str:
        """The table alone as an HTML `<table>`; every cell is escaped."""
        if not self.rows:
            return f"<div>{html_text(self.empty)}</div>"
        head = "".join(f"<th style='text-align:{a}'>{html_text(h)}</th>"
                       for h, a in zip(self.headers, self.align))
        body = []
        for r, row in enumerate(self.rows):
            tone = self.tones[r] if self.tones is not None and r < len(self.tones) else ""
            style = f" style='{tone_tint(tone)}'" if tone_tint(tone) else ""
            body.append(f"<tr{style}>" + "".join(self._cell_html(i, c) for i, c in enumerate(row)) + "</tr>")
        return (f"<table class='nbrouter-table' style='border-collapse:collapse;white-space:nowrap'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")

    def html(self) -> str:
        """Title, table and notes as HTML (the bare `<table>` when there is neither title nor notes)."""
        if not self.title and not self.notes:
            return self.body_html()
        title = f"<div><b>{html_text(self.title)}</b></div>" if self.title else ""
        notes = "".join(f"<div>{html_text(n)}</div>" for n in self.notes)
        return f"<div class='nbrouter-tables'>{title}{self.body_html()}{notes}</div>"


class Tables(Shown):
    """Several tables shown one after another under one title, with notes at the end.

    Args:
        tables: the tables, in order.
        title: a line above them all.
        notes: lines below them all.
    """

    def __init__(self, tables: Sequence[Table], *, title: str = "", notes: Sequence[str] = ()) -> None:
        self.tables = list(tables)
        self.title = title
        self.notes = list(notes)

    def text(self, width: int | None = None) -> str:
        """Every table as plain text, a blank line between them (each fitted to `width` when given)."""
        parts = [self.title] if self.title else []
        parts.extend(t.text(width) + "\n" for t in self.tables)
        parts.extend(self.notes)
        return "\n".join(parts).strip("\n")

    def markdown(self) -> str:
        """Every table as Markdown."""
        parts = [f"**{escape_markdown(self.title)}**"] if self.title else []
        parts.extend(t.markdown() for t in self.tables)
        parts.extend(escape_markdown(n) for n in self.notes)
        return "\n\n".join(parts)

    def html(self) -> str:
        """Every table as HTML, in one `<div>`."""
        parts = [f"<div><b>{html_text(self.title)}</b></div>"] if self.title else []
        parts.extend(t.html() for t in self.tables)
        parts.extend(f"<div>{html_text(n)}</div>" for n in self.notes)
        return "<div class='nbrouter-tables'>" + "<br>".join(parts) + "</div>"

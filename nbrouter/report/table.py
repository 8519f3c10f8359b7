"""The one table value nbrouter shows: plain text, Markdown and HTML from the same headers and rows."""

from __future__ import annotations

import html
from typing import Any, Container, Sequence


def escape_markdown(text: str) -> str:
    """A cell or a line that Jupyter's Markdown shows as written: `$` is not maths, `|` is not a column."""
    return text.replace("$", "\\$").replace("|", "\\|")


class Shown:
    """Something with text(), markdown() and html() forms, which IPython and Jupyter display by themselves."""

    def text(self) -> str:
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

    Args:
        headers: the column titles.
        rows: one sequence of cells per row; each cell is shown as `str(cell)`.
        title: a line above the table.
        notes: lines below the table.
        empty: what stands in for the table when there are no rows.
    """

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "",
                 notes: Sequence[str] = (), empty: str = "(none)") -> None:
        self.headers = [str(h) for h in headers]
        self.rows = [[str(c) for c in row] for row in rows]
        self.title = title
        self.notes = list(notes)
        self.empty = empty

    def body_text(self) -> str:
        """The table alone, as aligned plain text (tabulate's `simple` format)."""
        if not self.rows:
            return self.empty
        from tabulate import tabulate  # on first use: `import nbrouter` stays light

        return tabulate(self.rows, headers=self.headers, tablefmt="simple")

    def text(self) -> str:
        """Title, table and notes as plain text."""
        return "\n".join([*([self.title] if self.title else []), self.body_text(), *self.notes])

    def markdown(self) -> str:
        """Title, table (a pipe table) and notes as Markdown, with `$` and `|` shown as written."""
        parts = [f"**{escape_markdown(self.title)}**", ""] if self.title else []
        if self.rows:
            from tabulate import tabulate

            rows = [[escape_markdown(c) for c in row] for row in self.rows]
            parts.append(tabulate(rows, headers=[escape_markdown(h) for h in self.headers], tablefmt="pipe"))
        else:
            parts.append(escape_markdown(self.empty))
        if self.notes:
            parts.extend(["", *(escape_markdown(n) + "  " for n in self.notes)])
        return "\n".join(parts)

    def body_html(self) -> str:
        """The table alone as an HTML `<table>`; every cell is escaped."""
        if not self.rows:
            return f"<div>{html.escape(self.empty)}</div>"
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table class='nbrouter-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def html(self) -> str:
        """Title, table and notes as HTML (the bare `<table>` when there is neither title nor notes)."""
        if not self.title and not self.notes:
            return self.body_html()
        title = f"<div><b>{html.escape(self.title)}</b></div>" if self.title else ""
        notes = "".join(f"<div>{html.escape(n)}</div>" for n in self.notes)
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

    def text(self) -> str:
        """Every table as plain text, a blank line between them."""
        parts = [self.title] if self.title else []
        parts.extend(t.text() + "\n" for t in self.tables)
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
        parts = [f"<div><b>{html.escape(self.title)}</b></div>"] if self.title else []
        parts.extend(t.html() for t in self.tables)
        parts.extend(f"<div>{html.escape(n)}</div>" for n in self.notes)
        return "<div class='nbrouter-tables'>" + "<br>".join(parts) + "</div>"

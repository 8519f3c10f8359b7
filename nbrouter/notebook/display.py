"""How a routed answer looks in a notebook and in a terminal.

A finished answer is one display bundle with real `text/plain`, `text/markdown` and `text/html` (the
answer per `--format`, the footer, the attempt table) and top-level metadata `{"nbrouter": {...}}` that
records in the saved notebook what served the cell and what it cost. A streamed answer is one output
area updated in place at most `1 / UPDATE_INTERVAL_S` times a second, then once more with the full
bundle; in a terminal the text is printed as it arrives instead.
"""

from __future__ import annotations

import html
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..router import _text
from ..router.types import Action, Attempt, RouteResult
from .frontend import MIME, result_payload

#: a streamed answer's output area is redrawn at most this often (10 times a second)
UPDATE_INTERVAL_S = 0.1
FORMATS = ("markdown", "text", "code", "json", "html")
METADATA_KEY = "nbrouter"


# ---- the answer, per format ---------------------------------------------------------------


@dataclass
class Answer:
    """The answer text rendered for one format; `value` is the parsed JSON for `json`."""

    plain: str
    markdown: str
    html: str
    value: Any = None
    error: str | None = None


def render_answer(text: str, fmt: str) -> Answer:
    """Render the answer as plain text, Markdown and HTML for `fmt` (one of FORMATS)."""
    if fmt == "markdown":
        return Answer(text, text, markdown_html(text))
    if fmt == "text":
        return Answer(text, fence(text), _pre(text))
    if fmt == "code":
        lang, code = extract_code(text)
        return Answer(code, fence(code, lang), _pre(code, lang))
    if fmt == "json":
        _, body = extract_code(text)
        try:
            value = json.loads(body)
        except ValueError as exc:
            return Answer(text, fence(text), _pre(text), error=f"the answer is not valid JSON: {exc}")
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
        return Answer(pretty, fence(pretty, "json"), _pre(pretty, "json"), value=value)
    if fmt == "html":
        return Answer(text, fence(text, "html"), text)
    raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")


_FENCED = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)


def extract_code(text: str) -> tuple[str, str]:
    """(language, code): the fenced blocks of an answer joined, or the whole answer when it has none."""
    blocks = _FENCED.findall(text)
    if not blocks:
        return "", text.strip("\n")
    lang = next((b[1] for b in blocks if b[1]), "")
    return lang, "\n\n".join(b[2].rstrip("\n") for b in blocks)


def fence(code: str, lang: str = "") -> str:
    """A Markdown code block around `code`, with a fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{code}\n{ticks}"


def _pre(text: str, lang: str = "") -> str:
    cls = f" class='language-{html.escape(lang)}'" if lang else ""
    return f"<pre style='white-space:pre-wrap'><code{cls}>{html.escape(text)}</code></pre>"


# ---- a small Markdown to HTML renderer ----------------------------------------------------
# JupyterLab prefers text/html to text/markdown, so the HTML must show the Markdown answer as
# Markdown would. Everything is escaped; only http(s) links are made.

_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([\w+#.-]*)")


def _emphasis(escaped: str) -> str:
    s = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"<strong>\1</strong>", escaped)
    s = re.sub(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", r"<em>\1</em>", s)
    s = re.sub(r"\[([^\]]+)\]\((https?://[^\s)]+)\)", r'<a href="\2" target="_blank" rel="noopener">\1</a>', s)
    return s


def _inline(text: str) -> str:
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_emphasis(html.escape(text[pos : m.start()])))
        out.append(f"<code>{html.escape(m.group(2).strip())}</code>")
        pos = m.end()
    out.append(_emphasis(html.escape(text[pos:])))
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def markdown_html(text: str) -> str:
    """HTML for the Markdown an LLM usually writes: headings, paragraphs, lists, code, tables, quotes."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append("<p>" + "<br>\n".join(_inline(p) for p in para) + "</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    i = 0
    while i < len(lines):
        line = lines[i]
        opening = _FENCE_OPEN.match(line)
        if opening:
            flush()
            marker, lang = opening.group(1), opening.group(2)
            body: list[str] = []
            i += 1
            while i < len(lines) and not re.match(r"^ {0,3}" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            out.append(_pre("\n".join(body), lang))
            i += 1
            continue
        if not line.strip():
            flush()
        elif _RULE.match(line) and not items:
            flush()
            out.append("<hr>")
        elif (m := _HEADING.match(line)) is not None:
            flush()
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]) and "-" in lines[i + 1]:
            flush()
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c)}</th>" for c in head)
            trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
            continue
        elif line.lstrip().startswith(">"):
            flush()
            quote = []
            while i < len(lines) and lines[i].lstrip().startswith(">"):
                quote.append(lines[i].lstrip()[1:].removeprefix(" "))
                i += 1
            out.append(f"<blockquote>{markdown_html(chr(10).join(quote))}</blockquote>")
            continue
        elif (m := _ITEM.match(line)) is not None:
            tag = "ol" if m.group(2)[0].isdigit() else "ul"
            if para or (items and tag != list_tag):
                flush()
            list_tag = tag
            items.append(m.group(3))
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


# ---- the finished bundle ------------------------------------------------------------------


def _escape_dollars(text: str) -> str:
    # Jupyter's Markdown renders $...$ as LaTeX; costs are dollars
    return text.replace("$", "\\$")


def attempt_markdown(attempts: Sequence[Attempt]) -> str:
    """The attempt log as a Markdown (pipe) table."""
    from tabulate import tabulate

    rows = [[_escape_dollars(str(c)).replace("|", "\\|") for c in row] for row in _text.attempt_rows(attempts)]
    return tabulate(rows, headers=_text.ATTEMPT_HEADERS, tablefmt="pipe")


def result_metadata(result: RouteResult, **extra: Any) -> dict[str, Any]:
    """What the saved notebook records about a cell's call (never a key: messages are scrubbed)."""
    meta = {
        "combo": result.combo,
        "served_by": result.served_by,
        "model": result.model,
        "attempts": [_attempt_record(a) for a in result.attempts],
        "usage": result.usage.as_dict(),
        "cost_usd": None if result.cost_usd is None else str(result.cost_usd),
        "latency_s": round(result.latency_s, 3),
        "partial": result.partial,
    }
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def _attempt_record(a: Attempt) -> dict[str, Any]:
    record = {
        "candidate": a.candidate,
        "path": a.path,
        "action": a.action.value,
        "kind": a.kind.value if a.kind else None,
        "status": a.status,
        "latency_s": None if a.latency_s is None else round(a.latency_s, 3),
        "usage": a.usage.as_dict() if a.usage else None,
        "cost_usd": None if a.cost_usd is None else str(a.cost_usd),
    }
    if a.message:
        record["message"] = a.message
    return record


def result_bundle(result: RouteResult, fmt: str, *, answer: Answer | None = None, notes: Sequence[str] = (),
                  **extra: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """(data, metadata) of a finished answer: the answer per `fmt`, the footer, the attempt table."""
    answer = answer or render_answer(result.text, fmt)
    footer = result.footer()
    notes = list(notes)
    if answer.error:
        notes.append(answer.error)
    if result.partial and result.error:
        notes.append(f"partial answer: {result.error}")
    plain = "\n".join([answer.plain, "", *notes, footer, result.attempt_table()])
    markdown = "\n".join([
        answer.markdown, "", *(f"> {_escape_dollars(n)}\n" for n in notes),
        f"<details><summary>{html.escape(_escape_dollars(footer))}</summary>", "",
        attempt_markdown(result.attempts), "", "</details>",
    ])
    note_html = "".join(f"<div class='nbrouter-note'>{html.escape(n)}</div>" for n in notes)
    html_ = (
        f"<div class='nbrouter-result'><div class='nbrouter-answer'>{answer.html}</div>{note_html}"
        f"<details class='nbrouter-attempts'><summary style='color:#777;font-size:0.9em'>{html.escape(footer)}</summary>"
        f"{_text.attempt_html(result.attempts)}</details></div>"
    )
    data = {"text/plain": plain, "text/markdown": markdown, "text/html": html_}
    data[MIME] = result_payload(result)  # the JupyterLab / Notebook 7 extension's renderer
    return data, {METADATA_KEY: result_metadata(result, **extra)}


# ---- tables for the %llm subcommands ------------------------------------------------------


class TablesView:
    """One or more tables with a title and notes, shown as real `text/plain` and `text/html`."""

    def __init__(self, tables: Sequence[tuple[Sequence[str], Sequence[Sequence[Any]]]], *, title: str = "",
                 notes: Sequence[str] = ()) -> None:
        self.tables = list(tables)
        self.title = title
        self.notes = list(notes)

    def __str__(self) -> str:
        from tabulate import tabulate

        parts = [self.title] if self.title else []
        for headers, rows in self.tables:
            parts.append(tabulate(rows, headers=list(headers), tablefmt="simple") if rows else "(none)")
            parts.append("")
        parts.extend(self.notes)
        return "\n".join(parts).strip("\n")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        parts = [f"<div><b>{html.escape(self.title)}</b></div>"] if self.title else []
        parts.extend(_text.html_table(headers, rows) for headers, rows in self.tables)
        parts.extend(f"<div>{html.escape(n)}</div>" for n in self.notes)
        return "<div class='nbrouter-tables'>" + "<br>".join(parts) + "</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


# ---- errors -------------------------------------------------------------------------------


def short_traceback(exc: BaseException, lines: list[str] | None = None) -> BaseException:
    """Make IPython show `exc` as its message (the attempt table, one line for a config error)
    instead of a traceback through nbrouter's internals. Returns `exc` for `raise`."""
    shown = lines if lines is not None else [f"{type(exc).__name__}: {exc}"]
    exc._render_traceback_ = lambda: list(shown)  # type: ignore[attr-defined]
    return exc


# ---- the live output area -----------------------------------------------------------------


class LiveAnswer:
    """One output area for an answer that streams in, owned by the main thread.

    In a notebook it is a display with a display_id, redrawn at most every UPDATE_INTERVAL_S with the
    text so far and what the router is doing, and finally replaced by the full bundle. In a terminal
    the text is printed as it arrives and the footer after it.

    Args:
        combo: what the cell asked for, for the status line.
        fmt: the answer format (Markdown is previewed as Markdown while it streams).
        in_kernel: a notebook front end (display updates) rather than a terminal (prints).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, combo: str, fmt: str, *, in_kernel: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.combo = combo
        self.fmt = fmt
        self.in_kernel = in_kernel
        self._clock = clock
        self._pieces: list[str] = []
        self.status = f"routing to {combo}"
        self.failures: list[str] = []
        self.handle: Any = None
        self._last = float("-inf")
        self._pending = False
        self.updates = 0
        self._printed_newline = True

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def start(self) -> None:
        if self.in_kernel:
            from IPython.display import display

            self.handle = display(self._live_bundle(), raw=True, display_id=True)
            self._last = self._clock()

    def attempt_started(self, candidate: str, number: int) -> None:
        self.status = f"trying {candidate}" + (f" (attempt {number})" if number > 1 else "")
        self._refresh(force=not self._pieces)

    def attempt_finished(self, attempt: Attempt) -> None:
        if attempt.action is not Action.SERVED:
            why = attempt.kind.value if attempt.kind else attempt.action.value
            self.failures.append(f"{attempt.candidate}: {why}")
        self._refresh()

    def add(self, delta: str) -> None:
        self._pieces.append(delta)
        if self.in_kernel:
            self.status = "streaming"
            self._refresh()
        else:
            sys.stdout.write(delta)
            sys.stdout.flush()
            self._printed_newline = delta.endswith("\n")

    def finish(self, data: dict[str, str], metadata: dict[str, Any], terminal_tail: str) -> None:
        """The final full update (notebook) or the footer print (terminal)."""
        if self.in_kernel:
            self._update(data, metadata)
        else:
            self._end_line()
            print(terminal_tail)

    def fail(self, summary: str) -> None:
        """No answer: leave a one-line summary where the text would have been (the error follows)."""
        if self.in_kernel:
            lines = [self.text, ""] if self._pieces else []
            self._update({"text/plain": "\n".join([*lines, summary])}, {})
        else:
            self._end_line()

    def _end_line(self) -> None:
        if not self._printed_newline:
            print()
            self._printed_newline = True

    def _live_bundle(self) -> dict[str, str]:
        status = self.status + ("; " + ", ".join(self.failures) if self.failures else "") + " …"
        text = self.text
        plain = f"{text}\n\n{status}" if text else status
        if self.fmt != "markdown":
            return {"text/plain": plain}
        md = f"{text}\n\n*{_escape_dollars(html.escape(status))}*" if text else f"*{html.escape(status)}*"
        return {"text/plain": plain, "text/markdown": md}

    def _refresh(self, force: bool = False) -> None:
        if not self.in_kernel or self.handle is None:
            return
        now = self._clock()
        if force or now - self._last >= UPDATE_INTERVAL_S:
            self._update(self._live_bundle(), {})

    def _update(self, data: dict[str, str], metadata: dict[str, Any]) -> None:
        if self.handle is None:
            from IPython.display import display

            self.handle = display(data, raw=True, metadata=metadata, display_id=True)
        else:
            self.handle.update(data, raw=True, metadata=metadata)
        self._last = self._clock()
        self.updates += 1

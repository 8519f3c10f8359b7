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
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .._core.text import span
from ..report import MUTED_TEXT, escape_dollars, escape_markdown, html_text, markdown_html, tone_border
from ..router import attempt_line, attempt_table, attempt_text, output_width
from ..router import AllTargetsFailed, StopError
from ..router import Action, Attempt, RouteResult
from .frontend import MIME, result_payload

#: a streamed answer's output area is redrawn at most this often (10 times a second)
UPDATE_INTERVAL_S = 0.1
FORMATS = ("markdown", "text", "code", "json", "html")
#: an attempt's note is cut here in the HTML fallback (the whole note is in the payload and `_llm.attempts`)
FALLBACK_NOTE_WIDTH = 40
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
        return Answer(text, escape_dollars(text), markdown_html(text))
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


# ---- the finished bundle ------------------------------------------------------------------


def result_metadata(result: RouteResult, **extra: Any) -> dict[str, Any]:
    """What the saved notebook records about a cell's call: what served it and what it cost (never a key).
    The attempts are in the result's payload (`MIME`), once."""
    meta = {
        "combo": result.combo,
        "served_by": result.served_by,
        "model": result.model,
        "tried": sum(1 for a in result.attempts if a.action is not Action.SKIPPED),
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


def result_notes(result: RouteResult, answer: Answer, notes: Sequence[str] = ()) -> list[str]:
    """The lines said under an answer: the given notes, a JSON that did not parse, a partial answer's why."""
    notes = list(notes)
    if answer.error:
        notes.append(answer.error)
    if result.partial and result.error:
        notes.append(f"partial answer: {result.error}")
    return notes


@dataclass(frozen=True)
class CodeBelow:
    """Where `-f code` goes: into the cell below the cell `cell`, stamped with `run` (the writing request's
    id), so the kernel can tell a cell written since that run from one sent before it (Run All)."""

    cell: str
    run: str


def result_bundle(result: RouteResult, fmt: str, *, answer: Answer | None = None, notes: Sequence[str] = (),
                  code_below: CodeBelow | None = None, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) of a finished answer, small enough to save.

    The attempt record is kept once, in the extension's payload (`MIME`), which renders it. The other
    front ends' fallbacks carry the answer per `fmt`, the notes and the footer, and the HTML one line
    per attempt when there was more than one; the metadata says what served and what it cost.

    Args:
        code_below: the cell whose code (`-f code`) the extension writes into a cell below it, and the run's stamp.
    """
    answer = answer or render_answer(result.text, fmt)
    footer = result.footer()
    notes = result_notes(result, answer, notes)
    plain = "\n".join([answer.plain, "", *notes, footer])
    markdown = "\n".join([answer.markdown, "", *(f"> {escape_markdown(n)}\n" for n in notes), f"*{escape_markdown(footer)}*"])
    note_html = "".join(f"<div class='nbrouter-note' style='{tone_border('warn')}'>{html_text(n)}</div>" for n in notes)
    footer_html = f"<span style='color:{MUTED_TEXT};font-size:0.9em'>{html_text(footer)}</span>"
    if len(result.attempts) > 1:  # the route, one line an attempt; a single one is the footer already
        route = "".join(f"<div>{html_text(attempt_line(a, cut=FALLBACK_NOTE_WIDTH))}</div>" for a in result.attempts)
        footer_html = f"<details class='nbrouter-attempts'><summary>{footer_html}</summary>{route}</details>"
    html_ = f"<div class='nbrouter-result'><div class='nbrouter-answer'>{answer.html}</div>{note_html}{footer_html}</div>"
    data: dict[str, Any] = {"text/plain": plain, "text/markdown": markdown, "text/html": html_}
    code = ({"source": answer.plain, "cell": code_below.cell, "run": code_below.run}
            if code_below and answer.plain.strip() else None)
    data[MIME] = result_payload(result, code)  # the JupyterLab / Notebook 7 extension's renderer
    return data, {METADATA_KEY: result_metadata(result, **extra)}


# ---- errors -------------------------------------------------------------------------------


def short_traceback(exc: BaseException, lines: list[str] | None = None) -> BaseException:
    """Make IPython show `exc` as its message (the attempt table, one line for a config error)
    instead of a traceback through nbrouter's internals. Returns `exc` for `raise`."""
    shown = lines if lines is not None else [f"{type(exc).__name__}: {exc}"]
    exc._render_traceback_ = lambda: list(shown)  # type: ignore[attr-defined]
    return exc


def _soonest_free(attempts: Sequence[Attempt], now: float) -> tuple[str, float] | None:
    held = [(a.hold_until, a.candidate) for a in attempts if a.hold_until is not None and a.hold != "disabled"]
    if not held:
        return None
    until, candidate = min(held)
    return candidate, max(0.0, until - now)


def failure_lines(exc: AllTargetsFailed, now: float | None = None) -> list[str]:
    """The lines of the error area: what failed, then what to do about it in `%llm` terms, one thing a
    line (each shorter than a screen).

    Args:
        exc: the routing failure (it carries every attempt).
        now: the wall clock, for the time left on cooldowns.
    """
    now = time.time() if now is None else now
    kinds = Counter(a.kind.value for a in exc.attempts if a.kind is not None and a.action is not Action.SKIPPED)
    what = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in kinds.items())
    todo: list[str] = []
    if isinstance(exc, StopError):
        todo.append(f"another target would not help: {exc.kind.value} stops the call (the combo's fallback_on can change that)")
    soonest = _soonest_free(exc.attempts, now)
    if soonest is not None:
        todo.append(f"{soonest[0]} frees up first, in {span(soonest[1])}")
        todo.append(f"`%llm reset {soonest[0]}` clears its cooldown")
    todo.append("`%llm status` shows every cooldown and breaker")
    return [f"{type(exc).__name__}: {exc.headline}" + (f": {what}" if what else "") + ".", *(t + "." for t in todo)]


def failure_bundle(exc: AllTargetsFailed, **extra: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """(data, metadata) of a failed call: the headline and hint above the attempt table (HTML in a
    notebook, fitted text in a terminal), and what was tried in the metadata."""
    table = attempt_table(exc.attempts)
    hint = exc.hint
    plain = "\n".join([f"{exc.headline}:", attempt_text(exc.attempts, terminal_width()), *([hint] if hint else [])])
    html_ = (f"<div class='nbrouter-failure' style='{tone_border('bad')}'><div><b>{html_text(exc.headline)}</b></div>"
             f"{table.html()}" + (f"<div style='color:{MUTED_TEXT}'>{html_text(hint)}</div>" if hint else "") + "</div>")
    markdown = "\n\n".join([f"**{escape_markdown(exc.headline)}**", table.markdown(), *([escape_markdown(hint)] if hint else [])])
    meta = {"combo": exc.combo, "served_by": None, "error": exc.headline,
            "attempts": [_attempt_record(a) for a in exc.attempts], **{k: v for k, v in extra.items() if v is not None}}
    return {"text/plain": plain, "text/markdown": markdown, "text/html": html_}, {METADATA_KEY: meta}


def terminal_width() -> int:
    """The terminal's width in columns (views.TEXT_WIDTH where there is none, as in a kernel)."""
    return output_width()


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

    def fail(self, data: dict[str, str], metadata: dict[str, Any]) -> None:
        """No answer: the failure's bundle where the text would have been (notebook), or end the line."""
        if self.in_kernel:
            self._update(data, metadata)
        else:
            self._end_line()

    def withdraw(self) -> None:
        """The call ended in an error shown elsewhere: the "routing to ..." line goes (text already shown stays)."""
        self.status = ""
        if self.in_kernel and self.handle is not None:
            text = self.text
            self._update({"text/plain": text} if not text or self.fmt != "markdown" else
                         {"text/plain": text, "text/markdown": escape_dollars(text), "text/html": markdown_html(text)}, {})
        elif not self.in_kernel:
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
        # the answer so far as it will finally look (and its dollars as dollars), the status below it
        md = f"{escape_dollars(text)}\n\n*{escape_markdown(html.escape(status))}*" if text else f"*{escape_markdown(html.escape(status))}*"
        html_ = (markdown_html(text) if text else "") + f"<div style='color:{MUTED_TEXT}'><em>{html_text(status)}</em></div>"
        return {"text/plain": plain, "text/markdown": md, "text/html": html_}

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

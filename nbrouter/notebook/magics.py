"""`%%llm` and `%llm`: prompt cells that stream, fall back, and show what served them and what it cost.

    %load_ext nbrouter
    %config LLMMagics.default_combo = "fast"

    %%llm fast -t 0.2
    Explain {topic} in two sentences.

The magics only call Router methods: routing, fallback and the remembered state all live in the router.
What they keep is this kernel's own session: the default combo, the chat history per combo, and the
ledger of what each cell cost.
"""

from __future__ import annotations

import difflib
import re
import sys
import textwrap
import time
import traceback
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Mapping

from IPython.core.error import UsageError
from IPython.display import display
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from traitlets import Bool, Enum, Float, Unicode, observe

from ..router import AllTargetsFailed, BudgetExceeded, ComboConfigError, RouteError
from ..router import Status
from ..router import Action, Attempt, AttemptFinished, AttemptStarted, Decision, Done, ErrorKind, RouteResult, TextDelta, Usage
from .._core import scrub
from .._core.content import image_of, text_parts
from ..report import Shown, Table
from ..router import attempt_text, decision_html, decision_text, image_input, log_table
from .display import FORMATS, CodeBelow, LiveAnswer, failure_bundle, failure_lines, render_answer, result_bundle, short_traceback, terminal_width
from . import frontend
from .batch_view import run_batch_cell
from .jobs_view import install as show_job_waits, run_job_cell, uninstall as hide_job_waits
from .interpolation import interpolate
from .ledger import CostLedger

if TYPE_CHECKING:
    from ..router import Router

SUBCOMMANDS = ("combos", "providers", "status", "log", "cost", "budget", "explain", "use", "reset", "config", "builder",
               "chat", "error", "cache", "help")
LAST_RESULT = "_llm"
LAST_JSON = "_llm_json"
#: `%llm log` shows this many attempts unless told (one screen)
LOG_ROWS = 10
#: `%llm log --all` reads at most this many (the whole log in practice)
LOG_ALL = 1_000_000
#: `%llm error` sends at most this many of the traceback's last lines
ERROR_TRACEBACK_LINES = 40
#: `%llm chat show` cuts a message longer than this (the whole message is on demand in the HTML)
CHAT_SHOW_WIDTH = 200
#: what a cell written by `-f code` prints instead of running when it was queued with the cell that wrote it
SKIPPED_CODE_CELL = ("nbrouter: not run. This cell holds the code that `%%llm -f code` writes from the cell above, "
                     "and it was queued with that cell (Run All): it would have run the code of the answer before. "
                     "Run it on its own to run the code now in it.")
#: a cell sent this soon after the `-f code` cell that wrote it counts as queued with it even when the writer
#: was quicker (a cached answer takes milliseconds, and a busy browser spaces Run All's requests by as much);
#: no one runs the cell by hand within a quarter second of the answer above it
QUEUED_SLACK_S = 0.25
ERROR_PROMPT = """A cell of my notebook raised an error. Explain briefly what went wrong and how to fix it, and give the corrected code.

The cell:
```python
{cell}
```

The error:
```
{error}
```"""


@magics_class
class LLMMagics(Magics):
    """The `%%llm` cell magic and the `%llm` line magic, configurable with `%config LLMMagics.x = ...`."""

    default_combo = Unicode("", help="The combo a `%%llm` cell uses when it names none (`%llm use NAME` sets it).").tag(config=True)
    stream = Bool(True, help="Stream answers as they arrive; `--no-stream` turns it off for one cell.").tag(config=True)
    cache = Bool(False, help="Answer a cell from the response cache when it holds the same request (Run All without "
                             "paying again); `--cache` asks for it in one cell.").tag(config=True)
    interpolate = Bool(True, help="Replace `{name}` in a prompt by the variable's value; `--no-interpolate` turns it off for one cell.").tag(config=True)
    format = Enum(FORMATS, default_value="markdown", help="How an answer is shown when a cell gives no `-f`.").tag(config=True)
    budget_usd = Float(None, allow_none=True, help="Session budget in USD: a cell whose estimated cost would pass it is refused before anything is sent.").tag(config=True)
    raise_on_failure = Bool(True, help="A cell whose every target failed raises, which stops Run All (Jupyter's rule for any error); "
                            "False shows the failure and lets the notebook go on.").tag(config=True)

    def __init__(self, shell: Any = None, router: Router | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._router = router
        self.ledger = CostLedger()
        self.chats: dict[str, list[dict[str, Any]]] = {}
        #: per combo, the tools (`--tools`) whose calls and results its chat history holds
        self.chat_tools: dict[str, list[Any]] = {}
        #: None: decide from the shell (a kernel updates displays in place, a terminal prints)
        self.live_display: bool | None = None
        self.closed = False
        #: the source and the exception of the last cell that raised (for `%llm error`)
        self.last_failure: tuple[str, BaseException] | None = None
        #: the cells whose `-f code` the extension writes below them: {cell id: (request sent at, seconds run)}
        #: per cell that wrote `-f code` below it: (when its request was sent, how long it ran, its run's token)
        self._code_below: dict[str, tuple[float | None, float, str]] = {}

    # ---- the router --------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """The session's Router, created on first use from NBROUTER_CONFIG or the user config file."""
        if self.closed:
            raise UsageError("nbrouter was unloaded; run %load_ext nbrouter again")
        if self._router is None:
            from ..router import Router

            self._router = Router()
            limit = self._router.budget.limit
            if self.budget_usd is None and limit is not None:
                self.budget_usd = float(limit)  # the config's `[budget] usd`: shown and changed by `%llm budget`
            self._apply_budget()
        return self._router

    @observe("budget_usd")
    def _budget_changed(self, change: Any) -> None:
        if self._router is not None:
            self._apply_budget()

    def _apply_budget(self) -> None:
        """The session budget is the Router's own (`router.budget`), which every call is held against: a
        candidate whose estimate does not fit what is left is skipped, and the call is refused when none fits."""
        assert self._router is not None
        if self._router.config.budget.on_budget is None:  # (a config's `[budget] on_budget` stands)
            self._router.budget.on_budget = "cheapest"
        self._router.budget.set_limit(self.budget_usd)

    def open(self) -> None:
        """Read the configuration now, so that a mistake in it is reported when the extension loads."""
        try:
            self.router
        except ComboConfigError as exc:
            print(f"nbrouter: {type(exc).__name__}: {exc}\n(fix it, then run `%llm config reload`)", file=sys.stderr)

    def close(self) -> None:
        """Stop the router's background loop and release the state file."""
        self.closed = True
        if self._router is not None:
            self._router.close()
            self._router = None

    # ---- the magic ---------------------------------------------------------------------------

    @magic_arguments()
    @argument("combo", nargs="?", default=None,
              help="A combo name, a virtual `auto...` combo, or a bare provider/model (default: LLMMagics.default_combo or `%%llm use NAME`).")
    @argument("-s", "--system", default=None, help="The system prompt.")
    @argument("-m", "--max-tokens", type=int, default=None, help="The most tokens to generate.")
    @argument("-t", "--temperature", type=float, default=None, help="Sampling temperature.")
    @argument("-f", "--format", choices=FORMATS, default=None,
              help="How to show the answer: markdown (default), text, code (a fenced block), json (parsed into _llm_json), html.")
    @argument("-o", "--out", default=None, metavar="VAR", help="Store the RouteResult in this variable (it is always in _llm too).")
    @argument("--no-stream", action="store_true", help="Wait for the whole answer instead of streaming it.")
    @argument("--max-cost", type=float, default=None, metavar="USD", help="Refuse the call if every target's estimated cost is above this.")
    @argument("--timeout", type=float, default=None, metavar="S",
              help="The wall-clock limit of each attempt in seconds (above 0), instead of the combo's.")
    @argument("--explain", action="store_true", help="Show what the router would do (order, skips and why); send nothing.")
    @argument("--strategy", default=None, metavar="NAME", help="Use this strategy instead of the combo's for this cell.")
    @argument("--chat", action="store_true", help="Continue this combo's conversation in this kernel.")
    @argument("--new", action="store_true", help="Start this combo's conversation afresh (implies --chat).")
    @argument("--no-interpolate", action="store_true", help="Send `{name}` as written instead of the variable's value.")
    @argument("--cache", action="store_true", help="Answer from the response cache when it holds this request (and store the answer).")
    @argument("--over", default=None, metavar="VAR", help="Run the cell as a template over every item of VAR (a list, Series or DataFrame): {item}, or {column} of a row.")
    @argument("--column", default=None, metavar="COL", help="With --over: the items are this column of VAR.")
    @argument("--concurrency", type=int, default=None, metavar="N", help="With --over: at most N calls in flight.")
    @argument("--schema", default=None, metavar="VAR", help="With --over: each answer is JSON matching the schema in VAR; its fields become columns.")
    @argument("--executor", default=None, metavar="VAR", help="With --over: run the calls on a cluster: VAR holds a distributed.Client (Dask) or a Ray handle; `ray` alone names the connected Ray cluster.")
    @argument("--batch", action="store_true", help="With --over: through the providers' batch APIs at half price, as a job that outlives the kernel (kept in _llm_job); waits with a live view, Ctrl-C stops waiting, not the job.")
    @argument("--image", action="append", default=None, metavar="VAR",
              help="Send the image in VAR with the prompt (a matplotlib figure, a PIL image, bytes, a path or a URL); "
                   "`_` is the last figure shown (pyplot's current figure, else the last output). Repeat for more. "
                   "With --over: the column holding each row's image.")
    @argument("--tools", default=None, metavar="F,G",
              help="Let the model call these Python functions (variables, comma-separated): the calls it asks for "
                   "are run and their results sent back until it answers.")
    @no_var_expand  # `$5` stays `$5` in both forms (IPython would expand `$name` and `{name}` in the magic's line)
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> None:
        """Send the cell to a combo: stream the answer, fall back on failure, show who served it and the cost.

        As a cell magic, the cell body is the prompt: `%%llm [COMBO] [options]`. `{name}` in the prompt is
        replaced by the value of the variable `name` when it exists; other braces are left as written and
        `{{name}}` stays a literal `{name}`. The result is in `_llm` (a RouteResult).

        `$` is always sent as written, in the cell and in the line (`$5`, `$name`); `{name}` is the one way
        to put a variable's value in a prompt.

        As a line magic: `%llm COMBO PROMPT...` sends a one-line prompt, and these subcommands manage the
        session: `combos`, `providers`, `status [--live]`, `log [N] [--all]`, `cost`, `budget [USD|off]`,
        `explain COMBO [PROMPT]`, `use COMBO`, `reset [TARGET]`, `config [reload]`, `builder [COMBO]`,
        `chat [show|clear] [COMBO]`, `error [COMBO]`; `%llm help` lists them with examples.
        """
        if cell is None:
            return self._line(line)  # `x = %llm COMBO PROMPT` gives the RouteResult
        self._prompt(self._parse(line), cell)
        return None  # a cell's answer is displayed already: no Out[] repeating it

    def _parse(self, line: str) -> Any:
        # like magic_arguments.parse_argstring, but quotes are removed: -s "Be brief." is `Be brief.`
        return self.llm.parser.parse_args(arg_split(line, posix=True))

    # ---- sending a prompt --------------------------------------------------------------------

    def _prompt(self, args: Any, body: str) -> RouteResult | None:
        try:
            router = self.router
        except ComboConfigError as exc:
            raise short_traceback(exc) from None
        combo = args.combo or self.default_combo
        if not combo:
            raise UsageError("no combo: write `%%llm NAME` (`%%llm auto` lets the router choose among every configured "
                             "model), or choose a default with `%llm use NAME`")
        ns = self.shell.user_ns if self.shell is not None else {}
        if self.interpolate and not args.no_interpolate and not args.over:  # --over: braces are the items' fields
            hidden = getattr(self.shell, "user_ns_hidden", {})
            history = getattr(self.shell, "history_manager", None)
            body = interpolate(body, ns, hidden, inputs=getattr(history, "input_hist_raw", []),
                               outputs=getattr(history, "output_hist", {}))
        prompt = body.strip()
        if not prompt:
            raise UsageError("the prompt is empty: write it in the cell below `%%llm`")
        fmt = args.format or self.format

        call: dict[str, Any] = {
            "system": args.system, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "strategy": args.strategy,
        }
        if args.cache or self.cache:
            call["cache"] = True
        chat = args.chat or args.new
        if args.new:
            self.chats.pop(combo, None)
            self.chat_tools.pop(combo, None)
        if chat:
            call["messages"] = list(self.chats.get(combo, []))
        kept_tools = self.chat_tools.get(combo, []) if chat else []
        remaining = router.budget.remaining
        if remaining is not None and remaining <= 0:
            raise short_traceback(BudgetExceeded(
                f"the {router.budget.label} of ${self.budget_usd:.6f} is spent (${router.budget.spent:.6f} so far); "
                "nothing was sent. Raise it with `%llm budget USD`, or `%llm budget off`."))
        if args.max_cost is not None:
            call["max_cost_usd"] = args.max_cost
        if args.timeout is not None:
            call["timeout_s"] = args.timeout
        if args.image:  # issue 25: images with the prompt (with --over: the column of each row's image)
            call["images"] = args.image[0] if args.over else self._images(args.image, ns)
        if args.tools:
            call["tools"] = _with_kept(self._tools(args.tools, ns), kept_tools)
        elif kept_tools:
            # the history holds tool calls and results: their tools are declared again (Anthropic refuses a
            # request whose messages hold tool_use blocks and that declares no tools), but nothing is called
            # this turn, since no --tools runs them
            call["tools"], call["tool_choice"] = kept_tools, "none"

        if args.executor is not None:
            if not args.over:
                raise UsageError("--executor goes with --over VAR: it runs a batch's calls on a cluster")
            call["executor"] = _executor(args.executor, ns)
        if args.over:  # issue 17: a batch over VAR's items (batch_view.py); issue 24: --batch (jobs_view.py)
            (run_job_cell if args.batch else run_batch_cell)(self, router, combo, args, body, call)
            return None
        if args.explain:
            self._show(router.explain(combo, prompt, **call))
            return None

        where = self.cell_context()
        # -f code in JupyterLab / Notebook 7: the extension writes the code into the cell below (see _code_below)
        code_below = (CodeBelow(where["cell_id"], self._request_id())
                      if fmt == "code" and self._front_end_writes_cells() else None)
        started = time.monotonic()
        stream = self.stream and not args.no_stream and not args.tools  # a tool loop is several requests: not streamed
        live = LiveAnswer(combo, fmt, in_kernel=self._in_kernel()) if stream else None
        try:
            if live is not None:
                result = self._stream(router, combo, prompt, fmt, call, where, live, code_below)
            else:
                try:
                    result = router.run_tools(combo, prompt, **call) if args.tools else router.complete(combo, prompt, **call)
                except KeyboardInterrupt:  # Router.complete cancelled the request before giving it back
                    self.ledger.record([], combo=combo, served_by=None, outcome="cancelled", unknown=1, **where)
                    self._forget_result()
                    raise short_traceback(KeyboardInterrupt(), ["KeyboardInterrupt: cancelled by the user before the answer arrived"]) from None
        except BudgetExceeded as exc:
            if remaining is not None and (args.max_cost is None or remaining < Decimal(str(args.max_cost))):
                exc = BudgetExceeded(f"refused before sending: the {router.budget.label} has ${remaining:.6f} left "
                                     f"(of ${self.budget_usd:.6f}). {exc}", exc.attempts)
            self._forget_result()
            raise short_traceback(exc) from None
        except RouteError as exc:
            self.ledger.record(exc.attempts, combo=combo, served_by=None, outcome="failed", **where)
            self._forget_result()
            if isinstance(exc, AllTargetsFailed):
                self._failed(exc, live, where)
                return None
            raise short_traceback(exc) from None

        self.ledger.record(result.attempts, combo=combo, served_by=result.served_by,
                           outcome="partial" if result.partial else "served", **where)
        answer = render_answer(result.text, fmt)
        self._remember(result, args.out, answer.value if fmt == "json" else None)
        if code_below and answer.plain.strip():
            self._code_below[code_below.cell] = (_request_date(self._parent()), time.monotonic() - started, code_below.run)
        elif fmt == "code" and self.shell is not None and answer.plain.strip():
            # elsewhere, as `%%ai -f code` does: the code in a new cell below (the next prompt in a terminal)
            self.shell.set_next_input(answer.plain, replace=False)
        if chat and not result.partial:
            # a tool round is kept as it was sent (the assistant's calls, then every result), in the portable
            # shape each protocol translates; the answer's own calls were never run (no results): text only
            # the images sent with the prompt stay in the history with it (as a chat app keeps them): the
            # next turn may ask about them, and the model sees them again
            asked: str | list[Any] = [prompt, *call["images"]] if call.get("images") else prompt
            self.chats[combo] = [*call["messages"], {"role": "user", "content": asked}, *result.transcript,
                                 {"role": "assistant", "content": result.text}]
            if result.transcript:
                self.chat_tools[combo] = list(call["tools"])
        for line in _tool_lines(result):
            print(line)
        if not stream:
            data, metadata = result_bundle(result, fmt, answer=answer, code_below=code_below, **where)
            display(data, raw=True, metadata=metadata)
            if not self._in_kernel():  # a terminal shows text/plain: the route under it when there is more to say
                for table in _terminal_attempts(result):
                    print(table)
        return result

    def _images(self, names: list[str], ns: dict[str, Any]) -> list[Any]:
        """`--image VAR` (repeated): each image read as a call reads it, a mistake said before anything is sent."""
        images = []
        for name in names:
            try:
                images.append(image_input(self._image_value(name, ns)))
            except (ValueError, OSError) as exc:
                raise UsageError(f"--image {name}: {exc}") from None
        return images

    def _image_value(self, name: str, ns: dict[str, Any]) -> Any:
        """The value `--image NAME` means: `_` the last figure shown, else a variable, else a path or URL."""
        if name == "_":
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None and pyplot.get_fignums():
                return pyplot.gcf()
            last = ns.get("_")
            if last is None or isinstance(last, str) and not last:
                raise UsageError("--image _: no figure is open and no output was shown yet")
            return last
        if name in ns:
            return ns[name]
        if "/" in name or "." in name or ":" in name:
            return name  # a path or a URL
        raise UsageError(f"--image {name}: there is no variable of that name (give a figure, an image, bytes, a path or `_`)")

    def _tools(self, names: str, ns: dict[str, Any]) -> list[Any]:
        """`--tools f,g`: the functions (or tool dicts) of those variables."""
        tools = []
        for name in (n.strip() for n in names.split(",")):
            if not name:
                continue
            value = ns.get(name)
            if value is None or not (callable(value) or isinstance(value, dict)):
                raise UsageError(f"--tools {names}: {name!r} is not a function (or a tool dict) in this kernel")
            tools.append(value)
        if not tools:
            raise UsageError("--tools needs the names of functions, comma-separated")
        return tools

    def _failed(self, exc: AllTargetsFailed, live: LiveAnswer | None, where: dict[str, Any]) -> None:
        """Show a failed call: the attempt table where the answer would be, and one line saying what to do
        (raised, so that Run All stops, unless `raise_on_failure` is False)."""
        data, metadata = failure_bundle(exc, **where)
        if live is not None and live.in_kernel:
            live.fail(data, metadata)
        else:
            if live is not None:
                live.fail(data, metadata)  # a terminal: end the streamed line first
            display(data, raw=True, metadata=metadata)
        lines = failure_lines(exc)
        if self.raise_on_failure:
            raise short_traceback(exc, lines) from None
        print("\n".join(lines), file=sys.stderr)

    def _stream(self, router: Router, combo: str, prompt: str, fmt: str, call: dict[str, Any],
                where: dict[str, Any], live: LiveAnswer, code_below: CodeBelow | None = None) -> RouteResult:
        """Consume Router.stream() events on the main thread, which owns the display."""
        attempts: list[Attempt] = []
        current: AttemptStarted | None = None  # the last attempt started
        in_flight: AttemptStarted | None = None  # ... while it has not finished
        started = time.perf_counter()
        events = router.stream(combo, prompt, **call)
        live.start()
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    live.add(event.text)
                elif isinstance(event, AttemptStarted):
                    current = in_flight = event
                    live.attempt_started(event.candidate, event.number)
                elif isinstance(event, AttemptFinished):
                    attempts.append(event.attempt)
                    if in_flight is not None and event.attempt.candidate == in_flight.candidate:
                        in_flight = None
                    live.attempt_finished(event.attempt)
                elif isinstance(event, Done):
                    if event.error is not None:
                        if isinstance(event.error, KeyboardInterrupt):  # the router was closed under us
                            raise KeyboardInterrupt
                        raise event.error
                    assert event.result is not None
                    result = event.result
                    answer = render_answer(result.text, fmt)
                    data, metadata = result_bundle(result, fmt, answer=answer, code_below=code_below, **where)
                    tail = "\n".join([*([answer.error] if answer.error else []), result.footer(), *_terminal_attempts(result)])
                    live.finish(data, metadata, tail)
                    return result
            raise RuntimeError("the router's event stream ended without Done")
        except Exception as exc:
            if not isinstance(exc, AllTargetsFailed):  # a failure's table replaces the status line itself
                live.withdraw()
            raise
        except KeyboardInterrupt:
            # closing the generator cancels the task on the router's loop, which logs the attempt as cancelled
            events.close()
            partial = self._cancelled(combo, live.text, attempts, current, in_flight, started)
            self.ledger.record(partial.attempts, combo=combo, served_by=partial.served_by, outcome="cancelled", **where)
            self._remember(partial, None, None)
            # the note is said once, under the partial text (the result's `error`); the traceback only points to it
            data, metadata = result_bundle(partial, fmt, **where)
            tail = "\n".join([f"partial answer: {partial.error}", partial.footer(), *_terminal_attempts(partial, always=True)])
            live.finish(data, metadata, tail)
            interrupt = KeyboardInterrupt(partial.error)
            raise short_traceback(interrupt, ["KeyboardInterrupt: the partial text is in _llm"]) from None
        finally:
            events.close()

    def _cancelled(self, combo: str, text: str, attempts: list[Attempt], current: AttemptStarted | None,
                   in_flight: AttemptStarted | None, started: float) -> RouteResult:
        """The partial result of an interrupted cell, for the display and `_llm`.

        The router logs the cancelled attempt itself; its event arrives after we stopped listening, so
        the row shown here is a copy of what it records."""
        shown = list(attempts)
        if in_flight is not None:  # its kind says it was cancelled; the note under the answer says the rest
            shown.append(Attempt(candidate=in_flight.candidate, path=in_flight.path, action=Action.STOP, started_at=time.time(),
                                 kind=ErrorKind.CANCELLED))
        usage = Usage()
        for a in shown:
            if a.usage is not None:
                usage = usage + a.usage
        result = RouteResult(text=text, served_by=current.candidate if current else "", model="", combo=combo, attempts=shown,
                             usage=usage, cost_usd=None, latency_s=time.perf_counter() - started, ttft_s=None, partial=True,
                             usage_known=any(a.usage is not None for a in shown))
        result.error = _cancel_note(result, text)
        return result

    def _remember(self, result: RouteResult, out: str | None, json_value: Any) -> None:
        if self.shell is None:
            return
        ns = self.shell.user_ns
        ns[LAST_RESULT] = result
        if out:
            if not out.isidentifier():
                raise UsageError(f"-o needs a variable name, not {out!r}")
            ns[out] = result
        if json_value is not None:
            ns[LAST_JSON] = json_value

    def _forget_result(self) -> None:
        if self.shell is not None:
            self.shell.user_ns[LAST_RESULT] = None

    def _in_kernel(self) -> bool:
        if self.live_display is not None:
            return self.live_display
        return getattr(self.shell, "kernel", None) is not None

    def _parent(self) -> dict[str, Any]:
        """The message that asked for the running cell (its header and metadata), or {} outside a kernel."""
        shell = self.shell
        kernel = getattr(shell, "kernel", None)
        try:
            parent = kernel.get_parent() if kernel is not None and hasattr(kernel, "get_parent") else getattr(shell, "parent_header", None)
        except Exception:
            parent = None
        return parent if isinstance(parent, dict) else {}

    def cell_context(self) -> dict[str, Any]:
        """The running cell's execution count, and its id when the front end sends one (JupyterLab does)."""
        shell = self.shell
        # the running cell's ExecutionResult knows its number (IPython 9 increments
        # shell.execution_count before the cell runs, older versions after)
        running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
        count = getattr(running, "execution_count", None) or getattr(shell, "execution_count", None)
        cell_id = (self._parent().get("metadata") or {}).get("cellId")
        return {"execution_count": count, "cell_id": cell_id if isinstance(cell_id, str) else None}

    def _front_end_writes_cells(self) -> bool:
        """Whether the cell runs in JupyterLab or Notebook 7 (they send the cell's id and `deletedCells`),
        where nbrouter's extension writes `-f code` into a cell below instead of IPython's set_next_input,
        which adds a new cell on every run."""
        metadata = self._parent().get("metadata") or {}
        return isinstance(metadata.get("cellId"), str) and "deletedCells" in metadata

    def skip_queued_code_cell(self, lines: list[str]) -> list[str]:
        """An IPython cleanup input transformer: the cell the extension wrote `-f code` into is not run
        when it was queued with the cell that wrote it (Run All, run all below).

        Such a cell's metadata names the cell that wrote it and the run that wrote it last (JupyterLab
        sends a cell's metadata with its code). Queued with its writer, it was sent before this run's
        answer was written in: its stamp is an older run's, and it would run the code it held before, on
        every Run All. Run on its own afterwards, it carries this run's stamp, and runs. A cell written by
        an extension that did not stamp falls back on time: queued means sent before the writer could have
        finished (`QUEUED_SLACK_S` of slack).
        """
        parent = self._parent()
        mark = (parent.get("metadata") or {}).get("nbrouter")
        made_by = mark.get("code_of") if isinstance(mark, dict) else None
        if not isinstance(made_by, str) or made_by not in self._code_below:
            return lines
        writer_sent, writer_ran, run = self._code_below[made_by]
        stamp = mark.get("run") if isinstance(mark, dict) else None
        if isinstance(stamp, str):
            queued = stamp != run
        else:
            sent = _request_date(parent)
            queued = sent is not None and writer_sent is not None and sent - writer_sent < writer_ran + QUEUED_SLACK_S
        return [f"print({SKIPPED_CODE_CELL!r})\n"] if queued else lines

    def _request_id(self) -> str:
        """The running request's message id (unique per run), or a count when the front end sent none."""
        msg_id = (self._parent().get("header") or {}).get("msg_id")
        return msg_id if isinstance(msg_id, str) and msg_id else f"run-{len(self._code_below)}-{time.monotonic()}"

    def cell_finished(self, result: Any) -> None:
        """IPython's post_run_cell event: remember the last cell that raised, for `%llm error`."""
        error = getattr(result, "error_in_exec", None)
        source = getattr(getattr(result, "info", None), "raw_cell", None) or ""
        if error is not None and not source.lstrip().startswith("%llm error"):
            self.last_failure = (source, error)

    # ---- %llm subcommands --------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        word, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not word:
            return self._help("")
        handler: Callable[[str], None] | None = getattr(self, f"_cmd_{word}", None) if word in SUBCOMMANDS else None
        try:
            if handler is not None:
                return handler(rest)
            if self._names_a_combo(word):
                if not rest:
                    raise UsageError(f"no prompt: write `%llm {word} PROMPT`, or use a `%%llm {word}` cell")
                return self._prompt(self._parse(word), rest)
        except ComboConfigError as exc:
            raise short_traceback(exc) from None
        nearest = self._nearest_word(word)
        raise UsageError(
            f"unknown subcommand or combo {word!r}" + (f": did you mean {nearest!r}?" if nearest else ".")
            + f" Subcommands: {', '.join(SUBCOMMANDS)}; or `%llm COMBO PROMPT` with a combo name, an auto... combo or a provider/model"
        )

    def _nearest_word(self, word: str) -> str | None:
        """The subcommand or combo nearest to a mistyped word (`everydy` -> `everyday`), or None."""
        from ..router import VIRTUAL_COMBOS

        try:
            combos = list(self.router.config.combos)
        except ComboConfigError:
            combos = []
        close = difflib.get_close_matches(word, [*SUBCOMMANDS, *combos, *VIRTUAL_COMBOS], n=1, cutoff=0.6)
        return close[0] if close else None

    def _names_a_combo(self, word: str) -> bool:
        from ..router import combo_kind

        try:
            combos = self.router.config.combos
        except ComboConfigError:
            combos = {}
        return combo_kind(word, combos) is not None

    def _show(self, obj: Any) -> None:
        """Display a table (or a Decision, a Status): HTML in a notebook, text fitted to the terminal."""
        if isinstance(obj, Decision):
            display({"text/plain": decision_text(obj, terminal_width()), "text/html": decision_html(obj)}, raw=True)
            return
        if isinstance(obj, Status):
            obj = obj.tables()
        if isinstance(obj, Shown):
            # HTML for the notebook, text for a terminal; the Markdown form would only be a third copy in the file
            display({"text/plain": obj.text(terminal_width()), "text/html": obj.html()}, raw=True)
            return
        display(obj)

    def _help(self, rest: str) -> None:
        print(help_text(self.llm.parser))

    _cmd_help = _help

    def _cmd_error(self, rest: str) -> None:
        """`%llm error [COMBO] [options]`: ask for an explanation and a fix of the last error."""
        if self.last_failure is None:
            print("no cell has raised an error in this session yet")
            return
        source, error = self.last_failure
        lines = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip("\n").splitlines()
        shown = "\n".join(lines[-ERROR_TRACEBACK_LINES:])
        args = self._parse(rest)
        args.no_interpolate = True  # the cell and the traceback are sent as they are, braces and all
        self._prompt(args, ERROR_PROMPT.format(cell=scrub(source.strip("\n")), error=scrub(shown)))

    def _cmd_chat(self, rest: str) -> None:
        """`%llm chat [show|clear] [COMBO]`: the conversation `--chat` keeps per combo."""
        action, _, combo = rest.partition(" ")
        action, combo = action or "show", combo.strip()
        if action not in ("show", "clear"):
            raise UsageError("usage: %llm chat [show|clear] [COMBO]")
        names = [combo] if combo else sorted(self.chats)
        if action == "clear":
            cleared = [n for n in names if self.chats.pop(n, None) is not None]
            for name in names:
                self.chat_tools.pop(name, None)
            print(f"cleared the chat of {', '.join(cleared)}" if cleared else "no chat to clear")
            return
        rows = [[name, m["role"], _chat_text(m)] for name in names for m in self.chats.get(name, [])]
        if not rows:
            print("no chat yet" + (f" with {combo}" if combo else "") + ": `%%llm COMBO --chat` starts one")
            return
        self._show(Table(["combo", "role", "message"], rows, cut=CHAT_SHOW_WIDTH,
                         notes=["`%llm chat clear [COMBO]` forgets it; `--new` starts afresh"]))

    def _builder_tested(self, combo: str, attempts: list[Attempt], served_by: str | None) -> None:
        """Record a builder test call in the session's ledger (it runs in the builder's thread)."""
        self.ledger.record(attempts, combo=combo, served_by=served_by, outcome="test")

    def _cmd_combos(self, rest: str) -> None:
        from ..router import VIRTUAL_COMBOS

        rows = []
        for name, combo in sorted(self.router.combos.items()):
            mark = "*" if name == self.default_combo else ""
            rows.append([mark + name, combo.strategy, " > ".join(s.ref for s in combo.steps)])
        notes = [f"virtual: {', '.join(VIRTUAL_COMBOS)}; any provider/model works as a one-step combo"]
        if self.default_combo:
            notes.append(f"default: {self.default_combo}")
        self._show(Table(["combo", "strategy", "targets"], rows, notes=notes))

    def _cmd_providers(self, rest: str) -> None:
        rows = []
        providers = self.router.providers  # with no config file: what zero-config found, and where from
        if not providers:
            print("no provider found: set a key (e.g. OPENAI_API_KEY), start a local server, run `%llm builder`, "
                  "or rehearse with the simulator (`nbrouter demo`)")
            return
        for name, p in sorted(providers.items()):
            accounts = []
            for acc in p.accounts:
                if acc.api_key_env:
                    accounts.append(f"{acc.name} ({acc.api_key_env} {'set' if acc.api_key() else 'MISSING'})")
                else:
                    accounts.append(acc.name)
            rows.append([name, p.protocol + (" (local)" if p.local else ""), scrub(p.base_url), ", ".join(accounts),
                         ", ".join(p.models), p.source + ("" if p.enabled else " (disabled)")])
        self._show(Table(["provider", "protocol", "base url", "accounts", "models", "from"], rows, wrap=[4]))

    def _cmd_status(self, rest: str) -> None:
        if rest.split() == ["--live"]:
            board = _widget_module("board")
            if board is not None:
                board.StatusBoard(self.router).display()
            return
        if rest:
            raise UsageError("usage: %llm status [--live]")
        self._show(self.router.status())

    def _cmd_log(self, rest: str) -> None:
        words = rest.split()
        show_all = "--all" in words
        words = [w for w in words if w != "--all"]
        try:
            n = LOG_ALL if show_all else int(words[0]) if words else LOG_ROWS
            if n <= 0 or len(words) > 1:
                raise ValueError
        except ValueError:
            raise UsageError("usage: %llm log [N] [--all]") from None
        rows = self.router.log(n + 1)  # one more than shown: is there an older page?
        more = len(rows) > n
        rows = rows[-n:]
        if show_all:
            title = f"all {len(rows)} attempts of the call log"
        else:
            title = f"the last {len(rows)} attempts" + (f" (`%llm log {n * 3}` or `--all` for older ones)" if more else "")
        self._show(log_table(rows, title=title))

    def _cmd_cost(self, rest: str) -> None:
        ledger = self.ledger
        budget = f"budget ${self.budget_usd:.6f}" if self.budget_usd is not None else "no budget (`%llm budget USD` sets one)"
        if not ledger.cells:
            print(f"no calls yet in this session; {budget}")
            return
        shared = self.router.sync_budget()
        note = None
        if shared.shared is not None and shared.limit is not None and shared.remaining is not None:
            note = f"${shared.limit:.6f} (${max(shared.remaining, Decimal(0)):.6f} left of the {shared.label})"
        self._show(ledger.tables(self.budget_usd, note))

    def _cmd_budget(self, rest: str) -> None:
        if rest.lower() in ("off", "none"):
            self.budget_usd = None
            print("no session budget")
            return
        if rest:
            try:
                value = float(rest.lstrip("$"))
            except ValueError:
                raise UsageError("usage: %llm budget USD  (or `%llm budget off`)") from None
            if value < 0:
                raise UsageError("a budget cannot be negative")
            self.budget_usd = value
        budget = self.router.sync_budget()  # the Router's own: every call of this session is held against it
        if self.budget_usd is None:
            print(f"no session budget; {budget.text()}" if budget.shared is None
                  else f"no limit on the {budget.label}; {budget.text()}")
            return
        left = max(budget.remaining, Decimal(0)) if budget.remaining is not None else Decimal(0)
        unknown = budget.unknown_calls
        print(f"{budget.label} ${self.budget_usd:.6f}: spent ${budget.spent:.6f}, ${left:.6f} left"
              + (f" ({unknown} attempts at an unknown price not counted)" if unknown else ""))

    def _cmd_cache(self, rest: str) -> None:
        cache = self.router.cache
        if rest == "clear":
            print(f"response cache cleared ({cache.clear()} answers)")
            return
        if rest not in ("", "stats"):
            raise UsageError("usage: %llm cache [stats|clear]")
        s = cache.stats()
        ttl = "kept until cleared" if s["ttl_s"] is None else f"kept {s['ttl_s']:g} s"
        print(f"response cache {s['path']}: {s['entries']} answers ({ttl}); this session {s['hits']} hits, "
              f"{s['misses']} misses, ${s['saved_usd']:.6f} not paid again")

    def _cmd_explain(self, rest: str) -> None:
        combo, _, prompt = rest.partition(" ")
        combo = combo or self.default_combo
        if not combo:
            raise UsageError("usage: %llm explain COMBO [PROMPT]")
        self._show(self.router.explain(combo, prompt.strip() or ""))

    def _cmd_use(self, rest: str) -> None:
        if not rest or " " in rest:
            raise UsageError("usage: %llm use COMBO")
        self.router.explain(rest, "")  # resolves the name: an unknown combo raises ComboConfigError here
        self.default_combo = rest
        print(f"default combo: {rest}")

    def _cmd_reset(self, rest: str) -> None:
        n = self.router.reset(rest or None)
        what = f" matching {rest!r}" if rest else ""
        print(f"cleared {n} cooldown{'s' if n != 1 else ''}, lock(s) and breaker(s){what}")

    def _cmd_config(self, rest: str) -> None:
        if rest == "reload":
            if self._router is None:
                self.router
            else:
                self._router.reload()
        elif rest:
            raise UsageError("usage: %llm config [reload]")
        router = self.router
        config = router.config
        if config.path is None:
            where = "a dict given to Router()"
        elif config.source == "none":
            where = f"{config.path} (not found: nothing configured; NBROUTER_CONFIG names another file)"
        else:
            where = str(config.path)
        state = getattr(router.state, "path", None)
        lines = [
            f"config: {where}",
            f"state: {state or 'in memory only'}" + (f" ({router.state.warning})" if router.state.warning else ""),
            f"providers: {', '.join(sorted(config.providers)) or 'none'}",
            f"combos: {', '.join(sorted(config.combos)) or 'none'}",
            f"default combo: {self.default_combo or 'none (`%llm use NAME`)'}",
        ]
        if config.prices:
            lines.append(f"price overrides: {', '.join(sorted(config.prices))}")
        overrides = config.raw.get("policy") or {}
        if overrides:
            lines.append(f"policy overrides: {', '.join(f'{k} = {v}' for k, v in overrides.items())}")
        print("\n".join(lines))

    def _cmd_builder(self, rest: str) -> None:
        module = _widget_module("builder")
        if module is not None:
            builder = module.ComboBuilder(self.router, rest or None)
            if self.shell is not None:  # reachable from Python: _llm_builder.model.targets = [...]
                builder.on_test = self._builder_tested  # its test calls are the session's spending too
                self.shell.user_ns["_llm_builder"] = builder
            builder.display()


#: every `%llm` subcommand: (how to write it, what it does, an example); `%llm help` and the README list them
SUBCOMMAND_HELP = [
    ("COMBO PROMPT...", "send a one-line prompt (a trailing ? is part of it)", "%llm fast What is the capital of Italy?"),
    ("combos", "the saved combos, their strategy and targets", "%llm combos"),
    ("providers", "the providers, their accounts and keys (set or missing), and where they came from", "%llm providers"),
    ("status [--live]", "every candidate's and account's health; --live: a board that refreshes", "%llm status --live"),
    ("log [N] [--all]", "the last N attempts of the call log (10 by default)", "%llm log 30"),
    ("cost", "what this session spent, per cell, combo and provider", "%llm cost"),
    ("budget [USD|off]", "a session budget: cells that would pass it are refused before sending", "%llm budget 0.50"),
    ("explain COMBO [PROMPT]", "the order the router would try and why; sends nothing", "%llm explain fast"),
    ("use COMBO", "the combo a %%llm cell without a name uses", "%llm use fast"),
    ("reset [TARGET]", "clear cooldowns, locks and breakers (of TARGET, or all)", "%llm reset sim#default/gpt-4o-mini"),
    ("config [reload]", "which files are read; reload: read them again", "%llm config reload"),
    ("builder [COMBO]", "build or edit a combo with widgets", "%llm builder fast"),
    ("chat [show|clear] [COMBO]", "the conversation --chat keeps per combo", "%llm chat show fast"),
    ("error [COMBO] [options]", "send the last error and its cell, asking for an explanation and a fix", "%llm error fast"),
    ("cache [stats|clear]", "the response cache: what it holds and saved, or empty it", "%llm cache stats"),
    ("help", "this list", "%llm help"),
]


def help_text(parser: Any, width: int | None = None) -> str:
    """The `%%llm` options (from the magic's own argument parser) and the `%llm` subcommands, wrapped to
    `width` columns (the output's width by default)."""
    width = max(60, terminal_width() if width is None else width)
    lines = textwrap.wrap("%%llm [COMBO] [options]: the cell below is the prompt; {name}, {In[3]}, {Out[3]} are filled in",
                          width) + [""]
    for action in parser._actions:
        if not action.option_strings:
            continue
        names = ", ".join(action.option_strings)
        if action.nargs != 0:
            names += " " + (action.metavar or action.dest.upper())
        lines.extend(_entry(f"  {names:<30} ", action.help or "", width))
    lines.extend(["", "%llm SUBCOMMAND:", ""])
    for syntax, what, example in SUBCOMMAND_HELP:
        lines.extend(_entry(f"  %llm {syntax:<25} ", f"{what} ({example})", width))
    return "\n".join(lines)


def _entry(head: str, text: str, width: int) -> list[str]:
    """`head` then `text` wrapped under itself; a head wider than half the width puts the text below it."""
    indent = " " * min(len(head), width // 2)
    if len(head) > width // 2:
        return [head.rstrip(), *textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)]
    return textwrap.wrap(text, width, initial_indent=head, subsequent_indent=indent) or [head.rstrip()]


def _executor(name: str, ns: dict[str, Any]) -> Any:
    """What `--executor NAME` runs a batch on: the variable NAME (a distributed.Client, a Ray handle), or the
    connected Ray cluster for `ray` when no variable has that name.

    Raises:
        UsageError: no such variable.
    """
    if name in ns:
        return ns[name]
    if name == "ray":
        return "ray"
    raise UsageError(f"--executor {name}: there is no variable of that name (give a distributed.Client's variable, "
                     "or `ray` for the connected Ray cluster)")


def _terminal_attempts(result: RouteResult, always: bool = False) -> list[str]:
    """The attempt table under a terminal answer, fitted to the terminal: only when there is more to say
    than the footer (a fallback, a skip, an interruption)."""
    if not always and len(result.attempts) <= 1:
        return []
    return [attempt_text(result.attempts, terminal_width())]


def _request_date(parent: dict[str, Any]) -> float | None:
    """When the front end sent the message `parent` (its header's date, by the front end's clock), in
    epoch seconds; None when it has none."""
    import datetime

    date = (parent.get("header") or {}).get("date")
    if isinstance(date, str):
        try:
            date = datetime.datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(date, datetime.datetime):
        return None
    if date.tzinfo is None:
        date = date.replace(tzinfo=datetime.timezone.utc)
    return date.timestamp()


def _cancel_note(result: RouteResult, text: str) -> str:
    who = f" from {result.served_by}" if result.served_by else ""
    kept = f"{len(text)} characters kept" if text else "nothing received yet"
    return f"cancelled by the user{who} after {result.latency_s:.2f} s ({kept})"


def _widget_module(name: str) -> Any:
    """nbrouter.notebook.builder or .board, imported on demand (ipywidgets is heavy), or None with a message."""
    import importlib

    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ImportError as exc:
        print(f"the nbrouter widgets are not available ({exc}); `pip install ipywidgets` and use JupyterLab or "
              "Notebook 7, or use `%llm status`, `%llm combos` and `Router.save_combo()`", file=sys.stderr)
        return None
    return module


_LLM_LINE = re.compile(r"^([ \t]*)%llm([ \t]+[^\n]*?)?[ \t]*(\n?)$")


def keep_question_marks(lines: list[str]) -> list[str]:
    """An IPython cleanup input transformer: a `%llm ...` line is always a prompt or a subcommand, even
    when it ends in `?` (IPython would otherwise read `%llm fast What is X?` as a help request for `X`).

    Cleanup transformers run before IPython's help transformer; the line becomes the call IPython itself
    makes for a line magic. `%llm?` alone still shows the help, and a `%%` cell is left to its magic.
    """
    if lines and lines[0].lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        m = _LLM_LINE.match(line)
        rest = (m.group(2) or "").strip() if m else ""
        if m and rest and rest.strip("?"):
            # `and None`: the answer is displayed already, so a bare `%llm COMBO PROMPT` shows no Out[] repeating it
            # (`x = %llm ...` is no bare line: x gets the RouteResult)
            line = f"{m.group(1)}get_ipython().run_line_magic('llm', {rest!r}) and None{m.group(3)}"
        out.append(line)
    return out


def _tool_name(tool: Any) -> str | None:
    """The name a `--tools` entry declares: a function's, or a tool dict's `name`."""
    if isinstance(tool, Mapping):
        name = tool.get("name")
        return name if isinstance(name, str) else None
    return getattr(tool, "__name__", None)


def _with_kept(given: list[Any], kept: list[Any]) -> list[Any]:
    """This cell's `--tools`, then the chat's earlier tools it does not name again (the history may call them)."""
    named = {_tool_name(t) for t in given}
    return [*given, *(t for t in kept if _tool_name(t) not in named)]


def _chat_text(message: dict[str, Any]) -> str:
    """A chat message as `%llm chat show` lists it: its text, the calls an assistant turn asked for, or
    which tool a result answers."""
    content = message.get("content")
    text = text_parts(content)
    if isinstance(content, list):  # a prompt sent with images: how many, never their bytes
        images = sum(1 for p in content if isinstance(p, Mapping) and image_of(p) is not None)
        if images:
            text = f"{text} [{images} image{'s' if images != 1 else ''}]".strip()
    calls = message.get("tool_calls") or []
    if calls:
        asked = ", ".join(f"{c.get('name')}({', '.join(f'{k}={v!r}' for k, v in (c.get('arguments') or {}).items())})"
                          for c in calls if isinstance(c, dict))
        return f"{text} [calls {asked}]" if text else f"[calls {asked}]"
    if message.get("role") == "tool":
        return f"[{message.get('name')} returned] {text}"
    return text


def _tool_lines(result: RouteResult) -> list[str]:
    """One line per tool the model called in a `--tools` cell, with what it returned (cut short)."""
    def arguments(values: Any) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in (values or {}).items())

    lines = []
    calls = {c.get("id"): c for m in result.transcript for c in m.get("tool_calls") or []}
    for message in result.transcript:
        if message.get("role") != "tool":
            continue
        call = calls.get(message.get("tool_call_id")) or {}
        content = str(message.get("content") or "")
        shown = content if len(content) <= 80 else content[:79] + "…"
        lines.append(f"tool {message.get('name')}({arguments(call.get('arguments'))}) -> "
                     f"{'error: ' if message.get('is_error') else ''}{shown}")
    if result.tool_calls:  # calls nobody ran: tools declared without --tools, or the rounds ran out
        asked = ", ".join(f"{c.name}({arguments(c.arguments)})" for c in result.tool_calls)
        lines.append(f"the model asks to call {asked}" + ("" if result.transcript else " (`--tools NAME` runs it)"))
    return lines


def load_ipython_extension(ipython: Any) -> None:
    """Register LLMMagics on the shell (a second load is a no-op) and read the configuration."""
    existing = dict.get(ipython.magics_manager.registry, LLMMagics.__name__)
    if isinstance(existing, LLMMagics) and not existing.closed:
        return
    magics = LLMMagics(shell=ipython)
    ipython.register_magics(magics)
    cleanup = getattr(ipython, "input_transformers_cleanup", None)
    if cleanup is not None and keep_question_marks not in cleanup:
        cleanup.append(keep_question_marks)
    if cleanup is not None:
        cleanup.append(magics.skip_queued_code_cell)
    ipython.events.register("post_run_cell", magics.cell_finished)
    # the extension's status board asks through this comm, and its status bar shows the ledger's total
    frontend.register(ipython, lambda: magics.router, magics.ledger)
    show_job_waits()  # issue 24: every job.wait() in the notebook shows the job's live view
    magics.open()


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the router's loop cleanly and remove the magics."""
    registry = ipython.magics_manager.registry
    magics = dict.get(registry, LLMMagics.__name__)
    if not isinstance(magics, LLMMagics):
        return
    magics.close()
    hide_job_waits()
    registry.pop(LLMMagics.__name__, None)
    cleanup = getattr(ipython, "input_transformers_cleanup", [])
    if keep_question_marks in cleanup:
        cleanup.remove(keep_question_marks)
    if magics.skip_queued_code_cell in cleanup:
        cleanup.remove(magics.skip_queued_code_cell)
    if magics.cell_finished in ipython.events.callbacks.get("post_run_cell", []):
        ipython.events.unregister("post_run_cell", magics.cell_finished)
    for kind in ("line", "cell"):
        table = ipython.magics_manager.magics[kind]
        if getattr(table.get("llm"), "__self__", None) is magics:
            del table["llm"]
    if magics in getattr(ipython, "configurables", []):
        ipython.configurables.remove(magics)

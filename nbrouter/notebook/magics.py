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

import re
import sys
import time
import traceback
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError
from IPython.display import display
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from traitlets import Bool, Enum, Float, Unicode, observe

from ..router import AllTargetsFailed, BudgetExceeded, ComboConfigError, RouteError
from ..router import Status
from ..router import Action, Attempt, AttemptFinished, AttemptStarted, Decision, Done, ErrorKind, RouteResult, TextDelta, Usage
from .._core import scrub
from ..report import Shown, Table
from ..router import attempt_table, decision_html, decision_text, log_table
from .display import FORMATS, LiveAnswer, failure_bundle, failure_line, render_answer, result_bundle, short_traceback, terminal_width
from . import frontend
from .batch_view import run_batch_cell
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
        #: None: decide from the shell (a kernel updates displays in place, a terminal prints)
        self.live_display: bool | None = None
        self.closed = False
        #: the source and the exception of the last cell that raised (for `%llm error`)
        self.last_failure: tuple[str, BaseException] | None = None

    # ---- the router --------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """The session's Router, created on first use from NBROUTER_CONFIG or the user config file."""
        if self.closed:
            raise UsageError("nbrouter was unloaded; run %load_ext nbrouter again")
        if self._router is None:
            from ..router import Router

            self._router = Router()
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
    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> None:
        """Send the cell to a combo: stream the answer, fall back on failure, show who served it and the cost.

        As a cell magic, the cell body is the prompt: `%%llm [COMBO] [options]`. `{name}` in the prompt is
        replaced by the value of the variable `name` when it exists; other braces are left as written and
        `{{name}}` stays a literal `{name}`. The result is in `_llm` (a RouteResult).

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
            raise UsageError("no combo: write `%%llm NAME`, or choose a default with `%llm use NAME`")
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
        if chat:
            call["messages"] = list(self.chats.get(combo, []))
        remaining = router.budget.remaining
        if remaining is not None and remaining <= 0:
            raise short_traceback(BudgetExceeded(
                f"the session budget of ${self.budget_usd:.6f} is spent (${router.budget.spent:.6f} so far); "
                "nothing was sent. Raise it with `%llm budget USD`, or `%llm budget off`."))
        if args.max_cost is not None:
            call["max_cost_usd"] = args.max_cost

        if args.executor is not None:
            if not args.over:
                raise UsageError("--executor goes with --over VAR: it runs a batch's calls on a cluster")
            call["executor"] = _executor(args.executor, ns)
        if args.over:  # issue 17: a batch over VAR's items (batch_view.py)
            run_batch_cell(self, router, combo, args, body, call)
            return None
        if args.explain:
            self._show(router.explain(combo, prompt, **call))
            return None

        where = self.cell_context()
        stream = self.stream and not args.no_stream
        live = LiveAnswer(combo, fmt, in_kernel=self._in_kernel()) if stream else None
        try:
            if live is not None:
                result = self._stream(router, combo, prompt, fmt, call, where, live)
            else:
                try:
                    result = router.complete(combo, prompt, **call)
                except KeyboardInterrupt:  # Router.complete cancelled the request before giving it back
                    self.ledger.record([], combo=combo, served_by=None, outcome="cancelled", unknown=1, **where)
                    self._forget_result()
                    raise short_traceback(KeyboardInterrupt(), ["KeyboardInterrupt: cancelled by the user before the answer arrived"]) from None
        except BudgetExceeded as exc:
            if remaining is not None and (args.max_cost is None or remaining < Decimal(str(args.max_cost))):
                exc = BudgetExceeded(f"refused before sending: the session budget has ${remaining:.6f} left "
                                     f"(of ${self.budget_usd:.6f}). {exc}", exc.attempts)
            self._forget_result()
            raise short_traceback(exc) from None
        except RouteError as exc:
            self.ledger.record(exc.attempts, combo=combo, served_by=None, outcome="failed", **where)
            self._forget_result()
            if isinstance(exc, AllTargetsFailed):
                return self._failed(exc, live, where)
            raise short_traceback(exc) from None

        self.ledger.record(result.attempts, combo=combo, served_by=result.served_by,
                           outcome="partial" if result.partial else "served", **where)
        answer = render_answer(result.text, fmt)
        self._remember(result, args.out, answer.value if fmt == "json" else None)
        if fmt == "code" and self.shell is not None and answer.plain.strip():
            # as `%%ai -f code` does: the code in a new cell below (the next prompt in a terminal)
            self.shell.set_next_input(answer.plain, replace=False)
        if chat and not result.partial:
            self.chats[combo] = [*call["messages"], {"role": "user", "content": prompt},
                                 {"role": "assistant", "content": result.text}]
        if not stream:
            data, metadata = result_bundle(result, fmt, answer=answer, **where)
            display(data, raw=True, metadata=metadata)
        return result

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
        line = failure_line(exc)
        if self.raise_on_failure:
            raise short_traceback(exc, [line]) from None
        print(line, file=sys.stderr)

    def _stream(self, router: Router, combo: str, prompt: str, fmt: str, call: dict[str, Any],
                where: dict[str, Any], live: LiveAnswer) -> RouteResult:
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
                    data, metadata = result_bundle(result, fmt, answer=answer, **where)
                    tail = "\n".join([*([answer.error] if answer.error else []), result.footer(), *_terminal_attempts(result)])
                    live.finish(data, metadata, tail)
                    return result
            raise RuntimeError("the router's event stream ended without Done")
        except KeyboardInterrupt:
            # closing the generator cancels the task on the router's loop, which logs the attempt as cancelled
            events.close()
            partial = self._cancelled(combo, live.text, attempts, current, in_flight, started)
            self.ledger.record(partial.attempts, combo=combo, served_by=partial.served_by, outcome="cancelled", **where)
            self._remember(partial, None, None)
            data, metadata = result_bundle(partial, fmt, notes=[_cancel_note(partial, live.text)], **where)
            tail = "\n".join([_cancel_note(partial, live.text), *_terminal_attempts(partial, always=True)])
            live.finish(data, metadata, tail)
            interrupt = KeyboardInterrupt(_cancel_note(partial, live.text))
            raise short_traceback(interrupt, [f"KeyboardInterrupt: {_cancel_note(partial, live.text)}; the partial text is in _llm"]) from None
        finally:
            events.close()

    def _cancelled(self, combo: str, text: str, attempts: list[Attempt], current: AttemptStarted | None,
                   in_flight: AttemptStarted | None, started: float) -> RouteResult:
        """The partial result of an interrupted cell, for the display and `_llm`.

        The router logs the cancelled attempt itself; its event arrives after we stopped listening, so
        the row shown here is a copy of what it records."""
        shown = list(attempts)
        if in_flight is not None:
            shown.append(Attempt(candidate=in_flight.candidate, path=in_flight.path, action=Action.STOP, started_at=time.time(),
                                 kind=ErrorKind.CANCELLED,
                                 message="cancelled by the user" + (f" after {len(text)} characters" if text else "")))
        usage = Usage()
        for a in shown:
            if a.usage is not None:
                usage = usage + a.usage
        return RouteResult(text=text, served_by=current.candidate if current else "", model="", combo=combo, attempts=shown,
                           usage=usage, cost_usd=None, latency_s=time.perf_counter() - started, ttft_s=None,
                           partial=True, error="cancelled by the user")

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

    def cell_context(self) -> dict[str, Any]:
        """The running cell's execution count, and its id when the front end sends one (JupyterLab does)."""
        shell = self.shell
        # the running cell's ExecutionResult knows its number (IPython 9 increments
        # shell.execution_count before the cell runs, older versions after)
        running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
        count = getattr(running, "execution_count", None) or getattr(shell, "execution_count", None)
        parent: Any = None
        kernel = getattr(shell, "kernel", None)
        try:
            parent = kernel.get_parent() if kernel is not None and hasattr(kernel, "get_parent") else getattr(shell, "parent_header", None)
        except Exception:
            parent = None
        cell_id = None
        if isinstance(parent, dict):
            cell_id = (parent.get("metadata") or {}).get("cellId")
        return {"execution_count": count, "cell_id": cell_id}

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
        raise UsageError(
            f"unknown subcommand or combo {word!r}. Subcommands: {', '.join(SUBCOMMANDS)}; "
            "or `%llm COMBO PROMPT` with a combo name, an auto... combo or a provider/model"
        )

    def _names_a_combo(self, word: str) -> bool:
        from ..router import VIRTUAL_COMBOS

        try:
            combos = self.router.config.combos
        except ComboConfigError:
            combos = {}
        return word in combos or word in VIRTUAL_COMBOS or "/" in word

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
            print(f"cleared the chat of {', '.join(cleared)}" if cleared else "no chat to clear")
            return
        rows = [[name, m["role"], m["content"]] for name in names for m in self.chats.get(name, [])]
        if not rows:
            print("no chat yet" + (f" with {combo}" if combo else "") + ": `%%llm COMBO --chat` starts one")
            return
        self._show(Table(["combo", "role", "message"], rows, cut=CHAT_SHOW_WIDTH,
                         notes=["`%llm chat clear [COMBO]` forgets it; `--new` starts afresh"]))

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
        self._show(ledger.tables(self.budget_usd))

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
        budget = self.router.budget  # the Router's own: every call of this session is held against it
        if self.budget_usd is None:
            print(f"no session budget; {budget.text()}")
            return
        left = budget.remaining if budget.remaining is not None else Decimal(0)
        unknown = budget.unknown_calls
        print(f"session budget ${self.budget_usd:.6f}: spent ${budget.spent:.6f}, ${left:.6f} left"
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
            self.shell.user_ns["_llm_builder"] = builder  # reachable from Python: _llm_builder.model.targets = [...]
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


def help_text(parser: Any) -> str:
    """The `%%llm` options (from the magic's own argument parser) and the `%llm` subcommands."""
    lines = ["%%llm [COMBO] [options]: the cell below is the prompt; {name}, {In[3]}, {Out[3]} are filled in", ""]
    for action in parser._actions:
        if not action.option_strings:
            continue
        names = ", ".join(action.option_strings)
        if action.nargs != 0:
            names += " " + (action.metavar or action.dest.upper())
        lines.append(f"  {names:<30} {action.help}")
    lines.extend(["", "%llm SUBCOMMAND:", ""])
    lines.extend(f"  %llm {syntax:<25} {what} ({example})" for syntax, what, example in SUBCOMMAND_HELP)
    return "\n".join(lines)


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
    return [attempt_table(result.attempts, compact=True).text(terminal_width())]


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
            line = f"{m.group(1)}get_ipython().run_line_magic('llm', {rest!r}){m.group(3)}"
        out.append(line)
    return out


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
    ipython.events.register("post_run_cell", magics.cell_finished)
    frontend.register(ipython, lambda: magics.router)  # the extension's status board asks through this comm
    magics.open()


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the router's loop cleanly and remove the magics."""
    registry = ipython.magics_manager.registry
    magics = dict.get(registry, LLMMagics.__name__)
    if not isinstance(magics, LLMMagics):
        return
    magics.close()
    registry.pop(LLMMagics.__name__, None)
    cleanup = getattr(ipython, "input_transformers_cleanup", [])
    if keep_question_marks in cleanup:
        cleanup.remove(keep_question_marks)
    if magics.cell_finished in ipython.events.callbacks.get("post_run_cell", []):
        ipython.events.unregister("post_run_cell", magics.cell_finished)
    for kind in ("line", "cell"):
        table = ipython.magics_manager.magics[kind]
        if getattr(table.get("llm"), "__self__", None) is magics:
            del table["llm"]
    if magics in getattr(ipython, "configurables", []):
        ipython.configurables.remove(magics)

"""`%%llm COMBO --over VAR`: the cell is a template run over every item of VAR (`Router.map`), with a
progress bar while it runs, then the batch's summary and the first rows of its table.

    %%llm fast --over reviews --column text --out scored
    Classify the sentiment of: {item}

The bar is the notebook's usual one (`tqdm.auto`: a widget in Jupyter, text in a terminal) when tqdm
is installed, else one line updated in place. The BatchResult is stored in `--out NAME` (default
`_llm_batch`), also after Ctrl-C, which stops the batch and keeps what finished.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

from ..router import BatchResult, Progress

#: the variable the last batch's result is kept in
BATCH_VAR = "_llm_batch"
#: how many rows of the result's table are shown under the summary
SHOWN_ROWS = 5


def _sink() -> Any:
    """The `progress=` of the batch: tqdm's bar when installed, else a line updated in place."""
    try:
        import tqdm.auto  # noqa: F401

        return True
    except ImportError:
        pass
    from IPython.display import display

    handle = display({"text/plain": "starting..."}, raw=True, display_id=True)

    def update(p: Progress) -> None:
        if handle is not None:
            handle.update({"text/plain": f"{p.done + p.failed}/{p.total} · {p.text()}"}, raw=True)

    return update


def over_items(magics: Any, args: Any) -> tuple[Any, Any]:
    """(the items of `--over VAR [--column COL]`, the schema of `--schema VAR`) from the user's namespace.

    Raises:
        UsageError: a variable that does not exist, or a column that is not there.
    """
    ns = magics.shell.user_ns if magics.shell is not None else {}
    if args.over not in ns:
        raise UsageError(f"--over {args.over}: there is no variable of that name")
    items = ns[args.over]
    if args.column is not None:
        try:
            items = items[args.column]
        except (KeyError, TypeError, IndexError):
            raise UsageError(f"--column {args.column}: {args.over} has no such column") from None
    schema = None
    if args.schema is not None:
        if args.schema not in ns:
            raise UsageError(f"--schema {args.schema}: there is no variable of that name")
        schema = ns[args.schema]
    return items, schema


def run_batch_cell(magics: Any, router: Any, combo: str, args: Any, template: str, call: dict[str, Any]) -> BatchResult:
    """Run the cell's template over `args.over` and show the result.

    Args:
        magics: the LLMMagics instance (its shell's namespace, its ledger).
        router: the router.
        combo: the combo to send through.
        args: the parsed magic arguments (`over`, `column`, `concurrency`, `schema`, `out`).
        template: the cell body: `{item}`, or `{column}` of a row; other braces are left as written.
        call: the call options the magic already gathered (system, max_tokens, temperature, strategy,
            max_cost_usd: the session budget left, which becomes the batch's budget).

    Raises:
        UsageError: a variable that does not exist, or a column that is not there.
    """
    ns = magics.shell.user_ns if magics.shell is not None else {}
    items, schema = over_items(magics, args)
    if not template.strip():
        raise UsageError("the template is empty: write it in the cell below `%%llm ... --over VAR`")
    options = {k: v for k, v in call.items() if v is not None and k != "messages"}
    try:
        result = router.map(combo, items, prompt=template.strip(), schema=schema, concurrency=args.concurrency,
                            progress=_sink(), **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    ns[args.out or BATCH_VAR] = result
    ns[BATCH_VAR] = result
    attempts = [a for entry in result for a in entry.attempts]
    magics.ledger.record(attempts, combo=combo, served_by=None, outcome="batch", calls=len(result), **magics.cell_context())

    from IPython.display import display

    display(result)
    try:
        table = result.to_pandas()
    except ImportError:  # pandas is not a dependency: the summary is the whole display then
        return result
    display(table.head(SHOWN_ROWS))
    return result


__all__ = ["BATCH_VAR", "run_batch_cell"]

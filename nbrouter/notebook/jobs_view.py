"""Batch jobs in a notebook: `%%llm COMBO --over VAR --batch`, and a live view while `job.wait()` runs.

    %%llm fast --over reviews --column text --batch --out scored
    Classify the sentiment of: {item}

The cell submits the rows through the first target of the combo that has a batch API (half price) and
waits: one display shows the job's summary (rows done, failed, pending, elapsed, cost so far at the batch
price and what it would have been live), updated after each poll, with a tqdm bar under it. Ctrl-C stops
waiting, never the job: it keeps running at the provider, `_llm_job.wait()` (or `router.job(ID)` in a
later kernel) picks it up again. The job is kept in `_llm_job`, its BatchResult in `--out NAME` (default
`_llm_batch`) once every row is settled.

With the extension loaded, any `job.wait()` in the notebook shows the same live view (`install`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError

from .batch_view import over_items

if TYPE_CHECKING:  # the batch machinery (and httpx) load when a job is made, not with the extension
    from ..router import BatchJob

#: the variable the last batch job is kept in, and its result
JOB_VAR = "_llm_job"
BATCH_VAR = "_llm_batch"
#: how many rows of the result's table are shown under the summary
SHOWN_ROWS = 5


class JobView:
    """A job's live summary in the notebook (one display, updated in place) and a tqdm bar under it."""

    def __init__(self, job: BatchJob) -> None:
        from IPython.display import display

        self.total = len(job.rows)
        self.handle = display(job, display_id=True)  # type: ignore[no-untyped-call]
        self.bar: Any = None
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=self.total, unit="row", desc=job.id)
        except ImportError:  # tqdm is optional: the summary alone then says how far it is
            self.bar = None
        self.update(job)

    def update(self, job: BatchJob) -> None:
        """Show where the job stands now (called after each poll)."""
        if self.handle is not None:
            self.handle.update(job)
        if self.bar is not None:
            counts = job.counts
            self.bar.n = self.total - counts["pending"]
            self.bar.set_postfix_str(f"failed {counts['failed']}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def wait_display(job: BatchJob) -> tuple[Callable[[BatchJob], None], Callable[[], None]]:
    """What `job.wait()` shows in a notebook: the live view's (update, close)."""
    view = JobView(job)
    return view.update, view.close


def install() -> None:
    """Show the live view under every `job.wait()` in this kernel (the extension calls it when loaded)."""
    from ..router import set_wait_display

    set_wait_display(wait_display)


def uninstall() -> None:
    from ..router import set_wait_display

    set_wait_display(None)


def run_job_cell(magics: Any, router: Any, combo: str, args: Any, template: str, call: dict[str, Any]) -> BatchJob:
    """Submit the cell's template over `args.over` as a batch job, show it live while it runs, then the result.

    Args:
        magics: the LLMMagics instance (its shell's namespace, its ledger).
        router: the router.
        combo: the combo to send through.
        args: the parsed magic arguments (`over`, `column`, `schema`, `out`, `concurrency`).
        template: the cell body: `{item}`, or `{column}` of a row.
        call: the call options the magic gathered (system, max_tokens, temperature, strategy, max_cost_usd).

    Raises:
        UsageError: a variable that does not exist, a column that is not there, or no target with a batch API.
    """
    items, schema = over_items(magics, args)
    if not template.strip():
        raise UsageError("the template is empty: write it in the cell below `%%llm ... --over VAR --batch`")
    options = {k: v for k, v in call.items() if v is not None and k != "messages"}
    try:
        job: BatchJob = router.map(combo, items, prompt=template.strip(), schema=schema, concurrency=args.concurrency,
                                   mode="batch", **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    ns = magics.shell.user_ns if magics.shell is not None else {}
    ns[JOB_VAR] = job
    view = JobView(job)
    try:
        result = job.wait(progress=view.update)
    except KeyboardInterrupt:
        view.update(job)
        print(f"stopped waiting; batch job {job.id} keeps running. `{JOB_VAR}.wait()` picks it up again "
              f"(in a later kernel: `router.job({job.id!r})`).")
        return job
    finally:
        view.close()
    ns[args.out or BATCH_VAR] = result
    ns[BATCH_VAR] = result
    attempts = [a for entry in result for a in entry.attempts]
    magics.ledger.record(attempts, combo=combo, served_by=None, outcome="batch", **magics.cell_context())

    from IPython.display import display

    display(result)  # type: ignore[no-untyped-call]
    try:
        table = result.to_pandas()
    except ImportError:  # pandas is not a dependency: the summary is the whole display then
        return job
    display(table.head(SHOWN_ROWS))  # type: ignore[no-untyped-call]
    return job


__all__ = ["BATCH_VAR", "JOB_VAR", "JobView", "install", "run_job_cell", "uninstall", "wait_display"]

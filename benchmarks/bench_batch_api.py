"""1,000 rows live against through the providers' batch APIs: what they cost, and how long the job takes.

    python benchmarks/bench_batch_api.py [--rows 1000] [--errors 0.05]

For each protocol (OpenAI, Anthropic, Gemini) the same rows go once through a live `Router.map` and once
through `Router.map(..., mode="batch")` (response cache off, so both pay), against the loopback simulator
on a `ManualClock` shared with the router: the job validates, runs and finalizes on simulated time, and
`job.wait()` polls on that clock, so a job of simulated minutes takes seconds. Prices are genai-prices'
(the batch variants for the batch rows). A second batch run scripts a share of the lines (`--errors`) to
fail with a 503, so that they fall back live to the next target: what the fallback costs.

Columns: the cost of the rows live (on the combo's first target alone) and through the batch API, their ratio (target 0.5x), the simulated
time from submit to every row settled (the script's validate + lines + finalize, plus the polling's
granularity), the polls that took, and the wall time of the whole batch run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from _common import heading, isolate_user_state, machine, table, versions

from nbrouter import Router
from nbrouter.testing import BatchScript, ManualClock, ProviderSimulator, Reply, ServerError

KEY = "bench-batch-api-key"
TARGETS = {
    "openai": ("oa", "gpt-4o-mini", "openai"),
    "anthropic": ("an", "claude-haiku-4-5", "anthropic"),
    "gemini": ("ge", "gemini-2.5-flash", "google"),
}
SECOND = {"openai": "anthropic", "anthropic": "gemini", "gemini": "openai"}
#: how a simulated job runs: a minute of validation, half a second per line, half a minute of finalizing
SCRIPT = {"validate_s": 60.0, "line_s": 0.5, "finalize_s": 30.0}


def config(sim: ProviderSimulator, protocol: str) -> dict[str, Any]:
    urls = {"openai": sim.openai_url, "anthropic": sim.anthropic_url, "gemini": sim.gemini_url}
    providers = {name: {"protocol": p, "base_url": urls[p], "api_key_env": "BENCH_BATCH_API_KEY", "prices_id": pid}
                 for p, (name, _, pid) in TARGETS.items()}
    first, second = TARGETS[protocol], TARGETS[SECOND[protocol]]
    return {"providers": providers, "combos": {"c": {"targets": [f"{first[0]}/{first[1]}", f"{second[0]}/{second[1]}"]}}}


def rows(n: int) -> list[str]:
    return [f"Summarise review number {i}: the product arrived on time and works as described." for i in range(n)]


def run(protocol: str, n: int, errors: float, state_dir: str) -> list[Any]:
    clock = ManualClock()
    with ProviderSimulator(clock=clock) as sim:
        sim.set_default(Reply("A short summary of the review, in one sentence.", usage={"input_tokens": 40, "output_tokens": 12}))
        router = Router(config(sim, protocol), clock=clock, state_path=f"{state_dir}/{protocol}.sqlite3")
        try:
            name, model, _ = TARGETS[protocol]
            live = router.map(f"{name}/{model}", rows(n), cache=False, concurrency=32)  # the first target alone, live
            live_cost = live.cost_usd
            out = []
            for share in (0.0, errors):
                every = int(1 / share) if share else 0
                lines = {f"row-{i}": ServerError(503) for i in range(n) if every and i % every == 0}
                sim.script_batch(BatchScript(lines=lines, **SCRIPT))
                started, polls_before = time.perf_counter(), len(sim.requests)
                t0 = clock.time()
                job = router.map("c", rows(n), cache=False, mode="batch")
                result = job.wait()
                wall = time.perf_counter() - started
                polls = sum(1 for r in sim.requests[polls_before:] if "/batches/" in r.path and not r.path.endswith("/results"))
                assert result.done == n, str(result)
                fallback = sum(1 for e in result if any(a.action.value == "served" for a in e.attempts))
                out.append([protocol, f"{share:.0%}", f"{fallback}", f"${live_cost:.4f}", f"${result.cost_usd:.4f}",
                            f"{result.cost_usd / live_cost:.3f}x" if live_cost else "-", f"{clock.time() - t0:,.0f} s",
                            str(polls), f"{wall:.2f} s"])
            return out
        finally:
            router.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--errors", type=float, default=0.05, help="the share of lines that fail and fall back live")
    args = parser.parse_args()
    state_dir = str(isolate_user_state())
    os.environ["BENCH_BATCH_API_KEY"] = KEY
    heading(f"{args.rows:,} rows live against through the batch APIs", "python benchmarks/bench_batch_api.py " + " ".join(sys.argv[1:]))
    print(f"Simulated job: {SCRIPT['validate_s']:g} s validating, {SCRIPT['line_s']:g} s per line, {SCRIPT['finalize_s']:g} s "
          f"finalizing; each answer 40 tokens in, 12 out; prices from genai-prices. The live run's cost is the same rows sent now.\n")
    out = []
    for protocol in TARGETS:
        out += run(protocol, args.rows, args.errors, state_dir)
    print(table(["protocol", "lines failing", "rows fallen back live", "live cost", "batch cost", "batch / live",
                 "simulated time to done", "polls", "wall time"], out))
    print()
    print("With failing lines, the batch cost includes their live fallback on the combo's next target, at that "
          "target's live price (OpenAI's rows fall back to Anthropic, Anthropic's to Gemini, Gemini's to OpenAI).\n")
    print(machine())
    print(versions("nbrouter", "httpx", "genai-prices"))


if __name__ == "__main__":
    main()

"""Start-up: `import nbrouter` and `%load_ext nbrouter` in a fresh process, and what each imports.

    python benchmarks/bench_startup.py [--rounds 7]

Each measurement is a new Python process (interleaved across rounds, median of the rounds). The time is
taken inside the child around the step alone (the interpreter's own start is the first row, for
scale), so it is what a user waits for. `%load_ext` runs in an IPython `InteractiveShell` whose own
start is not counted. Then `-X importtime` lists the heaviest imports, and `sys.modules` is checked
for the modules that must not load at start (pydantic, genai_prices, ipywidgets): a report, not an
assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import fmt_ms, fmt_ratio, heading, isolate_user_state, machine, median, spread, table

WATCH = ["pydantic", "genai_prices", "ipywidgets", "httpx", "aiohttp", "httpx_aiohttp", "tabulate", "tomlkit", "sqlite3", "IPython"]

PREAMBLE = "import sys, time, json\n"
REPORT = "print(json.dumps({'t': t, 'mods': [m for m in %r if m in sys.modules]}))\n" % (WATCH,)

SNIPPETS = {
    "python -c pass (interpreter start, wall)": None,
    "import httpx (reference)": "t0 = time.perf_counter()\nimport httpx\nt = time.perf_counter() - t0\n",
    "import nbrouter": "t0 = time.perf_counter()\nimport nbrouter\nt = time.perf_counter() - t0\n",
    "%load_ext nbrouter (in a started InteractiveShell)": (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "t0 = time.perf_counter()\n"
        "shell.run_line_magic('load_ext', 'nbrouter')\n"
        "t = time.perf_counter() - t0\n"
    ),
    "InteractiveShell start alone (reference)": (
        "t0 = time.perf_counter()\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "t = time.perf_counter() - t0\n"
    ),
}


def run_child(code: str | None, env: dict[str, str]) -> tuple[float, list[str]]:
    if code is None:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        return time.perf_counter() - t0, []
    out = subprocess.run([sys.executable, "-c", PREAMBLE + code + REPORT], check=True, env=env, capture_output=True, text=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["t"], data["mods"]


def importtime(code: str, env: dict[str, str], top: int = 12) -> tuple[list[tuple[int, int, str]], int]:
    """The modules with the most self time: (self us, cumulative us, module); and the total in us."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, check=True)
    rows = []
    total = 0
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, cum_us, name = line.split("|")
        self_us = int(head.split(":", 1)[1])
        total += self_us
        rows.append((self_us, int(cum_us), name.strip()))
    rows.sort(reverse=True)
    return rows[:top], total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    tmp = isolate_user_state()
    env = dict(os.environ)
    env["IPYTHONDIR"] = tempfile.mkdtemp(dir=tmp)  # no history or profile of the user's
    env.pop("PYTHONSTARTUP", None)
    magics_present = (Path(__file__).resolve().parent.parent / "nbrouter" / "notebook" / "magics.py").exists()
    snippets = dict(SNIPPETS)
    if not magics_present:
        snippets.pop("%load_ext nbrouter (in a started InteractiveShell)")

    names = list(snippets)
    res: dict[str, list[float]] = {n: [] for n in names}
    mods: dict[str, list[str]] = {}
    for name in names:  # warm the file cache once
        run_child(snippets[name], env)
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t, m = run_child(snippets[name], env)
            res[name].append(t)
            mods[name] = m
    ref = "import httpx (reference)"
    rows = []
    for name in names:
        v = res[name]
        rows.append([name, fmt_ms(median(v)), spread([x * 1e3 for x in v], "{:,.1f}"),
                     fmt_ratio(median([a / b for a, b in zip(v, res[ref])])),
                     ", ".join(mods.get(name, [])) or "-"])

    heading("Start-up: import nbrouter and %load_ext nbrouter", "python benchmarks/bench_startup.py")
    print(f"Machine: {machine()}.\n")
    print(f"Each cell: a fresh process, the step timed inside the child; median of {args.rounds} interleaved "
          "rounds; spread = min-max; ratio = against `import httpx` in the same round. 'loaded' lists which of "
          f"{', '.join(WATCH)} are in `sys.modules` after the step (for the InteractiveShell rows, IPython's "
          "own imports included)."
          + ("" if magics_present else " nbrouter/notebook/magics.py does not exist yet: %load_ext is not measured.")
          + "\n")
    print(table(["step", "ms", "spread", "vs import httpx", "loaded"], rows))
    print()
    for name in ("import nbrouter", "%load_ext nbrouter (in a started InteractiveShell)"):
        if name not in mods:
            continue
        heavy = [m for m in ("pydantic", "genai_prices", "ipywidgets") if m in mods[name]]
        print(f"- After `{name.split(' (')[0]}`: {'NOT loaded: pydantic, genai_prices, ipywidgets' if not heavy else 'LOADED: ' + ', '.join(heavy)}.")
    print()
    code = "import nbrouter"
    top, total = importtime(code, env)
    print(f"Where `{code}` spends its import time (`python -X importtime`, one run, {fmt_ms(total / 1e6)} ms of "
          "imports in all, interpreter start included): the modules with the most self time.\n")
    print(table(["module", "self ms", "cumulative ms"], [[n, fmt_ms(s_ / 1e6), fmt_ms(c / 1e6)] for s_, c, n in top]))
    print()
    if magics_present:
        code = ("from IPython.core.interactiveshell import InteractiveShell; import sys; s = InteractiveShell.instance(); "
                "before = set(sys.modules); s.run_line_magic('load_ext', 'nbrouter'); "
                "print(sorted(m for m in set(sys.modules) - before if '.' not in m), file=sys.stderr)")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        new = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "[]"
        print(f"Top-level modules that `%load_ext nbrouter` adds to a started InteractiveShell: {new}\n")


if __name__ == "__main__":
    main()

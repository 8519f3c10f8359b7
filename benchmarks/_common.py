"""What the benchmarks share: the loopback server process, rounds interleaved across clients, statistics,
and the Markdown tables they print.

Every benchmark prints Markdown to stdout (a heading, notes, one or more tables), so that `run_all.py`
can collect the output into RESULTS.md unchanged.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "_server.py"
BENCH_KEY = "bench-key-0001"

SERVER_NOTE = (
    "Server: `benchmarks/_server.py`, a minimal asyncio HTTP/1.1 server (asyncio.Protocol, keep-alive) in a "
    "separate process on 127.0.0.1, answering a fixed `chat.completion` JSON at once, or a fixed 10-event SSE "
    "stream (chunked, one write) when the body asks for `\"stream\": true`."
)


def isolate_user_state() -> Path:
    """Point nbrouter at a throw-away config and state directory, so no benchmark touches the user's files."""
    tmp = Path(tempfile.mkdtemp(prefix="nbrouter-bench-"))
    os.environ["NBROUTER_CONFIG"] = str(tmp / "no-config.toml")
    os.environ["NBROUTER_STATE"] = str(tmp / "state.sqlite3")
    os.environ["BENCH_KEY"] = BENCH_KEY
    return tmp


class LoopbackServer:
    """`benchmarks/_server.py` in a subprocess; stops when its stdin closes (also if we die)."""

    def __init__(self, *, record: bool = False) -> None:
        self.record = record
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        args = [sys.executable, str(SERVER_SCRIPT)] + (["--record"] if self.record else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    @property
    def chat_url(self) -> str:
        return self.openai_url + "/chat/completions"


def router_config(base_url: str, combos: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A config with one OpenAI-compatible provider `bench` (one account) at the loopback server."""
    providers = extra.pop("providers", None) or {
        "bench": {"protocol": "openai", "base_url": base_url, "api_key_env": "BENCH_KEY"},
    }
    return {"providers": providers, "combos": combos or {}, **extra}


# ---- statistics -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (q in [0, 1])."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[idx]


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """`min-max` of the rounds."""
    if not values:
        return ""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def interleave(rounds: int, variants: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Run every variant once per round, rotating the order each round, so drift hits all alike."""
    names = list(variants)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(variants[name]())
    return out


# ---- output -----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def machine() -> str:
    """One line: cores, CPU, Python, OS."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu or 'unknown CPU'}), Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}")


def versions(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for n in names:
        try:
            parts.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            parts.append(f"{n} (not installed)")
    return ", ".join(parts)


def heading(title: str, command: str) -> None:
    print(f"## {title}\n")
    print(f"Command: `{command}`\n")


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"

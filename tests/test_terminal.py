"""Terminal IPython (no kernel): the answer is printed as it streams, then the footer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from nbrouter.testing import RateLimited, Reply

WORDS = [f"w{i:02d} " for i in range(16)]


def test_terminal_ipython_prints_the_stream_incrementally_then_the_footer(tmp_path: Path, sim: Any) -> None:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [providers.sim]
        protocol = "openai"
        base_url = "{sim.openai_url}"
        api_key_env = "SIM_KEY"

        [combos.fast]
        targets = ["sim/limited", "sim/term"]
    """))
    sim.script(RateLimited(retry_after=30), model="limited")
    sim.script([Reply(chunks=WORDS, tokens_per_s=8), Reply("one-liner answer")], model="term")
    env = {**os.environ, "NBROUTER_CONFIG": str(config), "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONUNBUFFERED": "1",
           "COLUMNS": "80"}
    stdin = "%load_ext nbrouter\n%%llm fast\nCount for me.\n\n\n%llm fast say it in one line\nexit\n"
    arrivals: list[tuple[float, bytes]] = []
    with subprocess.Popen([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()))  # type: ignore[union-attr]
        drain.start()
        while chunk := proc.stdout.read1(4096):
            arrivals.append((time.monotonic(), chunk))
        proc.wait(timeout=60)
        drain.join(5)
    out = b"".join(c for _, c in arrivals).decode()
    assert proc.returncode == 0, b"".join(errors).decode()

    streamed = "".join(WORDS)
    assert streamed in out
    assert "served by sim#default/term · 2 attempts ·" in out
    footer_line = next(line for line in out.splitlines() if "served by sim#default/term · 2 attempts" in line)
    assert footer_line.endswith(" s") and "unknown" in footer_line
    assert out.index(streamed) < out.index(footer_line)
    assert "rate_limit" in out  # the attempt table follows the footer
    assert "one-liner answer" in out
    # the attempt table fits the terminal's 80 columns, names the combo once, and comes only when there is more
    # to say than the footer (a fallback; a skip, as in the second answer, whose first target is cooling down)
    table = out[out.index(footer_line) + len(footer_line):out.index("one-liner answer")].strip("\n").splitlines()
    assert table[0].split() == ["candidate", "(of", "fast)", "outcome", "latency", "note"]
    assert all(len(line) <= 80 for line in table) and any("advance (rate_limit 429)" in line for line in table)
    after = out[out.index("one-liner answer"):]
    assert "served by sim#default/term · 1 attempt" in after and "skipped" in after
    assert all(len(line) <= 80 for line in after.splitlines()), [line for line in after.splitlines() if len(line) > 80]

    # printed as it arrived: the first words were out well before the last one (2 s of streaming)
    first = next(t for t, _ in _prefix_times(arrivals, WORDS[0]))
    last = next(t for t, _ in _prefix_times(arrivals, WORDS[-1]))
    assert last - first > 1.0


def _prefix_times(arrivals: list[tuple[float, bytes]], needle: str) -> list[tuple[float, int]]:
    """When the output first contained `needle`."""
    seen = b""
    out = []
    for t, chunk in arrivals:
        seen += chunk
        if needle.encode() in seen:
            out.append((t, len(seen)))
    return out

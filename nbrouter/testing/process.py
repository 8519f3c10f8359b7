"""The simulator in a process of its own, started and stopped by a test: one provider for many clients.

    with start_simulator_process({"rate_limits": {"default": {"requests": 120, "window_s": 60}}}) as sim:
        ...                        # point router processes at sim.openai_url (or anthropic_url, gemini_url)
        sim.stats()["keys"]        # the server's own counts per key (GET /_sim/stats)

It imports only the standard library, so a test's worker processes can use it cheaply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from .urls import ProviderURLs

#: how long the child may take to print its URL
START_TIMEOUT_S = 30.0
#: how long `stop()` waits after SIGTERM before SIGKILL
STOP_TIMEOUT_S = 5.0


class SimulatorProcess(ProviderURLs):
    """A `python -m nbrouter.testing serve` child: its URL, its counts over HTTP, and stopping it by its pid."""

    def __init__(self, popen: subprocess.Popen[str], url: str) -> None:
        self._popen = popen
        self._url = url

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, as the child printed it."""
        return self._url

    @property
    def pid(self) -> int:
        return self._popen.pid

    def stats(self, *, times: bool = False) -> dict[str, Any]:
        """`GET /_sim/stats`: the simulator's counts per key id (see `ProviderSimulator.stats`)."""
        return self._call("GET", "/_sim/stats" + ("?times=1" if times else ""))

    def reset(self) -> None:
        """Forget scripts, limits, stats and the request log (`POST /_sim/reset`)."""
        self._call("POST", "/_sim/reset", {})

    def configure(self, config: Mapping[str, Any]) -> None:
        """Apply settings (`POST /_sim/config`; see nbrouter.testing.config)."""
        self._call("POST", "/_sim/config", dict(config))

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move a `--clock manual` simulator's clock forward; returns the clock's new readings."""
        return self._call("POST", "/_sim/clock", {"seconds": seconds})

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def stop(self) -> None:
        """SIGTERM the child by its pid, SIGKILL it if it does not go."""
        popen = self._popen
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(STOP_TIMEOUT_S)
        if popen.stdout is not None:
            popen.stdout.close()

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator_process(config: Mapping[str, Any] | None = None, *, clock: str = "real", port: int = 0) -> SimulatorProcess:
    """Start the simulator in a child process on 127.0.0.1 and wait for its URL.

    Args:
        config: settings (see nbrouter.testing.config), handed to the child through its stdin.
        clock: "real", or "manual" for a ManualClock moved with `SimulatorProcess.advance`.
        port: the loopback port (0: any free one).
    """
    command = [sys.executable, "-m", "nbrouter.testing", "serve", "--port", str(port), "--clock", clock, "--config", "-"]
    popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env())
    if popen.stdin is not None:  # the settings go through a pipe: keys in them never touch a file
        try:
            popen.stdin.write(json.dumps(dict(config or {})))
            popen.stdin.close()
        except OSError:
            pass  # the child died at once; its missing URL says so below
    url = _first_line(popen)
    if not url.startswith("http://127.0.0.1:"):
        SimulatorProcess(popen, "").stop()
        raise RuntimeError(f"the simulator process did not start (its first line: {url!r}, exit code {popen.returncode})")
    return SimulatorProcess(popen, url)


def _child_env() -> dict[str, str]:
    """This environment, with this copy of nbrouter first on the child's path (a worktree, not an install)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _first_line(popen: subprocess.Popen[str]) -> str:
    """The child's first stdout line, or "" if it does not come within START_TIMEOUT_S."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(popen.stdout.readline() if popen.stdout else ""), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    return line[0].strip() if line else ""


__all__ = ["SimulatorProcess", "start_simulator_process"]

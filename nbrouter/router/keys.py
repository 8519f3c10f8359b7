"""Where an account's key comes from when it is not a plain environment variable: a command or a function.

`api_key_command = ["gcloud", "auth", "print-access-token"]` runs the command without a shell, with a
timeout (`Policy.key_command_timeout_s`), and takes its standard output, stripped; its output is never
logged, and a failure says which command failed and how (exit status, time-out), never what it printed.
`api_key_provider = "package.module:function"` calls the function (no arguments) and takes the string it
returns. Either runs at the account's first use and again when the provider answers 401, after which the
attempt is retried once with the fresh key (the policy row of `auth`). The value lives in memory only.
"""

from __future__ import annotations

import importlib
import subprocess
import threading
from typing import Any, Callable

from .._core import remember_secret


class KeyError_(Exception):
    """A key command or function failed; the message names it and never holds its output."""


class KeySource:
    """A key that is fetched (and refreshed) by running something, cached in memory."""

    def __init__(self, command: tuple[str, ...] | None = None, provider: str | None = None) -> None:
        if (command is None) == (provider is None):
            raise ValueError("give a command or a provider")
        self.command = command
        self.provider = provider
        self._lock = threading.Lock()
        self._value: str | None = None
        self.fetches = 0

    @property
    def label(self) -> str:
        """What runs, for messages (the command's program, or the function's path)."""
        return f"api_key_command {self.command[0]!r}" if self.command else f"api_key_provider {self.provider!r}"

    def cached(self) -> str | None:
        """The key fetched last (None before the first fetch or after a failed one)."""
        return self._value

    def fetch(self, timeout_s: float) -> str:
        """Run the command or the function now and keep its key (blocking: call it from a thread).

        Raises:
            KeyError_: naming what failed, never with its output.
        """
        with self._lock:
            self.fetches += 1
            try:
                value = self._run_command(timeout_s) if self.command else self._call_provider()
            except KeyError_:
                self._value = None
                raise
            value = value.strip()
            if not value:
                self._value = None
                raise KeyError_(f"{self.label} gave an empty key")
            remember_secret(value)
            self._value = value
            return value

    def _run_command(self, timeout_s: float) -> str:
        assert self.command is not None
        try:
            done = subprocess.run(list(self.command), capture_output=True, timeout=timeout_s, check=False, text=True,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise KeyError_(f"{self.label}: no such program") from None
        except subprocess.TimeoutExpired:
            raise KeyError_(f"{self.label} did not finish within {timeout_s:g} s") from None
        except OSError as exc:
            raise KeyError_(f"{self.label} could not run ({exc.strerror})") from None
        if done.returncode != 0:
            raise KeyError_(f"{self.label} exited with status {done.returncode}")
        return done.stdout

    def _call_provider(self) -> str:
        assert self.provider is not None
        module_name, _, attr = self.provider.partition(":")
        try:
            fn: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError_(f"{self.label} cannot be loaded ({type(exc).__name__})") from None
        try:
            value = fn()
        except Exception as exc:  # whatever the user's function raises, its text may hold the key
            raise KeyError_(f"{self.label} raised {type(exc).__name__}") from None
        if not isinstance(value, str):
            raise KeyError_(f"{self.label} returned {type(value).__name__}, not a string")
        return value

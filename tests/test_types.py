"""Types are checked (issue 21): mypy, run as CI runs it, finds no error.

Two passes, with the configuration of pyproject.toml's `[tool.mypy]`: `--strict` over the layers below the
notebook (`_core`, `report`, `providers`, `router`), and mypy's default mode over `notebook` and `testing`
(what they import is the strict pass's to report: `--follow-imports=silent`, so that the second pass says
the same whether or not the package is also on the Python path, as an editable install puts it).
They take a minute on a busy machine: `pytest -m "not typecheck"` leaves them out locally; CI runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nbrouter
from nbrouter.router.requests import OPTIONS, CallOptions

ROOT = Path(nbrouter.__file__).resolve().parent.parent
#: checked with --strict
STRICT = ["nbrouter/_core", "nbrouter/report", "nbrouter/providers", "nbrouter/router"]
#: checked in mypy's default mode
DEFAULT = ["nbrouter/notebook", "nbrouter/testing"]


def _mypy(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mypy from this Python (a missing mypy fails the test, it is never skipped), its cache out of the tree."""
    return subprocess.run([sys.executable, "-m", "mypy", f"--cache-dir={cache}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.typecheck
def test_the_layers_below_the_notebook_pass_mypy_strict(tmp_path: Path) -> None:
    run = _mypy(tmp_path, "--strict", *STRICT)
    assert run.returncode == 0 and run.stdout.startswith("Success: no issues found"), run.stdout + run.stderr


@pytest.mark.typecheck
def test_the_notebook_and_the_simulator_pass_mypy(tmp_path: Path) -> None:
    run = _mypy(tmp_path, "--follow-imports=silent", *DEFAULT)
    assert run.returncode == 0 and run.stdout.startswith("Success: no issues found"), run.stdout + run.stderr


def test_the_typed_call_options_are_the_options_a_call_accepts() -> None:
    # `Router.complete(**options: Unpack[CallOptions])`: the names a checker knows are those build_request takes
    assert set(CallOptions.__annotations__) == OPTIONS | {"messages"}

"""Every notebook in notebooks/ runs top to bottom in a real kernel against the simulator, with no keys;
each prompt cell says who served it; and the notebooks are committed without outputs."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import pytest

from nbrouter.__main__ import DEMO_SIM_URL_ENV, execute_notebook, prompt_cells

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: a notebook saved after a run (outputs and widget state, as nbclient and `nbrouter demo` save it) stays under
#: this size (issue 15: the builder's was 675 KB, 512 KB of it
#: widget state); the magics notebook runs some thirty answered cells, each with its bundle for every front end
SAVED_SIZE_LIMIT = 100_000
SAVED_SIZE_LIMITS = {"magics.ipynb": 150_000}


def test_the_notebooks_are_there() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "strategies.ipynb", "auto.ipynb", "local.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them (jupyter nbconvert --clear-output --inplace)"


# ---- the README's set-up gives the notebooks what they import ------------------------------------------------

#: what opens the notebooks: the set-up must install it too (the demo ends by printing `jupyter lab PATH`)
FRONT_END = "jupyterlab"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def readme_set_up_extras() -> set[str]:
    """The extras the README's first command installs (`pip install -e '.[notebooks]' && nbrouter demo`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert command is not None, "the README's set-up has no command"
    assert "nbrouter demo" in command.group(1), command.group(1)
    install = re.search(r"pip install -e '?\.(?:\[([\w,-]+)\])?'?", command.group(1))
    assert install is not None, command.group(1)
    return set(filter(None, (install.group(1) or "").split(",")))


def installed_by(extras: set[str]) -> set[str]:
    """Every distribution `pip install -e '.[EXTRAS]'` brings: nbrouter's requirements (read from this
    checkout's pyproject.toml) and, through the installed packages' metadata, theirs."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in wanted]
    while todo:
        requirement, extra = todo.pop()
        name = _normal(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: it has no requirements to follow (and nothing imports it)
        for text in requires:
            inner = Requirement(text)
            for chosen in sorted(requirement.extras) or [""]:
                todo.append((inner, chosen))
    return seen


def providers_of(module: str) -> set[str]:
    """The installed distributions a top-level module comes from (none for the standard library)."""
    return {_normal(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def uncovered(modules: set[str], installed: set[str]) -> dict[str, set[str]]:
    """The modules whose distribution the set-up does not install: {module: its distributions}."""
    out = {}
    for module in sorted(modules):
        if module in sys.stdlib_module_names or module in ("nbrouter", "__future__"):
            continue
        dists = providers_of(module)
        if not dists & installed:
            out[module] = dists
    return out


def notebook_imports(path: Path) -> set[str]:
    """The top-level modules a notebook's code cells import (IPython's magic lines left out)."""
    found: set[str] = set()
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith("%%"):
            continue
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found


def test_the_readme_set_up_installs_what_every_notebook_imports_and_jupyterlab() -> None:
    installed = installed_by(readme_set_up_extras())
    assert FRONT_END in installed, "the README's first command installs no JupyterLab to open the notebooks in"
    missing = {path.name: uncovered(notebook_imports(path), installed) for path in NOTEBOOKS}
    assert {name: found for name, found in missing.items() if found} == {}
    assert "pandas" in notebook_imports(NOTEBOOK_DIR / "batch.ipynb")  # the reader sees imports at all


#: an IPython startup file for the notebooks' kernels: it records what the notebook's own cells import
IMPORT_RECORDER = """
import builtins as _builtins

_nbrouter_imported = set()
_nbrouter_import = _builtins.__import__


def _nbrouter_record(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and globals is not None and globals.get("__name__") == "__main__":  # a cell's own import
        _nbrouter_imported.add(name.partition(".")[0])
    return _nbrouter_import(name, globals, locals, fromlist, level)


_builtins.__import__ = _nbrouter_record
"""
REPORT_IMPORTS = "import json as _json\nprint('NBROUTER-IMPORTED ' + _json.dumps(sorted(_nbrouter_imported)))"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_against_the_simulator(path: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(REPORT_IMPORTS))  # last: no cell's execution count changes
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-record-imports.py").write_text(IMPORT_RECORDER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != DEMO_SIM_URL_ENV}  # as a user opening it would
    env["HOME"] = os.environ.get("HOME", str(tmp_path))
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    try:
        execute_notebook(nb, env=env, cwd=tmp_path, kernel_log=tmp_path / "kernel.log")
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} raised in a cell:\n{exc}")
    # what its cells imported as they ran, in the kernel, is all installed by the README's set-up
    report = nb.cells.pop()
    printed = "".join(o.get("text", "") for o in report.outputs if o.get("output_type") == "stream")
    imported = set(json.loads(printed.split("NBROUTER-IMPORTED ", 1)[1]))
    assert uncovered(imported, installed_by(readme_set_up_extras())) == {}, f"{path.name} imports {sorted(imported)}"

    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    tracebacks = [o["text"] for cell in nb.cells for o in cell.get("outputs", [])
                  if o.get("output_type") == "stream" and "Traceback" in o.get("text", "")]
    assert not tracebacks, tracebacks
    saved = len(nbformat.writes(nb).encode())
    assert saved < SAVED_SIZE_LIMITS.get(path.name, SAVED_SIZE_LIMIT), f"{path.name} is {saved} bytes once run and saved (widget state: {len(str(nb.metadata.get('widgets', '')))})"
    for cell in prompt_cells(nb):
        meta = cell["meta"]
        assert meta is not None, f"{path.name}: prompt cell [{cell['execution_count']}] has no nbrouter metadata"
        assert meta.get("served_by"), f"{path.name}: prompt cell [{cell['execution_count']}] names no server: {meta}"
        assert meta.get("attempts"), meta

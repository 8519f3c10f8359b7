"""The package's layout holds: imports point one way, and no module imports itself back in a circle.

Layers, lowest first: `_core` (kinds, usage, rate limits, the failure type, secrets, the clock), `report`
(the table value), `providers` (the wire), `router` (decides and remembers), `notebook` (talks to Jupyter),
then the package's own `__init__` and `__main__`. `testing` (the simulator) stands apart and may use only
`_core`. Every import counts, at module level or inside a function (a lazy import of a heavy package is
fine, but it may not dodge a cycle or point up), and `TYPE_CHECKING` imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbrouter

PACKAGE = Path(nbrouter.__file__).parent
RANKS = {"_core": 0, "report": 1, "providers": 2, "router": 3, "notebook": 4}
TOP = 5


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The nbrouter modules that `name` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            sub: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module]
            sub = [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets + sub:
            if target in known and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return TOP
    if parts[1] == "testing":
        return None
    return RANKS.get(parts[1], TOP)


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for module, imported in _graph().items():
        rank = _rank(module)
        for target in imported:
            target_rank = _rank(target)
            if module.startswith("nbrouter.testing"):
                if not (target.startswith("nbrouter.testing") or target.startswith("nbrouter._core")):
                    upward.append(f"{module} -> {target} (testing may use only _core)")
                continue
            if target_rank is None:
                if rank != TOP:
                    upward.append(f"{module} -> {target} (only the top level uses testing)")
                continue
            if rank is not None and target_rank > rank:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt.rsplit(".", 1)[0] == node:
                continue  # a package importing its own submodule is how packages are built, not a cycle
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_layers_are_the_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANKS) | {"testing"}


def test_the_router_never_imports_ipython_and_providers_never_import_the_router() -> None:
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        if name.startswith(("nbrouter.router", "nbrouter.providers", "nbrouter._core", "nbrouter.report")):
            offenders += [f"{name} imports {m}" for m in names if m.split(".")[0] in ("IPython", "ipywidgets", "ipykernel")]
        if name.startswith("nbrouter.notebook"):
            offenders += [f"{name} imports {m}" for m in names if m.split(".")[0] in ("httpx", "aiohttp", "httpx_aiohttp")]
    assert offenders == []

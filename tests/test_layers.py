"""The package's layout holds: imports point one way, and no module imports itself back in a circle.

Layers, lowest first: `_core` (kinds, usage, rate limits, the failure type, secrets, the clock), `report`
(the table value), `providers` (the wire), `router` (decides and remembers), `notebook` (talks to Jupyter),
then the package's own `__init__` and `__main__`. `testing` (the simulator) stands apart and may use only
`_core`. Every import counts, at module level or inside a function (a lazy import of a heavy package is
fine, but it may not dodge a cycle or point up), and `TYPE_CHECKING` imports count too.

Inside the router the folders are floors too (`ROUTER_FLOORS`), and everything above the router sees it
through one face, `nbrouter.router` (its `__init__`). No module reaches into another's private names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbrouter

PACKAGE = Path(nbrouter.__file__).parent
RANKS = {"_core": 0, "report": 1, "providers": 2, "router": 3, "notebook": 4}
TOP = 5
#: the router's parts, lowest first: a module may import its own floor and those below
ROUTER_FLOORS = {"vocabulary": 0, "state": 1, "decide": 2, "config": 3, "run": 4, "batch": 5, "face": 6}
#: the router's top-level modules that stand above its parts (the rest of its top level is its vocabulary)
ROUTER_FACE = {"nbrouter.router", "nbrouter.router.engine", "nbrouter.router.status"}
#: names of other libraries' objects that are private but have no public equivalent, and why
FOREIGN_PRIVATE = {
    "_actions": "argparse keeps no public list of a parser's options (help_text lays them out itself)",
}


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


def _router_floor(module: str) -> int:
    if module in ROUTER_FACE:
        return ROUTER_FLOORS["face"]
    part = module.split(".")[2]
    return ROUTER_FLOORS.get(part, ROUTER_FLOORS["vocabulary"])


def test_the_router_parts_import_only_their_own_floor_and_those_below() -> None:
    upward = []
    for module, imported in _graph().items():
        if not module.startswith("nbrouter.router"):
            continue
        for target in imported:
            if target.startswith("nbrouter.router") and _router_floor(target) > _router_floor(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_above_the_router_only_its_face_is_imported() -> None:
    reached = []
    for module, imported in _graph().items():
        if module.startswith(("nbrouter.router", "nbrouter.testing")):
            continue
        reached += [f"{module} -> {t}" for t in sorted(imported) if t.startswith("nbrouter.router.")]
    assert reached == []


def _own_private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines itself: functions, classes, module and class variables, and
    attributes it sets on `self` or `cls` (another instance of its own classes may read those)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
    return {n for n in names if n.startswith("_")}


def _is_private(name: str) -> bool:
    # dunders are Python's; a trailing underscore marks a protocol name (`_repr_html_`, `_render_traceback_`)
    return name.startswith("_") and not name.startswith("__") and not name.endswith("_")


def _private_reaches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _own_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
                continue
            if node.attr in own or node.attr in FOREIGN_PRIVATE:
                continue
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("nbrouter")):
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if _is_private(a.name)]
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    found = [reach for path in sorted(PACKAGE.rglob("*.py")) for reach in _private_reaches(path)]
    assert found == []


def test_the_private_reach_check_finds_a_reach(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f(router):\n    return router._decider, self_ok()\nfrom .engine import _route\n")
    assert sorted(_private_reaches(sample)) == ["sample.py:2 ._decider", "sample.py:3 imports _route"]


def test_the_router_face_exports_what_it_names() -> None:
    import nbrouter.router as face

    assert sorted(face.__all__) == sorted(set(face.__all__))
    missing = [name for name in face.__all__ if not hasattr(face, name)]
    assert missing == []

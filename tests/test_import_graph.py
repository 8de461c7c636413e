"""The package's import graph: no cycle among the modules of ``dsp_deploy`` and
``dsp_experiments``, read from the source (no import runs).

An edge A → B is any import of B in A that runs (at module level or inside a function;
``if TYPE_CHECKING:`` blocks excluded): a deferred import that exists only to dodge a
cycle is still a cycle. ``from P import name`` is an edge to ``P.name`` when that is a
module, else to ``P``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dsp_deploy", "dsp_experiments")
# compress/graph.py's normalise() calls fold_constants, which uses graph's helpers; both
# files belong to the onnx-ir rebuild of the graph layer (issue 16, item 1), which
# removes graph.py. Any other cycle fails.
KNOWN = ({"dsp_deploy.compress.fold_constants", "dsp_deploy.compress.graph"},)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
            skipped |= {id(n) for n in ast.walk(node)}
    return skipped


def _targets(node: ast.AST, name: str, is_package: bool, files: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & files.keys()
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the package holding this module
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    named = {f"{base}.{a.name}" for a in node.names}
    modules = named & files.keys()
    return modules | ({base} & files.keys() if named - modules else set())


@functools.cache
def import_graph(root: Path = ROOT) -> dict[str, frozenset[str]]:
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) not in skipped:
                edges |= _targets(node, name, path.name == "__init__.py", files)
        graph[name] = frozenset(edges - {name})
    return graph


def cycles(graph: dict[str, frozenset[str]] | dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_packages_modules() -> None:
    assert [c for c in cycles(import_graph()) if c not in KNOWN] == []


def test_the_cycle_finder_finds_a_deferred_cycle_and_ignores_type_checking() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
        "def f():\n    import y\n"
    )
    skipped = _type_checking_nodes(tree)
    names = [
        a.name for n in ast.walk(tree) if id(n) not in skipped for a in getattr(n, "names", ())
    ]
    assert "y" in names and "x" not in names


def test_the_graph_sees_the_deferred_imports_of_real_modules() -> None:
    graph = import_graph()
    assert "dsp_experiments.runner" in graph["dsp_deploy.commands.sweep"]  # inside a function
    assert "dsp_deploy.memory" in graph["dsp_deploy.modelcheck"]
    assert not any(m.startswith("dsp_experiments") for m in graph["dsp_deploy.io"])


# --- tests/ and benchmarks/ ---------------------------------------------------------------
# Neither imports the other (by module name, by a sys.path entry or from a file path); what
# both use lives in testkit/.
_PATH_CALLS = ("insert", "append", "spec_from_file_location", "run_path")


def _reaches_into(path: Path, other: str) -> list[str]:
    """Imports of ``other``'s modules and path-based loads naming ``other`` in ``path``
    (the name given in the call, or in a variable assigned from an expression holding it)."""
    stems = {p.stem for p in (ROOT / other).glob("*.py")}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        found += [f"imports {n}" for n in names if n.split(".")[0] in stems | {other}]
    tainted = _names_holding(tree, other)
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if getattr(func, "attr", getattr(func, "id", None)) in _PATH_CALLS:
            parts = list(ast.walk(node))
            if any(isinstance(c, ast.Name) and c.id in tainted for c in parts) or any(
                isinstance(c, ast.Constant) and c.value == other for c in parts
            ):
                found.append(f"loads from {other}/ (line {node.lineno})")
    return found


def _names_holding(tree: ast.AST, text: str) -> set[str]:
    """Variables assigned from an expression with the string ``text`` in it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(c, ast.Constant) and c.value == text for c in ast.walk(node.value)
        ):
            names |= {n.id for n in node.targets if isinstance(n, ast.Name)}
    return names


def test_tests_and_benchmarks_do_not_import_each_other() -> None:
    reaches = {
        f"{p.relative_to(ROOT)}: {what}"
        for here, other in (("tests", "benchmarks"), ("benchmarks", "tests"))
        for p in sorted((ROOT / here).glob("*.py"))
        for what in _reaches_into(p, other)
    }
    assert sorted(reaches) == []


def test_the_independence_check_sees_a_sys_path_entry(tmp_path: Path) -> None:
    script = tmp_path / "b.py"
    script.write_text(
        'import sys\nsys.path.insert(0, str(ROOT / "tests"))\nimport conftest\n'
        'HELPER = ROOT / "tests" / "x.py"\nimportlib.util.spec_from_file_location("x", HELPER)\n'
    )
    assert sorted(_reaches_into(script, "tests")) == [
        "imports conftest",
        "loads from tests/ (line 2)",
        "loads from tests/ (line 5)",
    ]

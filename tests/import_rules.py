"""The layer rules of the design (DESIGN.md §1) as a checker over a package's source (an `ast` walk).

The layers, bottom to top: the floors (hooks, lens, stats, report, artifact, config, chunks, precision and
the package's `__init__`), the data floor (worlds, models, store, corpora), the method packages
(dictionaries, lenses, circuits, attribution, ...), `evaluate`, `bench` and `cli` (with `__main__`, which only runs the command line). The rules:

1. a method package never imports `bench` or `cli`;
2. `evaluate` never imports a method package;
3. a floor imports nothing above it (a floor imports only floors; the data floor imports only
   floors and the data floor);
4. there are no import cycles between modules.

Rules 1-3 count every import, including those inside functions: a deferred import is still a
dependency. Rule 4 builds the module graph from top-level imports only (those that run when the
module is imported, `if TYPE_CHECKING:` blocks excluded), because an import inside a function is
the usual, legitimate way to break a cycle: it cannot deadlock the import system, and the modules
still load in one order.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

FLOORS = ("hooks", "lens", "stats", "report", "artifact", "config", "chunks", "precision")
DATA_FLOOR = ("worlds", "models", "store", "corpora")
METHOD_PACKAGES = (
    "dictionaries", "lenses", "circuits", "attribution", "data_attribution", "robustness",
    "pruning", "concepts", "safety", "dynamics",
)
UPPER = ("evaluate", "bench", "cli")


@dataclass(frozen=True, order=True)
class Violation:
    """One broken rule, located at the import statement that breaks it."""

    rule: str
    """`method->upper`, `evaluate->method`, `floor->above` or `cycle`."""
    file: str
    """The importing file, relative to the root's parent with `/` separators (`assay/bench/x.py`)."""
    line: int
    """The line of the import statement."""
    imported: str
    """The imported module (`assay.bench.suite`); for a cycle, the whole cycle `a -> b -> a`."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: imports {self.imported}"


@dataclass(frozen=True)
class _Import:
    module: str
    line: int
    top_level: bool


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, current: str, is_package: bool, known: set[str]) -> list[_Import]:
    """Every import of the tree; `from m import x` names `m.x` when that is a module of the tree."""
    found: list[_Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(_Import(alias.name, node.lineno, top_level) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(current, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(_Import(sub if sub in known else base, node.lineno, top_level))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, top_level)
            return
        inner = top_level and not isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        )
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def _layer(root_name: str, module: str) -> tuple[str, str] | None:
    """(layer, top-level part) of a module of the package, or None for a module outside it."""
    parts = module.split(".")
    if parts[0] != root_name:
        return None
    if len(parts) == 1:
        return "floor", ""
    top = parts[1]
    for layer, names in (("floor", FLOORS), ("data", DATA_FLOOR), ("method", METHOD_PACKAGES)):
        if top in names:
            return layer, top
    if top in UPPER:
        return top, top
    if top == "__main__":
        return "cli", top
    return "unknown", top


_FLOOR_MAY_IMPORT = {"floor": {"floor"}, "data": {"floor", "data"}}


def _rule(importer: tuple[str, str], imported: tuple[str, str]) -> str | None:
    layer, _ = importer
    target, _ = imported
    if layer == "method" and target in ("bench", "cli"):
        return "method->upper"
    if layer == "evaluate" and target == "method":
        return "evaluate->method"
    if layer in _FLOOR_MAY_IMPORT and target not in _FLOOR_MAY_IMPORT[layer]:
        return "floor->above"
    return None


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_path(graph, set(c)) for c in components]


def _cycle_path(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """One cycle through the component's first module: a breadth-first path back to it."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component always has a cycle")


def check(root: Path) -> list[Violation]:
    """Every violation of the layer rules in the package at `root` (a folder with `__init__.py`)."""
    root = Path(root)
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    violations: set[Violation] = set()
    graph: dict[str, dict[str, int]] = {m: {} for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root.parent).as_posix()
        importer = _layer(root.name, module)
        for imp in _imports(tree, module, path.name == "__init__.py", known):
            imported = _layer(root.name, imp.module)
            if imported is None:
                continue
            rule = _rule(importer, imported)
            if rule is not None:
                violations.add(Violation(rule, rel, imp.line, imp.module))
            target = imp.module if imp.module in known else None
            if imp.top_level and target is not None and target != module:
                graph[module].setdefault(target, imp.line)
    for cycle in _cycles(graph):
        first, second = cycle[0], cycle[1]
        rel = files[first].relative_to(root.parent).as_posix()
        violations.add(Violation("cycle", rel, graph[first][second], " -> ".join(cycle)))
    return sorted(violations)


def unknown_packages(root: Path) -> list[str]:
    """Top-level modules of the package that no layer names (each must be given a layer)."""
    root = Path(root)
    names = {p.name if p.is_dir() else p.stem for p in root.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    names -= {"__init__", "__main__"}
    return sorted(n for n in names if _layer(root.name, f"{root.name}.{n}") == ("unknown", n))

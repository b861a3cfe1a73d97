"""Shape of the product code: no function over 80 lines, no import cycle between our modules or our packages (reads the sources)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
PACKAGES = ("train", "models", "serve", "aws", "mlflow_server")


def product_sources() -> dict[str, ast.Module]:
    """Module name -> parsed source of every tracked Python file in the product packages."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sources = {}
    for name in listed:
        path = Path(name)
        if path.parts[0] not in PACKAGES or not (REPO_ROOT / path).is_file():
            continue
        parts = list(path.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join(parts)] = ast.parse((REPO_ROOT / path).read_text(), filename=name)
    return sources


def imported_modules(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Our modules that `module` imports, at any depth of its code (lazy imports count: they cycle at run time)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_no_function_is_longer_than_80_lines():
    long_ones = []
    for module, tree in product_sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_ones.append(f"{module}.{node.name} ({length} lines)")
    assert long_ones == [], "split these into named steps: " + ", ".join(long_ones)


def cycles_in(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle of a graph, as `a -> b -> a`, found by a depth-first search."""
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles_between_our_modules():
    sources = product_sources()
    graph = {module: imported_modules(module, tree, set(sources)) for module, tree in sources.items()}
    # A package imports its own submodules when it is imported; that edge is not a cycle.
    for module in graph:
        graph[module] = {target for target in graph[module] if not target.startswith(module + ".")}
    cycles = cycles_in(graph)
    assert cycles == [], "import cycles: " + "; ".join(cycles)


def package_of(module: str) -> str:
    """The package a module counts for: its second-level package (train.data, serve.pacs), else the module itself."""
    parts = module.split(".")
    if len(parts) >= 2 and (REPO_ROOT / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def test_no_import_cycles_between_our_packages():
    """train.data -> train.settings -> train.data is a cycle even when no two files import each other."""
    sources = product_sources()
    graph: dict[str, set[str]] = {}
    for module, tree in sources.items():
        source = package_of(module)
        graph.setdefault(source, set())
        for target in imported_modules(module, tree, set(sources)):
            package = package_of(target)
            if package != source and not package.startswith(source + ".") and not source.startswith(package + "."):
                graph[source].add(package)
                graph.setdefault(package, set())
    cycles = cycles_in(graph)
    assert cycles == [], "import cycles between packages: " + "; ".join(cycles)

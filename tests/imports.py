"""The package's import graph, read from the source (no module is imported): for the architecture and DVC tests."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(node: ast.AST, importer: str) -> set[str]:
    """The ``pipeline`` modules that the imports under ``node`` name (``from pipeline.x import y`` names
    ``pipeline.x.y`` where that is a module, else ``pipeline.x``)."""
    found = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names if alias.name.startswith("pipeline")}
        elif isinstance(item, ast.ImportFrom) and item.module and item.module.startswith("pipeline"):
            for alias in item.names:
                sub = f"{item.module}.{alias.name}"
                found.add(sub if module_path(sub) else item.module)
    return {name for name in found if module_path(name) and name != importer}


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """Every module's imports, at module level and inside functions alike."""
    return {name: imported(ast.parse(path.read_text()), name) for name, path in modules().items()}


def closure(start: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return seen


def command_imports(command: str) -> set[str]:
    """The modules that ``medseg COMMAND`` can run: its CLI module's module-level imports, the imports inside the
    command's own function, and everything those import in turn."""
    edges = graph()
    for name, path in modules().items():
        if not name.startswith("pipeline.cli."):
            continue
        tree = ast.parse(path.read_text())
        for function in tree.body:
            if isinstance(function, ast.FunctionDef) and _command_name(function) == command:
                top = set().union(
                    *(imported(n, name) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
                )
                return {name} | closure(top | imported(function, name), edges)
    raise LookupError(f"no command {command!r} in pipeline/cli")


def _command_name(function: ast.FunctionDef) -> str | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "command":
            if decorator.args and isinstance(decorator.args[0], ast.Constant):
                return decorator.args[0].value
            return function.name.replace("_", "-")
    return None

"""The package's shape, read from its source: layers that import only downwards, no cycles, files and functions
small enough to read whole. README's Layout section names these layers."""

import ast

import pytest

from tests.imports import PACKAGE, ROOT, graph, modules

# lower layers never import higher ones; a layer's own packages import each other only where listed in SIDEWAYS
LAYERS = [
    {
        "pipeline",
        "pipeline.errors",
        "pipeline.files",
        "pipeline.config",
        "pipeline.params",
        "pipeline.provenance",
        "pipeline.run_log",
    },
    {"pipeline.data"},
    {"pipeline.networks"},
    {"pipeline.dicom"},
    {"pipeline.inference"},
    {"pipeline.training", "pipeline.evaluation", "pipeline.export"},
    {"pipeline.tracking"},
    {"pipeline.stages"},
    {"pipeline.cli"},
]
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60  # body lines


def _part(module: str) -> str:
    """The package of LAYERS that ``module`` belongs to."""
    for layer in LAYERS:
        for part in sorted(layer, key=len, reverse=True):
            if module == part or module.startswith(part + "."):
                return part
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py")


def _rank(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if _part(module) in layer)


def test_every_module_is_in_a_layer():
    for name in modules():
        _rank(name)


def test_imports_only_go_down_or_stay_in_their_package():
    wrong = [
        f"{importer} -> {imported}"
        for importer, targets in graph().items()
        for imported in targets
        if _rank(imported) > _rank(importer)
        or (_rank(imported) == _rank(importer) and _part(imported) != _part(importer) and _rank(importer) > 0)
    ]
    assert not wrong, "imports upwards or sideways:\n" + "\n".join(sorted(wrong))


def test_training_inference_and_evaluation_never_import_tracking():
    for importer, targets in graph().items():
        if _part(importer) in {"pipeline.training", "pipeline.inference", "pipeline.evaluation"}:
            assert not {t for t in targets if t.startswith("pipeline.tracking")}, importer


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def _body_lines(function: ast.FunctionDef) -> int:
    """From the first statement on: a typed CLI command's parameters are its interface, however many lines."""
    return function.end_lineno - function.body[0].lineno + 1


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_are_short(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_FILE_LINES, f"{path}: {source.count(chr(10))} lines"
    long = [
        f"{node.name} ({_body_lines(node)} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: {long}"


def test_test_modules_have_names_of_their_own():
    """The tests mirror the package in folders, but pytest's default import mode imports them by file name."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert not {name for name in names if names.count(name) > 1}

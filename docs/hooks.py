"""MkDocs hooks: the pages that must not drift are generated at build time from what they describe.

- ``reference/params.md``: every field of the typed params (``pipeline.config.Params``), one table per section,
  with its type, default and description as the pydantic models declare them.
- ``reference/cli.md``: every ``medseg`` command and subcommand with its help, arguments and options, read from
  the Typer application (``pipeline.cli.app``).
- ``changelog.md``: ``CHANGELOG.md`` of the repository root.
- ``benchmarks/results/*``: the result files (CSV, JSON, PNG), copied into the site so that pages link and show them.
- Placeholders in pages, ``{{ name(arguments) }}``, replaced by tables read from files at build time: ``table``
  (a result CSV), ``histories`` (training histories summarised), ``layers`` and ``modules`` (the package's layers,
  as tests/test_architecture.py enforces them, and each module's docstring).

Anything missing (a result file, a placeholder's function) stops the build, so a page never shows stale numbers.
"""

from __future__ import annotations

import ast
import csv
import inspect
import posixpath
import re
import statistics
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = "benchmarks/results"
RESULT_SUFFIXES = {".csv", ".json", ".png", ".svg"}
META = ("command", "machine", "date", "commit")  # columns of a result file that say how a figure was measured
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\((.*?)\)\s*\}\}", re.DOTALL)


# ---------------------------------------------------------------------------------------------- markdown helpers


def _escape(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities, so that ``OUTPUT/<name>`` is not read as an HTML tag."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def _cell(value: Any) -> str:
    """Text for one cell of a markdown table: on one line, its pipes escaped."""
    return _escape(re.sub(r"\s+", " ", str(value)).strip()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _paragraphs(text: str | None) -> str:
    """Help text or a docstring as markdown: single line breaks joined, paragraphs kept."""
    if not text:
        return ""
    blocks = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in block.splitlines()) for block in blocks)


# ---------------------------------------------------------------------------------------------- params reference


def _is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_model(annotation: Any) -> type | None:
    """The pydantic model a field holds (``WeightMapConfig | None`` holds ``WeightMapConfig``), else None."""
    if _is_model(annotation):
        return annotation
    models = [a for a in typing.get_args(annotation) if _is_model(a)]
    return models[0] if len(models) == 1 else None


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(str(a) for a in args) if len(args) < 3 else "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if _is_model(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: Any) -> str:
    names = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found, lengths = [], {}
    for item in field.metadata:
        for attribute, word in names.items():
            if getattr(item, attribute, None) is not None:
                found.append(f"{word} {getattr(item, attribute)}")
        for attribute in ("min_length", "max_length"):
            if getattr(item, attribute, None) is not None:
                lengths[attribute] = getattr(item, attribute)
        if getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    low, high = lengths.get("min_length"), lengths.get("max_length")
    if low is not None and low == high:
        found.append(f"exactly {low} items")
    else:
        found += [f"{word} {n} items" for word, n in (("at least", low), ("at most", high)) if n is not None]
    return ", ".join(found)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _source_comments(model: type) -> dict[str, str]:
    """``name: type = value  # comment`` lines of a model's source: the description of a field that has none."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^\n#]*#\s*([^\n]+)$", source, re.MULTILINE)}


def params_sections(model: type, prefix: str = "") -> list[tuple[str, type, list[tuple[str, Any]]]]:
    """(dotted section, model, [(dotted key, field)]) for a model and every section nested in it, depth first."""
    own, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        own.append((key, field))
        section = _section_model(field.annotation)
        if section is not None:
            nested += params_sections(section, key)
    return [(prefix, model, own), *nested]


def params_keys() -> list[str]:
    """Every dotted key of the params, sections included (tests/test_docs.py checks the page has each)."""
    from pipeline.config import Params

    return [key for _, _, fields in params_sections(Params) for key, _ in fields]


def params_page() -> str:
    from pipeline.config import Params

    parts = [
        "# Params reference",
        "",
        "Generated when the site is built from the typed params in `pipeline/config.py` (pydantic models): every key "
        "of `params.yaml` with its type, default and description. `medseg configure PRESET` writes the full file; a "
        "preset in `configs/` holds only what it changes; `dvc exp run -S KEY=VALUE` and `medseg configure --set "
        "KEY=VALUE` take the dotted keys below. An unknown or mistyped key is an error naming the file and the key.",
    ]
    for section, model, fields in params_sections(Params):
        comments = _source_comments(model)
        rows = []
        for key, field in fields:
            nested = _section_model(field.annotation)
            kind = _type_name(field.annotation)
            limits = _constraints(field)
            if nested is not None:
                default = "null (section below when set)" if field.default is None else "the section below"
            else:
                default = _code(_yaml_value(field.get_default(call_default_factory=True)))
            description = field.description or comments.get(key.rsplit(".", 1)[-1], "")
            rows.append([_code(key), kind + (f" ({limits})" if limits else ""), default, description])
        parts += ["", f"## {section or 'Top level'}", "", _table(["key", "type", "default", "description"], rows)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- CLI reference


def _cli():
    import typer

    from pipeline.cli import app

    return typer.main.get_command(app)


def _param_type(param: Any) -> str:
    if getattr(param, "is_flag", False) and not getattr(param, "multiple", False):
        return "flag"
    click_type = getattr(param, "type", None)  # click's own parameters
    if click_type is not None and getattr(click_type, "name", None):
        return click_type.name
    if hasattr(param, "bare_type"):  # Typer's own click (0.2x)
        return param.bare_type()
    return ""


def _param_default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or (getattr(param, "is_flag", False) and default is False):
        return ""
    if isinstance(default, (list, tuple)) and not default:
        return ""
    return _code(_yaml_value([str(v) for v in default] if isinstance(default, (list, tuple)) else default))


def _commands(group: Any, ctx: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(full command, command, context) for every command under ``group``, subgroups expanded after their own row."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or getattr(command, "hidden", False):
            continue
        sub_ctx = command.context_class(command, info_name=name, parent=ctx)
        found.append((f"{path} {name}", command, sub_ctx))
        if hasattr(command, "list_commands"):
            found += _commands(command, sub_ctx, f"{path} {name}")
    return found


def cli_commands() -> list[str]:
    """Every command as typed (``medseg runs alias``); tests/test_docs.py checks the page has each."""
    root = _cli()
    return [path for path, _, _ in _commands(root, root.context_class(root, info_name="medseg"), "medseg")]


def _usage(path: str, command: Any) -> str:
    pieces = [path, "[OPTIONS]"]
    for param in command.params:
        if type(param).__name__.endswith("Argument") and not getattr(param, "hidden", False):
            name = param.name.upper() + ("..." if param.nargs == -1 else "")
            pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append(
            "[COMMAND [ARGS]...]" if getattr(command, "invoke_without_command", False) else "COMMAND [ARGS]..."
        )
    return " ".join(pieces)


def _command_section(path: str, command: Any, level: int) -> list[str]:
    lines = [
        "",
        f"{'#' * level} {path}",
        "",
        f"```text\n{_usage(path, command)}\n```",
        "",
        _escape(_paragraphs(command.help)),
    ]
    arguments = [p for p in command.params if type(p).__name__.endswith("Argument") and not getattr(p, "hidden", False)]
    options = [p for p in command.params if p not in arguments and not getattr(p, "hidden", False)]
    if arguments:
        rows = [
            [_code(p.name.upper()), _param_type(p), _param_default(p), getattr(p, "help", "") or ""] for p in arguments
        ]
        lines += ["", _table(["argument", "type", "default", "help"], rows)]
    if options:
        rows = [
            [", ".join(_code(o) for o in [*p.opts, *p.secondary_opts]), _param_type(p), _param_default(p), p.help or ""]
            for p in options
        ]
        lines += ["", _table(["option", "type", "default", "help"], rows)]
    if hasattr(command, "list_commands"):
        lines += ["", "Its subcommands follow."]
    return lines


def cli_page() -> str:
    root = _cli()
    root_ctx = root.context_class(root, info_name="medseg")
    parts = [
        "# Command reference",
        "",
        "Generated when the site is built from the `medseg` command itself (`pipeline/cli/`, Typer): every command "
        "and subcommand with its help, arguments and options, as `medseg COMMAND --help` prints them. Every command "
        "also takes `--help`.",
        *_command_section("medseg", root, 2),
    ]
    for path, command, _ in _commands(root, root_ctx, "medseg"):
        parts += _command_section(path, command, 2 + path.count(" ") - 1)
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- files of the site


def changelog_page() -> str:
    return (ROOT / "CHANGELOG.md").read_text()


GENERATED = {"reference/params.md": params_page, "reference/cli.md": cli_page, "changelog.md": changelog_page}


def on_files(files: Files, config: Any) -> Files:
    for uri, render in GENERATED.items():
        files.append(File.generated(config, uri, content=render()))
    for path in sorted((ROOT / RESULTS).iterdir()):
        if path.is_file() and path.suffix in RESULT_SUFFIXES:
            files.append(File.generated(config, f"{RESULTS}/{path.name}", abs_src_path=str(path)))
    return files


# ---------------------------------------------------------------------------------------------- placeholders


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"docs: {path}: no such result file")
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _link(page: Any, target: str) -> str:
    """``target`` (a path from the docs root) relative to the page's own source file, as MkDocs resolves links."""
    return posixpath.relpath(target, posixpath.dirname(page.file.src_uri) or ".")


def _measured(how: tuple[str, ...]) -> str:
    """How one set of figures was measured: the command; machine; date; commit that recorded it."""
    command, machine, date, commit = how
    parts = [
        _code(command),
        f"machine: {_escape(machine)}" if machine else "",
        date,
        f"commit {commit}" if commit else "",
    ]
    return "; ".join(filter(None, parts))


def _measured_note(sets: list[tuple[str, ...]], numbered: bool) -> str:
    if numbered:
        return "\n".join(f"{number}. {_measured(how)}" for number, how in enumerate(sets, 1))
    return f"Measured with {_measured(sets[0])}."


def _header(name: str, headers: dict[str, str]) -> str:
    return headers.get(name, name.replace("_per_", "/").replace("_", " "))


def table(page: Any, path: str, pivot: list[str] | None = None, headers: dict[str, str] | None = None) -> str:
    """A result CSV as a markdown table, with how it was measured (its command, machine and date columns) below.

    ``pivot=[ROW, COLUMN, VALUE]`` spreads a long table: one row per ROW value, one column per COLUMN value, each
    column from its latest measurement (the rows that share the last command, machine, date and commit); earlier
    measurements stay in the file, and in git.
    Rows measured with different commands, machines or dates are numbered and the list below says which is which.
    """
    columns, rows = _read_csv(path)
    headers = headers or {}
    if not rows:
        raise PluginError(f"docs: {path}: no rows")
    shown = [c for c in columns if c not in META]
    if pivot:
        row_key, column_key, value_key = pivot
        sets = {row[column_key]: tuple(row.get(m, "") for m in META) for row in rows}  # each column's latest
        wide: dict[str, dict[str, str]] = {}
        for row in rows:
            if tuple(row.get(m, "") for m in META) == sets[row[column_key]]:
                wide.setdefault(row[row_key], {})[row[column_key]] = row[value_key]
        groups = list(sets)
        body = [[key, *(values.get(g, "") for g in groups)] for key, values in wide.items()]
        markdown = _table([_header(row_key, headers) if row_key in headers else "", *groups], body)
        note = "\n".join(f"- {group}: {_measured(how)}" for group, how in sets.items())
    else:
        measured = [tuple(row.get(m, "") for m in META) for row in rows]
        distinct = list(dict.fromkeys(measured))
        numbered = len(distinct) > 1
        header = [_header(c, headers) for c in shown]
        body = [[row[c] for c in shown] for row in rows]
        if numbered:
            header, body = ["#", *header], [[distinct.index(m) + 1, *b] for m, b in zip(measured, body)]
        markdown = _table(header, body)
        note = _measured_note(distinct, numbered) if any(any(m) for m in distinct) else ""
    source = f"[{Path(path).name}]({_link(page, path)})"
    return f"{markdown}\n\n{note}\n\nFrom {source}." if note else f"{markdown}\n\nFrom {source}."


def _last(rows: list[dict[str, str]], column: str) -> float | None:
    values = [float(r[column]) for r in rows if r.get(column)]
    return values[-1] if values else None


def histories(page: Any, runs: dict[str, str]) -> str:
    """Training histories (a run's models/history.csv, or plain_monai_loop.py --history) summarised, one row each."""
    body = []
    for name, path in runs.items():
        _, rows = _read_csv(path)
        validated = [r for r in rows if r.get("val_dice_mean")]
        if not validated:
            raise PluginError(f"docs: {path}: no validation Dice")
        best = max(validated, key=lambda r: float(r["val_dice_mean"]))
        speed = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
        wait = [float(r["data_wait_fraction"]) for r in rows if r.get("data_wait_fraction")]
        body.append(
            [
                name,
                rows[-1]["epoch"],
                f"{float(rows[-1]['minutes']):.1f}",
                f"{_last(rows, 'val_dice_mean'):.4f}",
                f"{float(best['val_dice_mean']):.4f} (epoch {best['epoch']}, {float(best['minutes']):.1f} min)",
                f"{statistics.median(speed):.1f}" if speed else "-",
                f"{statistics.median(wait):.1%}" if wait else "-",
                f"[{Path(path).name}]({_link(page, path)})",
            ]
        )
    header = ["run", "epochs", "minutes", "last validation Dice", "best validation Dice", "samples/s (median)",
              "waiting for data (median)", "history"]  # fmt: skip
    return _table(header, body)


def _architecture(name: str) -> Any:
    """A constant of tests/test_architecture.py (LAYERS, MAX_FILE_LINES...), read from its source, not imported."""
    tree = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise PluginError(f"docs: tests/test_architecture.py declares no {name}")


def _summary(path: Path) -> str:
    """The first paragraph of a module's docstring."""
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return _paragraphs(docstring.split("\n\n")[0])


def _module_path(module: str) -> Path:
    relative = Path(*module.split("."))
    package = ROOT / relative / "__init__.py"
    return package if package.is_file() else ROOT / relative.with_suffix(".py")


def layers(page: Any) -> str:
    """The layers, lowest first, each package with the first paragraph of its docstring."""
    body = []
    for rank, layer in enumerate(_architecture("LAYERS"), 1):
        for module in sorted(layer, key=lambda m: (m != "pipeline", m)):
            path = _module_path(module)
            shown = path.parent if path.name == "__init__.py" and module != "pipeline" else path
            name = str(shown.relative_to(ROOT)) + ("/" if shown.is_dir() else "")
            body.append([rank, _code(name), _summary(path) if path.is_file() else ""])
    limits = (
        f"The same test keeps every file of the package to at most {_architecture('MAX_FILE_LINES')} lines and every "
        f"function body to at most {_architecture('MAX_FUNCTION_LINES')}, so that each reads whole."
    )
    return _table(["layer", "module or package", "what it holds"], body) + "\n\n" + limits


def modules(page: Any, package: str) -> str:
    """Each module of a package with the first paragraph of its docstring."""
    folder = ROOT / Path(*package.split("."))
    body = [
        [_code(str(path.relative_to(ROOT))), _summary(path)]
        for path in sorted(folder.glob("*.py"))
        if not path.name.startswith("__")
    ]
    if not body:
        raise PluginError(f"docs: {package}: no modules")
    return _table(["module", "what it does"], body)


def model_description(page: Any) -> str:
    """The fields of the model description (``pipeline.networks.description.ModelDescription``) and its version."""
    from pipeline.networks.description import FORMAT, ModelDescription

    rows = [
        [_code(name), _type_name(field.annotation), _escape(field.description or "")]
        for name, field in ModelDescription.model_fields.items()
    ]
    return f"Format `{FORMAT}`.\n\n" + _table(["key", "type", "what"], rows)


MACROS = {
    "table": table,
    "histories": histories,
    "layers": layers,
    "modules": modules,
    "model_description": model_description,
}


def _call(page: Any, match: re.Match) -> str:
    name, arguments = match.group(1), match.group(2)
    if name not in MACROS:
        raise PluginError(f"docs: {page.file.src_uri}: unknown placeholder {name}()")
    call = ast.parse(f"f({arguments})", mode="eval").body
    positional = [ast.literal_eval(a) for a in call.args]
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return MACROS[name](page, *positional, **keywords)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return PLACEHOLDER.sub(lambda match: _call(page, match), markdown)

"""The documentation site builds without a warning, its generated references name every params key and every
command, every result file is shown, and the README stays a short first screen that links into the site."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

from pipeline.cli import app
from pipeline.config import Params

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]'): the site is not built")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    result = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def _page(site: Path, name: str) -> str:
    return html.unescape((site / name / "index.html").read_text())


def _params_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        nested = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ())) if isinstance(a, type)]
        keys += [k for a in nested if issubclass(a, BaseModel) for k in _params_keys(a, key)]
    return keys


def _commands(command, path: str = "medseg") -> list[tuple[str, object]]:
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            found += _commands(sub, f"{path} {name}")
    return found


def test_site_builds_strictly(site):
    for page in ("getting-started", "your-data", "training", "segmenting", "scoring", "auditing-and-teams",
                 "exports", "architecture", "testing", "measured", "not-done-yet", "changelog"):  # fmt: skip
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


def test_params_reference_names_every_field(site):
    page = _page(site, "reference/params")
    keys = _params_keys(Params)
    assert {"seed", "train.loss_options.batch_dice", "preprocess.weight_map.sigma"} <= set(keys)
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert not missing, f"params keys missing from the generated reference: {missing}"


def test_cli_reference_names_every_command_and_option(site):
    page = _page(site, "reference/cli")
    commands = _commands(typer.main.get_command(app))
    assert {"medseg segment", "medseg runs", "medseg runs alias"} <= {path for path, _ in commands}
    missing = []
    for path, command in commands:
        if not re.search(rf"<h\d[^>]*>{re.escape(path)}<", page):
            missing.append(path)
        options = [opt for p in command.params if not getattr(p, "hidden", False) for opt in p.opts if opt[0] == "-"]
        missing += [f"{path} {opt}" for opt in options if f"<code>{opt}</code>" not in page]
    assert not missing, f"missing from the generated command reference: {missing}"


def test_every_result_file_is_shown(site):
    shown = "".join((site / page / "index.html").read_text() for page in ("measured", "segmenting"))
    results = sorted((ROOT / "benchmarks" / "results").glob("*.csv"))
    assert results
    missing = [path.name for path in results if f"benchmarks/results/{path.name}" not in shown]
    assert not missing, f"result files no page shows: {missing}"


def test_readme_is_a_short_first_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the guide belongs in docs/"
    first_screen = "\n".join(lines[:30])
    assert "make run" in first_screen and "make test" in first_screen


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"

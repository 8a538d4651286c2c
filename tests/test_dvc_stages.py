"""dvc.yaml's code dependencies cover every module each stage's command imports, so DVC cannot call a stage up to
date after a change to code that it runs."""

from pathlib import Path

import pytest
import yaml

from tests.imports import ROOT, command_imports, module_path

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(stage):
    cmd = STAGES[stage]["cmd"].split()
    assert cmd[0] == "medseg", f"{stage}: the check reads `medseg COMMAND` stages only"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage].get("deps", [])]
    missing = sorted(
        str(module_path(name).relative_to(ROOT))
        for name in command_imports(cmd[1])
        if name not in {"pipeline", "pipeline.cli"} and not _covered(module_path(name), deps)
    )
    assert not missing, f"dvc.yaml stage {stage} lacks code it runs: {missing}"


def test_the_check_sees_a_stage_command_s_lazy_imports():
    assert {"pipeline.training.trainer", "pipeline.training.step"} <= command_imports("train")
    assert "pipeline.evaluation.metrics" in command_imports("evaluate")

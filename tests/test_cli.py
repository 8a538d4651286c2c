"""The command line: every stage reachable, and bad input answered with a message, never a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def medseg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_every_stage_has_a_subcommand(tmp_path):
    result = medseg("--help", cwd=tmp_path)
    assert result.returncode == 0
    for stage in ("configure", "acquire", "preprocess", "split", "train", "evaluate", "segment"):
        assert stage in result.stdout


def test_configure_writes_the_full_params_file(tmp_path):
    result = medseg("configure", ROOT / "configs" / "smoke.yaml", "-o", tmp_path / "params.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "params.yaml").read_text()
    assert "epochs: 2" in text and "learning_rate:" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("preprocess", "raw", "out"), "params.yaml: no such params file"),
        (("segment", "missing.nii.gz", "-o", "out"), "missing.nii.gz: no such file or folder"),
        (("evaluate", "nomodel.pt", "prep", "split.json", "reports"), "nomodel.pt: no such model file"),
        (("split", "nomanifest.csv", "split.json", "-p", "params.yaml"), "nomanifest.csv: no such file or folder"),
    ],
)
def test_user_errors_are_one_line_not_a_traceback(tmp_path, args, message):
    if "-p" in args:
        medseg("configure", ROOT / "configs" / "smoke.yaml", cwd=tmp_path)
    result = medseg(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_file_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    (tmp_path / "model.pt").write_text("hello")
    result = medseg("segment", tmp_path / "scan.nii.gz", "-o", tmp_path / "out", "--model", tmp_path / "model.pt", cwd=tmp_path)
    assert result.returncode == 2 and "model.pt: not a readable model file" in result.stderr
    assert "Traceback" not in result.stderr

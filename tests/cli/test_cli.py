"""The command line: every stage reachable, and bad input answered with a message, never a traceback."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import ROOT, SHARED, needs_shared


def medseg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_every_stage_has_a_subcommand(tmp_path):
    result = medseg("--help", cwd=tmp_path)
    assert result.returncode == 0
    for stage in ("configure", "acquire", "preprocess", "split", "train", "evaluate", "segment"):
        assert stage in result.stdout


def test_version_is_the_installed_package_version(tmp_path):
    from importlib.metadata import version

    result = medseg("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"medseg {version('medseg')}\n"


def test_configure_writes_the_full_params_file(tmp_path):
    result = medseg("configure", ROOT / "configs" / "smoke.yaml", "-o", tmp_path / "params.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "params.yaml").read_text()
    assert "epochs: 2" in text and "learning_rate:" in text


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_model_file_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    (tmp_path / "model.pt").write_text("hello")
    result = medseg(
        "segment", tmp_path / "scan.nii.gz", "-o", tmp_path / "out", "--model", tmp_path / "model.pt", cwd=tmp_path
    )
    assert result.returncode == 2 and "model.pt: not a readable model file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@needs_shared
def test_series_lists_a_study_and_convert_writes_the_chosen_one(tmp_path):
    study = SHARED / "dicom" / "mr-study"
    listing = medseg("series", study, cwd=tmp_path)
    assert listing.returncode == 0 and "[1] HippoCrop: 34x50x40 voxels, 1x1x1 mm" in listing.stdout
    assert len(listing.stdout.strip().splitlines()) == 5
    ambiguous = medseg("convert", study, tmp_path / "out.nii.gz", cwd=tmp_path)
    assert ambiguous.returncode == 2 and "holds 5 series" in ambiguous.stderr and "Traceback" not in ambiguous.stderr
    converted = medseg("convert", study, tmp_path / "t2.nii.gz", "--series", "T2_reg", cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    volume = nib.load(tmp_path / "t2.nii.gz")
    assert volume.shape == (280, 320, 22)
    assert np.allclose(volume.header.get_zooms(), (0.6875, 0.6875, 6.5), atol=1e-3)


@pytest.mark.slow
@needs_shared
def test_convert_keeps_the_ct_series_geometry(tmp_path):
    result = medseg("convert", SHARED / "ct-example" / "example_ct_dicom", tmp_path / "ct.nii.gz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    converted = nib.as_closest_canonical(nib.load(tmp_path / "ct.nii.gz"))
    reference = nib.as_closest_canonical(nib.load(SHARED / "ct-example" / "example_seg_dicom.nii.gz"))
    assert converted.shape == reference.shape
    np.testing.assert_allclose(converted.affine, reference.affine, atol=1e-3)

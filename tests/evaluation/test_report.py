"""The HTML report as a person sees it: rendered by headless Chromium (Debian's `chromium`), screenshot kept.

The screenshot goes to $MEDSEG_TEST_ARTIFACTS, or tests/artifacts/ (git-ignored), to be looked at."""

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.folders import evaluate_folders
from tests.conftest import HIPPOCAMPUS_FIXTURE, ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 2600)


def _artifacts() -> Path:
    folder = Path(os.environ.get("MEDSEG_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(tmp_path):
    for path in sorted((HIPPOCAMPUS_FIXTURE / "labelsTr").glob("*.nii.gz")):
        volume = nib.load(path)
        labels = np.roll(np.asanyarray(volume.dataobj).astype(np.uint8), int(path.name[-9]) % 3, axis=1)
        (tmp_path / "pred").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(labels, volume.affine), tmp_path / "pred" / path.name)
    evaluate_folders(
        tmp_path / "pred",
        HIPPOCAMPUS_FIXTURE / "labelsTr",
        tmp_path / "out",
        {1: "Anterior", 2: "Posterior"},
        image_dir=HIPPOCAMPUS_FIXTURE / "imagesTr",
    )
    screenshot = _artifacts() / "report.png"
    screenshot.unlink(missing_ok=True)
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},  # chromium writes its profile there
    )
    shutil.copy(tmp_path / "out" / "report.html", screenshot.with_suffix(".html"))
    picture = Image.open(screenshot)
    assert picture.format == "PNG" and picture.size == WINDOW
    pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # text, tables and pictures, not a blank page
    rows_with_content = (pixels < 200).any(axis=1).mean()
    assert rows_with_content > 0.5  # the page fills most of the window: the embedded pictures loaded

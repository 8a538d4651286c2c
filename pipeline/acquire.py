"""Stage 1: bring the raw dataset (MSD or images/labels layout) into ``data/`` so that DVC versions it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.dataset import layout_parts
from pipeline.errors import DatasetError

MSD_PREFIX = "msd:"


def _download_msd(task: str, staging: Path) -> Path:
    from monai.apps import DecathlonDataset, download_and_extract

    if task not in DecathlonDataset.resource:
        known = ", ".join(sorted(DecathlonDataset.resource))
        raise DatasetError(f"data.source: unknown Decathlon task '{task}'; known: {known}")
    download_and_extract(
        DecathlonDataset.resource[task],
        filepath=staging / f"{task}.tar",
        output_dir=staging,
        hash_val=DecathlonDataset.md5[task],
        hash_type="md5",
        progress=True,
    )
    return staging / task


def _dataset_files(source: Path, config: DataConfig) -> list[Path]:
    files = []
    for part in layout_parts(source, config):
        path = source / part
        files += [path] if path.is_file() else sorted(path.rglob("*"))
    return [p for p in files if p.is_file() and not p.name.startswith(".")]


def _copy_dataset(source: Path, target: Path, config: DataConfig) -> None:
    for path in tqdm(_dataset_files(source, config), desc=f"copying {source}", unit="file"):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def acquire(config: DataConfig, out_dir: Path) -> None:
    """Fill ``out_dir`` from ``config.source``; it appears only once complete."""
    source = config.source
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as staging:
        staging = Path(staging)
        if source.startswith(MSD_PREFIX):
            origin = _download_msd(source[len(MSD_PREFIX) :], staging)
        else:
            origin = Path(source).expanduser()
            if not origin.is_dir():
                raise DatasetError(
                    f"data.source: '{source}' is neither '{MSD_PREFIX}TaskNN_Name' nor an existing folder"
                )
        complete = staging / "dataset"
        _copy_dataset(origin, complete, config)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        complete.rename(out_dir)

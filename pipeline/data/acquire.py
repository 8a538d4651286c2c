"""Stage 1: bring the raw dataset (MSD or images/labels layout) into ``data/`` so that DVC versions it."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.data.dataset import layout_parts
from pipeline.errors import DatasetError

MSD_PREFIX = "msd:"
logger = logging.getLogger(__name__)


def msd_url(spec: str) -> str:
    """Where MONAI downloads the Decathlon task named by ``spec`` ('msd:TaskNN_Name')."""
    from monai.apps import DecathlonDataset

    task = spec.removeprefix(MSD_PREFIX)
    if task not in DecathlonDataset.resource:
        known = ", ".join(sorted(DecathlonDataset.resource))
        raise DatasetError(f"data: unknown Decathlon task '{task}' in '{spec}'; known: {known}")
    return DecathlonDataset.resource[task]


def local_folder(config: DataConfig) -> Path | None:
    """The dataset folder that ``data.source`` names, or None when it names a download."""
    return None if config.source.startswith(MSD_PREFIX) else Path(config.source).expanduser()


def _download_msd(spec: str, staging: Path) -> Path:
    # download_url then extractall rather than download_and_extract, which first asks the server for the file name
    from monai.apps import DecathlonDataset, download_url, extractall

    task = spec.removeprefix(MSD_PREFIX)
    archive = staging / f"{task}.tar"
    download_url(msd_url(spec), archive, hash_val=DecathlonDataset.md5[task], hash_type="md5", progress=True)
    extractall(archive, staging)
    archive.unlink()
    return staging / task


def _origin(config: DataConfig, staging: Path) -> Path:
    """The folder to copy: the local one when present, else the download; says which."""
    from monai.apps.utils import HashCheckError

    folder = local_folder(config)
    if folder is not None and folder.is_dir():
        logger.info("data: using the local folder %s (data.source)", folder)
        return folder
    if folder is None:
        spec, attempt = config.source, f"data.source: downloading {config.source}"
    elif config.download is not None:
        spec = config.download
        attempt = f"data.source: the folder '{folder}' is absent, and downloading {spec} (data.download)"
    else:
        raise DatasetError(
            f"data.source: '{config.source}' is neither '{MSD_PREFIX}TaskNN_Name' nor an existing folder"
            " (and data.download is null)"
        )
    url = msd_url(spec)
    logger.info("%s from %s", attempt, url)
    try:
        return _download_msd(spec, staging)
    except (OSError, RuntimeError, HashCheckError) as err:  # urllib's URLError is an OSError
        task = spec.removeprefix(MSD_PREFIX)
        raise DatasetError(
            f"{attempt} from {url} failed ({err}). To use a local copy instead, point "
            f"data.source at a folder holding {task} (dataset.json, imagesTr/, labelsTr/): edit params.yaml, or "
            f"medseg configure PRESET --set data.source=/path/to/{task}"
        ) from err


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
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as staging:
        staging = Path(staging)
        origin = _origin(config, staging)
        complete = staging / "dataset"
        _copy_dataset(origin, complete, config)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        complete.rename(out_dir)

"""What ``medseg doctor`` checks: is this machine ready for the default run, and if not, what to do.

Each check returns a ``Check``; the command line only prints them. Nothing here writes a file.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pipeline.config import DataConfig
from pipeline.errors import MedsegError
from pipeline.params import load_params

SETUP = "make run (or make test) sets up .venv; by hand: pip install -e '.[test]'"
LIBRARIES = {
    "MONAI": "monai",
    "ITK": "itk",
    "SimpleITK": "SimpleITK",
    "MLflow": "mlflow",
    "DVC": "dvc",
    "nibabel": "nibabel",
}
NETWORK_TIMEOUT_S = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["ok", "warn", "fail"]  # fail: the default run cannot work until it is fixed
    detail: str
    fix: str | None = None


def check_python() -> Check:
    # pip refuses to install medseg on a Python older than 3.10 (requires-python), so this only reports
    return Check("Python", "ok", f"{platform.python_version()} ({sys.executable})")


def nvidia_gpus() -> list[str]:
    """The GPUs that ``nvidia-smi -L`` lists, empty without the tool or a GPU."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listing.stdout.splitlines() if line.startswith("GPU")] if listing.returncode == 0 else []


def check_torch() -> Check:
    try:
        import torch
    except ImportError as err:
        return Check("torch", "fail", f"not importable ({err})", SETUP)
    build = (
        f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else f"ROCm {torch.version.hip}"
        if torch.version.hip
        else "CPU"
    )
    if torch.cuda.is_available():
        return Check(
            "torch", "ok", f"{torch.__version__}, {build} build, device: CUDA ({torch.cuda.get_device_name(0)})"
        )
    detail = f"{torch.__version__}, {build} build, device: CPU"
    gpus = nvidia_gpus()
    if gpus:
        return Check(
            "torch",
            "warn",
            f"{detail}, although nvidia-smi lists {gpus[0]}",
            "install torch's CUDA build for this driver (pytorch.org), e.g. rm -rf .venv && "
            "make run TORCH_INDEX=https://download.pytorch.org/whl/cu126",
        )
    return Check("torch", "ok", detail)


def check_library(name: str, distribution: str) -> Check:
    try:
        return Check(name, "ok", metadata.version(distribution))
    except metadata.PackageNotFoundError:
        return Check(name, "fail", "not installed", SETUP)


def reachable(url: str) -> str | None:
    """None when ``url`` answers, else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=NETWORK_TIMEOUT_S):
            return None
    except OSError as err:  # URLError, HTTPError, timeouts
        return str(getattr(err, "reason", err))


def check_data(params: Path) -> Check:
    """Can the acquire stage get the data that ``params`` (or, without that file, the defaults) names?"""
    from pipeline.data.acquire import local_folder, msd_url
    from pipeline.data.dataset import layout_parts

    origin = str(params) if params.is_file() else "the defaults, as there is no params file"
    try:
        data = load_params(params).data if params.is_file() else DataConfig()
    except MedsegError as err:
        return Check("data", "fail", str(err), "write it anew: medseg configure configs/hippocampus_3d.yaml")
    point = f"point data.source in {params} at a local copy (dataset.json, imagesTr/, labelsTr/)"
    folder = local_folder(data)
    if folder is not None and folder.is_dir():
        try:
            layout_parts(folder, data)
        except MedsegError as err:
            return Check("data", "fail", str(err), point)
        return Check("data", "ok", f"the local folder {folder} (data.source in {origin})")
    absent = "" if folder is None else f"{folder} (data.source in {origin}) is absent; "
    spec = data.source if folder is None else data.download
    if spec is None:
        return Check("data", "fail", f"{absent}data.download is null", point)
    try:
        url = msd_url(spec)
    except MedsegError as err:
        return Check("data", "fail", str(err), f"name a known task in {params}")
    problem = reachable(url)
    if problem is not None:
        return Check(
            "data",
            "fail",
            f"{absent}{spec} cannot be downloaded: {url}: {problem}",
            f"connect to the network, or {point}",
        )
    return Check("data", "ok", f"{absent}acquire will download {spec} from {url} (reachable)")


def tracking_uri() -> str:
    from pipeline.tracking.runs import DEFAULT_TRACKING_URI

    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _writable(path: Path) -> str | None:
    """None when ``path`` can be written (or created), else why not."""
    target = path if path.exists() else path.parent
    if not target.exists():
        return f"{target} does not exist"
    if not os.access(target, os.W_OK):
        return f"{target} is not writable"
    return None


def check_tracking() -> Check:
    name, uri = "tracking", tracking_uri()
    fix = "set MLFLOW_TRACKING_URI to a store you can write, e.g. sqlite:///mlflow.db in a writable folder"
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        problem = reachable(uri.rstrip("/") + "/health")
        return (
            Check(name, "ok", f"{uri} (server answers)")
            if problem is None
            else Check(name, "fail", f"{uri}: {problem}", fix)
        )
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
    elif scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme else uri)
    else:
        return Check(name, "warn", f"{uri}: not checked (a {scheme} store)")
    problem = _writable(path)
    if problem is not None:
        return Check(name, "fail", f"{uri}: {problem}", fix)
    return Check(name, "ok", f"{uri} ({'exists, writable' if path.exists() else 'will be created'})")


def run_checks(params: Path = Path("params.yaml")) -> list[Check]:
    return [
        check_python(),
        check_torch(),
        *(check_library(name, distribution) for name, distribution in LIBRARIES.items()),
        check_data(params),
        check_tracking(),
    ]

"""The software and hardware a run ran on, so that a reviewer can tell what a result depended on."""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device, processes: int, data_workers: int) -> dict[str, str]:
    """Versions and devices, as flat ``env.*`` names for MLflow params."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "env.python": sys.version.split()[0],
        "env.platform": platform.platform(),
        "env.torch": torch.__version__,
        "env.monai": _version("monai"),
        "env.mlflow": _version("mlflow"),
        "env.dvc": _version("dvc"),
        "env.medseg": _version("medseg"),
        "env.cuda": torch.version.cuda or "none",
        "env.cudnn": str(cudnn) if cudnn else "none",
        "env.device": device.type,
        "env.device_name": device_name(device),
        "env.cpu_count": str(os.cpu_count()),
        "env.processes": str(processes),
        "env.data_workers": str(data_workers),
    }

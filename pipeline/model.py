"""The network and the self-describing model file.

One file holds the weights and everything inference needs (network definition, label
names, preprocessing, patch size), in plain types, so it loads with ``weights_only=True``
on another machine with no ``params.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet, DynUNet, UNet

from pipeline.config import Params
from pipeline.errors import ConfigError, ModelError
from pipeline.files import atomic_path
from pipeline.unet_paper import OriginalUNet

MODEL_FORMAT = "medseg-model/1"
# a MONAI bundle exported by `medseg export` keeps this description under the "medseg" key of its metadata
BUNDLE_METADATA, BUNDLE_WEIGHTS = Path("configs/metadata.json"), Path("models/model.pt")


def describe(
    params: Params,
    labels: dict[str, str],
    modality: str,
    plan: dict[str, Any],
    patch_size: list[int],
    label_values: list[int] | None = None,
    slice_axis: int | None = None,
) -> dict[str, Any]:
    """All that inference needs besides the weights: ``labels`` names class indices 0..K-1, ``label_values``
    are the values they had in the data (written back by ``segment``), ``plan`` the preprocessing, and
    ``slice_axis`` the volume axis a 2D network runs along (None when the network has the data's dimensions)."""
    return {
        "network": network_spec(params, n_classes=len(labels), spatial_dims=len(patch_size)),
        "slice_axis": slice_axis,
        "labels": labels,
        "label_values": label_values or list(range(len(labels))),
        "modality": modality,
        "preprocess": plan,
        "patch_size": list(patch_size),
        "inference": params.inference.model_dump(exclude={"tta"}),  # TTA is chosen when segmenting
    }


def network_spec(params: Params, n_classes: int, spatial_dims: int = 3) -> dict[str, Any]:
    train = params.train
    levels = len(train.channels)
    spec: dict[str, Any] = {
        "name": train.network,
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": n_classes,
    }
    if train.network == "unet":
        spec.update(
            channels=list(train.channels),
            strides=[2] * (levels - 1),
            num_res_units=train.num_res_units,
            norm=train.norm,
            dropout=train.dropout,
        )
    elif train.network == "dynunet":
        spec.update(
            kernel_size=[3] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(train.channels),
            norm_name=train.norm,
            dropout=train.dropout,
            deep_supervision=train.deep_supervision,
            deep_supr_num=max(1, min(2, levels - 2)) if train.deep_supervision else 1,
            res_block=train.num_res_units > 0,
        )
    elif train.network == "unet_paper":
        spec.update(
            channels=list(train.channels), norm=None if train.norm == "none" else train.norm, dropout=train.dropout
        )
    else:  # basicunet: five levels, the last channel count repeated for the top decoder
        if levels != 5:
            raise ConfigError(f"train.channels: basicunet takes 5 channel counts, got {levels}")
        spec.update(features=[*train.channels, train.channels[0]], norm=train.norm, dropout=train.dropout)
    return spec


NETWORKS = {"unet": UNet, "dynunet": DynUNet, "basicunet": BasicUNet, "unet_paper": OriginalUNet}


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    if spec["name"] not in NETWORKS:
        raise ModelError(f"unknown network '{spec['name']}'; known: {', '.join(NETWORKS)}")
    return NETWORKS[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})


def save_model(path: Path, network: torch.nn.Module, description: dict[str, Any]) -> None:
    content = {"format": MODEL_FORMAT, **description, "state_dict": network.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model file, a MONAI bundle folder written by ``medseg export``, or an MLflow URI of a registered or logged
    model (``models:/medseg-hippocampus@champion``, ``runs:/<id>/model``)."""
    if str(path).startswith(("models:/", "runs:/")):
        from pipeline.tracking.registry import download_model_file

        path = download_model_file(str(path))
    path = Path(path)
    content = _read_bundle(path, device) if path.is_dir() else _read_model_file(path, device)
    network = build_network(content["network"])
    network.load_state_dict(content.pop("state_dict"))
    return network.to(device).eval(), content


def _torch_load(path: Path, device: torch.device | str) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ModelError(f"{path}: not a readable model file ({err.__class__.__name__}: {err})") from None


def _read_model_file(path: Path, device: torch.device | str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (train one with `dvc repro`, or pass --model)")
    content = _torch_load(path, device)
    if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a medseg model (expected format '{MODEL_FORMAT}')")
    return content


def _read_bundle(folder: Path, device: torch.device | str) -> dict[str, Any]:
    metadata, weights = folder / BUNDLE_METADATA, folder / BUNDLE_WEIGHTS
    if not (metadata.is_file() and weights.is_file()):
        raise ModelError(
            f"{folder}: a folder, but not a model bundle (it needs {BUNDLE_METADATA} and {BUNDLE_WEIGHTS})"
        )
    try:
        description = json.loads(metadata.read_text())["medseg"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{metadata}: no medseg model description in it ({err.__class__.__name__}: {err})") from None
    if not isinstance(description, dict) or description.get("format") != MODEL_FORMAT:
        raise ModelError(f"{metadata}: its 'medseg' entry is not a medseg model (expected format '{MODEL_FORMAT}')")
    return {**description, "state_dict": _torch_load(weights, device)}

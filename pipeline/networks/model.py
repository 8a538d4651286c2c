"""The network and the self-describing model file.

One file holds the weights and the model description (``description.ModelDescription``: network, labels,
preprocessing, patch size, ...) in plain types, so it loads with ``weights_only=True`` on another machine with
no ``params.yaml``.
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
from pipeline.networks.description import ModelDescription, NetworkSpec
from pipeline.networks.plan import channels, for_patch, uniform_kernels
from pipeline.networks.unet_paper import OriginalUNet

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
    configuration: dict[str, Any] | None = None,
) -> ModelDescription:
    """All that inference needs besides the weights: ``labels`` names class indices 0..K-1, ``label_values``
    are the values they had in the data (written back by ``segment``), ``plan`` the preprocessing, and
    ``slice_axis`` the volume axis a 2D network runs along (None when the network has the data's dimensions).
    ``configuration`` is the planned network (``network_plan``); without it, one is planned for the patch."""
    if configuration is None:
        configuration = for_patch(params.train, list(patch_size), plan.get("spacing", [1.0] * len(patch_size)))
    return ModelDescription(
        network=network_spec(params, len(labels), len(patch_size), configuration),
        slice_axis=slice_axis,
        labels=labels,
        label_values=label_values or list(range(len(labels))),
        modality=modality,
        preprocess=plan,
        patch_size=list(patch_size),
        configuration=configuration,
        # TTA is chosen when segmenting
        inference={"overlap": params.inference.overlap, "sw_batch_size": params.inference.sw_batch_size},
    )


def network_spec(
    params: Params, n_classes: int, spatial_dims: int = 3, configuration: dict[str, Any] | None = None
) -> NetworkSpec:
    """The constructor arguments of the network; its depth, strides and kernels from ``configuration``
    (the plan), else from ``train.channels`` with isotropic strides of 2."""
    train = params.train
    if configuration is None:
        levels = len(train.channels or channels(4))
        configuration = {
            "network": "unet" if train.network == "auto" else train.network,
            "channels": list(train.channels or channels(4)),
            "strides": [[1] * spatial_dims] + [[2] * spatial_dims] * (levels - 1),
            "kernels": [[3] * spatial_dims] * levels,
        }
    name, features = configuration["network"], list(configuration["channels"])
    strides, kernels = configuration["strides"], configuration["kernels"]
    spec: dict[str, Any] = {"name": name, "spatial_dims": spatial_dims, "in_channels": 1, "out_channels": n_classes}
    if name == "unet":
        spec.update(
            channels=features,
            strides=[list(s) for s in strides[1:]],
            kernel_size=list(kernels[0]) if uniform_kernels(kernels) else 3,
            num_res_units=train.num_res_units,
            norm=train.norm,
            dropout=train.dropout,
        )
    elif name == "dynunet":
        spec.update(
            kernel_size=[list(k) for k in kernels],
            strides=[list(s) for s in strides],
            upsample_kernel_size=[list(s) for s in strides[1:]],
            filters=features,
            norm_name=train.norm,
            dropout=train.dropout,
            deep_supervision=train.deep_supervision,
            deep_supr_num=max(1, min(2, len(features) - 2)) if train.deep_supervision else 1,
            res_block=train.num_res_units > 0,
        )
    elif name == "unet_paper":
        spec.update(channels=features, norm=None if train.norm == "none" else train.norm, dropout=train.dropout)
    else:  # basicunet: five levels, the last channel count repeated for the top decoder
        if len(features) != 5:
            raise ConfigError(f"train.channels: basicunet takes 5 channel counts, got {len(features)}")
        spec.update(features=[*features, features[0]], norm=train.norm, dropout=train.dropout)
    return NetworkSpec(**spec)


NETWORKS = {"unet": UNet, "dynunet": DynUNet, "basicunet": BasicUNet, "unet_paper": OriginalUNet}


def build_network(spec: NetworkSpec) -> torch.nn.Module:
    if spec.name not in NETWORKS:
        raise ModelError(f"unknown network '{spec.name}'; known: {', '.join(NETWORKS)}")
    return NETWORKS[spec.name](**spec.arguments())


def check_finite(state_dict: dict[str, torch.Tensor], where: Path | str) -> None:
    """A model with a NaN or infinite weight predicts nothing useful: it is never written, loaded or registered."""
    broken = [name for name, tensor in state_dict.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise ModelError(
            f"{where}: {len(broken)} of {len(state_dict)} weight tensors hold NaN or infinite values "
            f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}); the training diverged, train it again"
        )


def save_model(path: Path, network: torch.nn.Module, description: ModelDescription) -> None:
    check_finite(network.state_dict(), path)
    content = {**description.to_saved(), "state_dict": network.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelDescription]:
    """A model file or a MONAI bundle folder written by ``medseg export`` (an MLflow URI is downloaded first by
    ``tracking.models.local_model_file``: nothing below tracking reads MLflow)."""
    path = Path(path)
    description, weights = _read_bundle(path, device) if path.is_dir() else _read_model_file(path, device)
    network = build_network(description.network)
    check_finite(weights, path)
    network.load_state_dict(weights)
    return network.to(device).eval(), description


def _torch_load(path: Path, device: torch.device | str) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise ModelError(f"{path}: not a readable model file ({err.__class__.__name__}: {err})") from None


def _read_model_file(path: Path, device: torch.device | str) -> tuple[ModelDescription, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (train one with `dvc repro`, or pass --model)")
    content = _torch_load(path, device)
    description = ModelDescription.from_saved(content, path)
    return description, content["state_dict"]


def _read_bundle(folder: Path, device: torch.device | str) -> tuple[ModelDescription, dict[str, torch.Tensor]]:
    metadata, weights = folder / BUNDLE_METADATA, folder / BUNDLE_WEIGHTS
    if not (metadata.is_file() and weights.is_file()):
        raise ModelError(
            f"{folder}: a folder, but not a model bundle (it needs {BUNDLE_METADATA} and {BUNDLE_WEIGHTS})"
        )
    try:
        saved = json.loads(metadata.read_text())["medseg"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{metadata}: no medseg model description in it ({err.__class__.__name__}: {err})") from None
    return ModelDescription.from_saved(saved, f"{metadata} (its 'medseg' entry)"), _torch_load(weights, device)

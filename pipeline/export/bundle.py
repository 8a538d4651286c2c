"""A MONAI bundle of a medseg model: MONAI's own components, configured as ``medseg segment`` runs them.

The inference config prepares the volume as ``pipeline.data.transforms.prepare`` does, tiles it with
the model's sliding window, and maps softmax probabilities back onto the input grid before
taking the most likely class, so that the bundle's labels are the labels of ``medseg segment``
(tests/test_export.py runs both). The metadata keeps medseg's own description under ``medseg``,
so that ``medseg segment --model BUNDLE`` reads the folder as a model.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from pipeline.errors import ModelError
from pipeline.files import atomic_path, write_json, write_text
from pipeline.networks.model import BUNDLE_METADATA, BUNDLE_WEIGHTS

BUNDLE_VERSION = "0.1.0"
INFERENCE_CONFIG = Path("configs/inference.json")
BUNDLE_README = Path("docs/README.md")
# the modality as DICOM names it, which MONAI's metadata uses
DICOM_MODALITY = {"MRI": "MR", "MR": "MR", "CT": "CT"}


def write_bundle(network: torch.nn.Module, description: dict[str, Any], out: Path) -> list[Path]:
    _check_expressible(network, description)
    written = [out / BUNDLE_METADATA, out / INFERENCE_CONFIG, out / BUNDLE_WEIGHTS, out / BUNDLE_README]
    write_json(written[0], metadata(description))
    write_json(written[1], inference_config(network, description))
    with atomic_path(written[2]) as tmp:  # a plain state dict, as MONAI's CheckpointLoader and bundles expect
        torch.save(network.state_dict(), tmp)
    write_text(written[3], readme(description))
    return written


def _check_expressible(network: torch.nn.Module, description: dict[str, Any]) -> None:
    name = description["network"]["name"]
    if not type(network).__module__.startswith("monai."):
        raise ModelError(
            f"network '{name}' is not a MONAI network, so a MONAI bundle cannot define it (nor its "
            "overlap-tile inference); export it with --format torchscript or --format onnx"
        )
    if description["network"]["spatial_dims"] == 2 and description.get("slice_axis") is None:
        raise ModelError(
            "a bundle runs on volumes (NIfTI); this model segments 2D images: "
            "export it with --format torchscript or --format onnx"
        )


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _summary(description: dict[str, Any]) -> str:
    classes = ", ".join(name for index, name in description["labels"].items() if index != "0")
    provenance = description.get("provenance") or {}
    trained = (
        f"trained for {provenance['epochs']} epochs (git commit {provenance.get('git_commit') or 'unknown'}, "
        f"MLflow run {provenance.get('mlflow_run_id')})"
        if provenance
        else "untrained (no provenance recorded)"
    )
    return f"{description['network']['name']} segmenting {classes} in {description['modality']} volumes; {trained}"


def metadata(description: dict[str, Any]) -> dict[str, Any]:
    """MONAI's bundle metadata (meta_schema conventions), with the medseg description under ``medseg``."""
    provenance = description.get("provenance") or {}
    data = (provenance.get("params") or {}).get("data") or {}
    channels = {index: name for index, name in description["labels"].items()}
    patch = list(description["patch_size"])
    modality = DICOM_MODALITY.get(description["modality"].upper(), description["modality"])
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by medseg " + (_package_version("medseg") or "")},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            name: _package_version(name) for name in ("nibabel", "pytorch-ignite") if _package_version(name)
        },
        "name": f"medseg {description['network']['name']} ({', '.join(channels.values())})",
        "task": f"{modality} segmentation of {', '.join(list(channels.values())[1:])}",
        "description": _summary(description),
        "authors": "medseg (https://monai.io pipeline); see provenance under 'medseg'",
        "copyright": "the copyright of the training data and of whoever trained the model",
        "data_source": str(data.get("source", "unknown")),
        "data_type": "nibabel",
        "image_classes": f"single channel {modality} intensity",
        "label_classes": ", ".join(f"{description['label_values'][int(i)]}: {n}" for i, n in channels.items()),
        "pred_classes": ", ".join(f"{description['label_values'][int(i)]}: {n}" for i, n in channels.items()),
        "eval_metrics": provenance.get("final_val_dice", {}),
        "intended_use": "research; not validated for clinical use",
        "references": ["https://monai.io"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": modality,
                    "num_channels": 1,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(channels),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channels,
                }
            },
        },
        "medseg": description,
    }


def _preprocessing(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """``pipeline.data.transforms.load`` and ``prepare`` as config: the same MONAI transforms, the same arguments."""
    steps: list[dict[str, Any]] = [
        {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "NibabelReader",
            "image_only": True,
            "dtype": "$numpy.float32",
        },
        {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
        {
            "_target_": "Orientationd",
            "keys": "image",
            "axcodes": plan["orientation"][: len(plan["spacing"])],
            "labels": None,
        },
        {"_target_": "Spacingd", "keys": "image", "pixdim": plan["spacing"], "mode": "bilinear"},
    ]
    if plan["crop_foreground"]:
        steps.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": "$lambda x: x != 0",
                "allow_smaller": True,
            }
        )
    spec = plan["intensity"]
    if spec["scheme"] == "zscore":
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True})
    else:
        low, high, mean, std = spec["low"], spec["high"], spec["mean"], spec["std"]
        steps.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": low,
                "a_max": high,
                "b_min": (low - mean) / std,
                "b_max": (high - mean) / std,
                "clip": True,
            }
        )
    return steps


def _inferer(description: dict[str, Any]) -> dict[str, Any]:
    options = description["inference"]
    inferer = {
        "roi_size": description["patch_size"],
        "sw_batch_size": options["sw_batch_size"],
        "overlap": options["overlap"],
        "mode": "gaussian",
    }
    if description.get("slice_axis") is not None:  # a 2D network over a volume, slice by slice
        return {"_target_": "SliceInferer", "spatial_dim": description["slice_axis"], "progress": False, **inferer}
    return {"_target_": "SlidingWindowInferer", **inferer}


def _largest_component(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The post-processing training chose on its validation cases, as ``pipeline.inference.postprocess`` runs it."""
    classes = (description.get("postprocess") or {}).get("largest_component_classes") or []
    if not classes:
        return []
    return [
        {
            "_target_": "KeepLargestConnectedComponentd",
            "keys": "pred",
            "applied_labels": list(classes),
            "is_onehot": False,
            "independent": True,
        }
    ]


def _network_definition(network: torch.nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    arguments = {k: v for k, v in description["network"].items() if k != "name"}
    return {"_target_": f"{type(network).__module__}.{type(network).__qualname__}", **arguments}


def inference_config(network: torch.nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    n_classes = len(description["labels"])
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/input'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "output_dir": "$@bundle_root + '/eval'",
        "network_def": _network_definition(network, description),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(description["preprocess"])},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": _inferer(description),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                # probabilities, not labels, go back to the input grid (interpolated), then the most likely class
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                *_largest_component(description),
                {
                    "_target_": "MapLabelValued",
                    "keys": "pred",
                    "orig_labels": list(range(n_classes)),
                    "target_labels": list(description["label_values"]),
                    "dtype": "$numpy.uint8",
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "",
                    "output_ext": ".nii.gz",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": f"$@bundle_root + '/{BUNDLE_WEIGHTS.as_posix()}'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def readme(description: dict[str, Any]) -> str:
    plan = description["preprocess"]
    labels = "\n".join(
        f"| {description['label_values'][int(index)]} | {name} |" for index, name in description["labels"].items()
    )
    provenance = description.get("provenance") or {}
    return f"""# {description["network"]["name"]} model exported by medseg

{_summary(description)}.

## Run it

From this folder (needs `monai`, `nibabel`, `pytorch-ignite` and `fire`):

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/scans --output_dir labels
```

Every `*.nii` / `*.nii.gz` under `--dataset_dir` gives `labels/<same name>`, a uint8 label map on the
input's own grid. One file: `--datalist "['/path/to/scan.nii.gz']"`. From elsewhere, add
`--bundle_root /path/to/this/folder`. `medseg segment scan.nii.gz -o labels --model /path/to/this/folder`
gives the same labels.

## Labels

| value | class |
|---|---|
{labels}

## What runs

1. Reorient to {plan["orientation"]}, resample to {plan["spacing"]} mm (linear), {"crop to the non-zero region, " if plan["crop_foreground"] else ""}normalise intensity ({plan["intensity"]["scheme"]}).
2. {"2D patches on each slice along axis " + str(description["slice_axis"]) + ", " if description.get("slice_axis") is not None else ""}sliding window of {description["patch_size"]} voxels, overlap {description["inference"]["overlap"]}, Gaussian weighting.
3. Softmax; the probabilities are mapped back onto the input grid (the inverse of step 1), then the most likely class is taken and written with the values above.

`models/model.pt` is the network's state dict; `configs/metadata.json` describes inputs and outputs, and
holds medseg's full description of the model under `medseg` (preprocessing plan, patch size, training
parameters and provenance).

## Provenance

{f"MLflow run `{provenance.get('mlflow_run_id')}`, git commit `{provenance.get('git_commit')}`, {provenance.get('epochs')} epochs, weights kept: {provenance.get('kept')}; validation Dice {provenance.get('final_val_dice')}." if provenance else "None recorded: this model was not written by `medseg train`."}

Research use only; not validated for clinical use.
"""

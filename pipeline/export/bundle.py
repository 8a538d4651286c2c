"""A MONAI bundle of a medseg model: the bundle layout and metadata MONAI's tools read, whose inference config
runs medseg's own predictor (``pipeline.inference.segment``: preparation, sliding window, test-time augmentation,
post-processing and the inverse onto the input grid), so that the bundle's labels are exactly those of
``medseg segment`` (tests/export/test_export.py runs both). Restating the predictor as MONAI transforms in JSON made a
second inference path, which disagreed on near-ties. ``network_def`` still builds the network for MONAI's tools
(MONAI Label, fine-tuning); the metadata keeps medseg's description under ``medseg``, so that
``medseg segment --model BUNDLE`` reads the folder as a model.
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
from pipeline.networks.description import ModelDescription
from pipeline.networks.model import BUNDLE_METADATA, BUNDLE_WEIGHTS

BUNDLE_VERSION = "0.1.0"
INFERENCE_CONFIG = Path("configs/inference.json")
BUNDLE_README = Path("docs/README.md")
# the modality as DICOM names it, which MONAI's metadata uses
DICOM_MODALITY = {"MRI": "MR", "MR": "MR", "CT": "CT"}


def write_bundle(network: torch.nn.Module, description: ModelDescription, out: Path) -> list[Path]:
    _check_expressible(network, description)
    written = [out / BUNDLE_METADATA, out / INFERENCE_CONFIG, out / BUNDLE_WEIGHTS, out / BUNDLE_README]
    write_json(written[0], metadata(description))
    write_json(written[1], inference_config(network, description))
    with atomic_path(written[2]) as tmp:  # a plain state dict, as MONAI's CheckpointLoader and bundles expect
        torch.save(network.state_dict(), tmp)
    write_text(written[3], readme(description))
    return written


def _check_expressible(network: torch.nn.Module, description: ModelDescription) -> None:
    name = description.network.name
    if not type(network).__module__.startswith("monai."):
        raise ModelError(
            f"network '{name}' is not a MONAI network, so a MONAI bundle cannot define it (nor its "
            "overlap-tile inference); export it with --format torchscript or --format onnx"
        )
    if description.network.spatial_dims == 2 and description.slice_axis is None:
        raise ModelError(
            "a bundle runs on volumes (NIfTI); this model segments 2D images: "
            "export it with --format torchscript or --format onnx"
        )


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _summary(description: ModelDescription) -> str:
    classes = ", ".join(name for index, name in description.labels.items() if index != "0")
    provenance = description.provenance or {}
    trained = (
        f"trained for {provenance['epochs']} epochs (git commit {provenance.get('git_commit') or 'unknown'}, "
        f"MLflow run {provenance.get('mlflow_run_id')})"
        if provenance
        else "untrained (no provenance recorded)"
    )
    return f"{description.network.name} segmenting {classes} in {description.modality} volumes; {trained}"


def metadata(description: ModelDescription) -> dict[str, Any]:
    """MONAI's bundle metadata (meta_schema conventions), with the medseg description under ``medseg``."""
    provenance = description.provenance or {}
    data = (provenance.get("params") or {}).get("data") or {}
    channels = {index: name for index, name in description.labels.items()}
    patch = list(description.patch_size)
    modality = DICOM_MODALITY.get(description.modality.upper(), description.modality)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by medseg " + (_package_version("medseg") or "")},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            name: _package_version(name) for name in ("medseg", "nibabel") if _package_version(name)
        },
        "name": f"medseg {description.network.name} ({', '.join(channels.values())})",
        "task": f"{modality} segmentation of {', '.join(list(channels.values())[1:])}",
        "description": _summary(description),
        "authors": "medseg (https://monai.io pipeline); see provenance under 'medseg'",
        "copyright": "the copyright of the training data and of whoever trained the model",
        "data_source": str(data.get("source", "unknown")),
        "data_type": "nibabel",
        "image_classes": f"single channel {modality} intensity",
        "label_classes": ", ".join(f"{description.label_values[int(i)]}: {n}" for i, n in channels.items()),
        "pred_classes": ", ".join(f"{description.label_values[int(i)]}: {n}" for i, n in channels.items()),
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
        "medseg": description.to_saved(),
    }


def _network_definition(network: torch.nn.Module, description: ModelDescription) -> dict[str, Any]:
    arguments = description.network.arguments()
    return {"_target_": f"{type(network).__module__}.{type(network).__qualname__}", **arguments}


def inference_config(network: torch.nn.Module, description: ModelDescription) -> dict[str, Any]:
    """Overridable from the command line as MONAI bundles are: ``--dataset_dir``, ``--datalist`` (files or
    folders), ``--output_dir``, ``--tta``."""
    return {
        "imports": ["$from pipeline.export.bundle import segment_with_bundle"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/input'",
        "datalist": "$[@dataset_dir]",
        "output_dir": "$@bundle_root + '/eval'",
        "tta": False,  # as `medseg segment` without --tta
        "network_def": _network_definition(network, description),
        "run": ["$segment_with_bundle(@bundle_root, @datalist, @output_dir, @tta)"],
    }


def segment_with_bundle(bundle_root: str, inputs: list[str], output_dir: str, tta: bool = False) -> None:
    """What the bundle's ``run`` calls: ``medseg segment`` with the bundle folder as the model."""
    from pipeline.inference.segment import segment

    failures = segment([Path(path) for path in inputs], Path(output_dir), Path(bundle_root), tta=bool(tta))
    if failures:
        raise ModelError("; ".join(f"{path}: {reason}" for path, reason in failures))


def readme(description: ModelDescription) -> str:
    plan = description.preprocess
    labels = "\n".join(
        f"| {description.label_values[int(index)]} | {name} |" for index, name in description.labels.items()
    )
    provenance = description.provenance or {}
    return f"""# {description.network.name} model exported by medseg

{_summary(description)}.

## Run it

From this folder, where medseg is installed (`pip install medseg`; the bundle runs medseg's own predictor, so
that its labels are exactly those of `medseg segment`):

```bash
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/scans --output_dir labels
```

Every volume under `--dataset_dir` (NIfTI, NRRD, MetaImage, DICOM series folders) gives `labels/<same name>`,
a label map on the input's own grid. Files or folders: `--datalist "['/path/to/scan.nii.gz']"`; mirroring
test-time augmentation: `--tta true`. From elsewhere, add `--bundle_root /path/to/this/folder`.
`medseg segment scan.nii.gz -o labels --model /path/to/this/folder` is the same run.

## Labels

| value | class |
|---|---|
{labels}

## What runs

1. Reorient to {plan["orientation"]}, resample to {plan["spacing"]} mm (linear), {"crop to the non-zero region, " if plan["crop_foreground"] else ""}normalise intensity ({plan["intensity"]["scheme"]}).
2. {"2D patches on each slice along axis " + str(description.slice_axis) + ", " if description.slice_axis is not None else ""}sliding window of {description.patch_size} voxels, overlap {description.inference.overlap}, Gaussian weighting.
3. Softmax (averaged over every mirroring with `--tta true`); the probabilities are mapped back onto the input grid (the inverse of step 1), then the most likely class is taken{", the largest connected component kept for classes " + str(description.largest_component_classes) if description.largest_component_classes else ""} and written with the values above.

`models/model.pt` is the network's state dict; `configs/metadata.json` describes inputs and outputs, and
holds medseg's full description of the model under `medseg` (preprocessing plan, patch size, training
parameters and provenance).

## Provenance

{f"MLflow run `{provenance.get('mlflow_run_id')}`, git commit `{provenance.get('git_commit')}`, {provenance.get('epochs')} epochs, weights kept: {provenance.get('kept')}; validation Dice {provenance.get('final_val_dice')}." if provenance else "None recorded: this model was not written by `medseg train`."}

Research use only; not validated for clinical use.
"""

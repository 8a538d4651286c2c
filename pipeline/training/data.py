"""What training reads: the configuration of the plan that params pick, the cached cases, the patch sampler and
the validation loader (under torchrun, this process's share of the validation cases)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from monai.data import CacheDataset, DataLoader, partition_dataset

from pipeline.config import Params, TrainConfig
from pipeline.data import transforms
from pipeline.errors import ConfigError
from pipeline.networks.plan import resolve
from pipeline.networks.unet_paper import check_tile, input_for_output
from pipeline.training.batches import EpochPlan, PatchSampler, cache_case
from pipeline.training.distributed import World


def case_files(
    prep_dir: Path, manifest: pd.DataFrame, case_ids: list[str], weights: bool = False
) -> list[dict[str, str]]:
    columns = ("image", "label", "weight") if weights else ("image", "label")
    return [{**{key: str(prep_dir / manifest.at[c, key]) for key in columns}, "case_id": c} for c in case_ids]


def _patch_size(config: TrainConfig, planned: list[int], depth: int) -> list[int]:
    """The training patch; for unet_paper the input tile whose output covers the planned patch."""
    if config.network != "unet_paper":
        return planned
    if config.patch_size:
        check_tile(config.patch_size, depth)
        return config.patch_size
    return [input_for_output(size, depth) for size in planned]


@dataclass
class TrainingData:
    meta: dict[str, Any]
    manifest: pd.DataFrame
    configuration: dict[str, Any]  # the plan's network, patch and batch, with what params set instead
    patch_size: list[int]
    slices: bool
    case_ids: list[str]
    sampler: PatchSampler
    plan: EpochPlan
    val_loader: DataLoader


def _configuration(prep_dir: Path, meta: dict[str, Any], config: TrainConfig) -> tuple[dict[str, Any], bool]:
    """The configuration of ``plan.json`` that ``train.mode`` picks, with params' choices; and whether a 2D
    network is trained on slices of 3D volumes."""
    plan = json.loads((prep_dir / "plan.json").read_text())
    if "configurations" not in plan:
        raise ConfigError(
            f"{prep_dir / 'plan.json'}: has no network plan (an older medseg wrote it); "
            "run the preprocess stage again (dvc repro -f -s preprocess)"
        )
    if meta["dimensions"] == 2 and config.mode == "3d":
        raise ConfigError("train.mode: 3d, but the data are 2D")
    name = plan["configuration"] if config.mode == "auto" else config.mode
    if meta["dimensions"] == 2:
        name = "2d"
    configuration = resolve(plan["configurations"][name], config, plan["spacing"])
    return {**configuration, "name": name}, name == "2d" and meta["dimensions"] == 3


def training_data(prep_dir: Path, split_json: Path, params: Params, world: World) -> TrainingData:
    """The cached cases, the patch sampler and the validation loader; under torchrun, this process's share."""
    config = params.train
    meta = json.loads((prep_dir / "dataset.json").read_text())
    manifest = pd.read_csv(prep_dir / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    split = json.loads(split_json.read_text())
    weighted = config.loss == "weight_map_ce"
    if weighted and not ("weight" in manifest.columns and manifest["weight"].notna().all()):
        raise ConfigError(
            f"{prep_dir}: has no weight maps; set preprocess.weight_map and run the preprocess stage again"
        )
    configuration, slices = _configuration(prep_dir, meta, config)
    patch_size = _patch_size(config, configuration["patch_size"], len(configuration["channels"]) - 1)
    if len(patch_size) != (2 if slices else meta["dimensions"]):
        data_kind = "2D slices" if slices else f"{meta['dimensions']}D data"
        raise ConfigError(f"train.patch_size: {patch_size} does not fit {data_kind}")
    keys = ("image", "label", "weight") if weighted else ("image", "label")
    case_ids = split["train"][: config.max_train_cases]
    loaded = CacheDataset(case_files(prep_dir, manifest, case_ids, weighted), transforms.load(keys), progress=False)
    cases = [cache_case({key: loaded[i][key].as_tensor() for key in keys}) for i in range(len(loaded))]
    sampler = PatchSampler(
        cases,
        patch_size,
        config.augmentation,
        config.foreground_oversampling,
        slices,
        in_plane=configuration["in_plane_augmentation"],
    )
    plan = EpochPlan(len(cases), configuration["batch_size"], params.seed, world.rank, world.size)
    # each process validates its share of the cases; MONAI's metric gathers the scores from all
    val_files = case_files(prep_dir, manifest, split["validation"])
    val_share = partition_dataset(val_files, num_partitions=world.size, even_divisible=False)[world.rank]
    val_loader = DataLoader(CacheDataset(val_share, transforms.validation(), progress=False), batch_size=1)
    return TrainingData(meta, manifest, configuration, patch_size, slices, case_ids, sampler, plan, val_loader)

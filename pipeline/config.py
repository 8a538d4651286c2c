"""The one typed configuration of a run, read from ``params.yaml``.

Defaults live here and nowhere else. Presets in ``configs/`` hold only what they
change; ``medseg configure PRESET`` writes the full ``params.yaml`` that DVC tracks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = Field(
        "msd:Task04_Hippocampus",
        description="'msd:TaskNN_Name' downloads that Decathlon task; otherwise a local folder (MSD or images/labels layout).",
    )
    download: str | None = Field(
        None,
        pattern="^msd:",
        description="'msd:TaskNN_Name' to download when the folder in `source` is absent; null: never download.",
    )
    labels: dict[int, str] | None = Field(
        None, description="Label value -> name; required for the images/labels layout."
    )
    modality: str | None = Field(None, description="'CT', 'MRI', ...; required for the images/labels layout.")
    dimensions: Literal[2, 3] = Field(
        3, description="Of the images/labels layout; MSD datasets say it in dataset.json."
    )
    images_folder: str = Field("images", description="Of the images/labels layout, relative to the dataset folder.")
    labels_folder: str = Field("labels", description="Of the images/labels layout, relative to the dataset folder.")


class WeightMapConfig(_Section):
    w0: float = Field(10.0, ge=0, description="Weight of the border between two objects (the U-Net paper's w0).")
    sigma: float = Field(
        5.0, gt=0, description="Width of that border term, in mm (pixels for 2D data of unit spacing)."
    )


class PreprocessConfig(_Section):
    orientation: str = Field(
        "RAS", pattern="^[LR][PA][IS]$", description="Axis codes every volume is reoriented to before resampling."
    )
    spacing: list[float] | None = Field(None, description="Target voxel size in mm; null plans the dataset's median.")
    normalization: Literal["auto", "zscore", "ct", "window"] = Field(
        "auto",
        description="auto: 'ct' for CT, else 'zscore'. ct: clip to foreground percentiles, then z-score. window: clip to `window`.",
    )
    window: list[float] | None = Field(
        None, min_length=2, max_length=2, description="[low, high] intensities, for normalization: window."
    )
    crop_foreground: bool = Field(True, description="Crop each case to its non-zero region.")
    on_rejected: Literal["skip", "fail"] = Field("skip", description="What a rejected case does to the stage.")
    workers: int | None = Field(None, ge=1, description="Processes; null uses every core.")
    weight_map: WeightMapConfig | None = Field(
        None, description="Write the U-Net paper's weight map of each label (for loss weight_map_ce)."
    )

    @model_validator(mode="after")
    def _window_when_asked(self) -> PreprocessConfig:
        if self.normalization == "window" and self.window is None:
            raise ValueError("normalization 'window' needs window: [low, high]")
        return self


class SplitConfig(_Section):
    n_folds: int = Field(5, ge=2, description="Folds of the cross-validation; one of them is held out for validation.")
    fold: int = Field(0, ge=0, description="Which fold is held out for validation.")
    group: str | None = Field(
        None,
        description="A regular expression searched (re.search) in each case id whose first capture group, else its "
        "whole match, names the case's group (e.g. the patient); all cases of a group land in the same fold.",
    )
    group_table: str | None = Field(
        None,
        description="'PATH.csv:COLUMN': a table with a case_id column whose COLUMN names each case's group; all "
        "cases of a group land in the same fold.",
    )

    @model_validator(mode="after")
    def _one_grouping(self) -> SplitConfig:
        import re

        if self.group is not None and self.group_table is not None:
            raise ValueError("set split.group or split.group_table, not both")
        if self.group is not None:
            try:
                re.compile(self.group)
            except re.error as err:
                raise ValueError(f"split.group '{self.group}' is not a regular expression: {err}") from None
        if self.group_table is not None:
            path, sep, column = self.group_table.rpartition(":")
            if not sep or not path or not column:
                raise ValueError(f"split.group_table '{self.group_table}': expected PATH.csv:COLUMN")
        return self


class AugmentationConfig(_Section):
    elastic_prob: float = Field(0.2, ge=0, le=1, description="Elastic deformation (3D: MONAI Rand3DElastic).")
    affine_prob: float = Field(0.3, ge=0, le=1, description="Random rotation and scaling.")
    flip_prob: float = Field(0.5, ge=0, le=1, description="Mirroring, per axis.")
    noise_prob: float = Field(0.15, ge=0, le=1, description="Additive Gaussian noise.")
    intensity_prob: float = Field(0.3, ge=0, le=1, description="Random scale and shift of intensities.")
    gamma_prob: float = Field(0.15, ge=0, le=1, description="Random gamma (contrast) adjustment.")
    smooth_prob: float = Field(0.0, ge=0, le=1, description="Gaussian smoothing (sigma 0.5-1 voxel).")
    bias_field_prob: float = Field(0.0, ge=0, le=1, description="A smooth multiplicative bias field, as MRI has.")


class LossConfig(_Section):
    dice_weight: float = Field(1.0, ge=0, description="Weight of the Dice term in dice_ce and dice_focal.")
    ce_weight: float = Field(
        1.0, ge=0, description="Weight of the cross-entropy (or focal) term in dice_ce and dice_focal."
    )
    ce_weight_end: float | None = Field(
        None,
        ge=0,
        description="If set, the CE (or focal) weight moves linearly from ce_weight to this by the last epoch.",
    )
    batch_dice: bool = Field(
        True,
        description="Dice (and Tversky) over the whole batch, not per patch, as nnU-Net's 3D default: a patch "
        "without some class then does not score 0 or 1 on it.",
    )
    focal_gamma: float = Field(2.0, ge=0, description="Focusing parameter of the focal loss (0: cross-entropy).")
    tversky_alpha: float = Field(0.3, ge=0, le=1, description="Weight of false positives.")
    tversky_beta: float = Field(0.7, ge=0, le=1, description="Weight of false negatives.")
    class_weights: list[float] | None = Field(
        None, description="Per class, background first: dice_ce, focal and weighted_ce."
    )


class TrainConfig(_Section):
    mode: Literal["auto", "2d", "3d"] = Field(
        "auto",
        description="auto: the plan's configuration (3D, or 2D for 3D data too thin for a 3D patch); 2d: slice-wise "
        "training on 3D data; 3d: a 3D network whatever the plan says.",
    )
    network: Literal["auto", "unet", "dynunet", "basicunet", "unet_paper"] = Field(
        "auto",
        description="auto: the plan's (MONAI UNet, or DynUNet where kernels differ between stages); MONAI UNet, "
        "DynUNet (nnU-Net-like), BasicUNet, or the U-Net paper's (unpadded, overlap-tile inference).",
    )
    channels: list[int] | None = Field(
        None,
        min_length=2,
        description="Features per level; null: planned (16 doubling per stage, one stage per downsampling); "
        "basicunet takes five.",
    )
    num_res_units: int = Field(2, ge=0, description="unet: residual units per level; dynunet: residual blocks if > 0.")
    norm: Literal["instance", "batch", "none"] = Field(
        "instance", description="none: unet_paper only, as in the paper."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability in the network's blocks.")
    deep_supervision: bool = Field(False, description="dynunet: a loss on lower-resolution heads too.")
    patch_size: list[int] | None = Field(
        None, description="null: planned from the dataset fingerprint (the median case within a voxel budget)."
    )
    loss: Literal[
        "dice_ce", "dice_focal", "focal", "tversky", "generalized_dice", "jaccard", "weighted_ce", "weight_map_ce"
    ] = Field(
        "dice_ce", description="weight_map_ce: CE weighted by the U-Net paper's map (needs preprocess.weight_map)."
    )
    loss_options: LossConfig = LossConfig()
    batch_size: int | None = Field(
        None, ge=1, description="null: planned, to fill a budget of voxels per step (small patches, large batches)."
    )
    epochs: int | None = Field(
        None, ge=1, description="null: as many as fit in budget_minutes, measured by a short probe of the step."
    )
    budget_minutes: float = Field(
        25.0,
        gt=0,
        description="The training time that sets the epochs (when epochs is null), validations included; the "
        "learning-rate schedule then runs to its end within it. The epochs are fitted again after a tenth, "
        "half and four fifths of them, from the pace the run keeps.",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="sgd: with Nesterov momentum.")
    learning_rate: float = Field(1e-3, ge=0, description="The initial (peak, after any warm-up) learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="Decoupled for adamw, L2 for adam and sgd.")
    momentum: float = Field(0.99, ge=0, lt=1, description="sgd only.")
    schedule: Literal["cosine", "poly", "step", "constant"] = Field(
        "cosine", description="The learning-rate schedule over the epochs, stepped once per epoch."
    )
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up before the schedule.")
    poly_power: float = Field(0.9, gt=0, description="poly: the exponent of (1 - epoch / epochs).")
    step_epochs: int = Field(30, ge=1, description="step: epochs between decays.")
    step_gamma: float = Field(0.1, gt=0, description="step: the factor of each decay.")
    val_every: int | None = Field(
        None,
        ge=1,
        description="Validate every N epochs (and after the last); null: as often as keeps validation near 5% of "
        "the time, measured by the probe.",
    )
    keep: Literal["last", "best"] = Field(
        "last", description="Which weights the model file gets: the last epoch's, or the best validated."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a better Dice."
    )
    max_minutes: float | None = Field(
        None, gt=0, description="Stop once training has taken this long (not reproducible across machines)."
    )
    amp: bool | Literal["auto"] = Field(
        "auto",
        description="Mixed precision: float16 with loss scaling on CUDA, bfloat16 on CPUs with native bfloat16 "
        "(AVX512-BF16, AMX); float32 elsewhere. auto: only where a short probe finds it finite and faster.",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the network (inductor, on CUDA and CPU). auto: only where a short probe finds it "
        "faster by more than its compilation costs over the run.",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A step whose loss or gradient is NaN or infinite: stop the run with an error naming it (the "
        "last good checkpoint is kept), or skip the step and count it (the run still stops if a whole epoch is "
        "skipped).",
    )
    max_train_cases: int | None = Field(None, description="Train on at most this many cases (smoke runs).")
    data_workers: int | None = Field(
        None,
        ge=0,
        description="Threads preparing training batches ahead of the step; 0: in the step's own thread; null: the "
        "probe's choice between 0 and the default (1 on a CPU, 4 per GPU), whichever makes the step faster.",
    )
    foreground_oversampling: float = Field(
        0.33,
        ge=0,
        le=1,
        description="Share of patches centred on a foreground voxel (nnU-Net's third); the others anywhere.",
    )
    augmentation: AugmentationConfig = AugmentationConfig()


class InferenceConfig(_Section):
    overlap: float = Field(0.5, ge=0, lt=1, description="Overlap of neighbouring sliding windows (Gaussian-blended).")
    sw_batch_size: int = Field(4, ge=1, description="Sliding windows run through the network at once.")
    tta: bool = Field(
        True, description="Evaluate with mirroring test-time augmentation (probabilities averaged over all flips)."
    )
    largest_component: bool = Field(
        False,
        description="Let training decide, per class on the validation cases, whether keeping only the largest "
        "connected component improves Dice; the model file records the classes and inference applies it.",
    )


class EvaluateConfig(_Section):
    nsd_tolerance_mm: float | list[float] = Field(
        1.0,
        description="Normalised surface Dice tolerance in mm: one for every class, or one per foreground class in label order.",
    )


class MlflowConfig(_Section):
    experiment: str = Field("medseg", description="The MLflow experiment runs are logged to.")
    registered_model: str | None = None  # the registry's name for the evaluated model; None: medseg-<dataset>


class Params(_Section):
    seed: int = Field(42, description="Seeds the split, the initial weights and every batch's augmentation.")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.train.loss == "weight_map_ce" and self.preprocess.weight_map is None:
            raise ValueError("train.loss weight_map_ce needs preprocess.weight_map (e.g. {w0: 10, sigma: 5})")
        if self.train.loss_options.ce_weight_end is not None and self.train.loss not in ("dice_ce", "dice_focal"):
            raise ValueError(
                f"train.loss_options.ce_weight_end schedules dice_ce and dice_focal; {self.train.loss} has no CE term"
            )
        if self.train.norm == "none" and self.train.network != "unet_paper":
            raise ValueError(f"train.norm 'none' is for unet_paper; {self.train.network} takes instance or batch")
        return self

"""The yardstick: a training loop as a user writes it from MONAI's tutorials, on the same prepared data.

    python benchmarks/plain_monai_loop.py --minutes 11 [--prep data/preprocessed] [--split data/split.json]
        [--history plain_history.csv]

UNet 16..256 with 2 residual units, Dice+CE, Adam, batches of 4 patches of 48x64x48, a
CacheDataset with flips, affine and intensity augmentation, everything in the main process,
validation with MONAI's sliding window every few epochs. It trains for the given minutes (or
epochs) and prints the mean validation Dice, so that medseg's default can be judged against
what a tutorial gives in the same time on the same machine. ``train_speed.py`` imports its
pieces to measure its throughput beside medseg's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from monai.utils import set_determinism

PATCH = (48, 64, 48)
KEYS = ("image", "label")


def network() -> UNet:
    return UNet(3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def loaders(prep: Path, split_json: Path) -> tuple[DataLoader, DataLoader]:
    manifest = pd.read_csv(prep / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    split = json.loads(split_json.read_text())

    def files(cases):
        return [{k: str(prep / manifest.at[c, k]) for k in KEYS} for c in cases]

    load = [T.LoadImaged(KEYS), T.EnsureChannelFirstd(KEYS, channel_dim="no_channel")]
    train_transforms = T.Compose(
        [
            *load,
            T.SpatialPadd(KEYS, spatial_size=PATCH),
            T.RandSpatialCropd(KEYS, roi_size=PATCH, random_size=False),
            T.RandFlipd(KEYS, prob=0.5, spatial_axis=0),
            T.RandFlipd(KEYS, prob=0.5, spatial_axis=1),
            T.RandFlipd(KEYS, prob=0.5, spatial_axis=2),
            T.RandAffined(
                KEYS, prob=0.3, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15,) * 3, mode=("bilinear", "nearest")
            ),
            T.RandScaleIntensityd("image", factors=0.25, prob=0.3),
            T.RandShiftIntensityd("image", offsets=0.1, prob=0.3),
        ]
    )
    train = CacheDataset(files(split["train"]), train_transforms, progress=False)
    validation = CacheDataset(files(split["validation"]), T.Compose(load), progress=False)
    return DataLoader(train, batch_size=4, shuffle=True, num_workers=0), DataLoader(validation, batch_size=1)


def validate(model: torch.nn.Module, loader: DataLoader) -> float:
    metric = DiceMetric(include_background=False, reduction="mean")
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits = sliding_window_inference(batch["image"], PATCH, 4, model, overlap=0.5, mode="gaussian")
            metric(one_hot(logits.argmax(1, keepdim=True), 3), one_hot(batch["label"].long(), 3))
    model.train()
    return metric.aggregate().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prep", type=Path, default=Path("data/preprocessed"))
    parser.add_argument("--split", type=Path, default=Path("data/split.json"))
    parser.add_argument("--minutes", type=float, default=11.0)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--history", type=Path, default=None, help="CSV of minutes and validation Dice")
    args = parser.parse_args()
    set_determinism(seed=0)
    train_loader, val_loader = loaders(args.prep, args.split)
    model, loss_function = network(), DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    started, epoch, history = time.monotonic(), 0, []
    while (time.monotonic() - started) / 60 < args.minutes:
        epoch += 1
        for batch in train_loader:
            optimizer.zero_grad()
            loss = loss_function(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
        if epoch % args.val_every == 0:
            history.append({"epoch": epoch, "minutes": (time.monotonic() - started) / 60})
            history[-1]["val_dice_mean"] = validate(model, val_loader)
            print(
                f"epoch {epoch}, {history[-1]['minutes']:.1f} min: validation Dice {history[-1]['val_dice_mean']:.4f}"
            )
    final = validate(model, val_loader)
    history.append({"epoch": epoch, "minutes": (time.monotonic() - started) / 60, "val_dice_mean": final})
    print(f"plain MONAI loop: {epoch} epochs in {history[-1]['minutes']:.1f} min, mean validation Dice {final:.4f}")
    if args.history:
        pd.DataFrame(history).to_csv(args.history, index=False)


if __name__ == "__main__":
    main()

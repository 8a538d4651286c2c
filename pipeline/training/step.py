"""The training step and epoch, in mixed precision where asked, guarded against non-finite values.

A NaN or infinite loss or gradient is caught at the step where it occurs, before the optimiser
applies it: the weights stay those of the last good step, so nothing non-finite reaches a
checkpoint or a model file. Gradients are checked after backward, where DDP has already
averaged them, so every process takes the same decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from pipeline.errors import TrainingError
from pipeline.networks.unet_paper import center_crop


class NonFiniteStep(TrainingError):
    """A step whose loss or gradients are NaN or infinite."""


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """Mixed precision where it pays: float16 on CUDA (with loss scaling), bfloat16 on CPUs with
    native bfloat16 matrix units (AVX512-BF16, AMX); None where the step stays in float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def training_step(
    network, batch: dict, loss_function, optimizer, scaler: torch.amp.GradScaler, precision: torch.dtype | None
) -> float:
    """One optimiser step; its loss. Raises ``NonFiniteStep`` (with the optimiser step not taken) when the
    loss or, without loss scaling (which skips such steps itself), a gradient is not finite."""
    device = next(network.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        output = network(batch["image"].to(device, non_blocking=True))
    # unet_paper predicts the centre of its input: its targets are cropped to match
    spatial = output.shape[-(batch["label"].dim() - 2) :]
    targets = [center_crop(batch[key].to(device), spatial) for key in ("label", "weight") if key in batch]
    loss = loss_function(output.float(), *targets)  # softmax, Dice sums and CE in float32
    scaler.scale(loss).backward()
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteStep(f"the loss is {value}")
    if not scaler.is_enabled() and not _gradients_finite(optimizer):
        raise NonFiniteStep(f"the loss is {value:.4g} but a gradient is NaN or infinite")
    scaler.step(optimizer)
    scaler.update()
    return value


def train_one_epoch(
    network,
    batches: Iterable[dict],
    loss_function,
    optimizer,
    scaler: torch.amp.GradScaler,
    precision: torch.dtype | None,
    skip_nonfinite: bool = False,
    name_batch: Callable[[int], str] = str,
) -> dict[str, float]:
    """One pass over the training data: the mean loss, the steps skipped for non-finite values (with
    ``skip_nonfinite``; otherwise the first stops the epoch with an error that ``name_batch`` helps
    name), and the fraction of the time spent waiting for data (which should stay near 0)."""
    network.train()
    losses, skipped, waiting, started = [], 0, 0.0, time.perf_counter()
    asked = started
    for index, batch in enumerate(batches):
        waiting += time.perf_counter() - asked
        try:
            losses.append(training_step(network, batch, loss_function, optimizer, scaler, precision))
        except NonFiniteStep as problem:
            if not skip_nonfinite:
                raise NonFiniteStep(f"batch {index} ({name_batch(index)}): {problem}") from None
            skipped += 1
        if hasattr(batches, "set_postfix") and losses:
            batches.set_postfix(loss=f"{losses[-1]:.4f}", skipped=skipped)
        asked = time.perf_counter()
    if not losses:
        raise NonFiniteStep(f"every one of the epoch's {skipped} steps had a NaN or infinite loss or gradient")
    return {
        "train_loss": sum(losses) / len(losses),
        "skipped_steps": skipped,
        "data_wait_fraction": waiting / (time.perf_counter() - started),
    }

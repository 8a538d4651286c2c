"""Training batches: patches drawn from cached cases, augmented, and prepared ahead of the step.

Every batch has a generator of its own, seeded from (seed, epoch, process rank, batch index):
a batch is the same whichever thread made it and whenever, and a resumed run needs no saved
random state to draw the same batches again. Background threads fill a short queue while the
training step runs (torch's kernels release the GIL), so the step rarely waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import AugmentationConfig
from pipeline.training.augment import elastic_field, fires, intensity, sample_patch, sampling_matrix

IMAGE, LABEL = "image", "label"


def generator_for(*numbers: int) -> torch.Generator:
    """A generator that depends on every number given and on nothing else."""
    seed = int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


@dataclass
class CachedCase:
    volumes: dict[str, torch.Tensor]  # channel-first, the label among them
    foreground: list[torch.Tensor]  # voxel coordinates (n x dims) of each foreground class present


def cache_case(volumes: dict[str, torch.Tensor]) -> CachedCase:
    label = volumes[LABEL][0]
    classes = [int(c) for c in torch.unique(label) if c != 0]
    return CachedCase(volumes, [torch.nonzero(label == c) for c in classes])


class PatchSampler:
    """Draws augmented training patches: a third of them (``foreground_fraction``) centred on a
    voxel of a random foreground class, as nnU-Net does, the others anywhere in the case. With
    ``slices``, 2D patches are cut from the axial slices (last axis) of 3D cases; with ``in_plane``,
    3D patches thin along the last axis are rotated about that axis only (nnU-Net's rule for
    anisotropic patches: a rotation out of the plane would fill a thin patch with padding)."""

    def __init__(
        self,
        cases: list[CachedCase],
        patch_size: list[int],
        aug: AugmentationConfig,
        foreground_fraction: float,
        slices: bool = False,
        in_plane: bool = False,
    ):
        self.cases, self.patch_size, self.aug = cases, list(patch_size), aug
        self.foreground_fraction, self.slices, self.in_plane = foreground_fraction, slices, in_plane

    def _start(self, case: CachedCase, generator: torch.Generator) -> torch.Tensor:
        """The corner of the unaugmented patch, in voxels of the case (of all its axes, with ``slices``)."""
        shape = torch.tensor(case.volumes[IMAGE].shape[1:])
        size = torch.tensor([*self.patch_size, 1] if self.slices else self.patch_size)
        if case.foreground and fires(self.foreground_fraction, generator):
            voxels = case.foreground[int(torch.randint(len(case.foreground), (), generator=generator))]
            return voxels[int(torch.randint(len(voxels), (), generator=generator))] - size // 2
        # anywhere the patch lies inside the case, or, where the case is smaller, contains it
        low, high = (
            torch.minimum(shape - size, torch.zeros_like(shape)),
            torch.maximum(shape - size, torch.zeros_like(shape)),
        )
        return low + (torch.rand(len(shape), generator=generator) * (high - low + 1)).long().clamp(max=high - low)

    def patch(self, case: CachedCase, generator: torch.Generator) -> dict[str, torch.Tensor]:
        start, volumes = self._start(case, generator), case.volumes
        if self.slices:
            index = int(start[-1].clamp(0, volumes[IMAGE].shape[-1] - 1))
            start, volumes = start[:-1], {key: volume[..., index] for key, volume in volumes.items()}
        dims = len(self.patch_size)
        matrix = sampling_matrix(dims, self.aug, generator, self.in_plane)
        field = elastic_field(self.patch_size, generator) if fires(self.aug.elastic_prob, generator) else None
        patch = sample_patch(volumes, start, self.patch_size, matrix, field, nearest={LABEL})
        patch[IMAGE] = intensity(patch[IMAGE], self.aug, generator)
        return patch

    def batch(self, case_indices: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
        patches = [self.patch(self.cases[i], generator) for i in case_indices]
        return {key: torch.stack([p[key] for p in patches]) for key in patches[0]}


@dataclass(frozen=True)
class EpochPlan:
    """Which cases each batch of an epoch takes, in this process's share of them."""

    n_cases: int
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(self.n_cases, generator=generator_for(self.seed, epoch)).tolist()
        per_process = self.n_cases // self.world_size  # every process takes as many steps (DDP needs it)
        share = order[: per_process * self.world_size][self.rank :: self.world_size]
        full = len(share) // self.batch_size * self.batch_size
        share = share[:full] if full else share  # a last, smaller batch is dropped, unless it is the only one
        return [share[i : i + self.batch_size] for i in range(0, len(share), self.batch_size)]


def epoch_batches(
    sampler: PatchSampler, plan: EpochPlan, epoch: int, threads: int, pin_memory: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """The epoch's batches in order; with ``threads`` > 0 they are prepared ahead, at most
    ``threads + 1`` at a time, while the caller trains on the earlier ones."""

    def make(index: int, cases: list[int]) -> dict[str, torch.Tensor]:
        batch = sampler.batch(cases, generator_for(plan.seed, epoch, plan.rank, index))
        return {key: value.pin_memory() for key, value in batch.items()} if pin_memory else batch

    work = list(enumerate(plan.batches(epoch)))
    if threads == 0:
        yield from (make(i, cases) for i, cases in work)
        return
    # one core's worth of kernels each, so that they take turns with the step rather than crowd it
    with ThreadPoolExecutor(
        threads, thread_name_prefix="batches", initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        pending: deque = deque()
        for index, cases in work:
            pending.append(pool.submit(make, index, cases))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

"""Training batches: foreground oversampling, each process's share, and batches that do not depend on threads."""

import torch

from pipeline.config import AugmentationConfig
from pipeline.training.batches import EpochPlan, PatchSampler, cache_case, epoch_batches
from tests.conftest import synthetic_pair


def _cases(n=6, shape=(30, 36, 20)):
    cases = []
    for seed in range(n):
        image, label = synthetic_pair(shape=shape, seed=seed)
        cases.append(cache_case({"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label)[None]}))
    return cases


def test_batches_are_the_same_with_or_without_threads_and_in_any_order():
    sampler = PatchSampler(_cases(), [16, 16, 16], AugmentationConfig(elastic_prob=0.5), foreground_fraction=0.33)
    plan = EpochPlan(n_cases=6, batch_size=2, seed=42)
    inline = list(epoch_batches(sampler, plan, epoch=3, threads=0))
    threaded = list(epoch_batches(sampler, plan, epoch=3, threads=2))
    assert len(inline) == 3
    for a, b in zip(inline, threaded, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    other_epoch = next(epoch_batches(sampler, plan, epoch=4, threads=0))
    assert not torch.equal(other_epoch["image"], inline[0]["image"])


def test_foreground_oversampling_centres_patches_on_foreground():
    cases = _cases(n=4, shape=(64, 64, 64))
    none = AugmentationConfig(**{name: 0.0 for name in AugmentationConfig.model_fields})
    always = PatchSampler(cases, [8, 8, 8], none, foreground_fraction=1.0)
    generator = torch.Generator().manual_seed(0)
    for case in cases:
        for _ in range(10):
            patch = always.patch(case, generator)
            assert patch["label"][0, 3:5, 3:5, 3:5].any(), "the centre voxel of the patch is foreground"


def test_processes_share_an_epoch_without_overlap_and_take_as_many_steps():
    plans = [EpochPlan(n_cases=11, batch_size=2, seed=1, rank=r, world_size=2) for r in range(2)]
    shares = [plan.batches(epoch=1) for plan in plans]
    assert len(shares[0]) == len(shares[1]) == 2
    flat = [set(sum(share, [])) for share in shares]
    assert not flat[0] & flat[1]


def test_slices_of_volumes_give_2d_patches():
    sampler = PatchSampler(_cases(n=2), [24, 24], AugmentationConfig(), foreground_fraction=0.5, slices=True)
    batch = sampler.batch([0, 1], torch.Generator().manual_seed(0))
    assert batch["image"].shape == (2, 1, 24, 24) and batch["label"].shape == (2, 1, 24, 24)

"""Training state saved after the epochs the trainer chooses, so that a killed run resumes from there.

Everything is stored as tensors and plain types so that it loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import CheckpointError
from pipeline.files import atomic_path


def _numpy_state(generator: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, gauss = generator.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]


def _set_numpy_state(generator: np.random.RandomState, state: list) -> None:
    name, keys, pos, has_gauss, gauss = state
    generator.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def rng_state() -> dict[str, Any]:
    """The global generators (dropout draws from torch's); training batches have generators of their own."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(np.random.mtrand._rand),
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    _set_numpy_state(np.random.mtrand._rand, state["numpy"])
    *python_state, gauss = state["python"]
    random.setstate((3, tuple(python_state), gauss))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none; refuses a damaged one or one from other params."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"{path}: cannot be read ({err.__class__.__name__}); delete it to start training afresh"
        ) from None
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: was written by a run with other parameters, data or number of processes; delete it to start training afresh"
        )
    return state


def saved_epoch(path: Path) -> int | None:
    """The last epoch in the checkpoint at ``path``, None without one."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["progress"]["epoch"]

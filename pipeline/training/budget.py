"""Keeps a budgeted run within its budget. The probe's step time is an estimate made before the run (its median
step ran 12% faster than the run's mean epochs on the nodules, which overran a 25-minute budget by 1.5 minutes), so
at shares of the planned epochs the epochs are fitted anew from the pace the run keeps: its epochs' wall time
(batches, logging and checkpoints) and its validations. A machine's pace can change for good mid-run (a hippocampus
run slowed by a sixth in its second half and overran 28 minutes by 1.2; a 2D one's steps slowed by a third in its
last fifth and it overran by 1.6), so each re-fit takes the pace of the epochs since the last one, and the re-fits
come closer together towards the end. The median epoch, not the mean, sets the pace: a few epochs slowed by
something passing (another process for a minute, a recompilation) would otherwise cut the whole run short. The
learning-rate schedule is then rebuilt for the new count, as if planned with it from the start, so that it still
ends with the run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.training.build import Trainer
from pipeline.training.optim import rebuild_schedule
from pipeline.training.probe import MARGIN
from pipeline.training.progress import Progress

REFIT_AFTER = (0.1, 0.5, 0.8, 0.9, 0.95)  # shares of the planned epochs after which the epochs are fitted again
MIN_MEASURED = 2  # epochs measured for a re-fit; the run's first epoch, which recompiles, is not one of them


@dataclass
class Pace:
    """The wall time of this process's epochs, for a run whose epochs were fitted to a budget ending at
    ``deadline`` (``time.monotonic()``). A resumed run keeps the epochs it had: its clock started again."""

    deadline: float
    epoch_seconds: list[float] = field(default_factory=list)  # validations left out
    validation_seconds: list[float] = field(default_factory=list)
    refits: int = 0
    refitted_at: int = 0  # how many epochs were measured at the last re-fit

    def measure(self, epoch: int, seconds: float, validation_seconds: float | None) -> None:
        if validation_seconds is not None:
            self.validation_seconds.append(validation_seconds)
        if epoch > 1:
            self.epoch_seconds.append(seconds - (validation_seconds or 0.0))

    def due(self, epoch: int, epochs: int) -> bool:
        return (
            self.refits < len(REFIT_AFTER)
            and len(self.epoch_seconds) - self.refitted_at >= MIN_MEASURED
            and REFIT_AFTER[self.refits] * epochs <= epoch < epochs
        )

    def fitted_epochs(self, epoch: int, val_every: int, probed_validation_seconds: float) -> tuple[int, str]:
        """The epochs that end within the budget at the pace kept since the last re-fit, one last validation
        included."""
        epoch_s = statistics.median(self.epoch_seconds[self.refitted_at :])
        validation_s = statistics.fmean(self.validation_seconds or [probed_validation_seconds])
        seconds_left = self.deadline - time.monotonic()
        more = int(MARGIN * (seconds_left - validation_s) / (epoch_s + validation_s / val_every))
        self.refits, self.refitted_at = self.refits + 1, len(self.epoch_seconds)
        why = (
            f"re-fitted after epoch {epoch} with {seconds_left / 60:.1f} minutes left: "
            f"{epoch_s:.2f} s an epoch, a validation of {validation_s:.1f} s"
        )
        return epoch + max(1, more), why


def refit(trainer: Trainer, progress: Progress, pace: Pace, agree: Callable[[float], float]) -> bool:
    """Fit the trainer's epochs and schedule to the pace kept; ``agree`` makes every torchrun process take rank 0's
    count. Whether the count changed."""
    fitted, why = pace.fitted_epochs(progress.epoch, trainer.config.val_every, trainer.step_plan.validation_seconds)
    epochs = int(agree(fitted))
    trainer.step_plan.reasons["epochs"] += f"; {why}: {epochs}"
    if epochs == trainer.config.epochs:
        return False
    trainer.config = trainer.config.model_copy(update={"epochs": epochs})
    trainer.step_plan.epochs = epochs
    trainer.scheduler = rebuild_schedule(trainer.optimizer, trainer.config, progress.epoch)
    return True

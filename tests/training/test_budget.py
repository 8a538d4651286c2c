import time

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.training.budget import MIN_MEASURED, Pace, refit
from pipeline.training.build import Trainer
from pipeline.training.optim import build_optimizer, build_schedule
from pipeline.training.probe import MARGIN, StepPlan
from pipeline.training.progress import Progress


def _pace(seconds_left: float, epoch_seconds: float, measured_epochs: int = 4, validation_seconds=None) -> Pace:
    pace = Pace(deadline=time.monotonic() + seconds_left)
    for epoch in range(1, measured_epochs + 1):
        pace.measure(epoch, epoch_seconds + (validation_seconds or 0), validation_seconds)
    return pace


def test_the_first_epoch_is_not_measured_and_validations_are_kept_apart():
    pace = Pace(deadline=0.0)
    pace.measure(1, 60.0, None)  # the recompiling first epoch
    pace.measure(2, 2.0, None)
    pace.measure(3, 7.0, 5.0)
    assert pace.epoch_seconds == [2.0, 2.0] and pace.validation_seconds == [5.0]


def test_refits_come_closer_together_towards_the_end_and_never_at_the_end():
    pace = _pace(100, 1.0, measured_epochs=MIN_MEASURED)  # epochs 2..MIN_MEASURED measured: one short
    assert not pace.due(10, 100)
    pace.measure(MIN_MEASURED + 1, 1.0, None)
    for share in (10, 50, 80, 90, 95):
        assert not pace.due(share - 1, 100) and pace.due(share, 100)
        pace.fitted_epochs(epoch=share, val_every=2, probed_validation_seconds=2.0)
        assert not pace.due(share, 100), "a re-fit waits for epochs measured since the last one"
        for epoch in range(share + 1, share + 1 + MIN_MEASURED):
            pace.measure(epoch, 1.0, None)
    assert not pace.due(99, 100)
    assert not _pace(100, 1.0).due(10, 10), "the last epoch is not re-fitted"


def test_a_refit_takes_the_pace_kept_since_the_last_one():
    pace = _pace(100, 1.0, measured_epochs=20)
    pace.fitted_epochs(epoch=20, val_every=2, probed_validation_seconds=2.0)
    for epoch in range(21, 25):  # the machine slowed for good
        pace.measure(epoch, 3.0, None)
    slowed = pace.fitted_epochs(epoch=24, val_every=2, probed_validation_seconds=2.0)[0]
    assert slowed == 24 + int(MARGIN * (100 - 2.0) / (3.0 + 2.0 / 2))


def test_the_epochs_are_fitted_to_the_time_left_at_the_pace_kept():
    pace = _pace(100, 1.0, validation_seconds=None)
    epochs, why = pace.fitted_epochs(epoch=10, val_every=2, probed_validation_seconds=2.0)
    # 2 s a validation, one every 2 epochs, and one more at the end
    assert epochs == 10 + int(MARGIN * (100 - 2.0) / (1.0 + 2.0 / 2)) and "re-fitted after epoch 10" in why
    slower = _pace(100, 2.0).fitted_epochs(epoch=10, val_every=2, probed_validation_seconds=2.0)[0]
    assert slower < epochs
    late = _pace(-5, 1.0).fitted_epochs(epoch=10, val_every=2, probed_validation_seconds=2.0)[0]
    assert late == 11, "past the budget, one more epoch ends the schedule"


def test_a_few_slow_epochs_do_not_cut_the_run_short():
    steady = _pace(100, 1.0, measured_epochs=12)
    disturbed = _pace(100, 1.0, measured_epochs=12)
    disturbed.epoch_seconds[3:6] = [10.0, 10.0, 10.0]  # another process took the cores for half a minute
    fitted = steady.fitted_epochs(epoch=10, val_every=2, probed_validation_seconds=2.0)[0]
    assert disturbed.fitted_epochs(epoch=10, val_every=2, probed_validation_seconds=2.0)[0] == fitted


def _trainer(epochs: int) -> Trainer:
    config = TrainConfig(epochs=epochs, val_every=2, learning_rate=1.0)
    network = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(network.parameters(), config)
    plan = StepPlan("float32", False, 0.1, 2.0, epochs, 2, {"epochs": "budget"})
    scheduler = build_schedule(optimizer, config)
    return Trainer(config, plan, network, network, torch.nn.MSELoss(), optimizer, scheduler, None, 0.0)


def test_a_refit_changes_the_epochs_the_step_plan_and_the_schedule_together():
    trainer, progress = _trainer(epochs=100), Progress(epoch=10)
    for _ in range(10):
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert refit(trainer, progress, _pace(100, 1.0), agree=float)
    assert trainer.config.epochs == trainer.step_plan.epochs < 100
    assert "re-fitted after epoch 10" in trainer.step_plan.reasons["epochs"]
    for _ in range(10, trainer.config.epochs):
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0, abs=1e-9)


def test_every_process_takes_the_count_it_is_told():
    trainer = _trainer(epochs=100)
    assert not refit(trainer, Progress(epoch=10), _pace(100, 1.0), agree=lambda _: 100.0)
    assert trainer.config.epochs == 100

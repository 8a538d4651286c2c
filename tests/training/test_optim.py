import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.training.optim import build_optimizer, build_schedule, rebuild_schedule


def _rates(config: TrainConfig) -> list[float]:
    parameters = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = build_optimizer(parameters, config)
    schedule = build_schedule(optimizer, config)
    rates = []
    for _ in range(config.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize(
    ("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizers(name, kind):
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer=name))
    assert type(optimizer) is kind
    if name == "sgd":
        assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.99


def test_cosine_and_poly_decay_to_nothing_and_step_by_factors():
    cosine = _rates(TrainConfig(schedule="cosine", epochs=10, learning_rate=1.0))
    assert cosine[0] == 1.0 and cosine[-1] < 0.05 and cosine == sorted(cosine, reverse=True)
    poly = _rates(TrainConfig(schedule="poly", epochs=10, learning_rate=1.0, poly_power=1.0))
    assert poly[:3] == pytest.approx([1.0, 0.9, 0.8])
    step = _rates(TrainConfig(schedule="step", epochs=7, learning_rate=1.0, step_epochs=3, step_gamma=0.5))
    assert step == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    assert set(_rates(TrainConfig(schedule="constant", epochs=4, learning_rate=0.1))) == {0.1}


def test_warmup_rises_linearly_then_hands_over_to_the_schedule():
    rates = _rates(TrainConfig(schedule="cosine", epochs=10, warmup_epochs=3, learning_rate=1.0))
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4:] == sorted(rates[4:], reverse=True) and rates[-1] < 0.1


@pytest.mark.parametrize("warmup_epochs", [0, 3])
@pytest.mark.parametrize("schedule", ["cosine", "poly"])
@pytest.mark.parametrize("refitted_epochs", [14, 30])
def test_a_schedule_rebuilt_for_another_count_runs_as_if_planned_with_it(schedule, warmup_epochs, refitted_epochs):
    planned = TrainConfig(schedule=schedule, epochs=20, warmup_epochs=warmup_epochs, learning_rate=1.0)
    refitted = planned.model_copy(update={"epochs": refitted_epochs})
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], planned)
    schedule_in_use = build_schedule(optimizer, planned)
    for _ in range(5):
        optimizer.step()
        schedule_in_use.step()
    schedule_in_use = rebuild_schedule(optimizer, refitted, epochs_done=5)
    rates = []
    for _ in range(5, refitted_epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule_in_use.step()
    assert rates == pytest.approx(_rates(refitted)[5:], abs=1e-12)
    assert schedule_in_use.get_last_lr()[0] == pytest.approx(0, abs=1e-9), "the schedule still ends with the run"

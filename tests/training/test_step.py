import pytest
import torch

from pipeline.errors import TrainingError
from pipeline.training.step import NonFiniteStep, autocast_dtype, train_one_epoch, training_step


def _setup(poison=False):
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def loss_function(output, label):
        loss = torch.nn.functional.cross_entropy(output, label[:, 0].long())
        return loss * float("nan") if poison else loss

    return network, optimizer, scaler, loss_function


def _batch():
    return {"image": torch.randn(2, 1, 8, 8, 4), "label": torch.randint(0, 2, (2, 1, 8, 8, 4))}


def test_amp_trains_in_bfloat16_on_cpus_that_have_it_and_float32_elsewhere(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(False, cpu) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert autocast_dtype(True, cpu) == torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert autocast_dtype(True, cpu) is None
    assert autocast_dtype(True, torch.device("cuda")) == torch.float16


def test_a_finite_step_updates_the_weights():
    network, optimizer, scaler, loss_function = _setup()
    before = network.weight.detach().clone()
    loss = training_step(network, _batch(), loss_function, optimizer, scaler, None)
    assert loss > 0 and not torch.equal(before, network.weight)


def test_a_nan_loss_raises_before_the_optimiser_touches_the_weights():
    network, optimizer, scaler, loss_function = _setup(poison=True)
    before = network.weight.detach().clone()
    with pytest.raises(NonFiniteStep, match="the loss is nan"):
        training_step(network, _batch(), loss_function, optimizer, scaler, None)
    assert torch.equal(before, network.weight)
    assert issubclass(NonFiniteStep, TrainingError)


def test_a_nan_gradient_behind_a_finite_loss_is_caught_too():
    network, optimizer, scaler, _ = _setup()

    def loss_function(output, label):
        # finite forward, NaN backward: sqrt's gradient at 0 is infinite, times 0 is NaN
        return torch.sqrt(output * 0).sum() + torch.nn.functional.cross_entropy(output, label[:, 0].long())

    before = network.weight.detach().clone()
    with pytest.raises(NonFiniteStep, match="gradient"):
        training_step(network, _batch(), loss_function, optimizer, scaler, None)
    assert torch.equal(before, network.weight)


def test_an_epoch_names_the_batch_where_a_step_went_non_finite():
    network, optimizer, scaler, loss_function = _setup(poison=True)
    with pytest.raises(NonFiniteStep, match=r"batch 0 \(cases a, b\): the loss is nan"):
        train_one_epoch(network, [_batch()], loss_function, optimizer, scaler, None, name_batch=lambda i: "cases a, b")


def test_skipping_counts_the_steps_and_stops_when_a_whole_epoch_is_skipped():
    network, optimizer, scaler, loss_function = _setup()
    calls = []

    def every_other_nan(output, label):
        calls.append(1)
        return loss_function(output, label) * (float("nan") if len(calls) % 2 else 1.0)

    measured = train_one_epoch(network, [_batch()] * 4, every_other_nan, optimizer, scaler, None, skip_nonfinite=True)
    assert measured["skipped_steps"] == 2 and torch.isfinite(torch.tensor(measured["train_loss"]))
    _, _, _, poisoned = _setup(poison=True)
    with pytest.raises(NonFiniteStep, match="every one of the epoch's 3 steps"):
        train_one_epoch(network, [_batch()] * 3, poisoned, optimizer, scaler, None, skip_nonfinite=True)
    assert all(torch.isfinite(p).all() for p in network.parameters())

import itertools
import time

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.errors import TrainingError
from pipeline.training import probe
from pipeline.training.probe import Prober, plan_step


def _network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))


def _batches(drawn, seconds=0.0, drift=0.0, every=1, clock=None):
    """Batches that take ``seconds`` each, and ``drift`` seconds more every ``every`` batches drawn (a machine
    slowing down: ``drawn`` is shared by every generator of a test). With a ``clock``, they take that time on
    it instead of sleeping."""
    for _ in itertools.count():
        pause = seconds + drift * (len(drawn) // every)
        clock.advance(pause) if clock else time.sleep(pause)
        drawn.append(1)
        yield {"image": torch.randn(2, 1, 8, 8, 8), "label": torch.randint(0, 2, (2, 1, 8, 8, 8))}


class _Clock:
    """The probe's clock in a test: only the batches move it, so the steps take what the test says, whatever
    else the machine is doing."""

    def __init__(self):
        self.now = 0.0

    def advance(self, seconds):
        self.now += seconds

    def perf_counter(self):
        return self.now


def _loss(output, label):
    return torch.nn.functional.cross_entropy(output, label[:, 0].long())


def _plan(config, network, drawn, loss=_loss, seconds_left=60.0, batches_for=None):
    validations = []
    plan = plan_step(
        config,
        network,
        batches_for or (lambda threads: _batches(drawn)),
        config.data_workers if config.data_workers is not None else 1,
        loss,
        lambda parameters: torch.optim.AdamW(parameters, lr=1e-3),
        lambda: validations.append(1),
        steps_per_epoch=5,
        seconds_left=lambda: seconds_left,
    )
    return plan, validations


def test_nothing_is_probed_when_params_fix_every_choice():
    drawn = []
    plan, validations = _plan(TrainConfig(amp=False, compile=False, epochs=7, val_every=2), _network(), drawn)
    assert not drawn and not validations
    assert (plan.precision, plan.compiled, plan.epochs, plan.val_every) == ("float32", False, 7, 2)


def test_the_probe_leaves_the_weights_and_the_random_state_as_they_were():
    network, drawn = _network(), []
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    rng = torch.get_rng_state()
    plan, validations = _plan(TrainConfig(), network, drawn)
    assert drawn and validations == [1]
    assert all(torch.equal(weights[k], v) for k, v in network.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert plan.precision in ("float32", "bfloat16") and not plan.compiled
    assert "not worth it" in plan.reasons["compile"], "a run of seconds is never compiled"


def test_the_epochs_fill_the_budget_with_the_schedule_complete():
    plan, _ = _plan(TrainConfig(), _network(), [], seconds_left=30.0)
    epoch_s = 5 * plan.step_seconds
    assert plan.epochs * (epoch_s + plan.validation_seconds / plan.val_every) <= 30.0
    assert (plan.epochs + 2) * (epoch_s + plan.validation_seconds / plan.val_every) > 30.0 * 0.97
    assert "budget" in plan.reasons["epochs"]
    fixed, _ = _plan(TrainConfig(epochs=3), _network(), [])
    assert fixed.epochs == 3 and fixed.reasons["epochs"] == "params"


def test_a_loss_that_is_nan_from_the_first_steps_stops_before_training():
    with pytest.raises(TrainingError, match="first training steps already give a NaN"):
        _plan(TrainConfig(), _network(), [], loss=lambda output, label: _loss(output, label) * float("nan"))


def _slower(threaded: bool):
    """Batches that take 20 ms each when prepared with threads (``threaded``) or in the step's thread."""
    return lambda threads: _batches([], seconds=0.02 if bool(threads) == threaded else 0.0)


def test_batches_are_prepared_in_the_step_thread_only_where_that_is_faster():
    plan, _ = _plan(TrainConfig(amp=False, compile=False), _network(), [], batches_for=_slower(threaded=True))
    assert plan.data_threads == 0 and plan.reasons["data_threads"].startswith("0, in the step's thread")
    plan, _ = _plan(TrainConfig(amp=False, compile=False), _network(), [], batches_for=_slower(threaded=False))
    assert plan.data_threads == 1 and "in the step's thread" in plan.reasons["data_threads"]
    params_set = TrainConfig(amp=False, compile=False, data_workers=2)
    fixed, _ = _plan(params_set, _network(), [], batches_for=_slower(threaded=True))
    assert fixed.data_threads == 2 and fixed.reasons["data_threads"] == "2 (params)"


def test_variants_timed_in_turns_see_the_same_machine(monkeypatch):
    """A machine that slows down during the probe (each round of two steps 2 ms slower than the last) slows two
    identical variants alike when their steps take turns; one block after the other, the second looks slower.
    The machine is a clock that only the batches move: on the real one, a single pause of the test process
    shifts the median of eight steps by a round of this drift."""
    clock, drawn = _Clock(), []
    monkeypatch.setattr(probe, "time", clock)
    network = _network()
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    prober = Prober(
        network,
        lambda threads: _batches(drawn, seconds=0.005, drift=0.002, every=2, clock=clock),
        0,
        _loss,
        lambda parameters: torch.optim.AdamW(parameters, lr=1e-3),
    )
    (first_s, _), (second_s, _) = prober.side_by_side([(None, False), (None, False)])
    assert second_s == pytest.approx(first_s)
    (first_block_s, _), (second_block_s, _) = prober.time(None, False), prober.time(None, False)
    assert second_block_s > 1.3 * first_block_s
    prober.restore()
    assert all(torch.equal(weights[k], v) for k, v in network.state_dict().items())

"""A short measured probe of the planned training step, before training: which precision, whether to
compile and whether to prepare batches in a thread of their own (each only where it is finite and
faster here, for this plan), and how many epochs fit the time budget with the learning-rate schedule
run to its end.

The probe trains on the network itself for a few steps, then puts its weights and the random state
back, so that training starts from the same weights whatever the probe did.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from pipeline.config import TrainConfig
from pipeline.errors import TrainingError
from pipeline.training.step import NonFiniteStep, autocast_dtype, training_step

WARMUP_STEPS, TIMED_STEPS = 2, 8
FASTER = 0.95  # a variant must take at most this share of the other's step time to be chosen
VALIDATION_SHARE = 0.05  # of the training time, when val_every is planned
MIN_COMPILE_SECONDS = 20  # inductor compiles a U-Net's step in no less, even from a warm cache
MARGIN = 0.97  # of the time left, for what the probe cannot see (the first epoch's recompilation, logging)


@dataclasses.dataclass
class StepPlan:
    """What the probe chose and measured; kept in the checkpoint so that a resumed run does not probe again."""

    precision: str
    compiled: bool
    step_seconds: float
    validation_seconds: float
    epochs: int
    val_every: int
    reasons: dict[str, str]
    data_threads: int | None = None  # None in checkpoints written before the probe chose them

    @property
    def dtype(self) -> torch.dtype | None:
        return None if self.precision == "float32" else getattr(torch, self.precision)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Prober:
    """Times variants of the step on the network, each from the same starting weights."""

    def __init__(
        self, network, batches_for: Callable[[int], Iterator[dict]], threads: int, loss_function, make_optimizer
    ):
        self.network, self.batches_for, self.loss_function = network, batches_for, loss_function
        self.make_optimizer, self.device = make_optimizer, next(network.parameters()).device
        self.weights = copy.deepcopy(network.state_dict())
        self.use_threads(threads)

    def use_threads(self, threads: int) -> None:
        """Draw the batches of later timings with this many preparing threads (0: in the step's thread)."""
        self.threads, self.batches = threads, self.batches_for(threads)

    def time(self, precision: torch.dtype | None, compiled: bool) -> tuple[float | None, float]:
        """Seconds per step (None: not finite), and the seconds the first call took (compilation)."""
        return self.side_by_side([(precision, compiled)])[0]

    def side_by_side(self, variants: list[tuple[torch.dtype | None, bool]]) -> list[tuple[float | None, float]]:
        """``time`` for each (precision, compiled) variant, their steps taken in turns, so that both see the same
        machine: on a shared 2-core host whose pace drifts and jitters, one block of steps after the other gave
        compiled/plain ratios of 0.71 to 1.01 between trials of one plan, in turns 0.88 to 0.96
        (``benchmarks/probe_noise.py``)."""
        self.network.load_state_dict(self.weights)
        runs = []
        for precision, compiled in variants:
            scaler = torch.amp.GradScaler(self.device.type, enabled=precision == torch.float16)
            step_network = torch.compile(self.network) if compiled else self.network
            runs.append((step_network, self.make_optimizer(self.network.parameters()), scaler, precision))
        seconds: list[list[float] | None] = [[] for _ in runs]
        for _ in range(1 + WARMUP_STEPS + TIMED_STEPS):  # the first call compiles
            for index, (step_network, optimizer, scaler, precision) in enumerate(runs):
                if seconds[index] is None:
                    continue
                started = time.perf_counter()
                try:
                    training_step(step_network, next(self.batches), self.loss_function, optimizer, scaler, precision)
                except NonFiniteStep:
                    seconds[index] = None
                    continue
                seconds[index].append(time.perf_counter() - started)
        return [
            (statistics.median(timed[1 + WARMUP_STEPS :]), timed[0]) if timed is not None else (None, math.nan)
            for timed in seconds
        ]

    def restore(self) -> None:
        self.network.load_state_dict(self.weights)


def _choose_precision(
    prober: Prober, config: TrainConfig, device: torch.device
) -> tuple[torch.dtype | None, float, str]:
    reduced = autocast_dtype(True, device)
    if config.amp is False or reduced is None:
        seconds, _ = prober.time(None, False)
        why = "amp is off" if config.amp is False else f"this {device.type} has no fast reduced precision"
        return None, seconds or math.nan, why
    if config.amp is True:
        reduced_s, _ = prober.time(reduced, False)
        return reduced, reduced_s or math.nan, "amp is on (params)"
    (reduced_s, _), (full_s, _) = prober.side_by_side([(reduced, False), (None, False)])
    name = str(reduced).removeprefix("torch.")
    if reduced_s is None:
        return None, full_s or math.nan, f"{name} gave a non-finite loss or gradient in the probe"
    if full_s is not None and reduced_s > FASTER * full_s:
        return None, full_s, f"{name} was not faster ({reduced_s * 1e3:.0f} against {full_s * 1e3:.0f} ms a step)"
    return (
        reduced,
        reduced_s,
        f"{name}: {reduced_s * 1e3:.0f} ms a step against float32's "
        + (f"{full_s * 1e3:.0f} ms" if full_s is not None else "non-finite"),
    )


def _choose_threads(prober: Prober, config: TrainConfig, precision, threaded_s: float) -> tuple[float, str]:
    """On few cores a preparing thread takes turns with the step's own threads: batches prepared in the step's
    thread can be faster overall, though the step waits for them. ``threaded_s``: the step timed with threads."""
    if config.data_workers is not None:
        return threaded_s, f"{config.data_workers} (params)"
    threads = prober.threads
    prober.use_threads(0)
    inline_s, _ = prober.time(precision, False)
    if inline_s is not None and inline_s <= FASTER * threaded_s:
        return inline_s, (
            f"0, in the step's thread: {inline_s * 1e3:.0f} against {threaded_s * 1e3:.0f} ms a step with {threads}"
        )
    prober.use_threads(threads)
    inline = f"{inline_s * 1e3:.0f} ms" if inline_s is not None else "non-finite"
    return threaded_s, f"{threads}: {threaded_s * 1e3:.0f} ms a step against {inline} in the step's thread"


def _choose_compile(
    prober: Prober, config: TrainConfig, precision, plain_s: float, run_s: float
) -> tuple[bool, float, str]:
    """``run_s``: what the run's steps take uncompiled; compiling must save more than it costs. The plain step
    is timed again beside the compiled one: ``plain_s`` stands where that timing is not finite."""
    if config.compile is False:
        return False, plain_s, "compile is off"
    if config.compile is True:
        compiled_s, _ = prober.time(precision, True)
        return True, compiled_s or plain_s, "compile is on (params)"
    if run_s * (1 - FASTER) < MIN_COMPILE_SECONDS:
        return False, plain_s, f"not worth it: the run's steps take about {run_s:.0f} s"
    try:
        (beside_s, _), (compiled_s, compile_s) = prober.side_by_side([(precision, False), (precision, True)])
    except Exception as err:  # inductor needs a C++ compiler, and fails in many ways without one
        return False, plain_s, f"compilation failed here ({err.__class__.__name__}: {str(err)[:200]})"
    plain_s = beside_s or plain_s
    if compiled_s is None:
        return False, plain_s, "the compiled step gave a non-finite loss or gradient in the probe"
    saved = (plain_s - compiled_s) * run_s / plain_s
    if compiled_s > FASTER * plain_s or saved < compile_s:
        return (
            False,
            plain_s,
            (
                f"not worth it: {compiled_s * 1e3:.0f} against {plain_s * 1e3:.0f} ms a step, "
                f"{compile_s:.0f} s to compile, about {saved:.0f} s saved over the run"
            ),
        )
    return (
        True,
        compiled_s,
        f"{compiled_s * 1e3:.0f} against {plain_s * 1e3:.0f} ms a step (timed in turns), {compile_s:.0f} s to compile",
    )


def plan_step(
    config: TrainConfig,
    network,
    batches_for: Callable[[int], Iterator[dict]],
    threads: int,
    loss_function,
    make_optimizer: Callable,
    validate: Callable[[], object],
    steps_per_epoch: int,
    seconds_left: Callable[[], float],
    agree: Callable[[float], float] = float,
) -> StepPlan:
    """Probe the step and plan the epochs. ``batches_for(n)``: endless batches prepared by ``n`` threads;
    ``threads``: params' number, or the default for the device. ``agree`` makes every torchrun process take
    rank 0's numbers."""
    device = next(network.parameters()).device
    fixed = isinstance(config.amp, bool) and isinstance(config.compile, bool) and config.epochs and config.val_every
    if fixed:  # nothing to choose or measure
        precision = autocast_dtype(config.amp, device)
        reasons = {
            "precision": f"amp is {config.amp} (params)",
            "compile": f"compile is {config.compile} (params)",
            "data_threads": f"{threads}: not probed (params set every other choice)",
        }
        plan = _epochs(config, precision, config.compile, math.nan, math.nan, steps_per_epoch, 0.0, reasons)
        return dataclasses.replace(plan, data_threads=threads)
    rng = torch.get_rng_state()
    prober = Prober(network, batches_for, threads, loss_function, make_optimizer)
    precision, step_s, precision_why = _choose_precision(prober, config, device)
    if not math.isfinite(step_s):
        prober.restore()
        raise TrainingError(
            "the first training steps already give a NaN or infinite loss or gradient (in the probe, before "
            f"training): check the data, or lower train.learning_rate (now {config.learning_rate:g})"
        )
    step_s, threads_why = _choose_threads(prober, config, precision, step_s)
    run_s = config.epochs * steps_per_epoch * step_s if config.epochs else seconds_left()
    compiled, step_s, compile_why = _choose_compile(prober, config, precision, step_s, run_s)
    prober.restore()
    started = time.perf_counter()
    validate()
    validation_s = agree(time.perf_counter() - started)
    torch.set_rng_state(rng)
    step_s, compiled = agree(step_s), bool(agree(float(compiled)))
    precision = {0.0: None, 1.0: torch.bfloat16, 2.0: torch.float16}[agree(_code(precision))]
    threads = int(agree(float(prober.threads)))
    reasons = {"precision": precision_why, "compile": compile_why, "data_threads": threads_why}
    plan = _epochs(config, precision, compiled, step_s, validation_s, steps_per_epoch, seconds_left(), reasons)
    return dataclasses.replace(plan, data_threads=threads)


def _code(precision: torch.dtype | None) -> float:
    return {None: 0.0, torch.bfloat16: 1.0, torch.float16: 2.0}[precision]


def _epochs(
    config: TrainConfig,
    precision,
    compiled: bool,
    step_s: float,
    validation_s: float,
    steps_per_epoch: int,
    seconds_left: float,
    reasons: dict[str, str],
) -> StepPlan:
    epoch_s = steps_per_epoch * step_s
    val_every = config.val_every or max(1, math.ceil(validation_s / (VALIDATION_SHARE * epoch_s)))
    if config.epochs:
        epochs, why = config.epochs, "params"
    else:
        fitted = MARGIN * seconds_left / (epoch_s + validation_s / val_every)
        epochs = max(1, int(fitted)) if math.isfinite(fitted) else 1
        why = (
            f"{config.budget_minutes:g} minutes' budget, {seconds_left / 60:.1f} left after the probe: "
            f"{steps_per_epoch} steps of {step_s * 1e3:.0f} ms an epoch, a validation of {validation_s:.1f} s"
        )
    reasons = {
        **reasons,
        "epochs": why,
        "val_every": "params" if config.val_every else f"validation kept near {VALIDATION_SHARE:.0%} of the time",
    }
    name = "float32" if precision is None else str(precision).removeprefix("torch.")
    return StepPlan(name, compiled, step_s, validation_s, epochs, val_every, reasons)

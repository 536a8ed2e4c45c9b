"""Fit a training run to the machine it runs on, before it starts.

A user pressing Start wants a useful model in minutes, not a 10-epoch run of several hours.
:func:`plan_run` times a few real optimiser steps on the dataset's own patterns (the chosen
preset, device and batch size) and picks, from the measured rate:

- the detector binning: the finest binning whose patterns still allow ``MIN_EPOCHS`` passes
  over the training positions within the budget (finer first: resolution carries strain and
  small rotations; a CPU rarely affords more than 64 pixels a side, and the network needs 32);
- the training subset: every position when the budget covers ``MIN_EPOCHS`` of them, else
  a random subset that it covers that often (never fewer than ``MIN_SUBSET``);
- the epochs: as many as the budget covers, so the learning-rate schedule runs to its end
  inside the budget rather than being cut off in its first epoch. The engine re-fits them
  after every epoch from the epoch's measured time (``training.budget``), so a timing taken
  beside other work neither wastes the budget nor overruns it.

On CUDA the plan keeps the data whole and at full size and only reports the estimate. The
plan's numbers are ordinary ``TrainConfig``/``PreprocessConfig`` values: shown, editable and
stored with the model like any other setting.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import Dataset4D
from ..data.preprocess import Preprocessor
from ..model.autoencoder import Autoencoder
from ..model.config import MIN_INPUT_SIZE
from ..objective.objective import Objective
from .budget import MAX_EPOCHS
from .config import TrainConfig
from .data import fit_preprocessor_on
from .device import choose_precision, resolve_device
from .engine import make_optimizer

#: wall-clock budget a CPU run gets by default (minutes)
DEFAULT_CPU_MINUTES = 5.0
#: passes over the training positions a budget should cover (the schedule, BN re-estimation
#: and validation work per epoch; one partial epoch trains a model that has seen each
#: pattern once at a high learning rate)
MIN_EPOCHS = 4
#: the smallest training subset a plan chooses (scans smaller than this train on all of it)
MIN_SUBSET = 1024
#: the largest pattern side a CPU plan starts from
CPU_MAX_SIDE = 64
#: share of a run spent outside optimiser steps: validation, BN re-estimation, previews, the
#: first steps' warm-up (bench_defaults: 42 patterns/s over a whole 5-minute run, 52 timed)
_OVERHEAD = 0.25
#: patterns the timing reads to fit the preprocessing and the objective
_FIT_PATTERNS = 128


@dataclass(frozen=True)
class RunPlan:
    """What a run will do and how long it should take (``estimate_s``)."""

    device: str
    detector_bin: int
    input_shape: tuple[int, int]
    n_positions: int
    train_subset: int | None  # None: every position
    epochs: int
    max_minutes: float | None
    patterns_per_second: float  # timed optimiser steps
    setup_s: float  # reading, preprocessing fit, data-fitted objective (measured)
    val_fraction: float = 0.1  # of the positions used, held out for validation
    epochs_chosen: bool = True  # the plan chose the epochs (False: the user's)

    @property
    def n_used(self) -> int:
        """Positions the run reads (training and validation)."""
        return self.n_positions if self.train_subset is None else min(self.train_subset,
                                                                      self.n_positions)

    @property
    def n_train(self) -> int:
        """Positions an epoch trains on."""
        return max(2, int(round(self.n_used * (1.0 - self.val_fraction))))

    def replace(self, **changes) -> "RunPlan":
        return dataclasses.replace(self, **changes)

    @property
    def unbounded_s(self) -> float:
        """Seconds the planned epochs take, whatever the budget."""
        steps_s = self.epochs * self.n_train / max(self.patterns_per_second, 1e-9)
        return self.setup_s + steps_s * (1.0 + _OVERHEAD)

    @property
    def estimate_s(self) -> float:
        """Seconds from Start to the end of the last epoch (or of the budget)."""
        if self.max_minutes is not None:
            return min(self.unbounded_s, self.max_minutes * 60.0)
        return self.unbounded_s

    @property
    def cut_by_budget(self) -> bool:
        """Whether the budget ends the run before its last epoch (by more than 2 %)."""
        return self.max_minutes is not None and self.unbounded_s > self.max_minutes * 60 * 1.02

    def describe(self) -> str:
        """One line a microscopist reads before pressing Start."""
        positions = ("all " if self.train_subset is None else "") + f"{self.n_used:,} positions"
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return (f"about {_clock(self.estimate_s)}: {epochs} over {positions}, "
                f"patterns {self.input_shape[0]}×{self.input_shape[1]} (detector bin "
                f"{self.detector_bin}), {self.patterns_per_second:.0f} patterns/s timed on "
                f"{self.device}")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def _binned_shape(view: Dataset4D, config: TrainConfig, detector_bin: int) -> tuple[int, int]:
    return Preprocessor(config.preprocess.replace(detector_bin=detector_bin)).output_shape(
        view.detector_shape)


def candidate_bins(view: Dataset4D, config: TrainConfig, device_type: str) -> list[int]:
    """Detector binnings to consider, finest first: on CPU from the first whose patterns are
    at most ``CPU_MAX_SIDE`` a side, down to the last that keeps ``MIN_INPUT_SIZE``."""
    bins = []
    b = 1
    while min(_binned_shape(view, config, b)) >= MIN_INPUT_SIZE:
        bins.append(b)
        b *= 2
    if not bins:  # already below the minimum: the engine's own error names the problem
        return [1]
    if device_type == "cuda":
        return bins[:1]
    fitting = [b for b in bins if max(_binned_shape(view, config, b)) <= CPU_MAX_SIDE]
    return fitting or bins[-1:]


def time_training_steps(view: Dataset4D, config: TrainConfig, steps: int = 2,
                        warmup: int = 1) -> tuple[float, float]:
    """(patterns/s of the optimiser step, seconds of data-dependent setup) for ``config`` on
    the dataset's own patterns: a few batches read and preprocessed, the objective fitted on
    them (so the graph teacher's per-batch cost is in the figure), ``warmup`` untimed and
    ``steps`` timed steps (forward, loss, backward, Adam) on one batch."""
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    precision = choose_precision(device, config.amp, config.channels_last)
    batch = max(2, min(config.batch_size, view.n_patterns))
    n_fit = min(view.n_patterns, max(4 * batch, _FIT_PATTERNS))
    rng = np.random.default_rng(config.seed)
    idx = np.sort(rng.choice(view.n_patterns, size=n_fit, replace=False))
    raw = view.patterns(idx)
    preprocessor = fit_preprocessor_on(raw, config.preprocess, view.name)
    patterns = torch.from_numpy(preprocessor.transform_patterns(raw))
    model_config = config.model_config()
    model = Autoencoder(model_config.latent_dim, tuple(patterns.shape[-2:]), model_config)
    objective = Objective(config.objective_config(), model_config.latent_dim).bind(preprocessor)
    quiet = logging.getLogger(Objective.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a teacher skipped on a handful of patterns is no news
    try:
        objective.fit(patterns)
    finally:
        quiet.setLevel(level)
    setup_s = time.perf_counter() - t0
    model.to(device).train()
    objective.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    x = precision.prepare_input(patterns[:batch].unsqueeze(1).to(device))
    optimizer = make_optimizer(model, config, device)
    elapsed = 0.0
    for k in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        x_in, halves = objective.training_input(x)
        with precision.autocast():
            x_hat, z = model.encode_decode(precision.prepare_input(x_in))
        losses = objective(x, x_hat, z, halves)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if k >= warmup:
            elapsed += time.perf_counter() - t
    del model, optimizer, objective, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return steps * batch / max(elapsed, 1e-9), setup_s


def plan_run(dataset: Dataset4D, config: TrainConfig, *, max_minutes: float | None = None,
             detector_bin: int | None = None, train_subset: int | None = None,
             epochs: int | None = None, no_budget: bool = False, steps: int = 2,
             timer: Callable[[Dataset4D, TrainConfig], tuple[float, float]] | None = None
             ) -> RunPlan:
    """A run of ``config`` on ``dataset`` fitted to its device (module docstring).

    ``max_minutes`` is the budget (``config.max_minutes`` when None; on CPU
    ``DEFAULT_CPU_MINUTES`` when neither is set). ``config.preprocess`` gives everything but
    the detector binning; ``config.train_subset`` and ``config.epochs`` are what the plan
    chooses. On CUDA, without a budget, the plan keeps the config's epochs and all positions.
    ``detector_bin``, ``train_subset`` and ``epochs``, when given, are the user's and kept;
    the plan fits the others around them. ``no_budget``: the user wants no time limit (the
    plan then keeps every position and the config's epochs, and only estimates). ``timer``
    replaces :func:`time_training_steps` (a caller that caches timings per binning).

    At most two timings: the coarsest candidate binning first (the cheapest to time), the
    finer ones predicted from it by their pixel count (convolutions cost per pixel; small
    patterns pay more fixed overhead, so the prediction errs on the slow side), and the finest
    one predicted to fit timed to confirm it.
    """
    view = Preprocessor(config.preprocess).scan_view(dataset)
    device = resolve_device(config.device)
    budget = max_minutes if max_minutes is not None else config.max_minutes
    if budget is None and device.type != "cuda":
        budget = DEFAULT_CPU_MINUTES
    if no_budget:
        budget = None
    n = view.n_patterns
    n_train_all = max(2, int(round(n * (1.0 - config.val_fraction))))
    bins = [detector_bin] if detector_bin else candidate_bins(view, config, device.type)

    def timed(b: int) -> tuple[float, float]:
        trial = config.replace(preprocess=config.preprocess.replace(detector_bin=b))
        if timer is not None:
            return timer(view, trial)
        return time_training_steps(view, trial, steps=steps)

    def plan_for(b: int, rate: float, setup: float) -> RunPlan:
        shape = _binned_shape(view, config, b)
        setup_s = setup + _cache_seconds(n, shape)
        if budget is None:  # CUDA without a budget: the whole data, the config's epochs
            return RunPlan(str(device), b, shape, n, train_subset, epochs or config.epochs,
                           None, rate, setup_s, config.val_fraction)
        patterns = rate * max(0.0, budget * 60.0 - setup_s) / (1.0 + _OVERHEAD)
        if train_subset is not None:
            subset = train_subset if train_subset < n else None
            subset_train = max(2, int(round(min(train_subset, n) * (1.0 - config.val_fraction))))
        else:
            subset_train = n_train_all
            if patterns < MIN_EPOCHS * n_train_all:
                subset_train = max(min(n_train_all, MIN_SUBSET), int(patterns // MIN_EPOCHS))
            # TrainConfig.train_subset counts positions before the validation split
            subset = None if subset_train >= n_train_all else min(
                n, int(math.ceil(subset_train / (1.0 - config.val_fraction))))
        n_epochs = epochs or int(max(1, min(MAX_EPOCHS, patterns // max(subset_train, 1))))
        return RunPlan(str(device), b, shape, n, subset, n_epochs, budget, rate, setup_s,
                       config.val_fraction, epochs_chosen=epochs is None)

    def fits(p: RunPlan) -> bool:
        return p.max_minutes is None or p.epochs >= MIN_EPOCHS

    coarsest = bins[-1]
    rate_c, setup_c = timed(coarsest)
    pixels_c = float(np.prod(_binned_shape(view, config, coarsest)))
    for b in bins[:-1]:  # finest first
        predicted = rate_c * pixels_c / float(np.prod(_binned_shape(view, config, b)))
        if fits(plan_for(b, predicted, setup_c)):
            confirmed = plan_for(b, *timed(b))
            if fits(confirmed):
                return confirmed
    return plan_for(coarsest, rate_c, setup_c)


def _cache_seconds(n: int, shape: tuple[int, int]) -> float:
    """A rough allowance for reading and preprocessing the training patterns into memory
    (~200 MB/s of float32 output on a laptop); refined nowhere, shown only as part of the
    estimate."""
    return n * shape[0] * shape[1] * 4 / 200e6


def apply(plan: RunPlan, config: TrainConfig) -> TrainConfig:
    """``config`` with the plan's binning, subset, epochs and budget; epochs the plan chose
    are re-fitted to the budget while the run goes."""
    return config.replace(preprocess=config.preprocess.replace(detector_bin=plan.detector_bin),
                          train_subset=plan.train_subset, epochs=plan.epochs,
                          max_minutes=plan.max_minutes,
                          fit_epochs_to_budget=plan.epochs_chosen and plan.max_minutes is not None)

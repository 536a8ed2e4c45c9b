"""Typed events yielded by the training generator (plain frozen dataclasses, no Qt).

Consumers (the napari widget, the CLI, tests) dispatch on the type::

    for event in train(dataset, config):
        if isinstance(event, BatchEnd): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .config import TrainConfig


@dataclass(frozen=True)
class Started:
    """Training is about to run its first step."""

    config: TrainConfig
    #: the loss terms every BatchEnd/EpochEnd reports, ``total`` first (the objective's names)
    loss_names: tuple[str, ...]
    n_train: int
    n_val: int
    steps_per_epoch: int
    epochs: int
    device: str
    input_shape: tuple[int, int]
    scan_shape: tuple[int, int]
    start_epoch: int = 0
    world_size: int = 1
    cached: bool = True


@dataclass(frozen=True)
class BatchEnd:
    """One optimiser step is done; ``losses`` holds total and each unweighted component."""

    epoch: int
    step: int
    global_step: int
    steps_per_epoch: int
    losses: dict[str, float]
    patterns_per_second: float


@dataclass(frozen=True)
class EpochEnd:
    """Mean train and validation losses of an epoch (``val`` is empty without validation)."""

    epoch: int
    train: dict[str, float]
    val: dict[str, float]
    lr: float
    epochs: int  # the run's total epochs, changed when re-fitted to the time budget


@dataclass(frozen=True)
class Preview:
    """Embedding maps on a coarse grid: every ``positions_step``-th position along each axis."""

    global_step: int
    embeddings: np.ndarray = field(repr=False)  # (Ry', Rx', latent_dim) float32
    positions_step: int


@dataclass(frozen=True)
class CheckpointSaved:
    path: str
    epoch: int


@dataclass(frozen=True)
class Finished:
    """The run ended normally. ``model`` (eval mode, on the training device) and
    ``preprocessor`` are the trained pair, ready to embed with."""

    reason: Literal["completed", "stopped", "early_stopping", "time_budget"]
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = field(default=None, repr=False)
    preprocessor: Any = field(default=None, repr=False)
    objective: Any = field(default=None, repr=False)
    #: the trained triple described as its checkpoint describes it
    #: (``training.checkpoints.LoadedModel``; ``path`` is the checkpoint written, if any)
    trained: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class Failed:
    """The run could not go on; ``checkpoint`` is the last good one written (if any)."""

    reason: str
    checkpoint: str | None = None


Event = Started | BatchEnd | EpochEnd | Preview | CheckpointSaved | Finished | Failed

__all__ = ["Started", "BatchEnd", "EpochEnd", "Preview", "CheckpointSaved", "Finished", "Failed",
           "Event"]

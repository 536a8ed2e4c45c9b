"""The frozen, JSON-serialisable description of one training run.

A ``TrainConfig`` is built on the caller's thread (GUI main thread, CLI parser) and handed to
:func:`napari_4dstem_autoencoder.training.engine.train`; it travels inside checkpoints so a
run can be resumed or audited later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .._fields import checked_fields
from ..data.preprocess import PreprocessConfig
from ..model.config import ModelConfig
from ..objective.config import ObjectiveConfig
from .presets import DEFAULT_PRESET, get_preset

AmpMode = Literal["auto", "bf16", "off"]
LrSchedule = Literal["cosine", "plateau", "constant"]

_DEVICE_PREFIXES = ("auto", "cpu", "cuda", "mps")


def _check_device(device: str) -> None:
    base, _, index = device.partition(":")
    if base not in _DEVICE_PREFIXES or (index and (base != "cuda" or not index.isdigit())):
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (apart from the data).

    Model and loss: ``preset`` names an entry of ``training.presets.PRESETS``; ``model`` (a
    full ``ModelConfig``) and ``objective`` (a full ``ObjectiveConfig``, the one place loss
    weights are set; see ``presets.objective_with``) override its halves when given.

    Data: ``train_subset`` trains on that many randomly chosen positions (all when None);
    ``val_fraction`` of them are held out for validation. Patterns are kept in memory when
    they fit in ``cache_max_mb``; otherwise they stream from the lazy dataset through a
    ``DataLoader`` with ``num_workers`` workers.

    Device: ``device`` is ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``. ``amp="auto"`` uses bf16 autocast on CUDA only; ``"bf16"`` forces it (also on
    CPU); ``"off"`` trains in fp32. ``channels_last="auto"`` enables it on CUDA only.
    ``compile`` wraps the train step in ``torch.compile(dynamic=False)``.

    Optimiser: Adam at ``lr`` (default 1e-4: faster than 1e-3 in the first epochs of this
    network, docs/model.md). BatchNorm running statistics are re-estimated on
    ``bn_recalibration_patterns`` training patterns at each epoch end and at the end, and the
    encoder's on a quarter as many before every preview (0 turns that off), so eval-mode
    embeddings match the trained weights.

    Stopping: ``early_stopping_patience`` epochs without a validation improvement larger than
    ``early_stopping_min_delta`` end the run; ``max_minutes`` is a wall-clock budget. With
    ``fit_epochs_to_budget`` (set by ``plan.apply`` when the plan chose the epochs) the engine
    re-fits ``epochs`` to the budget after every epoch from the epoch it measured
    (``training.budget``), and the cosine schedule follows.

    Previews: an embedding map on a coarse grid of at most ``preview_max_positions`` positions
    is produced every ``preview_every_steps`` optimiser steps and/or every
    ``preview_every_seconds`` seconds (None disables that trigger), and always at the end;
    ``preview_max_positions=0`` turns previews off entirely (headless runs).

    Checkpoints: written atomically to ``checkpoint_path`` (when set) every
    ``checkpoint_every_epochs`` epochs, on stop and at the end.

    Memory: when the run ends, the trained model moves to the CPU and an accelerator's cached
    memory is given back, unless ``keep_model_on_device``.
    """

    preset: str = DEFAULT_PRESET
    model: ModelConfig | None = None
    objective: ObjectiveConfig | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    train_subset: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: AmpMode = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    lr_schedule: LrSchedule = "cosine"
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    max_minutes: float | None = None
    fit_epochs_to_budget: bool = False
    preview_every_steps: int | None = None
    preview_every_seconds: float | None = 5.0
    preview_max_positions: int = 4096
    checkpoint_path: str | None = None
    checkpoint_every_epochs: int = 1
    num_workers: int = 0
    cache_max_mb: float = 2048.0
    grad_clip_norm: float | None = None
    sync_batchnorm: bool | Literal["auto"] = "auto"
    bn_recalibration_patterns: int = 256
    keep_model_on_device: bool = False

    def __post_init__(self) -> None:
        get_preset(self.preset)  # raises a clear error for an unknown preset
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if isinstance(self.objective, dict):
            object.__setattr__(self, "objective", ObjectiveConfig.from_dict(self.objective))
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", PreprocessConfig.from_dict(self.preprocess))
        if self.checkpoint_path is not None:
            object.__setattr__(self, "checkpoint_path", str(self.checkpoint_path))
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch statistics need 2 samples)"),
            (self.lr > 0, "lr must be positive"),
            (self.bn_recalibration_patterns >= 0, "bn_recalibration_patterns must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.train_subset is None or self.train_subset >= 2, "train_subset must be >= 2"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.amp in ("auto", "bf16", "off"), f"unknown amp mode {self.amp!r}"),
            (self.channels_last in (True, False, "auto"), "channels_last must be true, false or 'auto'"),
            (self.sync_batchnorm in (True, False, "auto"), "sync_batchnorm must be true, false or 'auto'"),
            (self.lr_schedule in ("cosine", "plateau", "constant"),
             f"unknown lr_schedule {self.lr_schedule!r}; use cosine, plateau or constant"),
            (self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             "early_stopping_patience must be >= 1"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive"),
            (self.preview_every_steps is None or self.preview_every_steps >= 1,
             "preview_every_steps must be >= 1"),
            (self.preview_every_seconds is None or self.preview_every_seconds > 0,
             "preview_every_seconds must be positive"),
            (self.preview_max_positions >= 0, "preview_max_positions must be >= 0"),
            (self.checkpoint_every_epochs >= 1, "checkpoint_every_epochs must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.cache_max_mb >= 0, "cache_max_mb must be >= 0"),
            (self.grad_clip_norm is None or self.grad_clip_norm > 0, "grad_clip_norm must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        _check_device(str(self.device))

    def model_config(self) -> ModelConfig:
        """The architecture this run trains (``model`` if given, else the preset's)."""
        return self.model if self.model is not None else get_preset(self.preset).model

    def objective_config(self) -> ObjectiveConfig:
        """The loss this run trains with (``objective`` if given, else the preset's)."""
        return self.objective if self.objective is not None else get_preset(self.preset).objective

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "objective"):
                value = None if value is None else value.to_dict()
            elif f.name == "preprocess":
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        kwargs = checked_fields(cls, data, "training config")
        if kwargs.get("model") is not None:
            kwargs["model"] = ModelConfig.from_dict(kwargs["model"])
        if kwargs.get("objective") is not None:
            kwargs["objective"] = ObjectiveConfig.from_dict(kwargs["objective"])
        if kwargs.get("preprocess") is not None:
            kwargs["preprocess"] = PreprocessConfig.from_dict(kwargs["preprocess"])
        return cls(**kwargs)

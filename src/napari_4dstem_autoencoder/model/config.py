"""Typed, serialisable architecture configuration of the autoencoder.

Only choices that carry no parameters live here (pool schedule, decoder canvas, output prior),
so every configuration has the same 3,914,404 trainable parameters. Loss settings live in
``objective.config``; named recipes that pair the two in ``training.presets``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .._fields import checked_fields

PoolSchedule = Literal["quarter", "to4"]
DecoderCanvas = Literal["fixed256", "target"]
OutputPrior = Literal["none", "mean_pattern"]

MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network, apart from its weights (defaults: the seed).

    pool_schedule:
        ``"quarter"``: after each encoder ResNet block pool to ``max(1, size // 4)``, as the
        seed document says (the latent collapses for inputs below 256 pixels).
        ``"to4"``: pool geometrically so that the third block ends at 4x4 for every input.
    decoder_canvas:
        ``"fixed256"``: upsample x4 three times (4 -> 16 -> 64 -> 256) and resize to the
        target, as the seed document says. ``"target"``: grow geometrically from 4 to the
        target size across the three up blocks (all blocks still run).
    output_prior:
        ``"none"`` (seed): the decoder's sigmoid starts from its own bias. ``"mean_pattern"``:
        the logit of the training data's mean pattern is added before the sigmoid (a buffer set
        once from the data; no parameters), so an untrained decoder already outputs the mean
        pattern and training spends its steps on how patterns differ.
    """

    latent_dim: int = 32
    pool_schedule: PoolSchedule = "quarter"
    decoder_canvas: DecoderCanvas = "fixed256"
    output_prior: OutputPrior = "none"

    def __post_init__(self) -> None:
        if self.pool_schedule not in ("quarter", "to4"):
            raise ValueError(f"unknown pool_schedule {self.pool_schedule!r}")
        if self.decoder_canvas not in ("fixed256", "target"):
            raise ValueError(f"unknown decoder_canvas {self.decoder_canvas!r}")
        if self.output_prior not in ("none", "mean_pattern"):
            raise ValueError(f"unknown output_prior {self.output_prior!r}")
        if self.latent_dim != 32:
            # The parameter budget (and the embedding layer) is defined for 32-D latents.
            raise ValueError("latent_dim must be 32 (the documented network)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**checked_fields(cls, data, "model config"))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

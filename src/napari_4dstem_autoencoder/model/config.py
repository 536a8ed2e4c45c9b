"""Typed, serialisable architecture configuration of the autoencoder.

Only choices that carry no parameters live here (encoder stem, pool schedule, decoder canvas,
output prior), so every configuration has the same 3,914,404 trainable parameters. Loss
settings live in ``objective.config``; named recipes that pair the two in ``training.presets``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .._fields import checked_fields

PoolSchedule = Literal["quarter", "to4"]
DecoderCanvas = Literal["fixed256", "target", "half_target"]
OutputPrior = Literal["none", "mean_pattern"]
EncoderStem = Literal["full", "pool2"]

POOL_SCHEDULES = ("quarter", "to4")
DECODER_CANVASES = ("fixed256", "target", "half_target")
OUTPUT_PRIORS = ("none", "mean_pattern")
ENCODER_STEMS = ("full", "pool2")

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
        target size across the three up blocks (all blocks still run). ``"half_target"``: grow
        geometrically to half the target size, resize those 128-channel features bilinearly
        to the target and run the final 128 -> 1 conv there; the output prior is added at the
        target size too, so its detail stays at full resolution (a quarter of the up blocks'
        compute; the final conv's 3x3 kernels still place edges at full resolution).
    output_prior:
        ``"none"`` (seed): the decoder's sigmoid starts from its own bias. ``"mean_pattern"``:
        the logit of the training data's mean pattern is added before the sigmoid (a buffer set
        once from the data; no parameters), so an untrained decoder already outputs the mean
        pattern and training spends its steps on how patterns differ.
    encoder_stem:
        ``"full"`` (seed): the 128-channel layers start at the input's resolution.
        ``"pool2"``: the 64 first-layer features are average-pooled 2x2 (floor) before the
        128-channel layers, which then start at half the input size (a quarter of the
        compute); the pool schedule runs from that size.
    """

    latent_dim: int = 32
    pool_schedule: PoolSchedule = "quarter"
    decoder_canvas: DecoderCanvas = "fixed256"
    output_prior: OutputPrior = "none"
    #: last, with the seed's value as default: configs saved before it existed load unchanged
    encoder_stem: EncoderStem = "full"

    def __post_init__(self) -> None:
        for name, allowed in (("pool_schedule", POOL_SCHEDULES),
                              ("decoder_canvas", DECODER_CANVASES),
                              ("output_prior", OUTPUT_PRIORS), ("encoder_stem", ENCODER_STEMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; one of {allowed}")
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

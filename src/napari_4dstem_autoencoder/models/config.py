"""Typed, serialisable model configuration and named presets.

Only choices that carry no parameters live here (pool schedule, decoder canvas, loss
constants), so every preset has the same 3,914,404 trainable parameters and presets can be
compared without touching the blocks. The config travels inside checkpoints as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

PoolSchedule = Literal["quarter", "to4"]
DecoderCanvas = Literal["fixed256", "target"]
DivergenceForm = Literal["inverse_variance", "log_variance"]

MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model, apart from its weights.

    pool_schedule:
        ``"quarter"``: after each encoder ResNet block pool to ``max(1, size // 4)``, as the
        seed document says (the latent collapses for inputs below 256 pixels).
        ``"to4"``: pool geometrically so that the third block ends at 4x4 for every input.
    decoder_canvas:
        ``"fixed256"``: upsample x4 three times (4 -> 16 -> 64 -> 256) and resize to the
        target, as the seed document says. ``"target"``: grow geometrically from 4 to the
        target size across the three up blocks (all blocks still run).
    contrastive_margin:
        cosine similarity above which pairs are penalised (seed: 1.0, which never fires
        because embeddings are non-negative and cosine <= 1).
    divergence_form / divergence_eps:
        ``"inverse_variance"`` is the seed's ``mean(1 / (var + eps))``; ``"log_variance"``
        is ``mean(-log(var + eps))``, whose gradient cannot swamp the reconstruction term.
    """

    name: str = "seed"
    latent_dim: int = 32
    pool_schedule: PoolSchedule = "quarter"
    decoder_canvas: DecoderCanvas = "fixed256"
    contrastive_margin: float = 1.0
    divergence_form: DivergenceForm = "inverse_variance"
    divergence_eps: float = 1e-8
    lambda_act: float = 1e-4
    lambda_sim: float = 5e-5
    lambda_div: float = 2e-4

    def __post_init__(self) -> None:
        if self.pool_schedule not in ("quarter", "to4"):
            raise ValueError(f"unknown pool_schedule {self.pool_schedule!r}")
        if self.decoder_canvas not in ("fixed256", "target"):
            raise ValueError(f"unknown decoder_canvas {self.decoder_canvas!r}")
        if self.divergence_form not in ("inverse_variance", "log_variance"):
            raise ValueError(f"unknown divergence_form {self.divergence_form!r}")
        if self.latent_dim != 32:
            # The parameter budget (and the embedding layer) is defined for 32-D latents.
            raise ValueError("latent_dim must be 32 (the documented network)")
        if self.divergence_eps <= 0:
            raise ValueError("divergence_eps must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ValueError("model config must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


#: The seed document, reproduced exactly.
SEED = ModelConfig()

PRESETS: dict[str, ModelConfig] = {"seed": SEED}

DEFAULT_PRESET = "seed"


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

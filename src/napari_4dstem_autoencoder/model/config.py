"""Typed, serialisable model configuration and named presets.

Only choices that carry no parameters live here (pool schedule, decoder canvas, loss
constants), so every preset has the same 3,914,404 trainable parameters and presets can be
compared without touching the blocks. The config travels inside checkpoints as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .._fields import checked_fields

PoolSchedule = Literal["quarter", "to4"]
DecoderCanvas = Literal["fixed256", "target"]
DivergenceForm = Literal["inverse_variance", "log_variance", "std_hinge", "std_hinge_decorrelate"]
DIVERGENCE_FORMS = ("inverse_variance", "log_variance", "std_hinge", "std_hinge_decorrelate")
OutputPrior = Literal["none", "mean_pattern", "mean_and_level"]
OUTPUT_PRIORS = ("none", "mean_pattern", "mean_and_level")
ReconstructionWeighting = Literal["uniform", "pca_balanced"]

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
        is ``mean(-log(var + eps))``; ``"std_hinge"`` is ``mean(relu(1 - sqrt(var + eps)))``
        (VICReg's variance term): bounded by 1 in value and by ``1 / (2 sqrt(eps))`` in
        gradient, and zero once a dimension spreads enough, so it cannot swamp the MSE;
        ``"std_hinge_decorrelate"`` adds VICReg's covariance term (squared off-diagonal
        covariances / D, weighted 1/25) so the dimensions cannot all carry the same number.
    output_prior:
        ``"none"`` (seed): the decoder's sigmoid starts from its own bias. ``"mean_pattern"``:
        the logit of the training data's mean pattern is added before the sigmoid (a fixed
        buffer, set once from the data; no parameters), so an untrained decoder already
        outputs the mean pattern and training spends its steps on how patterns *differ*.
        ``"mean_and_level"``: the mean pattern plus a term linear in each pattern's *level*
        (its mean preprocessed intensity, which thickness and dose move), fitted by least
        squares on the training patterns (buffers, no parameters). The decoder is given each
        input's level, so the embedding need not spend itself on it (``models/blocks.py``).
    reconstruction_weighting / balance_*:
        ``"uniform"`` (seed): plain MSE. ``"pca_balanced"``: the error along the training
        data's leading principal directions (those carrying at least ``balance_min_variance``
        of the variance, at most ``balance_max_directions``) is weighted up to the variance
        of the first, by at most ``balance_max_gain`` (``models/balance.py``; fixed buffers
        set once from the data, no parameters).
    lambda_corr:
        weight of the mean squared off-diagonal correlation between embedding dimensions
        (``model.balance.correlation_penalty``; 0 in the seed).
    graph_weight / graph_*:
        weight of the graph teacher (0 in the seed: off). The engine fits diffusion-map
        coordinates of the training patterns' ``graph_neighbours``-nearest-neighbour graph
        (diffusion time ``graph_diffusion_time``, ``graph_components`` coordinates) on the
        reference patterns, and adds ``graph_weight`` times the mismatch between the batch's
        embedding geometry (on a fixed ``graph_components``-dimensional subspace) and the
        targets' (``training/graph_teacher.py``; nothing saved, no parameters).
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
    output_prior: OutputPrior = "none"
    reconstruction_weighting: ReconstructionWeighting = "uniform"
    balance_min_variance: float = 0.01
    balance_max_directions: int = 8
    balance_max_gain: float = 100.0
    lambda_corr: float = 0.0
    graph_weight: float = 0.0
    graph_neighbours: int = 15
    graph_diffusion_time: float = 64.0
    graph_components: int = 16

    def __post_init__(self) -> None:
        if self.pool_schedule not in ("quarter", "to4"):
            raise ValueError(f"unknown pool_schedule {self.pool_schedule!r}")
        if self.decoder_canvas not in ("fixed256", "target"):
            raise ValueError(f"unknown decoder_canvas {self.decoder_canvas!r}")
        if self.divergence_form not in DIVERGENCE_FORMS:
            raise ValueError(f"unknown divergence_form {self.divergence_form!r}")
        if self.output_prior not in OUTPUT_PRIORS:
            raise ValueError(f"unknown output_prior {self.output_prior!r}")
        if self.latent_dim != 32:
            # The parameter budget (and the embedding layer) is defined for 32-D latents.
            raise ValueError("latent_dim must be 32 (the documented network)")
        if self.divergence_eps <= 0:
            raise ValueError("divergence_eps must be positive")
        if self.reconstruction_weighting not in ("uniform", "pca_balanced"):
            raise ValueError(f"unknown reconstruction_weighting {self.reconstruction_weighting!r}")
        if not 0 < self.balance_min_variance < 1:
            raise ValueError("balance_min_variance must be a fraction between 0 and 1")
        if int(self.balance_max_directions) < 1:
            raise ValueError("balance_max_directions must be at least 1")
        if not self.balance_max_gain >= 1:
            raise ValueError("balance_max_gain must be at least 1")
        if self.lambda_corr < 0:
            raise ValueError("lambda_corr must be non-negative")
        if not self.graph_weight >= 0:
            raise ValueError("graph_weight must be non-negative")
        if int(self.graph_neighbours) < 1:
            raise ValueError("graph_neighbours must be at least 1")
        if not self.graph_diffusion_time >= 0:
            raise ValueError("graph_diffusion_time must be non-negative")
        if not 1 <= int(self.graph_components) <= self.latent_dim:
            raise ValueError(f"graph_components must be between 1 and {self.latent_dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**checked_fields(cls, data, "model config"))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


#: The seed document, reproduced exactly.
SEED = ModelConfig()

#: Parameter-free variants of the seed (all 3,914,404 parameters), each fixing one more of the
#: measured flaws (docs/model.md, "Choosing the default preset", has the evidence):
#:
#: - ``pooled4``: pooling ends at 4x4 for every input, so the 32-D embedding is no longer a
#:   function of one number below 256x256 (seed losses kept).
#: - ``fast``: ``pooled4`` + a decoder canvas that grows to the target size instead of
#:   rendering 256x256 and resizing (16x less decoder compute at 64x64).
#: - ``stable``: ``fast`` + a divergence term that cannot swamp the MSE (a hinge on each
#:   dimension's standard deviation, bounded value and gradient).
#: - ``contrast``: ``stable`` + a contrastive margin that acts (cosine above 0.5 is penalised;
#:   the seed's margin 1.0 never fires) with a weight large enough to matter.
#: - ``decorrelated``: ``stable`` + a penalty on covariance between embedding dimensions
#:   (measured: without it the 32 dimensions vary together, participation ratio ~1).
#: - ``prior``: ``decorrelated`` + the mean-pattern output prior (measured on this CPU: the
#:   decoder starts at the mean pattern's PSNR instead of ~7 dB, and embeddings cluster far
#:   better after one epoch). Pair it with the training defaults (lr 1e-4, BN recalibration).
#: - ``levelled``: ``prior`` whose output prior also follows each pattern's level (mean
#:   intensity), so the embedding need not carry thickness or dose. Measured on this CPU: on
#:   some seeds it separates the sample's classes better than PCA, on others not, and it
#:   costs the simulation, whose classes differ in level (docs/model.md).
#: - ``balanced``: ``prior`` + the PCA-balanced reconstruction loss + a penalty on correlation
#:   between embedding dimensions (measured on this CPU: k-means no longer splits a grain
#:   along its thickness gradient before it separates a strained region; docs/model.md).
#: - ``graph`` (the default): ``prior`` + the graph teacher: the embedding is asked to keep the
#:   geometry of the diffusion map of the patterns' nearest-neighbour graph, in which each
#:   connected cloud of patterns (a grain drifting with thickness) is one compact blob.
#:   Measured on this CPU: the only preset whose k-means clustering beats PCA + k-means on both
#:   evaluation data sets within 10 minutes, on every seed (docs/model.md).
POOLED4 = SEED.replace(name="pooled4", pool_schedule="to4")
FAST = POOLED4.replace(name="fast", decoder_canvas="target")
STABLE = FAST.replace(name="stable", divergence_form="std_hinge", divergence_eps=1e-4,
                      lambda_div=1e-3)
CONTRAST = STABLE.replace(name="contrast", contrastive_margin=0.5, lambda_sim=1e-3)
DECORRELATED = STABLE.replace(name="decorrelated", divergence_form="std_hinge_decorrelate")
PRIOR = DECORRELATED.replace(name="prior", output_prior="mean_pattern")
LEVELLED = PRIOR.replace(name="levelled", output_prior="mean_and_level")
BALANCED = PRIOR.replace(name="balanced", reconstruction_weighting="pca_balanced",
                         lambda_corr=1e-2)
GRAPH = PRIOR.replace(name="graph", graph_weight=1.0)

PRESETS: dict[str, ModelConfig] = {
    c.name: c for c in (SEED, POOLED4, FAST, STABLE, CONTRAST, DECORRELATED, PRIOR,
                         LEVELLED, BALANCED, GRAPH)
}

DEFAULT_PRESET = "graph"


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None

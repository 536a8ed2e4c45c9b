"""The recipes a user chooses between: an architecture (``ModelConfig``) and an objective
(``ObjectiveConfig``) under one name, each with the reason to pick it.

Their quality and speed are in docs/model.md ("Presets", "How good are the embeddings"); the
configurations that research tried and dropped are in docs/research-log.md and git history.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.config import ModelConfig
from ..objective.config import ObjectiveConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    objective: ObjectiveConfig
    #: when a user should pick it (the Train dock's tooltip, ``stem-ae train --help``)
    summary: str


#: The seed document, reproduced exactly (tests pin its parameter count and shapes).
SEED = Preset(
    "seed", ModelConfig(), ObjectiveConfig(),
    "The seed document exactly: quarter pooling (the 32-D embedding collapses below 256x256 "
    "patterns), a 256x256 decoder canvas, the original loss. For comparison with the original.")

#: The seed's measured flaws fixed without changing a parameter (docs/model.md): pooling that
#: ends at 4x4 for every input size, a decoder canvas sized by the target, a divergence term
#: that cannot swamp the MSE, and the mean pattern as the decoder's prior. The 128-channel
#: layers run at half the pattern size at both ends (a pooled encoder stem; a half canvas
#: whose logits are resized before the full-resolution prior is added): 3.6x fewer MACs at
#: 64x64 than the full-resolution network these presets had before, for no loss of quality.
_FIXED_MODEL = ModelConfig(pool_schedule="to4", decoder_canvas="half_target",
                           output_prior="mean_pattern", encoder_stem="pool2")
_FIXED_OBJECTIVE = ObjectiveConfig(divergence_form="std_hinge_decorrelate", divergence_eps=1e-4,
                                   lambda_div=1e-3)

CONTINUOUS = Preset(
    "continuous", _FIXED_MODEL, _FIXED_OBJECTIVE,
    "The seed's flaws fixed, embedding shaped by the reconstruction alone. For gradual change "
    "(thickness, strain gradients) and rare features, which the graph teacher of 'regions' "
    "would pull into its blobs.")

#: The teacher's graph joins each pattern to those under whose local rate its electrons are
#: most probable (the Poisson likelihood of a counting detector), so at low dose the
#: neighbours are not set by shot noise and small orientation changes still count:
#: benchmarks/quality, docs/model.md "How good are the embeddings". Pixels on non-count data.
REGIONS = Preset(
    "regions", _FIXED_MODEL, _FIXED_OBJECTIVE.replace(graph_weight=1.0,
                                                      graph_features="likelihood"),
    "Default. The seed's flaws fixed, and the embedding taught the geometry of the patterns' "
    "neighbour graph, built on the electron counts' likelihood, so regions that share "
    "structure (phases, grains, orientations) form compact clusters, at low dose too.")

PRESETS: dict[str, Preset] = {p.name: p for p in (REGIONS, CONTINUOUS, SEED)}
DEFAULT_PRESET = REGIONS.name


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def objective_with(preset: str, **weights: float | None) -> ObjectiveConfig:
    """The preset's objective with the loss weights a user typed (``None``: the preset's)."""
    return get_preset(preset).objective.replace(
        **{k: float(v) for k, v in weights.items() if v is not None})

"""The typed, serialisable description of the training objective (every loss weight and form).

One place for every loss setting: presets (``training.presets``) pair an ``ObjectiveConfig`` with
a ``ModelConfig``, ``TrainConfig.objective`` overrides it, and checkpoints carry it as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .._fields import checked_fields

DivergenceForm = Literal["inverse_variance", "std_hinge_decorrelate"]
DIVERGENCE_FORMS = ("inverse_variance", "std_hinge_decorrelate")
Reconstruction = Literal["mse", "poisson"]
RECONSTRUCTIONS = ("mse", "poisson")
GraphFeatures = Literal["pixels", "denoised", "likelihood"]
GRAPH_FEATURES = ("pixels", "denoised", "likelihood")


@dataclass(frozen=True)
class ObjectiveConfig:
    """``L = R + λ_act·mean|z| + λ_sim·L_sim + λ_div·L_div + graph_weight·L_graph``, R the
    reconstruction term.

    The defaults are the seed document's (``objective.terms`` has each term's formula):

    contrastive_margin:
        cosine similarity above which pairs of embeddings are penalised (seed: 1.0, which never
        fires because embeddings are non-negative and cosine <= 1).
    divergence_form / divergence_eps:
        ``"inverse_variance"`` is the seed's ``mean(1 / (var + eps))``;
        ``"std_hinge_decorrelate"`` is VICReg's variance and covariance terms, bounded in value
        and gradient, so it cannot swamp the MSE.
    reconstruction:
        ``"mse"`` (seed): mean squared error of the preprocessed patterns. ``"poisson"``: the
        Poisson deviance of the detected electrons under the reconstruction's rate
        (``terms.poisson_deviance``), the likelihood of a counting detector; it falls back to
        the MSE, with a warning, when the data do not invert to integer counts.
    halves_weight:
        weight of the thinned-halves term (0: off). Each training batch's first half of
        patterns is split, electron by electron, into two binomially thinned halves (the same
        specimen, independent shot noise); the network sees both (each at twice its counts),
        each half's reconstruction is scored against the *other* half, and the term asks the
        two embeddings to agree (``terms.embedding_agreement``), so the embedding keeps what
        the specimen does and drops what the noise does. Needs count data (off otherwise).
    graph_weight / graph_*:
        weight of the graph teacher (0: off). It is fitted on the reference patterns: diffusion
        map of their ``graph_neighbours``-nearest-neighbour graph at diffusion time
        ``graph_diffusion_time``, ``graph_components`` coordinates (``objective.graph_teacher``).
        ``graph_features``: the graph joins patterns near in ``"pixels"`` (seed) or in
        ``"denoised"`` features, their projections onto the principal directions whose
        variance stands above the data's own shot noise (measured from thinned halves), so
        at low dose the neighbours are not set by the noise; or by ``"likelihood"``: each
        pattern joins the patterns under whose local rate (the mean of their pixel
        neighbourhood) its electrons are most probable, the Poisson likelihood of a counting
        detector, which weighs every pixel by its own noise. Pixels on non-count data.
    """

    lambda_act: float = 1e-4
    lambda_sim: float = 5e-5
    contrastive_margin: float = 1.0
    lambda_div: float = 2e-4
    divergence_form: DivergenceForm = "inverse_variance"
    divergence_eps: float = 1e-8
    reconstruction: Reconstruction = "mse"
    halves_weight: float = 0.0
    graph_weight: float = 0.0
    graph_neighbours: int = 15
    graph_diffusion_time: float = 64.0
    graph_components: int = 16
    graph_features: GraphFeatures = "pixels"

    def __post_init__(self) -> None:
        checks = [
            (self.divergence_form in DIVERGENCE_FORMS,
             f"unknown divergence_form {self.divergence_form!r}; use one of {DIVERGENCE_FORMS}"),
            (self.reconstruction in RECONSTRUCTIONS,
             f"unknown reconstruction {self.reconstruction!r}; use one of {RECONSTRUCTIONS}"),
            (self.divergence_eps > 0, "divergence_eps must be positive"),
            (min(self.lambda_act, self.lambda_sim, self.lambda_div) >= 0,
             "loss weights (lambda_act, lambda_sim, lambda_div) must be non-negative"),
            (self.graph_weight >= 0, "graph_weight must be non-negative"),
            (self.halves_weight >= 0, "halves_weight must be non-negative"),
            (self.graph_features in GRAPH_FEATURES,
             f"unknown graph_features {self.graph_features!r}; use one of {GRAPH_FEATURES}"),
            (int(self.graph_neighbours) >= 1, "graph_neighbours must be at least 1"),
            (self.graph_diffusion_time >= 0, "graph_diffusion_time must be non-negative"),
            (int(self.graph_components) >= 1, "graph_components must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObjectiveConfig":
        return cls(**checked_fields(cls, data, "objective config"))

    def replace(self, **changes: Any) -> "ObjectiveConfig":
        return dataclasses.replace(self, **changes)

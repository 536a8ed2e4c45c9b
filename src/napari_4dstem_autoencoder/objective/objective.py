"""The training objective: every loss term behind one interface.

::

    objective = Objective(ObjectiveConfig(...))
    objective.bind(preprocessor)           # how the input maps back to electrons
    objective.fit(reference_patterns)      # data-fitted terms (the graph teacher)
    losses = objective(x, x_hat, z)        # {"total": ..., "mse": ..., ...}
    objective.names                        # the keys, "total" first: what the loss plot draws

A new loss term touches this module (its name, weight and call) and ``objective.terms``. The
fitted state travels in checkpoints (:meth:`state_dict` / :meth:`load_state_dict`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from .config import ObjectiveConfig
from .counts import CountScale, are_counts
from .graph_teacher import MIN_PATTERNS as MIN_GRAPH_PATTERNS
from .graph_teacher import DiffusionTeacher
from .terms import (
    activity_l1,
    contrastive,
    divergence,
    embedding_agreement,
    poisson_deviance,
    reconstruction_mse,
)

log = logging.getLogger(__name__)


@dataclass
class ThinnedHalves:
    """One batch's thinned halves (:meth:`Objective.training_input`): the ``whole`` patterns
    (n, 1, H, W) as preprocessed, the electrons of each half per binned pixel, and the
    network's ``inputs`` (2n, 1, H, W), first halves then second halves."""

    whole: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    inputs: torch.Tensor


#: the terms every objective reports, in plot order (``graph`` follows when it is on)
BASE_TERMS = ("total", "mse", "l1", "contrastive", "divergence")


class Objective:
    """``L = R + λ_act·L1 + λ_sim·L_sim + λ_div·L_div (+ graph_weight·L_graph)``; R is the
    MSE, or the Poisson deviance (``poisson``) when the config asks for it and the data are
    counts. The MSE is reported either way (the loss plot and the CLI's progress show it)."""

    def __init__(self, config: ObjectiveConfig | None = None, latent_dim: int = 32) -> None:
        self.config = config or ObjectiveConfig()
        if self.config.graph_components > latent_dim:
            raise ValueError(f"graph_components must be at most the latent size {latent_dim}")
        self.latent_dim = latent_dim
        self.teacher: DiffusionTeacher | None = None
        #: whether :meth:`fit` ran (or a fitted state was loaded); a skipped teacher counts
        self.fitted = not self.needs_fit
        #: the inverse of the input's intensity scaling (:meth:`bind`); count terms need it
        self.counts: CountScale | None = None
        #: whether the data invert to integer counts (decided on the first patterns seen)
        self.count_data: bool | None = None

    @property
    def uses_graph(self) -> bool:
        return self.config.graph_weight > 0

    @property
    def needs_fit(self) -> bool:
        """Whether some term is fitted on the data before training."""
        return self.uses_graph

    @property
    def uses_poisson(self) -> bool:
        return self.config.reconstruction == "poisson"

    @property
    def uses_halves(self) -> bool:
        return self.config.halves_weight > 0

    @property
    def names(self) -> tuple[str, ...]:
        """The keys :meth:`__call__` returns, ``total`` first."""
        return (BASE_TERMS + (("poisson",) if self.uses_poisson else ())
                + (("halves",) if self.uses_halves else ())
                + (("graph",) if self.uses_graph else ()))

    def bind(self, preprocessor) -> "Objective":
        """Tell the count-based terms how the network's input maps back to electrons (the
        fitted ``data.preprocess.Preprocessor`` of the run)."""
        self.counts = CountScale.from_preprocessor(preprocessor)
        return self

    def _check_counts(self, x: torch.Tensor, quiet: bool = False) -> bool:
        if self.count_data is None:
            if self.counts is None:
                raise RuntimeError("count-based terms need the preprocessing: call "
                                   "Objective.bind(preprocessor) first")
            self.count_data = are_counts(self.counts.to_counts(x))
            if not self.count_data and not quiet:
                log.warning("the data are not electron counts (they do not invert to integers):"
                            " the count-based terms are off (the reconstruction term is the MSE;"
                            " no thinned halves)")
        return self.count_data

    def fit(self, patterns: torch.Tensor) -> None:
        """Fit the data-derived terms on (N, H, W) preprocessed reference patterns.

        The graph teacher is skipped, with a warning, when its graph would have no structure
        (too few patterns, or every pattern each other's neighbour); its term is then 0.
        """
        self.fitted = True
        self.teacher = None
        if (self.uses_poisson or self.uses_halves) and self.counts is not None:
            self._check_counts(patterns)
        if not self.uses_graph:
            return
        cfg = self.config
        if patterns.shape[0] < MIN_GRAPH_PATTERNS:
            log.warning("graph teacher skipped: %d training patterns, a graph needs at least %d",
                        patterns.shape[0], MIN_GRAPH_PATTERNS)
            return
        t0 = time.perf_counter()
        teacher = DiffusionTeacher.fit(patterns, cfg.graph_neighbours, cfg.graph_diffusion_time,
                                       cfg.graph_components, self.latent_dim,
                                       **self._graph_inputs(patterns))
        if not teacher.has_structure:
            log.warning("graph teacher skipped: the %d-neighbour graph of %d training patterns "
                        "has no slow modes (every pattern is every other's neighbour)",
                        cfg.graph_neighbours, patterns.shape[0])
            return
        self.teacher = teacher
        log.info("graph teacher: diffusion map of %d reference patterns in %.1f s",
                 patterns.shape[0], time.perf_counter() - t0)

    def _graph_inputs(self, patterns: torch.Tensor) -> dict[str, torch.Tensor]:
        """What ``DiffusionTeacher.fit`` needs beyond the pixels for count-based graph features
        on count data: for ``"denoised"`` an estimate of each reference pattern's shot
        ``noise``, half the difference of its two binomially thinned halves (in the input's
        scaling, each half at twice its counts); for ``"likelihood"`` the patterns' electron
        ``counts``. Nothing for ``"pixels"`` or data that are not counts."""
        features = self.config.graph_features
        if features == "pixels":
            return {}
        # the default preset asks for this on any data: data that are not counts (simulated
        # intensities, gain-corrected floats) get the pixel graph, said once, not as an error
        quiet = not (self.uses_poisson or self.uses_halves)
        if self.counts is None or not self._check_counts(patterns, quiet=quiet):
            (log.info if quiet else log.warning)(
                "graph teacher on pixels: %s features need electron counts, and these data do "
                "not invert to integers", features)
            return {}
        if features == "likelihood":
            return {"counts": self.counts.to_counts(patterns.float()).round()}
        gen = torch.Generator().manual_seed(0)  # the same split in every run and on refit
        first, second = self.counts.thinned_halves(patterns.float(), gen)
        return {"noise": 0.5 * (self.counts.half_input(first)
                                - self.counts.half_input(second))}

    def to(self, device: torch.device | str) -> "Objective":
        if self.teacher is not None:
            self.teacher.to(torch.device(device))
        return self

    def training_input(self, x: torch.Tensor) -> tuple[torch.Tensor, "ThinnedHalves | None"]:
        """What the network is fed for the batch ``x`` (B, 1, H, W): ``x`` itself, or with the
        thinned-halves term on (and count data), the two halves of the first ``B // 2``
        patterns, each at twice its counts (so intensities look like a whole pattern's), first
        halves then second halves. Pass the second value on to :meth:`__call__`."""
        if not self.uses_halves or x.shape[0] < 4 or not self._check_counts(x):
            return x, None
        n = x.shape[0] // 2
        first, second = self.counts.thinned_halves(x[:n])
        inputs = torch.cat([self.counts.half_input(first),
                            self.counts.half_input(second)]).to(x.dtype)
        return inputs, ThinnedHalves(x[:n], first, second, inputs)

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor,
                 halves: "ThinnedHalves | None" = None) -> dict[str, torch.Tensor]:
        """Unweighted terms of one batch and their weighted ``total``. ``x_hat`` and ``z`` are
        the network's outputs for :meth:`training_input`'s first value; ``halves`` its second."""
        cfg = self.config
        whole = x if halves is None else halves.whole.repeat(2, 1, 1, 1)
        if halves is None:
            target, target_counts, rate_scale = x, None, 1.0
        else:  # each half's reconstruction predicts the other half (independent noise)
            n = halves.whole.shape[0]
            target = torch.cat([halves.inputs[n:], halves.inputs[:n]])
            target_counts = torch.cat([halves.second, halves.first])
            rate_scale = 0.5  # a half holds half the electrons of the rate the decoder predicts
        losses = {
            "mse": reconstruction_mse(whole, x_hat),
            "l1": activity_l1(z),
            "contrastive": contrastive(z, cfg.contrastive_margin),
            "divergence": divergence(z, cfg.divergence_form, cfg.divergence_eps),
        }
        reconstruction = losses["mse"] if halves is None else reconstruction_mse(target, x_hat)
        if self.uses_poisson:
            if self._check_counts(x):
                scale = self.counts
                observed = scale.to_counts(target) if target_counts is None else target_counts
                # per electron, over the input's squared intensity range: at high counts
                # (deviance ≈ (k-λ)²/λ) of the order of the MSE of log intensities it replaces
                losses["poisson"] = poisson_deviance(
                    observed, rate_scale * scale.to_counts(x_hat)) / scale.intensity_range ** 2
                reconstruction = losses["poisson"]
            else:
                losses["poisson"] = losses["mse"].new_zeros(())
        total = (reconstruction + cfg.lambda_act * losses["l1"]
                 + cfg.lambda_sim * losses["contrastive"] + cfg.lambda_div * losses["divergence"])
        if self.uses_halves:
            if halves is None:
                losses["halves"] = losses["mse"].new_zeros(())
            else:
                n = halves.whole.shape[0]
                losses["halves"] = embedding_agreement(z[:n], z[n:])
                total = total + cfg.halves_weight * losses["halves"]
        if self.uses_graph:
            if self.teacher is None:  # skipped: nothing to teach
                losses["graph"] = losses["mse"].new_zeros(())
            else:  # targets from whole patterns: the teacher sees the less noisy version
                counts = self.counts.to_counts(whole).round() if self.teacher.likelihood else None
                losses["graph"] = self.teacher.loss(whole, z, counts)
                total = total + cfg.graph_weight * losses["graph"]
        return {"total": total, **losses}

    # -- state saved with the model ----------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted state as CPU tensors (empty when nothing was fitted or it was skipped)."""
        if self.teacher is None:
            return {}
        return {f"graph.{k}": v.detach().cpu().contiguous()
                for k, v in self.teacher.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned; marks the objective fitted."""
        unknown = set(state) - {"graph.reference", "graph.log_rates", "graph.coords",
                                "graph.centre", "graph.basis"}
        if unknown:
            raise ValueError(f"unknown objective state entries: {sorted(unknown)}")
        if {"graph.reference", "graph.log_rates"} <= set(state):
            raise ValueError("the state holds both pixel features and log-rates")
        self.teacher = None
        if state:
            if not self.uses_graph:
                raise ValueError("the state holds a graph teacher, the config has none")
            likelihood = "graph.log_rates" in state
            self.teacher = DiffusionTeacher(
                state["graph.log_rates" if likelihood else "graph.reference"],
                state["graph.coords"], self.latent_dim, state.get("graph.centre"),
                state.get("graph.basis"), likelihood=likelihood)
            if self.teacher.coords.shape[1] != self.config.graph_components:
                raise ValueError(
                    f"the saved teacher has {self.teacher.coords.shape[1]} components, the "
                    f"config asks for {self.config.graph_components}")
        self.fitted = True

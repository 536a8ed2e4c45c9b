"""The training objective: every loss term behind one interface.

::

    objective = Objective(ObjectiveConfig(...))
    objective.fit(reference_patterns)      # data-fitted terms (the graph teacher)
    losses = objective(x, x_hat, z)        # {"total": ..., "mse": ..., ...}
    objective.names                        # the keys, "total" first: what the loss plot draws

A new loss term touches this module (its name, weight and call) and ``objective.terms``. The
fitted state travels in checkpoints (:meth:`state_dict` / :meth:`load_state_dict`).
"""

from __future__ import annotations

import logging
import time

import torch

from .config import ObjectiveConfig
from .graph_teacher import MIN_PATTERNS as MIN_GRAPH_PATTERNS
from .graph_teacher import DiffusionTeacher
from .terms import activity_l1, contrastive, divergence, reconstruction_mse

log = logging.getLogger(__name__)

#: the terms every objective reports, in plot order (``graph`` follows when it is on)
BASE_TERMS = ("total", "mse", "l1", "contrastive", "divergence")


class Objective:
    """``L = MSE + λ_act·L1 + λ_sim·L_sim + λ_div·L_div (+ graph_weight·L_graph)``."""

    def __init__(self, config: ObjectiveConfig | None = None, latent_dim: int = 32) -> None:
        self.config = config or ObjectiveConfig()
        if self.config.graph_components > latent_dim:
            raise ValueError(f"graph_components must be at most the latent size {latent_dim}")
        self.latent_dim = latent_dim
        self.teacher: DiffusionTeacher | None = None
        #: whether :meth:`fit` ran (or a fitted state was loaded); a skipped teacher counts
        self.fitted = not self.needs_fit

    @property
    def uses_graph(self) -> bool:
        return self.config.graph_weight > 0

    @property
    def needs_fit(self) -> bool:
        """Whether some term is fitted on the data before training."""
        return self.uses_graph

    @property
    def names(self) -> tuple[str, ...]:
        """The keys :meth:`__call__` returns, ``total`` first."""
        return BASE_TERMS + (("graph",) if self.uses_graph else ())

    def fit(self, patterns: torch.Tensor) -> None:
        """Fit the data-derived terms on (N, H, W) preprocessed reference patterns.

        The graph teacher is skipped, with a warning, when its graph would have no structure
        (too few patterns, or every pattern each other's neighbour); its term is then 0.
        """
        self.fitted = True
        self.teacher = None
        if not self.uses_graph:
            return
        cfg = self.config
        if patterns.shape[0] < MIN_GRAPH_PATTERNS:
            log.warning("graph teacher skipped: %d training patterns, a graph needs at least %d",
                        patterns.shape[0], MIN_GRAPH_PATTERNS)
            return
        t0 = time.perf_counter()
        teacher = DiffusionTeacher.fit(patterns, cfg.graph_neighbours, cfg.graph_diffusion_time,
                                       cfg.graph_components, self.latent_dim)
        if not teacher.has_structure:
            log.warning("graph teacher skipped: the %d-neighbour graph of %d training patterns "
                        "has no slow modes (every pattern is every other's neighbour)",
                        cfg.graph_neighbours, patterns.shape[0])
            return
        self.teacher = teacher
        log.info("graph teacher: diffusion map of %d reference patterns in %.1f s",
                 patterns.shape[0], time.perf_counter() - t0)

    def to(self, device: torch.device | str) -> "Objective":
        if self.teacher is not None:
            self.teacher.to(torch.device(device))
        return self

    def __call__(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        """Unweighted terms of one batch and their weighted ``total``."""
        cfg = self.config
        losses = {
            "mse": reconstruction_mse(x, x_hat),
            "l1": activity_l1(z),
            "contrastive": contrastive(z, cfg.contrastive_margin),
            "divergence": divergence(z, cfg.divergence_form, cfg.divergence_eps),
        }
        total = (losses["mse"] + cfg.lambda_act * losses["l1"]
                 + cfg.lambda_sim * losses["contrastive"] + cfg.lambda_div * losses["divergence"])
        if self.uses_graph:
            if self.teacher is None:  # skipped: nothing to teach
                losses["graph"] = losses["mse"].new_zeros(())
            else:
                losses["graph"] = self.teacher.loss(x, z)
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
        unknown = set(state) - {"graph.reference", "graph.coords"}
        if unknown:
            raise ValueError(f"unknown objective state entries: {sorted(unknown)}")
        self.teacher = None
        if state:
            if not self.uses_graph:
                raise ValueError("the state holds a graph teacher, the config has none")
            self.teacher = DiffusionTeacher(state["graph.reference"], state["graph.coords"],
                                            self.latent_dim)
            if self.teacher.coords.shape[1] != self.config.graph_components:
                raise ValueError(
                    f"the saved teacher has {self.teacher.coords.shape[1]} components, the "
                    f"config asks for {self.config.graph_components}")
        self.fitted = True

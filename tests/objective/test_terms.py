"""The batch loss terms and the Objective that weighs them."""

from __future__ import annotations

import pytest
import torch

from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.objective.terms import contrastive, divergence


def test_seed_divergence_is_one_over_eps_for_dead_units_and_zero_for_one_sample():
    assert divergence(torch.zeros(8, 4)).item() == pytest.approx(1e8)
    assert divergence(torch.ones(1, 4)).item() == 0.0  # no variance of one sample: not NaN


def test_decorrelating_divergence_is_bounded_and_penalises_copies():
    torch.manual_seed(0)
    dead = torch.zeros(8, 4, requires_grad=True)
    value = divergence(dead, "std_hinge_decorrelate", eps=1e-4)
    assert value.item() == pytest.approx(1.0 - 1e-2, abs=1e-6)  # 1 - sqrt(eps), not 1e4
    value.backward()
    assert torch.isfinite(dead.grad).all()
    one = torch.randn(256, 1) * 2.0
    copies = one.repeat(1, 8)  # every dimension the same number: the measured collapse
    independent = torch.randn(256, 8) * 2.0
    assert divergence(copies, "std_hinge_decorrelate", 1e-4).item() > 1.0
    assert (divergence(independent, "std_hinge_decorrelate", 1e-4).item()
            < 0.1 * divergence(copies, "std_hinge_decorrelate", 1e-4).item())
    with pytest.raises(ValueError, match="unknown divergence form"):
        divergence(copies, "log_variance")


def test_contrastive_margin_one_never_fires_and_a_lower_margin_does():
    z = torch.rand(6, 8)  # non-negative, like ReLU'd embeddings
    assert contrastive(z, 1.0).item() == 0.0
    assert contrastive(z, 0.5).item() > 0.0
    assert contrastive(z[:1], 0.0).item() == 0.0


def test_objective_weighs_its_terms_into_the_total():
    torch.manual_seed(0)
    x, x_hat, z = torch.rand(8, 1, 32, 32), torch.rand(8, 1, 32, 32), torch.rand(8, 32)
    cfg = ObjectiveConfig(lambda_act=0.5, lambda_sim=0.25, contrastive_margin=0.1,
                          lambda_div=0.125)
    out = Objective(cfg)(x, x_hat, z)
    assert tuple(out) == Objective(cfg).names == ("total", "mse", "l1", "contrastive",
                                                  "divergence")
    expected = (out["mse"] + 0.5 * out["l1"] + 0.25 * out["contrastive"]
                + 0.125 * out["divergence"])
    torch.testing.assert_close(out["total"], expected)
    torch.testing.assert_close(out["mse"], ((x - x_hat) ** 2).mean())


def test_an_unfitted_graph_objective_says_so_and_reports_its_term():
    objective = Objective(ObjectiveConfig(graph_weight=1.0))
    assert objective.needs_fit and not objective.fitted
    assert objective.names[-1] == "graph"
    assert Objective().fitted  # nothing to fit
    with pytest.raises(ValueError, match="at most the latent size"):
        Objective(ObjectiveConfig(graph_components=33))


def test_config_rejects_bad_values_with_their_names():
    with pytest.raises(ValueError, match="divergence_form"):
        ObjectiveConfig(divergence_form="std_hinge")
    with pytest.raises(ValueError, match="non-negative"):
        ObjectiveConfig(lambda_div=-1.0)
    with pytest.raises(ValueError, match="unknown objective config fields"):
        ObjectiveConfig.from_dict({"lambda_corr": 0.1})

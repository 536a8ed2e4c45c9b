"""The PCA-balanced reconstruction loss and the correlation penalty, on known answers."""

from __future__ import annotations

import pytest
import torch

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.balance import (BalancedReconstruction,
                                                      correlation_penalty,
                                                      principal_directions)

SHAPE = (8, 8)


def _orthonormal(k: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q.T  # (k, d), orthonormal rows


def _patterns(stds=(3.0, 1.0, 0.03), n: int = 1500, seed: int = 1):
    """Patterns = mean + sum_k a_k u_k with std(a_k) = stds[k]; returns (patterns, u)."""
    d = SHAPE[0] * SHAPE[1]
    u = _orthonormal(len(stds), d)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, len(stds), generator=g, dtype=torch.float64) * torch.tensor(stds)
    x = 0.5 + a @ u
    return x.reshape(n, *SHAPE), u


def test_principal_directions_recovers_directions_and_variances():
    x, u = _patterns()
    basis, var = principal_directions(x, min_variance=1e-6, max_directions=3)
    assert basis.shape == (3, 64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=basis.dtype),
                               atol=1e-4, rtol=0)
    assert torch.allclose((basis * u.float()).sum(1).abs(), torch.ones(3), atol=1e-3)
    torch.testing.assert_close(var, torch.tensor([9.0, 1.0, 9e-4], dtype=var.dtype), rtol=0.15,
                               atol=0)


def test_directions_below_the_variance_fraction_are_dropped():
    x, _ = _patterns()  # fractions: 0.9, 0.1, 9e-5
    basis, var = principal_directions(x, min_variance=0.01, max_directions=8)
    assert basis.shape[0] == 2 and var.shape == (2,)
    basis, _ = principal_directions(x, min_variance=0.01, max_directions=1)
    assert basis.shape[0] == 1


def test_balanced_loss_weights_each_direction_up_to_the_first_variance():
    x, u = _patterns(stds=(3.0, 1.0, 0.3))  # variances 9, 1, 0.09: gains 1, 9, 100 (capped 50)
    loss = BalancedReconstruction(SHAPE, max_directions=4, min_variance=1e-3, max_gain=50.0)
    assert loss.set_from_patterns(x) == 3
    torch.testing.assert_close(loss.gains[:3], torch.tensor([1.0, 9.0, 50.0]), rtol=0.2, atol=0)
    assert loss.gains[3] == 1.0  # unused row

    target = torch.full((5, 1, *SHAPE), 0.5)
    d = SHAPE[0] * SHAPE[1]
    for k, gain in enumerate(loss.gains[:3].tolist()):
        err = (0.01 * u[k]).float().reshape(1, 1, *SHAPE).expand(5, 1, *SHAPE)
        mse = torch.mean(err ** 2)
        # MSE + the extra term == gain * MSE for an error along direction k
        assert float(mse + loss(target, target + err)) == pytest.approx(gain * float(mse),
                                                                        rel=1e-3)
    # an error orthogonal to every kept direction costs nothing extra
    other = _orthonormal(4, d)[3] - (_orthonormal(4, d)[3] @ u.T) @ u
    err = (0.01 * other / other.norm()).float().reshape(1, 1, *SHAPE)
    assert abs(float(loss(target[:1], target[:1] + err))) < 1e-9


def test_balanced_loss_is_zero_until_fitted_and_checks_its_inputs():
    loss = BalancedReconstruction(SHAPE)
    x = torch.rand(3, 1, *SHAPE)
    assert float(loss(x, x + 0.1)) == 0.0
    with pytest.raises(ValueError, match="fitted on 8x8"):
        loss(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="built for"):
        loss.set_from_patterns(torch.rand(10, 16, 16))
    bad = torch.rand(10, *SHAPE)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss.set_from_patterns(bad)
    with pytest.raises(ValueError, match="max_gain"):
        BalancedReconstruction(SHAPE, max_gain=0.5)


def test_large_pattern_sets_are_fitted_on_an_evenly_spaced_subset(monkeypatch):
    import napari_4dstem_autoencoder.model.balance as balance

    seen = []
    real = balance.principal_directions
    monkeypatch.setattr(balance, "principal_directions",
                        lambda p, *a: seen.append(p.shape[0]) or real(p, *a))
    monkeypatch.setattr(balance, "MAX_FIT_ELEMENTS", 64 * 100)  # 100 patterns of 8x8
    x, _ = _patterns(n=1000)
    assert BalancedReconstruction(SHAPE).set_from_patterns(x) == 2
    assert seen == [100]


def test_constant_patterns_keep_no_directions():
    loss = BalancedReconstruction(SHAPE)
    assert loss.set_from_patterns(torch.full((10, *SHAPE), 0.3)) == 0
    assert torch.all(loss.gains == 1.0)


def test_correlation_penalty_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 1, generator=g)
    same = torch.cat([a, 3 * a + 1], dim=1)
    assert float(correlation_penalty(same)) == pytest.approx(1.0, abs=1e-4)
    assert float(correlation_penalty(torch.cat([a, -a], 1))) == pytest.approx(1.0, abs=1e-4)
    independent = torch.randn(2000, 8, generator=g)
    assert float(correlation_penalty(independent)) < 0.002
    # scale-free: stretching one dimension changes nothing
    stretched = independent * torch.tensor([100.0] + [1.0] * 7)
    assert float(correlation_penalty(stretched)) == pytest.approx(
        float(correlation_penalty(independent)), rel=1e-4)
    # a dimension that does not vary counts as uncorrelated; too few samples give 0
    dead = torch.cat([a, torch.zeros_like(a)], dim=1)
    assert float(correlation_penalty(dead)) < 1e-6
    assert float(correlation_penalty(same[:2])) == 0.0


def test_balanced_preset_adds_buffers_not_parameters_and_uses_them_in_the_loss():
    model = Autoencoder(out_shape=(32, 32), config="balanced")
    assert model.num_parameters() == 3_914_404
    assert {"balance.basis", "balance.extra_weight"} <= set(model.state_dict())
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(64, 32, 32, generator=g) * torch.linspace(0, 1, 32)
    assert model.set_loss_balance(ref) >= 1
    x = torch.rand(4, 1, 32, 32, generator=g)
    x_hat, z = model.encode_decode(x)
    out = model.compute_loss(x, x_hat, z)
    assert float(out["balance"].detach()) > 0 and float(out["correlation"].detach()) > 0
    expected = (out["mse"] + out["balance"] + 1e-4 * out["l1"] + 5e-5 * out["contrastive"]
                + 1e-3 * out["divergence"] + 1e-2 * out["correlation"])
    torch.testing.assert_close(out["total"], expected)
    # `prior`, which `balanced` builds on, has neither term
    plain = Autoencoder(out_shape=(32, 32), config="prior")
    out = plain.compute_loss(x, x_hat, z)
    assert float(out["balance"]) == 0.0 and float(out["correlation"]) == 0.0
    with pytest.raises(ValueError, match="does not use"):
        plain.set_loss_balance(ref)

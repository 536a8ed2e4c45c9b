"""The count-based terms: the Poisson deviance, the inversion to counts, the thinned halves."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.objective.counts import CountScale, are_counts
from napari_4dstem_autoencoder.objective.terms import embedding_agreement, poisson_deviance


def test_deviance_is_zero_at_the_counts_and_its_expectation_is_least_at_the_true_rate():
    k = torch.tensor([0.0, 1.0, 3.0, 40.0])
    assert poisson_deviance(k, k).item() == pytest.approx(0.0, abs=1e-6)
    assert poisson_deviance(k, k + 0.5).item() > 0.0
    gen = torch.Generator().manual_seed(0)
    rate = torch.rand(4096, generator=gen) * 3.0 + 0.05  # dim pixels, as at low dose
    draws = torch.poisson(rate.expand(64, -1), generator=gen)
    expected = {c: poisson_deviance(draws, c * rate.expand(64, -1)).item()
                for c in (0.7, 0.9, 1.0, 1.1, 1.4)}
    assert min(expected, key=expected.get) == 1.0


def _dataset(counts: np.ndarray) -> Dataset4D:
    return Dataset4D(counts.reshape(4, 4, *counts.shape[-2:]))


def _counts(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.uniform(0.0, 30.0, size=(16, 16, 16))).astype(np.uint16)


@pytest.mark.parametrize("scaling", ["log", "sqrt", "none"])
def test_the_input_inverts_to_the_binned_counts(scaling):
    raw = _counts()
    prep = Preprocessor.fit(_dataset(raw), PreprocessConfig(scaling=scaling, detector_bin=2,
                                                            upper_percentile=100.0))
    x = torch.from_numpy(prep.transform_patterns(raw))
    counts = CountScale.from_preprocessor(prep).to_counts(x)
    binned = raw.reshape(16, 8, 2, 8, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(counts.numpy(), binned, atol=0.02)
    assert are_counts(counts)
    assert not are_counts(counts / 7.3)  # gain-normalised or simulated fractions


def _bound(config: ObjectiveConfig, raw: np.ndarray) -> tuple[Objective, torch.Tensor]:
    prep = Preprocessor.fit(_dataset(raw), PreprocessConfig(detector_bin=2))
    x = torch.from_numpy(prep.transform_patterns(raw)).unsqueeze(1)
    return Objective(config).bind(prep), x


def test_the_poisson_objective_uses_the_deviance_and_still_reports_the_mse():
    objective, x = _bound(ObjectiveConfig(reconstruction="poisson"), _counts())
    assert objective.names[-1] == "poisson"
    z = torch.rand(x.shape[0], 32)
    x_hat = (x * 0.9 + 0.05).requires_grad_(True)
    losses = objective(x, x_hat, z)
    assert set(losses) == set(objective.names)
    assert losses["poisson"].item() > 0.0 and losses["mse"].item() > 0.0
    rest = losses["total"] - losses["poisson"]
    mse_objective, _ = _bound(ObjectiveConfig(), _counts())
    assert rest.item() == pytest.approx(
        (mse_objective(x, x_hat, z)["total"] - losses["mse"]).item(), rel=1e-5)
    losses["total"].backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


def test_data_that_are_not_counts_fall_back_to_the_mse_with_a_warning(caplog):
    raw = _counts().astype(np.float32) / 7.3
    objective, x = _bound(ObjectiveConfig(reconstruction="poisson"), raw)
    with caplog.at_level(logging.WARNING):
        losses = objective(x, x * 0.5, torch.rand(x.shape[0], 32))
    assert "not electron counts" in caplog.text
    assert losses["poisson"].item() == 0.0
    assert losses["total"].item() == pytest.approx(
        (losses["mse"] + 1e-4 * losses["l1"] + 5e-5 * losses["contrastive"]
         + 2e-4 * losses["divergence"]).item(), rel=1e-5)


def test_the_poisson_term_needs_the_preprocessing_and_a_known_name():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(RuntimeError, match="bind"):
        Objective(ObjectiveConfig(reconstruction="poisson"))(x, x, torch.rand(4, 32))
    with pytest.raises(ValueError, match="unknown reconstruction"):
        ObjectiveConfig(reconstruction="gaussian")


def test_agreement_is_zero_for_identical_pairs_one_for_unrelated_ones_and_blind_to_scale():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(512, 16, generator=gen)
    assert embedding_agreement(z, z).item() == 0.0
    unrelated = embedding_agreement(z, torch.randn(512, 16, generator=gen)).item()
    assert unrelated == pytest.approx(1.0, abs=0.1)
    noisy = z + 0.3 * torch.randn(512, 16, generator=gen)
    assert 0.0 < embedding_agreement(z, noisy).item() < 0.1
    assert embedding_agreement(10 * z, 10 * noisy).item() == pytest.approx(
        embedding_agreement(z, noisy).item(), rel=1e-4)


def test_thinned_halves_split_every_electron_and_are_fed_at_twice_their_counts():
    raw = _counts()
    objective, x = _bound(ObjectiveConfig(reconstruction="poisson", halves_weight=1.0), raw)
    torch.manual_seed(0)
    inputs, halves = objective.training_input(x)
    n = x.shape[0] // 2
    assert inputs.shape == (2 * n, *x.shape[1:]) and halves.whole.shape[0] == n
    whole = objective.counts.to_counts(x[:n]).round()
    torch.testing.assert_close(halves.first + halves.second, whole)
    assert (halves.first >= 0).all() and (halves.second >= 0).all()
    share = halves.first.sum() / whole.sum()
    assert 0.45 < share.item() < 0.55  # each electron to either half with probability 1/2
    torch.testing.assert_close(inputs[:n], objective.counts.from_counts(2 * halves.first))


def test_the_halves_term_is_zero_for_a_model_that_embeds_both_halves_alike():
    objective, x = _bound(ObjectiveConfig(reconstruction="poisson", halves_weight=1.0), _counts())
    inputs, halves = objective.training_input(x)
    n = halves.whole.shape[0]
    z_half = torch.rand(n, 32)
    x_hat = inputs.clamp(0.05, 0.95)
    alike = objective(x, x_hat, torch.cat([z_half, z_half]), halves)
    assert objective.names[-1] == "halves" and alike["halves"].item() == 0.0
    apart = objective(x, x_hat, torch.cat([z_half, torch.rand(n, 32)]), halves)
    assert apart["halves"].item() > 0.5
    assert (apart["total"] - alike["total"]).item() == pytest.approx(
        apart["halves"].item() + (apart["divergence"] - alike["divergence"]).item() * 2e-4
        + (apart["l1"] - alike["l1"]).item() * 1e-4
        + (apart["contrastive"] - alike["contrastive"]).item() * 5e-5, rel=1e-4)


def test_each_half_is_scored_against_the_other():
    """A reconstruction equal to a half's own input is no better than one equal to the other
    half's: the noise of the half it saw cannot be learned."""
    objective, x = _bound(ObjectiveConfig(reconstruction="poisson", halves_weight=1.0), _counts())
    inputs, halves = objective.training_input(x)
    n = halves.whole.shape[0]
    z = torch.rand(2 * n, 32)
    own = objective(x, inputs, z, halves)["poisson"]
    swapped = objective(x, torch.cat([inputs[n:], inputs[:n]]), z, halves)["poisson"]
    assert swapped.item() < own.item()


def test_without_counts_the_network_sees_the_batch_itself():
    raw = _counts().astype(np.float32) / 7.3
    objective, x = _bound(ObjectiveConfig(halves_weight=1.0), raw)
    inputs, halves = objective.training_input(x)
    assert inputs is x and halves is None

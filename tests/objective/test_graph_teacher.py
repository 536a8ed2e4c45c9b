"""The graph teacher: diffusion-map targets that make connected clouds compact, and the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from napari_4dstem_autoencoder.analysis.clustering import adjusted_rand
from napari_4dstem_autoencoder.objective.graph_teacher import (
    RATE_FLOOR,
    DiffusionTeacher,
    diffusion_coordinates,
    likelihood_neighbours,
    local_log_rates,
    procrustes_mismatch,
)


def long_cloud_and_blob(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A long thin cloud (a grain drifting with thickness) and a compact blob 3 units from one
    end of it: k-means with k=2 cuts the long cloud in half, its neighbour graph does not."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 30, n)
    cloud = np.stack([t, np.zeros(n)], 1) + rng.normal(0, 0.2, (n, 2))
    blob = np.array([-3.0, 0.0]) + rng.normal(0, 0.2, (n // 3, 2))
    points = np.concatenate([cloud, blob])
    labels = np.r_[np.zeros(n, int), np.ones(n // 3, int)]
    return points, labels


def kmeans_ari(features: np.ndarray, labels: np.ndarray) -> float:
    found = KMeans(2, n_init=10, random_state=0).fit_predict(features)
    return adjusted_rand(labels, found)


def test_diffusion_coordinates_make_a_long_connected_cloud_one_cluster():
    points, labels = long_cloud_and_blob()
    assert kmeans_ari(points, labels) < 0.5  # k-means on the points cuts the long cloud
    coords = diffusion_coordinates(points, n_neighbours=10, diffusion_time=64, n_components=4)
    assert coords.shape == (len(points), 4)
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-12)
    assert kmeans_ari(coords, labels) == pytest.approx(1.0)


def test_diffusion_time_keeps_only_the_slow_modes():
    points, _ = long_cloud_and_blob()
    fractions = {}
    for t in (1, 64):
        var = diffusion_coordinates(points, 10, diffusion_time=t, n_components=8).var(axis=0)
        assert np.all(np.diff(var) <= 1e-15)  # sorted by spread
        fractions[t] = var / var.sum()
    # at t=1 the fast modes weigh nearly as much as the slow ones; at t=64 three carry it all
    assert fractions[1][:3].sum() < 0.5
    assert fractions[64][:3].sum() > 0.99


def test_procrustes_mismatch_sees_geometry_not_rotation_scale_or_offset():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(16, 4, generator=gen)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=gen))[0]
    same = 5.0 * torch.cat([target, torch.zeros(16, 2)], 1) @ rotation + 3.0
    assert float(procrustes_mismatch(same, target)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(16, 6, generator=gen)
    assert 0.1 < float(procrustes_mismatch(other, target)) <= 2.0


def test_procrustes_mismatch_weighs_a_direction_by_its_variance():
    # the target spreads along two directions (std 1 and 0.3); z keeps only the first
    t = torch.tensor([-1.0, 1.0]).repeat_interleave(8)
    s = torch.tensor([-1.0, 1.0]).repeat(8)
    target = torch.stack([t, 0.3 * s], 1)
    z = torch.stack([t, torch.zeros(16)], 1)
    # the best rotation keeps the shared direction: 2 - 2 * 1 / sqrt(1 + 0.3**2)
    expected = 2 - 2 / (1 + 0.3**2) ** 0.5
    assert float(procrustes_mismatch(z, target)) == pytest.approx(expected, rel=1e-4)


def test_teacher_targets_follow_the_nearest_reference_patterns():
    points, labels = long_cloud_and_blob()
    # embed the 2-D points as 32x32 "patterns" (a fixed random linear map keeps distances' order)
    gen = torch.Generator().manual_seed(1)
    lift = torch.linalg.qr(torch.randn(32 * 32, 2, generator=gen))[0]
    patterns = (torch.from_numpy(points).float() @ lift.T).reshape(-1, 32, 32)
    teacher = DiffusionTeacher.fit(patterns, n_neighbours=10, diffusion_time=64, n_components=4)
    assert teacher.projection.shape == (32, 4)
    torch.testing.assert_close(teacher.projection.T @ teacher.projection, torch.eye(4),
                               atol=1e-5, rtol=0)
    # new patterns near the blob and near the far end of the cloud get their side's targets
    new = torch.tensor([[-3.1, 0.1], [29.0, -0.1]]) @ lift.T
    targets = teacher.targets(new.reshape(2, 1, 32, 32))
    blob = teacher.coords[torch.from_numpy(labels == 1)].mean(0)
    cloud_end = teacher.coords[torch.from_numpy(points[:, 0] > 27)].mean(0)
    assert (targets[0] - blob).norm() < 0.2 * (targets[0] - cloud_end).norm()
    assert (targets[1] - cloud_end).norm() < 0.2 * (targets[1] - blob).norm()


def test_teacher_loss_pulls_free_embeddings_into_the_clusters():
    points, labels = long_cloud_and_blob()
    patterns = torch.zeros(len(points), 32, 32)
    patterns[:, 0, :2] = torch.from_numpy(points).float()
    teacher = DiffusionTeacher.fit(patterns, n_neighbours=10, diffusion_time=64, n_components=4)
    x = patterns[:, None]
    # embeddings that start as the raw geometry (cut in half by k-means) plus noise
    gen = torch.Generator().manual_seed(2)
    z = torch.cat([torch.from_numpy(points).float(), 0.1 * torch.randn(len(points), 30,
                                                                       generator=gen)], 1)
    z.requires_grad_(True)
    assert kmeans_ari(z.detach().numpy(), labels) < 0.5
    opt = torch.optim.Adam([z], lr=0.05)
    first = float(teacher.loss(x, z))
    for _ in range(300):
        opt.zero_grad()
        teacher.loss(x, z).backward()
        opt.step()
    assert float(teacher.loss(x, z)) < 0.1 * first
    projected = (z.detach() @ teacher.projection).numpy()
    assert kmeans_ari(projected, labels) == pytest.approx(1.0)


def test_teacher_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 3 patterns"):
        diffusion_coordinates(np.zeros((2, 4)), 10, 64, 4)
    with pytest.raises(ValueError, match="between 1 and the latent size 32"):
        DiffusionTeacher.fit(torch.rand(10, 32, 32), n_components=33)
    # 10 patterns, 15 neighbours asked: each is every other's neighbour, no slow mode to teach
    assert not DiffusionTeacher.fit(torch.rand(10, 32, 32), n_neighbours=15).has_structure
    points, _ = long_cloud_and_blob()
    patterns = torch.zeros(len(points), 32, 32)
    patterns[:, 0, :2] = torch.from_numpy(points).float()
    assert DiffusionTeacher.fit(patterns, n_neighbours=10).has_structure
    one = DiffusionTeacher.fit(torch.rand(10, 32, 32), n_neighbours=3, n_components=4)
    z = torch.rand(1, 32, requires_grad=True)
    loss = one.loss(torch.rand(1, 1, 32, 32), z)
    assert float(loss) == 0.0 and loss.requires_grad


def test_signal_basis_keeps_the_directions_above_the_noise():
    from napari_4dstem_autoencoder.objective.graph_teacher import signal_basis

    rng = np.random.default_rng(0)
    signal = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 64)) * 2.0
    noise = rng.normal(size=(400, 64))
    centre, basis = signal_basis(signal + noise, rng.normal(size=(400, 64)))
    assert basis.shape == (64, 3) and centre.shape == (64,)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-8)
    # ten directions of falling strength: the lower the noise, the more of them stand above it
    fading = rng.normal(size=(400, 10)) * np.logspace(1, -2, 10) @ rng.normal(size=(10, 64))
    kept = [signal_basis(fading + s * noise, s * rng.normal(size=(400, 64)))[1].shape[1]
            for s in (1.0, 0.1, 0.01)]
    assert kept == sorted(kept) and kept[0] < kept[2] <= 10, kept


def test_local_rates_are_neighbourhood_means_with_the_mean_pattern_as_one_more():
    """Two groups of 6 identical patterns far apart: each pattern's 6 nearest are its own
    group, so its rate is (6 x the group's distribution + the scan's mean) / 7; a pixel no
    pattern lit gets the floor."""
    first = np.array([8.0, 2.0, 0.0, 0.0])
    second = np.array([0.0, 1.0, 3.0, 0.0])
    counts = np.stack([first] * 6 + [second] * 6)
    flat = np.log1p(counts)
    rates = np.exp(local_log_rates(flat, counts, n_neighbours=6))
    mean = counts.sum(0) / counts.sum()
    np.testing.assert_allclose(rates[0, :3], (6 * first / 10 + mean)[:3] / 7)
    np.testing.assert_allclose(rates[-1, :3], (6 * second / 4 + mean)[:3] / 7)
    np.testing.assert_allclose(rates[:, 3], RATE_FLOOR)
    np.testing.assert_allclose(rates[:, :3].sum(1), 1.0)


def test_likelihood_neighbours_are_the_rates_that_make_a_pattern_most_probable():
    """Each pattern joins the others under whose rates its counts have the largest Poisson
    log-likelihood, never itself; a dim pattern of the first kind (few electrons, where a
    Euclidean distance would call it nearest the other dim one) joins its own kind."""
    rates = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.75, 0.15, 0.1], [0.1, 0.75, 0.15]])
    counts = np.array([[80.0, 10, 10], [10, 80, 10], [2, 0, 0], [0, 1, 0]])
    graph = likelihood_neighbours(counts, np.log(rates), n_neighbours=1).toarray()
    assert graph.sum(1).tolist() == [1, 1, 1, 1] and np.trace(graph) == 0
    assert graph[0].argmax() == 2 and graph[1].argmax() == 3
    assert graph[2].argmax() == 0 and graph[3].argmax() == 1
    assert np.linalg.norm(counts[2] - counts[3]) < np.linalg.norm(counts[2] - counts[0])


def test_a_likelihood_teacher_looks_targets_up_by_counts(monkeypatch):
    """Its lookup scores a pattern's electrons against the reference rates, so it needs them."""
    rates = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    coords = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    teacher = DiffusionTeacher(rates, coords, latent_dim=4, likelihood=True)
    counts = torch.tensor([[0.0, 0.0, 5.0], [7.0, 1.0, 0.0]])
    import napari_4dstem_autoencoder.objective.graph_teacher as graph_teacher
    monkeypatch.setattr(graph_teacher, "LOOKUP_NEIGHBOURS", 1)
    torch.testing.assert_close(teacher.targets(torch.zeros(2, 1, 1, 3), counts),
                               coords[[2, 0]])
    with pytest.raises(ValueError, match="electron counts"):
        teacher.targets(torch.zeros(2, 1, 1, 3))
    with pytest.raises(ValueError, match="no basis"):
        DiffusionTeacher(rates, coords, 4, torch.zeros(3), torch.eye(3), likelihood=True)


def test_count_graph_features_cluster_a_low_dose_scan_better_than_pixels():
    """The package's sample (5 classes) at 300 electrons a pattern: the pixel graph's
    neighbours are set by shot noise; the graph of the projections above the noise and the
    graph of Poisson likelihoods are not (measured: k-means on the teacher's coordinates 0.66
    on pixels, 0.78 denoised, 0.74 likelihood)."""
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig

    ds = make_sample_dataset(scan_shape=(32, 32), detector_shape=(64, 64), dose=300, seed=0)
    prep = Preprocessor.fit(ds, PreprocessConfig(detector_bin=2))
    raw = np.asarray(ds.data).reshape(-1, 64, 64)
    x = torch.from_numpy(prep.transform_patterns(raw))
    labels = np.asarray(ds.labels).ravel()
    found = {}
    for features in ("pixels", "denoised", "likelihood"):
        objective = Objective(ObjectiveConfig(graph_weight=1.0,
                                              graph_features=features)).bind(prep)
        objective.fit(x)
        coords = objective.teacher.coords.numpy()
        found[features] = adjusted_rand(
            labels, KMeans(5, n_init=10, random_state=0).fit_predict(coords))
        state = objective.state_dict()
        assert ("graph.basis" in state) == (features == "denoised")
        assert ("graph.log_rates" in state) == (features == "likelihood")
        restored = Objective(objective.config).bind(prep)
        restored.load_state_dict(state)  # a resumed run is taught the same targets
        counts = (objective.counts.to_counts(x[:8, None]).round()
                  if features == "likelihood" else None)
        torch.testing.assert_close(restored.teacher.targets(x[:8, None], counts),
                                   objective.teacher.targets(x[:8, None], counts))
        if features == "denoised":
            assert objective.teacher.basis.shape[1] < 32  # a few directions above the noise
    assert found["denoised"] > found["pixels"] + 0.05, found
    assert found["likelihood"] > found["pixels"] + 0.05, found


def test_the_default_teacher_falls_back_to_pixels_quietly_on_data_that_are_not_counts(caplog):
    """The default preset asks for the count likelihood on any data; simulated intensities
    (floats that do not invert to integers) get the pixel graph and one info line, no warning."""
    import logging

    import dask.array as da

    from napari_4dstem_autoencoder.data.dataset import Dataset4D
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.objective import Objective
    from napari_4dstem_autoencoder.training.presets import DEFAULT_PRESET, get_preset

    config = get_preset(DEFAULT_PRESET).objective
    assert config.graph_features == "likelihood"
    ds = make_sample_dataset(scan_shape=(8, 8), detector_shape=(32, 32), dose=300, seed=0)
    counts = np.asarray(ds.data).reshape(-1, 32, 32)
    found = {}
    for name, raw in (("counts", counts), ("floats", counts * 0.37 + 0.01)):
        prep = Preprocessor.fit(Dataset4D(da.from_array(raw.reshape(8, 8, 32, 32))),
                                PreprocessConfig())
        objective = Objective(config).bind(prep)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=Objective.__module__):
            objective.fit(torch.from_numpy(prep.transform_patterns(raw)))
        found[name] = objective.teacher.likelihood
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert warned == [], [r.getMessage() for r in warned]
    assert found == {"counts": True, "floats": False}
    assert any("graph teacher on pixels" in r.getMessage() for r in caplog.records)


def test_the_objective_scores_a_batch_through_the_likelihood_teachers_counts():
    """On count data the graph term looks the batch up by its electrons: a finite loss that
    gives the embedding a gradient."""
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig

    ds = make_sample_dataset(scan_shape=(8, 8), detector_shape=(32, 32), dose=300, seed=0)
    prep = Preprocessor.fit(ds, PreprocessConfig())
    x = torch.from_numpy(prep.transform_patterns(np.asarray(ds.data).reshape(-1, 32, 32)))
    objective = Objective(ObjectiveConfig(graph_weight=1.0, graph_features="likelihood"))
    objective.bind(prep).fit(x)
    assert objective.teacher.likelihood
    z = torch.rand(16, 32, requires_grad=True)
    losses = objective(x[:16, None], x[:16, None], z)
    losses["graph"].backward()
    assert torch.isfinite(losses["graph"]) and losses["graph"] > 0
    assert z.grad.abs().sum() > 0

"""Analysis functions pinned on data with known answers."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.analysis.clustering import (
    adjusted_rand,
    ClassMeans,
    class_mean_patterns,
    cluster_embeddings,
    effective_dimensions,
    linear_probe_ari,
    live_dimensions,
    match_labels,
    pca_kmeans_baseline,
    pca_scores,
    per_class_reconstruction_quality,
    project_2d,
    reconstruction_quality,
    relabel_by_size,
)
from napari_4dstem_autoencoder.data.dataset import Dataset4D


def blobs(n_per: int = 40, d: int = 8, k: int = 3, sep: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.normal(size=(truth.size, d))
    return x, truth


def disc_patterns(truth: np.ndarray, size: int = 32, noise: float = 0.05, seed: int = 0):
    """Patterns whose class sets the position of a bright disc (separable by construction)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = [(size / 2, size / 2), (size / 4, size / 4), (3 * size / 4, size / 3)]
    templates = np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2).astype(np.float32)
                          for cy, cx in centres])
    x = templates[truth] + noise * rng.normal(size=(truth.size, size, size)).astype(np.float32)
    return x.astype(np.float32), templates


# -- labels and scores -------------------------------------------------------------------

def test_adjusted_rand_is_one_for_a_permutation_and_low_for_chance():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=500)
    permuted = np.array([2, 0, 3, 1])[truth]
    assert adjusted_rand(truth, permuted) == pytest.approx(1.0)
    assert abs(adjusted_rand(truth, rng.integers(0, 4, size=500))) < 0.05


def test_adjusted_rand_mask_restricts_the_comparison():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0], [0, 0, 1, 0]])  # last column wrong
    mask = np.zeros_like(truth, dtype=bool)
    mask[:, :3] = True
    assert adjusted_rand(truth, pred) < 0.5
    assert adjusted_rand(truth, pred, mask=mask) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        adjusted_rand(truth, pred.ravel())


def test_relabel_by_size_orders_by_count_and_keeps_negatives():
    labels = np.array([5, 5, 9, 9, 9, -1, 2])
    assert relabel_by_size(labels).tolist() == [1, 1, 0, 0, 0, -1, 2]


# -- clustering --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["kmeans", "gmm", "spectral"])
def test_well_separated_blobs_are_recovered_with_the_scan_shape(method):
    x, truth = blobs(n_per=40, k=3)
    emb = x.reshape(10, 12, 8)  # a (Ry, Rx, D) embedding stack
    labels = cluster_embeddings(emb, 3, method=method, seed=0)
    assert labels.shape == (10, 12)
    assert np.issubdtype(labels.dtype, np.integer)
    assert adjusted_rand(truth.reshape(10, 12), labels) == pytest.approx(1.0)
    # numbered by decreasing size: equal sizes here, so every id is used once
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]


def two_bars(n_per: int, length: float = 20.0, gap: float = 3.0, seed: int = 0):
    """Two long parallel bars of points (a phase drifting with thickness, twice): their length
    is far larger than the gap between them."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], n_per)
    x = np.column_stack([rng.uniform(0, length, truth.size),
                         gap * truth + 0.2 * rng.normal(size=truth.size)])
    return np.hstack([x, 0.05 * rng.normal(size=(truth.size, 6))]), truth


def test_spectral_follows_elongated_clusters_that_kmeans_cuts_across():
    x, truth = two_bars(n_per=150)
    emb = x.reshape(15, 20, 8)
    kmeans = cluster_embeddings(emb, 2, method="kmeans", standardise=False)
    spectral = cluster_embeddings(emb, 2, method="spectral", standardise=False)
    assert spectral.shape == (15, 20)
    assert adjusted_rand(truth.reshape(15, 20), kmeans) < 0.2  # cut along the bars' length
    assert adjusted_rand(truth.reshape(15, 20), spectral) == pytest.approx(1.0)


def test_spectral_on_a_large_scan_fits_a_subset_and_votes_for_the_rest(monkeypatch):
    from sklearn.cluster import SpectralClustering

    from napari_4dstem_autoencoder.analysis import clustering

    fitted_sizes = []
    original = SpectralClustering.fit_predict

    def spy(self, x, *args, **kwargs):
        fitted_sizes.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(SpectralClustering, "fit_predict", spy)
    monkeypatch.setattr(clustering, "SPECTRAL_MAX_FIT", 300)
    x, truth = two_bars(n_per=600, seed=1)
    a = cluster_embeddings(x, 2, method="spectral", seed=4, standardise=False)
    assert fitted_sizes == [300]  # the graph saw the subset only
    assert adjusted_rand(truth, a) == pytest.approx(1.0)  # the vote labelled the rest right
    b = cluster_embeddings(x, 2, method="spectral", seed=4, standardise=False)
    assert np.array_equal(a, b)


def test_clustering_is_reproducible_for_a_seed():
    x, _ = blobs(n_per=30, k=4, sep=1.5, seed=3)  # overlapping: restarts matter
    a = cluster_embeddings(x, 4, seed=7)
    b = cluster_embeddings(x, 4, seed=7)
    assert np.array_equal(a, b)


def test_standardise_ignores_dead_units_instead_of_amplifying_their_noise():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 100)
    informative = truth[:, None] * 5.0 + 0.1 * rng.normal(size=(200, 1))
    dead = 1e-9 * rng.normal(size=(200, 30))  # ReLU units that barely move
    emb = np.hstack([informative, dead])
    labels = cluster_embeddings(emb, 2, standardise=True)
    assert adjusted_rand(truth, labels) == pytest.approx(1.0)


def test_standardise_equalises_scales():
    # dimension 0 separates the classes but is small; dimension 1 is large uninformative noise
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 150)
    x = np.column_stack([truth * 1.0 + 0.05 * rng.normal(size=300),
                         100.0 * rng.uniform(size=300)])
    assert adjusted_rand(truth, cluster_embeddings(x, 2, standardise=False)) < 0.2
    # standardised, the bimodal dimension has far lower within-cluster spread: recovered
    assert adjusted_rand(truth, cluster_embeddings(x, 2, standardise=True)) > 0.9


def test_standardise_can_also_promote_a_small_nuisance():
    # dimension 0: the classes, large and a little spread; dimension 1: a tiny but sharply
    # bimodal split unrelated to them (as a faint, clean nuisance direction in an embedding)
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 150)
    nuisance = rng.permutation(truth)
    x = np.column_stack([10.0 * truth + 2.0 * rng.normal(size=300),
                         0.2 * nuisance + 0.01 * rng.normal(size=300)])
    assert adjusted_rand(truth, cluster_embeddings(x, 2, standardise=False)) > 0.9
    scaled = cluster_embeddings(x, 2, standardise=True)
    assert adjusted_rand(truth, scaled) < 0.1 and adjusted_rand(nuisance, scaled) > 0.9


def test_clustering_rejects_bad_input():
    x, _ = blobs(n_per=5)
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_embeddings(x, 100)
    with pytest.raises(ValueError, match="unknown clustering method.*'spectral'"):
        cluster_embeddings(x, 2, method="dbscan")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cluster_embeddings(bad, 2)
    with pytest.raises(ValueError, match="shape"):
        cluster_embeddings(np.zeros(10), 2)


# -- baseline ----------------------------------------------------------------------------

def test_pca_kmeans_baseline_recovers_disc_positions():
    truth = np.repeat(np.arange(3), 30)
    patterns, _ = disc_patterns(truth)
    labels = pca_kmeans_baseline(patterns.reshape(9, 10, 32, 32), 3, n_components=10)
    assert labels.shape == (9, 10)
    assert adjusted_rand(truth.reshape(9, 10), labels) == pytest.approx(1.0)


def test_baseline_matches_the_published_simulation_figures(sim_three_region_path):
    # sim/README.md: k-means on PCA(10) of log(1 + counts) -> ARI 0.919 all, 1.000 core
    with h5py.File(sim_three_region_path, "r") as f:
        counts = f["data_counts"][()]
        truth = f["labels"][()]
        core = f["boundary_distance"][()] >= 4.0
    x = np.log1p(counts)
    x = (x - x.min()) / (x.max() - x.min())
    labels = pca_kmeans_baseline(x, 3, n_components=10, seed=0)
    assert adjusted_rand(truth, labels, mask=core) == pytest.approx(1.0)
    assert adjusted_rand(truth, labels) == pytest.approx(0.919, abs=0.01)


def low_rank_patterns(n: int = 240, size: int = 12, seed: int = 0):
    """Patterns = mean + three fixed images with decreasing weights + a little noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, size * size))
    weights = rng.normal(size=(n, 3)) * np.array([5.0, 2.0, 1.0])
    x = 3.0 + weights @ basis + 0.05 * rng.normal(size=(n, size * size))
    return x.reshape(n, size, size).astype(np.float32), weights


def test_pca_scores_recover_the_generating_components_exactly_and_streamed():
    patterns, weights = low_rank_patterns()
    scan = patterns.reshape(12, 20, 12, 12)
    exact, explained = pca_scores(scan, n_components=5)
    assert exact.shape == (12, 20, 5) and exact.dtype == np.float32
    assert explained.shape == (5,) and explained[:3].sum() > 0.99 and explained[3] < 0.01
    # each leading score is (up to sign) a linear function of the generating weights
    flat = exact.reshape(-1, 5)
    for c in range(3):
        fit = np.linalg.lstsq(np.c_[weights, np.ones(len(weights))], flat[:, c], rcond=None)
        residual = flat[:, c] - np.c_[weights, np.ones(len(weights))] @ fit[0]
        assert residual.std() < 0.02 * flat[:, c].std()
    # a lazily read scan too large for the in-memory limit is fitted incrementally, in chunks
    ds = Dataset4D(da.from_array(scan, chunks=(3, 20, 12, 12)))
    streamed, explained_s = pca_scores(ds, n_components=5, chunk_size=40, max_in_memory_bytes=0)
    assert streamed.shape == (12, 20, 5)
    for c in range(3):
        r = np.corrcoef(exact[..., c].ravel(), streamed[..., c].ravel())[0, 1]
        assert abs(r) > 0.999
    np.testing.assert_allclose(explained_s[:3], explained[:3], atol=0.01)


def test_pca_scores_of_a_dataset_are_those_of_its_preprocessed_patterns():
    class Halver:
        def transform_patterns(self, raw):
            return np.asarray(raw, dtype=np.float32)[:, ::2, ::2]

    patterns, _ = low_rank_patterns(n=60, size=12)
    ds = Dataset4D(da.from_array(patterns.reshape(6, 10, 12, 12), chunks=(2, 10, 12, 12)))
    scores, _ = pca_scores(ds, n_components=4, preprocessor=Halver(), chunk_size=20)
    expected, _ = pca_scores(patterns[:, ::2, ::2].reshape(6, 10, 6, 6), n_components=4)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # the baseline is k-means on exactly these scores
    truth = np.repeat(np.arange(3), 30)
    discs, _ = disc_patterns(truth)
    from sklearn.cluster import KMeans

    direct = KMeans(3, n_init=10, random_state=0).fit_predict(pca_scores(discs, 10)[0])
    assert adjusted_rand(direct, pca_kmeans_baseline(discs, 3)) == pytest.approx(1.0)


def test_pca_scores_reject_bad_input():
    with pytest.raises(ValueError, match="NaN or Inf"):
        pca_scores(np.full((4, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, Qy, Qx\)"):
        pca_scores(np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="no patterns"):
        pca_scores(np.zeros((0, 8, 8), dtype=np.float32))


def test_match_labels_renames_clusters_to_their_partners_without_changing_the_partition():
    reference = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    permuted = np.array([2, 2, 2, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(match_labels(reference, permuted), reference)
    # one position moved, and a fourth cluster with no partner: it gets the next free id
    other = np.array([5, 5, 7, 1, 1, 1, 3, 3, 9]).reshape(3, 3)
    matched = match_labels(reference, other)
    assert matched.shape == (3, 3)
    np.testing.assert_array_equal(matched.ravel()[[0, 1, 3, 4, 5, 6, 7]], [0, 0, 1, 1, 1, 2, 2])
    assert set(matched.ravel()[[2, 8]]) == {3, 4}
    assert adjusted_rand(other, matched) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        match_labels(reference, permuted[:4])


# -- class means -------------------------------------------------------------------------

def test_class_mean_patterns_from_arrays_and_chunked_dataset_agree():
    truth = np.repeat(np.arange(3), 24)
    patterns, templates = disc_patterns(truth, noise=0.02)
    means, counts = class_mean_patterns(patterns, truth, return_counts=True)
    assert means.shape == (3, 32, 32)
    assert counts.tolist() == [24, 24, 24]
    np.testing.assert_allclose(means, templates, atol=0.03)
    expected = np.stack([patterns[truth == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)

    # a (Ry, Rx) scan read lazily in chunks of two scan rows
    ds = Dataset4D(da.from_array(patterns.reshape(8, 9, 32, 32), chunks=(3, 9, 32, 32)))
    lab_map = truth.reshape(8, 9)
    chunked = class_mean_patterns(ds, lab_map, chunk_size=18)
    np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=1e-6)


def test_class_mean_patterns_ignore_negative_labels_and_report_empty_classes():
    patterns = np.stack([np.full((8, 8), v, dtype=np.float32) for v in (1, 2, 3, 100)])
    labels = np.array([0, 0, 2, -1])
    means, counts = class_mean_patterns(patterns, labels, n_clusters=4, return_counts=True)
    assert counts.tolist() == [2, 0, 1, 0]
    assert means[0, 0, 0] == pytest.approx(1.5)
    assert means[2, 0, 0] == pytest.approx(3.0)
    assert np.all(means[1] == 0) and np.all(means[3] == 0)
    with pytest.raises(ValueError, match="positions"):
        class_mean_patterns(patterns, labels[:3])


@pytest.mark.parametrize("in_memory", [True, False], ids=["exact_pca", "incremental_pca"])
def test_pca_scores_feed_class_means_from_the_same_read(in_memory, monkeypatch):
    from napari_4dstem_autoencoder.analysis import clustering

    class Halver:
        def transform_patterns(self, raw):
            return np.asarray(raw, dtype=np.float32)[:, ::2, ::2]

    truth = np.repeat(np.arange(3), 24)
    patterns, _ = disc_patterns(truth, noise=0.02)
    ds = Dataset4D(da.from_array(patterns.reshape(8, 9, 32, 32), chunks=(3, 9, 32, 32)))
    lab_map = np.roll(truth, 5).reshape(8, 9)  # classes that straddle the chunks
    reads, seen = [], []
    real = clustering._pattern_chunks

    def counting(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(clustering, "_pattern_chunks", counting)
    means = ClassMeans(lab_map, 4)

    def visit(start, block):
        seen.extend(range(start, start + len(block)))
        means.add(start, block)

    scores, _ = pca_scores(ds, 5, preprocessor=Halver(), chunk_size=18,
                           max_in_memory_bytes=2**30 if in_memory else 0, on_block=visit)
    assert len(reads) == (1 if in_memory else 2)  # the incremental fit reads twice
    assert seen == list(range(72))  # each pattern once, in scan order, on the first read only
    assert scores.shape == (8, 9, 5)
    expected = class_mean_patterns(patterns, lab_map, n_clusters=4, preprocessor=Halver())
    np.testing.assert_allclose(means.result(), expected, rtol=1e-6, atol=1e-7)
    assert means.counts.tolist() == [24, 24, 24, 0]


def test_class_means_refuse_a_partial_or_overlong_scan():
    means = ClassMeans(np.zeros(6, int))
    means.add(0, np.ones((4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="6 positions but 4 patterns were added"):
        means.result()
    with pytest.raises(ValueError, match="6 positions but there are more patterns"):
        means.add(4, np.ones((3, 8, 8), dtype=np.float32))


def test_class_mean_patterns_apply_a_preprocessor_per_chunk():
    class Doubler:
        def transform_patterns(self, raw):
            return np.asarray(raw, dtype=np.float32) * 2

    patterns = np.ones((6, 8, 8), dtype=np.float32)
    means = class_mean_patterns(patterns, np.zeros(6, int), preprocessor=Doubler(), chunk_size=4)
    assert np.allclose(means, 2.0)


# -- projection --------------------------------------------------------------------------

def test_pca_projection_preserves_distances_of_planar_data():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(50, 2)) * [3.0, 1.0]
    basis, _ = np.linalg.qr(rng.normal(size=(10, 2)))
    emb = plane @ basis.T + 5.0
    proj = project_2d(emb.reshape(5, 10, 10), standardise=False)
    assert proj.shape == (50, 2)

    def dists(a):
        return np.linalg.norm(a[:, None] - a[None], axis=-1)

    np.testing.assert_allclose(dists(proj), dists(plane), atol=1e-4)


def test_umap_projection_or_a_clear_error():
    x, _ = blobs(n_per=20)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            project_2d(x, method="umap")
    else:
        assert project_2d(x, method="umap").shape == (60, 2)
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(x, method="tsne")


# -- reconstruction quality and latent usage ---------------------------------------------

def test_per_class_quality_matches_the_definition():
    rng = np.random.default_rng(0)
    inputs = rng.uniform(size=(20, 16, 16))
    recon = inputs.copy()
    labels = np.repeat([0, 1], 10)
    recon[labels == 1] += 0.1  # constant offset -> MSE 0.01 -> PSNR 20 dB at data_range 1
    q = per_class_reconstruction_quality(inputs, recon, labels, data_range=1.0)
    assert set(q) == {0, 1}
    assert q[0][0] == np.inf and q[0][1] == pytest.approx(1.0)
    assert q[1][0] == pytest.approx(20.0, abs=1e-6)
    assert q[1][1] < 1.0
    # data_range is explicit: the same error at range 2 reads 6.02 dB better
    assert per_class_reconstruction_quality(inputs, recon, labels, data_range=2.0)[1][0] == \
        pytest.approx(20.0 + 20 * np.log10(2.0), abs=1e-6)
    psnr_all, _ = reconstruction_quality(inputs, recon)
    assert psnr_all == pytest.approx(10 * np.log10(1 / 0.005), abs=1e-6)


def test_live_and_effective_dimensions():
    rng = np.random.default_rng(0)
    z = np.zeros((400, 32))
    z[:, :5] = rng.normal(size=(400, 5))
    z[:, 5:8] = 1e-6 * rng.normal(size=(400, 3))  # negligible
    assert live_dimensions(z, threshold=0.01) == 5
    assert live_dimensions(np.zeros((10, 32))) == 0
    assert effective_dimensions(z) == pytest.approx(5.0, rel=0.15)
    # a collapsed latent: 32 live units that are all functions of one scalar
    s = rng.uniform(size=(400, 1))
    collapsed = np.maximum(0.0, s * rng.uniform(0.5, 2.0, size=32))
    assert live_dimensions(collapsed) == 32
    assert effective_dimensions(collapsed) == pytest.approx(1.0, abs=1e-6)


def test_linear_probe_finds_a_class_that_kmeans_misses_and_not_one_that_is_absent():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 200)
    z = np.zeros((400, 6))
    z[:, 0] = 10 * rng.normal(size=400)  # a large nuisance direction, the same for both classes
    z[:, 1] = 0.5 * truth + 0.05 * rng.normal(size=400)  # the class: small but clean
    z[:, 2:5] = rng.normal(size=(400, 3))
    kmeans = adjusted_rand(truth, cluster_embeddings(z, 2, standardise=False))
    assert kmeans < 0.1  # k-means splits along the nuisance direction
    assert linear_probe_ari(z, truth) > 0.95  # but the information is there
    # labels that the embedding does not carry: the probe is at chance
    shuffled = rng.permutation(truth)
    assert abs(linear_probe_ari(z, shuffled)) < 0.05
    # a constant embedding carries nothing
    assert linear_probe_ari(np.zeros((400, 6)), truth) == pytest.approx(0.0)


def test_linear_probe_rejects_unusable_labels():
    z = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe_ari(z, np.zeros(20, int))
    with pytest.raises(ValueError, match="at least 5 per class"):
        linear_probe_ari(z, np.r_[np.zeros(17, int), np.ones(3, int)])
    with pytest.raises(ValueError, match="labels have 19 positions"):
        linear_probe_ari(z, np.zeros(19, int))
    # negative labels are left out, exactly as if those positions were not there
    lab = np.r_[np.zeros(8, int), np.ones(8, int), -np.ones(4, int)]
    z[8:16, 0] += 5.0  # class 1 is separable
    assert linear_probe_ari(z, lab) == pytest.approx(linear_probe_ari(z[:16], lab[:16]))
    assert linear_probe_ari(z[:16], lab[:16]) == pytest.approx(1.0)


def test_reconstruction_quality_has_known_answers():
    a = np.zeros((2, 32, 32))
    psnr, ssim = reconstruction_quality(a, a + 0.1, data_range=1.0)
    assert psnr == pytest.approx(20.0)  # MSE 0.01 over a data range of 1
    psnr, ssim = reconstruction_quality(a + 0.1, a + 0.1)
    assert np.isinf(psnr) and ssim == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_quality(a, a[:1])

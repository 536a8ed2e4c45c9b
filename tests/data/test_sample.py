"""The synthetic sample: deterministic, labelled, diffraction-like, separable but not trivially."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from napari_4dstem_autoencoder.data.sample import LABEL_NAMES, make_sample_arrays, make_sample_dataset


def test_default_sample_dataset(tmp_path):
    ds = make_sample_dataset()
    assert ds.shape == (64, 64, 64, 64) and ds.dtype == np.uint16
    assert ds.labels.shape == (64, 64)
    assert ds.metadata["label_names"] == LABEL_NAMES and set(np.unique(ds.labels)) == set(LABEL_NAMES)
    assert ds.calibration.scan_unit == "nm" and ds.calibration.detector_unit == "mrad"
    counts = np.asarray(ds.data)
    # Poisson counts with the requested dose per pattern (a little falls off the detector)
    per_pattern = counts.reshape(4096, -1).sum(axis=1)
    assert 1800 < per_pattern.mean() <= 2000 * 1.01
    # vacuum: all signal in the central disc; crystal: spots outside it
    vac = counts[ds.labels == 0].astype(float)
    grain = counts[ds.labels == 1].astype(float)
    centre = np.s_[:, 27:37, 27:37]
    assert vac[centre].sum() / vac.sum() > 0.97
    assert grain[centre].sum() / grain.sum() < 0.9


def test_deterministic_for_a_seed_and_noisy_across_seeds():
    a = make_sample_arrays((16, 16), (32, 32), seed=1)
    b = make_sample_arrays((16, 16), (32, 32), seed=1)
    c = make_sample_arrays((16, 16), (32, 32), seed=2)
    np.testing.assert_array_equal(a["counts"], b["counts"])
    assert not np.array_equal(a["counts"], c["counts"])
    assert a["counts"].shape == (16, 16, 32, 32)
    # dose scales the counts
    d = make_sample_arrays((16, 16), (32, 32), dose=200.0, seed=1)
    assert 5 < a["counts"].sum() / d["counts"].sum() < 15


def test_strain_gradient_moves_spots_outwards():
    arr = make_sample_arrays(seed=0)
    strained = arr["labels"] == 3
    strain = arr["strain"][strained]
    assert strain.min() < 0.2 and strain.max() > 0.8  # a gradient, not a constant


def test_classes_separable_by_pca_kmeans_but_not_perfectly():
    arr = make_sample_arrays(seed=0)
    x = np.log1p(arr["counts"].reshape(4096, -1).astype(np.float32))
    pred = KMeans(5, n_init=4, random_state=0).fit_predict(PCA(10, random_state=0).fit_transform(x))
    ari = adjusted_rand_score(arr["labels"].ravel(), pred)
    assert 0.7 < ari < 0.99

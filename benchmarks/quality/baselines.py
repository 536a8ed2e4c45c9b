"""What a microscopist can already do with a scan, scored like the presets.

Per scan and seed (the seed fixes the PCA and clustering restarts):

- ``PCA k-means bin B`` (B = 1, 2, 4): PCA(10) of the log-scaled, normalised patterns binned
  B x B on the detector (the package's ``Preprocessor``, as the network's input), k-means on
  the raw scores (``analysis.clustering.pca_kmeans_baseline``);
- ``best PCA k-means``: the best of those three bins for that seed (by ARI on all positions),
  what a user who tries the three binnings and keeps the best gets;
- ``NMF k-means``: scikit-learn NMF (classes + 2 components, ``init="nndsvda"``, 200
  iterations: 400 lowered the error by 0.1 % for twice the time) of the
  non-negative linear counts binned 2 x 2 and scaled to [0, 1] (no log), then k-means on the
  standardised loadings: the HyperSpy/pyxem practice of a decomposition, then clustering of
  its loadings;
- ``PCA spectral``: spectral clustering of the PCA(10) scores at bin 2 on a nearest-neighbour
  graph (``analysis.clustering``), which follows elongated clusters k-means cuts.

Every row has the metrics :func:`scores` gives. Imported by ``run.py``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from napari_4dstem_autoencoder.analysis.clustering import (
    adjusted_rand,
    cluster_embeddings,
    match_labels,
    pca_kmeans_baseline,
    pca_scores,
)
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor

PCA_COMPONENTS = 10
PCA_BINS = (1, 2, 4)
BEST_PCA = "best PCA k-means"
NMF = "NMF k-means"
SPECTRAL = "PCA spectral"
#: every baseline method, in the order the summary prints them
METHODS = [*(f"PCA k-means bin {b}" for b in PCA_BINS), BEST_PCA, NMF, SPECTRAL]
#: the methods a preset is measured against (the three bins are in BEST_PCA)
REFERENCES = [BEST_PCA, NMF, SPECTRAL]


def scores(scan, labels: np.ndarray) -> dict[str, float]:
    """ARI on all positions and on the core, and the recall of the rarest class after
    Hungarian matching of the clusters to the classes (``rare_recall``)."""
    truth = scan.labels
    matched = match_labels(truth, labels)
    rare = truth == scan.rarest
    core = scan.core if scan.core.any() else None
    return {"ari": adjusted_rand(truth, labels),
            "ari_core": adjusted_rand(truth, labels, mask=core) if core is not None else None,
            "rare_recall": float(np.mean(matched[rare] == scan.rarest))}


def patterns(scan, config: PreprocessConfig) -> np.ndarray:
    """Every pattern of the scan, preprocessed: (Ry, Rx, H, W) float32."""
    prep = Preprocessor.fit(scan.dataset, config)
    view = prep.scan_view(scan.dataset)
    x = prep.transform_patterns(view.patterns(np.arange(view.n_patterns)))
    return x.reshape(*scan.labels.shape, *x.shape[-2:])


def log_config(detector_bin: int) -> PreprocessConfig:
    return PreprocessConfig(scaling="log", normalise=True, detector_bin=detector_bin)


def nmf_labels(scan, seed: int) -> np.ndarray:
    from sklearn.decomposition import NMF as SkNMF
    from sklearn.exceptions import ConvergenceWarning

    x = patterns(scan, PreprocessConfig(scaling="none", normalise=True, detector_bin=2))
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1]).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loadings = SkNMF(n_components=scan.n_classes + 2, init="nndsvda", max_iter=200,
                         random_state=seed).fit_transform(flat)
    return cluster_embeddings(loadings.reshape(*scan.labels.shape, -1), scan.n_classes,
                              "kmeans", seed, standardise=True)


def baseline_rows(scan, seed: int) -> list[dict[str, Any]]:
    """One row per method of :data:`METHODS` for this scan and seed."""
    k = scan.n_classes
    rows: list[dict[str, Any]] = []

    def row(method: str, labels: np.ndarray, t0: float, **extra: Any) -> dict[str, Any]:
        out = {"set": scan.name, "method": method, "seed": seed, **scores(scan, labels),
               "fit_s": time.perf_counter() - t0, **extra}
        rows.append(out)
        return out

    pca_rows, inputs = [], {}
    for b in PCA_BINS:
        t0 = time.perf_counter()
        inputs[b] = patterns(scan, log_config(b))
        pca_rows.append(row(f"PCA k-means bin {b}",
                            pca_kmeans_baseline(inputs[b], k, PCA_COMPONENTS, seed=seed), t0,
                            detector_bin=b))
    best = max(pca_rows, key=lambda r: r["ari"])
    rows.append({**best, "method": BEST_PCA})
    t0 = time.perf_counter()
    row(NMF, nmf_labels(scan, seed), t0, detector_bin=2)
    t0 = time.perf_counter()
    pcs, _ = pca_scores(inputs[2], PCA_COMPONENTS, seed=seed)
    row(SPECTRAL, cluster_embeddings(pcs, k, "spectral", seed, standardise=False), t0,
        detector_bin=2)
    return rows

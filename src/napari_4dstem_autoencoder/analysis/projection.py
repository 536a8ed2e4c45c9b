"""Feature preparation and 2-D projections of embeddings (PCA; UMAP when umap-learn is installed)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.decomposition import PCA

ProjectionMethod = Literal["pca", "umap"]

#: a dimension whose standard deviation is below this fraction of the largest one is "dead"
DEAD_FRACTION = 1e-3


def prepare_features(features: np.ndarray, standardise: bool = True) -> np.ndarray:
    """(N, D) float64 features, checked finite; optionally standardised.

    Standardising divides each dimension by its standard deviation, which would blow up
    the round-off noise of (near-)dead ReLU units; those dimensions (std below
    ``DEAD_FRACTION`` of the largest) are dropped first. If every dimension is dead the
    centred features are returned unscaled (all points then coincide).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"no features to use (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or Inf values")
    if not standardise:
        return x
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    top = std.max()
    if top <= 0:
        return x
    live = std > DEAD_FRACTION * top
    return x[:, live] / std[live]


def project_2d(embeddings: np.ndarray, method: ProjectionMethod = "pca", seed: int = 0,
               standardise: bool = True) -> np.ndarray:
    """Project ``(N, D)`` or ``(Ry, Rx, D)`` embeddings to ``(N, 2)`` points.

    ``"pca"``: the first two principal components (scikit-learn). ``"umap"``: UMAP
    (umap-learn, optional; a clear ImportError names the package when it is missing).
    Fewer than two usable dimensions are padded with zeros so the result is always (N, 2).
    """
    emb = np.asarray(embeddings)
    if emb.ndim < 2:
        raise ValueError(f"embeddings must be (N, D) or (Ry, Rx, D), got shape {emb.shape}")
    x = prepare_features(emb.reshape(-1, emb.shape[-1]), standardise=standardise)
    n = x.shape[0]
    if method == "pca":
        nc = min(2, n, x.shape[1])
        out = np.zeros((n, 2))
        if nc > 0 and n > 1:
            out[:, :nc] = PCA(n_components=nc, random_state=seed).fit_transform(x)
        return out.astype(np.float32)
    if method == "umap":
        try:
            import umap  # optional dependency
        except ImportError as exc:
            raise ImportError(
                "UMAP projection needs the optional package umap-learn: "
                "pip install 'napari-4dstem-autoencoder[umap]' (or pip install umap-learn)"
            ) from exc
        if n < 4:
            raise ValueError(f"UMAP needs at least 4 points, got {n}")
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)
    raise ValueError(f"unknown projection method {method!r}; choose 'pca' or 'umap'")

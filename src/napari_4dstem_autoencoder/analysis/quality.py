"""Reconstruction quality (PSNR/SSIM, scikit-image) and how many latent dimensions are used."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _stack(a: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim < 3:
        raise ValueError(f"{what} must be patterns shaped (..., Qy, Qx), got shape {x.shape}")
    return x.reshape(-1, *x.shape[-2:])


def reconstruction_quality(inputs: np.ndarray, recon: np.ndarray,
                           data_range: float = 1.0) -> tuple[float, float]:
    """(PSNR in dB, mean SSIM) of reconstructions against their inputs.

    Patterns are ``(..., Qy, Qx)``. PSNR is of the pooled mean squared error (``inf`` for a
    perfect reconstruction); SSIM is averaged over patterns. ``data_range`` is explicit
    (1.0 for network inputs in [0, 1]) so the figures do not depend on the data's extremes.
    """
    x, y = _stack(inputs, "inputs"), _stack(recon, "recon")
    if x.shape != y.shape:
        raise ValueError(f"inputs {x.shape} and reconstructions {y.shape} differ in shape")
    if min(x.shape[-2:]) < 7:
        raise ValueError(f"patterns of {x.shape[-2]}x{x.shape[-1]} are too small for SSIM (7x7 window)")
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(x, y, data_range=data_range))
    # channel_axis=0 treats each pattern as a channel: the mean of per-pattern SSIM
    ssim = float(structural_similarity(x, y, data_range=data_range, channel_axis=0))
    return psnr, ssim


def per_class_reconstruction_quality(inputs: np.ndarray, recon: np.ndarray, labels: np.ndarray,
                                     data_range: float = 1.0) -> dict[int, tuple[float, float]]:
    """``{class: (PSNR, SSIM)}`` for every class in ``labels`` (negative labels ignored).

    ``inputs`` and ``recon`` are ``(N, Qy, Qx)`` or ``(Ry, Rx, Qy, Qx)``; ``labels`` has the
    matching leading shape.
    """
    x, y = _stack(inputs, "inputs"), _stack(recon, "recon")
    lab = np.asarray(labels).ravel()
    if lab.size != x.shape[0]:
        raise ValueError(f"labels have {lab.size} positions but there are {x.shape[0]} patterns")
    out: dict[int, tuple[float, float]] = {}
    for c in np.unique(lab[lab >= 0]):
        m = lab == c
        out[int(c)] = reconstruction_quality(x[m], y[m], data_range=data_range)
    return out


def _flat(embeddings: np.ndarray) -> np.ndarray:
    z = np.asarray(embeddings, dtype=np.float64)
    if z.ndim < 2:
        raise ValueError(f"embeddings must be (N, D) or (Ry, Rx, D), got shape {z.shape}")
    z = z.reshape(-1, z.shape[-1])
    if not np.all(np.isfinite(z)):
        raise ValueError("embeddings contain NaN or Inf values")
    return z


def live_dimensions(embeddings: np.ndarray, threshold: float = 0.01) -> int:
    """Latent dimensions whose standard deviation over positions is non-negligible.

    A dimension is live when its std exceeds ``threshold`` times the largest dimension's std
    (and is above zero). Dead ReLU units (constant 0) and near-constant units do not count.
    Note that a collapsed latent (every dimension a function of one scalar) still shows many
    live dimensions: see :func:`effective_dimensions` for that.
    """
    z = _flat(embeddings)
    std = z.std(axis=0)
    top = std.max(initial=0.0)
    if top <= 0:
        return 0
    return int(np.count_nonzero(std > threshold * top))


def effective_dimensions(embeddings: np.ndarray) -> float:
    """Participation ratio of the embedding covariance: ``(sum λ)^2 / sum λ^2``.

    1 when all variation lies along one direction (the seed's collapsed latent), D when it is
    spread evenly over D uncorrelated dimensions; 0 for constant embeddings.
    """
    z = _flat(embeddings)
    if z.shape[0] < 2:
        return 0.0
    eig = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])), 0, None)
    total = eig.sum()
    if total <= 0:
        return 0.0
    return float(total**2 / np.sum(eig**2))


def linear_probe_ari(embeddings: np.ndarray, labels: np.ndarray, folds: int = 5,
                     seed: int = 0) -> float:
    """How much of the ground truth a *linear* read-out of the embeddings recovers.

    Linear discriminant analysis (scikit-learn) is trained on ``folds - 1`` folds and predicts
    the held-out fold; the adjusted Rand index of those out-of-fold predictions is returned.
    Unlike clustering, this uses the labels, so it separates two failures: a low probe means
    the information is not in the embedding; a high probe with a low clustering ARI means it
    is there but the clusters are not where k-means looks (scaling, elongated classes).
    Negative labels are ignored; every class needs at least ``folds`` positions.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import adjusted_rand_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z = _flat(embeddings)
    y = np.asarray(labels).ravel()
    if y.size != z.shape[0]:
        raise ValueError(f"labels have {y.size} positions but there are {z.shape[0]} embeddings")
    keep = y >= 0
    z, y = z[keep], y[keep]
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError("the probe needs at least two classes")
    if counts.min() < folds:
        raise ValueError(f"class {classes[counts.argmin()]} has {counts.min()} positions; "
                         f"the probe needs at least {folds} per class")
    live = z.std(axis=0) > 0
    if not live.any():  # a constant embedding carries nothing: every position gets one class
        return float(adjusted_rand_score(y, np.zeros_like(y)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LinearDiscriminantAnalysis(), z[:, live], y, cv=cv)
    return float(adjusted_rand_score(y, pred))

"""Cluster embeddings into label maps, class-mean patterns, and the PCA + k-means baseline.

Everything here works on plain arrays (NumPy, or a :class:`~..data.dataset.Dataset4D` for the
class means) and uses scikit-learn; nothing imports Qt, napari or torch.

Label maps keep the leading shape of the embeddings: ``(Ry, Rx, D)`` embeddings give a
``(Ry, Rx)`` map, ``(N, D)`` give ``(N,)``. Cluster ids are renumbered by decreasing cluster
size (ties by first appearance) so the same partition always gets the same colours.

The projection and quality helpers live in :mod:`.projection` and :mod:`.quality` and are
re-exported here, so widgets can import the whole analysis API from one module.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KNeighborsClassifier

from .projection import prepare_features, project_2d
from .quality import (
    effective_dimensions,
    linear_probe_ari,
    live_dimensions,
    per_class_reconstruction_quality,
    reconstruction_quality,
)

ClusterMethod = Literal["kmeans", "gmm", "spectral"]

#: Spectral clustering builds its nearest-neighbour graph on at most this many positions (about
#: 3 s on this project's 2-core CPU); every other position takes the majority label of its
#: nearest fitted neighbours. The eigensolver's cost grows steeply beyond (8192: 2.8 s,
#: 16384: 21 s with scikit-learn's default solver).
SPECTRAL_MAX_FIT = 8192
#: Neighbours per position in the spectral graph (and in the vote that labels the rest).
SPECTRAL_NEIGHBOURS = 10

#: Scale every live latent dimension to unit variance before clustering. Against raw latent
#: distances (the geometry PCA + k-means uses) at 10 CPU minutes it gave the higher median on
#: both evaluation datasets, but raw distances were the steadier on the simulation (seed 2:
#: 0.977 against 0.817); docs/model.md, "The 1/3/10-minute CPU budget". Scaling can promote a
#: faint nuisance dimension; the Latent maps dock offers both.
STANDARDISE_DEFAULT = True

__all__ = [
    "ClassMeans", "adjusted_rand", "class_mean_patterns", "cluster_embeddings",
    "effective_dimensions", "linear_probe_ari", "live_dimensions", "match_labels",
    "pca_kmeans_baseline", "pca_scores", "per_class_reconstruction_quality", "project_2d",
    "reconstruction_quality", "relabel_by_size", "spectral_labels",
]


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..K-1 by decreasing count (ties: first appearance). Negatives are kept."""
    flat = np.asarray(labels).ravel()
    valid = flat >= 0
    values, first, counts = np.unique(flat[valid], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # primary key: -count, secondary: first appearance
    mapping = np.empty(values.size, dtype=np.int64)
    mapping[order] = np.arange(values.size)
    out = np.full(flat.shape, -1, dtype=np.int32)
    out[valid] = mapping[np.searchsorted(values, flat[valid])]
    return out.reshape(np.shape(labels))


def _check_k(n_clusters: int, n_samples: int) -> int:
    k = int(n_clusters)
    if k < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if k > n_samples:
        raise ValueError(f"n_clusters={k} is more than the {n_samples} samples to cluster")
    return k


def cluster_embeddings(
    embeddings: np.ndarray,
    n_clusters: int,
    method: ClusterMethod = "kmeans",
    seed: int = 0,
    standardise: bool = STANDARDISE_DEFAULT,
) -> np.ndarray:
    """Cluster embeddings shaped ``(Ry, Rx, D)`` or ``(N, D)`` into an int label map.

    ``standardise`` scales every live dimension to unit variance (dimensions with
    negligible variance are dropped first, so noise in dead ReLU units is not blown up);
    on by default (:data:`STANDARDISE_DEFAULT`); off: Euclidean distances in the latent space.
    ``method="kmeans"``: scikit-learn k-means (10 restarts); ``"gmm"``: a full-covariance
    Gaussian mixture (3 restarts, k-means initialised); ``"spectral"``: spectral clustering of
    a nearest-neighbour graph, which follows connected, elongated clusters (a phase whose
    patterns drift with thickness) where k-means cuts them (:func:`spectral_labels`).
    Returns labels 0..K-1 with the leading shape of ``embeddings``, numbered by decreasing
    cluster size.
    """
    emb = np.asarray(embeddings)
    if emb.ndim < 2:
        raise ValueError(f"embeddings must be (N, D) or (Ry, Rx, D), got shape {emb.shape}")
    lead = emb.shape[:-1]
    feats = prepare_features(emb.reshape(-1, emb.shape[-1]), standardise=standardise)
    k = _check_k(n_clusters, feats.shape[0])
    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(feats)
    elif method == "gmm":
        gmm = GaussianMixture(n_components=k, covariance_type="full", n_init=3,
                              reg_covar=1e-4, random_state=seed)
        labels = gmm.fit_predict(feats)
    elif method == "spectral":
        labels = spectral_labels(feats, k, seed)
    else:
        raise ValueError(f"unknown clustering method {method!r}; choose 'kmeans', 'gmm' or "
                         "'spectral'")
    return relabel_by_size(labels).reshape(lead)


def spectral_labels(features: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of ``(N, D)`` features on a nearest-neighbour graph.

    The graph connects each position to its :data:`SPECTRAL_NEIGHBOURS` nearest neighbours.
    Above :data:`SPECTRAL_MAX_FIT` positions it is built on a seeded random subset, and the
    other positions take the majority label of their nearest subset neighbours, so a
    256 x 256 scan costs about what a 90 x 90 one does.
    """
    n = features.shape[0]
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    fit = np.arange(n)
    if n > SPECTRAL_MAX_FIT:
        fit = np.sort(np.random.default_rng(seed).choice(n, SPECTRAL_MAX_FIT, replace=False))
    neighbours = min(SPECTRAL_NEIGHBOURS, fit.size - 1)
    with warnings.catch_warnings():
        # separate phases make a disconnected graph; the embedding then marks the components,
        # which is what clustering wants
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        fitted = SpectralClustering(n_clusters, affinity="nearest_neighbors",
                                    n_neighbors=neighbours, assign_labels="cluster_qr",
                                    random_state=seed).fit_predict(features[fit])
    if fit.size == n:
        return fitted
    labels = np.empty(n, dtype=np.int64)
    labels[fit] = fitted
    rest = np.ones(n, dtype=bool)
    rest[fit] = False
    vote = KNeighborsClassifier(n_neighbors=neighbours).fit(features[fit], fitted)
    labels[rest] = vote.predict(features[rest])
    return labels


def pca_kmeans_baseline(
    patterns: np.ndarray,
    n_clusters: int,
    n_components: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """The baseline a microscopist already has: PCA of the preprocessed patterns, then k-means.

    ``patterns`` is ``(N, Qy, Qx)`` (or ``(Ry, Rx, Qy, Qx)``), already preprocessed (e.g.
    log-scaled and normalised, the same input the network sees). Returns labels with the
    leading scan shape. The principal components are not standardised (as in the usual
    PCA + k-means recipe); ``n_components`` is capped by the data's rank limits.
    """
    scores, _ = pca_scores(patterns, n_components, seed=seed)  # checks the shape
    flat = scores.reshape(-1, scores.shape[-1])
    k = _check_k(n_clusters, flat.shape[0])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(flat)
    return relabel_by_size(labels).reshape(scores.shape[:-1])


#: PCA of up to this many bytes of (preprocessed, float32) patterns is fitted exactly in
#: memory; a larger scan is fitted incrementally (two passes over the data, chunk by chunk).
PCA_IN_MEMORY_BYTES = 1 << 29


def pca_scores(
    dataset_or_patterns,
    n_components: int = 10,
    preprocessor=None,
    seed: int = 0,
    chunk_size: int = 512,
    max_in_memory_bytes: int = PCA_IN_MEMORY_BYTES,
    on_block: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every pattern on the leading principal components, and what they explain.

    ``dataset_or_patterns``: a :class:`Dataset4D` (read in chunks, see
    :func:`class_mean_patterns`) or an array ``(N, Qy, Qx)`` / ``(Ry, Rx, Qy, Qx)``;
    ``preprocessor`` (a fitted ``Preprocessor``) is applied to each chunk first, so the scores
    are of what the network sees. Returns ``(scores, explained)``: scores ``(*lead, n)``
    float32 with the scan's leading shape, and the fraction of the variance each component
    explains ``(n,)``; ``n`` is ``n_components`` capped by the number of patterns and pixels.
    Up to ``max_in_memory_bytes`` of patterns the PCA is exact (scikit-learn ``PCA``); above,
    it is scikit-learn's ``IncrementalPCA``, fitted chunk by chunk.

    ``on_block(start, block)``, when given, sees every preprocessed ``(n, Qy, Qx)`` block of
    the first read in scan order, so other per-pattern statistics (e.g. :class:`ClassMeans`)
    need no read of their own.
    """
    src = dataset_or_patterns
    if _is_dataset(src):
        lead, n = tuple(src.scan_shape), int(src.n_patterns)
    else:
        shape = np.shape(src)
        if len(shape) not in (3, 4):
            raise ValueError(f"patterns must be (N, Qy, Qx) or (Ry, Rx, Qy, Qx), got {shape}")
        lead, n = tuple(shape[:-2]), int(np.prod(shape[:-2]))

    def blocks(visit=None):
        for start, block in _pattern_chunks(src, None, chunk_size):
            if preprocessor is not None:
                block = preprocessor.transform_patterns(block)
            flat = np.asarray(block, dtype=np.float32).reshape(block.shape[0], -1)
            if not np.all(np.isfinite(flat)):
                raise ValueError("patterns contain NaN or Inf values")
            if visit is not None:
                visit(start, flat.reshape(block.shape))
            yield flat

    if n < 1:
        raise ValueError("no patterns to analyse")
    stream = blocks(on_block)  # the incremental fit reads once more, without the visit
    first = next(stream)
    d = first.shape[1]
    nc = max(1, min(int(n_components), n, d))
    if n * d * 4 <= max_in_memory_bytes:
        flat = np.empty((n, d), dtype=np.float32)
        filled = 0
        for block in itertools.chain([first], stream):
            flat[filled:filled + len(block)] = block
            filled += len(block)
        pca = PCA(n_components=nc, random_state=seed)
        scores = pca.fit_transform(flat)
    else:
        pca = IncrementalPCA(n_components=nc)
        pending, rows = [first], first.shape[0]
        fitted = False
        for flat in stream:
            pending.append(flat)
            rows += flat.shape[0]
            if rows >= max(nc, int(chunk_size)):
                pca.partial_fit(np.concatenate(pending))
                pending, rows, fitted = [], 0, True
        if pending and (rows >= nc or not fitted):
            pca.partial_fit(np.concatenate(pending))
        scores = np.concatenate([pca.transform(flat) for flat in blocks()])
    return (np.asarray(scores, dtype=np.float32).reshape(*lead, nc),
            np.asarray(pca.explained_variance_ratio_, dtype=np.float64))


def match_labels(reference: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` so that each cluster takes the id of the ``reference`` cluster it
    shares most positions with (one to one: the assignment that maximises the overlap).

    Clusters left without a partner keep ids above the reference's. Used to colour two
    clusterings of the same scan alike; the partition itself is unchanged.
    """
    from scipy.optimize import linear_sum_assignment

    ref = np.asarray(reference).ravel()
    lab = np.asarray(labels)
    flat = lab.ravel()
    if ref.shape != flat.shape:
        raise ValueError(f"label maps differ in size: {ref.size} vs {flat.size}")
    ids = np.unique(flat[flat >= 0])
    ref_ids = np.unique(ref[ref >= 0])
    both = (flat >= 0) & (ref >= 0)
    table = np.zeros((ids.size, ref_ids.size), dtype=np.int64)
    np.add.at(table, (np.searchsorted(ids, flat[both]), np.searchsorted(ref_ids, ref[both])), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = dict(zip(ids[rows].tolist(), ref_ids[cols].tolist()))
    spare = int(ref_ids.max(initial=-1)) + 1
    for i in ids.tolist():
        if i not in mapping:
            mapping[i] = spare
            spare += 1
    out = flat.copy()
    for old, new in mapping.items():
        out[flat == old] = new
    return out.reshape(lab.shape)


def adjusted_rand(labels_true: np.ndarray, labels_pred: np.ndarray,
                  mask: np.ndarray | None = None) -> float:
    """Adjusted Rand index (scikit-learn) of two label maps, optionally only where ``mask``.

    Independent of how clusters are numbered: 1 for identical partitions, ~0 for chance.
    """
    t = np.asarray(labels_true)
    p = np.asarray(labels_pred)
    if t.shape != p.shape:
        raise ValueError(f"label maps differ in shape: {t.shape} vs {p.shape}")
    t, p = t.ravel(), p.ravel()
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != np.shape(labels_true):
            raise ValueError(f"mask shape {m.shape} differs from the labels' {np.shape(labels_true)}")
        t, p = t[m.ravel()], p[m.ravel()]
    if t.size == 0:
        raise ValueError("no positions to compare (empty labels or mask)")
    return float(adjusted_rand_score(t, p))


def _is_dataset(obj) -> bool:
    return hasattr(obj, "data") and hasattr(obj, "scan_shape")


def _pattern_chunks(dataset_or_patterns, n_positions: int | None, chunk_size: int):
    """Yield ``(start, (n, Qy, Qx) block)`` over every pattern, in scan order.

    A :class:`Dataset4D` is read in whole scan rows of about ``chunk_size`` patterns
    (contiguous reads, so a scan larger than memory works); an array is sliced.
    ``n_positions``, when given, must equal the number of patterns.
    """
    if _is_dataset(dataset_or_patterns):
        ds = dataset_or_patterns
        if n_positions is not None and n_positions != ds.n_patterns:
            raise ValueError(f"{ds.name}: labels have {n_positions} positions but the scan has "
                             f"{ds.n_patterns} {ds.scan_shape}")
        ry_n, rx_n = ds.scan_shape
        rows = max(1, int(chunk_size) // rx_n)
        for r0 in range(0, ry_n, rows):
            r1 = min(ry_n, r0 + rows)
            block = np.asarray(ds.data[r0:r1].compute())
            yield r0 * rx_n, block.reshape(-1, *block.shape[-2:])
        return
    arr = np.asarray(dataset_or_patterns)
    if arr.ndim not in (3, 4):
        raise ValueError(f"patterns must be (N, Qy, Qx) or (Ry, Rx, Qy, Qx), got {arr.shape}")
    arr = arr.reshape(-1, *arr.shape[-2:])
    if n_positions is not None and arr.shape[0] != n_positions:
        raise ValueError(f"labels have {n_positions} positions but there are "
                         f"{arr.shape[0]} patterns")
    for s in range(0, arr.shape[0], int(chunk_size)):
        yield s, arr[s:s + int(chunk_size)]


class ClassMeans:
    """Per-class running sums of patterns, fed block by block in scan order.

    ``labels`` has the scan shape (or ``(N,)``); negative labels are ignored. ``K`` is
    ``n_clusters`` or ``labels.max() + 1``. Feed every pattern once with :meth:`add` (e.g. as
    :func:`pca_scores`' ``on_block``), then read :meth:`result`.
    """

    def __init__(self, labels: np.ndarray, n_clusters: int | None = None) -> None:
        lab = np.asarray(labels).astype(np.int64, copy=False).ravel()
        k = int(n_clusters) if n_clusters is not None else int(lab.max()) + 1 if lab.size else 0
        if k < 1:
            raise ValueError("labels hold no class (all negative or empty)")
        if lab.max(initial=-1) >= k:
            raise ValueError(f"labels go up to {lab.max()} but n_clusters={k}")
        self.labels, self.k = lab, k
        self.counts = np.zeros(k, dtype=np.int64)
        self._sums: np.ndarray | None = None
        self._pattern_shape: tuple[int, ...] = ()
        self._seen = 0

    def add(self, start: int, block: np.ndarray) -> None:
        """Add the ``(n, Qy, Qx)`` patterns at scan positions ``start … start + n - 1``."""
        n = block.shape[0]
        if start + n > self.labels.size:
            raise ValueError(f"labels have {self.labels.size} positions but there are more "
                             f"patterns (up to position {start + n})")
        lb = self.labels[start:start + n]
        keep = lb >= 0
        onehot = np.zeros((self.k, n))
        onehot[lb[keep], np.nonzero(keep)[0]] = 1.0
        part = onehot @ np.asarray(block, dtype=np.float64).reshape(n, -1)
        self._sums = part if self._sums is None else self._sums + part
        self.counts += onehot.sum(axis=1).astype(np.int64)
        self._pattern_shape = tuple(block.shape[1:])
        self._seen += n

    def result(self) -> np.ndarray:
        """Mean pattern of every class ``(K, Qy, Qx)`` float32; an empty class is all zeros."""
        if self._seen != self.labels.size:
            raise ValueError(f"labels have {self.labels.size} positions but "
                             f"{self._seen} patterns were added")
        means = self._sums / np.maximum(self.counts, 1)[:, None]
        return means.reshape(self.k, *self._pattern_shape).astype(np.float32)


def class_mean_patterns(
    dataset_or_patterns,
    labels: np.ndarray,
    n_clusters: int | None = None,
    preprocessor=None,
    chunk_size: int = 512,
    return_counts: bool = False,
):
    """Mean diffraction pattern of every class: ``(K, Qy, Qx)`` float32.

    ``dataset_or_patterns``: a :class:`Dataset4D` (read in chunks of about ``chunk_size``
    patterns, so a scan larger than memory works), or an array ``(N, Qy, Qx)`` /
    ``(Ry, Rx, Qy, Qx)``. ``labels`` has the scan shape (or ``(N,)``); negative labels are
    ignored. ``preprocessor`` (a fitted ``Preprocessor``) is applied to each chunk first,
    for means in network-input space; without it, the means are of the raw data.
    ``K`` is ``n_clusters`` or ``labels.max() + 1``; an empty class gives an all-zero pattern
    (its count is 0 in ``counts`` when ``return_counts``).
    """
    acc = ClassMeans(labels, n_clusters)
    for start, block in _pattern_chunks(dataset_or_patterns, acc.labels.size, chunk_size):
        if preprocessor is not None:
            block = preprocessor.transform_patterns(block)
        acc.add(start, block)
    means = acc.result()
    return (means, acc.counts) if return_counts else means

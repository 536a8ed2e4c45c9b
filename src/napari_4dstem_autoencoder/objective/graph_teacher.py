"""A target geometry for the embedding: diffusion-map coordinates of the patterns' neighbour graph.

Why (docs/model.md, "The loss"): on the evaluation data the classes are connected clouds
in pattern space (a grain drifts with thickness) that k-means cuts, while the 15-nearest-neighbour
graph of the preprocessed patterns is 98-99 % class-pure. The diffusion map of that graph (the
leading eigenvectors of its random-walk matrix, each weighted by its eigenvalue to the power
``t``) turns each connected cloud into a compact blob, and long diffusion times keep only the
few slow modes that separate clouds, so the number of classes need not be known.

:class:`DiffusionTeacher` is fitted once per run on the same <= 1,024 reference patterns as the
output prior. During training each pattern's target is the mean of the coordinates of its
nearest reference patterns (so any pattern of a larger scan has one). The loss asks the
batch's centred embeddings, projected on a fixed subspace of as many dimensions as the targets
have, to match the batch's centred targets up to scale and rotation
(:func:`procrustes_mismatch`). The rest of the latent space is left to the reconstruction. A
comparison of geometries is blind to rotations and sign flips of the targets, so eigenvectors
of a repeated eigenvalue (one per disconnected cloud) need no canonical basis.

Which patterns are neighbours is the choice of features (``ObjectiveConfig.graph_features``):
Euclidean on the input's pixels; on their projections above the scan's shot noise
(:func:`signal_basis`); or by the Poisson likelihood of a pattern's electrons under another's
local rate (:func:`local_log_rates`, :func:`likelihood_neighbours`), which weighs each pixel by
its own noise as a counting detector's statistics ask, where a Euclidean distance on
log-scaled counts lets the sparse high-angle pixels' shot noise decide.

Nothing here has parameters. The teacher's state (reference patterns and their coordinates) is
saved with the model by ``objective.Objective``, so a resumed run is taught the same geometry.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from sklearn.neighbors import NearestNeighbors, kneighbors_graph

#: nearest reference patterns whose coordinates are averaged into a pattern's target
LOOKUP_NEIGHBOURS = 5
#: fewest patterns a neighbour graph with any structure can have
MIN_PATTERNS = 3
#: seed of the fixed orthonormal projection of the embedding (the same in every run and on resume)
PROJECTION_SEED = 0
#: rate given to a detector pixel that no reference pattern lit (electrons per electron)
RATE_FLOOR = 1e-9


def diffusion_coordinates(flat: np.ndarray, n_neighbours: int, diffusion_time: float,
                          n_components: int) -> np.ndarray:
    """(N, D) points -> (N, n_components) centred diffusion-map coordinates of the graph that
    joins each point to its ``n_neighbours`` nearest (Euclidean), symmetrised
    (:func:`diffusion_map`)."""
    n = flat.shape[0]
    if n < MIN_PATTERNS:
        raise ValueError(f"a neighbour graph needs at least {MIN_PATTERNS} patterns, got {n}")
    k = min(int(n_neighbours), n - 1)
    adjacency = kneighbors_graph(flat, k, mode="connectivity", include_self=False)
    return diffusion_map(adjacency, diffusion_time, n_components)


def diffusion_map(adjacency: sparse.spmatrix, diffusion_time: float,
                  n_components: int) -> np.ndarray:
    """(N, N) directed neighbour graph -> (N, n_components) centred diffusion coordinates.

    The graph is symmetrised; the coordinates are the leading ``n_components + 1``
    eigenvectors of its random-walk matrix, each scaled by its eigenvalue to the power
    ``diffusion_time`` and centred. Centring removes the constant eigenvector, which a repeated
    leading eigenvalue (one per disconnected cloud) mixes into several columns, so the centred
    columns are rotated onto their principal axes (by variance, largest first) and the first
    ``n_components`` are kept.
    """
    n = adjacency.shape[0]
    adjacency = sparse.csr_matrix(adjacency)
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = sparse.diags(degree ** -0.5)
    # the symmetric normalisation has the random-walk matrix's eigenvalues; dense is fine at
    # the <= 1,024 reference patterns this is fitted on (well under a second)
    values, vectors = np.linalg.eigh((scale @ adjacency @ scale).toarray())
    keep = min(int(n_components) + 1, n)
    order = np.argsort(-values)[:keep]
    weights = np.clip(values[order], 0.0, 1.0) ** float(diffusion_time)
    coords = vectors[:, order] / np.sqrt(degree)[:, None] * weights
    coords -= coords.mean(axis=0)
    u, sv, _ = np.linalg.svd(coords, full_matrices=False)
    return (u * sv)[:, :n_components]


def local_log_rates(flat: np.ndarray, counts: np.ndarray, n_neighbours: int) -> np.ndarray:
    """(N, D) log of each pattern's local rate: the mean electron distribution (counts over
    the pattern's total) of it and its ``n_neighbours - 1`` nearest patterns in ``flat``
    (Euclidean, the input's pixels), with the scan's mean distribution as one more member.

    A single low-dose pattern is too sparse to be a rate (most pixels hold 0 electrons); its
    neighbourhood pools ``n_neighbours`` patterns' electrons, and the mean pattern keeps every
    pixel that any pattern lit at a positive rate, so no count is impossible. A pixel no
    reference pattern lit gets ``RATE_FLOOR``.
    """
    n = flat.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    mean = counts.sum(axis=0) / max(float(totals.sum()), 1.0)
    share = np.where(totals > 0, counts / np.maximum(totals, 1.0), mean)
    k = min(int(n_neighbours), n)
    members = NearestNeighbors(n_neighbors=k).fit(flat).kneighbors(flat, return_distance=False)
    # the sum over members as a sparse product: share[members] would hold N·k·D numbers
    # (2 GiB for 1,024 references of 128×128 pixels)
    pooled = sparse.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), members.ravel())),
                               shape=(n, n)) @ share
    rates = (pooled + mean) / (k + 1)
    return np.log(np.maximum(rates, RATE_FLOOR))


def likelihood_neighbours(counts: np.ndarray, log_rates: np.ndarray, n_neighbours: int
                          ) -> sparse.csr_matrix:
    """(N, N) graph joining each pattern ``i`` to the ``n_neighbours`` other patterns ``j``
    under whose local rate its electrons are most probable: the largest Poisson
    log-likelihoods ``counts_i · log_rates_j`` (the terms that do not depend on ``j`` drop, as
    the rates are distributions scaled to pattern ``i``'s own total)."""
    n = counts.shape[0]
    if n < MIN_PATTERNS:
        raise ValueError(f"a neighbour graph needs at least {MIN_PATTERNS} patterns, got {n}")
    k = min(int(n_neighbours), n - 1)
    score = counts @ log_rates.T
    np.fill_diagonal(score, -np.inf)
    nearest = np.argpartition(-score, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    return sparse.csr_matrix((np.ones(n * k), (rows, nearest.ravel())), shape=(n, n))


def procrustes_mismatch(z: torch.Tensor, target: torch.Tensor,
                        eps: float = 1e-12) -> torch.Tensor:
    """How far the centred ``z`` (B, M) is from the centred ``target`` (B, M) after scaling
    each to unit Frobenius norm and rotating one onto the other (orthogonal Procrustes).

    ``2 - 2 * (nuclear norm of zᵀ target)``: 0 when the batch has the same geometry up to
    scale, rotation, reflection and offset, at most 2. Unlike a comparison of Gram matrices,
    which weighs each direction by its variance squared, this weighs it by its variance, so a
    direction that separates two classes by a small step still counts.
    """
    zc = z.float() - z.float().mean(dim=0)
    tc = target.float() - target.float().mean(dim=0)
    zc = zc / zc.norm().clamp_min(eps)
    tc = tc / tc.norm().clamp_min(eps)
    return 2.0 - 2.0 * torch.linalg.svdvals(zc.T @ tc).sum()


def signal_basis(flat: np.ndarray, noise: np.ndarray, min_components: int = 2
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The principal directions of (N, D) patterns that stand above their shot noise.

    ``noise`` (N, D) is an estimate of each pattern's noise (half the difference of its two
    binomially thinned halves, ``Objective.fit``): directions whose variance in the data
    exceeds the largest variance of the noise carry specimen, the rest mostly noise (a parallel
    analysis with the data's own noise). Returns ``(centre (D,), basis (D, m))``; at high dose
    many directions pass, at low dose few, so the neighbour graph built on the projections is
    not decided by shot noise.
    """
    centre = flat.mean(axis=0)
    _, sv, vt = np.linalg.svd(flat - centre, full_matrices=False)
    noise_top = np.linalg.svd(noise - noise.mean(axis=0), compute_uv=False)[0]
    m = int(np.clip((sv > noise_top).sum(), min(min_components, len(sv)), len(sv)))
    return centre, vt[:m].T.copy()


class DiffusionTeacher:
    """Diffusion-map targets for the embedding: ``reference`` (N, F) reference features and
    their ``coords`` (N, M); the features are the flattened patterns, or their projections
    ``(x - centre) @ basis`` when a ``basis`` (D, F) is given, or with ``likelihood`` the
    reference patterns' local log-rates (:func:`local_log_rates`), against which a pattern's
    electron counts are scored. Build one with :meth:`fit`; these tensors are its whole
    state."""

    def __init__(self, reference: torch.Tensor, coords: torch.Tensor, latent_dim: int = 32,
                 centre: torch.Tensor | None = None, basis: torch.Tensor | None = None,
                 likelihood: bool = False) -> None:
        m = coords.shape[1]
        if not 1 <= m <= latent_dim:
            raise ValueError(f"n_components must be between 1 and the latent size {latent_dim}")
        if reference.ndim != 2 or coords.ndim != 2 or reference.shape[0] != coords.shape[0]:
            raise ValueError(f"reference {tuple(reference.shape)} and coordinates "
                             f"{tuple(coords.shape)} do not describe the same patterns")
        if (basis is None) != (centre is None) or (
                basis is not None and (basis.ndim != 2 or basis.shape[1] != reference.shape[1]
                                       or centre.shape != (basis.shape[0],))):
            raise ValueError("a feature basis needs its centre, and both must match the "
                             "reference features")
        if likelihood and basis is not None:
            raise ValueError("a likelihood teacher scores counts against rates: no basis")
        self.likelihood = bool(likelihood)
        self.reference = reference.float()
        self.coords = coords.float()
        self.centre = None if centre is None else centre.float()
        self.basis = None if basis is None else basis.float()
        gen = torch.Generator().manual_seed(PROJECTION_SEED)
        self.projection = torch.linalg.qr(torch.randn(latent_dim, m, generator=gen))[0]

    @classmethod
    def fit(cls, reference: torch.Tensor, n_neighbours: int = 15, diffusion_time: float = 64.0,
            n_components: int = 16, latent_dim: int = 32,
            noise: torch.Tensor | None = None,
            counts: torch.Tensor | None = None) -> "DiffusionTeacher":
        """Fit the diffusion coordinates of (N, H, W) reference patterns; with ``noise`` (an
        estimate of their shot noise, same shape) on their projections onto the directions
        above the noise (:func:`signal_basis`) instead of their pixels; with ``counts`` (their
        electrons per pixel, same shape) on the graph of Poisson likelihoods
        (:func:`likelihood_neighbours`)."""
        if not 1 <= n_components <= latent_dim:
            raise ValueError(f"n_components must be between 1 and the latent size {latent_dim}")
        if noise is not None and counts is not None:
            raise ValueError("pass noise (denoised features) or counts (likelihood), not both")
        flat = torch.as_tensor(reference).reshape(reference.shape[0], -1).float().cpu().numpy()
        if counts is not None:
            electrons = torch.as_tensor(counts).reshape(flat.shape).double().cpu().numpy()
            log_rates = local_log_rates(flat, electrons, n_neighbours)
            graph = likelihood_neighbours(electrons, log_rates, n_neighbours)
            coords = diffusion_map(graph, diffusion_time, n_components)
            return cls(torch.from_numpy(log_rates).float(), torch.from_numpy(coords),
                       latent_dim, likelihood=True)
        centre = basis = None
        if noise is not None:
            noise_flat = torch.as_tensor(noise).reshape(flat.shape).float().cpu().numpy()
            centre, basis = signal_basis(flat, noise_flat)
            flat = (flat - centre) @ basis
        coords = diffusion_coordinates(flat, n_neighbours, diffusion_time, n_components)
        as_tensor = (lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)))
        return cls(torch.from_numpy(np.ascontiguousarray(flat)), torch.from_numpy(coords),
                   latent_dim, as_tensor(centre), as_tensor(basis))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"log_rates" if self.likelihood else "reference": self.reference,
                 "coords": self.coords}
        if self.basis is not None:
            state.update(centre=self.centre, basis=self.basis)
        return state

    @property
    def has_structure(self) -> bool:
        """False when every coordinate is 0: a graph in which every pattern is every other's
        neighbour (a handful of patterns) has no slow modes to teach."""
        return bool(self.coords.abs().max() > 1e-9)

    def to(self, device: torch.device) -> "DiffusionTeacher":
        self.reference = self.reference.to(device)
        self.coords = self.coords.to(device)
        if self.basis is not None:
            self.centre, self.basis = self.centre.to(device), self.basis.to(device)
        self.projection = self.projection.to(device)
        return self

    @torch.no_grad()
    def targets(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1, H, W) patterns -> (B, M): the mean coordinates of each one's nearest
        reference patterns (a reference pattern is its own nearest). A likelihood teacher
        needs the patterns' electron ``counts`` (same shape) and takes the reference patterns
        under whose rates they are most probable."""
        k = min(LOOKUP_NEIGHBOURS, self.reference.shape[0])
        if self.likelihood:
            if counts is None:
                raise ValueError("a likelihood teacher needs the patterns' electron counts")
            score = counts.reshape(counts.shape[0], -1).float() @ self.reference.T
            nearest = score.topk(k, largest=True).indices
        else:
            flat = x.reshape(x.shape[0], -1).float()
            if self.basis is not None:
                flat = (flat - self.centre) @ self.basis
            nearest = torch.cdist(flat, self.reference).topk(k, largest=False).indices
        return self.coords[nearest].mean(dim=1)

    def loss(self, x: torch.Tensor, z: torch.Tensor,
             counts: torch.Tensor | None = None) -> torch.Tensor:
        """How far the batch's embeddings are from the targets' geometry (0 when equal)."""
        if x.shape[0] < 2:
            return z.float().sum() * 0.0  # one pattern has no geometry
        return procrustes_mismatch(z.float() @ self.projection, self.targets(x, counts))

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

Nothing here has parameters. The teacher's state (reference patterns and their coordinates) is
saved with the model by ``objective.Objective``, so a resumed run is taught the same geometry.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from sklearn.neighbors import kneighbors_graph

#: nearest reference patterns whose coordinates are averaged into a pattern's target
LOOKUP_NEIGHBOURS = 5
#: fewest patterns a neighbour graph with any structure can have
MIN_PATTERNS = 3
#: seed of the fixed orthonormal projection of the embedding (the same in every run and on resume)
PROJECTION_SEED = 0


def diffusion_coordinates(flat: np.ndarray, n_neighbours: int, diffusion_time: float,
                          n_components: int) -> np.ndarray:
    """(N, D) points -> (N, n_components) centred diffusion-map coordinates.

    The graph joins each point to its ``n_neighbours`` nearest (Euclidean), symmetrised; the
    coordinates are the leading ``n_components + 1`` eigenvectors of its random-walk matrix,
    each scaled by its eigenvalue to the power ``diffusion_time`` and centred. Centring removes
    the constant eigenvector, which a repeated leading eigenvalue (one per disconnected cloud)
    mixes into several columns, so the centred columns are rotated onto their principal axes
    (by variance, largest first) and the first ``n_components`` are kept.
    """
    n = flat.shape[0]
    if n < MIN_PATTERNS:
        raise ValueError(f"a neighbour graph needs at least {MIN_PATTERNS} patterns, got {n}")
    k = min(int(n_neighbours), n - 1)
    adjacency = kneighbors_graph(flat, k, mode="connectivity", include_self=False)
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
    ``(x - centre) @ basis`` when a ``basis`` (D, F) is given. Build one with :meth:`fit`;
    these tensors are its whole state."""

    def __init__(self, reference: torch.Tensor, coords: torch.Tensor, latent_dim: int = 32,
                 centre: torch.Tensor | None = None, basis: torch.Tensor | None = None) -> None:
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
        self.reference = reference.float()
        self.coords = coords.float()
        self.centre = None if centre is None else centre.float()
        self.basis = None if basis is None else basis.float()
        gen = torch.Generator().manual_seed(PROJECTION_SEED)
        self.projection = torch.linalg.qr(torch.randn(latent_dim, m, generator=gen))[0]

    @classmethod
    def fit(cls, reference: torch.Tensor, n_neighbours: int = 15, diffusion_time: float = 64.0,
            n_components: int = 16, latent_dim: int = 32,
            noise: torch.Tensor | None = None) -> "DiffusionTeacher":
        """Fit the diffusion coordinates of (N, H, W) reference patterns; with ``noise`` (an
        estimate of their shot noise, same shape) on their projections onto the directions
        above the noise (:func:`signal_basis`) instead of their pixels."""
        if not 1 <= n_components <= latent_dim:
            raise ValueError(f"n_components must be between 1 and the latent size {latent_dim}")
        flat = torch.as_tensor(reference).reshape(reference.shape[0], -1).float().cpu().numpy()
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
        state = {"reference": self.reference, "coords": self.coords}
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
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) patterns -> (B, M): the mean coordinates of each one's nearest
        reference patterns (a reference pattern is its own nearest)."""
        flat = x.reshape(x.shape[0], -1).float()
        if self.basis is not None:
            flat = (flat - self.centre) @ self.basis
        k = min(LOOKUP_NEIGHBOURS, self.reference.shape[0])
        nearest = torch.cdist(flat, self.reference).topk(k, largest=False).indices
        return self.coords[nearest].mean(dim=1)

    def loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """How far the batch's embeddings are from the targets' geometry (0 when equal)."""
        if x.shape[0] < 2:
            return z.float().sum() * 0.0  # one pattern has no geometry
        return procrustes_mismatch(z.float() @ self.projection, self.targets(x))

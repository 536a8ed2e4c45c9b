"""The batch loss terms, one function each (names as the seed document's loss has them).

Each takes the batch and returns an unweighted scalar; :class:`objective.Objective` weighs and
sums them. Terms computed from embeddings run in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Pixel-wise mean squared error between the input and its reconstruction."""
    return F.mse_loss(x_hat.float(), x.float())


def activity_l1(z: torch.Tensor) -> torch.Tensor:
    """``mean|z|``: the seed's L1 term, which pushes embeddings towards sparsity."""
    return z.float().abs().mean()


def contrastive(z: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean of ``relu(cos_sim - margin)`` over distinct pairs of the batch.

    With fewer than two samples there are no pairs and the term is 0. Embeddings are ReLU'd,
    so cosine similarity lies in [0, 1] and the seed's margin 1.0 never fires.
    """
    n = z.size(0)
    if n < 2:
        return z.new_zeros((), dtype=torch.float32)
    zn = F.normalize(z.float(), p=2, dim=1)
    sim = zn @ zn.t()
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return F.relu(sim[off_diagonal] - margin).mean()


def divergence(z: torch.Tensor, form: str = "inverse_variance", eps: float = 1e-8) -> torch.Tensor:
    """Penalise embedding dimensions whose variance over the batch collapses.

    ``inverse_variance`` (seed): ``mean(1 / (var + eps))`` -- every dead unit adds ``1 / eps``.
    ``std_hinge_decorrelate``: VICReg's terms, ``mean(relu(1 - sqrt(var + eps)))`` plus
    ``sum(offdiag(cov)^2) / (25 D)``: bounded, zero once a dimension spreads enough, and the
    covariance part keeps the dimensions from all carrying the same number. The variance of one
    sample is undefined, so with fewer than two samples the term is 0 (rather than NaN).
    """
    if z.size(0) < 2:
        return z.new_zeros((), dtype=torch.float32)
    zf = z.float()
    var = torch.var(zf, dim=0)
    if form == "inverse_variance":
        return (1.0 / (var + eps)).mean()
    if form != "std_hinge_decorrelate":
        raise ValueError(f"unknown divergence form {form!r}")
    hinge = F.relu(1.0 - torch.sqrt(var + eps)).mean()
    zc = zf - zf.mean(dim=0)
    cov = zc.t() @ zc / (z.size(0) - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return hinge + off.pow(2).sum() / (25.0 * z.size(1))  # VICReg weighs variance 25 : covariance 1

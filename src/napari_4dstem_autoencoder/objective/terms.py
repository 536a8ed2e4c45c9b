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


def poisson_deviance(counts: torch.Tensor, rate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Poisson deviance of observed ``counts`` under the predicted ``rate`` (same shape, in
    electrons), per detected electron of the batch.

    ``2 Σ [k log(k/λ) - (k - λ)] / Σ k``: the negative log-likelihood of a counting detector
    less its value at the best possible rate, so it is 0 when ``rate == counts`` and its
    expectation over Poisson draws is smallest at the true rate. Unlike an MSE of log
    intensities it does not treat one stray electron in a dark pixel as a large error.
    """
    k = counts.float()
    lam = rate.float().clamp_min(eps)
    deviance = 2.0 * (torch.special.xlogy(k, k) - torch.special.xlogy(k, lam) - (k - lam))
    return deviance.sum() / k.sum().clamp_min(1.0)


def embedding_agreement(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """How far paired embeddings (B, D) are apart, against how far random pairs are.

    ``mean ||z1 - z2||² / (2 Σ var)``, the variance over both halves of the batch: 0 when each
    pair embeds identically, about 1 when the pairing carries no information, and blind to
    the embedding's scale (the divergence term keeps that from collapsing).
    """
    a, b = z1.float(), z2.float()
    if a.shape[0] < 1:
        return a.new_zeros(())
    spread = torch.cat([a, b]).var(dim=0, unbiased=False).sum()
    return (a - b).pow(2).sum(dim=1).mean() / (2.0 * spread + eps)


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

"""Model analysis: a layer-by-layer summary, reconstruction metrics and comparison figures.

``show`` counts multiply-accumulates (MACs) per pattern for convolutions, linear layers and
batch norms from forward hooks, so the figures follow the actual shapes the network runs at
(they depend on the input size and on the preset's pool schedule and decoder canvas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    macs: int


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates per pattern of one leaf module (output has batch size 1)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(output.numel() * (module.in_channels // module.groups) * kh * kw)
    if isinstance(module, nn.Linear):
        return int(module.in_features * module.out_features)
    if isinstance(module, nn.BatchNorm2d):
        return int(output.numel())
    return 0


def profile(model: nn.Module, input_size: Sequence[int]) -> list[LayerRow]:
    """Run one pattern through ``model`` and return one row per leaf layer that ran.

    ``input_size`` is (1, H, W) or (H, W). BN layers skipped by conditional BN do not appear.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        size = (1, *size)
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0 and isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            def hook(mod, _inp, out, name=name):
                rows.append(LayerRow(name, type(mod).__name__, tuple(out.shape[1:]),
                                     sum(p.numel() for p in mod.parameters()), _macs(mod, out)))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros((1, *size), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def macs_per_pattern(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """MACs per pattern of the encoder, the decoder and both."""
    rows = profile(model, input_size)
    enc = sum(r.macs for r in rows if r.name.startswith("encoder."))
    dec = sum(r.macs for r in rows if r.name.startswith("decoder."))
    return {"encoder": enc, "decoder": dec, "total": enc + dec}


def show(model: nn.Module, input_size: Sequence[int] = (1, 256, 256), print_fn=print) -> list[LayerRow]:
    """Print per-layer output shapes, parameters and MACs per pattern; return the rows."""
    rows = profile(model, input_size)
    width = max(len(r.name) for r in rows) + 2
    print_fn(f"{'layer':<{width}}{'type':<13}{'output shape':<20}{'params':>12}{'MACs':>16}")
    print_fn("-" * (width + 61))
    for r in rows:
        print_fn(f"{r.name:<{width}}{r.kind:<13}{str(r.output_shape):<20}{r.parameters:>12,}{r.macs:>16,}")
    print_fn("-" * (width + 61))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    macs = macs_per_pattern(model, input_size)
    print_fn(f"trainable parameters: {trainable:,}")
    print_fn(f"MACs per pattern at {tuple(input_size)}: encoder {macs['encoder']:,}, "
             f"decoder {macs['decoder']:,}, total {macs['total']:,}")
    return rows


# -- metrics ------------------------------------------------------------------------------

def calculate_metrics(original: np.ndarray | torch.Tensor, reconstruction: np.ndarray | torch.Tensor,
                      data_range: float = 1.0) -> dict[str, object]:
    """PSNR, SSIM and MSE per pattern and averaged (scikit-image, explicit ``data_range``).

    Inputs are (N, H, W), (N, 1, H, W) or (H, W) arrays on the same scale.
    """
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    a = _as_stack(original)
    b = _as_stack(reconstruction)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.array([mean_squared_error(x, y) for x, y in zip(a, b)])
    with np.errstate(divide="ignore"):
        psnr = np.array([peak_signal_noise_ratio(x, y, data_range=data_range) for x, y in zip(a, b)])
    ssim = np.array([structural_similarity(x, y, data_range=data_range) for x, y in zip(a, b)])
    return {
        "mse": mse, "psnr": psnr, "ssim": ssim,
        "mean_mse": float(mse.mean()), "mean_psnr": float(psnr.mean()), "mean_ssim": float(ssim.mean()),
    }


def _as_stack(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W) patterns, got shape {x.shape}")
    return x


# -- figures ------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_comparison_images(original, reconstruction, path: str | Path, n: int = 4,
                           data_range: float = 1.0, titles: Sequence[str] | None = None) -> Path:
    """Write a PNG with one row per pattern: raw | reconstruction | difference (+ PSNR/SSIM)."""
    plt = _figure()
    a, b = _as_stack(original)[:n], _as_stack(reconstruction)[:n]
    metrics = calculate_metrics(a, b, data_range)
    fig, axes = plt.subplots(len(a), 3, figsize=(9, 3 * len(a)), squeeze=False)
    vmax = max(a.max(), b.max())
    for i in range(len(a)):
        diff = b[i] - a[i]
        lim = max(np.abs(diff).max(), 1e-12)
        for j, (img, cmap, lo, hi, name) in enumerate((
            (a[i], "inferno", 0, vmax, "raw"),
            (b[i], "inferno", 0, vmax, "reconstruction"),
            (diff, "RdBu_r", -lim, lim, "difference"),
        )):
            ax = axes[i, j]
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            label = titles[i] if titles is not None and j == 0 else name
            if j == 1:
                label += f"\nPSNR {metrics['psnr'][i]:.1f} dB, SSIM {metrics['ssim'][i]:.3f}"
            ax.set_title(label, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_stem_visualization(embeddings: np.ndarray, virtual_image: np.ndarray, path: str | Path,
                            n_maps: int = 8, virtual_title: str = "virtual image",
                            scan_step: float | None = None, unit: str = "px") -> Path:
    """Write a PNG with the virtual image next to the first ``n_maps`` embedding maps.

    ``embeddings`` is (Ry, Rx, D); maps are ordered by decreasing variance so the most
    informative ones come first (dead dimensions, if any, are listed in the title).
    """
    plt = _figure()
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 3 or emb.shape[:2] != np.shape(virtual_image):
        raise ValueError(f"embeddings {emb.shape} do not match virtual image {np.shape(virtual_image)}")
    var = emb.reshape(-1, emb.shape[-1]).var(axis=0)
    order = np.argsort(var)[::-1][:n_maps]
    dead = int((var <= 1e-12).sum())
    cols = 3
    rows = int(np.ceil((len(order) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    extent = None
    if scan_step is not None:
        extent = (0, emb.shape[1] * scan_step, emb.shape[0] * scan_step, 0)
    axes[0, 0].imshow(virtual_image, cmap="gray", extent=extent)
    axes[0, 0].set_title(virtual_title, fontsize=9)
    for k, d in enumerate(order, start=1):
        ax = axes.flat[k]
        ax.imshow(emb[..., d], cmap="viridis", extent=extent)
        ax.set_title(f"embedding {d} (var {var[d]:.2g})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(order) + 1:]:
        ax.axis("off")
    fig.suptitle(f"{emb.shape[-1]} embedding maps ({dead} constant); scan unit {unit}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

"""A layer-by-layer summary of the network: shapes, parameters and compute per pattern.

``show`` counts multiply-accumulates (MACs) per pattern for convolutions, linear layers and
batch norms from forward hooks, so the figures follow the actual shapes the network runs at
(they depend on the input size and on the preset's encoder stem, pool schedule and decoder
canvas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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

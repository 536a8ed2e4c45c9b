"""Building blocks of the seed ResNet autoencoder (names follow the seed document).

Every convolution is 3x3, padding 1, with bias. Batch normalisation is *conditional*: it is
skipped when the feature map is 1x1, where batch statistics of a single value per channel
are meaningless (and raise in training mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=True)


def conditional_bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Apply ``bn`` unless the feature map is a single pixel."""
    if x.size(-1) > 1 or x.size(-2) > 1:
        return bn(x)
    return x


class ConvBN(nn.Module):
    """Conv 3x3 + conditional BN (+ ReLU when ``relu``)."""

    def __init__(self, in_ch: int, out_ch: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conditional_bn(self.bn, self.conv(x))
        return F.relu(out) if self.relu else out


class ConvBlock(nn.Module):
    """Three conv+BN layers with an identity skip: ReLU after the 1st and 2nd, and after the add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layer1 = ConvBN(channels, channels)
        self.layer2 = ConvBN(channels, channels)
        self.layer3 = ConvBN(channels, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(out + x)


class IdentityBlock(ConvBN):
    """A single conv + conditional BN + ReLU (the seed's name for it)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, relu=True)


def quarter_size(size: int, pool_size: int = 4) -> int:
    """The seed's pooling rule: ``max(1, size // pool_size)``."""
    return max(1, size // pool_size)


class ResNetBlock(nn.Module):
    """ConvBlock -> IdentityBlock -> adaptive average pooling.

    With ``out_size=None`` the block applies the seed rule literally: it pools to a *square*
    ``max(1, width // 4)``; the encoder passes an explicit size for other schedules.
    """

    def __init__(self, channels: int, pool_size: int = 4) -> None:
        super().__init__()
        self.conv_block = ConvBlock(channels)
        self.identity_block = IdentityBlock(channels)
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.identity_block(self.conv_block(x))
        if out_size is None:
            target = quarter_size(x.size(-1), self.pool_size)
            out_size = (target, target)
        return F.adaptive_avg_pool2d(x, out_size)


class ResNetUpBlock(nn.Module):
    """Bilinear upsampling (align_corners=False) -> ConvBlock -> IdentityBlock."""

    def __init__(self, channels: int, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.conv_block = ConvBlock(channels)
        self.identity_block = IdentityBlock(channels)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        if out_size is None:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.identity_block(self.conv_block(x))


class EmbeddingLayer(nn.Module):
    """Linear projection followed by ReLU, so embeddings are non-negative."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(x))


def geometric_sizes(start: int, end: int, steps: int) -> list[int]:
    """``steps`` sizes going geometrically from ``start`` (exclusive) to ``end`` (inclusive)."""
    ratio = end / start
    return [max(1, int(round(start * ratio ** ((k + 1) / steps)))) for k in range(steps)]


class AdaptiveDecoder(nn.Module):
    """Size-agnostic decoder: 32 -> 2048 -> (128, 4, 4) -> conv -> 3 up blocks -> conv -> sigmoid.

    The parameter count does not depend on the target size. ``canvas="fixed256"`` is the
    seed (x4 per block, 4 -> 256, then resize); ``canvas="target"`` grows geometrically to
    the target so no compute is spent on pixels that are thrown away; ``canvas="half_target"``
    grows to half the target, resizes the last features to the target and runs the final
    conv there, then adds the output prior (both at full resolution).
    """

    base_size = 4
    channels = 128

    def __init__(self, latent_dim: int = 32, out_shape: tuple[int, int] = (256, 256),
                 canvas: str = "fixed256", output_prior: str = "none") -> None:
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.canvas = canvas
        if output_prior not in ("none", "mean_pattern"):
            raise ValueError(f"unknown output_prior {output_prior!r}")
        if canvas not in ("fixed256", "target", "half_target"):
            raise ValueError(f"unknown canvas {canvas!r}")
        # logit of the training data's mean pattern, added before the sigmoid (a buffer:
        # saved with the weights, not trained). Zero until set_output_prior is called.
        self.register_buffer("prior_logit", torch.zeros(1, 1, *self.out_shape)
                             if output_prior == "mean_pattern" else None)
        self.linear = nn.Linear(latent_dim, self.channels * self.base_size**2)
        self.conv_initial = conv3x3(self.channels, self.channels)
        self.up_blocks = nn.ModuleList(ResNetUpBlock(self.channels) for _ in range(3))
        self.conv_final = conv3x3(self.channels, 1)

    def canvas_size(self, target: tuple[int, int]) -> tuple[int, int] | None:
        """The size the up blocks end at (None: the seed's x4 rule, 256 from 4)."""
        if self.canvas == "fixed256":
            return None
        if self.canvas == "half_target":
            return tuple(max(self.base_size, (t + 1) // 2) for t in target)
        return tuple(target)

    def stage_sizes(self, target: tuple[int, int]) -> list[tuple[int, int] | None]:
        canvas = self.canvas_size(target)
        if canvas is None:
            return [None, None, None]
        rows = geometric_sizes(self.base_size, canvas[0], 3)
        cols = geometric_sizes(self.base_size, canvas[1], 3)
        return list(zip(rows, cols))

    def forward(self, z: torch.Tensor, out_shape: tuple[int, int] | None = None) -> torch.Tensor:
        target = tuple(out_shape) if out_shape is not None else self.out_shape
        x = self.linear(z).view(-1, self.channels, self.base_size, self.base_size)
        x = self.conv_initial(x)
        for block, size in zip(self.up_blocks, self.stage_sizes(target)):
            x = block(x, size)
        if self.canvas == "half_target" and tuple(x.shape[-2:]) != target:
            # the last 128-channel features are resized and the final conv runs at the target:
            # its 3x3 kernels place edges between the half-size pixels, so the output is not a
            # blurred half-size image (the prior is then added at full resolution too)
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        x = self.conv_final(x)
        if self.prior_logit is not None:
            prior = self.prior_logit
            if tuple(prior.shape[-2:]) != tuple(x.shape[-2:]):
                prior = F.interpolate(prior, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + prior.to(x.dtype)
        x = torch.sigmoid(x)
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        return x

    def set_output_prior(self, mean_pattern: torch.Tensor, clip: float = 1e-3) -> None:
        """Set the prior from a mean pattern in [0, 1] (resized to ``out_shape`` if needed)."""
        if self.prior_logit is None:
            raise ValueError("this decoder was built without an output prior")
        m = torch.as_tensor(mean_pattern, dtype=torch.float32).reshape(1, 1, *mean_pattern.shape[-2:])
        if not bool(torch.isfinite(m).all()):
            raise ValueError("the mean pattern contains NaN or Inf values")
        if tuple(m.shape[-2:]) != self.out_shape:
            m = F.interpolate(m, size=self.out_shape, mode="bilinear", align_corners=False)
        m = m.clamp(clip, 1.0 - clip)
        self.prior_logit.copy_(torch.log(m / (1.0 - m)).to(self.prior_logit.device))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "AdaptiveDecoder", "ConvBlock", "EmbeddingLayer",
    "IdentityBlock", "ResNetBlock", "ResNetUpBlock", "count_parameters", "geometric_sizes",
    "quarter_size",
]

"""Encoder, Decoder and Autoencoder of the seed document, configured by a ``ModelConfig``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    AdaptiveDecoder,
    ConvBN,
    EmbeddingLayer,
    ResNetBlock,
    count_parameters,
    geometric_sizes,
)
from .config import MIN_INPUT_SIZE, ModelConfig

EMBED_GRID = 4  # the final adaptive pool is always 4x4 -> 16 features


def check_input(x: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is a (B, 1, H, W) batch with H, W >= 32."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.size(1) != 1:
        raise ValueError(
            f"expected a batch of single-channel patterns shaped (B, 1, H, W), got {tuple(x.shape)}"
        )
    if x.size(0) < 1:
        raise ValueError("the batch is empty")
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"patterns must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, got "
            f"{x.size(-2)}x{x.size(-1)}; bin less or pad the detector"
        )


def _resolve(config: ModelConfig | None) -> ModelConfig:
    """The given architecture, or the seed document's."""
    return ModelConfig() if config is None else config


class Encoder(nn.Module):
    """(B, 1, H, W) -> (B, latent_dim), non-negative."""

    def __init__(self, latent_dim: int = 32, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = _resolve(config)
        self.conv_input = ConvBN(1, 64)
        self.conv_pre = ConvBN(64, 128)
        self.res_blocks = nn.ModuleList(ResNetBlock(128) for _ in range(3))
        self.conv_post = ConvBN(128, 64)
        self.conv_final = ConvBN(64, 1)
        self.embedding = EmbeddingLayer(EMBED_GRID * EMBED_GRID, latent_dim)

    def pool_sizes(self, size: tuple[int, int]) -> list[tuple[int, int] | None]:
        """Output size of each ResNet block's pooling (None: the block's own seed rule)."""
        if self.config.pool_schedule == "quarter":
            return [None, None, None]
        rows = geometric_sizes(size[0], EMBED_GRID, 3)
        cols = geometric_sizes(size[1], EMBED_GRID, 3)
        return list(zip(rows, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x)
        x = self.conv_input(x)
        if self.config.encoder_stem == "pool2":
            x = F.avg_pool2d(x, 2)
        x = self.conv_pre(x)
        for block, size in zip(self.res_blocks, self.pool_sizes(tuple(x.shape[-2:]))):
            x = block(x, size)
        x = self.conv_final(self.conv_post(x))
        x = F.adaptive_avg_pool2d(x, (EMBED_GRID, EMBED_GRID))
        return self.embedding(torch.flatten(x, 1))


class Decoder(AdaptiveDecoder):
    """(B, latent_dim) -> (B, 1, H, W) in [0, 1]."""

    def __init__(self, latent_dim: int = 32, out_shape: tuple[int, int] = (256, 256),
                 config: ModelConfig | None = None) -> None:
        cfg = _resolve(config)
        super().__init__(latent_dim, out_shape, canvas=cfg.decoder_canvas,
                         output_prior=cfg.output_prior)
        self.config = cfg


class Autoencoder(nn.Module):
    """The seed autoencoder: 3,914,404 trainable parameters for every input size.

    ``out_shape`` is the decoder's default output size; ``forward`` reconstructs at the size
    of its input. Use :meth:`encode_decode` in training loops: it runs the encoder once and
    returns both the reconstruction and the embedding.
    """

    def __init__(self, latent_dim: int = 32, out_shape: tuple[int, int] = (256, 256),
                 config: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = _resolve(config)
        if latent_dim != cfg.latent_dim:
            cfg = cfg.replace(latent_dim=latent_dim)
        self.config = cfg
        self.out_shape = tuple(int(s) for s in out_shape)
        self.encoder = Encoder(latent_dim, cfg)
        self.decoder = Decoder(latent_dim, self.out_shape, cfg)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, out_shape: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decoder(z, out_shape or self.out_shape)

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass: the reconstruction (at the input's size) and the embedding."""
        z = self.encoder(x)
        return self.decoder(z, tuple(x.shape[-2:])), z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_decode(x)[0]

    def set_output_prior(self, mean_pattern) -> None:
        """Set the decoder's mean-pattern prior (configs with ``output_prior="mean_pattern"``)."""
        self.decoder.set_output_prior(torch.as_tensor(mean_pattern))

    def num_parameters(self) -> int:
        return count_parameters(self)

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "out_shape": list(self.out_shape),
                "parameters": self.num_parameters()}

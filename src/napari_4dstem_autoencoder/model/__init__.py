"""The ResNet autoencoder of the seed design: its blocks and its architecture config.

``ModelConfig`` imports without torch; the network classes load torch on first use.
"""

from .config import ModelConfig

__all__ = ["Autoencoder", "Encoder", "Decoder", "ModelConfig"]


def __getattr__(name: str):
    if name in ("Autoencoder", "Encoder", "Decoder"):
        from . import autoencoder
        return getattr(autoencoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

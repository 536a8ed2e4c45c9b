"""The ResNet autoencoder of the seed design, its building blocks and its presets."""

from .autoencoder import Autoencoder, Decoder, Encoder
from .config import PRESETS, ModelConfig, get_preset

__all__ = ["Autoencoder", "Encoder", "Decoder", "ModelConfig", "PRESETS", "get_preset"]

"""Reading 4D-STEM data: the lazy dataset type, format readers, preprocessing, sample data."""

from .dataset import Calibration, Dataset4D

__all__ = ["Calibration", "Dataset4D"]

"""Reading 4D-STEM data: the lazy dataset type, format readers, preprocessing, sample data.

Importing this package is cheap (no torch, no Qt); format libraries load on first use.
"""

from .dataset import Calibration, Dataset4D
from .errors import DatasetError, DataWarning
from .readers import open_dataset

__all__ = ["Calibration", "Dataset4D", "DatasetError", "DataWarning", "open_dataset"]

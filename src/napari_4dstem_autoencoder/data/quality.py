"""What the values of a newly opened file look like: finite, not all zero, constant, never
written or negative (bounded reads; :class:`DataWarning` names the file and the problem)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .dataset import Dataset4D
from .errors import DataWarning, DatasetError
from .file_array import FileArray

#: up to this many bytes every value is checked on open (NaN/Inf, all zero, constant, negative);
#: beyond it a strided sample of patterns
FINITE_CHECK_BYTES = 64 * 2**20
#: the open-time sample of larger files: at most this many patterns...
QUALITY_SAMPLE_PATTERNS = 64
#: ...and at most about this many bytes decoded (one storage chunk per sampled position)
QUALITY_SAMPLE_BYTES = 64 * 2**20


def sample_positions(n_positions: int, n: int) -> np.ndarray:
    """``n`` flat scan indices spread evenly over the scan, first and last included."""
    n = max(1, min(int(n), n_positions))
    return np.unique(np.linspace(0, n_positions - 1, n).round().astype(np.int64))


def inspect_values(ds: Dataset4D, array: FileArray, check_finite: bool, check_quality: bool) -> None:
    """One bounded read serves the NaN/Inf check (raises) and the data-quality warnings."""
    float_data = np.issubdtype(array.dtype, np.floating)
    if not check_quality and not (check_finite and float_data):
        return
    rx = ds.scan_shape[1]
    full = ds.data.nbytes <= FINITE_CHECK_BYTES
    # whether storage was ever written is a chunk-index lookup per position (no data read), so
    # every sampled position is asked; values are read for as many as the byte budget allows
    idx = sample_positions(ds.n_patterns, QUALITY_SAMPLE_PATTERNS)
    written = array.written(idx) if check_quality else None
    if full:
        values = array[:, :, :, :].reshape(ds.n_patterns, *ds.detector_shape)
    else:
        candidates = idx if written is None else idx[written]
        cy, cx = array.file_chunk_scan()
        pattern = math.prod(ds.detector_shape) * array.dtype.itemsize
        budget = max(1, QUALITY_SAMPLE_BYTES // max(1, pattern * cy * cx))
        if len(candidates) > budget:
            candidates = candidates[np.unique(np.linspace(0, len(candidates) - 1, budget)
                                              .round().astype(np.int64))]
        values = (np.stack([array[int(f) // rx, int(f) % rx] for f in candidates])
                  if len(candidates) else np.empty((0, *ds.detector_shape), array.dtype))
    where = "values" if full else f"values in {len(values)} sampled patterns"
    if check_finite and float_data and values.size:
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise DatasetError(ds.path, f"the data contains {bad} NaN or Inf {where}; 4D-STEM counts "
                                        "must be finite (open with check_finite=False to inspect it "
                                        "anyway)")
    if not check_quality:
        return
    problems = _quality_problems(ds, array, idx, written, values, full)
    ds.metadata["warnings"] = problems
    for problem in problems:
        warnings.warn(DataWarning(ds.path, problem), stacklevel=4)


def _quality_problems(ds: Dataset4D, array: FileArray, idx: np.ndarray, written: np.ndarray | None,
                      values: np.ndarray, full: bool) -> list[str]:
    problems = []
    if written is not None and not written.all():
        fill = array.fill_value()
        ds.metadata["fill_value"] = fill
        unwritten = int((~written).sum())
        if not written.any():
            stored = array.stored_bytes()
            if stored == 0:
                ds.metadata["never_written"] = True
                problems.append(
                    f"holds no data: nothing was ever written to its {array.source.label} (the "
                    f"file stores no chunk of it), so every value reads as the fill value {fill}; "
                    "the acquisition was allocated but never recorded")
            else:
                problems.append(
                    f"none of the {len(idx)} sampled scan positions was ever written (their storage "
                    f"chunks do not exist, so they read as the fill value {fill}); the file stores "
                    f"{_size(stored)} of the {_size(ds.data.nbytes)} the dataset spans, so most of "
                    "the scan was probably never recorded")
        else:
            problems.append(
                f"{unwritten} of the {len(idx)} sampled scan positions were never written (no "
                f"storage chunk: they read as the fill value {fill}); the acquisition probably "
                "stopped early")
    if values.size and not ds.metadata.get("never_written"):  # fill values said so already
        vmin, vmax = values.min(), values.max()
        scope = "every value" if full else f"every value of the {len(values)} sampled patterns"
        if vmin == vmax:
            if vmin == 0:
                problems.append(f"{scope} is 0: the data is all zero (an empty acquisition, a "
                                "closed shutter, or a file that was never written)")
            else:
                problems.append(f"{scope} is {vmin.item():g}: the data is constant, there is "
                                "nothing to learn from it")
        if vmin < 0:
            negative = int(np.count_nonzero(values < 0))
            counted = "values" if full else "sampled values"
            problems.append(f"{negative} {counted} are negative (down to {vmin.item():g}); counts "
                            "cannot be negative and preprocessing clips them to 0 (background "
                            "subtracted or offset data?)")
    return problems


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

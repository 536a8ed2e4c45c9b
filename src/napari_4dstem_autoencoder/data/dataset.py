"""The one lazy 4D-STEM dataset type every reader returns.

Axes are always (Ry, Rx, Qy, Qx): scan row, scan column, detector row, detector column.
``data`` is a dask array; nothing is read until a pattern, a chunk or a reduction is asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Pixel sizes of the scan grid and of the detector, with units."""

    scan_step: tuple[float, float] = (1.0, 1.0)
    scan_unit: str = "px"
    detector_step: tuple[float, float] = (1.0, 1.0)
    detector_unit: str = "px"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(
            scan_step=tuple(float(v) for v in data.get("scan_step", (1.0, 1.0))),
            scan_unit=str(data.get("scan_unit", "px")),
            detector_step=tuple(float(v) for v in data.get("detector_step", (1.0, 1.0))),
            detector_unit=str(data.get("detector_unit", "px")),
        )


@dataclass
class Dataset4D:
    """A lazy 4D-STEM scan with calibration and metadata.

    ``labels`` holds per-position ground truth where the data has it (simulated or sample data).
    Use as a context manager, or call :meth:`close`, to release file handles.
    """

    data: da.Array
    calibration: Calibration = field(default_factory=Calibration)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    labels: np.ndarray | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, da.Array):
            self.data = da.from_array(self.data, chunks="auto")
        if self.data.ndim != 4:
            raise ValueError(
                f"{self.name}: a 4D-STEM dataset has 4 axes (Ry, Rx, Qy, Qx), got shape {self.data.shape}"
            )
        if 0 in self.data.shape:
            raise ValueError(f"{self.name}: the dataset is empty (shape {self.data.shape})")
        if self.path is not None:
            self.path = Path(self.path)

    # -- shape helpers -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else self.metadata.get("name", "dataset")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    @property
    def n_patterns(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    # -- reading -------------------------------------------------------------------------
    def pattern(self, ry: int, rx: int) -> np.ndarray:
        """One diffraction pattern, read from disk, in the file's dtype."""
        return np.asarray(self.data[int(ry), int(rx)].compute())

    def patterns(self, flat_indices: np.ndarray | list[int]) -> np.ndarray:
        """Patterns at flat scan indices (row-major), shaped (N, Qy, Qx), in the file's dtype.

        Reads each file chunk at most once, never a whole chunk for a few scattered patterns,
        and returns them in the order asked.
        """
        idx = np.asarray(flat_indices, dtype=np.int64).ravel()
        if idx.size == 0:
            return np.empty((0, *self.detector_shape), dtype=self.dtype)
        if idx.min() < 0 or idx.max() >= self.n_patterns:
            raise IndexError(f"pattern index out of range 0..{self.n_patterns - 1}")
        # Per dask chunk, the patterns asked for are read as one box (scan rows x columns) when
        # they fill at least a quarter of it (or are many), else one by one. A plain slice
        # reaches the file library as that selection (dask fuses it into the read) unless
        # another slice of the same chunk is computed with it, so the lone reads of one chunk
        # go in separate rounds: a few scattered patterns never read whole chunks.
        unique, inverse = np.unique(idx, return_inverse=True)
        rows, cols = np.divmod(unique, self.scan_shape[1])
        row_edges = np.cumsum((0, *self.data.chunks[0]))
        col_edges = np.cumsum((0, *self.data.chunks[1]))
        block = (np.searchsorted(row_edges, rows, side="right") * len(col_edges)
                 + np.searchsorted(col_edges, cols, side="right"))
        rounds: list[list[tuple[np.ndarray, Any, Any]]] = [[]]  # (members, array, pick)
        for b in np.unique(block):
            members = np.flatnonzero(block == b)
            r, c = rows[members], cols[members]
            r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
            if (r1 - r0) * (c1 - c0) <= 4 * len(members) or len(members) > 32:
                rounds[0].append((members, self.data[r0:r1, c0:c1], (r - r0, c - c0)))
                continue
            for k, m in enumerate(members):
                if k >= len(rounds):
                    rounds.append([])
                rounds[k].append((np.array([m]), self.data[int(rows[m]), int(cols[m])], None))
        import dask

        out = np.empty((len(unique), *self.detector_shape), dtype=self.dtype)
        for parts in rounds:
            got = dask.compute(*[array for _, array, _ in parts])
            for (members, _, pick), values in zip(parts, got):
                values = np.asarray(values)
                out[members] = values[pick] if pick is not None else values[None]
        return out[inverse]

    # -- lifetime ------------------------------------------------------------------------
    def add_closer(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # closing must never raise over the caller's own error
                pass

    def __enter__(self) -> "Dataset4D":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_data(self, data: da.Array, **changes: Any) -> "Dataset4D":
        """A view of this dataset with other data (same file handles, shared closers)."""
        fields = {
            "calibration": self.calibration, "metadata": dict(self.metadata), "path": self.path,
            "labels": self.labels, "_closers": self._closers,
        }
        fields.update(changes)
        return Dataset4D(data=data, **fields)

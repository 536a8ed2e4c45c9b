"""The reconstructions an embedding pass computes, kept for browsing instead of thrown away.

A :class:`ReconstructionStore` holds one float16 pattern per scan position, (Ry, Rx, H, W), in
the model's preprocessed [0, 1] units. Below a byte budget it is an in-memory array; above it,
a ``.npy`` file memory-mapped from a private temporary folder (``directory`` chooses where it
is made, e.g. next to the results). The file is written batch by batch as the embedding pass
produces reconstructions and flushed every ``flush_bytes``, so the pages it dirties never pile
up in memory whatever the scan size; reading one pattern back touches only that pattern's
bytes (each pattern is contiguous in the file). :meth:`close` (or the store being garbage
collected, or the interpreter exiting) removes the folder and its file.

float16 keeps 11 significant bits: for values in [0, 1] a stored pattern is within 2**-11
(about 5e-4) of the decoder's float32 output.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

#: stores up to this many bytes live in memory; larger ones are memory-mapped files
DEFAULT_MEMORY_BUDGET = 512 * 2**20
#: the on-disk store is flushed after this many bytes written (bounds dirty pages)
DEFAULT_FLUSH_BYTES = 64 * 2**20
DTYPE = np.float16
#: how far a stored value may lie from the float32 it was made from, for values in [0, 1]
TOLERANCE = 2.0**-11


def _remove(folder: str | None, array_ref: list) -> None:
    array_ref.clear()  # drop the memmap before its file goes
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class ReconstructionStore:
    """Per-position reconstructions (float16), in memory or on disk, filled batch by batch.

    ``scan_shape`` is the grid the embedding pass runs on (the preprocessed scan view's),
    ``pattern_shape`` the model input's (H, W). ``source`` is free for the caller: the GUI
    records the model (and dataset) the reconstructions came from, so they are never shown
    for another one. Positions are marked as they are written: :meth:`has` tells whether one
    is stored yet, and :attr:`complete` whether every one is.
    """

    def __init__(self, scan_shape: tuple[int, int], pattern_shape: tuple[int, int], *,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, directory: str | Path | None = None,
                 flush_bytes: int = DEFAULT_FLUSH_BYTES, source: Any = None) -> None:
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.pattern_shape = (int(pattern_shape[0]), int(pattern_shape[1]))
        self.source = source
        shape = (*self.scan_shape, *self.pattern_shape)
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPE).itemsize
        self._written = np.zeros(self.scan_shape, dtype=bool)
        self._lock = threading.Lock()
        self._flush_bytes = max(1, int(flush_bytes))
        self._unflushed = 0
        self.folder: Path | None = None
        if self.nbytes <= memory_budget:
            self._array: np.ndarray | None = np.zeros(shape, dtype=DTYPE)
        else:
            if directory is not None:
                Path(directory).mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="stem4d-reconstructions-",
                                                dir=None if directory is None else str(directory)))
            try:
                self._array = np.lib.format.open_memmap(self.folder / "reconstructions.npy",
                                                        mode="w+", dtype=DTYPE, shape=shape)
            except BaseException:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise
        self._holder = [self._array]
        self._finalizer = weakref.finalize(self, _remove,
                                           None if self.folder is None else str(self.folder),
                                           self._holder)

    # -- state ---------------------------------------------------------------------------
    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    @property
    def path(self) -> Path | None:
        """The memory-mapped file (None for an in-memory store)."""
        return None if self.folder is None else self.folder / "reconstructions.npy"

    @property
    def closed(self) -> bool:
        return self._array is None

    @property
    def complete(self) -> bool:
        return bool(self._written.all())

    def has(self, ry: int, rx: int) -> bool:
        """Whether the reconstruction at (ry, rx) is stored (False outside the grid)."""
        if self._array is None:
            return False
        ny, nx = self.scan_shape
        return 0 <= ry < ny and 0 <= rx < nx and bool(self._written[ry, rx])

    # -- writing -------------------------------------------------------------------------
    def put(self, rows: np.ndarray, cols: np.ndarray, patterns: np.ndarray) -> None:
        """Store ``patterns`` (N, H, W) at scan positions (rows[i], cols[i])."""
        patterns = np.asarray(patterns)
        if patterns.shape[-2:] != self.pattern_shape:
            raise ValueError(f"patterns are {patterns.shape[-2:]}, the store holds "
                             f"{self.pattern_shape}")
        with self._lock:
            if self._array is None:
                raise RuntimeError("the reconstruction store is closed")
            self._array[rows, cols] = patterns.astype(DTYPE, copy=False)
            self._written[rows, cols] = True
            if self.on_disk:
                self._unflushed += patterns.size * np.dtype(DTYPE).itemsize
                if self._unflushed >= self._flush_bytes:
                    self._array.flush()
                    self._unflushed = 0

    def finish(self) -> None:
        """Flush what is written (call when the embedding pass is done)."""
        with self._lock:
            if self.on_disk and self._array is not None:
                self._array.flush()
                self._unflushed = 0

    # -- reading -------------------------------------------------------------------------
    def get(self, ry: int, rx: int) -> np.ndarray:
        """The reconstruction at (ry, rx) as a float32 (H, W) array (KeyError if not stored)."""
        if not self.has(ry, rx):
            raise KeyError(f"no reconstruction stored at ({ry}, {rx})")
        return np.asarray(self._array[ry, rx], dtype=np.float32)

    def close(self) -> None:
        """Drop the array and remove the on-disk folder (idempotent)."""
        with self._lock:
            self._array = None
            self._finalizer()

    def __enter__(self) -> "ReconstructionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"on disk at {self.folder}" if self.on_disk else "in memory"
        return (f"ReconstructionStore({self.scan_shape[0]}x{self.scan_shape[1]} of "
                f"{self.pattern_shape[0]}x{self.pattern_shape[1]}, {self.nbytes / 2**20:.1f} MiB "
                f"{where}, {int(self._written.sum())} stored)")


__all__ = ["DEFAULT_MEMORY_BUDGET", "ReconstructionStore", "TOLERANCE"]

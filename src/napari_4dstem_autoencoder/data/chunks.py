"""Choosing dask chunks for 4D-STEM arrays: whole patterns, aligned to the file's own chunks."""

from __future__ import annotations

import dask.array as da
import numpy as np

#: bytes per dask chunk: big enough to amortise per-task overhead and HDF5 calls, small enough
#: that a couple of chunks in flight keep memory bounded on a laptop
DEFAULT_CHUNK_BYTES = 64 * 2**20


def scan_chunks(shape: tuple[int, ...], itemsize: int, file_chunks: tuple[int, ...] | None = None,
                target_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, ...]:
    """Chunk shape (ry, rx, Qy, Qx) holding whole patterns, about ``target_bytes`` large.

    Whole scan rows are preferred (row-major files read sequentially); the row count is rounded
    to a multiple of the file's chunk rows so one HDF5 chunk is never decoded twice.
    """
    ry, rx, qy, qx = shape
    pattern = max(qy * qx * itemsize, 1)
    per_row = pattern * rx
    fy = file_chunks[0] if file_chunks else 1
    fx = file_chunks[1] if file_chunks else 1
    if per_row <= target_bytes:
        rows = max(1, target_bytes // per_row)
        if fy > 1:
            rows = max(fy, rows // fy * fy)
        return (min(rows, ry), rx, qy, qx)
    cols = max(1, target_bytes // pattern)
    if fx > 1:
        cols = max(fx, cols // fx * fx)
    return (min(fy, ry), min(cols, rx), qy, qx)


def rechunk_whole_patterns(data: da.Array, target_bytes: int = DEFAULT_CHUNK_BYTES) -> da.Array:
    """Rechunk a 4-D dask array into whole-pattern chunks of about ``target_bytes``.

    The current chunk shape stands in for the file's chunking, so merged chunks stay aligned.
    """
    prev = tuple(max(c) for c in data.chunks)
    chunks = scan_chunks(data.shape, np.dtype(data.dtype).itemsize, prev, target_bytes)
    if tuple(max(c) for c in data.chunks) == chunks:
        return data
    return data.rechunk(chunks)


def strided_read_bytes(shape: tuple[int, ...], itemsize: int, stride: int,
                       file_chunk_scan: tuple[int, int] = (1, 1)) -> int:
    """Bytes the file library decodes to read every ``stride``-th position along both scan axes.

    ``file_chunk_scan`` is how many scan positions (rows, columns) one storage chunk of the file
    spans (``Dataset4D.metadata["file_chunk_scan"]``; (1, 1) for memory maps and per-pattern
    chunks): a chunk is decoded whole as soon as one of its positions is read, so a strided read
    of a file chunked in blocks of 16 x 16 positions costs up to 256 patterns per position read.
    """
    ry, rx, qy, qx = (int(s) for s in shape[:4])
    cy, cx = (max(1, int(c)) for c in file_chunk_scan)
    stride = max(1, int(stride))
    pattern = qy * qx * itemsize

    def touched(n: int, c: int) -> int:  # positions decoded along one axis
        reads = -(-n // stride)
        if stride >= c:  # every read position lies in its own chunk
            return min(n, reads * c)
        return n  # consecutive reads share chunks: every chunk along the axis is decoded

    return touched(ry, cy) * touched(rx, cx) * pattern

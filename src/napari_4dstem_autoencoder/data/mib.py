"""Consistency checks for Quantum Detectors Merlin .mib files (read by rosettasciio).

rosettasciio reads a truncated .mib silently as fewer frames; here the file size is checked
against the frame header and the .hdr frame count first, so a truncated file is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import DatasetError

_BYTES = {"U01": 1 / 8, "U08": 1, "U16": 2, "U32": 4, "U64": 8, "R64": 8}


def mib_frame_layout(path: Path) -> tuple[int, int, int, int]:
    """(header bytes, rows, cols, bytes per frame) from the first frame header of a .mib file."""
    with open(path, "rb") as fh:
        head = fh.read(384)
    fields = head.split(b",")
    if len(fields) < 7 or fields[0] != b"MQ1":
        raise DatasetError(path, "not a Merlin .mib file (no 'MQ1' frame header)")
    try:
        offset = int(fields[2])
        cols, rows = int(fields[4]), int(fields[5])
        kind = fields[6].decode("ascii").strip()
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"unreadable Merlin frame header ({exc})") from None
    if kind == "R64":
        raise DatasetError(path, "RAW-mode .mib files are not supported by rosettasciio")
    if kind not in _BYTES:
        raise DatasetError(path, f"unknown Merlin pixel type {kind!r}")
    n_bytes = int(rows * cols * _BYTES[kind])
    return offset, rows, cols, offset + n_bytes


def mib_frame_dtype(path: Path):
    """The file's frames as a numpy record (``header`` bytes, ``data`` (rows, cols) big-endian
    counts, in file order: rosettasciio returns them with the rows flipped), or None for pixel
    types that are not plain integers (1-bit packed U01, RAW R64)."""
    import numpy as np

    offset, rows, cols, _ = mib_frame_layout(path)
    kind = {"U08": ">u1", "U16": ">u2", "U32": ">u4", "U64": ">u8"}
    with open(path, "rb") as fh:
        fields = fh.read(384).split(b",")
    pixel = fields[6].decode("ascii", "replace").strip()
    if pixel not in kind:
        return None
    return np.dtype([("header", f"V{offset}"), ("data", kind[pixel], (rows, cols))])


def header_frame_count(hdr: Path) -> int | None:
    """'Frames in Acquisition' from a Merlin .hdr text header, or None when it is not there."""
    with open(hdr, "rb") as fh:  # a Merlin header is ~2 kB; never read a huge file whole
        text = fh.read(1 << 16).decode("latin-1")
    match = re.search(r"Frames in Acquisition \(Number\):\s*(\d+)", text)
    return int(match.group(1)) if match else None


def check_mib_size(path: Path) -> int:
    """Raise :class:`DatasetError` when the .mib size does not fit its headers; return frame count."""
    _, rows, cols, frame_bytes = mib_frame_layout(path)
    size = path.stat().st_size
    hdr = path.with_suffix(".hdr")
    expected = header_frame_count(hdr) if hdr.is_file() else None
    if expected is not None and size != expected * frame_bytes:
        raise DatasetError(
            path,
            f"file holds {size} bytes but {hdr.name} says {expected} frames of {frame_bytes} bytes "
            f"({rows}x{cols} pixels + header) = {expected * frame_bytes} bytes; the file is "
            "truncated or the header belongs to another acquisition",
        )
    if size % frame_bytes:
        raise DatasetError(
            path,
            f"file size {size} is not a whole number of {frame_bytes}-byte frames; it is truncated",
        )
    return size // frame_bytes


_PIXEL_TYPES = {1: "U08", 2: "U16", 4: "U32"}


def write_mib(path: Path, data, *, header: bool = True, rows_per_write: int = 8) -> Path:
    """Write a (Ry, Rx, Qy, Qx) unsigned-integer scan as a single-chip Merlin .mib (+ .hdr).

    For tests and benchmarks: every frame gets a 384-byte ``MQ1`` header and big-endian
    counts, stored bottom row first, so rosettasciio (which flips the detector rows of what
    it reads) returns ``data`` as given. The .hdr records the frame count and the frames per
    scan row, so the scan shape is read from it. ``data`` may be a numpy or dask array;
    ``rows_per_write`` scan rows are held in memory at a time.
    """
    import numpy as np

    path = Path(path)
    ry, rx, qy, qx = (int(s) for s in data.shape)
    itemsize = np.dtype(data.dtype).itemsize
    if np.dtype(data.dtype).kind != "u" or itemsize not in _PIXEL_TYPES:
        raise ValueError(f"a .mib holds uint8, uint16 or uint32 counts, not {data.dtype}")
    kind = _PIXEL_TYPES[itemsize]
    frame = np.dtype([("header", "S384"), ("data", f">u{itemsize}", (qy, qx))])

    def head(n: int) -> bytes:
        stamp = f"2024-01-01T00:00:{n % 60:02d}.{n:09d}Z"[:30]
        text = (f"MQ1,{n + 1:06d},00384,01,{qx:04d},{qy:04d},{kind},   1x1,01,"
                f"2024-01-01 00:00:00.000000,0.001000,0,0,0,1.0E+1,0,0,0,0,0,0,0,3RX,"
                f"MQ1A,{stamp},1000000ns,{8 * itemsize},")
        return text.encode("ascii").ljust(384, b"\0")

    with open(path, "wb") as fh:
        for y0 in range(0, ry, rows_per_write):
            rows = np.asarray(data[y0:y0 + rows_per_write]).reshape(-1, qy, qx)
            out = np.empty(len(rows), dtype=frame)
            first = y0 * rx
            out["header"] = [head(first + i) for i in range(len(rows))]
            out["data"] = rows[:, ::-1, :]
            fh.write(out.tobytes())
    if header:
        path.with_suffix(".hdr").write_text(
            "HDR,\t\nChip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX\n"
            "Assembly Size (NX1, 2X2):\t   1x1\n"
            f"Counter Depth (number):\t{8 * itemsize if itemsize < 4 else 24}\n"
            f"Frames in Acquisition (Number):\t{ry * rx}\n"
            f"Frames per Trigger (Number):\t{rx}\nEnd\t\n")
    return path

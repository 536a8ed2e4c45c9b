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

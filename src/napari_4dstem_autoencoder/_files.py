"""Checks every writer of the package makes before it writes: an output never replaces an input,
a device or a folder, nor an existing file nobody asked to replace, and it fits on the disk.

Belongs to no layer (it imports nothing of the package), so the CLI and the docks share it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

#: the suffixes of the files one 4D-STEM data set can be spread over (a Merlin .mib and its
#: .hdr, an EMPAD .raw and its .xml, ...): siblings with the same stem are inputs too
_DATA_SUFFIXES = {".mib", ".hdr", ".raw", ".xml", ".blo", ".dm3", ".dm4", ".emd", ".hspy",
                  ".zspy", ".tvips", ".h5", ".hdf5", ".hdf", ".nxs", ".npy"}
_ARINA_MASTER = re.compile(r"^(?P<stem>.+)_master\.h5$", re.IGNORECASE)


class OutputError(ValueError):
    """An output path that must not be written (the message names it and says why)."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def input_family(path: str | os.PathLike) -> set[Path]:
    """The resolved files (and folders) that make up the data set at ``path``.

    The path itself, siblings with the same stem and a data suffix (``scan.mib`` and
    ``scan.hdr``), the data files of an Arina master (``x_master.h5`` -> ``x_data_*.h5``) and,
    for an EMPAD ``.raw``/``.xml``, every ``.raw``/``.xml`` beside it.
    """
    p = _resolved(path)
    family = {p}
    folder = p.parent
    if not folder.is_dir():
        return family
    stem = p.name.split(".", 1)[0]
    empad = p.suffix.lower() in (".raw", ".xml")
    arina = _ARINA_MASTER.match(p.name)
    for sibling in folder.iterdir():
        suffix = sibling.suffix.lower()
        if suffix not in _DATA_SUFFIXES:
            continue
        if (sibling.name.split(".", 1)[0] == stem
                or (empad and suffix in (".raw", ".xml"))
                or (arina and sibling.name.startswith(f"{arina.group('stem')}_data_"))):
            family.add(_resolved(sibling))
    return family


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                 overwrite: bool = False, what: str = "output",
                 hint: str = "pass --overwrite to replace it") -> Path:
    """Refuse ``path`` as an output unless it is safe to write; returns it resolved.

    Refused: a path that resolves to one of ``inputs`` (or lies inside an input folder, such
    as a .zspy store), an existing folder, device, FIFO or socket, and an existing file unless
    ``overwrite``. The folder it goes into must exist (or be creatable) and be writable.
    """
    target = _resolved(path)
    for source in inputs:
        src = _resolved(source)
        if target == src or src in target.parents:
            raise OutputError(f"{path}: is an input of this command ({source}); "
                              f"choose another {what} path, inputs are never overwritten")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot be used as the {what} ({exc.strerror})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a folder; the {what} needs a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path}: exists and is not a regular file (a device, FIFO or "
                              f"socket); the {what} is only written to regular files")
        if not overwrite:
            raise OutputError(f"{path}: exists; {hint}")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create its folder {folder} ({exc.strerror})") from None
    try:  # os.access does not see read-only mounts or ACLs: try it
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: its folder {folder} is not writable ({exc.strerror})") from None
    return target


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str = "output") -> None:
    """Refuse to start work whose ``need_bytes`` output would not fit on the disk of ``path``."""
    folder = _resolved(path).parent
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OutputError(f"{path}: {free / 2**20:.0f} MiB free in {folder}, the {what} needs "
                          f"about {need_bytes / 2**20:.0f} MiB; free some space or write "
                          "elsewhere")


def user_file_mode() -> int:
    """The permission bits a new file gets under the user's umask (``0o666 & ~umask``).

    Temporary files (``mkstemp``) are created 0600; an output renamed from one gets these
    bits instead, as a file the user wrote themselves would.
    """
    try:  # Linux: read it without changing it (os.umask would race other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


__all__ = ["OutputError", "check_free_space", "check_output", "input_family", "user_file_mode"]

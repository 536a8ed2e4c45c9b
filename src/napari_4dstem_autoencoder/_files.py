"""Every writer of the package goes through here: the checks before it writes (an output never
replaces an input, a device or a folder, nor an existing file nobody asked to replace, and it
fits on the disk) and the one atomic write (a verified temporary renamed over the target; the
temporaries a killed writer left are removed by the next write).

Belongs to no layer (it imports nothing of the package), so the CLI and the docks share it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

try:  # POSIX: a live writer holds an exclusive lock on its temporary
    import fcntl
except ImportError:  # pragma: no cover - Windows: the age rule alone decides
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

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


#: temporaries of :func:`atomic_write_bytes`: ``.<target name>.<16 hex digits>.stem-ae.tmp``
_TEMP_SUFFIX = ".stem-ae.tmp"
_TEMP_PATTERN = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{16}\.stem-ae\.tmp", re.DOTALL)
#: a temporary younger than this may belong to a writer that is still running
STALE_TEMPORARY_AGE_S = 60.0


# -- atomic writes and their temporaries ----------------------------------------------------

def is_own_temporary(name: str) -> bool:
    """Whether ``name`` is exactly the name :func:`atomic_write_bytes` gives its temporaries."""
    return _TEMP_PATTERN.fullmatch(name) is not None


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusively created (and, on POSIX, exclusively locked) temporary beside ``path``,
    with the permissions a plain ``open()`` gives (0o666 less the umask), which the target keeps."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_CLOEXEC", 0))
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a file system without locks: the age rule protects it
                pass
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"cannot create a temporary file beside {path}")


def _held_by_live_writer(path: str) -> bool | None:
    """True if another open file holds the writer's lock on ``path``, False if nobody does,
    None if this file system cannot tell (or the file cannot be opened)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases our lock, if we took it
    return False


def remove_stale_temporaries(directory: str | os.PathLike, *,
                             min_age_s: float = STALE_TEMPORARY_AGE_S) -> list[Path]:
    """Remove the temporaries that interrupted :func:`atomic_write_bytes` calls (a process
    killed mid-write) left in ``directory``; returns the paths removed and logs a warning with
    how many and how many bytes.

    Only a file that is safe to remove goes:

    - its name is exactly ``.<name>.<16 hex digits>.stem-ae.tmp`` (:func:`is_own_temporary`;
      nothing else is ever touched), it is a regular file (not a link) and, on POSIX, owned by
      this user;
    - it was last modified at least ``min_age_s`` seconds ago (default 60 s): a writer that is
      still writing keeps its file's modification time fresh, and the moments when a live
      writer holds no lock (between creating and locking its temporary; reading it back and
      renaming it, after the lock is let go so that readers that lock, such as HDF5, can
      open it) take well under a second;
    - on POSIX, no live writer holds its lock: a writer locks its temporary (``flock``) while
      it writes and fsyncs it, and the kernel drops the lock when the process dies, so a slow
      writer (a stalled disk, a network file system) is not robbed of its file. Where the
      file system cannot lock, the age rule alone decides. The worst a wrong guess can do is
      make a stalled writer's rename fail (it raises; the target is never damaged).

    A missing directory gives ``[]``; a file that cannot be removed is logged and skipped.
    """
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    removed: list[Path] = []
    total = 0
    for entry in entries:
        if not is_own_temporary(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        if now - st.st_mtime < min_age_s or _held_by_live_writer(entry.path):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another process cleaned it first
        except OSError as exc:
            log.warning("could not remove the stale temporary file %s: %s", entry.path, exc)
            continue
        removed.append(Path(entry.path))
        total += st.st_size
    if removed:
        log.warning("removed %d stale temporary file(s) (%d bytes) that interrupted writes left "
                    "in %s: %s", len(removed), total, directory,
                    ", ".join(p.name for p in removed))
    return removed


def _cause(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *,
                       verify: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the new one.

    Stale temporaries of earlier, interrupted writes into the directory are removed first
    (:func:`remove_stale_temporaries`). The bytes go to a new temporary file in the same
    directory (``.<name>.<16 hex>.stem-ae.tmp``, locked while it is written), are fsynced and
    verified - the file has exactly ``len(data)`` bytes, and ``verify(temporary)`` (if given)
    returns; whatever it raises is reported as the file not reading back - then renamed over
    the target with ``os.replace`` (atomic on POSIX and Windows); the directory is fsynced so
    the rename survives a power cut. A failure (a full disk, a file size limit, a short write,
    a file that does not read back) leaves the old file and no temporary behind and raises
    ``OSError`` naming ``path`` and the cause.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    view = memoryview(data).cast("B")
    tmp: Path | None = None
    try:
        fd, tmp = _create_temporary(path)
        try:
            written = 0
            while written < len(view):
                n = os.write(fd, view[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size != len(view):
            raise OSError(errno.EIO, f"short write: the file has {size} of {len(view)} bytes "
                                     "(a full disk or a file size limit?)")
        if verify is not None:
            try:
                verify(tmp)
            except Exception as exc:
                raise OSError(errno.EIO, f"the written file does not read back ({exc})") from exc
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as cleanup:  # pragma: no cover - reported, the original error wins
                log.warning("could not remove the temporary file %s: %s", tmp, cleanup)
        if isinstance(exc, OSError):
            message = f"cannot write {path}: {_cause(exc)}"
            raise (OSError(exc.errno, message) if exc.errno is not None
                   else OSError(message)) from exc
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


__all__ = ["OutputError", "STALE_TEMPORARY_AGE_S", "atomic_write_bytes", "check_free_space",
           "check_output", "input_family", "is_own_temporary", "remove_stale_temporaries"]

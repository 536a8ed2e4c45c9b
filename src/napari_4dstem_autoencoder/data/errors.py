"""Errors and warnings about input files.

Every message starts with the file it is about, so a user with many files open knows which one
is wrong, and says what is wrong with it. :class:`DatasetError` is raised for input that cannot
be read as 4D-STEM data; :class:`DataWarning` is warned (``warnings.warn(DataWarning(...))``) for
data that opens but is not what it seems (all zero, constant, never written, negative counts,
a guessed scan shape). The CLI prints warnings; the napari reader shows them as notifications.
"""

from __future__ import annotations

from pathlib import Path


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "<array>"


class _AboutAFile:
    """A message that starts with the file it is about, keeping the path and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{_where(self.path)}: {problem}")

    def __reduce__(self):  # picklable (worker processes) although __init__ takes two arguments
        return type(self), (self.path, self.problem)


class DatasetError(_AboutAFile, ValueError):
    """A file could not be opened as a 4D-STEM dataset (message names the file and the problem)."""


class DataWarning(_AboutAFile, UserWarning):
    """A file opened, but its data is suspicious (message names the file and the problem)."""

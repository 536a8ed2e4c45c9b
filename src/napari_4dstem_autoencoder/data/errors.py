"""Errors raised for input that cannot be read as 4D-STEM data.

Every message starts with the file it is about, so a user with many files open knows which one
is wrong, and says what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A file could not be opened as a 4D-STEM dataset (message names the file and the problem)."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        where = str(self.path) if self.path is not None else "<array>"
        super().__init__(f"{where}: {problem}")

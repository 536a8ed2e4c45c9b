"""One check shared by the JSON round trips of the configs that travel in checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any


def checked_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    """A copy of ``data`` after checking it is a mapping of ``cls``'s dataclass fields only.

    A checkpoint written by a newer version (or edited by hand) fails here with a clear
    message instead of a TypeError from the constructor.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")
    return dict(data)

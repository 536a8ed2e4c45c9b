"""The training objective: every loss term, the data-fitted ones too, behind one interface.

``ObjectiveConfig`` imports without torch; ``Objective`` loads torch on first use.
"""

from .config import ObjectiveConfig

__all__ = ["Objective", "ObjectiveConfig"]


def __getattr__(name: str):
    if name == "Objective":
        from .objective import Objective
        return Objective
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

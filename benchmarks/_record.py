"""What every benchmark shares: the run's provenance, a printed table, ``results/<name>.json``.

A benchmark measures its rows, prints them with :func:`print_table` and writes them with
:func:`save`, which regenerates ``benchmarks/results/<name>.json`` (``<name>.quick.json`` for
``--quick`` smoke runs, which git ignores) with the git commit (and whether tracked files
differ from it), the date, the machine, torch's version and thread count, the device and the
exact command line. ``key`` names the row fields that identify a row, so ``compare.py`` can
match the rows of two runs.

Not a benchmark itself: imported by the scripts beside it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
#: the shared data beside a checkout (``<repo>/../shared``)
SHARED = REPO.parent / "shared"


# -- provenance ---------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit checked out and whether tracked files differ from it (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def torch_state(device: str | None) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                           "device": device}
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return out


def provenance(device: str | None) -> dict[str, Any]:
    return {"git": git_state(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "torch": torch_state(device),
            "command": shlex.join([Path(sys.executable).name, *sys.argv])}


# -- results ------------------------------------------------------------------------------

def result_path(name: str, quick: bool = False) -> Path:
    return RESULTS / f"{name}{'.quick' if quick else ''}.json"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null, NumPy scalars as Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def save(name: str, rows: Sequence[dict[str, Any]], *, key: Sequence[str], device: str | None,
         settings: dict[str, Any], quick: bool = False,
         summary: Sequence[dict[str, Any]] = ()) -> Path:
    """Write ``results/<name>[.quick].json`` afresh: provenance, settings, rows (and summary)."""
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "quick": quick, **provenance(device),
              "settings": settings, "key": list(key), "rows": list(rows),
              "summary": list(summary)}
    path.write_text(json.dumps(_clean(record), indent=1) + "\n")
    return path


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def settings_of(args: Any) -> dict[str, Any]:
    """An argparse namespace as JSON-friendly settings."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# -- figures ------------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else float("nan")


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero or missing."""
    return a / b if b and math.isfinite(b) and math.isfinite(a) else float("nan")


@dataclass(frozen=True)
class Column:
    """One printed column: the row field, its format spec and its header (default: the field)."""

    key: str
    fmt: str = ""
    header: str | None = None


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if fmt else str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
                title: str | None = None) -> None:
    """Rows as an aligned text table (text left, numbers right)."""
    heads = [c.header or c.key for c in columns]
    cells = [[_cell(r.get(c.key), c.fmt) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    numeric = [all(isinstance(r.get(c.key), (int, float)) or r.get(c.key) is None for r in rows)
               for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    if title:
        print(f"\n{title}")
    print(line(heads))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def run_isolated(script: Path, args: Sequence[str]) -> Any:
    """Run ``python script args`` in a fresh process and return the JSON its last stdout line
    holds (so a stage's memory and imports are its own); stderr passes through."""
    out = subprocess.run([sys.executable, str(script), *args], check=True, text=True,
                         stdout=subprocess.PIPE)
    return json.loads(out.stdout.strip().splitlines()[-1])

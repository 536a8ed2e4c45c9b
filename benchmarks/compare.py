"""Compare two runs of one benchmark: every numeric field of the rows both runs share, old, new
and new / old, with where each run came from (commit, date, machine, command).

    python benchmarks/compare.py OLD.json NEW.json
    python benchmarks/compare.py <(git show HEAD~3:benchmarks/results/bench_train.cpu.json) \\
        benchmarks/results/bench_train.cpu.json

Rows are matched on the fields the results file names as its ``key``; rows only one run has
are listed by key. Higher is not always better: the field names say what was measured.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, load, print_table, ratio  # noqa: E402


def origin(run: dict[str, Any]) -> str:
    git = run.get("git") or {}
    commit = (git.get("commit") or "no commit")[:10] + ("+dirty" if git.get("dirty") else "")
    cpu = run.get("machine", {}).get("cpu", "?")
    device = run.get("torch", {}).get("device_name") or run.get("torch", {}).get("device")
    where = f"{cpu}, device {device}" if device else cpu
    return f"{commit}, {run.get('date')}, {where}: {run.get('command')}"


def indexed(run: dict[str, Any], key: list[str]) -> dict[tuple, dict[str, Any]]:
    return {tuple(row.get(k) for k in key): row for row in run["rows"]}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def comparison(old: dict[str, Any], new: dict[str, Any], key: list[str]) -> list[dict[str, Any]]:
    before = indexed(old, key)
    out = []
    for ident, row in indexed(new, key).items():
        prev = before.get(ident)
        if prev is None:
            continue
        for field, value in row.items():
            if field in key or not (is_number(value) and is_number(prev.get(field))):
                continue
            out.append({"row": " ".join(str(v) for v in ident), "field": field,
                        "old": prev[field], "new": value, "new/old": ratio(value, prev[field])})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    old, new = load(args.old), load(args.new)
    if old.get("benchmark") != new.get("benchmark"):
        print(f"note: different benchmarks ({old.get('benchmark')} vs {new.get('benchmark')})")
    key = new.get("key") or old.get("key") or []
    print(f"old: {origin(old)}\nnew: {origin(new)}")
    print_table(comparison(old, new, key),
                [Column("row"), Column("field"), Column("old", ".4g"), Column("new", ".4g"),
                 Column("new/old", ".3f")])
    only = set(indexed(old, key)) ^ set(indexed(new, key))
    for ident in sorted(only, key=str):
        side = "old" if ident in indexed(old, key) else "new"
        print(f"only in {side}: {' '.join(str(v) for v in ident)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

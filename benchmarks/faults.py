"""Fault injection through the real ``stem-ae`` command line: how many faults give a clear error
(or a warning where the data is merely suspicious), how many crash, how many lose data.

    python benchmarks/faults.py            # ~3 min on 2 CPU cores; --kills N for more kill -9 runs

Each case runs ``python -m napari_4dstem_autoencoder.cli ...`` in a fresh process on files made
here (a small scan, a checkpoint trained on it, a results file), and is scored on:

- ``clear``: the exit status is what the case expects (2 for bad input, 0 with one
  ``stem-ae: warning:`` line for suspicious data, 143 for SIGTERM) and stderr has no traceback;
- ``crash``: a traceback, or the process died of a signal it did not ask for (a segfault);
- ``lost``: any input file changed, or a previous output was replaced by a broken one.

kill -9 trials: a training run is killed at a random moment after its first checkpoint; the trial
passes when the last checkpoint still loads and the next run removes the stale temporary files.
Writes ``results/faults.json`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, print_table, save  # noqa: E402

CLI = [sys.executable, "-m", "napari_4dstem_autoencoder.cli"]
TRAIN = ["--preset", "continuous", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0",
         "--device", "cpu", "--quiet"]


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str = "error"               # error | warning | ok | sigterm
    needle: str = ""                    # the message must say this
    limit_bytes: int | None = None      # RLIMIT_FSIZE for the process
    keep: list[Path] = field(default_factory=list)  # outputs that must survive unchanged


def scan() -> np.ndarray:
    """A 4x4 scan of 32x32 patterns from the package's sample generator (counts)."""
    from napari_4dstem_autoencoder.data.sample import make_sample_arrays

    return make_sample_arrays(scan_shape=(4, 4), detector_shape=(32, 32))["counts"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def run(argv: list[str], limit_bytes: int | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess:
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limited if limit_bytes else None)


def tampered(ckpt: Path, out: Path, edit) -> Path:
    """A copy of ``ckpt`` with its metadata edited and the old checksum kept."""
    from safetensors.torch import save_file

    from napari_4dstem_autoencoder.training import checkpoints as ck

    tensors, meta = ck.read_checkpoint(ckpt)
    tensors = edit(tensors, meta) or tensors
    header = {"format": ck.FORMAT_NAME, "format_version": str(meta["format_version"]),
              ck._META_KEY: json.dumps(meta)}
    save_file(tensors, str(out), metadata=header)
    return out


def make_files(d: Path) -> dict[str, Path]:
    import h5py
    import torch

    f = {"data": d / "scan.npy", "ckpt": d / "model.safetensors", "results": d / "results.h5"}
    np.save(f["data"], scan())
    assert run(["train", f["data"], *TRAIN, "--out", f["ckpt"]]).returncode == 0
    assert run(["embed", f["data"], f["ckpt"], "--out", f["results"], "--device", "cpu",
                "--quiet"]).returncode == 0
    np.save(d / "zeros.npy", np.zeros((3, 3, 32, 32), np.float32))
    np.save(d / "negative.npy", scan().astype(np.float32) - 5)
    np.save(d / "complex.npy", (scan() * (1 + 1j)).astype(np.complex64))
    np.save(d / "objects.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    (d / "empty.h5").write_bytes(b"")
    with h5py.File(d / "vlen.h5", "w") as h:
        h.create_dataset("data", (3, 3, 32), dtype=h5py.vlen_dtype(np.float32))
    with h5py.File(d / "sparse.h5", "w") as h:  # 2 TiB declared, nothing written
        h.create_dataset("data", (1024, 1024, 1024, 512), dtype=np.uint32,
                         chunks=(1, 16, 1024, 512))
    (d / "loop_a.npy").symlink_to(d / "loop_b.npy")
    (d / "loop_b.npy").symlink_to(d / "loop_a.npy")
    (d / "dangling.npy").symlink_to(d / "gone.npy")
    os.mkfifo(d / "pipe.npy")
    (d / "link_to_data.safetensors").symlink_to(f["data"])
    torch.save({"w": torch.zeros(2)}, d / "pickle.pt")
    (d / "truncated.safetensors").write_bytes(f["ckpt"].read_bytes()[:5000])

    def equal_stats(t, meta):
        stats = meta["preprocessing"]["stats"]
        stats["hi"] = stats["lo"]

    def nan_weights(t, meta):
        t = dict(t)
        key = next(k for k in t if k.endswith("conv.weight"))
        t[key] = t[key] * float("nan")
        return t

    def huge_shape(t, meta):
        meta["input_shape"] = [200000, 200000]

    def string_history(t, meta):
        meta["history"] = "epoch 1"

    for name, edit in (("equal_stats", equal_stats), ("nan_weights", nan_weights),
                       ("huge_shape", huge_shape), ("string_history", string_history)):
        f[name] = tampered(f["ckpt"], d / f"{name}.safetensors", edit)
    return f


def cases(d: Path, f: dict[str, Path]) -> list[Case]:
    data, ckpt, results = f["data"], f["ckpt"], f["results"]
    return [
        Case("train --out onto the data", ["train", data, *TRAIN, "--out", data, "--overwrite"],
             needle="is an input"),
        Case("embed --out onto the data", ["embed", data, ckpt, "--out", data, "--overwrite"],
             needle="is an input"),
        Case("embed --out onto the checkpoint", ["embed", data, ckpt, "--out", ckpt,
                                                 "--overwrite"], needle="is an input"),
        Case("--out through a symlink to the data", ["train", data, *TRAIN, "--out",
                                                     d / "link_to_data.safetensors",
                                                     "--overwrite"], needle="is an input"),
        Case("train over a checkpoint without --resume", ["train", data, *TRAIN, "--out", ckpt],
             needle="exists"),
        Case("embed over results without --overwrite", ["embed", data, ckpt, "--out", results],
             needle="exists"),
        Case("--out a device node", ["train", data, *TRAIN, "--out", "/dev/null", "--overwrite"],
             needle="not a regular file"),
        Case("--out a folder", ["embed", data, ckpt, "--out", d], needle="is a folder"),
        Case("a pickle checkpoint", ["info", d / "pickle.pt"], needle="pickle"),
        Case("a truncated checkpoint", ["info", d / "truncated.safetensors"], needle="truncated"),
        Case("checkpoint stats hi = lo", ["info", f["equal_stats"]], needle="equal_stats"),
        Case("checkpoint weights NaN", ["info", f["nan_weights"]], needle="nan_weights"),
        Case("checkpoint input shape 200000^2", ["info", f["huge_shape"]], needle="huge_shape"),
        Case("checkpoint history a string", ["info", f["string_history"]],
             needle="string_history"),
        Case("an object-dtype .npy", ["info", d / "objects.npy"], needle="objects.npy"),
        Case("a variable-length HDF5 dataset", ["info", d / "vlen.h5"], needle="vlen.h5"),
        Case("an empty file", ["info", d / "empty.h5"], needle="empty"),
        Case("a symbolic link loop", ["info", d / "loop_a.npy"], needle="loop"),
        Case("a dangling symbolic link", ["info", d / "dangling.npy"], needle="gone.npy"),
        Case("a FIFO", ["info", d / "pipe.npy"], needle="not a regular file"),
        Case("--scan-shape -4 -4", ["info", data, "--scan-shape", "-4", "-4"],
             needle="at least 1"),
        Case("complex data", ["info", d / "complex.npy"], needle="complex"),
        Case("all-zero data", ["info", d / "zeros.npy"], expect="warning", needle="zero"),
        Case("negative counts", ["info", d / "negative.npy"], expect="warning",
             needle="negative"),
        Case("a never-written 2 TiB HDF5", ["info", d / "sparse.h5"], expect="warning",
             needle="ever written"),
        Case("embed over a file-size limit", ["embed", data, ckpt, "--out", d / "limited.h5",
                                              "--device", "cpu", "--quiet", "--overwrite"],
             needle="limited.h5", limit_bytes=300, keep=[d / "limited.h5"]),
        Case("export over a file-size limit", ["export", results, "--out-dir", d / "maps",
                                               "--overwrite"],
             needle="embeddings.tif", limit_bytes=300, keep=[d / "maps" / "embeddings.tif"]),
    ]


def score(case: Case, proc: subprocess.CompletedProcess, inputs: dict[Path, str],
          kept: dict[Path, str]) -> dict:
    err = proc.stderr.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    crashed = "Traceback" in err or proc.returncode < 0
    lost = any(digest(p) != h for p, h in {**inputs, **kept}.items())
    if case.expect == "error":
        # "stem-ae: error: ..." from the commands, "stem-ae CMD: error: ..." from argparse
        clear = (proc.returncode == 2 and lines and lines[-1].startswith("stem-ae")
                 and ": error: " in lines[-1] and case.needle in lines[-1])
    elif case.expect == "warning":
        clear = (proc.returncode == 0 and any(line.startswith("stem-ae: warning:")
                                              and case.needle in line for line in lines))
    else:
        clear = proc.returncode == 0
    return {"case": case.name, "rc": proc.returncode, "clear": bool(clear) and not crashed,
            "crash": crashed, "lost": lost, "message": lines[-1][:140] if lines else ""}


def sigterm_trial(d: Path, data: Path) -> dict:
    out = d / "sigterm.safetensors"
    proc = subprocess.Popen(CLI + ["train", str(data), "--preset", "continuous", "--epochs",
                                   "10000", "--batch-size", "4", "--val-fraction", "0",
                                   "--device", "cpu", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not out.exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint
    try:
        loadable = load_checkpoint(out).epoch >= 1
    except ValueError:
        loadable = False
    clear = proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err and loadable
    return {"case": "SIGTERM during training", "rc": proc.returncode, "clear": clear,
            "crash": "Traceback" in err, "lost": not loadable,
            "message": err.strip().splitlines()[0][:140] if err.strip() else ""}


def kill_trials(d: Path, data: Path, n: int, rng: random.Random) -> tuple[int, int, int]:
    """(trials, loadable afterwards, stale temporaries left after the next start)."""
    from napari_4dstem_autoencoder import _files
    from napari_4dstem_autoencoder.training import checkpoints as ck

    out = d / "killed.safetensors"
    loadable = stale = 0
    for _ in range(n):
        argv = CLI + ["train", str(data), "--preset", "continuous", "--epochs", "10000",
                      "--batch-size", "4", "--val-fraction", "0", "--device", "cpu", "--quiet",
                      "--out", str(out), "--overwrite"]
        before = out.stat().st_mtime if out.exists() else None
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while (not out.exists() or out.stat().st_mtime == before) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the next epochs' writes
        proc.kill()
        proc.wait()
        try:
            ck.load_checkpoint(out)
            loadable += 1
        except ValueError:
            pass
        _files.remove_stale_temporaries(d, min_age_s=0)  # what the next start does (age aside)
        stale += sum(1 for p in d.iterdir() if _files.is_own_temporary(p.name))
    return n, loadable, stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kill -9 trials (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stem-ae-faults-") as tmp:
        d = Path(tmp)
        f = make_files(d)
        inputs = {p: digest(p) for p in (f["data"], f["ckpt"], f["results"])}
        for case in cases(d, f):
            for p in case.keep:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"the previous file")
            kept = {p: digest(p) for p in case.keep}
            rows.append(score(case, run(case.argv, case.limit_bytes), inputs, kept))
        rows.append(sigterm_trial(d, f["data"]))
        trials, loadable, stale = kill_trials(d, f["data"], args.kills, random.Random(args.seed))
    summary = {"cases": len(rows), "clear": sum(r["clear"] for r in rows),
               "crashes": sum(r["crash"] for r in rows), "data_lost": sum(r["lost"] for r in rows),
               "kill9_trials": trials, "kill9_loadable": loadable,
               "kill9_stale_temporaries_left": stale}
    columns = [Column(k) for k in ("case", "rc", "clear", "crash", "lost", "message")]
    print_table(rows, columns, title="faults through stem-ae")
    print_table([summary], [Column(k) for k in summary], title="totals")
    print("wrote", save("faults", rows, key=["case"], device="cpu", settings=vars(args),
                        summary=[summary]))


if __name__ == "__main__":
    main()

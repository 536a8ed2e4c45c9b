"""Single-seed screen: the `prior` preset plus a neighbour-preserving (parametric-UMAP) loss.

Why: on the evaluation data the classes are connected clouds that k-means cuts (grain A of the
sample drifts with thickness), while the 10-nearest-neighbour graph of the preprocessed
patterns is 98-99 % class-pure. This loss asks the encoder to keep that graph: for each pattern
of a batch one of its ``--k`` nearest patterns (Euclidean, on the preprocessed patterns) is
encoded as well; the pair pays ``-log q(d)``, every other pair of the batch ``-log(1 - q(d))``,
with ``q(d) = 1 / (1 + A d^(2B))`` (UMAP's curve for min_dist 0.1). The total is `prior`'s
loss + ``--lam`` times this. No parameters are added. ``--loss ratio`` replaces it with the
pair's squared distance over the batch's mean squared distance (a trace ratio, no repulsion).
``--loss graph`` replaces it with the graph teacher of the ``graph`` preset
(``training/graph_teacher.py``: the batch's embeddings matched to diffusion-map coordinates of
the patterns' 15-neighbour graph; no second encoder pass), so its weight can be screened.

A plain loop around ``Autoencoder`` with the engine's settings (output prior from the mean
pattern, Adam, batch 32, log + normalise, detector bin 2, BN recalibrated on 256 patterns
before scoring), scored with ``eval_presets.evaluate`` at wall-clock marks (``--marks``,
minutes of training) or at step counts (``--step-marks``; independent of machine load).
docs/model.md ("A neighbour-preserving loss") has the table this produced.

    python benchmarks/screen_neighbour_loss.py sample --seed 1 --lam 0.1 --marks 3,10
    python benchmarks/screen_neighbour_loss.py sim --seed 2 --lam 0.1 --lr 3e-4 --marks 3,10
    python benchmarks/screen_neighbour_loss.py sample --seed 1 --lam 0.1 --threads 2 \\
        --step-marks 100,200
    python benchmarks/screen_neighbour_loss.py sample --seed 1 --loss ratio --step-marks 50
    python benchmarks/screen_neighbour_loss.py sim --seed 0 --loss graph --lam 1 --step-marks 40,80
    python benchmarks/screen_neighbour_loss.py sample --device cuda --step-marks 200,500,1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_presets as ep  # noqa: E402  (the same datasets, preprocessing and scores)

from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from napari_4dstem_autoencoder.model import Autoencoder  # noqa: E402
from napari_4dstem_autoencoder.model.batchnorm import recalibrate_batchnorm  # noqa: E402
from napari_4dstem_autoencoder.model.config import get_preset  # noqa: E402
from napari_4dstem_autoencoder.objective.graph_teacher import DiffusionTeacher  # noqa: E402

#: UMAP's fitted curve for min_dist = 0.1, spread = 1
A, B = 1.577, 0.895
SCORES = ["ari_all", "ari_core", "ari_raw_all", "ari_gmm_all", "ari_spectral_all", "probe_ari",
          "live_dims", "effective_dims", "psnr"]


def neighbour_loss(z: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair term, other-pairs term) for ``z`` = (anchors; their neighbours), (2B, D)."""
    d2 = torch.cdist(z, z).pow(2)
    q = 1.0 / (1.0 + A * (d2 + 1e-6).pow(B))
    n = 2 * batch
    pairs = torch.zeros(n, n, dtype=torch.bool, device=z.device)
    i = torch.arange(batch, device=z.device)
    pairs[i, i + batch] = True
    pairs[i + batch, i] = True
    others = ~(pairs | torch.eye(n, dtype=torch.bool, device=z.device))
    return (-torch.log(q[pairs].clamp_min(1e-6)).mean(),
            -torch.log((1 - q[others]).clamp_min(1e-6)).mean())


def neighbour_ratio(z: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair term, 0) for ``--loss ratio``: the anchors' mean squared distance to their
    neighbours over the mean squared distance between all embeddings of the batch.

    The graph Laplacian's trace ratio on a batch: small when neighbours sit close compared with
    the spread of the batch, which is the within/between ratio k-means minimises. Scale-free, so
    it cannot shrink the embedding to win; but nothing keeps the dimensions apart, and on the
    sample it wins by putting all the spread on one direction (docs/model.md).
    """
    anchors, neighbours = z[:batch], z[batch:]
    near = (anchors - neighbours).pow(2).sum(1).mean()
    spread = torch.cdist(z, z).pow(2).sum() / (z.shape[0] * (z.shape[0] - 1))
    return near / (spread + 1e-8), torch.zeros((), device=z.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", choices=["sim", "sample"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam", type=float, default=0.1, help="weight of the neighbour loss")
    ap.add_argument("--k", type=int, default=10, help="neighbours per pattern in the graph")
    ap.add_argument("--loss", choices=["umap", "ratio", "graph"], default="umap",
                    help="umap: attract the pair, repel the batch; ratio: neighbour distance "
                         "over batch spread; graph: the graph preset's diffusion-map teacher")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--marks", default="3,10", help="minutes of training at which to score")
    ap.add_argument("--step-marks", default="", help="optimiser steps at which to score")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sim-path", type=Path, default=ep.SIM_PATH)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    task = ep.load_sim(a.sim_path) if a.data == "sim" else ep.load_sample(32)
    x = ep.preprocess_all(task, Preprocessor.fit(task.dataset, PreprocessConfig(detector_bin=2)))
    x = x.astype(np.float32)
    n, bs = x.shape[0], a.batch_size
    flat = x.reshape(n, -1)
    graph = NearestNeighbors(n_neighbors=a.k + 1).fit(flat).kneighbors(flat)[1][:, 1:]
    purity = (task.labels.ravel()[graph] == task.labels.ravel()[:, None]).mean()
    print(f"{a.data}: {n} patterns of {x.shape[1]}x{x.shape[2]}; {a.k}-neighbour graph "
          f"{100 * purity:.1f} % class-pure; {a.loss} loss, lambda {a.lam}, Adam {a.lr}, "
          f"batch {bs}, seed {a.seed}, {a.threads} thread(s), {device}", flush=True)
    X = torch.from_numpy(x).unsqueeze(1).to(device)
    prior = get_preset("prior")
    teacher = None
    if a.loss == "graph":  # the engine fits it on up to 1,024 reference patterns: here all
        teacher = DiffusionTeacher(X[:, 0].cpu(), prior.graph_neighbours,
                                   prior.graph_diffusion_time, prior.graph_components).to(device)
    model = Autoencoder(out_shape=x.shape[1:], config=prior).to(device)
    rng = np.random.default_rng(a.seed)
    reference = np.sort(rng.choice(n, min(n, 1024), replace=False))  # as the engine does
    model.set_output_prior(X[reference, 0].mean(0).cpu())
    opt = torch.optim.Adam(model.parameters(), a.lr)
    recon_idx = np.sort(np.random.default_rng(a.seed).choice(n, min(n, 256), replace=False))
    calib = np.random.default_rng(1).choice(n, min(n, 256), replace=False)

    def score(tag: str, seen: int, seconds: float) -> None:
        recalibrate_batchnorm(model, (X[calib[i:i + bs]] for i in range(0, calib.size, bs)))
        r = ep.evaluate(task, x, model, device, a.seed, recon_idx)
        print(f"{a.data} seed {a.seed} {tag}: epochs {seen / n:.2f}, {seen / seconds:.1f} pat/s, "
              + " ".join(f"{k} {r[k]:.3f}" for k in SCORES), flush=True)

    by_steps = bool(a.step_marks)
    marks = [float(v) for v in (a.step_marks or a.marks).split(",")]
    if not by_steps:
        marks = [m * 60 for m in marks]
    seconds, seen, step, recent = 0.0, 0, 0, []
    while marks:
        perm = rng.permutation(n)
        for s in range(0, n - bs + 1, bs):
            t0 = time.perf_counter()
            anchors = perm[s:s + bs]
            neighbours = graph[anchors, rng.integers(0, a.k, bs)]
            xb = X[anchors]
            if teacher is not None:  # one pass; "pair" is the teacher's term, "other" 0
                z = model.encoder(xb)
                losses = model.compute_loss(xb, model.decoder(z, tuple(xb.shape[-2:])), z)
                pair, other = teacher.loss(xb, z), torch.zeros((), device=device)
            else:
                z_all = model.encoder(torch.cat([xb, X[neighbours]]))
                z = z_all[:bs]
                losses = model.compute_loss(xb, model.decoder(z, tuple(xb.shape[-2:])), z)
                pair, other = (neighbour_loss if a.loss == "umap" else neighbour_ratio)(z_all, bs)
            opt.zero_grad()
            (losses["total"] + a.lam * (pair + other)).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            seen += bs
            step += 1
            recent.append((losses["mse"].item(), pair.item(), other.item()))
            if step % 20 == 0:
                mse, p, o = np.mean(recent[-20:], axis=0)
                print(f"  step {step}: mse {mse:.5f}, pair term {p:.3f}, other pairs {o:.3f}",
                      flush=True)
            if (step if by_steps else seconds) >= marks[0]:
                score(f"{marks[0]:g} steps" if by_steps else f"{marks[0] / 60:g} min", seen,
                      seconds)
                marks.pop(0)
                if not marks:
                    break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

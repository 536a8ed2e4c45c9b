"""Throughput of the network itself: the default preset's architecture against the previous
default's and the seed's, side by side in one run.

For each architecture ("arm") and pattern size (default 64x64), patterns per second of

- train: one training step as the engine takes it (``encode_decode``: one encoder pass, the
  preset's objective fitted on the patterns, backward, Adam), fp32, tensors in memory;
- embed+recon: ``encode_decode`` under ``torch.inference_mode`` in eval mode (what embedding
  with error maps computes);
- embed: the encoder alone (embedding without error maps).

Arms: ``regions`` (the default preset's model as the product runs it today: the engine's
optimiser, ``training.engine.make_optimizer``, fused Adam on the CPU; channels_last for
inference where ``choose_precision(inference=True)`` picks it, on the CPU and CUDA),
``regions-plain`` (the same network with PyTorch's default Adam and contiguous tensors: what
the network alone gains), ``previous`` (the default before issue 17: to4 pooling, ``target``
canvas, mean-pattern prior, full-resolution stem, run as the product ran it then: default
Adam, contiguous on the CPU) and ``seed`` (likewise); with ``--channels-last`` also
``regions-plain+cl`` and ``previous+cl`` (channels_last in every mode, training too). The
arms are measured round-robin (``--rounds`` rounds, each
measurement at least ``--seconds`` long after one warm-up step per arm and mode), so a
neighbour's load drifts over every arm alike (every other round runs them in reverse order);
figures are medians over rounds, and the ratios (each arm / previous and / seed) medians of
the rounds' ratios. Data loading and preprocessing are not
included (``bench_train.py`` measures the engine with them).

    python benchmarks/bench_embed.py            # CPU: ~3-5 min on 2 shared cores
    python benchmarks/bench_embed.py --quick    # smoke run: 32x32, 1 round, short steps

Writes ``benchmarks/results/bench_embed.<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, median, print_table, ratio, save, settings_of  # noqa: E402

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder  # noqa: E402
from napari_4dstem_autoencoder.model.config import ModelConfig  # noqa: E402
from napari_4dstem_autoencoder.model.summary import macs_per_pattern  # noqa: E402
from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig  # noqa: E402
from napari_4dstem_autoencoder.training.config import TrainConfig  # noqa: E402
from napari_4dstem_autoencoder.training.device import choose_precision, resolve_device  # noqa: E402
from napari_4dstem_autoencoder.training.engine import make_optimizer  # noqa: E402
from napari_4dstem_autoencoder.training.presets import DEFAULT_PRESET, PRESETS  # noqa: E402

#: the default preset's model before issue 17 (what old checkpoints of ``regions`` hold)
PREVIOUS_DEFAULT = ModelConfig(pool_schedule="to4", decoder_canvas="target",
                               output_prior="mean_pattern")
MODES = ("train", "embed_recon", "embed")


@dataclass
class Arm:
    name: str
    model: ModelConfig
    objective: ObjectiveConfig
    batch: int
    channels_last: bool = False  # in every mode
    product: bool = False  # the engine's optimiser, and channels_last as inference picks it


def arms(args: argparse.Namespace) -> list[Arm]:
    default, seed = PRESETS[DEFAULT_PRESET], PRESETS["seed"]
    out = [Arm(DEFAULT_PRESET, default.model, default.objective, args.batch_size, product=True),
           Arm(f"{DEFAULT_PRESET}-plain", default.model, default.objective, args.batch_size),
           Arm("previous", PREVIOUS_DEFAULT, default.objective, args.batch_size),
           Arm("seed", seed.model, seed.objective, args.seed_batch_size)]
    if args.channels_last:
        out += [Arm(f"{a.name}+cl", a.model, a.objective, a.batch, True) for a in out[1:3]]
    return out


def patterns(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) discs of two radii and a random offset with Poisson noise, log
    scaled to [0, 1] (structure enough for the graph teacher to fit)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        dy, dx = rng.normal(0, size * 0.03, 2)
        radius = size * (0.1 if i % 2 else 0.2)
        out[i, 0] = np.log1p(rng.poisson(((yy - dy) ** 2 + (xx - dx) ** 2 < radius ** 2)
                                         * 300.0 + 3.0))
    return torch.from_numpy(out / out.max())


class Bench:
    """One arm's model, optimiser and objective, and a timed step for each mode."""

    def __init__(self, arm: Arm, x_all: torch.Tensor, device: torch.device) -> None:
        torch.manual_seed(0)
        self.arm, self.device = arm, device
        self.model = Autoencoder(out_shape=tuple(x_all.shape[-2:]), config=arm.model)
        if arm.model.output_prior != "none":
            self.model.set_output_prior(x_all[:, 0].mean(dim=0))
        self.model.to(device)
        self.objective = Objective(arm.objective, arm.model.latent_dim)
        self.objective.fit(x_all[:, 0])
        self.objective.to(device)
        x = x_all[:arm.batch].to(device)
        if arm.product:  # as the engine trains and inference.embedding embeds
            self.opt = make_optimizer(self.model, TrainConfig(lr=1e-4), device)
            cl_train = choose_precision(device).channels_last
            cl_infer = choose_precision(device, inference=True).channels_last
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
            cl_train = cl_infer = arm.channels_last
        self.formats = {"train": cl_train, "embed_recon": cl_infer, "embed": cl_infer}
        self.inputs = {cl: x.contiguous(memory_format=torch.channels_last) if cl else x
                       for cl in (False, True)}
        self._channels_last = False

    def step(self, mode: str) -> None:
        model, cl = self.model, self.formats[mode]
        if cl != self._channels_last:  # once per mode change, outside the timed steps' cost
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            self._channels_last = cl
        x = self.inputs[cl]
        if mode == "train":
            model.train()
            x_hat, z = model.encode_decode(x)
            loss = self.objective(x, x_hat, z)["total"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return
        model.eval()
        with torch.inference_mode():
            if mode == "embed_recon":
                model.encode_decode(x)
            else:
                model.embed(x)

    def rate(self, mode: str, seconds: float) -> float:
        """Patterns per second over whole steps lasting at least ``seconds`` in all."""
        steps, t0 = 0, time.perf_counter()
        while True:
            self.step(mode)
            sync(self.device)
            steps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return steps * self.arm.batch / elapsed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(size: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    x_all = patterns(args.reference_patterns, size)
    chosen = arms(args)
    benches = [Bench(a, x_all, device) for a in chosen]
    for b in benches:  # warm-up: one step of each mode (allocator, oneDNN primitives)
        for mode in MODES:
            b.step(mode)
    rates = {(b.arm.name, m): [] for b in benches for m in MODES}
    for k in range(args.rounds):
        for mode in MODES:
            # every other round in reverse order, so a drifting load favours no arm
            for b in (benches if k % 2 == 0 else benches[::-1]):
                rates[(b.arm.name, mode)].append(b.rate(mode, args.seconds))
    rows = []
    for arm in chosen:
        macs = macs_per_pattern(Autoencoder(out_shape=(size, size), config=arm.model),
                                (size, size))
        rows.append({"arm": arm.name, "size": size, "batch": arm.batch,
                     "enc_gmac": macs["encoder"] / 1e9, "dec_gmac": macs["decoder"] / 1e9,
                     **{m: median(rates[(arm.name, m)]) for m in MODES},
                     **{f"{m}_spread": (min(rates[(arm.name, m)]), max(rates[(arm.name, m)]))
                        for m in MODES}})
    for row in rows:  # ratios: the median of each round's ratio (measured minutes apart)
        for ref in ("previous", "seed"):
            for m in MODES:
                row[f"{m}_vs_{ref}"] = median(
                    ratio(a, b) for a, b in zip(rates[(row["arm"], m)], rates[(ref, m)]))
    return rows


COLUMNS = [
    Column("arm"), Column("size"), Column("batch"), Column("enc_gmac", ".3f", "enc GMAC"),
    Column("dec_gmac", ".3f", "dec GMAC"), Column("train", ".2f", "train/s"),
    Column("embed_recon", ".1f", "embed+recon/s"), Column("embed", ".1f", "embed/s"),
    Column("train_vs_previous", ".2f", "train/prev"),
    Column("embed_recon_vs_previous", ".2f", "e+r/prev"),
    Column("embed_vs_previous", ".2f", "embed/prev"),
    Column("train_vs_seed", ".2f", "train/seed"), Column("embed_recon_vs_seed", ".2f", "e+r/seed"),
    Column("embed_vs_seed", ".2f", "embed/seed"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 32x32, 1 round of 0.2 s, batch 4 (seed 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64")
    p.add_argument("--batch-size", type=int, default=None,
                   help="regions and previous (default 32, the engine's)")
    p.add_argument("--seed-batch-size", type=int, default=None,
                   help="seed, whose decoder renders 256x256 at every size (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 5)")
    p.add_argument("--seconds", type=float, default=None,
                   help="least duration of one measurement (default 2)")
    p.add_argument("--reference-patterns", type=int, default=256,
                   help="patterns the graph teacher is fitted on")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--channels-last", action="store_true",
                   help="also run regions and previous with channels_last tensors")
    args = p.parse_args(argv)
    args.sizes = args.sizes or ([32] if args.quick else [64])
    args.batch_size = args.batch_size or (4 if args.quick else 32)
    args.seed_batch_size = args.seed_batch_size or (2 if args.quick else 4)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds if args.seconds is not None else (0.2 if args.quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for size in args.sizes:
        rows += measure(size, args, device)
    print_table(rows, COLUMNS,
                f"patterns/s, medians of {args.rounds} round-robin rounds (each >= "
                f"{args.seconds:g} s), device {device}, {torch.get_num_threads()} threads")
    path = save(f"bench_embed.{device.type}", rows, key=["arm", "size"], device=str(device),
                settings=settings_of(args), quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

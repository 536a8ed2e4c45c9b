"""``stem-ae``: train, embed, inspect and export from the command line.

    stem-ae train scan.mib --scan-shape 256 256 --epochs 20 --out model.safetensors
    stem-ae embed scan.mib model.safetensors --out results.h5
    stem-ae info model.safetensors
    stem-ae export results.h5 --out-dir maps/
    torchrun --nproc-per-node 4 -m napari_4dstem_autoencoder.cli train ...   # multi-GPU

Bad input prints one line (``stem-ae: error: ...``) on stderr and exits with status 2; a
training run that fails (e.g. a non-finite loss) exits with status 1. Heavy imports (torch)
happen inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from ._files import check_free_space, check_output, input_family
from .training.presets import PRESETS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PRESET_HELP = {p.name: p.summary for p in PRESETS.values()}
CHECKPOINT_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}


class CliError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


# -- argument parsing -------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (the option is blamed, not the file)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _scan_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scan-shape", nargs=2, type=_positive_int, metavar=("RY", "RX"),
                        help="scan grid for files that store a flat stack of patterns")
    parser.add_argument("--dataset", metavar="NAME",
                        help="which array in a file holding several: its HDF5 path (e.g. "
                             "/data_counts) or a signal's index or title; without it such a "
                             "file is refused with the list of its arrays")
    parser.add_argument("--complex-magnitude", action="store_true",
                        help="open complex data as its magnitude |z| (refused otherwise)")


def _add_preprocessing(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("preprocessing (stored with the model)")
    g.add_argument("--scan-bin", type=int, default=1, help="bin the scan grid (default 1)")
    g.add_argument("--detector-bin", type=int, default=None,
                   help="bin detector pixels (default: fitted to the device, see --no-fit)")
    g.add_argument("--scan-crop", nargs=4, type=int, metavar=("Y0", "Y1", "X0", "X1"),
                   help="use only this part of the scan (half-open)")
    g.add_argument("--detector-crop", nargs=4, type=int, metavar=("Y0", "Y1", "X0", "X1"),
                   help="use only this part of each pattern (half-open)")
    g.add_argument("--scaling", choices=["log", "sqrt", "none"], default="log",
                   help="intensity scaling before normalising to [0, 1] (default log)")
    g.add_argument("--no-normalise", action="store_true", help="do not rescale to [0, 1]")
    g.add_argument("--mask-bad-pixels", action="store_true",
                   help="replace hot/dead detector pixels by their neighbours' mean")
    g.add_argument("--centre-beam", action="store_true",
                   help="shift each pattern so its centre of mass is at the detector centre")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stem-ae",
        description="Train a ResNet autoencoder on 4D-STEM scans and embed every probe "
                    "position into 32 latent maps.",
        epilog="Run 'stem-ae COMMAND --help' for a command's options. Multi-GPU: "
               "torchrun --nproc-per-node N -m napari_4dstem_autoencoder.cli train ...")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model on a dataset",
                       description="Train on a dataset and write a checkpoint (atomically, every "
                                   "epoch, on Ctrl-C and at the end). --epochs is the total: a "
                                   "resumed run trains the epochs still missing. Before it "
                                   "starts, a few timed steps fit what you did not set "
                                   "(detector bin, subset, epochs, budget) to the device and "
                                   "print the estimate.")
    t.add_argument("data", help="4D-STEM file (.mib .dm4 .emd .blo .raw .h5 .hspy .zspy .npy ...)")
    _scan_shape(t)
    _add_preprocessing(t)
    m = t.add_argument_group("model and optimisation")
    m.add_argument("--preset", metavar="{" + ",".join(PRESET_HELP) + "}", default=None,
                   help=" ".join(f"{name}: {text}" for name, text in PRESET_HELP.items()))
    m.add_argument("--epochs", type=int, default=None,
                   help="total epochs (default: as many as the time budget covers; 10 with "
                        "--no-fit or on CUDA)")
    m.add_argument("--batch-size", type=int, default=32, help="patterns per step (default 32)")
    m.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, as TrainConfig)")
    m.add_argument("--lr-schedule", choices=["cosine", "plateau", "constant"], default="cosine")
    m.add_argument("--lambda-act", type=float, help="weight of the L1 activity term")
    m.add_argument("--lambda-sim", type=float, help="weight of the contrastive term")
    m.add_argument("--lambda-div", type=float, help="weight of the divergence term")
    m.add_argument("--subset", type=int, metavar="N",
                   help="train on N random positions (default: all, unless the time budget "
                        "covers fewer than several epochs of them); embedding uses all")
    m.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction held out for validation (default 0.1)")
    m.add_argument("--early-stopping", type=int, metavar="EPOCHS",
                   help="stop after this many epochs without validation improvement")
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r = t.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    r.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast (auto: on CUDA only)")
    r.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    r.add_argument("--compile", action="store_true", help="torch.compile the step (static shapes)")
    r.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader workers when streaming data too large for memory")
    r.add_argument("--max-minutes", type=float,
                   help="wall-clock budget; stops cleanly when spent (default: 5 on a CPU, "
                        "none on CUDA)")
    r.add_argument("--no-fit", action="store_true",
                   help="do not fit the run to the device: no timed steps, detector bin 1, "
                        "every position, 10 epochs unless given, no budget unless given")
    r.add_argument("--out", required=True, metavar="CHECKPOINT",
                   help="checkpoint to write (.safetensors)")
    r.add_argument("--checkpoint-every", type=int, default=1, metavar="EPOCHS")
    r.add_argument("--resume", metavar="CHECKPOINT", help="continue training from a checkpoint")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out checkpoint (without it, and without --resume "
                        "into the same file, an existing checkpoint is refused)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("embed", help="embed every position of a dataset with a trained model",
                       description="Write embeddings (Ry, Rx, 32), the reconstruction error "
                                   "maps (MSE, PSNR) and the model/preprocessing config to HDF5.")
    e.add_argument("data", help="4D-STEM file")
    e.add_argument("checkpoint", help="model checkpoint (.safetensors) from 'stem-ae train'")
    _scan_shape(e)
    e.add_argument("--out", required=True, metavar="RESULTS_H5", help="HDF5 file to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--no-errors", action="store_true",
                   help="skip the reconstruction error maps (encoder only: faster)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(handler=cmd_embed)

    i = sub.add_parser("info", help="summarise a dataset, a checkpoint or a results file")
    i.add_argument("path")
    _scan_shape(i)
    i.set_defaults(handler=cmd_info)

    x = sub.add_parser("export", help="write the maps of a results file as TIFF",
                       description="Writes embeddings.tif (32 pages), mse.tif, psnr.tif and one "
                                   "TIFF per extra array of a results file from 'stem-ae embed'.")
    x.add_argument("results", help="HDF5 results file from 'stem-ae embed'")
    x.add_argument("--out-dir", required=True, help="folder for the TIFF files")
    x.add_argument("--overwrite", action="store_true", help="replace TIFF files already there")
    x.set_defaults(handler=cmd_export)

    d = sub.add_parser("demo", help="open napari with the sample data and the plugin's docks",
                       add_help=False)
    d.add_argument("demo_args", nargs=argparse.REMAINDER)
    d.set_defaults(handler=cmd_demo)
    return parser


# -- helpers ----------------------------------------------------------------------------------

def _open(args: argparse.Namespace, path: str):
    from .data import open_dataset
    from .data.readers import AmbiguousDatasetError
    shape = tuple(args.scan_shape) if getattr(args, "scan_shape", None) else None
    try:
        return open_dataset(path, scan_shape=shape, dataset=getattr(args, "dataset", None),
                            complex_data="magnitude" if getattr(args, "complex_magnitude", False)
                            else "refuse")
    except AmbiguousDatasetError as exc:
        raise CliError(ambiguity_message(exc)) from None


def ambiguity_message(exc: Any) -> str:
    """One line: the file, its candidate arrays with shapes and dtypes, and the --dataset
    option to pick one (with the first candidate as the example)."""
    listing = "; ".join(
        f"{c.key}{' (' + c.title + ')' if c.title else ''} "
        f"{'x'.join(str(n) for n in c.shape)} {c.dtype}" for c in exc.candidates)
    example = exc.candidates[0].key if exc.candidates else "/data"
    return (f"{exc.path}: several {exc.what} could be the 4D-STEM data: {listing}. "
            f"Choose one with --dataset, e.g. --dataset {example}")


def _preprocess_config(args: argparse.Namespace):
    from .data.preprocess import PreprocessConfig
    return PreprocessConfig(
        scan_bin=args.scan_bin, detector_bin=args.detector_bin or 1,
        scan_crop=tuple(args.scan_crop) if args.scan_crop else None,
        detector_crop=tuple(args.detector_crop) if args.detector_crop else None,
        scaling=args.scaling, normalise=not args.no_normalise,
        mask_bad_pixels=args.mask_bad_pixels, centre_beam=args.centre_beam)


def _fmt_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in losses.items())


def _progress(total: int, desc: str, disable: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="pat", disable=disable, dynamic_ncols=True,
                file=sys.stderr)


# -- commands ---------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from .training.presets import DEFAULT_PRESET, objective_with
    from .training import distributed as ddp
    from .training.config import TrainConfig
    from .training.engine import train
    from .training.events import BatchEnd, CheckpointSaved, EpochEnd, Failed, Finished, Started

    ctx = ddp.init_from_env(args.device)
    say = print if ctx.is_main else (lambda *a, **k: None)
    out = Path(args.out)
    resume_same = args.resume is not None and _same_file(args.resume, out)
    inputs = input_family(args.data) | ({Path(args.resume)} if args.resume and not resume_same
                                         else set())
    check_output(out, inputs, overwrite=args.overwrite or resume_same, what="checkpoint",
                 hint="pass --resume to continue it or --overwrite to replace it")
    _remove_stale_temporaries(out)
    try:
        preset = args.preset or DEFAULT_PRESET
        config = TrainConfig(
            preset=preset, preprocess=_preprocess_config(args),
            objective=objective_with(preset, lambda_act=args.lambda_act,
                                     lambda_sim=args.lambda_sim, lambda_div=args.lambda_div),
            epochs=args.epochs or 10, batch_size=args.batch_size, lr=args.lr,
            train_subset=args.subset, val_fraction=args.val_fraction, seed=args.seed,
            device=args.device, amp=args.amp,
            channels_last={"auto": "auto", "on": True, "off": False}[args.channels_last],
            compile=args.compile, lr_schedule=args.lr_schedule,
            early_stopping_patience=args.early_stopping, max_minutes=args.max_minutes,
            preview_every_seconds=None, preview_max_positions=0, checkpoint_path=str(out),
            checkpoint_every_epochs=args.checkpoint_every, num_workers=args.num_workers)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    dataset = _open(args, args.data)
    try:
        config = _fit_to_device(args, config, dataset, ctx, say)
        check_free_space(out, _checkpoint_bytes(config, dataset), "checkpoint")
    except BaseException:
        dataset.close()
        raise
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum, frame):  # first Ctrl-C or SIGTERM: stop cleanly with a checkpoint
        if stop.is_set():
            raise KeyboardInterrupt
        signalled.append(signum)
        stop.set()
        say(f"\n{signal.Signals(signum).name}: stopping after this batch and writing the "
            "checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    previous = _install_stop_handlers(on_signal)
    bar = None
    status = EXIT_OK
    try:
        for event in train(dataset, config, stop=stop, resume_from=args.resume):
            if isinstance(event, Started):
                say(f"training on {event.n_train} positions ({event.n_val} validation) of "
                    f"{event.scan_shape[0]}x{event.scan_shape[1]}, patterns "
                    f"{event.input_shape[0]}x{event.input_shape[1]}, device {event.device}"
                    + (f" x {event.world_size} processes" if event.world_size > 1 else "")
                    + ("" if event.cached else ", streaming from disk"))
                started = event
                bar = _progress(event.steps_per_epoch * (event.epochs - event.start_epoch),
                                "train", args.quiet or not ctx.is_main)
                bar.unit = "step"
            elif isinstance(event, BatchEnd):
                bar.update(1)
                bar.set_postfix(epoch=event.epoch + 1, mse=f"{event.losses['mse']:.3g}",
                                rate=f"{event.patterns_per_second:.1f}/s")
            elif isinstance(event, EpochEnd):
                total = started.steps_per_epoch * (event.epochs - started.start_epoch)
                if bar is not None and bar.total != total:  # epochs re-fitted to the budget
                    bar.total = total
                    bar.refresh()
                msg = f"epoch {event.epoch + 1}: train {_fmt_losses(event.train)}"
                if event.val:
                    msg += f" | val {_fmt_losses(event.val)}"
                (bar.write if bar is not None and ctx.is_main else say)(msg + f" | lr {event.lr:.3g}")
            elif isinstance(event, CheckpointSaved):
                logging.getLogger("stem-ae").info("checkpoint %s (epoch %d)", event.path, event.epoch)
            elif isinstance(event, Finished):
                if bar is not None:
                    bar.close()
                say(f"finished ({event.reason}); checkpoint: {event.checkpoint}")
                if signalled:  # a run ended by a signal is not a success, but it is saved
                    status = 128 + signalled[0]
            elif isinstance(event, Failed):
                if bar is not None:
                    bar.close()
                print(f"stem-ae: training failed: {event.reason}", file=sys.stderr)
                status = EXIT_FAILED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        dataset.close()
        ddp.shutdown()
    return status


def _fit_to_device(args: argparse.Namespace, config: Any, dataset: Any, ctx: Any,
                   say: Callable[..., None]) -> Any:
    """``config`` with what the user left unset (detector bin, subset, epochs, budget) fitted
    to the device from a few timed steps (``training.plan``), and the estimate printed. Not
    for --no-fit, --resume (the checkpoint fixes the preprocessing) or torchrun (each rank
    would time its own steps)."""
    from .training.plan import apply, plan_run

    if args.no_fit or args.resume or ctx.enabled:
        return config
    say("timing a few training steps to fit the run to the device…")
    plan = plan_run(dataset, config, max_minutes=args.max_minutes,
                    detector_bin=args.detector_bin, train_subset=args.subset,
                    epochs=args.epochs)
    say(f"plan: {plan.describe()} (--no-fit for the literal settings)")
    return apply(plan, config)


def _remove_stale_temporaries(out: Path) -> None:
    """What a killed earlier write left beside ``out`` goes now, not at the first checkpoint
    (``remove_stale_temporaries`` logs a warning naming each file)."""
    from ._files import remove_stale_temporaries
    remove_stale_temporaries(out.parent)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def _install_stop_handlers(handler) -> dict[int, Any]:
    """Ctrl-C and SIGTERM (what SLURM and container runtimes send) both stop cleanly; returns
    the handlers to restore. Signals can only be handled on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _checkpoint_bytes(config: Any, dataset: Any) -> int:
    """Disk a checkpoint of this run may need: weights and Adam moments, the graph teacher's
    reference patterns, twice over (the atomic write holds the old file until the rename)."""
    from .data.preprocess import Preprocessor
    from .training.checkpoints import EXPECTED_PARAMETERS

    pixels = math.prod(Preprocessor(config.preprocess).output_shape(dataset.detector_shape))
    teacher = 1024 * pixels * 4 if config.objective_config().graph_weight > 0 else 0
    return 2 * (3 * EXPECTED_PARAMETERS * 4 + teacher) + 2**20


def cmd_embed(args: argparse.Namespace) -> int:
    from .inference.embedding import embed_and_score
    from .inference.export import export_hdf5
    from .training.checkpoints import load_checkpoint
    from .training.device import resolve_device

    out = check_output(args.out, input_family(args.data) | {Path(args.checkpoint)},
                       overwrite=args.overwrite, what="results file")
    _remove_stale_temporaries(out)
    loaded = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    with _open(args, args.data) as dataset:
        view_shape = loaded.preprocessor.scan_view(dataset).scan_shape
        expected = loaded.preprocessor.stats.input_detector_shape
        if tuple(dataset.detector_shape) != tuple(expected):
            raise CliError(f"{args.data}: patterns are {dataset.detector_shape[0]}x"
                           f"{dataset.detector_shape[1]} but {args.checkpoint} was trained on "
                           f"{expected[0]}x{expected[1]}")
        maps = loaded.model.config.latent_dim + (0 if args.no_errors else 2)
        check_free_space(out, 2 * view_shape[0] * view_shape[1] * maps * 4 + 2**20,
                         "results file")
        with _progress(view_shape[0] * view_shape[1], "embed", args.quiet) as bar:
            result = embed_and_score(loaded.model, loaded.preprocessor, dataset,
                                     batch_size=args.batch_size, device=device,
                                     progress=lambda done, total: bar.update(done - bar.n),
                                     score=not args.no_errors)
        export_hdf5(args.out, result.embeddings, result.error_maps(),
                    model_config=loaded.model.config.to_dict(),
                    preprocessing=loaded.preprocessor.to_dict(),
                    metadata={"dataset": str(Path(args.data).resolve()),
                              "checkpoint": str(Path(args.checkpoint).resolve()),
                              "preset": loaded.preset,
                              "calibration": loaded.preprocessor.output_calibration(
                                  dataset.calibration).to_dict()})
    print(f"wrote {args.out}: embeddings {result.embeddings.shape}"
          + (f", mean PSNR {float(result.psnr.mean()):.2f} dB" if result.psnr is not None else ""))
    return EXIT_OK


def _info_checkpoint(path: Path) -> None:
    from .training.checkpoints import load_checkpoint
    loaded = load_checkpoint(path)
    meta = loaded.metadata
    cfg = loaded.model.config
    print(f"checkpoint {path}")
    print(f"  model: preset {loaded.preset!r}, {meta.get('parameters')} parameters, "
          f"input {loaded.input_shape[0]}x{loaded.input_shape[1]}, pool {cfg.pool_schedule}, "
          f"decoder canvas {cfg.decoder_canvas}")
    prep = loaded.preprocessor
    print(f"  preprocessing: {prep.config.to_dict()}")
    print(f"  trained: {loaded.epoch} epochs, {loaded.global_step} steps, "
          f"resumable: {'yes' if loaded.optimizer_state else 'no'}")
    if loaded.history:
        last = loaded.history[-1]
        print(f"  last epoch: train {_fmt_losses(last.get('train', {}))}"
              + (f" | val {_fmt_losses(last['val'])}" if last.get("val") else ""))
    v = meta.get("versions", {})
    print(f"  written by napari-4dstem-autoencoder {v.get('napari_4dstem_autoencoder')}, "
          f"torch {v.get('torch')}, {meta.get('created')}")


def _info_results(path: Path) -> bool:
    from .inference.export import read_results
    try:
        res = read_results(path)
    except ValueError:
        return False
    print(f"results {path}")
    print(f"  embeddings {res['embeddings'].shape}, error maps: {sorted(res['error']) or 'none'}, "
          f"extra: {sorted(res['extra']) or 'none'}")
    print(f"  model preset {res['metadata'].get('preset')!r}")
    return True


def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        _info_checkpoint(path)
        return EXIT_OK
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file() and _info_results(path):
        return EXIT_OK
    with _open(args, str(path)) as ds:
        c = ds.calibration
        print(f"dataset {ds.path or path}")
        print(f"  scan {ds.scan_shape[0]}x{ds.scan_shape[1]} positions, detector "
              f"{ds.detector_shape[0]}x{ds.detector_shape[1]} pixels, {ds.dtype}, "
              f"{ds.data.nbytes / 1024**2:.1f} MiB")
        print(f"  scan step {c.scan_step} {c.scan_unit}, detector step {c.detector_step} "
              f"{c.detector_unit}")
        print(f"  chunks {tuple(ch[0] for ch in ds.data.chunks)}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_tiff, read_results
    res = read_results(args.results)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder")
    maps = {"embeddings": res["embeddings"],
            **{k: v for k, v in {**res["error"], **res["extra"]}.items() if v.ndim in (2, 3)}}
    targets = {out / f"{name}.tif": arr for name, arr in maps.items()}
    for target in targets:  # every check before the first write
        check_output(target, {Path(args.results)}, overwrite=args.overwrite, what="TIFF")
    check_free_space(out / "embeddings.tif", 2 * sum(a.size * 4 for a in maps.values()) + 2**20,
                     "TIFF files")
    for target, arr in targets.items():
        print(export_tiff(target, arr, channel_axis=-1, calibration=res.get("calibration")))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo_command(args.demo_args)


def run_demo_command(argv: list[str]) -> int:
    """``stem-ae demo ...``: the GUI, imported only now (the rest of the CLI never loads Qt)."""
    from .gui.demo import run_demo
    return int(run_demo(argv) or 0)


# -- entry point ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["demo"]:  # demo's own parser reads its options (argparse REMAINDER can't)
        return run_demo_command(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("stem-ae: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, RuntimeError) as exc:
        # ValueError covers DatasetError and CheckpointError (both name the file)
        if args.verbose:
            logging.getLogger("stem-ae").exception("details")
        text = str(exc)
        if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
            text = exc.strerror  # ours name the path already: no "[Errno 28]" prefix
        message = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        print(f"stem-ae: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Suspicious data (``DataWarning``, which names the file) as one line; others as usual."""
    if getattr(category, "__name__", "") == "DataWarning":
        print(f"stem-ae: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

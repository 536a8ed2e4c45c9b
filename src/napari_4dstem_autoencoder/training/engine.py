"""The training engine: a plain generator that trains and reports typed events.

::

    stop = threading.Event()
    for event in train(dataset, TrainConfig(epochs=5), stop=stop):
        ...                       # BatchEnd, EpochEnd, Preview, CheckpointSaved, ...
    # the last event is Finished or Failed

No Qt here: the napari widget wraps this generator in a ``thread_worker``; the CLI iterates it
with a progress bar; under ``torchrun`` each rank iterates its own copy (see
``training.distributed``). One optimiser step = one encoder pass (``encode_decode``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data.dataset import Dataset4D
from ..data.preprocess import Preprocessor
from ..model.autoencoder import Autoencoder
from ..model.batchnorm import recalibrate_batchnorm
from ..model.config import MIN_INPUT_SIZE
from ..objective.objective import Objective
from . import distributed as ddp
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint, trained_model
from .config import TrainConfig
from .data import (CachedPatterns, StreamedPatterns, fit_preprocessor_on, preview_grid,
                   reference_positions, split_positions, stack_batch)
from .budget import refit_epochs, retarget_cosine
from .device import Precision, choose_precision, release_device_memory, resolve_device
from .events import (BatchEnd, CheckpointSaved, EpochEnd, Event, Failed, Finished, Preview,
                     Started)

log = logging.getLogger(__name__)

_PREVIEW_MAX_BYTES = 256 * 1024**2
#: seconds of training before the first live map (then every preview_every_seconds)
FIRST_PREVIEW_S = 2.0


class EncodeDecode(nn.Module):
    """``forward = autoencoder.encode_decode`` so DDP and torch.compile see the one-pass step."""

    def __init__(self, autoencoder: Autoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.autoencoder.encode_decode(x)


def _device_for_rank(config: TrainConfig, ctx: ddp.DistContext) -> torch.device:
    device = resolve_device(config.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)  # one GPU per process
    return device


def _has_unused_parameters(model: Autoencoder, input_shape: tuple[int, int],
                           device: torch.device) -> bool:
    """Whether some parameters get no gradient (e.g. BN skipped on 1x1 maps), which DDP
    must be told about. Probed with one backward pass in eval mode (no BN statistics move)."""
    was_training = model.training
    model.eval()
    x = torch.zeros((2, 1, *input_shape), device=device)
    x_hat, z = model.encode_decode(x)
    (x_hat.sum() + z.sum()).backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


def make_optimizer(model: nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam at ``config.lr``; on the CPU its fused kernel, ~1.6x faster an update of 3.9 M
    parameters than the default for-each one (docs/model.md); CUDA keeps PyTorch's default."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True if device.type == "cpu" else None)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs,
                                                          eta_min=config.lr * 0.01)
    if config.lr_schedule == "plateau":
        patience = max(1, (config.early_stopping_patience or 4) // 2)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                          patience=patience)
    return None


@torch.inference_mode()
def embed_tensor(model: Autoencoder, x: torch.Tensor, device: torch.device, precision: Precision,
                 batch_size: int = 256, stop: threading.Event | None = None) -> np.ndarray | None:
    """Embeddings (N, latent) of preprocessed patterns (N, 1, H, W), model in eval mode;
    None when ``stop`` is set between batches (a preview is not worth delaying a Stop)."""
    out = []
    for start in range(0, x.shape[0], batch_size):
        if stop is not None and stop.is_set():
            return None
        xb = precision.prepare_input(x[start:start + batch_size].to(device))
        with precision.autocast():
            out.append(model.embed(xb).float().cpu())
    return torch.cat(out).numpy()


def _reference_patterns(train_ds, preprocessor, reference_raw: np.ndarray | None,
                        seed: int, max_patterns: int = 1024) -> torch.Tensor:
    """Up to ``max_patterns`` preprocessed training patterns (N, H, W), a seeded random subset.

    What the data-fitted state (output prior, objective) is computed from: taken from the
    cache when the training patterns are cached, otherwise the raw patterns the preprocessor
    was fitted on (read once, at the same positions), preprocessed.
    """
    if isinstance(train_ds, CachedPatterns):
        # the same positions: the cache holds the training positions in order
        rows = reference_positions(np.arange(len(train_ds)), max_patterns, seed)
        return train_ds.data[torch.from_numpy(rows), 0]
    return torch.from_numpy(preprocessor.transform_patterns(reference_raw))


@torch.inference_mode()
def _evaluate(model: Autoencoder, objective: Objective, loader: DataLoader, device: torch.device,
              precision: Precision, ctx: ddp.DistContext) -> dict[str, float]:
    names = objective.names
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    for x in loader:
        x = precision.prepare_input(x.to(device, non_blocking=True))
        x_in, halves = objective.training_input(x)  # the same objective as in training
        with precision.autocast():
            x_hat, z = model.encode_decode(precision.prepare_input(x_in))
        losses = objective(x, x_hat, z, halves)
        n = x.shape[0]
        sums[:-1] += torch.stack([losses[k].detach().double().cpu() for k in names]) * n
        sums[-1] += n
    sums = ddp.sum_over_ranks(sums.to(device), ctx).cpu()
    if sums[-1] == 0:
        return {}
    return {k: float(v) for k, v in zip(names, (sums[:-1] / sums[-1]).tolist())}


def train(
    dataset: Dataset4D,
    config: TrainConfig,
    *,
    stop: threading.Event | None = None,
    resume_from: str | Path | None = None,
) -> Iterator[Event]:
    """Train an autoencoder on ``dataset``; yields events, ending with Finished or Failed.

    Set ``stop`` to end training between batches (a checkpoint is written when
    ``config.checkpoint_path`` is set). ``resume_from`` continues a checkpoint's run: its
    model, preprocessing, optimiser and schedule are restored and ``config.epochs`` counts
    the total, so a checkpoint saved after 2 epochs resumed with ``epochs=5`` trains 3 more.
    Setup problems (bad device, patterns too small, unreadable checkpoint) raise
    ``ValueError``; problems while training (non-finite loss, I/O errors) yield ``Failed``.
    """
    t_start = time.monotonic()
    stop = stop or threading.Event()
    ctx = ddp.current()
    device = _device_for_rank(config, ctx)
    precision = choose_precision(device, config.amp, config.channels_last)

    # -- data and preprocessing --------------------------------------------------------
    resumed = None
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, device="cpu")
        preprocessor = resumed.preprocessor
        if preprocessor.config != config.preprocess:
            log.info("resuming with the checkpoint's preprocessing, not the config's")
        view = preprocessor.scan_view(dataset)
    else:
        view = Preprocessor(config.preprocess).scan_view(dataset)
    split = split_positions(view.n_patterns, config.train_subset, config.val_fraction,
                            config.seed)
    reference_raw = None  # raw patterns the fits below share, read once
    if resumed is None:
        reference_raw = view.patterns(reference_positions(split.train, seed=config.seed))
        preprocessor = fit_preprocessor_on(reference_raw, config.preprocess, view.name)
    input_shape = preprocessor.output_shape(view.detector_shape)
    if min(input_shape) < MIN_INPUT_SIZE:
        raise ValueError(
            f"{dataset.name}: after preprocessing the patterns are {input_shape[0]}x"
            f"{input_shape[1]}; the network needs at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
            "(bin or crop the detector less)")
    if resumed is not None and tuple(resumed.input_shape) != tuple(input_shape):
        raise CheckpointError(
            f"{resumed.path}: the checkpoint was trained on {resumed.input_shape} patterns, "
            f"this data gives {input_shape}")

    per_pattern = input_shape[0] * input_shape[1] * 4
    cached = (split.train.size + split.val.size) * per_pattern <= config.cache_max_mb * 1024**2
    if cached:
        train_ds = CachedPatterns.load(view, preprocessor, split.train)
        val_ds = CachedPatterns.load(view, preprocessor, split.val)
    else:
        train_ds = StreamedPatterns(view, preprocessor, split.train)
        val_ds = StreamedPatterns(view, preprocessor, split.val)

    # -- model, optimiser, schedule ----------------------------------------------------
    torch.manual_seed(config.seed)
    model_config = resumed.model.config if resumed is not None else config.model_config()
    model = Autoencoder(latent_dim=model_config.latent_dim, out_shape=input_shape,
                        config=model_config)
    if resumed is not None:
        model.load_state_dict(resumed.model.state_dict())
        objective = resumed.objective  # fitted with the model (refitted below if it is not)
    else:
        objective = Objective(config.objective_config(), model_config.latent_dim)
    objective.bind(preprocessor)
    fit_prior = resumed is None and model_config.output_prior != "none"
    if fit_prior or not objective.fitted:
        if reference_raw is None and not cached:  # resuming an unfitted objective, streamed
            reference_raw = view.patterns(reference_positions(split.train, seed=config.seed))
        reference = _reference_patterns(train_ds, preprocessor, reference_raw, config.seed)
        if fit_prior:
            model.set_output_prior(reference.mean(dim=0))
        if not objective.fitted:
            objective.fit(reference)
        del reference
    del reference_raw
    objective.to(device)
    use_sync_bn = ctx.enabled and device.type == "cuda" and config.sync_batchnorm in (True, "auto")
    if use_sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    step_module: nn.Module = EncodeDecode(model)
    if ctx.enabled:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=_has_unused_parameters(model, input_shape, device))
    if config.compile:
        step_module = torch.compile(step_module, dynamic=False)

    optimizer = make_optimizer(model, config, device)
    scheduler = _make_scheduler(config, optimizer)
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    if resumed is not None:
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        start_epoch, global_step = resumed.epoch, resumed.global_step
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # the cosine runs over this run's total epochs, which may be more than before
            retarget_cosine(scheduler, optimizer, start_epoch, config.epochs)
        elif scheduler is not None and resumed.scheduler_state:
            scheduler.load_state_dict(resumed.scheduler_state)
        history = list(resumed.history)

    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    pin = device.type == "cuda"
    workers = 0 if cached else config.num_workers
    loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                        num_workers=workers, collate_fn=stack_batch, pin_memory=pin,
                        persistent_workers=workers > 0)
    val_loader = None
    if len(val_ds):
        val_sampler = DistributedSampler(val_ds, num_replicas=ctx.world_size, rank=ctx.rank,
                                         shuffle=False, drop_last=False)
        val_loader = DataLoader(val_ds, batch_size=config.batch_size, sampler=val_sampler,
                                num_workers=workers, collate_fn=stack_batch, pin_memory=pin)
    steps_per_epoch = len(loader)

    # -- preview grid (rank 0 only; small and kept in memory) --------------------------
    preview_x = None
    if ctx.is_main and config.preview_max_positions > 0:
        max_positions = max(1, min(config.preview_max_positions, _PREVIEW_MAX_BYTES // per_pattern))
        p_step, p_flat, p_shape = preview_grid(view.scan_shape, max_positions)
        preview_x = CachedPatterns.load(view, preprocessor, p_flat).data

    # BN running statistics re-estimated on a fixed subset of the training patterns whenever
    # the model is used in eval mode (previews, checkpoints, the end): see models/batchnorm.py
    calib_rng = np.random.default_rng(config.seed + 1)
    n_calib = min(config.bn_recalibration_patterns, len(train_ds))
    calib_idx = np.sort(calib_rng.choice(len(train_ds), size=n_calib, replace=False)).tolist()
    calibrated_at = -1

    def recalibrate(encoder_only: bool = False, quick: bool = False) -> None:
        """Full model (epoch ends, the end); previews only need the encoder, on a quarter of it
        (they come every few seconds, and a forward pass of 256 patterns takes seconds on CPU).
        ``quick`` (a user's Stop): two batches, so the checkpoint follows the Stop within
        seconds; a resumed run re-estimates on the full subset at its next epoch end."""
        nonlocal calibrated_at
        if n_calib < 2 or calibrated_at == global_step:
            return
        if quick:
            idx = calib_idx[:max(2, min(n_calib, 2 * config.batch_size))]
        else:
            idx = calib_idx[:max(2, n_calib // 4)] if encoder_only else calib_idx
        batches = (precision.prepare_input(stack_batch(
            train_ds.__getitems__(idx[i:i + config.batch_size])).to(device))
            for i in range(0, len(idx), config.batch_size))
        with precision.autocast():
            recalibrate_batchnorm(model.encoder if encoder_only else model, batches)
        if not encoder_only:
            calibrated_at = global_step

    def make_preview() -> Preview | None:
        """The live map (None when a Stop came while it was being made)."""
        if ctx.world_size == 1:  # with SyncBN every rank would have to join
            recalibrate(encoder_only=True)
        model.eval()
        emb = embed_tensor(model, preview_x, device, precision,
                           batch_size=max(config.batch_size, 64), stop=stop)
        model.train()
        if emb is None:
            return None
        return Preview(global_step=global_step, embeddings=emb.reshape(*p_shape, -1),
                       positions_step=p_step)

    checkpoint_path = Path(config.checkpoint_path) if config.checkpoint_path else None
    run_extra = {"world_size": ctx.world_size, "device": str(device)}  # kept with the model
    last_checkpoint: str | None = None

    def write_checkpoint(epochs_done: int) -> CheckpointSaved | None:
        nonlocal last_checkpoint
        if checkpoint_path is None or not ctx.is_main:
            return None
        save_checkpoint(
            checkpoint_path, model, preprocessor, config, history, objective=objective,
            optimizer=optimizer,
            scheduler_state=scheduler.state_dict() if scheduler is not None else None,
            epoch=epochs_done, global_step=global_step, input_shape=input_shape,
            extra=run_extra)
        last_checkpoint = str(checkpoint_path)
        return CheckpointSaved(path=last_checkpoint, epoch=epochs_done)

    loss_names = objective.names
    yield Started(config=config, loss_names=loss_names, n_train=int(split.train.size),
                  n_val=int(split.val.size),
                  steps_per_epoch=steps_per_epoch, epochs=config.epochs, device=str(device),
                  input_shape=tuple(input_shape), scan_shape=tuple(view.scan_shape),
                  start_epoch=start_epoch, world_size=ctx.world_size, cached=cached)

    # -- the loop ----------------------------------------------------------------------
    deadline = t_start + config.max_minutes * 60 if config.max_minutes else None
    best, bad_epochs = math.inf, 0
    # Previews come every preview_every_seconds, but never take more than a fifth of the
    # run: on a slow device the interval grows to four times the last preview's duration.
    # The first comes after FIRST_PREVIEW_S, so a live map shows within seconds of Start.
    preview_interval = config.preview_every_seconds
    last_preview_time = time.monotonic()
    if preview_interval:
        last_preview_time -= max(0.0, preview_interval - FIRST_PREVIEW_S)
    reason = "completed"
    epoch = start_epoch
    planned_epochs = config.epochs  # config.epochs is re-fitted to the budget when asked
    t_epoch = time.monotonic()
    try:
        model.train()
        while epoch < config.epochs:
            sampler.set_epoch(epoch)
            sums = torch.zeros(len(loss_names) + 1, dtype=torch.float64)
            t_batch = time.perf_counter()
            for step, x in enumerate(loader):
                x = precision.prepare_input(x.to(device, non_blocking=True))
                x_in, halves = objective.training_input(x)
                with precision.autocast():
                    x_hat, z = step_module(precision.prepare_input(x_in))
                losses = objective(x, x_hat, z, halves)
                values = torch.stack([losses[k].detach().double() for k in loss_names]).cpu()
                timed_out = deadline is not None and time.monotonic() > deadline
                stop_now, out_of_time, non_finite = ddp.agree(
                    [stop.is_set(), timed_out, not bool(torch.isfinite(values).all())],
                    ctx, device)
                if non_finite:
                    bad = {k: float(v) for k, v in zip(loss_names, values.tolist())
                           if not math.isfinite(v)}
                    where = (f"the last good checkpoint {last_checkpoint} was kept"
                             if last_checkpoint else "no checkpoint had been written yet")
                    yield Failed(
                        reason=(f"non-finite loss at epoch {epoch + 1}, step {step + 1} "
                                f"({', '.join(f'{k}={v}' for k, v in bad.items()) or 'on another rank'}); "
                                f"training stopped and {where}. Try a lower learning rate or "
                                "different loss weights."),
                        checkpoint=last_checkpoint)
                    return
                if stop_now or out_of_time:
                    reason = "stopped" if stop_now else "time_budget"
                    break
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                if config.grad_clip_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                optimizer.step()
                global_step += 1
                n = x.shape[0]
                sums[:-1] += values * n
                sums[-1] += n
                now = time.perf_counter()
                rate = n * ctx.world_size / max(now - t_batch, 1e-9)
                t_batch = now
                yield BatchEnd(epoch=epoch, step=step, global_step=global_step,
                               steps_per_epoch=steps_per_epoch,
                               losses={k: float(v) for k, v in zip(loss_names, values.tolist())},
                               patterns_per_second=rate)
                if preview_x is not None and (
                        (config.preview_every_steps and global_step % config.preview_every_steps == 0)
                        or (preview_interval
                            and time.monotonic() - last_preview_time >= preview_interval)):
                    t_preview = time.monotonic()
                    preview = make_preview()
                    last_preview_time = time.monotonic()
                    if preview_interval:
                        preview_interval = max(config.preview_every_seconds,
                                               4.0 * (last_preview_time - t_preview))
                    if preview is not None:
                        yield preview
                    t_batch = time.perf_counter()
            if reason != "completed":
                break

            # -- end of epoch: sync BN stats, validate, schedule, record, checkpoint ----
            recalibrate()
            ddp.broadcast_buffers(model, ctx)
            sums = ddp.sum_over_ranks(sums.to(device), ctx).cpu()
            train_means = ({k: float(v) for k, v in
                            zip(loss_names, (sums[:-1] / sums[-1]).tolist())}
                           if sums[-1] > 0 else {})
            val_means = {}
            if val_loader is not None:
                model.eval()
                val_means = _evaluate(model, objective, val_loader, device, precision, ctx)
                model.train()
            lr = float(optimizer.param_groups[0]["lr"])
            monitor = val_means.get("total", train_means.get("total", math.inf))
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(monitor)
            elif scheduler is not None:
                scheduler.step()
            history.append({"epoch": epoch + 1, "train": train_means, "val": val_means,
                            "lr": lr, "global_step": global_step,
                            "seconds": round(time.monotonic() - t_start, 3)})
            if config.fit_epochs_to_budget and deadline is not None:
                now = time.monotonic()
                # every rank takes rank 0's figure, so all of them stop at the same epoch
                refitted = ddp.broadcast_int(
                    refit_epochs(epoch + 1, config.epochs, now - t_epoch, deadline - now), ctx,
                    device)
                if refitted != config.epochs:
                    log.info("epochs re-fitted to the budget: %d -> %d (last epoch %.1f s)",
                             config.epochs, refitted, now - t_epoch)
                    config = config.replace(epochs=refitted)  # the loop's and checkpoints' total
                    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                        retarget_cosine(scheduler, optimizer, epoch + 1, config.epochs)
                t_epoch = now
            yield EpochEnd(epoch=epoch, train=train_means, val=val_means, lr=lr,
                           epochs=config.epochs)
            if monitor < best - config.early_stopping_min_delta:
                best, bad_epochs = monitor, 0
            else:
                bad_epochs += 1
            last_epoch = epoch + 1 >= config.epochs
            early = (config.early_stopping_patience is not None
                     and bad_epochs >= config.early_stopping_patience)
            if not last_epoch and not early and (epoch + 1) % config.checkpoint_every_epochs == 0:
                saved = write_checkpoint(epoch + 1)
                if saved is not None:
                    yield saved
            epoch += 1
            if early:
                reason = "early_stopping"
                break
        if reason == "completed" and epoch < planned_epochs:
            reason = "time_budget"  # re-fitted below the planned epochs: the budget ended it
    except Exception as exc:  # I/O errors, out of memory...: report, keep the last checkpoint
        log.exception("training failed")
        yield Failed(reason=f"training failed: {type(exc).__name__}: {exc}",
                     checkpoint=last_checkpoint)
        return

    # -- wrap up: a consistent state, a final preview and checkpoint ---------------------
    # After a user's Stop only what keeps the checkpoint sound: no final preview, a quick
    # BatchNorm re-estimate (the whole scan is embedded next anyway).
    stopped = reason == "stopped"
    try:
        recalibrate(quick=stopped)
        ddp.broadcast_buffers(model, ctx)
        if preview_x is not None and global_step > 0 and not stopped:
            preview = make_preview()
            if preview is not None:
                yield preview
        saved = write_checkpoint(epoch)  # completed epochs (a stopped epoch is redone on resume)
    except Exception as exc:  # a full disk, or a state the checkpoint refuses (NaN weights)
        log.exception("the final checkpoint could not be written")
        yield Failed(reason=f"the final checkpoint could not be written: {exc}",
                     checkpoint=last_checkpoint)
        return
    if saved is not None:
        yield saved
    model.eval()
    # The trained model leaves the accelerator with the run (optimiser state, activations
    # and the allocator's cache are freed here); the embedding moves it back while it runs.
    optimizer = step_module = loader = val_loader = preview_x = None  # drop their memory
    release_device_memory(model, device, keep_on_device=config.keep_model_on_device)
    objective.to(next(model.parameters()).device)
    trained = trained_model(model, preprocessor, objective, config, history, epoch=epoch,
                            global_step=global_step, path=last_checkpoint or "",
                            input_shape=input_shape, extra=run_extra)
    yield Finished(reason=reason, checkpoint=last_checkpoint, history=history, model=model,
                   preprocessor=preprocessor, objective=objective, trained=trained)

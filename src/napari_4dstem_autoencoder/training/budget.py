"""Keep a budgeted run's epochs fitted to the time it actually takes.

The plan (``training.plan``) picks the epochs from a few timed steps before Start. On a
shared CPU those steps can run at a fraction of the rate the run later gets (another job
finishing, a browser tab, the first steps' warm-up), or the other way round; a plan timed
under load chose one epoch where the run then had time for ten. With
``TrainConfig.fit_epochs_to_budget`` the engine re-fits the total after every epoch from
the epoch it has just measured, so the learning-rate schedule ends inside the budget instead
of ending early (time left unused) or being cut off at a high rate.
"""

from __future__ import annotations

import math

import torch

#: a plan never asks for more epochs than this (beyond it a small scan gains little)
MAX_EPOCHS = 50
#: margin on the measured epoch time, so the last epoch ends before the deadline
_EPOCH_MARGIN = 1.05


def refit_epochs(done: int, total: int, epoch_s: float, left_s: float,
                 max_epochs: int = MAX_EPOCHS) -> int:
    """The run's new total epochs: ``done`` plus as many more epochs of ``epoch_s`` seconds
    as fit in the ``left_s`` seconds to the deadline (never fewer than ``done``, never more
    than ``max_epochs`` unless ``total`` already was)."""
    if epoch_s <= 0 or not math.isfinite(epoch_s):
        return total
    more = int(max(0.0, left_s) // (epoch_s * _EPOCH_MARGIN))
    return max(done, min(done + more, max(max_epochs, total)))


def retarget_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
                    optimizer: torch.optim.Optimizer, done: int, total: int) -> None:
    """Stretch or shrink a cosine schedule that has stepped ``done`` epochs to end at
    ``total``: each group's rate becomes the closed form at ``done / total`` and the
    scheduler's recursive update continues from there."""
    scheduler.T_max = total
    scheduler.last_epoch = done
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (
            1 + math.cos(math.pi * done / total)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

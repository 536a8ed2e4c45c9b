"""Epochs re-fitted to the time budget while a run goes (training.budget and the engine)."""

from __future__ import annotations

import math

import pytest
import torch

from napari_4dstem_autoencoder.training import engine
from napari_4dstem_autoencoder.training.budget import MAX_EPOCHS, refit_epochs, retarget_cosine
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint
from napari_4dstem_autoencoder.training.events import EpochEnd
from napari_4dstem_autoencoder.training.plan import RunPlan, apply


def cosine(base: float, done: int, total: int, floor: float = 0.0) -> float:
    return floor + (base - floor) * (1 + math.cos(math.pi * done / total)) / 2


@pytest.mark.parametrize("done, total, epoch_s, left_s, expected", [
    (1, 1, 10.0, 95.0, 10),      # timed under load: one planned, nine more fit
    (1, 10, 30.0, 100.0, 4),     # slower than planned: three more, the schedule ends in time
    (3, 10, 30.0, 20.0, 3),      # less than an epoch left: end here
    (2, 5, 30.0, -5.0, 2),       # already past the deadline
    (1, 1, 0.1, 1e6, MAX_EPOCHS),
    (2, 80, 1.0, 1e6, 80),       # a user's larger total is not cut to the cap
    (2, 5, 0.0, 100.0, 5),       # no measurement: unchanged
])
def test_refit_epochs(done, total, epoch_s, left_s, expected):
    assert refit_epochs(done, total, epoch_s, left_s) == expected


def test_a_retargeted_cosine_follows_the_closed_form_of_the_new_length():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2, eta_min=0.0)
    optimizer.step()
    scheduler.step()  # one epoch of two: at the half-way rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine(1.0, 1, 2))
    retarget_cosine(scheduler, optimizer, done=1, total=6)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([cosine(1.0, k, 6) for k in range(1, 7)], abs=1e-12)


def test_apply_asks_the_engine_to_refit_only_epochs_the_plan_chose():
    def plan(**changes):
        base = dict(device="cpu", detector_bin=1, input_shape=(32, 32), n_positions=9,
                    train_subset=None, epochs=3, max_minutes=5.0, patterns_per_second=10.0,
                    setup_s=0.0)
        return RunPlan(**{**base, **changes})

    from napari_4dstem_autoencoder.training.config import TrainConfig
    config = TrainConfig(device="cpu")
    assert apply(plan(), config).fit_epochs_to_budget
    assert not apply(plan(epochs_chosen=False), config).fit_epochs_to_budget
    assert not apply(plan(max_minutes=None), config).fit_epochs_to_budget


def _fixed_refit(new_total: int):
    calls = []

    def refit(done, total, epoch_s, left_s):
        calls.append((done, total))
        return new_total if len(calls) == 1 else total
    return refit, calls


def test_a_run_lengthened_by_the_budget_trains_the_new_total_on_one_cosine(
        tiny_dataset, tiny_config, monkeypatch, tmp_path):
    refit, calls = _fixed_refit(4)
    monkeypatch.setattr(engine, "refit_epochs", refit)
    path = tmp_path / "m.safetensors"
    events = list(engine.train(tiny_dataset(), tiny_config(
        epochs=2, max_minutes=30, fit_epochs_to_budget=True, checkpoint_path=str(path))))
    done = events[-1]
    assert done.reason == "completed"
    assert [e.epochs for e in events if isinstance(e, EpochEnd)] == [4, 4, 4, 4]
    assert calls[0] == (1, 2)
    lr = tiny_config().lr  # the engine's cosine ends at 1 % of it
    assert [h["lr"] for h in done.history] == pytest.approx(
        [cosine(lr, k, 4, floor=lr * 0.01) for k in range(4)], rel=1e-9)
    loaded = load_checkpoint(path)
    assert loaded.epoch == 4 and loaded.train_config.epochs == 4  # a resume counts on from 4 of 4


def test_a_run_shortened_by_the_budget_ends_with_a_loadable_checkpoint(
        tiny_dataset, tiny_config, monkeypatch, tmp_path):
    refit, _ = _fixed_refit(1)  # after epoch one: no time for another
    monkeypatch.setattr(engine, "refit_epochs", refit)
    path = tmp_path / "m.safetensors"
    events = list(engine.train(tiny_dataset(), tiny_config(
        epochs=3, max_minutes=30, fit_epochs_to_budget=True, checkpoint_path=str(path))))
    assert events[-1].reason == "time_budget"
    assert len(events[-1].history) == 1 and load_checkpoint(path).epoch == 1


def test_epochs_the_user_chose_are_not_refitted(tiny_dataset, tiny_config, monkeypatch):
    refit, calls = _fixed_refit(1)
    monkeypatch.setattr(engine, "refit_epochs", refit)
    events = list(engine.train(tiny_dataset(), tiny_config(epochs=2, max_minutes=30)))
    assert calls == [] and len(events[-1].history) == 2

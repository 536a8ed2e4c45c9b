"""The run plan: detector binning, subset and epochs chosen from timed steps to fit a budget."""

from __future__ import annotations

import math

import pytest

from napari_4dstem_autoencoder.training import plan as plan_mod
from napari_4dstem_autoencoder.training.config import TrainConfig
from napari_4dstem_autoencoder.training.plan import (MIN_EPOCHS, MIN_SUBSET, apply,
                                                     candidate_bins, plan_run,
                                                     time_training_steps)


class FakeClock:
    """time_training_steps replaced by a rate inversely proportional to the pattern's pixels
    (``pixel_rate`` pixels per second), recording which binnings were timed."""

    def __init__(self, pixel_rate: float) -> None:
        self.pixel_rate = pixel_rate
        self.timed: list[tuple[int, int]] = []

    def __call__(self, view, config, steps=2, warmup=1):
        from napari_4dstem_autoencoder.data.preprocess import Preprocessor

        shape = Preprocessor(config.preprocess).output_shape(view.detector_shape)
        self.timed.append(shape)
        return self.pixel_rate / (shape[0] * shape[1]), 0.5


def test_candidate_bins_on_cpu_start_at_64_pixels_and_keep_32(tiny_dataset):
    config = TrainConfig(device="cpu")
    assert candidate_bins(tiny_dataset(detector_shape=(256, 256)), config, "cpu") == [4, 8]
    assert candidate_bins(tiny_dataset(detector_shape=(64, 64)), config, "cpu") == [1, 2]
    assert candidate_bins(tiny_dataset(detector_shape=(48, 40)), config, "cpu") == [1]
    # CUDA: full size
    assert candidate_bins(tiny_dataset(detector_shape=(256, 256)), config, "cuda") == [1]


def test_a_fast_machine_trains_every_position_at_the_finest_binning(tiny_dataset, monkeypatch):
    clock = FakeClock(pixel_rate=1e9)
    monkeypatch.setattr(plan_mod, "time_training_steps", clock)
    ds = tiny_dataset(scan_shape=(40, 40), detector_shape=(64, 64))
    plan = plan_run(ds, TrainConfig(device="cpu"), max_minutes=5)
    assert plan.detector_bin == 1 and plan.input_shape == (64, 64)
    assert plan.train_subset is None and plan.epochs == plan_mod.MAX_EPOCHS
    assert plan.estimate_s <= 5 * 60
    assert clock.timed == [(32, 32), (64, 64)]  # coarsest first, the chosen one confirmed


def test_a_slow_machine_bins_and_subsets_so_the_budget_covers_several_epochs(
        tiny_dataset, monkeypatch):
    # 32x32 patterns at 20/s: 5 min cover ~5,000 patterns, not 4 epochs of 14,400
    monkeypatch.setattr(plan_mod, "time_training_steps", FakeClock(pixel_rate=20 * 32 * 32))
    ds = tiny_dataset(scan_shape=(120, 120), detector_shape=(64, 64))
    config = TrainConfig(device="cpu")
    plan = plan_run(ds, config, max_minutes=5)
    assert plan.detector_bin == 2  # 64x64 would cover less than MIN_EPOCHS of MIN_SUBSET
    assert plan.train_subset is not None and plan.train_subset < ds.n_patterns
    assert plan.n_train >= MIN_SUBSET * 0.99
    assert plan.epochs >= MIN_EPOCHS
    # the planned epochs fit the budget, and the budget stays as a safety net
    assert plan.epochs * plan.n_train / plan.patterns_per_second <= 5 * 60
    assert plan.max_minutes == 5 and plan.estimate_s <= 5 * 60
    run = apply(plan, config)
    assert run.preprocess.detector_bin == 2 and run.train_subset == plan.train_subset
    assert run.epochs == plan.epochs and run.max_minutes == 5


def test_a_very_slow_machine_still_gets_a_run_that_ends_within_the_budget(
        tiny_dataset, monkeypatch):
    monkeypatch.setattr(plan_mod, "time_training_steps", FakeClock(pixel_rate=0.5 * 32 * 32))
    ds = tiny_dataset(scan_shape=(64, 64), detector_shape=(64, 64))
    plan = plan_run(ds, TrainConfig(device="cpu"), max_minutes=5)
    assert plan.detector_bin == 2 and plan.epochs == 1
    assert plan.train_subset is not None  # MIN_SUBSET of 4,096 positions
    assert plan.estimate_s == pytest.approx(5 * 60)


def test_the_default_cpu_budget_applies_when_none_is_given(tiny_dataset, monkeypatch):
    monkeypatch.setattr(plan_mod, "time_training_steps", FakeClock(pixel_rate=1e6))
    plan = plan_run(tiny_dataset(scan_shape=(8, 8)), TrainConfig(device="cpu"))
    assert plan.max_minutes == plan_mod.DEFAULT_CPU_MINUTES
    assert "epochs over all" in plan.describe() and "patterns/s timed on cpu" in plan.describe()


def test_cuda_plans_keep_the_whole_data_at_full_size(tiny_dataset, monkeypatch):
    import torch

    monkeypatch.setattr(plan_mod, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(plan_mod, "time_training_steps", FakeClock(pixel_rate=1e6))
    ds = tiny_dataset(scan_shape=(10, 10), detector_shape=(128, 128))
    plan = plan_run(ds, TrainConfig(device="cpu", epochs=7))
    assert plan.detector_bin == 1 and plan.input_shape == (128, 128)
    assert plan.train_subset is None and plan.epochs == 7 and plan.max_minutes is None


def test_timed_steps_run_the_real_step_on_the_datasets_patterns(tiny_dataset, tiny_config):
    ds = tiny_dataset(scan_shape=(4, 4))
    rate, setup = time_training_steps(ds, tiny_config(batch_size=4), steps=1, warmup=0)
    assert math.isfinite(rate) and rate > 0 and setup >= 0
    # the objective's graph teacher was fitted (so its per-batch cost is timed) when asked
    rate, _ = time_training_steps(ds, tiny_config(preset="regions", model=None, batch_size=4),
                                  steps=1, warmup=0)
    assert rate > 0


def test_estimate_counts_setup_epochs_and_overhead():
    p = plan_mod.RunPlan(device="cpu", detector_bin=2, input_shape=(32, 32), n_positions=1000,
                         train_subset=None, epochs=4, max_minutes=None,
                         patterns_per_second=100.0, setup_s=2.0, val_fraction=0.1)
    assert p.n_train == 900
    assert p.estimate_s == pytest.approx(2.0 + 4 * 900 / 100 * (1 + plan_mod._OVERHEAD))
    assert p.replace(max_minutes=0.5).estimate_s == pytest.approx(30.0)  # the budget caps it
    assert p.replace(max_minutes=0.5).cut_by_budget and not p.replace(max_minutes=10).cut_by_budget
    assert not p.cut_by_budget and "4 epochs over all 1,000 positions" in p.describe()
    assert "1 epoch over" in p.replace(epochs=1).describe()


def test_settings_the_user_gave_are_kept_and_the_rest_fitted_around_them(
        tiny_dataset, monkeypatch):
    monkeypatch.setattr(plan_mod, "time_training_steps", FakeClock(pixel_rate=20 * 32 * 32))
    ds = tiny_dataset(scan_shape=(120, 120), detector_shape=(64, 64))
    plan = plan_run(ds, TrainConfig(device="cpu"), max_minutes=5, detector_bin=1,
                    train_subset=500)
    assert plan.detector_bin == 1 and plan.train_subset == 500
    assert plan.epochs == int(20 / 4 * (5 * 60 - plan.setup_s) / (1 + plan_mod._OVERHEAD)
                              // plan.n_train)
    fixed = plan_run(ds, TrainConfig(device="cpu"), max_minutes=5, epochs=3)
    assert fixed.epochs == 3
    unlimited = plan_run(ds, TrainConfig(device="cpu", epochs=10), no_budget=True)
    assert unlimited.max_minutes is None and unlimited.train_subset is None
    assert unlimited.epochs == 10 and unlimited.estimate_s > 5 * 60  # it says how long

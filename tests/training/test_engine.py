"""The training generator: events, stop, determinism, streaming, resume, failures."""

import hashlib
import threading

import numpy as np
import pytest
import torch

from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint
from napari_4dstem_autoencoder.training.data import (CachedPatterns, StreamedPatterns,
                                                     fit_preprocessor_on, preview_grid,
                                                     reference_positions, split_positions)
from napari_4dstem_autoencoder.training.engine import train
from napari_4dstem_autoencoder.training.presets import get_preset
from napari_4dstem_autoencoder.training.events import (BatchEnd, CheckpointSaved, EpochEnd,
                                                       Failed, Finished, Preview, Started)


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_event_sequence_of_a_run(trained_run):
    ev = trained_run.events
    assert isinstance(ev[0], Started) and isinstance(ev[-1], Finished)
    started = ev[0]
    assert (started.n_train, started.n_val) == (7, 2)
    assert started.steps_per_epoch == 2 and started.input_shape == (32, 32)
    assert started.scan_shape == (3, 3) and started.cached
    batches = of(ev, BatchEnd)
    assert [b.global_step for b in batches] == [1, 2]
    # the objective's names, announced at the start (the loss plot draws these curves)
    assert started.loss_names == ("total", "mse", "l1", "contrastive", "divergence")
    assert tuple(batches[0].losses) == started.loss_names
    assert all(b.patterns_per_second > 0 for b in batches)
    (epoch,) = of(ev, EpochEnd)
    assert epoch.val and epoch.train["mse"] > 0 and epoch.lr == pytest.approx(trained_run.config.lr)
    previews = of(ev, Preview)
    assert len(previews) >= 2  # every step, and one at the end
    assert previews[-1].embeddings.shape == (3, 3, 32)
    assert previews[-1].embeddings.dtype == np.float32
    assert of(ev, CheckpointSaved)[-1].epoch == 1
    done = ev[-1]
    assert done.reason == "completed" and len(done.history) == 1
    assert not done.model.training
    loaded = load_checkpoint(done.checkpoint)
    assert same_weights(loaded.model, done.model)
    assert loaded.history == done.history


def test_same_seed_same_weights_also_when_streaming(trained_run):
    """Deterministic on CPU; the streamed DataLoader path sees the same data as the cache."""
    config = trained_run.config.replace(checkpoint_path=None, preview_every_steps=None,
                                        cache_max_mb=0)
    events = list(train(trained_run.dataset, config))
    assert events[0].cached is False
    assert same_weights(events[-1].model, trained_run.events[-1].model)


def test_stop_ends_between_batches_with_a_valid_checkpoint(tiny_dataset, tiny_config, tmp_path):
    stop = threading.Event()
    path = tmp_path / "stopped.safetensors"
    events = []
    for event in train(tiny_dataset(), tiny_config(epochs=3, checkpoint_path=str(path)), stop=stop):
        events.append(event)
        if isinstance(event, BatchEnd):
            stop.set()
    assert len(of(events, BatchEnd)) == 1
    done = events[-1]
    assert isinstance(done, Finished) and done.reason == "stopped"
    loaded = load_checkpoint(done.checkpoint)
    assert loaded.global_step == 1 and loaded.epoch == 0
    assert same_weights(loaded.model, done.model)


def test_time_budget_and_pre_set_stop_end_before_any_step(tiny_dataset, tiny_config):
    ds = tiny_dataset()
    out = list(train(ds, tiny_config(max_minutes=1e-9)))
    assert out[-1].reason == "time_budget" and not of(out, BatchEnd)
    stop = threading.Event()
    stop.set()
    out = list(train(ds, tiny_config(), stop=stop))
    assert out[-1].reason == "stopped" and not of(out, BatchEnd)


def test_non_finite_loss_fails_and_keeps_the_last_good_checkpoint(
        tiny_dataset, tiny_config, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    real = Objective.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        losses = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # first step of epoch 2 (2 train steps + 1 val batch before)
            losses["mse"] = losses["mse"] * float("nan")
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(Objective, "__call__", poisoned)
    events = []
    for event in train(tiny_dataset(), tiny_config(epochs=2, val_fraction=0.25,
                                                   checkpoint_path=str(path))):
        events.append(event)
        if isinstance(event, CheckpointSaved):
            good = hashlib.sha256(path.read_bytes()).hexdigest()
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert "non-finite loss" in failed.reason and "epoch 2" in failed.reason
    assert failed.checkpoint == str(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == good
    assert load_checkpoint(path).epoch == 1


def test_resume_counts_epochs_on(trained_run, tmp_path):
    first = trained_run.events[-1]
    out = tmp_path / "resumed.safetensors"
    config = trained_run.config.replace(epochs=2, checkpoint_path=str(out),
                                        preview_every_steps=None, preview_max_positions=0)
    events = list(train(trained_run.dataset, config, resume_from=first.checkpoint))
    started, done = events[0], events[-1]
    assert of(events, Preview) == []  # previews off (as the CLI runs)
    assert started.start_epoch == 1
    assert [e.epoch for e in of(events, EpochEnd)] == [1]
    assert of(events, BatchEnd)[0].global_step == 3  # continues after the first run's 2 steps
    assert done.reason == "completed" and [h["epoch"] for h in done.history] == [1, 2]
    loaded = load_checkpoint(out)
    assert loaded.epoch == 2 and loaded.global_step == 4
    assert loaded.preprocessor.to_dict() == first.preprocessor.to_dict()
    assert not same_weights(loaded.model, first.model)


def test_early_stopping(tiny_dataset, tiny_config):
    # no epoch can beat the best by 1e9: the second epoch counts as "no improvement"
    config = tiny_config(epochs=5, early_stopping_patience=1, early_stopping_min_delta=1e9,
                         train_subset=4)
    events = list(train(tiny_dataset(), config))
    assert events[-1].reason == "early_stopping"
    assert len(of(events, EpochEnd)) == 2


def test_patterns_too_small_for_the_network(tiny_dataset, tiny_config):
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
    config = tiny_config(preprocess=PreprocessConfig(detector_bin=2))
    with pytest.raises(ValueError, match="at least 32x32"):
        next(train(tiny_dataset(), config))


def test_split_is_reproducible_and_disjoint():
    a = split_positions(100, 40, 0.25, seed=1)
    b = split_positions(100, 40, 0.25, seed=1)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert (a.train.size, a.val.size) == (30, 10)
    assert not set(a.train) & set(a.val)
    assert not np.array_equal(split_positions(100, 40, 0.25, seed=2).train, a.train)
    with pytest.raises(ValueError, match="at least 2 positions"):
        split_positions(1, None, 0.0, 0)


def test_streamed_and_cached_patterns_agree(tiny_dataset, tiny_config):
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
    ds = tiny_dataset(scan_shape=(4, 5))
    idx = np.array([7, 0, 19, 3])
    prep = fit_preprocessor_on(ds.patterns(reference_positions(idx)), PreprocessConfig())
    streamed = StreamedPatterns(ds, prep, idx)
    cached = CachedPatterns.load(ds, prep, idx)
    got = torch.stack(streamed.__getitems__([2, 0, 1]))
    assert torch.equal(got, cached.data[[2, 0, 1]])
    assert got.shape == (3, 1, 32, 32) and 0 <= got.min() and got.max() <= 1
    assert torch.equal(streamed[3], cached[3])


def test_preview_grid_respects_the_position_cap():
    step, flat, shape = preview_grid((100, 60), 400)
    assert shape[0] * shape[1] <= 400 and flat.size == shape[0] * shape[1]
    assert step == 4 and shape == (25, 15) and flat[1] == 4 and flat[shape[1]] == 4 * 60
    assert preview_grid((3, 3), 4096)[0] == 1


def _run_keeping_train_data(dataset, config):
    """Run to the end; return (Finished, the engine's training patterns)."""
    gen = train(dataset, config)
    train_ds, finished = None, None
    for ev in gen:
        if isinstance(ev, Started):
            train_ds = gen.gi_frame.f_locals["train_ds"]
        if isinstance(ev, Finished):
            finished = ev
    return finished, train_ds


def test_the_run_ends_with_batchnorm_statistics_of_its_final_weights(tiny_dataset, tiny_config):
    import copy

    from napari_4dstem_autoencoder.model.batchnorm import recalibrate_batchnorm

    finished, train_ds = _run_keeping_train_data(tiny_dataset(),
                                                 tiny_config(preview_max_positions=0))
    off, _ = _run_keeping_train_data(tiny_dataset(), tiny_config(preview_max_positions=0,
                                                                 bn_recalibration_patterns=0))
    bns = lambda m: [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    # 9 training patterns in batches of 4: steps of 4, 4, 1 patterns
    assert all(int(b.num_batches_tracked) == 3 for b in bns(off.model))  # momentum updates
    # recalibrated on the same 9 patterns in batches of 4 (the single-pattern batch is skipped)
    assert all(int(b.num_batches_tracked) == 2 for b in bns(finished.model))
    reference = copy.deepcopy(finished.model)
    recalibrate_batchnorm(reference, [train_ds.data[0:4], train_ds.data[4:8], train_ds.data[8:9]])
    for got, want in zip(bns(finished.model), bns(reference)):
        torch.testing.assert_close(got.running_var, want.running_var)
        torch.testing.assert_close(got.running_mean, want.running_mean)
    # ...and they are not what the momentum average gives
    assert any(not torch.allclose(a.running_var, b.running_var, rtol=1e-2)
               for a, b in zip(bns(finished.model), bns(off.model)))


def test_continuous_preset_starts_from_the_training_mean_pattern(tiny_dataset, tiny_config):
    config = tiny_config(preset="continuous", model=None, epochs=1, preview_max_positions=0)
    ds = tiny_dataset()
    gen = train(ds, config)
    assert isinstance(next(gen), Started)
    model = gen.gi_frame.f_locals["model"]
    train_ds = gen.gi_frame.f_locals["train_ds"]
    expected = train_ds.data.mean(dim=(0, 1)).clamp(1e-3, 1 - 1e-3)
    got = torch.sigmoid(model.decoder.prior_logit[0, 0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    gen.close()


def test_a_streamed_run_reads_its_reference_patterns_once(tiny_dataset, tiny_config,
                                                         monkeypatch):
    # the preprocessing statistics and the prior are fitted on the same raw patterns: a
    # streamed (large, maybe slow) file is read for them once, not twice
    from napari_4dstem_autoencoder.data.dataset import Dataset4D

    reads = []
    real_patterns = Dataset4D.patterns

    def recording(self, idx):
        if self is dataset:  # not the in-memory copies the fits wrap around what was read
            reads.append(tuple(np.asarray(idx).tolist()))
        return real_patterns(self, idx)

    monkeypatch.setattr(Dataset4D, "patterns", recording)
    config = tiny_config(preset="regions", model=None, epochs=1, preview_max_positions=0,
                         cache_max_mb=0)
    dataset = tiny_dataset()
    gen = train(dataset, config)
    started = next(gen)
    assert isinstance(started, Started) and started.cached is False
    train_ds = gen.gi_frame.f_locals["train_ds"]
    reference = tuple(reference_positions(train_ds.indices, seed=config.seed).tolist())
    assert reads == [reference]
    mean = torch.stack([train_ds[i] for i in range(len(train_ds))]).mean(dim=(0, 1))
    got = torch.sigmoid(gen.gi_frame.f_locals["model"].decoder.prior_logit[0, 0])
    torch.testing.assert_close(got, mean.clamp(1e-3, 1 - 1e-3), atol=1e-5, rtol=1e-5)
    gen.close()


def test_cached_and_streamed_data_give_the_same_reference_patterns(tiny_dataset):
    # the buffers of a cached run are fitted on the cache's rows at the reference positions
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
    from napari_4dstem_autoencoder.training.engine import _reference_patterns

    ds = tiny_dataset(scan_shape=(4, 5))
    train_idx = np.array([0, 2, 3, 5, 7, 8, 11, 13, 17, 19])
    ref = reference_positions(train_idx, max_patterns=4, seed=3)
    assert ref.size == 4 and set(ref) <= set(train_idx) and np.all(np.diff(ref) > 0)
    prep = fit_preprocessor_on(ds.patterns(ref), PreprocessConfig())
    cached = _reference_patterns(CachedPatterns.load(ds, prep, train_idx), prep, None, seed=3,
                                 max_patterns=4)
    streamed = _reference_patterns(StreamedPatterns(ds, prep, train_idx), prep,
                                   ds.patterns(ref), seed=3, max_patterns=4)
    assert cached.shape == (4, 32, 32)
    torch.testing.assert_close(cached, streamed)


def test_previews_recalibrate_the_encoder_alone(tiny_dataset, tiny_config):
    config = tiny_config(batch_size=2, preview_every_steps=1, preview_max_positions=16)
    gen = train(tiny_dataset(scan_shape=(6, 6)), config)
    for ev in gen:
        if isinstance(ev, Preview):
            break
    model = gen.gi_frame.f_locals["model"]
    count = lambda m: {int(b.num_batches_tracked) for b in m.modules()
                       if isinstance(b, torch.nn.BatchNorm2d)}
    # a quarter of the 36 training patterns (9) in batches of 2 for the encoder (the ninth,
    # alone, has no batch statistics: 4 batches); the decoder's still come from the one
    # training step
    assert count(model.encoder) == {4}
    assert count(model.decoder) == {1}
    gen.close()


@pytest.mark.parametrize("cache_max_mb", [0, 64], ids=["streamed", "cached"])
def test_graph_teacher_is_fitted_on_the_reference_patterns_saved_and_restored_on_resume(
        tiny_dataset, tiny_config, tmp_path, cache_max_mb, monkeypatch):
    from napari_4dstem_autoencoder.data.dataset import Dataset4D
    from napari_4dstem_autoencoder.objective.graph_teacher import (DiffusionTeacher,
                                                                    local_log_rates)

    path = tmp_path / "graph.safetensors"
    # 5 neighbours among 36 patterns of two kinds: two clouds, so the graph has a slow mode
    objective = get_preset("regions").objective.replace(graph_neighbours=5)
    config = tiny_config(objective=objective, epochs=1, batch_size=12, preview_max_positions=0,
                         val_fraction=0.0, checkpoint_path=str(path), cache_max_mb=cache_max_mb)
    ds = tiny_dataset(scan_shape=(6, 6))
    gen = train(ds, config)
    started = next(gen)
    assert started.cached == bool(cache_max_mb) and started.loss_names[-1] == "graph"
    teacher = gen.gi_frame.f_locals["objective"].teacher
    assert teacher is not None and teacher.has_structure
    train_ds = gen.gi_frame.f_locals["train_ds"]
    # all 36 training patterns (fewer than 1,024) are the teacher's references, in order, as
    # the preset's features: the log local rates of their electron counts
    patterns = torch.stack(train_ds.__getitems__(list(range(len(train_ds)))))
    objective_now = gen.gi_frame.f_locals["objective"]
    counts = objective_now.counts.to_counts(patterns.float()).round()
    flat = patterns.reshape(len(patterns), -1).float().numpy()
    expected = local_log_rates(flat, counts.reshape(len(patterns), -1).double().numpy(), 5)
    assert teacher.likelihood and teacher.basis is None
    assert teacher.reference.shape == (len(patterns), patterns[0].numel())
    torch.testing.assert_close(teacher.reference, torch.from_numpy(expected).float())
    events = list(gen)
    assert isinstance(events[-1], Finished) and events[-1].objective.teacher is teacher
    for b in of(events, BatchEnd):
        assert 0 < b.losses["graph"] < 2
        # the weight (1.0) enters the total; the other terms are small here
        others = b.losses["total"] - b.losses["mse"] - b.losses["graph"]
        assert 0 <= others < 0.01
    saved = load_checkpoint(path).objective
    assert saved.config == objective and saved.fitted
    torch.testing.assert_close(saved.teacher.coords, teacher.coords)

    # resuming restores the saved teacher: no second fit, no second read of the file
    fits, reads = [], []
    monkeypatch.setattr(DiffusionTeacher, "fit", classmethod(lambda *a, **k: fits.append(1)))
    real_patterns = Dataset4D.patterns
    monkeypatch.setattr(Dataset4D, "patterns",
                        lambda self, idx: reads.append(1) or real_patterns(self, idx))
    resumed = train(ds, config.replace(epochs=2), resume_from=path)
    assert isinstance(next(resumed), Started)
    again = resumed.gi_frame.f_locals["objective"].teacher
    torch.testing.assert_close(again.coords, teacher.coords)
    torch.testing.assert_close(again.reference, teacher.reference)
    rest = list(resumed)
    assert isinstance(rest[-1], Finished) and rest[-1].reason == "completed"
    assert all(0 < b.losses["graph"] < 2 for b in of(rest, BatchEnd))
    assert fits == [] and (cache_max_mb or reads)  # a streamed run reads its batches


def test_graph_preset_skips_a_teacher_without_structure(tiny_dataset, tiny_config, caplog):
    # 9 patterns, each the other 8's neighbour (15 asked): the graph is complete, no slow mode
    config = tiny_config(preset="regions", model=None, epochs=1, preview_max_positions=0)
    with caplog.at_level("WARNING"):
        events = list(train(tiny_dataset(), config))
    assert isinstance(events[-1], Finished)
    assert "no slow modes" in caplog.text
    assert all(b.losses["graph"] == 0.0 for b in of(events, BatchEnd))


def test_presets_without_a_graph_teacher_report_no_graph_term(trained_run):
    batches = of(trained_run.events, BatchEnd)
    assert batches and all("graph" not in b.losses for b in batches)


def test_graph_preset_on_two_patterns_trains_without_its_teacher(tiny_dataset, tiny_config,
                                                                  caplog):
    config = tiny_config(preset="regions", model=None, epochs=1, batch_size=2,
                         preview_max_positions=0, val_fraction=0.0)
    with caplog.at_level("WARNING"):
        events = list(train(tiny_dataset(scan_shape=(1, 2)), config))
    assert isinstance(events[-1], Finished)
    assert "graph teacher skipped: 2 training patterns" in caplog.text
    assert all(b.losses["graph"] == 0.0 for b in of(events, BatchEnd))


def test_finished_describes_the_trained_model_as_its_checkpoint_does(trained_run):
    """The GUI uses ``Finished.trained`` instead of reading the checkpoint back: both must
    describe the same model, preprocessing, objective and history."""
    done = trained_run.events[-1]
    trained, loaded = done.trained, load_checkpoint(done.checkpoint)
    assert trained.model is done.model and trained.objective is done.objective
    assert str(trained.path) == done.checkpoint
    assert (trained.epoch, trained.global_step, trained.input_shape) == (
        loaded.epoch, loaded.global_step, loaded.input_shape)
    file_only = {"format", "format_version", "created", "optimizer", "scheduler", "sha256"}
    assert trained.metadata == {k: v for k, v in loaded.metadata.items() if k not in file_only}
    assert trained.train_config == loaded.train_config == trained_run.config
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(trained.model.embed(x), loaded.model.embed(x))


def test_a_final_checkpoint_that_cannot_be_written_fails_the_run_and_keeps_the_last_good_one(
        tiny_dataset, tiny_config, tmp_path, monkeypatch):
    import errno

    from napari_4dstem_autoencoder.training import engine

    path = tmp_path / "m.safetensors"
    real_save = engine.save_checkpoint
    calls = []

    def disk_full_at_the_end(*args, **kwargs):
        calls.append(kwargs.get("epoch"))
        if len(calls) == 2:  # epoch 1 is written; the wrap-up's write meets a full disk
            raise OSError(errno.ENOSPC, f"cannot write {path}: no space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(engine, "save_checkpoint", disk_full_at_the_end)
    events = list(train(tiny_dataset(), tiny_config(epochs=2, checkpoint_path=str(path))))
    failed = events[-1]
    assert isinstance(failed, Failed) and "no space left on device" in failed.reason
    assert failed.checkpoint == str(path) and load_checkpoint(path).epoch == 1


def test_a_stop_skips_the_final_preview_and_recalibrates_on_two_batches(
        tiny_dataset, tiny_config, tmp_path, monkeypatch):
    """What a Stop waits for is bounded: the batch in flight, two batches of BatchNorm
    re-estimation, the checkpoint; no final live map."""
    from napari_4dstem_autoencoder.training import engine as engine_mod

    seen: list[int] = []
    real = engine_mod.recalibrate_batchnorm

    def counting(module, batches):
        batches = list(batches)
        seen.append(sum(b.shape[0] for b in batches))
        return real(module, iter(batches))

    monkeypatch.setattr(engine_mod, "recalibrate_batchnorm", counting)
    stop = threading.Event()
    path = tmp_path / "stopped.safetensors"
    config = tiny_config(epochs=3, batch_size=2, preview_every_steps=1, checkpoint_path=str(path),
                         bn_recalibration_patterns=64)
    events = []
    for event in train(tiny_dataset(scan_shape=(6, 6)), config, stop=stop):
        events.append(event)
        if isinstance(event, Preview):
            stop.set()
    kinds = [type(e).__name__ for e in events]
    first_preview = kinds.index("Preview")
    assert "Preview" not in kinds[first_preview + 1:]  # no final preview after the Stop
    assert events[-1].reason == "stopped"
    assert seen[-1] == 2 * config.batch_size  # the quick re-estimate
    assert load_checkpoint(events[-1].checkpoint).global_step == events[-1].trained.global_step


def test_a_run_that_ends_gives_the_model_back_to_the_cpu(tiny_dataset, tiny_config, monkeypatch):
    """The release path, on CPU: Finished's model is on the CPU and the caching allocator of
    the device the run used is emptied once (CUDA's, faked here)."""
    import torch

    from napari_4dstem_autoencoder.training import device as device_mod

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda"))
    model = torch.nn.Linear(2, 2)
    device_mod.release_device_memory(model, "cuda")
    assert calls == ["cuda"] and next(model.parameters()).device.type == "cpu"
    moved = []
    model.to = lambda *a, **k: moved.append(a)  # kept for browsing: not moved
    device_mod.release_device_memory(model, "cuda", keep_on_device=True)
    assert moved == [] and calls == ["cuda", "cuda"]
    device_mod.release_device_memory(model, "cpu")
    assert calls == ["cuda", "cuda"]  # nothing to give back on the CPU
    assert device_mod.device_memory("cpu") is None

    released = []
    monkeypatch.setattr("napari_4dstem_autoencoder.training.engine.release_device_memory",
                        lambda m, d, keep_on_device=False: released.append((str(d), keep_on_device)))
    done = list(train(tiny_dataset(), tiny_config()))[-1]
    assert released == [("cpu", False)]
    assert done.trained.model is done.model


def test_a_run_with_the_count_terms_trains_on_thinned_halves(tiny_dataset, tiny_config):
    config = tiny_config(objective=ObjectiveConfig(reconstruction="poisson", halves_weight=1.0),
                         epochs=1, batch_size=4, preview_max_positions=0, val_fraction=0.0)
    events = list(train(tiny_dataset(scan_shape=(3, 4)), config))
    assert isinstance(events[-1], Finished)
    batches = of(events, BatchEnd)
    assert batches and all(b.losses["poisson"] > 0 and 0 <= b.losses["halves"] < 2
                           for b in batches)

import json
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from napari_4dstem_autoencoder import _files
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.training import checkpoints as ck
from napari_4dstem_autoencoder.training.checkpoints import (CheckpointError, load_checkpoint,
                                                            read_checkpoint, save_checkpoint)



@pytest.fixture(scope="module")
def parts(fast_model, tiny_dataset):
    torch.manual_seed(3)
    model = Autoencoder(out_shape=(32, 32), config=fast_model)
    prep = Preprocessor.fit(tiny_dataset(), PreprocessConfig(scaling="sqrt"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 32, 32)
    x_hat, z = model.encode_decode(x)
    Objective()(x, x_hat, z)["mse"].backward()
    opt.step()
    return model, prep, opt


@pytest.fixture(scope="module")
def saved_bytes(parts, tmp_path_factory, tiny_config):
    model, prep, opt = parts
    path = tmp_path_factory.mktemp("ck") / "m.safetensors"
    history = [{"epoch": 1, "train": {"total": 0.5}, "val": {}, "lr": 1e-3}]
    save_checkpoint(path, model, prep, tiny_config(), history, extra={"note": "hi"},
                    optimizer=opt, epoch=1, global_step=7)
    return path.read_bytes()


@pytest.fixture
def saved(saved_bytes, tmp_path):
    """A fresh copy of one checkpoint per test (tests damage it)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(saved_bytes)
    return path


def test_round_trip_restores_model_preprocessing_and_history(parts, saved, tiny_config):
    model, prep, opt = parts
    loaded = load_checkpoint(saved)
    assert not loaded.model.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.preprocessor.to_dict() == prep.to_dict()
    assert loaded.train_config == tiny_config()
    assert loaded.history[0]["train"]["total"] == 0.5
    assert (loaded.epoch, loaded.global_step, loaded.input_shape) == (1, 7, (32, 32))
    assert loaded.extra == {"note": "hi"}
    assert loaded.metadata["parameters"] == 3_914_404
    assert loaded.metadata["versions"]["torch"] == torch.__version__
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert torch.equal(model.embed(x), loaded.model.embed(x))
    model.train()


def test_optimizer_state_survives_without_pickle(parts, saved):
    _, _, opt = parts
    loaded = load_checkpoint(saved)
    fresh = torch.optim.Adam(loaded.model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer_state)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(parts, saved, monkeypatch):
    model, prep, _ = parts
    before = saved.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, model, prep)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


def test_writes_never_touch_the_target_before_the_rename(parts, saved, monkeypatch):
    """A process killed mid-write leaves only a temporary: the target is written by rename."""
    model, prep, _ = parts
    opened = []
    real_open = os.open

    def spy(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR):
            opened.append(os.fspath(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(ck.os, "open", spy)
    inode = saved.stat().st_ino
    save_checkpoint(saved, model, prep)
    assert opened and str(saved) not in opened  # only the temporary was opened for writing
    assert all(_files.is_own_temporary(os.path.basename(p)) for p in opened)
    assert saved.stat().st_ino != inode  # a new file was renamed into place
    load_checkpoint(saved)


def _expect(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    return info.value


def test_missing_and_empty_files(tmp_path):
    _expect(tmp_path / "nope.safetensors", "no such file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect(tmp_path / "empty.safetensors", "empty")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    _expect(saved, "truncated|corrupt")


def test_flipped_bit_in_the_weights(saved):
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0x01
    saved.write_bytes(bytes(data))
    _expect(saved, "checksum")


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"framework": "someone-else"})
    _expect(path, "not a napari-4dstem-autoencoder checkpoint")


def test_torch_pickle_is_refused(tmp_path, parts):
    path = tmp_path / "model.pt"
    torch.save(parts[0].state_dict(), path)
    assert zipfile.is_zipfile(path)
    _expect(path, "pickle")


class _Exploit:
    """Unpickling this runs ``open(marker, 'w')``: the classic code-execution payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    for name, writer in (("raw.pkl", lambda p: p.write_bytes(pickle.dumps(_Exploit(str(marker))))),
                         ("zip.pt", lambda p: torch.save(_Exploit(str(marker)), p))):
        path = tmp_path / name
        writer(path)
        _expect(path, "pickle")
        assert not marker.exists(), "loading ran code from the file"


def _reseal(meta, tensors):
    """Give edited metadata and tensors a matching checksum, as a writer of its format would."""
    digest = ck._tensor_digest(tensors)
    # formats 1 and 2 had the tensor digest only; format 3 covers the metadata too
    meta["sha256"] = ck._checksum(meta, digest) if meta["format_version"] >= 3 else digest


def _rewrite(path, edit_meta=None, edit_tensors=None, reseal=True):
    """Rewrite a checkpoint with edited metadata and/or tensors; the checksum is updated
    unless ``reseal`` is false (then it is the old one, or the edited tensors' digest)."""
    tensors, meta = read_checkpoint(path)
    if edit_tensors:
        tensors = edit_tensors(tensors)
        meta["sha256"] = ck._tensor_digest(tensors)
    if edit_meta:
        edit_meta(meta)
    if reseal:
        _reseal(meta, tensors)
    header = {"format": ck.FORMAT_NAME, "format_version": str(meta["format_version"]),
              ck._META_KEY: json.dumps(meta)}
    save_file(tensors, str(path), metadata=header)


def test_newer_format_version_is_refused(saved):
    _rewrite(saved, edit_meta=lambda m: m.update(format_version=99))
    _expect(saved, "newer")


def test_wrong_weight_shapes_are_incompatible(saved):
    def shrink(t):
        t = dict(t)
        t["model.encoder.embedding.linear.weight"] = torch.zeros(32, 8)
        return t

    _rewrite(saved, edit_tensors=shrink)
    _expect(saved, "incompatible")


def test_unknown_model_config_is_incompatible(saved):
    _rewrite(saved, edit_meta=lambda m: m["model_config"].update(pool_schedule="spiral"))
    _expect(saved, "incompatible")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_a_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """Regression: safetensors stores the header length little-endian; 128 starts with 0x80."""
    header = b'{"__metadata__":{"format":"other"}}'.ljust(128, b" ")
    path = tmp_path / "odd.safetensors"
    path.write_bytes((128).to_bytes(8, "little") + header)
    err = _expect(path, "not a napari-4dstem-autoencoder checkpoint")
    assert "pickle" not in str(err)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(7, 250)) * 4)
    _expect(path, "not a checkpoint|truncated")


def test_the_output_prior_travels_with_the_weights(tmp_path, tiny_dataset, tiny_config):
    from napari_4dstem_autoencoder.training.presets import get_preset

    model = Autoencoder(out_shape=(32, 32), config=get_preset("continuous").model)
    model.set_output_prior(torch.linspace(0.01, 0.9, 32 * 32).reshape(32, 32))
    prep = Preprocessor.fit(tiny_dataset(), PreprocessConfig())
    path = tmp_path / "prior.safetensors"
    save_checkpoint(path, model, prep, tiny_config(preset="continuous", model=None), [], epoch=1)
    loaded = load_checkpoint(path)
    assert loaded.model.config.output_prior == "mean_pattern"
    assert loaded.preset == "continuous"
    assert torch.equal(loaded.model.decoder.prior_logit, model.decoder.prior_logit)


def _fitted_graph_objective(n=12):
    """An objective whose teacher was fitted on two clouds of patterns (it has structure)."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.cat([torch.rand(n, 32, 32, generator=gen) * 0.1,
                          torch.rand(n, 32, 32, generator=gen) * 0.1 + 0.8])
    objective = Objective(ObjectiveConfig(graph_weight=1.0, graph_neighbours=3,
                                          graph_components=4))
    objective.fit(patterns)
    assert objective.teacher is not None
    return objective


def test_the_fitted_objective_travels_with_the_weights_under_the_checksum(parts, tmp_path):
    model, prep, _ = parts
    objective = _fitted_graph_objective()
    path = tmp_path / "graph.safetensors"
    save_checkpoint(path, model, prep, objective=objective)
    loaded = load_checkpoint(path)
    assert loaded.objective.config == objective.config and loaded.objective.fitted
    torch.testing.assert_close(loaded.objective.teacher.coords, objective.teacher.coords)
    torch.testing.assert_close(loaded.objective.teacher.reference, objective.teacher.reference)
    x = torch.rand(6, 1, 32, 32)
    z = torch.rand(6, 32)
    torch.testing.assert_close(loaded.objective(x, x, z)["graph"], objective(x, x, z)["graph"])

    def nudge(tensors):
        tensors = dict(tensors)
        tensors["objective.graph.coords"] = tensors["objective.graph.coords"] + 1
        return tensors
    tensors, meta = read_checkpoint(path)
    header = {"format": ck.FORMAT_NAME, "format_version": str(ck.FORMAT_VERSION),
              ck._META_KEY: json.dumps(meta)}
    save_file(nudge(tensors), str(path), metadata=header)  # the checksum is not updated
    _expect(path, "checksum")


def test_an_unfitted_objective_is_saved_as_unfitted(parts, tmp_path):
    model, prep, _ = parts
    path = tmp_path / "unfitted.safetensors"
    save_checkpoint(path, model, prep, objective=Objective(ObjectiveConfig(graph_weight=1.0)))
    loaded = load_checkpoint(path)
    assert not loaded.objective.fitted and loaded.objective.teacher is None
    assert not any(k.startswith("objective.") for k in read_checkpoint(path)[0])


def _as_format_1(meta, old_model_fields):
    """Rewrite format-2 metadata the way format 1 stored it: loss settings in the model config."""
    meta["format_version"] = 1
    objective = meta.pop("objective")["config"]
    meta["model_config"] = {"name": "graph", **meta["model_config"], **objective,
                            "reconstruction_weighting": "uniform", "balance_min_variance": 0.01,
                            "balance_max_directions": 8, "balance_max_gain": 100.0,
                            "lambda_corr": 0.0, **old_model_fields}
    train = meta["train_config"]
    train.pop("objective")
    train.update(preset="graph", lambda_act=None, lambda_sim=None, lambda_div=0.5,
                 model=meta["model_config"])


def test_a_format_1_checkpoint_is_migrated(saved):
    _rewrite(saved, edit_meta=lambda m: _as_format_1(m, {"graph_weight": 1.0}))
    loaded = load_checkpoint(saved)
    assert loaded.preset == "regions"
    assert loaded.objective.config.graph_weight == 1.0 and not loaded.objective.fitted
    assert loaded.train_config.objective_config().lambda_div == 0.5  # the override kept
    assert loaded.train_config.model_config() == loaded.model.config


@pytest.mark.parametrize("fields, what", [
    ({"reconstruction_weighting": "pca_balanced", "name": "balanced"}, "'balanced'"),
    ({"output_prior": "mean_and_level", "name": "levelled"}, "'levelled'"),
])
def test_a_format_1_checkpoint_of_a_dropped_research_preset_is_refused_by_name(saved, fields,
                                                                               what):
    _rewrite(saved, edit_meta=lambda m: _as_format_1(m, fields))
    err = _expect(saved, "research preset")
    assert what in str(err) and "regions" in str(err)


# -- checkpoints that cannot lie: the checksum covers the metadata, a schema checks it ---------

def _set(*keys, value):
    """An edit that sets ``meta[k0][k1]...`` to ``value``."""
    def edit(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _stats(**changes):
    return lambda m: m["preprocessing"]["stats"].update(changes)


@pytest.mark.parametrize("edit, field", [
    (_stats(hi=0.5, lo=0.5), "preprocessing.stats.hi"),  # hi = lo: 100 % NaN embeddings
    (_stats(hi=0.1, lo=0.5), "preprocessing.stats.hi"),
    (_stats(lo=float("nan")), "preprocessing.stats.lo"),
    (_stats(hi=float("inf")), "preprocessing.stats.hi"),
    (_stats(hi=1e308, lo=-1e308), "preprocessing.stats.hi"),
    (_stats(lo="0"), "preprocessing.stats.lo"),
    (_set("preprocessing", "stats", value=None), "preprocessing.stats"),
    (_stats(bad_pixels=[[40, 1]]), "preprocessing.stats.bad_pixels[0]"),
    (_stats(bad_pixels="none"), "preprocessing.stats.bad_pixels"),
    (_stats(input_detector_shape=[32]), "preprocessing.stats.input_detector_shape"),
    (_stats(scale=2.0), "preprocessing.stats"),
    (_set("preprocessing", "config", value=[]), "preprocessing.config"),
    (_set("preprocessing", "config", "scaling", value="cube"), "preprocessing.config"),
    (_set("history", value="lots of epochs"), "history"),
    (_set("history", value=["epoch 1"]), "history[0]"),
    (_set("history", value=[{"epoch": 1, "train": "low"}]), "history[0].train"),
    (_set("history", value=[{"epoch": 1, "train": {"total": "0.5"}}]), "history[0].train.total"),
    (_set("input_shape", value=[16, 16]), "input_shape[0]"),
    (_set("input_shape", value=[32, 5000]), "input_shape[1]"),
    (_set("input_shape", value=[32, 32, 1]), "input_shape"),
    (_set("input_shape", value="32x32"), "input_shape"),
    (_set("input_shape", value=[32.0, 32]), "input_shape[0]"),
    (_set("model_config", value=None), "model_config"),
    (_set("objective", value=[]), "objective"),
    (_set("objective", "fitted", value="yes"), "objective.fitted"),
    (_set("train_config", value="seed"), "train_config"),
    (_set("train_config", "epochs", value="many"), "train_config"),
    (_set("epoch", value=-1), "epoch"),
    (_set("epoch", value=True), "epoch"),
    (_set("global_step", value=None), "global_step"),
    (_set("parameters", value=1_000), "parameters"),
    (_set("optimizer", value="adam"), "optimizer"),
    (_set("optimizer", "param_groups", value=[]), "optimizer.param_groups"),
    (_set("optimizer", "state", "0", "exp_avg", value={"tensor": "model.x", "value": 1}),
     "optimizer.state['0'].exp_avg"),
    (_set("optimizer", "state", "999999", value={}), "optimizer.state['999999']"),
    (_set("scheduler", value=[1]), "scheduler"),
    (_set("extra", value="note"), "extra"),
    (_set("preset", value=3), "preset"),
])
def test_metadata_that_fails_the_schema_is_refused_naming_the_field(saved, edit, field):
    _rewrite(saved, edit_meta=edit)  # with a valid checksum: a writer that lied
    err = _expect(saved, "checkpoint metadata")
    assert f"{field}:" in str(err), str(err)


def test_the_metadata_is_checked_before_anything_is_built_or_allocated(saved, monkeypatch):
    """A tampered input shape once made the loader allocate a 160 GB output prior."""
    import tracemalloc

    _rewrite(saved, edit_meta=_set("input_shape", value=[200_000, 200_000]))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the metadata was checked")

    monkeypatch.setattr(ck, "Autoencoder", no_model)
    monkeypatch.setattr(ck, "Objective", no_model)
    tracemalloc.start()
    try:
        err = _expect(saved, "input_shape")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "[32, 4096]" in str(err)
    assert peak < 20 * 1024**2  # the header only: no tensor was read either


@pytest.mark.parametrize("key, value", [
    ("model.encoder.embedding.linear.weight", float("nan")),
    ("model.decoder.linear.bias", float("inf")),
    ("optim.0.exp_avg", float("-inf")),
])
def test_weights_edited_to_nan_or_inf_are_refused(saved, key, value):
    def poison(tensors):
        tensors = dict(tensors)
        t = tensors[key].clone()
        t.view(-1)[:3] = value
        tensors[key] = t
        return tensors

    _rewrite(saved, edit_tensors=poison)  # checksums updated: only the values are wrong
    err = _expect(saved, "NaN or infinite")
    assert key in str(err) and "3 of" in str(err)


@pytest.mark.parametrize("edit", [
    _stats(hi=2.0),  # plausible values: only the checksum can tell
    _set("epoch", value=5),
    _set("extra", value={"note": "edited"}),
    _set("train_config", "lr", value=0.5),
    _set("created", value="1999-01-01T00:00:00"),
])
def test_metadata_changed_under_the_old_checksum_is_refused(saved, edit):
    _rewrite(saved, edit_meta=edit, reseal=False)
    _expect(saved, "checksum does not match")


def test_the_checksum_covers_the_tensors_too(saved):
    """Tensors edited and the old tensor-only digest put in its place: refused in format 3."""
    def nudge(tensors):
        tensors = dict(tensors)
        tensors["model.decoder.linear.bias"] = tensors["model.decoder.linear.bias"] + 1
        return tensors

    _rewrite(saved, edit_tensors=nudge, reseal=False)  # sha256 = the new tensors' digest
    _expect(saved, "checksum does not match")


def test_a_checkpoint_without_a_checksum_is_refused(saved):
    _rewrite(saved, edit_meta=lambda m: m.pop("sha256"), reseal=False)
    _expect(saved, "checksum does not match")


def test_a_format_2_checkpoint_still_loads(parts, saved):
    """Format 2 (what this package wrote before): the tensor checksum only, no metadata one."""
    model, prep, opt = parts
    _rewrite(saved, edit_meta=_set("format_version", value=2))
    tensors, meta = read_checkpoint(saved)
    assert meta["format_version"] == 2 and meta["sha256"] == ck._tensor_digest(tensors)
    loaded = load_checkpoint(saved)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.preprocessor.to_dict() == prep.to_dict()
    assert (loaded.epoch, loaded.global_step, loaded.extra) == (1, 7, {"note": "hi"})
    assert loaded.optimizer_state is not None


def test_a_format_2_checkpoint_still_gets_every_other_check(saved):
    _rewrite(saved, edit_meta=_set("format_version", value=2))
    good = saved.read_bytes()
    _rewrite(saved, edit_meta=_stats(hi=0.0, lo=0.0))
    _expect(saved, "preprocessing.stats.hi")
    data = bytearray(good)
    data[-100] ^= 0x01
    saved.write_bytes(bytes(data))
    _expect(saved, "tensor checksum")


def test_unexpected_tensors_are_refused(saved):
    _rewrite(saved, edit_tensors=lambda t: {**t, "payload": torch.zeros(4)})
    _expect(saved, "unexpected tensor 'payload'")


def test_an_optimizer_state_that_does_not_fit_the_model_is_refused(saved):
    def shrink(tensors):
        return {**tensors, "optim.0.exp_avg": torch.zeros(3)}

    _rewrite(saved, edit_tensors=shrink)
    _expect(saved, r"optimizer.state\['0'\].exp_avg")


def test_a_checkpoint_that_would_not_load_is_never_written(parts, saved, tiny_dataset):
    from napari_4dstem_autoencoder.data.preprocess import PreprocessStats

    model, prep, _ = parts
    before = saved.read_bytes()
    flat = Preprocessor(prep.config, PreprocessStats(lo=1.0, hi=1.0))
    with pytest.raises(CheckpointError, match="preprocessing.stats.hi") as info:
        save_checkpoint(saved, model, flat)
    assert str(saved) in str(info.value) and "refusing to write" in str(info.value)
    broken = Autoencoder(out_shape=(32, 32), config=model.config)
    with torch.no_grad():
        broken.decoder.linear.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="decoder.linear.weight"):
        save_checkpoint(saved, broken, prep)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


def test_a_history_with_a_non_finite_loss_is_a_true_record_and_loads(parts, tmp_path):
    model, prep, _ = parts
    path = tmp_path / "nan-history.safetensors"
    history = [{"epoch": 1, "train": {"total": float("nan")}, "val": {}, "lr": 1e-3}]
    save_checkpoint(path, model, prep, history=history, epoch=1)
    loaded = load_checkpoint(path)
    assert loaded.history[0]["train"]["total"] != loaded.history[0]["train"]["total"]  # NaN

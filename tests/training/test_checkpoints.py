import json
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

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
    real_fdopen = os.fdopen
    monkeypatch.setattr(ck.os, "fdopen", lambda fd, *a, **k: opened.append(fd) or real_fdopen(fd, *a, **k))
    inode = saved.stat().st_ino
    save_checkpoint(saved, model, prep)
    assert opened and saved.stat().st_ino != inode  # a new file was renamed into place
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


def _rewrite(path, edit_meta=None, edit_tensors=None):
    tensors, meta = read_checkpoint(path)
    if edit_tensors:
        tensors = edit_tensors(tensors)
        meta["sha256"] = ck._tensor_digest(tensors)
    if edit_meta:
        edit_meta(meta)
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

"""Model dock: a model is compatible with a scan only when the detector size *and* the
intensity range fit (a model trained on counts, shown fractions of the beam, would see black
patterns), with a clear warning; the summary uses a microscopist's words."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.data.readers import open_dataset
from napari_4dstem_autoencoder.gui import hooks
from napari_4dstem_autoencoder.gui.keys import PLUGIN
from napari_4dstem_autoencoder.gui.model_widget import (
    IntensityCheck,
    check_intensity,
    describe_model,
)
from napari_4dstem_autoencoder.gui.state import get_state


@pytest.fixture(scope="module")
def counts_checkpoint(tmp_path_factory, sim_three_region_path) -> str:
    """An untrained model whose preprocessing was fitted on the simulation's counts."""
    import torch

    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.model.config import ModelConfig
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    with open_dataset(sim_three_region_path, dataset="/data_counts") as ds:
        prep = Preprocessor.fit(ds, PreprocessConfig(detector_bin=2), max_patterns=64)
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32),
                        config=ModelConfig(pool_schedule="to4", decoder_canvas="target")).eval()
    path = tmp_path_factory.mktemp("ckpt") / "counts.safetensors"
    save_checkpoint(path, model, prep, input_shape=(32, 32))
    return str(path)


@pytest.mark.parametrize("scaling", ["log", "sqrt", "none"])
def test_counts_fit_a_counts_model_and_fractions_do_not(sim_three_region_path, scaling):
    with open_dataset(sim_three_region_path, dataset="/data_counts") as counts, \
            open_dataset(sim_three_region_path, dataset="/data") as fractions:
        prep = Preprocessor.fit(counts, PreprocessConfig(scaling=scaling), max_patterns=64)
        model = SimpleNamespace(preprocessor=prep)
        same, dim = check_intensity(model, counts), check_intensity(model, fractions)
        fraction_model = SimpleNamespace(
            preprocessor=Preprocessor.fit(fractions, PreprocessConfig(scaling=scaling),
                                          max_patterns=64))
        bright = check_intensity(fraction_model, counts)
    assert same.compatible and same.ratio == pytest.approx(1.0, abs=0.1)
    assert not dim.compatible and dim.ratio < 0.05
    assert "nearly black" in dim.describe(scaling)
    assert not bright.compatible and bright.ratio > 20
    assert "saturate" in bright.describe(scaling)


def test_a_different_detector_is_not_checked_for_intensity(sim_three_region_path):
    prep = Preprocessor(PreprocessConfig())
    with open_dataset(sim_three_region_path, dataset="/data") as ds:
        assert check_intensity(SimpleNamespace(preprocessor=prep), ds) is None  # not fitted


def test_the_summary_speaks_plainly(counts_checkpoint, sim_three_region_path):
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    loaded = load_checkpoint(counts_checkpoint)
    with open_dataset(sim_three_region_path, dataset="/data") as ds:
        dim = check_intensity(loaded, ds)
        text = describe_model(loaded, ds, dim)
        pending = describe_model(loaded, ds)
    for internal in ("pooling:", "decoder canvas:", "to4", "target", "normalise True"):
        assert internal not in text
    assert "the encoder shrinks each pattern step by step to 4×4" in text
    assert "the decoder draws at the pattern's own size" in text
    assert "32 latent values per probe position" in text
    # a run stopped inside its first epoch still says how much it trained
    assert f"trained for 0 full epochs ({loaded.global_step:,} optimiser step" in text
    assert "logarithmic (log 1+x), then normalised to 0–1" in text
    assert "detector binned 2×2" in text
    assert "— NOT compatible: the detector size fits, the intensity does not" in text
    assert "checking the intensity" in pending and "NOT" not in pending
    assert isinstance(dim, IntensityCheck)


def test_the_dock_warns_when_the_intensity_does_not_fit(
        make_napari_viewer, qtbot, open_dock, notifications, counts_checkpoint,
        sim_three_region_path, monkeypatch):
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", lambda path, candidates: "/data")
    viewer = make_napari_viewer()
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)  # fractions of the beam
    model = open_dock(viewer, "Model")
    state = get_state(viewer)
    with qtbot.waitSignal(model.intensity_checked, timeout=30_000) as result:
        state.set_model(load_checkpoint(counts_checkpoint))
    check = result.args[0]
    assert isinstance(check, IntensityCheck) and not check.compatible
    summary = model.summary.toPlainText()
    assert "NOT compatible" in summary and "nearly black" in summary
    warnings = [m for m in notifications.messages if "NOT compatible with the loaded model" in m]
    assert len(warnings) == 1 and warnings[0].startswith("abtem_three_region.h5")
    assert "intensity does not fit" in warnings[0]
    assert model.progress.format() == "%v of %m probe positions embedded"

    # the same model on the counts it was trained on: compatible, no further warning
    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", lambda path, candidates: "/data_counts")
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    counts_layer = viewer.layers["abtem_three_region.h5 [data_counts] virtual BF"]
    with qtbot.waitSignal(model.intensity_checked, timeout=30_000) as result:
        state.set_dataset(counts_layer.metadata["stem4d_dataset"], counts_layer.name)
    assert result.args[0].compatible
    assert "— compatible (detector size and intensity)" in model.summary.toPlainText()
    assert len([m for m in notifications.messages if "NOT compatible with the" in m]) == 1

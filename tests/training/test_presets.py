"""The presets a user chooses between: each keeps the documented parameter count, the seed
preset stays the document, and each says when to pick it."""

from __future__ import annotations

import pytest
import torch

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig
from napari_4dstem_autoencoder.model.summary import macs_per_pattern
from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.training.presets import (
    DEFAULT_PRESET,
    PRESETS,
    get_preset,
    objective_with,
)

SEED_PARAMETERS = 3_914_404
#: documented parameter count of every preset (docs/model.md); a preset that changes it
#: needs its own entry here and evidence in the docs
DOCUMENTED_PARAMETERS = {name: SEED_PARAMETERS for name in PRESETS}


def test_at_most_four_presets_each_named_by_its_key_and_explained():
    assert len(PRESETS) <= 4 and {"seed", DEFAULT_PRESET} <= set(PRESETS)
    assert set(DOCUMENTED_PARAMETERS) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert len(preset.summary) > 40  # the tooltip says when to pick it
        assert ModelConfig.from_dict(preset.model.to_dict()) == preset.model
        assert ObjectiveConfig.from_dict(preset.objective.to_dict()) == preset.objective
    assert PRESETS[DEFAULT_PRESET].summary.startswith("Default.")


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("size", [(64, 64), (128, 96)])
def test_every_preset_keeps_its_documented_parameter_count(name, size):
    model = Autoencoder(out_shape=size, config=get_preset(name).model)
    assert model.num_parameters() == DOCUMENTED_PARAMETERS[name]


def test_seed_preset_is_the_document():
    seed = get_preset("seed")
    assert seed.model == ModelConfig() and seed.objective == ObjectiveConfig()
    assert (seed.model.pool_schedule, seed.model.decoder_canvas) == ("quarter", "fixed256")
    assert seed.model.output_prior == "none"
    obj = seed.objective
    assert obj.contrastive_margin == 1.0
    assert (obj.divergence_form, obj.divergence_eps) == ("inverse_variance", 1e-8)
    assert (obj.lambda_act, obj.lambda_sim, obj.lambda_div) == (1e-4, 5e-5, 2e-4)
    assert obj.graph_weight == 0


def test_default_preset_fixes_the_latent_collapse():
    cfg = get_preset(DEFAULT_PRESET).model
    assert cfg.pool_schedule == "to4"
    # at 64x64 the seed pools to 1x1 (one number copied 16 times); the default ends at 4x4
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(64, 64), config=cfg).eval()
    x = torch.rand(2, 1, 64, 64)
    encoder = model.encoder
    with torch.no_grad():
        h = encoder.conv_pre(encoder.conv_input(x))
        for block, size in zip(encoder.res_blocks, encoder.pool_sizes((64, 64))):
            h = block(h, size)
    assert tuple(h.shape[-2:]) == (4, 4)


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"seed"}))
def test_every_other_preset_fixes_the_seed_flaws(name):
    preset = PRESETS[name]
    assert preset.model.pool_schedule == "to4" and preset.model.decoder_canvas != "fixed256"
    assert preset.model.output_prior == "mean_pattern"
    assert preset.objective.divergence_form != "inverse_variance"


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"seed"}))
def test_every_other_preset_runs_its_wide_layers_at_half_resolution(name):
    """Issue 17: pooled stem + half canvas, under a third of the seed-fix network's MACs."""
    cfg = PRESETS[name].model
    assert (cfg.encoder_stem, cfg.decoder_canvas) == ("pool2", "half_target")
    full = cfg.replace(encoder_stem="full", decoder_canvas="target")
    new = macs_per_pattern(Autoencoder(out_shape=(64, 64), config=cfg), (64, 64))["total"]
    old = macs_per_pattern(Autoencoder(out_shape=(64, 64), config=full), (64, 64))["total"]
    assert new * 3 < old


def test_presets_differ_only_where_their_summaries_say():
    regions, continuous = get_preset("regions"), get_preset("continuous")
    assert regions.model == continuous.model
    assert regions.objective == continuous.objective.replace(graph_weight=1.0,
                                                             graph_features="likelihood")
    assert Objective(regions.objective).names[-1] == "graph"
    assert "graph" not in Objective(continuous.objective).names


def test_non_seed_presets_keep_the_loss_on_the_scale_of_the_mse():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    for name in sorted(set(PRESETS) - {"seed"}):
        preset = get_preset(name)
        model = Autoencoder(out_shape=(32, 32), config=preset.model)
        x_hat, z = model.encode_decode(x)
        objective = Objective(preset.objective.replace(graph_weight=0.0))
        losses = objective(x, x_hat, z)
        extra = losses["total"] - losses["mse"]
        assert 0 <= extra.item() < losses["mse"].item()


def test_objective_with_overrides_only_the_weights_given():
    base = get_preset("seed").objective
    assert objective_with("seed") == base
    assert objective_with("seed", lambda_div=0.0, lambda_act=None) == base.replace(lambda_div=0.0)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        objective_with("fast")

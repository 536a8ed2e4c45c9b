"""The parameter-free compute savers: the pooled encoder stem and the half-size decoder canvas.

Both keep the documented 3,914,404 parameters; the half canvas adds the mean-pattern prior
at full resolution; configs saved before ``encoder_stem`` existed load to the old network.
"""

import pytest
import torch

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig
from napari_4dstem_autoencoder.model.summary import macs_per_pattern, profile

SEED_PARAMS = 3_914_404
#: the default before these options (to4 pooling, target canvas, mean-pattern prior)
PREVIOUS = ModelConfig(pool_schedule="to4", decoder_canvas="target", output_prior="mean_pattern")
FAST = PREVIOUS.replace(encoder_stem="pool2", decoder_canvas="half_target")
VARIANTS = [FAST, PREVIOUS.replace(encoder_stem="pool2"),
            PREVIOUS.replace(decoder_canvas="half_target"), ModelConfig(encoder_stem="pool2")]
SHAPES = [(32, 32), (48, 48), (64, 64), (100, 100), (128, 128), (48, 100), (97, 33)]


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: f"{c.encoder_stem}-{c.decoder_canvas}")
def test_new_options_keep_the_parameter_count(config):
    for shape in ((64, 64), (128, 96)):
        assert Autoencoder(out_shape=shape, config=config).num_parameters() == SEED_PARAMS


@pytest.mark.parametrize("shape", SHAPES)
def test_output_has_the_input_size_and_the_latent_is_4x4(shape):
    torch.manual_seed(0)
    model = Autoencoder(out_shape=shape, config=FAST).eval()
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        x_hat, z = model.encode_decode(x)
    assert x_hat.shape == x.shape and z.shape == (2, 32)
    rows = {r.name: r.output_shape for r in profile(model, shape)}
    # the 128-channel layers start at half the input; the encoder still ends at 4x4
    assert rows["encoder.conv_pre.conv"][1:] == (shape[0] // 2, shape[1] // 2)
    assert rows["encoder.conv_final.conv"][1:] == (4, 4)
    # the decoder's last 128-channel block renders half the target
    half = ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    assert rows["decoder.up_blocks.2.identity_block.conv"][1:] == half


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config=FAST).train()
    x_hat, z = model.encode_decode(torch.rand(4, 1, 32, 32))
    (x_hat.mean() + z.mean()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("shape", [(64, 64), (48, 100)])
def test_prior_is_added_at_full_resolution(shape):
    """With a silent final conv the decoder outputs exactly the mean pattern, pixel for pixel,
    at the full target size: the prior is not rendered at the half canvas."""
    torch.manual_seed(0)
    model = Autoencoder(out_shape=shape, config=FAST).eval()
    g = torch.Generator().manual_seed(1)
    mean = 0.02 + 0.96 * torch.rand(*shape, generator=g)  # pixel-level detail, in (0, 1)
    model.set_output_prior(mean)
    with torch.no_grad():
        model.decoder.conv_final.weight.zero_()
        model.decoder.conv_final.bias.zero_()
        out = model.decode(torch.rand(2, 32))
    assert out.shape == (2, 1, *shape)
    torch.testing.assert_close(out[0, 0], mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 0], mean, atol=1e-5, rtol=0)


def test_half_canvas_runs_the_final_conv_at_the_target_size():
    """The up blocks end at half the target; their features are resized bilinearly and the
    final conv (then the sigmoid) runs at the target size."""
    torch.manual_seed(0)
    config = ModelConfig(pool_schedule="to4", decoder_canvas="half_target")
    model = Autoencoder(out_shape=(64, 64), config=config).eval()
    z = torch.rand(1, 32)
    dec = model.decoder
    with torch.no_grad():
        x = dec.conv_initial(dec.linear(z).view(-1, 128, 4, 4))
        for block, size in zip(dec.up_blocks, dec.stage_sizes((64, 64))):
            x = block(x, size)
        assert tuple(x.shape[-2:]) == (32, 32)
        up = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear",
                                             align_corners=False)
        torch.testing.assert_close(model.decode(z), torch.sigmoid(dec.conv_final(up)))
    rows = {r.name: r.output_shape for r in profile(model, (64, 64))}
    assert rows["decoder.conv_final"] == (1, 64, 64)


def test_old_config_dicts_load_to_the_old_network():
    """A model config saved before ``encoder_stem`` existed has no such key."""
    old = {"latent_dim": 32, "pool_schedule": "to4", "decoder_canvas": "target",
           "output_prior": "mean_pattern"}
    cfg = ModelConfig.from_dict(old)
    assert cfg == PREVIOUS and cfg.encoder_stem == "full"
    torch.manual_seed(0)
    a = Autoencoder(out_shape=(32, 32), config=cfg).eval()
    torch.manual_seed(0)
    b = Autoencoder(out_shape=(32, 32), config=PREVIOUS).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    assert {r.name: r.output_shape for r in profile(a, (32, 32))}[
        "encoder.conv_pre.conv"] == (128, 32, 32)
    # and the new options round-trip
    assert ModelConfig.from_dict(FAST.to_dict()) == FAST


def test_unknown_values_are_rejected():
    with pytest.raises(ValueError, match="unknown encoder_stem"):
        ModelConfig(encoder_stem="pool4")
    with pytest.raises(ValueError, match="unknown decoder_canvas"):
        ModelConfig(decoder_canvas="quarter")


def test_fast_config_needs_under_a_third_of_the_compute_at_64():
    """Deterministic MAC counts (forward pass, one 64x64 pattern)."""
    new = macs_per_pattern(Autoencoder(out_shape=(64, 64), config=FAST), (64, 64))
    old = macs_per_pattern(Autoencoder(out_shape=(64, 64), config=PREVIOUS), (64, 64))
    assert new["total"] * 3 < old["total"]
    assert new["encoder"] * 3 < old["encoder"] and new["decoder"] * 3 < old["decoder"]

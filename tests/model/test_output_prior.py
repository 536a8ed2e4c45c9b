"""The mean-pattern output prior: a buffer, not a parameter, that the decoder starts from."""

import pytest
import torch

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import get_preset


def zero_final_conv(model: Autoencoder) -> None:
    with torch.no_grad():
        model.decoder.conv_final.weight.zero_()
        model.decoder.conv_final.bias.zero_()


def mean_pattern(h=32, w=32):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return 0.05 + 0.9 * yy * xx  # inside (0, 1), not constant


def test_prior_is_a_buffer_and_keeps_the_parameter_count():
    model = Autoencoder(out_shape=(32, 32), config="prior")
    assert model.num_parameters() == 3_914_404
    assert "decoder.prior_logit" in model.state_dict()
    assert "decoder.prior_logit" not in dict(model.named_parameters())
    assert "decoder.prior_logit" not in Autoencoder(out_shape=(32, 32), config="decorrelated").state_dict()


def test_with_a_silent_final_conv_the_decoder_outputs_the_mean_pattern():
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config="prior").eval()
    m = mean_pattern()
    model.set_output_prior(m)
    zero_final_conv(model)
    out = model.decode(torch.rand(3, 32))
    assert out.shape == (3, 1, 32, 32)
    torch.testing.assert_close(out[1, 0], m, atol=1e-5, rtol=0)
    # without the prior the same decoder gives sigmoid(0) = 0.5 everywhere
    model.decoder.prior_logit.zero_()
    torch.testing.assert_close(model.decode(torch.rand(1, 32))[0, 0], torch.full((32, 32), 0.5))


def test_prior_follows_other_output_sizes():
    model = Autoencoder(out_shape=(32, 32), config="prior").eval()
    model.set_output_prior(mean_pattern())
    zero_final_conv(model)
    out = model.decode(torch.rand(1, 32), out_shape=(48, 40))
    assert out.shape == (1, 1, 48, 40)
    # a smooth ramp resized stays a ramp: corners keep their order of magnitude
    assert out[0, 0, 0, 0] < 0.1 and out[0, 0, -1, -1] > 0.85


def test_prior_is_clipped_and_checked():
    model = Autoencoder(out_shape=(32, 32), config="prior")
    model.set_output_prior(torch.zeros(32, 32))  # log(0) would be -inf
    assert bool(torch.isfinite(model.decoder.prior_logit).all())
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.set_output_prior(torch.full((32, 32), float("nan")))
    with pytest.raises(ValueError, match="without an output prior"):
        Autoencoder(out_shape=(32, 32), config="decorrelated").set_output_prior(mean_pattern())


def test_unknown_output_prior_is_rejected():
    with pytest.raises(ValueError, match="output_prior"):
        get_preset("prior").replace(output_prior="median")


# -- the level term (output_prior="mean_and_level", the `levelled` preset) ------------------

def level_family(n=6, h=32, w=32):
    """Patterns a + t_b * d with mean(d) = 1: each pattern's level is mean(a) + t_b, so the
    least-squares slope of every pixel on the level is exactly d."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    a = 0.3 + 0.2 * yy
    d = 1.0 + 0.8 * (xx - xx.mean())
    t = torch.linspace(-0.15, 0.15, n)
    return a + t[:, None, None] * d, d


def test_level_prior_is_buffers_and_follows_each_input_level():
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config="levelled").eval()
    assert model.num_parameters() == 3_914_404
    state = model.state_dict()
    assert {"decoder.prior_logit", "decoder.level_slope", "decoder.level_mean"} <= set(state)
    assert "decoder.level_slope" not in dict(model.named_parameters())
    patterns, d = level_family()
    model.set_level_prior(patterns)
    torch.testing.assert_close(model.decoder.level_slope[0, 0], d, atol=1e-4, rtol=0)
    torch.testing.assert_close(float(model.decoder.level_mean), float(patterns.mean()), atol=1e-6, rtol=0)
    zero_final_conv(model)
    x = patterns[:, None]
    # a silent decoder reproduces every pattern of the family from its level alone ...
    x_hat, _ = model.encode_decode(x)
    torch.testing.assert_close(x_hat, x, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.decode(model.embed(x), level=model.level_of(x)), x_hat)
    # ... where the mean-pattern prior can only give their mean, and decoding without a
    # level gives the mean pattern too
    plain = Autoencoder(out_shape=(32, 32), config="prior").eval()
    plain.set_output_prior(patterns.mean(dim=0))
    zero_final_conv(plain)
    assert plain.level_of(x) is None
    assert (plain(x) - x).abs().max() > 0.1
    torch.testing.assert_close(model.decode(torch.rand(2, 32))[0, 0], patterns.mean(dim=0),
                               atol=1e-4, rtol=0)


def test_level_prior_without_spread_is_the_mean_pattern_and_checks_its_input():
    model = Autoencoder(out_shape=(32, 32), config="levelled")
    same = mean_pattern().expand(4, 32, 32)
    model.set_level_prior(same)
    assert float(model.decoder.level_slope.abs().max()) == 0.0
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.set_level_prior(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        model.set_level_prior(torch.rand(32, 32))
    with pytest.raises(ValueError, match="without a level prior"):
        Autoencoder(out_shape=(32, 32), config="prior").set_level_prior(same)

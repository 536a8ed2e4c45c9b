"""The mean-pattern output prior: a buffer, not a parameter, that the decoder starts from."""

import pytest
import torch

from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig

#: an architecture with the mean-pattern prior (the regions and continuous presets have it)
PRIOR = ModelConfig(pool_schedule="to4", decoder_canvas="target", output_prior="mean_pattern")


def zero_final_conv(model: Autoencoder) -> None:
    with torch.no_grad():
        model.decoder.conv_final.weight.zero_()
        model.decoder.conv_final.bias.zero_()


def mean_pattern(h=32, w=32):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return 0.05 + 0.9 * yy * xx  # inside (0, 1), not constant


def test_prior_is_a_buffer_and_keeps_the_parameter_count():
    model = Autoencoder(out_shape=(32, 32), config=PRIOR)
    assert model.num_parameters() == 3_914_404
    assert "decoder.prior_logit" in model.state_dict()
    assert "decoder.prior_logit" not in dict(model.named_parameters())
    assert "decoder.prior_logit" not in Autoencoder(out_shape=(32, 32), config=ModelConfig()).state_dict()


def test_with_a_silent_final_conv_the_decoder_outputs_the_mean_pattern():
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config=PRIOR).eval()
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
    model = Autoencoder(out_shape=(32, 32), config=PRIOR).eval()
    model.set_output_prior(mean_pattern())
    zero_final_conv(model)
    out = model.decode(torch.rand(1, 32), out_shape=(48, 40))
    assert out.shape == (1, 1, 48, 40)
    # a smooth ramp resized stays a ramp: corners keep their order of magnitude
    assert out[0, 0, 0, 0] < 0.1 and out[0, 0, -1, -1] > 0.85


def test_prior_is_clipped_and_checked():
    model = Autoencoder(out_shape=(32, 32), config=PRIOR)
    model.set_output_prior(torch.zeros(32, 32))  # log(0) would be -inf
    assert bool(torch.isfinite(model.decoder.prior_logit).all())
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.set_output_prior(torch.full((32, 32), float("nan")))
    with pytest.raises(ValueError, match="without an output prior"):
        Autoencoder(out_shape=(32, 32), config=ModelConfig()).set_output_prior(mean_pattern())


def test_unknown_output_prior_is_rejected():
    with pytest.raises(ValueError, match="output_prior"):
        PRIOR.replace(output_prior="median")

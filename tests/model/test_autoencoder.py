"""The seed network exactly as documented: parameters, shapes, the six validation checks."""

import numpy as np
import pytest
import torch

from napari_4dstem_autoencoder.model import Autoencoder, ModelConfig
from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig
from napari_4dstem_autoencoder.model.blocks import count_parameters
from napari_4dstem_autoencoder.model.summary import profile

SEED_PARAMS = 3_914_404


def gaussian_patterns(size, n=2, seed=0):
    """Smooth, non-constant test patterns in [0, 1]."""
    h, w = size if isinstance(size, tuple) else (size, size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
        sig = rng.uniform(0.05, 0.15) * min(h, w)
        out.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2)))
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return Autoencoder(latent_dim=32, out_shape=(64, 64)).eval()


def test_parameter_split_matches_design(seed_model):
    assert count_parameters(seed_model) == SEED_PARAMS
    assert count_parameters(seed_model.encoder) == 1_924_003
    assert count_parameters(seed_model.decoder) == 1_990_401


@pytest.mark.parametrize("shape", [(32, 32), (64, 64), (128, 128), (256, 256), (48, 96), (96, 40)])
def test_parameter_count_and_shapes_for_every_input_size(shape):
    """Shape table of the document: latent (B, 32), output (B, 1, H, W); 3,914,404 params."""
    model = Autoencoder(out_shape=shape).eval()
    assert model.num_parameters() == SEED_PARAMS
    x = gaussian_patterns(shape, n=1)
    with torch.no_grad():
        x_hat, z = model.encode_decode(x)
    assert z.shape == (1, 32)
    assert x_hat.shape == (1, 1, *shape)


def test_512_input_runs_with_same_parameters():
    model = Autoencoder(out_shape=(512, 512)).eval()
    with torch.no_grad():
        z = model.embed(gaussian_patterns(512, n=1))
        out = model.decode(z)
    assert model.num_parameters() == SEED_PARAMS
    assert z.shape == (1, 32) and out.shape == (1, 1, 512, 512)


def test_encoder_output_consistency_across_sizes(seed_model):
    """Same shape for every size, and deterministic in eval mode."""
    for size in (32, 64, 128):
        x = gaussian_patterns(size)
        with torch.no_grad():
            a, b = seed_model.embed(x), seed_model.embed(x)
        assert a.shape == (2, 32)
        assert torch.equal(a, b)


def test_decoder_output_size_matching(seed_model):
    z = torch.rand(1, 32)
    with torch.no_grad():
        for shape in ((32, 32), (100, 60), (256, 256)):
            out = seed_model.decode(z, shape)
            assert out.shape == (1, 1, *shape)
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # sigmoid output


def test_reconstruction_consistency(seed_model):
    x = gaussian_patterns(64, n=1)
    with torch.no_grad():
        a = seed_model(x)
        b, z = seed_model.encode_decode(x)
        c = seed_model.decode(seed_model.embed(x), (64, 64))
    assert torch.equal(a, b) and torch.allclose(a, c)


def test_embeddings_are_non_negative(seed_model):
    with torch.no_grad():
        z = seed_model.embed(torch.rand(8, 1, 64, 64))
    assert float(z.min()) >= 0.0


@pytest.mark.parametrize("size", [64, 256])
def test_gradient_reaches_every_parameter_the_forward_pass_uses(size):
    torch.manual_seed(1)
    model = Autoencoder(out_shape=(size, size)).train()
    x = torch.rand(1, 1, size, size)  # one pattern: BN still sees H*W values per channel
    x_hat, z = model.encode_decode(x)
    Objective()(x, x_hat, z)["total"].backward()
    # "reached" = in the autograd graph: a conv bias right before a training-mode BN has an
    # analytically zero gradient (the BN subtracts it again), so whether its float gradient is
    # exactly 0 depends on the CPU's reduction order (it was on this machine for conv_final)
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    if size == 256:
        assert no_grad == set()
    else:
        # At 64x64 the seed encoder is 1x1 after block 3, so conditional BN skips the BN of
        # conv_post and conv_final: those four tensors are not used, everything else is.
        assert no_grad == {
            "encoder.conv_post.bn.weight", "encoder.conv_post.bn.bias",
            "encoder.conv_final.bn.weight", "encoder.conv_final.bn.bias",
        }


def test_parameter_count_is_independent_of_preset_and_out_shape():
    counts = {Autoencoder(out_shape=s, config=p).num_parameters() for s in ((64, 64), (300, 200))
              for p in (ModelConfig(), ModelConfig(pool_schedule="to4", decoder_canvas="target"))}
    assert counts == {SEED_PARAMS}


def test_known_answer_seeded_forward_pass():
    """Pins the network function: a change to any block changes these numbers."""
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(64, 64)).eval()
    yy, xx = np.mgrid[0:64, 0:64]
    x = torch.tensor(np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 50.0), dtype=torch.float32)[None, None]
    x = torch.cat([x, x.flip(-1) * 0.5])
    with torch.no_grad():
        x_hat, z = model.encode_decode(x)
    np.testing.assert_allclose(z[0, :6].numpy(), [0.0, 0.12767996, 0.0, 0.0, 0.0, 0.13638155], atol=2e-5)
    assert z.sum().item() == pytest.approx(3.573010, rel=1e-4)
    assert x_hat.sum().item() == pytest.approx(4080.1248, rel=1e-5)
    assert x_hat[1, 0, 10, 20].item() == pytest.approx(0.49798179, abs=2e-5)


def test_batch_size_one_gives_finite_loss_with_zero_batch_terms():
    """Variance and pairwise similarity are undefined for one sample: both terms are 0, not NaN."""
    model = Autoencoder(out_shape=(64, 64)).train()
    x = torch.rand(1, 1, 64, 64)
    x_hat, z = model.encode_decode(x)
    losses = Objective()(x, x_hat, z)  # the seed objective
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["divergence"].item() == 0.0 and losses["contrastive"].item() == 0.0
    assert losses["total"].item() == pytest.approx(
        losses["mse"].item() + 1e-4 * losses["l1"].item(), rel=1e-6)


def test_loss_components_follow_the_documented_formula():
    x = torch.rand(4, 1, 32, 32)
    x_hat = torch.rand(4, 1, 32, 32)
    z = torch.rand(4, 32) + 0.1
    out = Objective(ObjectiveConfig(lambda_act=0.5, lambda_sim=0.25, lambda_div=0.125))(x, x_hat, z)
    mse = ((x - x_hat) ** 2).mean()
    div = (1.0 / (z.var(dim=0) + 1e-8)).mean()
    assert out["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["l1"].item() == pytest.approx(z.abs().mean().item(), rel=1e-6)
    assert out["divergence"].item() == pytest.approx(div.item(), rel=1e-5)
    # seed margin 1.0: cosine similarity of non-negative vectors never exceeds it
    assert out["contrastive"].item() == 0.0
    expected = mse + 0.5 * z.abs().mean() + 0.125 * div
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_seed_divergence_explodes_on_a_dead_unit():
    """Documented flaw 4: one constant embedding dimension adds 1/eps / 32 to the term."""
    z = torch.rand(8, 32)
    z[:, 5] = 0.0
    assert Objective()(torch.zeros(8, 1, 32, 32), torch.zeros(8, 1, 32, 32), z)[
        "divergence"].item() > 1e8 / 32 * 0.99


def test_seed_latent_collapses_below_256(seed_model):
    """Documented flaw 1: at 64x64 the 16 features before the embedding are one number copied."""
    captured = {}
    handle = seed_model.encoder.embedding.register_forward_hook(
        lambda m, inp, out: captured.setdefault("features", inp[0]))
    with torch.no_grad():
        seed_model.embed(gaussian_patterns(64))
    handle.remove()
    feats = captured["features"]
    assert feats.shape == (2, 16)
    assert torch.allclose(feats, feats[:, :1].expand_as(feats))


def test_seed_decoder_renders_a_256_canvas_for_any_target(seed_model):
    rows = {r.name: r for r in profile(seed_model, (1, 64, 64))}
    assert rows["decoder.conv_final"].output_shape == (1, 256, 256)


@pytest.mark.parametrize("bad", [torch.rand(1, 64, 64), torch.rand(2, 3, 64, 64), torch.rand(64, 64)])
def test_wrong_shape_is_a_clear_error(seed_model, bad):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        seed_model(bad)


def test_too_small_input_is_a_clear_error(seed_model):
    with pytest.raises(ValueError, match="at least 32x32"):
        seed_model(torch.rand(1, 1, 16, 64))


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = ModelConfig(pool_schedule="to4", output_prior="mean_pattern")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "mystery": 1})
    with pytest.raises(ValueError, match="unknown pool_schedule"):
        ModelConfig(pool_schedule="half")

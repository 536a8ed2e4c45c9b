"""summary.show, MAC counts, metrics and the figures."""

import numpy as np
import pytest
import torch
from skimage.io import imread

from napari_4dstem_autoencoder.model import Autoencoder
from napari_4dstem_autoencoder.model.summary import (
    calculate_metrics,
    macs_per_pattern,
    save_comparison_images,
    save_stem_visualization,
    show,
)


def test_show_lists_layers_and_totals():
    lines = []
    rows = show(Autoencoder(), (1, 64, 64), print_fn=lines.append)
    text = "\n".join(lines)
    assert "trainable parameters: 3,914,404" in text
    assert rows[0].name == "encoder.conv_input.conv" and rows[0].output_shape == (64, 64, 64)
    # per-layer parameters of the layers that ran add up to all but the skipped 1x1 BNs
    assert sum(r.parameters for r in rows) == 3_914_404 - 2 * 64 - 2 * 1


def test_macs_follow_the_conv_formula_and_the_fixed_canvas():
    model = Autoencoder()
    m64, m128 = macs_per_pattern(model, (1, 64, 64)), macs_per_pattern(model, (1, 128, 128))
    assert m64["decoder"] == m128["decoder"]  # the seed decoder always renders 256x256
    first_conv = 64 * 64 * 64 * 1 * 9  # output elements x in_channels x 3x3
    assert m64["encoder"] > first_conv
    assert m128["encoder"] > 3.5 * m64["encoder"]  # conv cost scales with pixels
    assert m64["decoder"] / m64["total"] > 0.9  # DESIGN §3 flaw 2: 93 % at 64x64


def test_metrics_have_known_answers():
    a = np.zeros((2, 32, 32))
    b = a + 0.1
    out = calculate_metrics(a, b, data_range=1.0)
    np.testing.assert_allclose(out["mse"], [0.01, 0.01])
    np.testing.assert_allclose(out["psnr"], [20.0, 20.0])
    same = calculate_metrics(torch.rand(3, 1, 32, 32).numpy(), np.zeros((3, 32, 32)) + 0.5)
    assert same["mse"].shape == (3,) and same["mean_ssim"] < 0.5
    ident = calculate_metrics(b, b)
    assert np.all(ident["ssim"] == pytest.approx(1.0)) and np.all(np.isinf(ident["psnr"]))
    with pytest.raises(ValueError, match="shapes differ"):
        calculate_metrics(a, a[:1])


def test_figures_are_written_and_not_blank(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.random((3, 32, 32))
    path = save_comparison_images(raw, raw * 0.9, tmp_path / "cmp.png", titles=["a", "b", "c"])
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 10
    emb = rng.random((10, 12, 32))
    emb[..., 3] = 0
    path2 = save_stem_visualization(emb, rng.random((10, 12)), tmp_path / "maps.png", n_maps=5)
    assert imread(path2).std() > 10
    with pytest.raises(ValueError, match="do not match"):
        save_stem_visualization(emb, np.zeros((3, 3)), tmp_path / "x.png")

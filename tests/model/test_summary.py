"""summary.show and the MAC counts."""

from napari_4dstem_autoencoder.model import Autoencoder
from napari_4dstem_autoencoder.model.summary import macs_per_pattern, show


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

"""``stem-ae``: the train -> info -> embed -> export chain, and clear one-line errors."""

import subprocess
import sys
import types

import numpy as np
import pytest
import tifffile
import torch

from napari_4dstem_autoencoder import cli
from napari_4dstem_autoencoder.inference.export import read_results
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint


def scan(shape=(3, 3, 32, 32), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    qy, qx = np.mgrid[0:shape[2], 0:shape[3]]
    out = np.empty(shape, dtype=np.uint16)
    for i in np.ndindex(*shape[:2]):
        r = 5 + 4 * ((i[0] + i[1]) % 2)
        out[i] = rng.poisson(((qy - 16) ** 2 + (qx - 16) ** 2 < r * r) * 200.0 + 2)
    return out


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Train once (1 epoch, 9 positions, fast preset) and embed; tests read the outputs."""
    d = tmp_path_factory.mktemp("cli")
    data = d / "scan.npy"
    np.save(data, scan())
    ckpt = d / "model.safetensors"
    results = d / "results.h5"
    train_code = cli.main(["train", str(data), "--preset", "continuous", "--epochs", "1",
                           "--batch-size", "4", "--val-fraction", "0.25", "--device", "cpu",
                           "--quiet", "--out", str(ckpt)])
    embed_code = cli.main(["embed", str(data), str(ckpt), "--out", str(results),
                           "--device", "cpu", "--batch-size", "4", "--quiet"])
    return types.SimpleNamespace(dir=d, data=data, ckpt=ckpt, results=results,
                                 codes=(train_code, embed_code))


def test_train_and_embed_write_loadable_outputs(chain):
    assert chain.codes == (0, 0)
    loaded = load_checkpoint(chain.ckpt)
    assert loaded.preset == "continuous" and loaded.epoch == 1
    assert loaded.train_config.batch_size == 4
    res = read_results(chain.results)
    assert res["embeddings"].shape == (3, 3, 32) and res["embeddings"].dtype == np.float32
    assert set(res["error"]) == {"mse", "psnr"} and res["error"]["psnr"].shape == (3, 3)
    assert res["metadata"]["preset"] == "continuous"
    assert res["model_config"] == loaded.model.config.to_dict()
    assert res["preprocessing"] == loaded.preprocessor.to_dict()
    assert res["metadata"]["checkpoint"].endswith("model.safetensors")


def test_info_on_dataset_checkpoint_and_results(chain, capsys):
    code, out, _ = run(["info", chain.data], capsys)
    assert code == 0 and "scan 3x3 positions" in out and "32x32" in out
    code, out, _ = run(["info", chain.ckpt], capsys)
    assert code == 0 and "preset 'continuous'" in out and "3914404 parameters" in out
    assert "1 epochs" in out and "resumable: yes" in out
    code, out, _ = run(["info", chain.results], capsys)
    assert code == 0 and "embeddings (3, 3, 32)" in out


def test_export_writes_tiff_maps(chain, capsys, tmp_path):
    code, out, _ = run(["export", chain.results, "--out-dir", tmp_path / "maps"], capsys)
    assert code == 0
    emb = tifffile.imread(tmp_path / "maps" / "embeddings.tif")
    assert emb.shape == (32, 3, 3)
    np.testing.assert_array_equal(emb, np.moveaxis(read_results(chain.results)["embeddings"], -1, 0))
    assert tifffile.imread(tmp_path / "maps" / "psnr.tif").shape == (3, 3)


def test_resume_from_the_command_line(chain, capsys, tmp_path):
    out_ckpt = tmp_path / "more.safetensors"
    code, out, err = run(["train", chain.data, "--preset", "continuous", "--epochs", "2",
                          "--batch-size", "4", "--val-fraction", "0", "--subset", "4",
                          "--device", "cpu", "--quiet", "--resume", chain.ckpt,
                          "--out", out_ckpt], capsys)
    assert code == 0, err
    assert "finished (completed)" in out
    assert load_checkpoint(out_ckpt).epoch == 2


def one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stem-ae: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_training_defaults_are_the_engine_s():
    from napari_4dstem_autoencoder.gui import backend
    from napari_4dstem_autoencoder.training.config import TrainConfig

    args = cli.build_parser().parse_args(["train", "data.npy", "--out", "m.pt"])
    assert args.lr == TrainConfig.lr == backend.default_learning_rate()


def test_missing_dataset(capsys, tmp_path):
    code, _, err = run(["info", tmp_path / "nope.mib"], capsys)
    one_line_error(code, err, "nope.mib")


def test_bad_training_options(chain, capsys, tmp_path):
    out = tmp_path / "x.safetensors"
    code, _, err = run(["train", chain.data, "--preset", "nonsense", "--out", out], capsys)
    one_line_error(code, err, "unknown preset")
    code, _, err = run(["train", chain.data, "--device", "cuda:7", "--preset", "continuous",
                        "--epochs", "1", "--out", out], capsys) if not torch.cuda.is_available() \
        else (2, "", "stem-ae: error: CUDA")
    one_line_error(code, err, "CUDA")
    assert not out.exists()


def test_embed_refuses_a_pickle_checkpoint(chain, capsys, tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    code, _, err = run(["embed", chain.data, bad, "--out", tmp_path / "r.h5"], capsys)
    one_line_error(code, err, "model.pt", "pickle")
    assert not (tmp_path / "r.h5").exists()


def test_embed_refuses_patterns_of_another_size(chain, capsys, tmp_path):
    other = tmp_path / "other.npy"
    np.save(other, scan((2, 2, 48, 48)))
    code, _, err = run(["embed", other, chain.ckpt, "--out", tmp_path / "r.h5"], capsys)
    one_line_error(code, err, "48x48", "32x32")


def test_export_refuses_a_file_that_is_not_results(chain, capsys, tmp_path):
    code, _, err = run(["export", chain.ckpt, "--out-dir", tmp_path], capsys)
    one_line_error(code, err, "model.safetensors")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "data.npy"])  # --out missing
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for command in ("train", "embed", "info", "export", "demo", "torchrun"):
        assert command in out


def test_demo_is_dispatched_lazily(monkeypatch):
    seen = []
    fake = types.ModuleType("napari_4dstem_autoencoder.gui.demo")
    fake.run_demo = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, "napari_4dstem_autoencoder.gui.demo", fake)
    assert cli.main(["demo", "--quit-after", "1"]) == 0
    assert seen == [["--quit-after", "1"]]


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_4dstem_autoencoder.cli", "info",
                           str(tmp_path / "missing.dm4")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "missing.dm4" in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_with_several_arrays_names_them_and_the_dataset_option(capsys, tmp_path):
    import h5py

    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["data"] = scan().astype(np.float32) / 1000
        f["data_counts"] = scan()
        f.attrs["scan_step_A"] = 2.0
    code, out, err = run(["info", path], capsys)
    assert code == 2 and out == ""
    line, = err.strip().splitlines()
    assert "/data 3x3x32x32 float32; /data_counts 3x3x32x32 uint16" in line
    assert "--dataset, e.g. --dataset /data" in line and "dataset='" not in line
    code, out, err = run(["info", path, "--dataset", "/data_counts"], capsys)
    assert code == 0 and "uint16" in out and "scan step (2.0, 2.0) Å" in out
    for command in ("train", "embed", "info"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--dataset NAME" in capsys.readouterr().out

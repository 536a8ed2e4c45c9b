"""``stem-ae`` under faults: outputs never clobber inputs, a full disk or a file-size limit never
leaves a truncated file in place, SIGTERM stops like Ctrl-C, and each is one clear line."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from napari_4dstem_autoencoder import _files, cli
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

from test_cli import one_line_error, run, scan

TRAIN = ["--preset", "continuous", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0",
         "--device", "cpu", "--quiet"]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A scan, a checkpoint trained on it and a results file embedded from both."""
    d = tmp_path_factory.mktemp("faults")
    data = d / "scan.npy"
    np.save(data, scan())
    ckpt, results = d / "model.safetensors", d / "results.h5"
    assert cli.main(["train", str(data), *TRAIN, "--out", str(ckpt)]) == 0
    assert cli.main(["embed", str(data), str(ckpt), "--out", str(results), "--device", "cpu",
                     "--quiet"]) == 0
    return types.SimpleNamespace(dir=d, data=data, ckpt=ckpt, results=results,
                                 digests={p: digest(p) for p in (data, ckpt, results)})


def unchanged(made) -> bool:
    return all(digest(p) == h for p, h in made.digests.items())


@pytest.mark.parametrize("argv, needle", [
    (["train", "{data}", *TRAIN, "--out", "{data}"], "is an input"),
    (["train", "{data}", *TRAIN, "--out", "{data}", "--overwrite"], "is an input"),
    (["embed", "{data}", "{ckpt}", "--out", "{ckpt}"], "is an input"),
    (["embed", "{data}", "{ckpt}", "--out", "{data}", "--overwrite"], "is an input"),
    (["train", "{data}", *TRAIN, "--out", "{ckpt}"], "exists; pass --resume"),
    (["embed", "{data}", "{ckpt}", "--out", "{results}"], "exists; pass --overwrite"),
    (["train", "{data}", *TRAIN, "--out", "/dev/null", "--overwrite"], "not a regular file"),
    (["embed", "{data}", "{ckpt}", "--out", "{dir}"], "is a folder"),
], ids=["train-onto-data", "train-onto-data-overwrite", "embed-onto-checkpoint",
        "embed-onto-data", "train-onto-checkpoint", "embed-onto-results", "device-node",
        "folder"])
def test_outputs_never_replace_inputs_devices_or_unasked_files(made, capsys, argv, needle):
    argv = [a.format(data=made.data, ckpt=made.ckpt, results=made.results, dir=made.dir)
            for a in argv]
    code, _, err = run(argv, capsys)
    one_line_error(code, err, needle)
    assert unchanged(made)
    assert Path("/dev/null").is_char_device()


def test_a_symlink_to_an_input_is_still_the_input(made, capsys, tmp_path):
    link = tmp_path / "innocent.safetensors"
    link.symlink_to(made.data)
    code, _, err = run(["train", made.data, *TRAIN, "--out", link, "--overwrite"], capsys)
    one_line_error(code, err, "is an input")
    assert unchanged(made)


def test_companion_files_of_a_data_set_are_inputs(tmp_path):
    for name in ("scan.mib", "scan.hdr", "other.hdr", "x_master.h5", "x_data_000001.h5",
                 "run.raw", "header.xml"):
        (tmp_path / name).write_bytes(b"")
    family = lambda name: {p.name for p in _files.input_family(tmp_path / name)}  # noqa: E731
    assert family("scan.mib") == {"scan.mib", "scan.hdr"}
    assert family("x_master.h5") == {"x_master.h5", "x_data_000001.h5"}
    assert family("run.raw") == {"run.raw", "header.xml"}


def test_overwrite_and_resume_into_the_same_checkpoint_are_allowed(made, capsys, tmp_path):
    ckpt = tmp_path / "again.safetensors"
    ckpt.write_bytes(made.ckpt.read_bytes())
    code, _, err = run(["train", made.data, *TRAIN, "--out", ckpt, "--overwrite"], capsys)
    assert code == 0, err
    resumed = TRAIN[:3] + ["2"] + TRAIN[4:]  # two epochs in all: one more
    code, _, err = run(["train", made.data, *resumed, "--resume", ckpt, "--out", ckpt], capsys)
    assert code == 0, err
    assert load_checkpoint(ckpt).epoch == 2
    assert unchanged(made)


def test_an_unwritable_folder_or_a_full_disk_is_refused_before_any_work(made, capsys, tmp_path,
                                                                         monkeypatch):
    def no_write(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_files.tempfile, "TemporaryFile", no_write)
    out = tmp_path / "m.safetensors"
    code, _, err = run(["train", made.data, *TRAIN, "--out", out], capsys)
    one_line_error(code, err, "not writable", "Permission denied")
    monkeypatch.undo()

    trained = []
    monkeypatch.setattr("napari_4dstem_autoencoder.training.engine.train",
                        lambda *a, **k: trained.append(1) or iter(()))
    monkeypatch.setattr(_files.shutil, "disk_usage",
                        lambda p: types.SimpleNamespace(total=2**30, used=2**30, free=2**20))
    code, _, err = run(["train", made.data, *TRAIN, "--out", out], capsys)
    one_line_error(code, err, "1 MiB free", "checkpoint needs")
    code, _, err = run(["embed", made.data, made.ckpt, "--out", tmp_path / "r.h5"], capsys)
    one_line_error(code, err, "1 MiB free", "results file needs")
    assert trained == [] and not out.exists() and not (tmp_path / "r.h5").exists()


def test_outputs_get_the_users_umask(made, tmp_path):
    old = os.umask(0o027)
    try:
        assert cli.main(["export", str(made.results), "--out-dir", str(tmp_path / "maps")]) == 0
        assert cli.main(["embed", str(made.data), str(made.ckpt), "--out",
                         str(tmp_path / "r.h5"), "--device", "cpu", "--quiet"]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "maps" / "embeddings.tif", tmp_path / "r.h5"):
        assert path.stat().st_mode & 0o777 == 0o640, path


def _limited(limit_bytes: int):
    """preexec_fn: a file-size limit, with SIGXFSZ ignored so writes fail with EFBIG."""
    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return setup


@pytest.mark.parametrize("command", ["export", "embed"])
def test_a_file_size_limit_fails_cleanly_and_leaves_the_old_file(made, tmp_path, command):
    target = tmp_path / ("maps" if command == "export" else "r.h5")
    if command == "export":
        (target).mkdir()
        old = target / "embeddings.tif"
        argv = ["export", str(made.results), "--out-dir", str(target), "--overwrite"]
    else:
        old = target
        argv = ["embed", str(made.data), str(made.ckpt), "--out", str(target), "--device",
                "cpu", "--quiet", "--overwrite"]
    old.write_bytes(b"the previous file")
    proc = subprocess.run([sys.executable, "-m", "napari_4dstem_autoencoder.cli", *argv],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(200))
    assert proc.returncode != 0 and proc.returncode > 0  # an exit status, not a signal
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("stem-ae: error:") and str(old) in line and "write" in line, line
    assert "[Errno" not in line, line
    assert old.read_bytes() == b"the previous file"
    assert not [p for p in old.parent.iterdir() if p.name.startswith(".")]
    assert unchanged(made)


def test_sigterm_stops_like_ctrl_c_and_keeps_a_loadable_checkpoint(made, tmp_path):
    out = tmp_path / "long.safetensors"
    argv = [sys.executable, "-m", "napari_4dstem_autoencoder.cli", "train", str(made.data),
            "--preset", "continuous", "--epochs", "10000", "--batch-size", "4",
            "--val-fraction", "0", "--device", "cpu", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # the first epoch's checkpoint: training is under way
        assert out.exists(), proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopping after this batch" in stderr and "Traceback" not in stderr
    assert "finished (stopped)" in stdout
    loaded = load_checkpoint(out)
    assert 1 <= loaded.epoch < 10000


def test_a_bad_scan_shape_blames_the_option_not_the_file(made, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["info", str(made.data), "--scan-shape", "-4", "-4"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--scan-shape" in err and "must be at least 1" in err
    assert str(made.data) not in err


@pytest.mark.parametrize("kind", ["zeros", "negative"])
def test_suspicious_data_is_one_warning_line_naming_the_file(tmp_path, capsys, kind):
    data = tmp_path / f"{kind}.npy"
    values = np.zeros((3, 3, 32, 32), np.float32)
    if kind == "negative":
        values = scan().astype(np.float32) - 5
    np.save(data, values)
    code, out, err = run(["info", data], capsys)
    assert code == 0 and "scan 3x3" in out
    (line,) = [l for l in err.splitlines() if l.strip()]
    assert line.startswith("stem-ae: warning:") and str(data) in line
    assert ("zero" if kind == "zeros" else "negative") in line


def test_complex_data_is_refused_unless_a_magnitude_is_asked_for(tmp_path, capsys):
    data = tmp_path / "wave.npy"
    np.save(data, (scan() * (1 + 1j)).astype(np.complex64))
    code, _, err = run(["info", data], capsys)
    one_line_error(code, err, str(data), "complex")
    code, out, err = run(["info", data, "--complex-magnitude"], capsys)
    assert code == 0 and "float32" in out, err

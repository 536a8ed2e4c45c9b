"""Two CPU processes (gloo) under torchrun train through the real CLI with DDP."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np

from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

DRIVER = textwrap.dedent('''
    """Runs `stem-ae` exactly as `-m napari_4dstem_autoencoder.cli` would, and records each
    rank's final weights (a spy around the engine generator)."""
    import hashlib, os, sys
    from napari_4dstem_autoencoder import cli
    from napari_4dstem_autoencoder.training import engine

    real_train = engine.train

    def spy(*args, **kwargs):
        for event in real_train(*args, **kwargs):
            if type(event).__name__ == "Finished":
                h = hashlib.sha256()
                for key, value in event.model.state_dict().items():
                    h.update(key.encode())
                    h.update(value.detach().cpu().numpy().tobytes())
                with open(os.path.join(os.environ["DIGEST_DIR"], "rank" + os.environ["RANK"]), "w") as f:
                    f.write(h.hexdigest())
            yield event

    engine.train = spy
    sys.exit(cli.main(sys.argv[1:]))
''')


def digest(model) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "scan.npy"
    np.save(data, rng.poisson(10, size=(4, 4, 32, 32)).astype(np.uint16))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    ckpt = tmp_path / "ddp.safetensors"
    env = dict(os.environ, DIGEST_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(driver), "train", str(data), "--preset", "continuous", "--epochs", "1",
           "--batch-size", "4", "--val-fraction", "0.25", "--device", "cpu", "--quiet",
           "--out", str(ckpt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rank0 = (tmp_path / "rank0").read_text()
    rank1 = (tmp_path / "rank1").read_text()
    assert rank0 == rank1
    loaded = load_checkpoint(ckpt)
    assert digest(loaded.model) == rank0
    assert loaded.extra["world_size"] == 2 and loaded.global_step == 2  # 12 positions / 2 ranks / 4
    assert proc.stdout.count("finished (completed)") == 1  # rank 0 speaks, rank 1 is silent
    assert "x 2 processes" in proc.stdout

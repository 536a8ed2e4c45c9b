"""Checkpoint writes under faults: kill -9 mid-write, short writes, full disks, stale temporaries.

The slow parts (a process killed at random moments, a file size limit) run in one writer
subprocess that imports torch once and forks a child per trial, so the whole file stays fast.
"""

import errno
import hashlib
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from napari_4dstem_autoencoder import _files
from napari_4dstem_autoencoder.data.preprocess import (PreprocessConfig, Preprocessor,
                                                       PreprocessStats)
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig
from napari_4dstem_autoencoder.training import checkpoints as ck
from napari_4dstem_autoencoder._files import (atomic_write_bytes, is_own_temporary,
                                             remove_stale_temporaries)
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint, save_checkpoint

posix_only = pytest.mark.skipif(os.name != "posix", reason="signals, fork and rlimits are POSIX")

TOKEN = "0123456789abcdef"  # 16 hex digits, as the writer's names have


def _own(directory):
    return sorted(p.name for p in directory.iterdir() if is_own_temporary(p.name))


def _age(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


# -- stale temporaries ----------------------------------------------------------------------

def test_the_temporary_names_are_distinctive():
    assert is_own_temporary(f".m.safetensors.{TOKEN}.stem-ae.tmp")
    assert is_own_temporary(f".a.b c.{TOKEN}.stem-ae.tmp")
    for name in (f"m.safetensors.{TOKEN}.stem-ae.tmp",   # not hidden
                 f".m.safetensors.{TOKEN[:-1]}.stem-ae.tmp",  # 15 digits
                 f".m.safetensors.{TOKEN.upper()}.stem-ae.tmp",
                 f".m.safetensors.{TOKEN}.stem-ae.tmp.bak",
                 f".m.safetensors.{TOKEN}.tmp",
                 ".m.safetensors.abcd1234.tmp",  # tempfile.mkstemp's old naming (others use it)
                 f".{TOKEN}.stem-ae.tmp"):  # no target name
        assert not is_own_temporary(name), name


def test_only_old_unlocked_files_of_our_exact_naming_are_removed(tmp_path, caplog):
    stale = [tmp_path / f".m.safetensors.{TOKEN}.stem-ae.tmp",
             tmp_path / f".other.h5.{'f' * 16}.stem-ae.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    young = tmp_path / f".m.safetensors.{'1' * 16}.stem-ae.tmp"
    young.write_bytes(b"y" * 10)
    decoys = [tmp_path / name for name in (
        ".m.safetensors.abcd1234.tmp", f"m.safetensors.{TOKEN}.stem-ae.tmp",
        f".m.safetensors.{TOKEN}.stem-ae.tmp.bak", "m.safetensors", "notes.txt")]
    for p in decoys:
        p.write_bytes(b"keep")
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep")
    link = tmp_path / f".link.{'2' * 16}.stem-ae.tmp"
    link.symlink_to(target)
    folder = tmp_path / f".dir.{'3' * 16}.stem-ae.tmp"
    folder.mkdir()
    locked = tmp_path / f".live.{'4' * 16}.stem-ae.tmp"
    locked.write_bytes(b"z" * 5)
    for p in (*stale, *decoys, target, link, folder, locked):
        _age(p)

    with open(locked, "rb+") as live_writer:  # a slow writer that still holds its lock
        if _files.fcntl is not None:
            _files.fcntl.flock(live_writer.fileno(), _files.fcntl.LOCK_EX | _files.fcntl.LOCK_NB)
        with caplog.at_level(logging.WARNING, logger=_files.__name__):
            removed = remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert young.exists() and folder.is_dir() and link.is_symlink() and target.exists()
    assert all(p.read_bytes() == b"keep" for p in decoys)
    if _files.fcntl is not None:
        assert locked.exists()
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "removed 2 stale temporary file(s) (2000 bytes)" in message and str(tmp_path) in message
    assert remove_stale_temporaries(tmp_path / "missing") == []
    # with no age rule, the young file goes, and so does the one whose writer let go
    expected = [young, locked] if _files.fcntl is not None else [young]
    assert sorted(remove_stale_temporaries(tmp_path, min_age_s=0)) == sorted(expected)
    assert folder.is_dir() and link.is_symlink() and target.read_bytes() == b"keep"


def test_the_next_write_into_the_directory_removes_stale_temporaries(tmp_path, caplog):
    stale = tmp_path / f".a.bin.{TOKEN}.stem-ae.tmp"
    stale.write_bytes(b"\0" * 4096)
    _age(stale)
    with caplog.at_level(logging.WARNING, logger=_files.__name__):
        atomic_write_bytes(tmp_path / "b.bin", b"new")
    assert not stale.exists() and (tmp_path / "b.bin").read_bytes() == b"new"
    assert "1 stale temporary file(s) (4096 bytes)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_written_files_get_the_users_umask_not_a_private_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


# -- short writes, full disks, files that do not read back ----------------------------------

def _fast_parts():
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32),
                        config=ModelConfig(pool_schedule="to4", decoder_canvas="target"))
    prep = Preprocessor(PreprocessConfig(scaling="sqrt"),
                        PreprocessStats(lo=0.0, hi=2.0, input_detector_shape=(32, 32)))
    return model, prep


@pytest.fixture(scope="module")
def parts():
    return _fast_parts()


@pytest.fixture
def previous(parts, tmp_path):
    """A good checkpoint that the failing writes below must leave intact."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, *parts, epoch=1)
    return path, path.read_bytes()


def _assert_intact(path, before):
    assert path.read_bytes() == before
    assert _own(path.parent) == [], "a temporary was left behind"
    assert load_checkpoint(path).epoch == 1


def test_a_full_disk_mid_write_keeps_the_previous_file(parts, previous, monkeypatch):
    path, before = previous
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 3]))  # a short write...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ...then the disk is full

    monkeypatch.setattr(ck.os, "write", full_disk)
    with pytest.raises(OSError, match="no space left on device") as info:
        save_checkpoint(path, *parts, epoch=2)
    assert str(path) in str(info.value) and info.value.errno == errno.ENOSPC
    assert len(calls) == 2  # the writer went on after the short write
    monkeypatch.undo()
    _assert_intact(path, before)


def test_a_write_that_lies_about_its_length_is_caught_by_the_size_check(parts, previous,
                                                                        monkeypatch):
    path, before = previous
    real_write = os.write
    monkeypatch.setattr(ck.os, "write",
                        lambda fd, data: real_write(fd, bytes(data[:-10])) and len(data))
    with pytest.raises(OSError, match="short write") as info:
        save_checkpoint(path, *parts, epoch=2)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    _assert_intact(path, before)


def test_a_file_that_does_not_read_back_never_replaces_the_target(parts, previous, monkeypatch):
    path, before = previous

    def garbled(tmp, header, keys):
        with open(tmp, "r+b") as f:
            f.seek(9)
            f.write(b"\xff\xff")
        ck.safe_open(str(tmp), framework="pt").__enter__()  # raises: the header is garbled

    monkeypatch.setattr(ck, "_verify_written", garbled)
    with pytest.raises(OSError, match="does not read back") as info:
        save_checkpoint(path, *parts, epoch=2)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    _assert_intact(path, before)


# -- a real writer process: SIGKILL at random moments, a real file size limit ---------------

WRITER = textwrap.dedent(r"""
    import os, resource, sys
    import torch
    torch.set_num_threads(1)  # no thread pool: the forked children must not inherit one
    from napari_4dstem_autoencoder.data.preprocess import (PreprocessConfig, Preprocessor,
                                                           PreprocessStats)
    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.model.config import ModelConfig
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32),
                        config=ModelConfig(pool_schedule="to4", decoder_canvas="target"))
    prep = Preprocessor(PreprocessConfig(scaling="sqrt"),
                        PreprocessStats(lo=0.0, hi=2.0, input_detector_shape=(32, 32)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 32, 32)
    x_hat, _ = model.encode_decode(x)
    ((x_hat - x) ** 2).mean().backward()
    opt.step()  # Adam moments: a resumable checkpoint, ~47 MB

    def perturb():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)

    print("ready", flush=True)
    for line in sys.stdin:
        cmd, path, arg = line.split()
        if cmd == "save":
            save_checkpoint(path, model, prep, optimizer=opt, epoch=int(arg))
            print("saved", flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if cmd == "loop":  # write checkpoints until killed
                    epoch = int(arg)
                    while True:
                        epoch += 1
                        perturb()
                        save_checkpoint(path, model, prep, optimizer=opt, epoch=epoch)
                elif cmd == "fsize":
                    resource.setrlimit(resource.RLIMIT_FSIZE,
                                       (int(arg), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
                    perturb()
                    try:
                        save_checkpoint(path, model, prep, optimizer=opt, epoch=99)
                        print("result no error", flush=True)
                    except OSError as exc:
                        print("result", exc, flush=True)
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                code = 1
            finally:
                os._exit(code)
        print("pid", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("reaped", status, flush=True)
""")


class Writer:
    """The writer subprocess, one command at a time."""

    def __init__(self, log_path):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect("ready", timeout=120)

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, tag, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.log.flush()
                raise AssertionError(f"the writer gave no {tag!r} line; its stderr: "
                                     + open(self.log_path).read()[-3000:])
            if line.startswith(tag):
                return line[len(tag):].strip()

    def send(self, *words):
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()  # the writer this test started, by its handle
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    if os.name != "posix":
        pytest.skip("signals, fork and rlimits are POSIX")
    w = Writer(tmp_path_factory.mktemp("writer") / "stderr.txt")
    yield w
    w.close()


#: kill -9 trials (each ~0.5-1 s: the kill, then the checkpoint loaded and checked)
KILL_TRIALS = 14


@posix_only
def test_kill_9_mid_write_always_leaves_the_last_good_checkpoint(writer, tmp_path, caplog):
    seed = int(os.environ.get("STEM_AE_FAULT_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    path = tmp_path / "model.safetensors"
    writer.send("save", path, 0)
    writer.expect("saved")
    loadable, killed_mid_write, last_epoch, newer, seen = 0, 0, 0, 0, 0
    for trial in range(KILL_TRIALS):
        writer.send("loop", path, last_epoch)
        pid = int(writer.expect("pid"))
        try:
            time.sleep(rng.uniform(0.002, 0.9))
        finally:
            os.kill(pid, signal.SIGKILL)  # the child the writer forked for this trial
        status = int(writer.expect("reaped"))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"trial {trial} (seed {seed}): the child ended on its own ({status})")
        try:
            loaded = load_checkpoint(path)
        except ck.CheckpointError as exc:
            pytest.fail(f"trial {trial} (seed {seed}): the checkpoint does not load: {exc}")
        loadable += 1
        assert loaded.epoch >= last_epoch, f"trial {trial} (seed {seed}): an older file came back"
        newer += loaded.epoch > last_epoch
        last_epoch = loaded.epoch
        temporaries = len(_own(tmp_path))
        killed_mid_write += temporaries > seen  # the kill hit a write: its temporary stayed
        seen = temporaries

    stale = _own(tmp_path)
    sizes = sum((tmp_path / n).stat().st_size for n in stale)
    print(f"kill -9 (seed {seed}): {KILL_TRIALS} trials, {loadable} left a loadable "
          f"checkpoint, {newer} a newer one than the trial before, {killed_mid_write} were "
          f"killed mid-write ({len(stale)} stale temporaries, {sizes} bytes)")
    # they are young: a live writer may own them, so nothing removes them yet
    assert remove_stale_temporaries(tmp_path) == []
    assert _own(tmp_path) == stale
    for name in stale:  # ...a minute later, the next save into the directory does
        _age(tmp_path / name, 120)
    decoy = tmp_path / ".model.safetensors.notours.tmp"
    decoy.write_bytes(b"keep")
    _age(decoy, 120)
    with caplog.at_level(logging.WARNING, logger=_files.__name__):
        save_checkpoint(path, loaded.model, loaded.preprocessor, epoch=last_epoch + 1)
    assert _own(tmp_path) == []
    assert decoy.read_bytes() == b"keep"
    if stale:
        assert f"removed {len(stale)} stale temporary file(s) ({sizes} bytes)" in caplog.text
    assert load_checkpoint(path).epoch == last_epoch + 1
    assert loadable == KILL_TRIALS


@posix_only
def test_a_file_size_limit_never_replaces_the_previous_checkpoint(writer, tmp_path):
    path = tmp_path / "model.safetensors"
    writer.send("save", path, 1)
    writer.expect("saved")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    writer.send("fsize", path, path.stat().st_size // 2)
    result = writer.expect("result")
    assert str(writer.expect("reaped")) == "0"
    assert str(path) in result and "file too large" in result, result
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert _own(tmp_path) == []
    assert load_checkpoint(path).epoch == 1

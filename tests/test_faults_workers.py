"""A data worker that raises or dies ends the run quickly: non-zero exit, the error, a checkpoint to resume from
(issue 10, case 2). Every subprocess runs under `timeout`, so a hang fails the test instead of stalling it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vimamba
from _train_data import make_image_folder
from vimamba.engine.checkpointing import load_training_checkpoint

SRC = str(Path(vimamba.__file__).resolve().parents[1])
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TRAIN = ["--model", "vim_tiny_patch16_224", "--embed-dim", "16", "--depth", "1", "--patch-size", "4",
         "--img-size", "16", "--batch-size", "4", "--workers", "2", "--aa", "none", "--device", "cpu",
         "--no-model-ema", "--mixup", "0", "--cutmix", "0"]


def vimamba_train(*args: str, limit: int = 60) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = ["timeout", "-s", "KILL", str(limit), sys.executable, "-m", "vimamba.cli", "train", *TRAIN, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def children(pid: int):
    """Direct child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def finish(proc: subprocess.Popen):
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def assert_resumable(out: Path):
    saved = load_training_checkpoint(out / "last.pth")
    # the position of the last finished optimizer step (1 batch per step): inside the first epoch, or at the end of
    # a finished one when the worker died between epochs (evaluation, saving, plotting)
    epoch, step, batch = saved["epoch"], saved["global_step"], saved["batch_in_epoch"]
    assert (epoch == 0 and step == batch) or (epoch >= 1 and batch == 0 and step > 0 and step % epoch == 0), \
        (epoch, step, batch)
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    return saved


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=(40, 4), corrupt=True)


def test_a_worker_exception_ends_the_run_with_the_error_and_a_checkpoint(folder, tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    rc, stdout, stderr = finish(vimamba_train("--data", str(folder), "--epochs", "3", "--strict-data",
                                              "--output", str(out)))
    assert rc not in (0, 124, 137, -9), stderr[-3000:]  # exited by itself, with an error
    assert time.monotonic() - start < 60
    assert "cannot read image" in stderr and "broken.png" in stderr and "--resume" in stderr
    assert_resumable(out)


def test_a_killed_worker_ends_the_run_with_the_error_and_a_checkpoint(folder, tmp_path):
    # a long run (no corrupt file is read in strict mode: the default skips it); one worker SIGKILLed mid-epoch
    out = tmp_path / "run"
    proc = vimamba_train("--data", str(folder), "--epochs", "50", "--output", str(out))
    deadline = time.monotonic() + 60
    python = None
    while time.monotonic() < deadline and proc.poll() is None:
        timeout_children = children(proc.pid)  # `timeout` -> python -> workers
        python = timeout_children[0] if timeout_children else None
        if python and len(children(python)) >= 2 and (out / "config.json").is_file():
            break
        time.sleep(0.2)
    assert python and proc.poll() is None, "the run did not start its workers"
    time.sleep(1.0)
    workers = children(python)
    os.kill(workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    rc, stdout, stderr = finish(proc)
    assert rc not in (0, 124, 137, -9), stderr[-3000:]
    assert time.monotonic() - killed_at < 30
    assert "a data worker died (DataLoader worker (pid" in stderr and "--resume" in stderr, stderr[-2000:]
    saved = assert_resumable(out)
    # the checkpoint continues the run
    rc2, _, err2 = finish(vimamba_train("--resume", str(out / "last.pth"), "--epochs", str(saved["epoch"] + 1),
                                        "--workers", "0"))
    assert rc2 == 0, err2[-3000:]

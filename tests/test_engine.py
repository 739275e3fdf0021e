"""The one engine: every task (classification, segmentation, detection) killed with SIGKILL in the middle of a step
resumes to the weights of a run never interrupted, with its schedule restored; SIGTERM saves and stops."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vimamba
from _engine_tasks import KINDS, build, make_data
from vimamba.checkpoints import is_current_format, load_checkpoint_file
from vimamba.engine.loop import run

SRC = str(Path(vimamba.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parent)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def start_hanging_run(kind: str, data: Path, out: Path, call: int) -> subprocess.Popen:
    """A run in a subprocess that stops inside its ``call``-th loss computation and waits there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "_engine_tasks.py"), kind, str(data), str(out),
                             str(call)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    marker = out.parent / f"{out.name}.waiting"
    deadline = time.time() + 180
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not marker.exists():
        stdout, stderr = finish(proc)
        pytest.fail(f"the run never reached call {call} (exit {proc.returncode}): {stderr[-2000:]}")
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return {kind: make_data(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_killed_mid_step_resumes_to_the_uninterrupted_weights_and_schedule(kind, datasets, tmp_path,
                                                                                   monkeypatch):
    data = datasets[kind]
    straight = tmp_path / "straight"
    result = run(*build(kind, data, straight))
    assert result.status == "finished" and result.step == 6
    expected = load_checkpoint_file(straight / "last.pth")
    assert is_current_format(expected) and expected["task"] == kind

    killed = tmp_path / "killed"
    proc = start_hanging_run(kind, data, killed, call=5)  # inside step 5; last.pth holds step 4
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint_file(killed / "last.pth")
    assert saved["step"] == 4 and saved["scheduler"] is not None

    from timm.scheduler.scheduler import Scheduler

    restored = []
    real_load = Scheduler.load_state_dict
    monkeypatch.setattr(Scheduler, "load_state_dict",
                        lambda self, state: (restored.append(dict(state)), real_load(self, state))[1])
    result = run(*build(kind, data, killed, resume=killed / "last.pth"))
    assert result.status == "finished" and result.step == 6
    assert restored == [saved["scheduler"]]  # the saved schedule state was put back, not rebuilt

    resumed = load_checkpoint_file(killed / "last.pth")
    assert_same_state(expected["model"], resumed["model"])  # bit for bit
    if expected["model_ema"] is not None:
        assert_same_state(expected["model_ema"], resumed["model_ema"])
    assert resumed["scheduler"] == expected["scheduler"]
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == \
        [g["lr"] for g in expected["optimizer"]["param_groups"]]
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log describes one run


def test_sigterm_mid_step_saves_that_step_and_the_run_resumes(datasets, tmp_path):
    kind, data = "segmentation", datasets["segmentation"]
    straight = tmp_path / "straight"
    run(*build(kind, data, straight))

    stopped = tmp_path / "stopped"
    proc = start_hanging_run(kind, data, stopped, call=3)  # inside step 3
    os.killpg(proc.pid, signal.SIGTERM)  # as `timeout`, `kill -- -PGID` and Slurm do
    time.sleep(0.5)
    (tmp_path / "stopped.waiting").unlink()  # let step 3 finish
    stdout, stderr = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "received SIGTERM" in stderr and "vimamba segment train --resume" in stdout
    saved = load_checkpoint_file(stopped / "last.pth")
    assert saved["step"] == 3  # the step it was in finished and was saved (the interval alone saves 2, 4 and 6)

    result = run(*build(kind, data, stopped, resume=stopped / "last.pth"))
    assert result.step == 6
    assert_same_state(load_checkpoint_file(straight / "last.pth")["model"],
                      load_checkpoint_file(stopped / "last.pth")["model"])

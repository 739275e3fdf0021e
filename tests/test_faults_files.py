"""File-system faults (issue 10): nothing written into another run's folder, convert never replaces its input,
killed saves leave no debris, and every file-system failure is one clear line with the last checkpoint intact.

Disk full and read-only folders are tested twice: for real where this machine allows it (a small tmpfs mounted as
root, or a chmod-ed folder as another user), and by injecting the error at the write layer (always)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import vimamba
import vimamba.io
from _train_data import make_image_folder
from vimamba.cli import main as cli
from vimamba.errors import FileSystemError
from vimamba.io import atomic_torch_save, atomic_write
from vimamba.engine.checkpointing import CheckpointManager, load_training_checkpoint
from vimamba.train.config import resolve_config
from vimamba.train.runner import run_training

SRC = str(Path(vimamba.__file__).resolve().parents[1])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(model="vim_tiny_patch16_224", embed_dim=16, depth=1, patch_size=4, img_size=16, epochs=1, batch_size=8,
            lr=3e-3, unscale_lr=True, warmup_epochs=0.0, workers=0, device="cpu", model_ema=False, aa="none",
            mixup=0.0, cutmix=0.0, reprob=0.0, repeated_aug=False, export=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=(8, 3), odd_modes=False, corrupt=False)


@pytest.fixture(scope="module")
def run_a(folder, tmp_path_factory):
    """A finished 1-epoch run (its folder, read-only for the tests: copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "a"
    assert run_training(resolve_config(dict(TINY, data=str(folder), output=str(out))))["status"] == "finished"
    return out


def fingerprint(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------- case 3
def test_resuming_a_copied_run_folder_writes_into_the_copy(run_a, folder, tmp_path, capsys):
    a = tmp_path / "a"
    shutil.copytree(run_a, a)
    b = tmp_path / "b"
    shutil.copytree(a, b)  # cp -a runs/a runs/b: the checkpoint's saved config still says output=.../a (run_a's)
    before = fingerprint(a)
    assert cli(["train", "--resume", str(b / "last.pth"), "--epochs", "2"]) == 0
    assert fingerprint(a) == before  # the original run is untouched
    assert load_training_checkpoint(b / "last.pth")["epoch"] == 2
    assert load_training_checkpoint(b / "last.pth")["config"]["output"] == str(b)
    capsys.readouterr()

    # --output naming another run's folder is refused (that run would lose its checkpoints) unless --overwrite
    assert cli(["train", "--resume", str(b / "last.pth"), "--epochs", "3", "--output", str(a)]) == 1
    assert "holds another run" in one_line_error(capsys) and fingerprint(a) == before
    # a new run into a folder holding a run is refused the same way
    assert cli(["train", "--data", str(folder), "--output", str(a), *_tiny_flags()]) == 1
    assert "already holds a training run" in one_line_error(capsys) and fingerprint(a) == before


# ---------------------------------------------------------------------------------------------------- case 4
def test_convert_never_overwrites_its_input(run_a, tmp_path, capsys):
    ckpt = tmp_path / "X.pth"
    shutil.copyfile(run_a / "last.pth", ckpt)
    original = ckpt.read_bytes()
    (tmp_path / "link.pth").symlink_to(ckpt)
    os.link(ckpt, tmp_path / "hard.pth")
    (tmp_path / "sub").mkdir()
    for output in (ckpt, tmp_path / "sub" / ".." / "X.pth", tmp_path / "link.pth", tmp_path / "hard.pth"):
        assert cli(["convert", str(ckpt), str(output)]) == 1, output
        assert "is the input checkpoint" in one_line_error(capsys)
        assert ckpt.read_bytes() == original
    assert cli(["convert", str(tmp_path / "link.pth"), str(ckpt)]) == 1  # input through the link, output the file
    assert ckpt.read_bytes() == original and "optimizer" in load_training_checkpoint(ckpt)
    assert cli(["convert", str(ckpt), str(tmp_path / "weights.pth")]) == 0  # another file: fine


# ---------------------------------------------------------------------------------------------------- case 6
def _killed_mid_save(target: Path) -> Path:
    """A process that dies (SIGKILL) in the middle of an atomic save of ``target``: the temporary file it leaves."""
    script = ("import os, signal, sys\nfrom vimamba.io import atomic_write\n"
              f"with atomic_write({str(target)!r}) as tmp:\n"
              "    tmp.write_bytes(b'half a checkpoint')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = list(target.parent.glob(f".{target.name}.*.tmp"))
    assert len(left) == 1
    return left[0]


def test_temporaries_of_killed_saves_are_removed_at_the_next_save_and_start(tmp_path):
    target = tmp_path / "last.pth"
    atomic_torch_save({"step": 1}, target)
    debris = _killed_mid_save(target)
    others = [tmp_path / ".last.pth.notours.tmp", tmp_path / "notes.tmp", tmp_path / ".last.pth.abcdefgh.tmp",
              tmp_path / f".last.pth.{vimamba.io._HOST}-{os.getppid()}-abcdefgh.tmp"]  # foreign, new, or alive
    for path in others:
        path.write_bytes(b"someone else's")
    atomic_torch_save({"step": 2}, target)
    assert not debris.exists() and all(p.exists() for p in others)
    assert torch.load(target)["step"] == 2

    # an old file of the earlier naming (.NAME.XXXXXXXX.tmp), untouched for hours, counts as abandoned
    old = tmp_path / ".last.pth.abcdefgh.tmp"
    os.utime(old, (1e9, 1e9))
    # at the start of a run, debris of every file of the run folder goes, before its first save
    config_debris = _killed_mid_save(tmp_path / "config.json")
    from vimamba.engine.checkpointing import prepare_output_dir

    prepare_output_dir(tmp_path, resume=target)
    assert not config_debris.exists() and not old.exists()
    assert all(p.exists() for p in others if p != old)


# ---------------------------------------------------------------------------------------------------- case 9
def test_output_naming_an_existing_file_is_one_line(folder, tmp_path, capsys):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    assert cli(["train", "--data", str(folder), "--output", str(file), *_tiny_flags()]) == 1
    assert "is a file, not a folder" in one_line_error(capsys) and file.read_text() == "keep me"
    nested = tmp_path / "results.txt" / "run"  # a file where a parent folder should be
    assert cli(["train", "--data", str(folder), "--output", str(nested), *_tiny_flags()]) == 1
    assert str(file) in one_line_error(capsys)


def _tiny_flags():
    return ["--embed-dim", "16", "--depth", "1", "--patch-size", "4", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-model-ema", "--aa", "none", "--mixup",
            "0", "--cutmix", "0", "--reprob", "0", "--no-repeated-aug", "--no-export"]


# ---------------------------------------------------------------------------------------------------- case 10
def _state(value: float, size: int = 1000):
    return {"model": {"w": torch.full((size,), value)}, "epoch": 0, "global_step": 1}


def _fail_writes_after(monkeypatch, nbytes: int, code: int = errno.ENOSPC):
    """Files opened by vimamba.io for writing fail with ``code`` once ``nbytes`` have been written."""
    real_open = open

    class Failing:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > nbytes:
                raise OSError(code, os.strerror(code))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Failing(f) if "w" in mode else f

    monkeypatch.setattr(vimamba.io, "open", fake_open, raising=False)


def test_disk_full_is_named_and_keeps_the_last_checkpoint_injected(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(1.0))
    _fail_writes_after(monkeypatch, 2000)
    with pytest.raises(FileSystemError) as info:
        manager.save(_state(2.0))
    assert str(info.value).startswith(f"no space left on device: cannot write '{tmp_path / 'last.pth'}'")
    assert "inline_container" not in str(info.value) and info.value.errno == errno.ENOSPC
    assert torch.equal(load_training_checkpoint(tmp_path / "last.pth")["model"]["w"], torch.full((1000,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


@contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs mounted at ``path`` (root only; skips where mounting is not allowed), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_on_a_real_small_file_system(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        manager = CheckpointManager(mnt)
        manager.save(_state(1.0))
        with pytest.raises(FileSystemError) as info:
            manager.save(_state(2.0, size=1_000_000))  # 4 MB on a 1 MB file system
        assert str(info.value).startswith(f"no space left on device: cannot write '{mnt / 'last.pth'}'")
        assert torch.equal(load_training_checkpoint(mnt / "last.pth")["model"]["w"], torch.full((1000,), 1.0))
        assert sorted(p.name for p in mnt.iterdir()) == ["last.pth"]


def test_disk_full_during_training_is_one_line(folder, tmp_path, monkeypatch, capsys):
    _fail_writes_after(monkeypatch, 0)
    out = tmp_path / "run"
    assert cli(["train", "--data", str(folder), "--output", str(out), *_tiny_flags()]) == 1
    line = one_line_error(capsys)
    assert f"no space left on device: cannot write '{out / 'last.pth'}'" in line


# ---------------------------------------------------------------------------------------------------- case 11
@contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for real: chmod for an ordinary user; for root (whom permissions do not stop) a
    tmpfs remounted read-only with ``folder``'s files copied in."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield folder
        finally:
            os.chmod(folder, 0o755)
        return
    staged = folder.with_name(folder.name + "-staged")
    folder.rename(staged)
    with small_tmpfs(folder, "16m"):
        for item in staged.iterdir():
            shutil.copy2(item, folder / item.name)
        if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("remounting read-only is not allowed here")
        yield folder


def test_read_only_output_folder_is_one_line_in_train_resume_and_convert(run_a, folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    with read_only(run):
        before = fingerprint(run)
        assert cli(["train", "--resume", str(run / "last.pth"), "--epochs", "2"]) == 1
        line = one_line_error(capsys)
        assert str(run) in line and ("read-only file system" in line or "permission denied" in line)
        assert cli(["train", "--data", str(folder), "--output", str(run / "new"), *_tiny_flags()]) == 1
        line = one_line_error(capsys)
        assert str(run / "new") in line and ("read-only file system" in line or "permission denied" in line)
        assert cli(["convert", str(run / "last.pth"), str(run / "weights.safetensors")]) == 1
        line = one_line_error(capsys)
        assert str(run / "weights.safetensors") in line
        assert fingerprint(run) == before


def test_read_only_is_named_when_injected(run_a, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_a, run)

    def read_only_mkstemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".x.tmp"))

    monkeypatch.setattr(vimamba.io.tempfile, "mkstemp", read_only_mkstemp)
    assert cli(["train", "--resume", str(run / "last.pth"), "--epochs", "2"]) == 1
    assert f"read-only file system: cannot write into '{run}'" in one_line_error(capsys)
    assert cli(["convert", str(run / "last.pth"), str(run / "w.safetensors")]) == 1
    assert f"read-only file system: cannot write '{run / 'w.safetensors'}'" in one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------- the CLI
def test_user_errors_are_one_line_but_bugs_keep_their_traceback(monkeypatch, capsys):
    import vimamba.models.commands as commands

    def lookup_bug(args):
        return {}["missing key"]

    monkeypatch.setattr(commands, "_models", lookup_bug)
    with pytest.raises(KeyError):
        cli(["models"])

    def library_bug(args):
        return torch.zeros(2) @ torch.zeros(3)

    monkeypatch.setattr(commands, "_models", library_bug)
    with pytest.raises(RuntimeError):
        cli(["models"])

    def unwritable(args):
        open("/nonexistent-folder-of-vimamba-tests/out.txt", "w")

    monkeypatch.setattr(commands, "_models", unwritable)
    assert cli(["models"]) == 1
    assert "/nonexistent-folder-of-vimamba-tests/out.txt" in one_line_error(capsys)
    monkeypatch.undo()
    assert cli(["info", "vim_gigantic"]) == 1  # vimamba's own message for a bad argument
    assert "unknown Vim model" in one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------- exact resume
class SigtermAtCall:
    def __init__(self, n: int):
        self.n, self.calls, self.loss = n, 0, torch.nn.CrossEntropyLoss()

    def __call__(self, logits, targets):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.loss(logits, targets)


def test_classification_resumed_mid_epoch_with_data_workers_is_exact(folder, tmp_path):
    # random crops and flips drawn in 2 worker processes, stochastic depth in the main one
    settings = dict(TINY, data=str(folder), epochs=2, workers=2, scale=(0.5, 1.0), hflip=0.5, drop_path=0.1)
    run_training(resolve_config(dict(settings, output=str(tmp_path / "straight"))), criterion=SigtermAtCall(-1))
    stopped = tmp_path / "stopped"
    summary = run_training(resolve_config(dict(settings, output=str(stopped))), criterion=SigtermAtCall(5))
    assert summary["status"] == "interrupted" and load_training_checkpoint(stopped / "last.pth")["batch_in_epoch"] == 2
    saved = load_training_checkpoint(stopped / "last.pth")["config"]
    resumed = run_training(resolve_config({"resume": str(stopped / "last.pth")}, saved), criterion=SigtermAtCall(-1))
    assert resumed["status"] == "finished"
    a, b = (load_training_checkpoint(p / "last.pth")["model"] for p in (tmp_path / "straight", stopped))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

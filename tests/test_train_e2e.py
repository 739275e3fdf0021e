"""End-to-end training on small image folders the tests make: train, evaluate, predict, resume, fail cleanly."""
from __future__ import annotations

import argparse
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
from _train_data import CLASSES, make_image_folder
from vimamba.cli import main as cli
from vimamba.data import Preprocessing, build_eval_transform, imagenet_class_names, load_image
from vimamba.models.checkpoint import CheckpointError, read_checkpoint
from vimamba.engine.checkpointing import load_training_checkpoint
from vimamba.train.config import resolve_config
from vimamba.train.models import load_classifier
from vimamba.engine.precision import NonFiniteLossError
from vimamba.train.classification import run_training

SRC = str(Path(vimamba.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parent)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(root: Path, out: Path, **overrides):
    """A 12k-parameter Vim on 16x16 images, deterministic augmentation-light recipe, CPU, no workers."""
    values = dict(data=str(root), model="vim_tiny_patch16_224", embed_dim=16, depth=2, patch_size=4, img_size=16,
                  epochs=2, batch_size=8, lr=3e-3, unscale_lr=True, warmup_epochs=0.0, min_lr=1e-4, workers=0,
                  output=str(out), device="cpu", model_ema=False, aa="none", mixup=0.0, cutmix=0.0, reprob=0.0,
                  scale=(0.7, 1.0), drop_path=0.1, repeated_aug=False)
    values.update(overrides)
    return resolve_config(values)


def records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path):
    return load_training_checkpoint(path)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=(16, 6))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run_training(tiny(folder, out, epochs=4)).summary
    return out, summary


# ---------------------------------------------------------------------------------------------------- train, eval, predict
def test_training_learns_and_writes_everything(trained):
    out, summary = trained
    assert summary["status"] == "finished"
    for name in ("last.pth", "best.pth", "metrics.jsonl", "curves.png", "summary.json", "config.json",
                 "model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = records(out)
    assert [r["step"] for r in log] == list(range(1, 25))  # 6 steps an epoch: the loss of every step
    evaluated = [r for r in log if "top1" in r]
    assert [r["epoch"] for r in evaluated] == [1, 2, 3, 4]  # evaluated after every epoch
    first, last = (sum(r["train_loss"] for r in log[i:i + 6]) / 6 for i in (0, 18))
    assert last < first - 0.05  # the loss goes down on a learnable set
    assert max(r["top1"] for r in evaluated) >= 80.0  # chance is 33%
    assert summary["model"].startswith("Vim 0.01M (D=16, depth 2")  # what was built, not the registered name
    assert summary["network"].startswith("Vim 0.01M (D=16, depth 2") and summary["network"].endswith(")")
    assert json.loads((out / "summary.json").read_text())["network"] == summary["network"]
    assert summary["skipped_images"] == 4  # the broken PNG, once per epoch
    exported = read_checkpoint(out / "model.safetensors")
    assert exported.class_names == list(CLASSES)
    assert Preprocessing.from_dict(exported.preprocessing).img_size == (16, 16)


def test_eval_command_matches_an_independent_count(trained, folder, capsys):
    out, _ = trained
    assert cli(["eval", "--checkpoint", str(out / "best.pth"), "--data", str(folder), "--workers", "0",
                "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    loaded = load_classifier(out / "best.pth")
    transform = build_eval_transform(loaded.preprocessing)
    correct = total = 0
    with torch.no_grad():
        for label, name in enumerate(CLASSES):
            for path in sorted((folder / "val" / name).iterdir()):
                logits = loaded.model.eval()(transform(load_image(path))[None])
                correct += int(logits.argmax() == label)
                total += 1
    assert reported["count"] == total == 18
    assert reported["top1"] == pytest.approx(100.0 * correct / total)
    best = max((r for r in records(out) if "top1" in r), key=lambda r: r["top1"])
    assert reported["top1"] == pytest.approx(best["top1"])  # the training run's evaluation agrees


def test_predict_command_prints_top_classes_and_reports_bad_files(trained, folder, capsys):
    out, _ = trained
    image = folder / "val" / "left" / "0.png"
    rc = cli(["predict", "--checkpoint", str(out / "model.safetensors"), str(image),
              str(folder / "train" / "bottom" / "broken.png"), "--json"])
    assert rc == 1  # one unreadable file
    result = json.loads(capsys.readouterr().out)
    assert result[0]["image"] == str(image) and "error" in result[1]
    top = result[0]["top"]
    assert len(top) == 3 and {t["class"] for t in top} == set(CLASSES)  # top-5 capped at 3 classes
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def test_official_format_checkpoint_gets_imagenet_names(tmp_path, capsys):
    model = vimamba.create_model("vim_tiny_patch16_224", embed_dim=16, depth=1, patch_size=4, stride=4, img_size=16)
    state = model.state_dict()
    torch.save({"model": state, "model_ema": state, "args": argparse.Namespace(lr=5e-4)}, tmp_path / "official.pth")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (120, 30, 200)).save(image)
    assert cli(["predict", "--checkpoint", str(tmp_path / "official.pth"), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 5 and all(t["class"] in imagenet_class_names() for t in top)


# ---------------------------------------------------------------------------------------------------- resume
class SignalAtCall:
    """A criterion that sends this process a signal at its n-th call (a deterministic mid-epoch interruption)."""

    def __init__(self, n: int, signum: int = signal.SIGTERM):
        self.n, self.signum, self.calls = n, signum, 0
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def __call__(self, logits, targets):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signum)
        return self.loss(logits, targets)


def test_interrupted_run_resumes_to_the_same_result(folder, tmp_path, capsys):
    straight = tmp_path / "straight"
    run_training(tiny(folder, straight))
    interrupted = tmp_path / "interrupted"
    result = run_training(tiny(folder, interrupted), criterion=SignalAtCall(n=8))  # epoch 2, batch 2 of 6
    assert result.status == "interrupted" and result.exit_code == 128 + signal.SIGTERM
    saved = load_training_checkpoint(interrupted / "last.pth")
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 2, 8)
    assert "--resume" in capsys.readouterr().out
    result = run_training(resolve_config({"resume": str(interrupted / "last.pth")}, saved["config"]))
    assert result.status == "finished"
    assert_same_weights(weights(interrupted / "last.pth"), weights(straight / "last.pth"))  # bit for bit
    log = records(interrupted)
    assert [r["step"] for r in log] == list(range(1, 13))  # the log describes the one run, no step twice
    assert [r["epoch"] for r in log if "top1" in r] == [1, 2]


def test_sigterm_to_the_whole_job_stops_a_run_that_then_resumes(folder, tmp_path):
    # As `timeout`, `kill -- -PGID` and Slurm's scancel do: every process of the job, data workers included, gets it.
    out = tmp_path / "run"
    script = (
        "import sys, time, torch\n"
        "from vimamba.train.config import resolve_config\n"
        "from vimamba.train.classification import run_training\n"
        "loss = torch.nn.CrossEntropyLoss()\n"
        "def slow(logits, targets):\n"
        "    time.sleep(0.25)\n"
        "    return loss(logits, targets)\n"
        f"cfg = resolve_config(dict(data={str(folder)!r}, model='vim_tiny_patch16_224', embed_dim=16, depth=1, "
        f"patch_size=4, img_size=16, epochs=6, batch_size=8, workers=1, output={str(out)!r}, device='cpu', "
        "model_ema=False, aa='none', mixup=0.0, cutmix=0.0, repeated_aug=False))\n"
        "sys.exit(run_training(cfg, criterion=slow).exit_code)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "last.pth").is_file() and time.time() < deadline and proc.poll() is None:  # epoch 1 done
        time.sleep(0.2)
    time.sleep(1.0)  # usually into epoch 2 (the deterministic mid-epoch case is the test above)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "received SIGTERM" in stderr and "vimamba train --resume" in stdout
    saved = load_training_checkpoint(out / "last.pth")
    assert saved["step"] == 6 * saved["epoch"] + saved["batch_in_epoch"] and 6 <= saved["step"] < 36
    rc = cli(["train", "--resume", str(out / "last.pth"), "--epochs", "4", "--workers", "0"])  # a shorter run now
    assert rc == 0 and load_training_checkpoint(out / "last.pth")["epoch"] == 4


# ---------------------------------------------------------------------------------------------------- failures
class NaNAfter:
    def __init__(self, n: int):
        self.n, self.calls = n, 0
        self.loss = torch.nn.CrossEntropyLoss()

    def __call__(self, logits, targets):
        self.calls += 1
        loss = self.loss(logits, targets)
        return loss * float("nan") if self.calls > self.n else loss


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(folder, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as err:
        run_training(tiny(folder, out, max_bad_steps=3), criterion=NaNAfter(n=7))  # NaN from epoch 2, batch 2
    message = str(err.value)
    assert "3 optimizer steps in a row had a non-finite loss" in message and str(out / "last.pth") in message
    saved = load_training_checkpoint(out / "last.pth")
    assert (saved["epoch"], saved["step"]) == (1, 6)  # written after epoch 1, untouched since
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_another_architecture_is_refused_clearly(trained, folder, tmp_path, capsys):
    out, _ = trained
    other = vimamba.create_model("vim_tiny_patch16_224", embed_dim=24, depth=2, patch_size=4, stride=4, img_size=16,
                                 num_classes=3)
    vimamba.save_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        run_training(tiny(folder, tmp_path / "ft", finetune=str(tmp_path / "other.safetensors")))
    assert "embed_dim=24" in str(err.value)
    vimamba.save_weights(other, tmp_path / "weights.pth")
    assert cli(["train", "--resume", str(tmp_path / "weights.pth")]) == 1
    assert "not a vimamba training checkpoint" in capsys.readouterr().err  # and says to use --finetune
    assert cli(["eval", "--checkpoint", str(tmp_path / "other.safetensors"), "--data", str(folder / "val" / "top"),
                "--workers", "0"]) == 1  # a folder whose 0 classes do not match the model's 3


def test_finetune_to_a_finer_stride_and_deit_with_bf16(trained, folder, tmp_path, capsys):
    out, _ = trained
    summary = run_training(tiny(folder, tmp_path / "ft", stride=2, epochs=1, finetune=str(out / "best.pth"))).summary
    assert summary["status"] == "finished"
    assert "resized pos_embed (1, 17, 16) -> (1, 50, 16)" in capsys.readouterr().out  # 4x4 -> 7x7 patches
    deit = tmp_path / "deit"
    summary = run_training(tiny(folder, deit, model="deit_tiny_patch16_224", embed_dim=16, depth=1, num_heads=2,
                                epochs=1, amp="bf16")).summary
    assert summary["status"] == "finished" and summary["family"] == "timm"
    assert load_classifier(deit / "best.pth").model.__class__.__name__ == "VisionTransformer"
    assert cli(["predict", "--checkpoint", str(deit / "best.pth"), str(folder / "val" / "top" / "0.png")]) == 0


# ---------------------------------------------------------------------------------------------------- distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=(16, 6), corrupt=False)
    # no randomness but the data order: no crop, flip, colour jitter or drop path (ranks draw different numbers)
    common = dict(epochs=2, opt="sgd", lr=0.05, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0,
                  drop_path=0.0)
    single = tmp_path / "single"
    run_training(tiny(root, single, **common))
    double = tmp_path / "double"
    args = ["--data", str(root), "--model", "vim_tiny_patch16_224", "--embed-dim", "16", "--depth", "2",
            "--patch-size", "4", "--img-size", "16", "--epochs", "2", "--batch-size", "4", "--lr", "0.05",
            "--unscale-lr", "--warmup-epochs", "0", "--min-lr", "1e-4", "--workers", "0", "--output", str(double),
            "--device", "cpu", "--no-model-ema", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
            "--scale", "1", "1", "--ratio", "1", "1", "--hflip", "0", "--color-jitter", "0", "--drop-path", "0",
            "--opt", "sgd",
            "--no-repeated-aug"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vimamba.cli", "train", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("step 6/12 (epoch 1)") == 1  # rank 0 alone reports
    assert "2 process(es) x 4" in proc.stdout
    assert_same_weights(weights(double / "last.pth"), weights(single / "last.pth"), atol=1e-5)
    one, two = records(single)[-1], records(double)[-1]
    assert "top1" in one and "top1" in two
    assert two["top1"] == one["top1"] and two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)


# ---------------------------------------------------------------------------------------------------- --init
def test_init_from_a_pretraining_checkpoint_takes_the_encoder_and_its_size(folder, tmp_path, capsys):
    from vimamba.models import VimConfig
    from vimamba.pretrain import MAEObjective, save_pretraining_checkpoint

    encoder = VimConfig(img_size=16, patch_size=4, stride=4, in_chans=3, embed_dim=8, depth=2, d_state=4,
                        num_classes=0, drop_path_rate=0.0)
    torch.manual_seed(3)
    path = save_pretraining_checkpoint(MAEObjective(encoder, mask_ratio=0.75, decoder_dim=8, decoder_depth=1,
                                                    decoder_heads=2), tmp_path / "mae.pth")
    out = tmp_path / "ft"
    cfg = tiny(folder, out, init=str(path), embed_dim=None, depth=None, patch_size=None, img_size=None, epochs=1,
               lr=1e-12, min_lr=0.0, drop_path=0.0)
    assert cfg.task.recipe == "ssl_finetune"  # --recipe auto after pretraining: MAE/ARM's fine-tuning recipe
    assert run_training(cfg).status == "finished"
    assert "initialised from" in capsys.readouterr().out
    saved = load_training_checkpoint(out / "last.pth")
    assert saved["arch"]["overrides"]["d_state"] == 4 and saved["arch"]["overrides"]["embed_dim"] == 8
    assert saved["preprocessing"]["img_size"] == [16, 16]  # the encoder's input size, not the folder default 224
    pretrained = torch.load(path, weights_only=True)["model"]
    key = "layers.1.mixer.in_proj.weight"  # trained with lr 1e-12: still the encoder's weights
    torch.testing.assert_close(saved["model"][key], pretrained[f"encoder.{key}"], rtol=0, atol=1e-6)
    # resuming rebuilds the same network without reading the pretraining file again
    path.unlink()
    assert cli(["train", "--resume", str(out / "last.pth"), "--epochs", "2", "--workers", "0"]) == 0

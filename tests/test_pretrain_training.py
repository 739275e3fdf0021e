"""``vimamba pretrain``: the pretraining task of the engine, its command, its checkpoints and their transfer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vimamba
from vimamba.checkpoints import load_checkpoint_file, make_checkpoint
from vimamba.cli import main as cli_main
from vimamba.data.images import DataError
from vimamba.models import CheckpointError, VisionMamba
from vimamba.models.variants import model_config
from vimamba.pretrain import AR_BACKWARD_CLONE_MAP, build_objective, config_for, init_classifier_from_pretraining
from vimamba.pretrain.data import resolve_unlabelled
from vimamba.pretrain.transfer import classifier_from_pretraining, read_pretraining_checkpoint

SRC = str(Path(vimamba.__file__).resolve().parents[1])

TINY = dict(model="vim_tiny_patch16_224", embed_dim=16, depth=2, d_state=4, patch_size=4, img_size=16,
            decoder_dim=16, decoder_depth=1, decoder_heads=2)


def write_nested_folder(root, count=20, size=20, seed=0):
    """``count`` RGB images spread over nested folders (the folder names are not classes), plus a text file."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ("a" if i % 3 == 0 else "b/c" if i % 3 == 1 else "d/e/f")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "README.txt").write_text("not an image")
    return root


def tiny_task(data, objective="ar", **overrides):
    from vimamba.pretrain.training import PretrainTask

    values = dict(TINY, data=str(data), heldout_images=4, vis_images=3)
    if objective == "ar":
        values["cluster_size"] = 2
    values.update(overrides)
    return PretrainTask(config_for(objective, **values), seed=0)


# ---------------------------------------------------------------------------------------------------- data
def test_heldout_images_are_set_aside_from_a_folder_and_never_trained_on(tmp_path):
    write_nested_folder(tmp_path, count=30)
    source = resolve_unlabelled(None, tmp_path, heldout_images=5, seed=3)
    assert len(source.heldout_files) == 3  # at most 10% of a folder without a validation split
    assert not set(source.heldout_files) & set(source.train_files)
    assert len(source.train_files) + len(source.heldout_files) == 30
    assert resolve_unlabelled(None, tmp_path, heldout_images=5, seed=3).heldout_files == source.heldout_files
    assert resolve_unlabelled(None, tmp_path, heldout_images=0, seed=3).heldout(None, 3) is None


def test_heldout_images_come_from_the_validation_split_when_there_is_one(tmp_path):
    write_nested_folder(tmp_path / "train", count=12)
    write_nested_folder(tmp_path / "val", count=6, seed=1)
    source = resolve_unlabelled(None, tmp_path, heldout_images=4, seed=0)
    assert len(source.train_files) == 12 and len(source.heldout_files) == 4
    assert all("val" in f.parts for f in source.heldout_files)


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        tiny_task(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize("objective", ["ar", "mae"])
def test_task_builds_the_objective_around_the_registered_encoder(tmp_path, objective):
    write_nested_folder(tmp_path, count=20)
    task = tiny_task(tmp_path, objective)
    fields = task.checkpoint_fields()
    assert fields["arch"] == {"name": "vim_tiny_patch16_224", "family": "vim", "overrides": dict(
        img_size=16, in_chans=3, num_classes=0, drop_path_rate=0.0, patch_size=4, embed_dim=16, depth=2, d_state=4,
        stride=4)}
    assert fields["class_names"] == [] and fields["preprocessing"]["img_size"] == [16, 16]
    task_config = fields["task_config"]
    assert task_config["objective"] == objective
    # the checkpoint alone rebuilds the model: registry name + overrides give the recorded encoder config
    rebuilt_cfg = model_config(fields["arch"]["name"], **fields["arch"]["overrides"]).to_dict()
    rebuilt_cfg.pop("scan_impl")
    assert rebuilt_cfg == task_config["encoder_config"]
    model = task.build_model()
    rebuilt = build_objective(model.encoder.cfg, objective, **task_config["objective_kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in
                                                                      model.state_dict().items()}
    make_checkpoint(task=task.name, model=model.state_dict(), **fields)  # the format accepts the fields

    # MAE's weight-decay rule: none on biases, norms, position embeddings and the class / mask / AR tokens
    from vimamba.pretrain import pretrain_configs

    engine_cfg = pretrain_configs(objective, {})[1]
    decay_of = {id(p): group["weight_decay"] for group in task.param_groups(model, engine_cfg) for p in group["params"]}
    decayed = {name for name, p in model.named_parameters() if decay_of[id(p)] > 0}
    tokens = {"ar": ["encoder.pos_embed", "ar_token"], "mae": ["encoder.pos_embed", "encoder.cls_token", "mask_token"]}
    assert not decayed & set(tokens[objective])
    assert all(p.ndim > 1 for name, p in model.named_parameters() if name in decayed)
    assert "encoder.layers.0.mixer.in_proj.weight" in decayed and "decoder_pred.weight" in decayed


@pytest.mark.parametrize("objective", ["ar", "mae"])
def test_task_loss_and_heldout_evaluation(tmp_path, objective):
    from torch.utils.data import DataLoader

    write_nested_folder(tmp_path, count=40)
    task = tiny_task(tmp_path, objective)
    model = task.build_model()
    train = task.train_dataset()
    assert len(train) == 36 and train[0][0].shape == (3, 16, 16)  # MAE's random resized crop at 16 px
    batch = task.collate_fn()([train[i] for i in range(4)])
    torch.manual_seed(1)
    step = task.loss(model, batch)
    torch.manual_seed(1)
    expected, _ = model(batch[0])
    assert step.batch_size == 4 and torch.equal(step.loss, expected)

    model.eval()
    heldout = task.eval_dataset()
    assert len(heldout) == 4
    with torch.no_grad():
        first = task.evaluate(model, DataLoader(heldout, batch_size=3, collate_fn=task.collate_fn()))
        again = task.evaluate(model, DataLoader(heldout, batch_size=4, collate_fn=task.collate_fn()))
        per_image = [model(heldout[i][0][None])[0].item() for i in range(4)] if objective == "ar" else None
    if objective == "ar":  # deterministic: the mean of the per-image losses, whatever the batching
        assert first["loss"] == pytest.approx(sum(per_image) / 4, rel=1e-5)
        assert again["loss"] == pytest.approx(first["loss"], rel=1e-5)
    else:  # a fixed mask: the same loss at every evaluation
        assert task.evaluate(model, DataLoader(heldout, batch_size=3, collate_fn=task.collate_fn())) == first


@pytest.mark.parametrize("objective", ["ar", "mae"])
def test_reconstructions_are_written_after_evaluation(tmp_path, objective):
    write_nested_folder(tmp_path / "data", count=40)
    task = tiny_task(tmp_path / "data", objective)
    task.on_evaluated(task.build_model(), tmp_path / "run", 100)
    with Image.open(tmp_path / "run" / "reconstructions" / "step_000100.png") as picture:
        assert picture.size[1] > 3 * 96  # three rows of enlarged 16 px images


def test_an_image_size_that_is_not_a_multiple_of_the_cluster_is_a_clear_error(tmp_path):
    write_nested_folder(tmp_path, count=20)
    with pytest.raises(ValueError, match=r"not a whole number of 2x2-patch clusters .*multiple of 8"):
        tiny_task(tmp_path, "ar", img_size=20)  # 5x5 patches of 4 px
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_task(tmp_path, "mae", img_size=18)


# ---------------------------------------------------------------------------------------------------- transfer
def test_a_labelled_format_2_checkpoint_is_refused_for_init(tmp_path, capsys):
    classifier = VisionMamba(model_config("vim_tiny_patch16_224", embed_dim=16, depth=2, d_state=4, img_size=16,
                                          patch_size=4, stride=4, num_classes=3))
    torch.save(make_checkpoint(task="classification", arch={"name": "vim_tiny_patch16_224", "family": "vim"},
                               model=classifier.state_dict(), class_names=["a", "b", "c"]), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="labelled classification checkpoint .*3 classes.*--finetune"):
        init_classifier_from_pretraining(classifier, tmp_path / "cls.pth")
    # through `vimamba train --init`: one line, no traceback
    from _train_data import make_image_folder

    data = make_image_folder(tmp_path / "labelled", per_class=(2, 1), corrupt=False)
    assert cli_main(["train", "--data", str(data), "--init", str(tmp_path / "cls.pth"), "--epochs", "1",
                     "--workers", "0", "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vimamba train: error:") and "labelled classification checkpoint" in err and "\n" not in err
    torch.save(make_checkpoint(task="segmentation", arch={"name": "vim_tiny_patch16_224", "family": "vim"},
                               model={}), tmp_path / "seg.pth")
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint, not a pretraining checkpoint"):
        read_pretraining_checkpoint(tmp_path / "seg.pth")


# ---------------------------------------------------------------------------------------------------- configuration
def test_the_pretraining_defaults_are_mae_recipe_and_every_value_can_be_changed():
    from vimamba.pretrain import pretrain_configs

    mae, engine = pretrain_configs("mae", {"output": "run"})
    assert (engine.opt_betas, engine.weight_decay, engine.min_lr, engine.warmup_lr, engine.warmup_epochs,
            engine.epochs, engine.clip_grad, engine.sched) == ((0.9, 0.95), 0.05, 0.0, 0.0, 40.0, 800, None, "cosine")
    assert engine.lr * 256 / 512 == pytest.approx(1.5e-4)  # MAE's base lr per 256 images, as a rate per 512
    assert (mae.mask_ratio, mae.scale, mae.hflip, mae.interpolation, mae.decoder_depth) == (0.75, (0.2, 1.0), 0.5,
                                                                                            "bicubic", 8)
    ar, engine = pretrain_configs("ar", {"clip_grad": 1.0, "warmup_epochs": 2, "cluster_size": 2})
    assert (engine.clip_grad, engine.warmup_epochs, ar.cluster_size, ar.decoder_depth, ar.decoder_heads) == (
        1.0, 2, 2, 4, 8)
    assert pretrain_configs("ar", {})[1].clip_grad == 3.0  # ARM clips at 3
    from vimamba.data.transforms import Preprocessing
    from vimamba.pretrain import build_pretrain_transform

    steps = build_pretrain_transform(mae, Preprocessing(img_size=32)).transforms
    assert [type(t).__name__ for t in steps] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip",
                                                 "MaybeToTensor", "Normalize"]  # nothing else
    assert (steps[0].scale, steps[1].p) == ((0.2, 1.0), 0.5)
    with pytest.raises(ValueError, match="--mask-ratio does not apply to --objective ar"):
        pretrain_configs("ar", {"mask_ratio": 0.5})
    with pytest.raises(ValueError, match="--mask-ratio"):
        pretrain_configs("mae", {"mask_ratio": 1.5})



# ---------------------------------------------------------------------------------------------------- the command
PRETRAIN = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "16", "--depth", "2", "--d-state", "4",
            "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2", "--batch-size", "4",
            "--workers", "0", "--heldout-images", "4", "--vis-images", "2", "--device", "cpu", "--warmup-epochs", "0"]
OBJECTIVE_FLAGS = {"ar": ["--objective", "ar", "--cluster-size", "2"], "mae": ["--objective", "mae"]}


@pytest.mark.parametrize("objective", ["ar", "mae"])
def test_pretrain_command_writes_a_run_that_initialises_a_classifier(tmp_path, objective):
    data, out = write_nested_folder(tmp_path / "data", count=24), tmp_path / "run"
    assert cli_main(["pretrain", "--data", str(data), *OBJECTIVE_FLAGS[objective], *PRETRAIN, "--epochs", "2",
                     "--output", str(out)]) == 0
    # 24 images: 2 held out (10%), 22 trained on -> 5 steps of 4 per epoch; an evaluation after each epoch
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    for step in (5, 10):
        with Image.open(out / "reconstructions" / f"step_{step:06d}.png") as picture:
            assert picture.size[0] == 3 * 96 + 16
    saved = load_checkpoint_file(out / "last.pth")
    assert (saved["format_version"], saved["task"], saved["step"], saved["class_names"]) == (2, "pretraining", 10, [])
    assert saved["config"]["objective"] == objective and saved["task_config"]["objective"] == objective
    assert (out / "best.pth").is_file()

    # vimamba train --init: a bidirectional classifier with only the expected new keys
    model, report = classifier_from_pretraining(out / "last.pth", num_classes=3)
    expected_new = {"ar": ["cls_token", "head.weight", "head.bias", "pos_embed class slot"],
                    "mae": ["head.weight", "head.bias"]}[objective]
    assert report.new == expected_new
    state = model.state_dict()
    encoder = {k[len("encoder."):]: v for k, v in saved["model"].items() if k.startswith("encoder.")}
    for i in range(2):
        for forward, backward in AR_BACKWARD_CLONE_MAP:
            fwd, bwd = f"layers.{i}.mixer.{forward}", f"layers.{i}.mixer.{backward}"
            assert torch.equal(state[fwd], encoder[fwd])
            if objective == "ar":  # the backward branch starts as a clone of the pretrained forward branch
                assert torch.equal(state[bwd], state[fwd])
            else:
                assert torch.equal(state[bwd], encoder[bwd])


def test_pretrain_command_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    write_nested_folder(tmp_path / "data", count=12)
    cases = [(["--data", str(tmp_path / "empty"), "--objective", "mae"], "no images under"),
             (["--data", str(tmp_path / "data"), "--objective", "ar", "--cluster-size", "3"], "whole number of 3x3"),
             (["--data", str(tmp_path / "data"), "--mask-ratio", "0.5", "--objective", "ar"], "--mask-ratio does not "
              "apply"),
             (["--data", str(tmp_path / "data")], "pass --objective ar")]
    for i, (flags, message) in enumerate(cases):
        assert cli_main(["pretrain", *flags, *PRETRAIN, "--output", str(tmp_path / f"run{i}")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vimamba pretrain: error:") and message in err and "\n" not in err, err
        assert not (tmp_path / f"run{i}").exists()  # refused before anything is written


def vimamba_pretrain(*args: str, limit: int = 120) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = ["timeout", "-s", "KILL", str(limit), sys.executable, "-m", "vimamba.cli", "pretrain", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 150):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_pretraining_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """MAE: random masks and random crops every step, so the RNG state must come back exactly."""
    data = write_nested_folder(tmp_path / "data", count=24)
    flags = ["--data", str(data), *OBJECTIVE_FLAGS["mae"], *PRETRAIN, "--steps", "16", "--save-interval", "1",
             "--eval-interval", "8"]
    code, _, err = finish(vimamba_pretrain(*flags, "--output", str(tmp_path / "whole")))
    assert code == 0, err

    killed = tmp_path / "killed"
    proc = vimamba_pretrain(*flags, "--output", str(killed))
    deadline = time.monotonic() + 120
    try:
        while not (killed / "last.pth").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to save anything: only what was written survives
    finally:
        finish(proc, timeout=30)
    step = load_checkpoint_file(killed / "last.pth")["step"]
    assert 1 <= step < 16

    code, _, err = finish(vimamba_pretrain("--resume", str(killed / "last.pth")))
    assert code == 0, err
    whole, resumed = (load_checkpoint_file(path / "last.pth") for path in (tmp_path / "whole", killed))
    assert resumed["step"] == whole["step"] == 16
    assert whole["model"].keys() == resumed["model"].keys()
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

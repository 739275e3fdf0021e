"""Bad data and bad numbers get clear answers (issue 10, cases 7, 8, 12, 13, 15)."""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _train_data import CLASSES, make_image_folder
from vimamba import cli_args
from vimamba.cli import build_parser
from vimamba.cli import main as cli
from vimamba.data import DataError, Preprocessing, collate_skipping_unreadable, resolve_dataset
from vimamba.models.checkpoint import save_weights
from vimamba.engine.config import EngineConfig
from vimamba.train.config import ClassificationConfig, resolve_config
from vimamba.train.models import create_classifier
from vimamba.train.classification import run_training


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(root: Path, out: Path, **overrides):
    values = dict(data=str(root), model="vim_tiny_patch16_224", embed_dim=16, depth=1, patch_size=4, img_size=16,
                  epochs=1, batch_size=4, lr=3e-3, unscale_lr=True, warmup_epochs=0.0, workers=0, output=str(out),
                  device="cpu", model_ema=False, aa="none", mixup=0.0, cutmix=0.0, reprob=0.0,
                  repeated_aug=False, export=False)
    values.update(overrides)
    return resolve_config(values)


# ---------------------------------------------------------------------------------------------------- case 7
def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), corrupt=False)
    (root / "train" / "zebra").mkdir()
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="zebra") as err:
        resolve_dataset(data_dir=root)
    assert "hold no images" in str(err.value)
    # the same through the command line: one line, exit 1, nothing trained
    assert cli(["train", "--data", str(root), "--output", str(tmp_path / "run"), "--epochs", "1",
                "--workers", "0", "--device", "cpu"]) == 1
    assert not (tmp_path / "run" / "last.pth").exists()


def test_an_empty_class_folder_in_a_validation_split_keeps_the_training_classes(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), corrupt=False)
    shutil.rmtree(root / "val" / CLASSES[2])
    (root / "val" / CLASSES[2]).mkdir()  # a class with no validation images is fine: labels come from train/
    spec = resolve_dataset(data_dir=root)
    assert spec.class_names == list(CLASSES)


def test_a_one_class_dataset_is_refused_for_training(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(2, 1), corrupt=False)
    for name in CLASSES[1:]:
        shutil.rmtree(root / "train" / name)
        shutil.rmtree(root / "val" / name)
    with pytest.raises(DataError, match="at least 2 classes"):
        resolve_dataset(data_dir=root)


# ---------------------------------------------------------------------------------------------------- case 8
def test_batch_size_one_skips_an_unreadable_image_and_strict_mode_stops(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=(3, 1), corrupt=True)  # 9 good + broken.png
    summary = run_training(tiny(root, tmp_path / "run", batch_size=1)).summary
    assert summary["status"] == "finished"
    assert summary["skipped_images"] == 1
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(DataError, match="broken.png"):
        run_training(tiny(root, tmp_path / "strict", batch_size=1, strict_data=True))


def test_a_batch_of_only_unreadable_images_collates_to_an_empty_batch():
    images, targets, skipped = collate_skipping_unreadable([None])
    assert images.shape[0] == 0 and targets.shape == (0,) and skipped == 1


def test_mixup_with_batches_of_one_is_refused_clearly():
    with pytest.raises(ValueError, match="--batch-size must be >= 2"):
        resolve_config(dict(data="x", batch_size=1))


# ---------------------------------------------------------------------------------------------------- case 12
def _numeric_actions(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_actions(sub, path + (name,))
        elif action.type in (int, float):
            yield " ".join(path), action.option_strings or action.dest


def test_every_numeric_flag_of_every_subcommand_is_validated_where_it_is_parsed():
    unchecked = list(_numeric_actions(build_parser()))
    assert unchecked == []


def test_every_numeric_training_option_has_a_check():
    numeric = [f for cls in (EngineConfig, ClassificationConfig) for f in fields(cls)
               if any(t in str(f.type) for t in ("int", "float"))]
    assert len(numeric) > 30
    assert [f.name for f in numeric if f.metadata.get("check") is None] == []


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "x.pth", "--data", "d", "--img-size", "-3"], "argument --img-size: must be an image "
                                                                           "size in pixels"),
    (["info", "vim_tiny_patch16_224", "--img-size", "-5"], "argument --img-size"),
    (["predict", "--checkpoint", "x.pth", "a.png", "--top-k", "0"], "argument --top-k: must be a positive integer"),
    (["eval", "--checkpoint", "x.pth", "--data", "d", "--crop-pct", "1.5"], "argument --crop-pct"),
    (["eval", "--checkpoint", "x.pth", "--data", "d", "--workers", "-1"], "argument --workers"),
    (["train", "--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
    (["train", "--lr", "-1"], "argument --lr: must be a number > 0"),
    (["train", "--reprob", "1.5"], "argument --reprob: must be a number between 0 and 1"),
    (["train", "--scale", "0.5", "2"], "argument --scale"),
    (["train", "--batch-size", "abc"], "argument --batch-size: must be a positive integer, got 'abc'"),
    (["train", "--lr", "inf"], "argument --lr"),
    (["segment", "train", "--data", "d", "--output", "o", "--iterations", "-1"], "argument --steps/--iterations"),
    (["segment", "predict", "--checkpoint", "c", "i.png", "--output", "o", "--alpha", "2"], "argument --alpha"),
    (["detect", "predict", "c", "i.png", "--output", "o", "--score-thresh", "-0.1"], "argument --score-thresh"),
    (["detect", "shapes", "root", "--size", "0", "8"], "argument --size"),
    (["bench", "--resolutions", "-224"], "argument --resolutions"),
    (["bench", "--batch-size", "0"], "argument --batch-size"),
    (["bench", "--max-memory-gb", "-1"], "argument --max-memory-gb: must be a number > 0"),
    (["data", "fashion-mnist", "--samples", "s", "--num", "-2"], "argument --num"),
])
def test_bad_numbers_are_one_line_errors_of_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("vimamba")


def test_info_refuses_a_size_below_one_patch(capsys):
    assert cli(["info", "vim_tiny_patch16_224", "--img-size", "8"]) == 1
    assert "smaller than the patch size 16" in capsys.readouterr().err
    assert cli(["info", "vim_tiny_patch16_224", "--img-size", "32"]) == 0
    assert "2x2 patches" in capsys.readouterr().out


def test_types_accept_numbers_and_text_alike():
    assert cli_args.positive_int("3") == cli_args.positive_int(3) == 3
    assert cli_args.probability("0.25") == 0.25
    for bad in ("0", -1, "1.5", True, "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_args.positive_int(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        cli_args.probability("nan")
    with pytest.raises(ValueError, match="--lr must be a number > 0"):
        resolve_config(dict(data="x", lr=0.0))  # the same checks guard the Python API


# ---------------------------------------------------------------------------------------------------- case 13
def test_eval_reads_the_classes_of_the_split_it_evaluates(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=(2, 3), corrupt=False)
    extra = root / "train" / "extra"
    extra.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(extra / "0.png")  # train/ has a 4th class, val/ has not
    model, _ = create_classifier("vim_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=1,
                                 num_classes=3)
    pre = Preprocessing(img_size=(16, 16), crop_pct=1.0)
    ckpt = save_weights(model, tmp_path / "three.pth", class_names=list(CLASSES), preprocessing=pre.to_dict())
    assert cli(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--workers", "0", "--device", "cpu",
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 9

    # a validation class the checkpoint does not know: the message names the folder and the unknown class
    (root / "val" / "zebra").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "val" / "zebra" / "0.png")
    assert cli(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--workers", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"'{root / 'val'}'" in err and "4 class folder(s)" in err and "['zebra']" in err


# ---------------------------------------------------------------------------------------------------- case 15
def test_bench_refuses_an_input_larger_than_the_memory_cap_before_allocating_it():
    from vimamba.bench.measure import Configuration
    from vimamba.bench.runner import run_isolated

    # 8 x 3 x 4096 x 4096 float32 = 1.5 GiB under a 0.5 GiB cap: refused without allocating it (in a child
    # process, as `vimamba bench` runs it, so a regression caps no memory of this one)
    result = run_isolated(Configuration(model="vim_tiny_patch16_224", resolution=4096, batch_size=8,
                                        model_args=dict(depth=1, embed_dim=16), max_memory_bytes=512 * 1024 ** 2,
                                        warmup=0, repeats=1, time_budget_s=1.0), timeout_s=120)
    assert result.status == "oom" and "the input alone (8x3x4096x4096 float32, 1.5 GiB)" in result.message
    assert result.peak_memory_bytes is None

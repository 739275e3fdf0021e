"""The one loader: a checkpoint of every task and of every earlier layout loads, gives the outputs of the model it
was saved from, is described by `vimamba info`, and wrong kinds or damaged files are one clear error."""
import argparse
import json

import pytest
import torch

import vimamba
from vimamba.loader import build_model, load_model
from vimamba.checkpoints import (CheckpointFormatError, make_checkpoint, read_checkpoint,
                                 vim_arch)
from vimamba.cli import main
from vimamba.data.transforms import Preprocessing
from vimamba.dense.backbone import BackboneConfig
from vimamba.dense.checkpoint import build_dense_model, load_dense_model
from vimamba.dense.detector import DetectorConfig
from vimamba.dense.segmentor import SegmentorConfig
from vimamba.models.vim import VimConfig
from vimamba.pretrain import MAEObjective
from vimamba.train.models import load_classifier

from conftest import tiny_vim

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
PRE = Preprocessing(img_size=(16, 16)).to_dict()
TINY_BACKBONE = dict(embed_dim=16, depth=2, d_state=4, patch_size=8, stride=8, img_size=32, drop_path_rate=0.0)


def _images(batch=2, channels=3, size=16, seed=0):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model, images):
    """What a model computes, as one tensor (detectors: the backbone's pyramid and the detections' boxes)."""
    with torch.no_grad():
        if isinstance(model, MAEObjective):
            return model.extract_features(images)
        if hasattr(model, "roi_heads"):
            pyramid = model.backbone(images)
            boxes = [d["boxes"] for d in model(list(images))]
            return torch.cat([p.flatten() for p in pyramid.values()] + [b.flatten() for b in boxes])
        return model(images)


def _assert_same_outputs(loaded, original, images):
    assert not loaded.training
    torch.testing.assert_close(_outputs(loaded, images), _outputs(original.eval(), images), rtol=0, atol=0)


def _seeded(build):
    torch.manual_seed(0)
    return build()


# ---------------------------------------------------------------------------------------------------- format 2
def _vim_classifier():
    return tiny_vim()


def _timm_classifier():
    import timm

    return timm.create_model("deit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                             num_classes=5)


def _segmentor_config():
    return SegmentorConfig(num_classes=3, channels=8, aux_channels=8, dropout=0.0,
                           backbone=BackboneConfig(vim=TINY_BACKBONE, out_indices=(1,)))


def _detector_config():
    backbone = BackboneConfig(vim=TINY_BACKBONE, out_indices=(-1,), out_channels=16, pyramid_norm="ln",
                              extra_pool=True)
    return DetectorConfig(num_classes=3, backbone=backbone, masks=False, min_size=32, max_size=32,
                          anchor_sizes=(4, 8, 16, 32, 64), head_channels=16, box_fc=32, box_head_convs=1,
                          rpn_post_nms_top_n_test=20, detections_per_img=5, box_score_thresh=0.0)


def _encoder_config():
    return VimConfig(img_size=16, patch_size=4, stride=4, in_chans=3, embed_dim=16, depth=2, d_state=4,
                     num_classes=0, drop_path_rate=0.0)


def _objective():
    return MAEObjective(_encoder_config(), mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def _current_format(task):
    """(model, the format-2 dict a run of ``task`` writes for it, input images)."""
    if task == "classification":
        model, ema = _seeded(_vim_classifier), tiny_vim()
        arch = vim_arch(model.cfg.to_dict(), "vim_tiny_patch16_224")
        return model, make_checkpoint(task=task, arch=arch, model=model.state_dict(), model_ema=ema.state_dict(),
                                      preprocessing=PRE, class_names=CLASSES, step=12, epoch=3,
                                      config={"lr": 1e-3}), _images()
    if task == "classification-timm":
        model = _seeded(_timm_classifier)
        arch = {"name": "deit_tiny_patch16_224", "family": "timm",
                "overrides": dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5)}
        return model, make_checkpoint(task="classification", arch=arch, model=model.state_dict(),
                                      preprocessing=PRE, class_names=CLASSES, step=4), _images()
    if task in ("segmentation", "detection"):
        config = _segmentor_config() if task == "segmentation" else _detector_config()
        model = _seeded(lambda: build_dense_model(task, config))
        backbone = config.backbone
        arch = {"name": backbone.model, "family": "vim", "overrides": dict(backbone.vim)}
        return model, make_checkpoint(task=task, arch=arch, model=model.state_dict(),
                                      task_config={"dense_config": config.to_dict()}, class_names=["a", "b", "c"],
                                      data_config={"crop_size": [32, 32]}, step=6), _images(size=32)
    model = _seeded(_objective)
    encoder = _encoder_config().to_dict()
    return model, make_checkpoint(task="pretraining", arch=vim_arch(encoder), model=model.state_dict(),
                                  task_config={"objective": "mae", "objective_kwargs": dict(model.hparams),
                                               "encoder_config": encoder}, preprocessing=PRE, step=9), _images()


TASKS = ["classification", "classification-timm", "segmentation", "detection", "pretraining"]


@pytest.mark.parametrize("task", TASKS)
def test_current_format_of_every_task_loads_with_the_same_outputs(tmp_path, task):
    model, checkpoint, images = _current_format(task)
    path = tmp_path / "last.pth"
    torch.save(checkpoint, path)
    ckpt = read_checkpoint(path)
    assert ckpt.task == checkpoint["task"] and ckpt.source_format == "vimamba-2" and ckpt.step == checkpoint["step"]
    assert ckpt.class_names == checkpoint["class_names"] and ckpt.arch == checkpoint["arch"]
    loaded = build_model(ckpt, task=checkpoint["task"])
    _assert_same_outputs(loaded, model, images)
    _assert_same_outputs(vimamba.load_model(path), model, images)  # the public entry point, the same loader


def test_ema_weights_are_chosen_on_request(tmp_path):
    model, checkpoint, images = _current_format("classification")
    torch.save(checkpoint, tmp_path / "c.pth")
    ema = tiny_vim()
    ema.load_state_dict(checkpoint["model_ema"])
    _assert_same_outputs(load_model(tmp_path / "c.pth", weights="ema"), ema, images)
    loaded = load_classifier(tmp_path / "c.pth", weights="ema")
    assert loaded.class_names == CLASSES and loaded.preprocessing == Preprocessing.from_dict(PRE)
    assert "'model_ema'" in loaded.description
    checkpoint["model_ema"] = None
    torch.save(checkpoint, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointFormatError, match="no EMA weights"):
        load_model(tmp_path / "no_ema.pth", weights="ema")


def test_dense_commands_read_the_current_format(tmp_path):
    model, checkpoint, images = _current_format("segmentation")
    torch.save(checkpoint, tmp_path / "seg.pth")
    loaded, info = load_dense_model(tmp_path / "seg.pth", task="segmentation")
    assert info.task == "segmentation" and info.class_names == ["a", "b", "c"] and info.iteration == 6
    assert info.config == _segmentor_config() and info.data_config == {"crop_size": [32, 32]}
    _assert_same_outputs(loaded, model, images)


# ---------------------------------------------------------------------------------------------------- earlier files
def _legacy(kind, tmp_path):
    """(model, path of the file earlier vimamba versions / the official code wrote for it, expected task, images)."""
    path = tmp_path / f"{kind}.pth"
    if kind == "vimamba-1-train":  # train/runner.py + train/checkpointing.py
        kwargs = dict(img_size=16, patch_size=4, stride=4, embed_dim=16, depth=2, d_state=4, num_classes=5,
                      drop_path_rate=0.0)
        spec = {"family": "vim", "name": "vim_tiny_patch16_224", "kwargs": kwargs}
        model = _seeded(lambda: vimamba.create_model("vim_tiny_patch16_224", **kwargs))
        config = model.cfg.to_dict()
        config.pop("scan_impl")
        torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "optimizer": {}, "epoch": 2,
                    "batch_in_epoch": 0, "global_step": 40, "rng": [], "best_metric": 50.0, "metric_name": "top1",
                    "metric_mode": "max", "config": {"epochs": 3}, "model_spec": spec, "class_names": CLASSES,
                    "preprocessing": PRE, "vimamba_config": config, "arch": None}, path)
        return model, path, "classification", _images()
    if kind == "vimamba-1-train-timm":
        model = _seeded(_timm_classifier)
        spec = {"family": "timm", "name": "deit_tiny_patch16_224",
                "kwargs": dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5)}
        torch.save({"model": model.state_dict(), "global_step": 3, "epoch": 1, "batch_in_epoch": 0,
                    "config": {}, "model_spec": spec, "class_names": CLASSES, "preprocessing": PRE}, path)
        return model, path, "classification", _images()
    if kind == "vimamba-1-dense":  # dense/engine.py + dense/checkpoint.py
        config = _segmentor_config()
        model = _seeded(lambda: build_dense_model("segmentation", config))
        torch.save({"model": model.state_dict(), "optimizer": {}, "scaler": {}, "epoch": 0, "batch_in_epoch": 2,
                    "global_step": 2, "config": {"iterations": 2},
                    "dense_task": "segmentation", "dense_config": config.to_dict(), "class_names": ["a", "b", "c"],
                    "data_config": {"crop_size": [32, 32]}}, path)
        return model, path, "segmentation", _images(size=32)
    if kind == "vimamba-1-pretraining":  # pretrain/transfer.py save_pretraining_checkpoint
        model = _seeded(_objective)
        encoder = _encoder_config().to_dict()
        encoder.pop("scan_impl")
        record = {"objective": "mae", "encoder_config": encoder, "objective_kwargs": dict(model.hparams),
                  "objective_config": {"epochs": 1}, "preprocessing": PRE}
        torch.save({"model": model.state_dict(), "pretraining": record}, path)
        return model, path, "pretraining", _images()
    model = _seeded(_vim_classifier)
    if kind == "vimamba-1-weights":  # models/checkpoint.py save_weights before the current format
        config = model.cfg.to_dict()
        config.pop("scan_impl")
        torch.save({"model": model.state_dict(), "vimamba_config": config, "class_names": CLASSES,
                    "arch": "vim_tiny_patch16_224", "preprocessing": PRE}, path)
    elif kind == "official":  # hustvl/Vim main.py: the shapes are all there is
        model = _seeded(lambda: vimamba.create_model("vim_tiny_patch16_224", embed_dim=16, depth=2, d_state=4,
                                                     num_classes=5))
        torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "optimizer": {}, "epoch": 299,
                    "args": argparse.Namespace(lr=5e-4)}, path)
        return model, path, "classification", _images(size=224)
    elif kind == "state_dict":
        torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    else:  # safetensors: `vimamba convert` / `vimamba export --format safetensors`
        path = vimamba.save_weights(model, tmp_path / "w.safetensors", class_names=CLASSES, preprocessing=PRE)
    return model, path, "classification", _images()


LEGACY = ["vimamba-1-train", "vimamba-1-train-timm", "vimamba-1-dense", "vimamba-1-pretraining",
          "vimamba-1-weights", "official", "state_dict", "safetensors"]


@pytest.mark.parametrize("kind", LEGACY)
def test_earlier_and_foreign_files_still_load(tmp_path, kind):
    model, path, task, images = _legacy(kind, tmp_path)
    ckpt = read_checkpoint(path)
    assert ckpt.task == task and ckpt.source_format == kind.replace("-timm", "")
    _assert_same_outputs(load_model(path), model, images)
    if kind in ("vimamba-1-train", "vimamba-1-weights", "safetensors"):
        assert ckpt.class_names == CLASSES and ckpt.preprocessing == PRE
    if kind == "vimamba-1-train":
        assert ckpt.step == 40 and ckpt.ema_weights is not None
    if kind == "official":
        assert ckpt.vim_config()["embed_dim"] == 16 and ckpt.config == {"lr": 5e-4}


# ---------------------------------------------------------------------------------------------------- vimamba info
@pytest.mark.parametrize("kind", ["classification", "segmentation", "detection", "pretraining", "official",
                                  "vimamba-1-dense"])
def test_info_describes_every_kind(tmp_path, capsys, kind):
    if kind in LEGACY:
        _, path, task, _ = _legacy(kind, tmp_path)
        step = {"official": None, "vimamba-1-dense": 2}[kind]
    else:
        _, checkpoint, _ = _current_format(kind)
        path, task, step = tmp_path / "ckpt.pth", kind, checkpoint["step"]
        torch.save(checkpoint, path)
    assert main(["info", str(path), "--json", "--img-size", "32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == task and info["step"] == step
    assert info["source_format"] == ("vimamba-2" if kind not in LEGACY else kind)
    assert info["vim_config"]["embed_dim"] == 16  # the classifier, backbone or encoder
    assert info["tokens"]["32x32"]["tokens"] == (32 // info["vim_config"]["stride"]) ** 2 + 1
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"task: {task}" in text and "architecture: vim_tiny_patch16_224 (vim)" in text
    if task == "classification" and kind != "official":
        assert "classes (5): ant, bee, cat, dog, eel" in text and "preprocessing: " in text


def test_info_of_foreign_weights_says_what_they_look_like(tmp_path, capsys):
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, tmp_path / "vit.pth")
    assert main(["info", str(tmp_path / "vit.pth")]) == 0
    assert "task: unknown: a ViT/DeiT" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- refusals
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_checkpoint_of_another_task_is_one_clear_error(tmp_path, capsys):
    for task in ("detection", "pretraining"):
        _, checkpoint, _ = _current_format(task)
        torch.save(checkpoint, tmp_path / f"{task}.pth")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    assert main(["predict", "--checkpoint", str(tmp_path / "detection.pth"), str(image)]) == 1
    line = _one_line_error(capsys)
    assert "is a detection checkpoint, not a classification one" in line and "vimamba detect" in line
    pretraining = str(tmp_path / "pretraining.pth")
    assert main(["convert", "--checkpoint", pretraining, "--output", str(tmp_path / "w.safetensors")]) == 1
    assert "is a pretraining checkpoint" in _one_line_error(capsys)
    assert main(["export", "--checkpoint", pretraining, "--output", str(tmp_path / "p.onnx")]) == 1
    assert "is a pretraining checkpoint" in _one_line_error(capsys)
    _, classifier, _ = _current_format("classification")
    torch.save(classifier, tmp_path / "classifier.pth")
    with pytest.raises(CheckpointFormatError, match="classification checkpoint, not a segmentation or detection one.*"
                                                    "--pretrained"):
        load_dense_model(tmp_path / "classifier.pth")
    with pytest.raises(CheckpointFormatError, match="detection checkpoint, not a segmentation one"):
        load_dense_model(tmp_path / "detection.pth", task="segmentation")
    with pytest.raises(CheckpointFormatError, match="segmentation checkpoint, not the weights of a Vim classifier"):
        _, seg, _ = _current_format("segmentation")
        torch.save(seg, tmp_path / "seg.pth")
        vimamba.create_model("vim_tiny_patch16_224", pretrained=tmp_path / "seg.pth")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.safetensors"))


def test_damaged_files_are_one_clear_error(tmp_path):
    model, checkpoint, _ = _current_format("classification")
    good = tmp_path / "good.pth"
    torch.save(checkpoint, good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="cut.pth.*truncated"):
        read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.safetensors")
    torch.save({**checkpoint, "format_version": 3}, tmp_path / "future.pth")
    with pytest.raises(CheckpointFormatError, match="format version 3.*Upgrade vimamba"):
        read_checkpoint(tmp_path / "future.pth")
    torch.save({**checkpoint, "task": "dreaming"}, tmp_path / "bad_task.pth")
    with pytest.raises(CheckpointFormatError, match="damaged vimamba checkpoint: task 'dreaming'"):
        read_checkpoint(tmp_path / "bad_task.pth")
    torch.save({**checkpoint, "model": {"head.weight": "not a tensor"}}, tmp_path / "bad_weights.pth")
    with pytest.raises(CheckpointFormatError, match="no usable weights under 'model'"):
        read_checkpoint(tmp_path / "bad_weights.pth")
    wrong_arch = {**checkpoint, "arch": {**checkpoint["arch"], "overrides": {**checkpoint["arch"]["overrides"],
                                                                              "depth": 3}}}
    torch.save(wrong_arch, tmp_path / "wrong_arch.pth")
    with pytest.raises(CheckpointFormatError, match="missing keys.*layers.2"):
        load_model(tmp_path / "wrong_arch.pth")
    _, seg, _ = _current_format("segmentation")
    seg["task_config"]["dense_config"]["colour"] = "blue"
    torch.save(seg, tmp_path / "bad_seg.pth")
    with pytest.raises(CheckpointFormatError, match="segmentation configuration this vimamba cannot build.*colour"):
        load_model(tmp_path / "bad_seg.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointFormatError, match="holds a list, not a checkpoint"):
        read_checkpoint(tmp_path / "list.pth")
    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointFormatError, match="foreign.pth.*pretraining objective.*without the record"):
        load_model(tmp_path / "foreign.pth")


def test_pretraining_checkpoints_of_every_layout_initialise_a_classifier(tmp_path):
    from vimamba.loader import pretraining_checkpoint
    from vimamba.pretrain import classifier_from_pretraining

    objective, checkpoint, _ = _current_format("pretraining")
    torch.save(checkpoint, tmp_path / "current.pth")
    _, legacy, _, _ = _legacy("vimamba-1-pretraining", tmp_path)
    for path in (tmp_path / "current.pth", legacy):
        pretrained = pretraining_checkpoint(read_checkpoint(path))
        assert pretrained.objective == "mae" and pretrained.record["preprocessing"] == PRE
        classifier, report = classifier_from_pretraining(pretrained, num_classes=3)
        assert report.new == ["head.weight", "head.bias"]
        torch.testing.assert_close(classifier.layers[1].mixer.A_log, objective.encoder.layers[1].mixer.A_log)

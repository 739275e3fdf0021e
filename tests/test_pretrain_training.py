"""``vimamba pretrain``: the pretraining task of the engine, its command, its checkpoints and their transfer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vimamba.checkpoints import make_checkpoint
from vimamba.data.images import DataError
from vimamba.models import CheckpointError, VisionMamba
from vimamba.models.variants import model_config
from vimamba.pretrain import AR_BACKWARD_CLONE_MAP, build_objective, config_for, init_classifier_from_pretraining
from vimamba.pretrain.data import resolve_unlabelled
from vimamba.pretrain.transfer import read_pretraining_checkpoint

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
def test_a_labelled_format_2_checkpoint_is_refused_for_init(tmp_path):
    classifier = VisionMamba(model_config("vim_tiny_patch16_224", embed_dim=16, depth=2, d_state=4, img_size=16,
                                          patch_size=4, stride=4, num_classes=3))
    torch.save(make_checkpoint(task="classification", arch={"name": "vim_tiny_patch16_224", "family": "vim"},
                               model=classifier.state_dict(), class_names=["a", "b", "c"]), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="labelled classification checkpoint .*3 classes.*--finetune"):
        init_classifier_from_pretraining(classifier, tmp_path / "cls.pth")
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
    with pytest.raises(ValueError, match="--mask-ratio does not apply to --objective ar"):
        pretrain_configs("ar", {"mask_ratio": 0.5})
    with pytest.raises(ValueError, match="--mask-ratio"):
        pretrain_configs("mae", {"mask_ratio": 1.5})

"""The generic training infrastructure: optimizer groups and schedule, precision guard, checkpoints, samplers."""
from __future__ import annotations

import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from vimamba import create_model
from vimamba.engine.checkpointing import (CheckpointManager, GracefulInterrupt, TrainingCheckpointError,
                                         capture_rng_state, load_training_checkpoint, restore_rng_state)
from vimamba.train.config import RECIPES, pick_recipe, resolve_config
from vimamba.engine.optim import build_param_groups, create_optimizer, create_scheduler, scale_lr
from vimamba.engine.precision import MixedPrecision, NonFiniteLossError
from vimamba.engine.sampling import ShardedEvalSampler, build_train_sampler


def tiny_vim():
    return create_model("vim_tiny_patch16_224", embed_dim=16, depth=2, patch_size=4, stride=4, img_size=8,
                        num_classes=3)


# ---------------------------------------------------------------------------------------------------- optimizer
def _decayed_names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}


def test_weight_decay_groups_follow_the_official_rules():
    model = tiny_vim()
    decayed = _decayed_names(model, build_param_groups(model, 0.1))
    expected = {n for n, p in model.named_parameters()
                if p.ndim >= 2 and not n.endswith(".bias") and n not in ("pos_embed", "cls_token")}
    assert decayed == expected
    assert "layers.0.mixer.A_log" in decayed and "layers.0.mixer.D" not in decayed  # the official behaviour
    without_ssm = _decayed_names(model, build_param_groups(model, 0.1, no_decay_ssm=True))
    assert without_ssm == {n for n in expected if not n.endswith(("A_log", "A_b_log"))}


def test_layer_decay_scales_depth_groups():
    model = tiny_vim()
    groups = build_param_groups(model, 0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    # groups: stem (0), layers.0 (1), layers.1 (2), norm_f / head (3): scale 0.5 ** (3 - depth)
    assert scale["pos_embed"] == pytest.approx(0.125)
    assert scale["layers.0.mixer.in_proj.weight"] == pytest.approx(0.25)
    assert scale["layers.1.mixer.in_proj.weight"] == pytest.approx(0.5)
    assert scale["head.weight"] == pytest.approx(1.0)


def test_lr_scaling_and_per_iteration_cosine_schedule():
    assert scale_lr(5e-4, 1024) == pytest.approx(1e-3)
    model = torch.nn.Linear(2, 2)
    base, warmup_lr, min_lr, epochs, per_epoch, warmup_epochs = 1e-3, 1e-6, 1e-5, 10, 4, 2
    opt = create_optimizer(model, lr=base, weight_decay=0.05)
    sched = create_scheduler(opt, epochs=epochs, updates_per_epoch=per_epoch, warmup_epochs=warmup_epochs,
                             warmup_lr=warmup_lr, min_lr=min_lr)
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    for step in (0, 1, 5, 8, 13, 27, 39):
        sched.step_update(step)
        if step < warmup:  # linear from warmup_lr towards base
            expected = warmup_lr + step * (base - warmup_lr) / warmup
        else:  # cosine over the whole run, t counted from 0 (timm / official)
            expected = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * step / total))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9), step


def test_recipes_pick_the_official_settings():
    assert pick_recipe("vim_tiny_patch16_224", finetune=False, demo=False) == "vim_tiny"
    assert pick_recipe("vim_small_patch16_stride8_224", finetune=True, demo=False) == "vim_ft_stride8"
    assert pick_recipe("deit_tiny_patch16_224", finetune=False, demo=False) == "deit"
    run, task = resolve_config({"data": "/x", "model": "vim_tiny_patch16_224", "lr": 1e-4})
    assert (task.recipe, run.weight_decay, task.drop_path, run.lr) == ("vim_tiny", 0.1, 0.0, 1e-4)  # flags win
    run, task = resolve_config({"data": "/x", "model": "vim_small_patch16_stride8_224", "finetune": "a.pth"})
    assert (run.epochs, run.lr, run.min_lr, run.weight_decay) == (30, 5e-6, 1e-5, 1e-8)
    assert resolve_config({}).task.recipe == "demo" and RECIPES["demo"]["dataset"] == "fashion-mnist"
    saved = resolve_config({"data": "/x", "epochs": 7}).to_dict()
    assert resolve_config({"epochs": 9}, saved=saved).engine.epochs == 9  # resuming: saved config, flags override
    with pytest.raises(ValueError, match="--finetune"):
        resolve_config({"embed_dim": 32}, saved=saved)
    with pytest.raises(ValueError, match="--resume continues"):
        resolve_config({"data": "/x", "resume": "a", "finetune": "b"})


def test_a_recipes_vim_only_sizes_do_not_reach_a_deit():
    """The demo recipe sets Vim sizes (stride, d_state); a DeiT trained by the same recipe keeps its own, while the
    same setting given as a flag is refused for a DeiT."""
    from vimamba.train.models import create_classifier

    assert RECIPES["demo"].get("stride") is not None
    vim = resolve_config({"model": "vim_tiny_patch16_224"}).task
    assert (vim.stride, vim.d_state) == (RECIPES["demo"]["stride"], RECIPES["demo"].get("d_state"))
    deit = resolve_config({"model": "deit_tiny_patch16_224", "embed_dim": 32, "depth": 1, "num_heads": 2}).task
    assert (deit.stride, deit.d_state) == (None, None) and deit.patch_size == RECIPES["demo"]["patch_size"]
    model, _ = create_classifier(deit.model, img_size=28, in_chans=1, num_classes=10, patch_size=deit.patch_size,
                                 embed_dim=32, depth=1, num_heads=2, stride=deit.stride, d_state=deit.d_state)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    explicit = resolve_config({"model": "deit_tiny_patch16_224", "d_state": 8}).task
    with pytest.raises(ValueError, match="--d-state applies to Vim models only"):
        create_classifier(explicit.model, d_state=explicit.d_state)


# ---------------------------------------------------------------------------------------------------- precision
def _step(precision, model, opt, poison=False, where=""):
    with precision.autocast():
        loss = model(torch.ones(3, 4)).float().square().mean()
    if poison:
        loss = loss + float("nan")  # a NaN loss whose gradients stay finite: only the loss check can catch it
    precision.backward(loss)
    return precision.step(opt, model.parameters(), loss_finite=precision.is_finite(loss), where=where)


@pytest.mark.parametrize("mode", ["off", "bf16"])
def test_non_finite_steps_are_skipped_then_stop_the_run(mode):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    precision = MixedPrecision(mode, max_bad_steps=3)
    assert _step(precision, model, opt).stepped
    weights, moments = model.weight.detach().clone(), opt.state[model.weight]["exp_avg"].clone()
    for _ in range(2):
        outcome = _step(precision, model, opt, poison=True)
        assert not outcome.stepped and outcome.reason == "non-finite loss"
    assert torch.equal(model.weight, weights) and torch.equal(opt.state[model.weight]["exp_avg"], moments)
    assert _step(precision, model, opt).stepped and precision.consecutive_bad == 0  # a good step resets the count
    after_good = model.weight.detach().clone()
    model.weight.register_hook(lambda grad: grad * float("inf"))  # an inf gradient with a finite loss
    for i in range(2):
        assert _step(precision, model, opt).reason == "non-finite gradient"
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row") as err:
        _step(precision, model, opt, where="step 2")
    assert "--amp off" in str(err.value) and "step 2" in str(err.value)
    assert torch.equal(model.weight, after_good)  # the skipped steps left the weights alone
    assert precision.skipped_steps == 5


def test_fp16_overflow_is_left_to_the_loss_scaler():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = MixedPrecision("fp16", max_bad_steps=1)
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)  # certain to overflow
    outcome = _step(precision, model, opt)
    assert not outcome.stepped and outcome.reason == "fp16 overflow"  # no NonFiniteLossError with max_bad_steps=1
    assert precision.scaler.get_scale() < 2.0 ** 60


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_checkpoint_manager_last_best_and_refusals(tmp_path):
    model = torch.nn.Linear(2, 2)
    manager = CheckpointManager(tmp_path, metric="top1", mode="max")
    state = lambda step: dict(task="classification", arch={"name": "linear", "family": "timm"},  # noqa: E731
                              model=model.state_dict(), optimizer={}, step=step)
    manager.save(state(1), metric_value=50.0)
    manager.save(state(2), metric_value=40.0)  # worse: best.pth keeps step 1
    assert load_training_checkpoint(tmp_path / "last.pth")["step"] == 2
    best = load_training_checkpoint(tmp_path / "best.pth")
    assert best["step"] == 1 and best["best_metric"] == {"name": "top1", "mode": "max", "value": 50.0} and best["rng"]
    assert best["format_version"] == 2
    before = (tmp_path / "last.pth").read_bytes()
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(TrainingCheckpointError, match="NaN"):
        manager.save(state(3))
    assert (tmp_path / "last.pth").read_bytes() == before  # the good checkpoint is intact
    (tmp_path / "bad.pth").write_bytes(before[:100])
    with pytest.raises(TrainingCheckpointError, match="truncated"):
        load_training_checkpoint(tmp_path / "bad.pth")


def test_signals_become_a_flag():
    with GracefulInterrupt(message=False) as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested == signal.SIGTERM and interrupt.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is not interrupt._handle  # handlers restored


# ---------------------------------------------------------------------------------------------------- samplers
def test_ranks_together_draw_the_single_process_batches():
    dataset, batch, world = list(range(23)), 3, 2
    single = build_train_sampler(dataset, seed=5)
    single.set_epoch(4)
    order = list(single)
    shards = []
    for rank in range(world):
        sampler = build_train_sampler(dataset, seed=5, rank=rank, world_size=world)
        sampler.set_epoch(4)
        shards.append(list(sampler))
    for k in range(len(dataset) // (batch * world)):
        together = sorted(i for s in shards for i in s[k * batch:(k + 1) * batch])
        assert together == sorted(order[k * batch * world:(k + 1) * batch * world])
    single.set_epoch(4)
    single.skip(7)
    assert list(single) == order[7:] and list(single) == order  # skipping applies to one epoch only


def test_sharded_eval_sampler_covers_each_sample_once():
    parts = [list(ShardedEvalSampler(range(10), rank, 3)) for rank in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))

"""Self-supervised pretraining: the AR and MAE objectives, the transfer to a classifier, and frozen-feature probes."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vimamba.cli import main as cli_main
from vimamba.models import CheckpointError, VimConfig, VisionMamba, save_weights
from vimamba.ops import selective_scan_reference
from vimamba.pretrain import (AR_BACKWARD_CLONE_MAP, ARObjective, ForwardOnlyVim, MAEObjective,
                              init_classifier_from_pretraining, knn_predict,
                              save_pretraining_checkpoint, save_reconstruction_grid)
from vimamba.pretrain.causal import ForwardOnlyMixer
from vimamba.pretrain.probe import train_linear_probe


def encoder_cfg(**overrides) -> VimConfig:
    """16x16 one-channel images, patch 2 -> an 8x8 grid; with 2x2 clusters: 16 clusters of 4 patches."""
    cfg = dict(img_size=16, patch_size=2, stride=2, in_chans=1, embed_dim=16, depth=2, d_state=4, num_classes=0,
               drop_path_rate=0.0)
    cfg.update(overrides)
    return VimConfig(**cfg)


def tiny_ar(**cfg_overrides) -> ARObjective:
    return ARObjective(encoder_cfg(**cfg_overrides), cluster_size=2, decoder_dim=16, decoder_depth=2,
                       decoder_heads=2).eval()


def tiny_mae(**cfg_overrides) -> MAEObjective:
    return MAEObjective(encoder_cfg(**cfg_overrides), mask_ratio=0.75, decoder_dim=16, decoder_depth=1,
                        decoder_heads=2).eval()


# ---------------------------------------------------------------------------------------------------- forward-only
def test_forward_only_mixer_is_the_unidirectional_mamba_of_the_forward_branch(seed):
    """out_proj(silu(z) * y_f), with y_f from the sequential reference scan and the official causal nn.Conv1d."""
    model = VisionMamba(encoder_cfg(scan_impl="chunked")).double()
    mixer = model.layers[0].mixer
    h = torch.randn(2, 11, 16, dtype=torch.float64)
    x, z = mixer.in_proj(h).chunk(2, dim=-1)
    conv = mixer.conv1d(x.transpose(1, 2))[..., : h.shape[1]].transpose(1, 2)  # padding K-1, keep the first L
    x = F.silu(conv)
    dt, B, C = mixer.x_proj(x).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    y = selective_scan_reference(x, dt @ mixer.dt_proj.weight.T, -torch.exp(mixer.A_log), B, C, mixer.D, z,
                                 delta_bias=mixer.dt_proj.bias, delta_softplus=True)
    expected = mixer.out_proj(y)
    assert torch.allclose(ForwardOnlyMixer(mixer)(h), expected, atol=1e-10)


@pytest.mark.parametrize("dtype,impl,atol", [(torch.float64, "chunked", 1e-10), (torch.float32, None, 1e-5)])
def test_forward_only_encoder_equals_forward_branch_of_the_bidirectional_blocks(seed, dtype, impl, atol):
    """With the backward branch silenced (x_proj_b = 0, D_b = 0: y_b = 0) and out_proj doubled (undoing the /2),
    the bidirectional blocks compute exactly the forward-only encoder."""
    enc = ForwardOnlyVim(encoder_cfg(scan_impl=impl)).to(dtype)
    bi = VisionMamba(encoder_cfg(scan_impl=impl)).to(dtype)
    shared = {k: v for k, v in enc.state_dict().items() if k != "pos_embed"}
    result = bi.load_state_dict(shared, strict=False)
    assert set(result.missing_keys) == {"cls_token", "pos_embed"} | {
        f"layers.{i}.mixer.{dst}" for i in range(2) for _, dst in AR_BACKWARD_CLONE_MAP}
    with torch.no_grad():
        for block in bi.layers:
            block.mixer.x_proj_b.weight.zero_()
            block.mixer.D_b.zero_()
            block.mixer.out_proj.weight.mul_(2)
    tokens = torch.randn(3, 13, 16, dtype=dtype)
    residual = tokens
    for block in bi.layers:
        residual, _ = block(residual)
    with torch.no_grad():
        assert torch.allclose(enc(tokens), bi.norm_f(residual), atol=atol, rtol=0)
        # and it is not the bidirectional output of the unsilenced model
        assert not torch.allclose(enc(tokens), VisionMamba(encoder_cfg(scan_impl=impl)).to(dtype).norm_f(tokens))


def test_forward_only_encoder_has_no_backward_branch_or_class_token():
    keys = set(ForwardOnlyVim(encoder_cfg()).state_dict())
    backward = {f"layers.{i}.mixer.{dst}" for i in range(2) for _, dst in AR_BACKWARD_CLONE_MAP}
    assert not keys & backward
    assert {f"layers.{i}.mixer.{src}" for i in range(2) for src, _ in AR_BACKWARD_CLONE_MAP} <= keys
    assert "cls_token" not in keys and "pos_embed" in keys


# ---------------------------------------------------------------------------------------------------- AR
def _cluster_region(index: int, grid_clusters: int, cluster_px: int):
    """Pixel slices of the 1-based cluster ``index`` in cluster-major order."""
    row, col = divmod(index - 1, grid_clusters)
    return (slice(row * cluster_px, (row + 1) * cluster_px), slice(col * cluster_px, (col + 1) * cluster_px))


@pytest.mark.parametrize("k", [1, 5, 10])
def test_ar_predictions_are_causal_in_clusters(seed, k):
    ar = tiny_ar()
    n, per_side, cluster_px = 4, 4, 4  # 4 patches per cluster, 4x4 clusters, 4 px per cluster side
    images = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        base = ar.predict(images)["pred"]  # rows for target clusters 2..16, n rows each
        future = images.clone()
        for c in range(k + 1, 17):
            future[(..., *_cluster_region(c, per_side, cluster_px))] += torch.randn(2, 1, 4, 4)
        changed_future = ar.predict(future)["pred"]
        present = images.clone()
        present[(..., *_cluster_region(k, per_side, cluster_px))] += 1.0 + torch.randn(2, 1, 4, 4)
        changed_present = ar.predict(present)["pred"]
    visible_rows = slice(0, k * n)  # targets 2..k+1
    assert torch.allclose(changed_future[:, visible_rows], base[:, visible_rows], atol=1e-6, rtol=0)
    assert not torch.allclose(changed_future[:, k * n:], base[:, k * n:], atol=1e-4)  # later clusters did change
    next_rows = slice((k - 1) * n, k * n)  # the prediction of cluster k+1
    assert (changed_present[:, next_rows] - base[:, next_rows]).abs().max() > 1e-3
    assert torch.allclose(changed_present[:, : (k - 1) * n], base[:, : (k - 1) * n], atol=1e-6, rtol=0)


def test_ar_loss_is_mse_over_every_target_patch_of_clusters_2_to_K(seed):
    ar = tiny_ar()
    images = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        loss, out = ar(images)
    pred = out["pred"].double()
    assert pred.shape == (2, 15 * 4, 4)
    # independent targets: cluster-major patch list, each patch (row, col) flattened and normalised (unbiased var)
    expected, count = 0.0, 0
    row = 0
    for c in range(2, 17):
        rows, cols = _cluster_region(c, 4, 4)
        for pr in range(2):
            for pc in range(2):
                top, left = rows.start + 2 * pr, cols.start + 2 * pc
                patch = images[:, 0, top:top + 2, left:left + 2].reshape(2, 4).double()
                target = (patch - patch.mean(1, keepdim=True)) / (patch.var(1, keepdim=True) + 1e-6).sqrt()
                expected += ((pred[:, row] - target) ** 2).sum().item()
                count += target.numel()
                row += 1
    assert math.isclose(loss.item(), expected / count, rel_tol=1e-5)


def test_ar_image_size_not_a_multiple_of_the_cluster_is_a_clear_error():
    with pytest.raises(ValueError, match=r"not a whole number of 3x3-patch clusters"):
        ARObjective(encoder_cfg(), cluster_size=3)  # 8x8 grid
    ar = tiny_ar()
    with pytest.raises(ValueError, match=r"multiple of 4"):
        ar(torch.randn(1, 1, 14, 14))  # 7x7 patches
    with pytest.raises(ValueError, match=r"pool='avg'"):
        ar.extract_features(torch.randn(1, 1, 16, 16), pool="token")


# ---------------------------------------------------------------------------------------------------- MAE
def test_mae_encodes_the_kept_patches_sorted_with_the_class_token_in_the_middle(seed):
    mae = tiny_mae()
    captured = {}
    mae.encoder.layers[0].register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        _, out = mae(images)
    keep = out["keep"]
    assert keep.shape == (3, 16)  # int(64 * 0.25)
    assert bool((keep[:, 1:] > keep[:, :-1]).all())  # strictly increasing: raster order, no repeats
    assert len({tuple(k.tolist()) for k in keep}) == 3  # a different random subset per image
    assert torch.equal(out["mask"].sum(1), torch.full((3,), 48.0))
    assert bool((out["mask"].gather(1, keep) == 0).all())
    # independently: conv patch tokens in raster order + the patch slots of pos_embed, gathered, class in the middle
    enc = mae.encoder
    with torch.no_grad():
        tokens = F.conv2d(images, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=2).flatten(2)
        tokens = tokens.transpose(1, 2)
        pe = enc.pos_embed[0]
        patch_slots = torch.cat([pe[:32], pe[33:]])
        expected = []
        for b in range(3):
            kept = tokens[b, keep[b]] + patch_slots[keep[b]]
            cls = enc.cls_token[0, 0] + pe[32]
            expected.append(torch.cat([kept[:8], cls[None], kept[8:]]))
    assert torch.allclose(captured["x"], torch.stack(expected), atol=1e-6)


def test_mae_loss_is_normalised_pixel_mse_over_the_masked_patches_only(seed):
    mae = tiny_mae()
    images = torch.rand(2, 1, 16, 16)
    keep = torch.stack([torch.arange(0, 64, 4), torch.arange(3, 64, 4)])
    with torch.no_grad():
        loss, out = mae(images, keep=keep)
    pred = out["pred"].double()
    total, count = 0.0, 0
    for b in range(2):
        for index in range(64):
            if index in keep[b].tolist():
                continue
            r, c = divmod(index, 8)
            patch = images[b, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].permute(1, 2, 0).reshape(-1).double()
            target = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
            total += ((pred[b, index] - target) ** 2).mean().item()
            count += 1
    assert count == 96
    assert math.isclose(loss.item(), total / count, rel_tol=1e-5)
    assert out["pred"].shape == (2, 64, 4)


# ---------------------------------------------------------------------------------------------------- transfer
@pytest.mark.parametrize("objective", ["ar", "mae"])
def test_init_from_pretraining_loads_everything_but_the_new_keys(tmp_path, seed, objective):
    pre = tiny_ar() if objective == "ar" else tiny_mae()
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # make every tensor distinguishable from a fresh init
    path = save_pretraining_checkpoint(pre, tmp_path / f"{objective}.pth")
    model = VisionMamba(encoder_cfg(num_classes=7))
    fresh = copy.deepcopy(model.state_dict())
    report = init_classifier_from_pretraining(model, path)

    expected_new = {"ar": ["cls_token", "head.weight", "head.bias", "pos_embed class slot"],
                    "mae": ["head.weight", "head.bias"]}[objective]
    assert report.new == expected_new
    assert report.dropped and all(not k.startswith("encoder.") for k in report.dropped)
    state = model.state_dict()
    encoder = {k[len("encoder."):]: v for k, v in pre.state_dict().items() if k.startswith("encoder.")}
    for key, value in state.items():
        if key in ("head.weight", "head.bias") or (objective == "ar" and key == "cls_token"):
            assert torch.equal(value, fresh[key]), key  # left at the classifier's own initialisation
        elif key == "pos_embed" and objective == "ar":
            assert torch.equal(value[:, :32], encoder["pos_embed"][:, :32])
            assert torch.equal(value[:, 33:], encoder["pos_embed"][:, 32:])
            assert torch.equal(value[:, 32], fresh["pos_embed"][:, 32])  # the class slot is new
        elif objective == "ar" and any(key.endswith("mixer." + dst) for _, dst in AR_BACKWARD_CLONE_MAP):
            src = dict((d, s) for s, d in AR_BACKWARD_CLONE_MAP)[key.split("mixer.")[1]]
            assert torch.equal(value, state[key.split("mixer.")[0] + "mixer." + src]), key  # the two branches equal
            assert not torch.equal(value, fresh[key])
        else:
            assert torch.equal(value, encoder[key]), key
    if objective == "ar":
        assert len(report.cloned) == 2 * len(AR_BACKWARD_CLONE_MAP)


def test_init_from_pretraining_names_missing_and_unexpected_keys(tmp_path, seed):
    pre = tiny_mae()
    payload = torch.load(save_pretraining_checkpoint(pre, tmp_path / "mae.pth"), weights_only=True)
    del payload["model"]["encoder.layers.1.mixer.in_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): layers\.1\.mixer\.in_proj\.weight"):
        init_classifier_from_pretraining(VisionMamba(encoder_cfg(num_classes=3)), payload)
    shallow = VisionMamba(encoder_cfg(num_classes=3, depth=1))
    with pytest.raises(CheckpointError, match=r"unexpected keys .*layers\.1\.mixer"):
        init_classifier_from_pretraining(shallow, tmp_path / "mae.pth")


def test_init_resizes_position_embeddings(tmp_path, seed):
    path = save_pretraining_checkpoint(tiny_ar(), tmp_path / "ar.pth")
    model = VisionMamba(encoder_cfg(num_classes=3, img_size=24))
    report = init_classifier_from_pretraining(model, path)
    assert report.resized == ["pos_embed (8, 8) -> (12, 12)"]
    assert model(torch.randn(1, 1, 24, 24)).shape == (1, 3)


def test_a_labelled_checkpoint_is_not_a_pretraining_checkpoint(tmp_path, seed):
    classifier = VisionMamba(encoder_cfg(num_classes=3))
    exported = save_weights(classifier, tmp_path / "classifier.pth", class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="labelled classification checkpoint"):
        init_classifier_from_pretraining(VisionMamba(encoder_cfg(num_classes=3)), exported)
    torch.save({"model": classifier.state_dict(), "optimizer": {}, "model_spec": {"family": "vim"}},
               tmp_path / "train.pth")
    with pytest.raises(CheckpointError, match="labelled classification checkpoint"):
        init_classifier_from_pretraining(VisionMamba(encoder_cfg(num_classes=3)), tmp_path / "train.pth")
    torch.save(classifier.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="classifier head"):
        init_classifier_from_pretraining(VisionMamba(encoder_cfg(num_classes=3)), tmp_path / "bare.pth")


# ---------------------------------------------------------------------------------------------------- probes
def test_knn_weighted_and_majority_votes_match_the_closed_form():
    # query along x; one neighbour of class 1 at cosine 0.99, two of class 0 at cosine 0.5, the rest far away
    angle = lambda cos: [cos, math.sqrt(1 - cos * cos)]
    bank = torch.tensor([angle(0.99), angle(0.5), [0.5, -math.sqrt(0.75)], [-1.0, 0.0], [-0.9, 0.1]])
    labels = torch.tensor([1, 0, 0, 2, 2])
    query = torch.tensor([[2.0, 0.0]])  # not unit length: features are normalised
    # weighted: exp(0.99/0.07) = e^14.14 for class 1 > 2 e^(0.5/0.07) = 2 e^7.14 for class 0
    assert knn_predict(bank, labels, query, num_classes=3, k=3).tolist() == [1]
    assert knn_predict(bank, labels, query, num_classes=3, k=3, vote="majority").tolist() == [0]
    # with k = 5 the class-2 neighbours add exp(-1/0.07) + exp(-0.99/0.07), far too little to matter
    assert knn_predict(bank, labels, query, num_classes=3, k=5).tolist() == [1]
    # temperature high enough that the two 0.5s outweigh one 0.99: e^(0.99/T) < 2 e^(0.5/T) iff T > 0.49/ln 2
    assert knn_predict(bank, labels, query, num_classes=3, k=3, temperature=0.8).tolist() == [0]
    assert knn_predict(bank, labels, query, num_classes=3, k=3, temperature=0.6).tolist() == [1]


def test_knn_and_linear_probe_separate_separable_features(seed):
    centres = torch.eye(4, 16) * 5
    train_y, test_y = torch.arange(4).repeat(25), torch.arange(4).repeat(10)
    train_x = centres[train_y] + torch.randn(100, 16) * 0.3
    test_x = centres[test_y] + torch.randn(40, 16) * 0.3
    assert torch.equal(knn_predict(train_x, train_y, test_x, num_classes=4), test_y)
    result = train_linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=20, lr=1e-2, batch_size=16)
    assert result["top1"] == 100.0


def _write_folder(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for name, level in (("dark", 40), ("bright", 210)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_probe_command_on_a_tiny_folder(tmp_path, capsys, seed):
    _write_folder(tmp_path / "data", per_class=6, seed=0)
    sizes = ["patch_size=4", "embed_dim=16", "depth=1", "d_state=4", "img_size=16"]
    assert cli_main(["probe", "--checkpoint", "random:vim_tiny_patch16_224", "--data", str(tmp_path / "data"),
                     "--override", *sizes, "--k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "knn" and result["train_count"] == 12 and result["val_count"] == 6
    assert result["feature_dim"] == 16 and result["img_size"] == [16, 16]
    assert result["top1"] == 100.0  # dark vs bright: separable even by random features

    ar = ARObjective(VimConfig(img_size=16, patch_size=4, stride=4, embed_dim=16, depth=1, d_state=4,
                               num_classes=0), cluster_size=2, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    path = save_pretraining_checkpoint(ar, tmp_path / "ar.pth")
    for extra in ([], ["--as-classifier"]):
        assert cli_main(["probe", "--checkpoint", str(path), "--data", str(tmp_path / "data"), "--method", "linear",
                         "--epochs", "3", "--json", *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["method"] == "linear" and 0 <= result["top1"] <= 100
    assert cli_main(["probe", "--checkpoint", str(tmp_path / "missing.pth"), "--data", str(tmp_path / "data")]) == 1
    assert "not found" in capsys.readouterr().err


def test_reconstruction_grid_is_written(tmp_path, seed):
    for objective in (tiny_ar(), tiny_mae()):
        images = torch.randn(3, 1, 16, 16)
        visible, prediction = objective.reconstruct(images)
        assert visible.shape == prediction.shape == images.shape
        path = save_reconstruction_grid(images, visible, prediction, tmp_path / f"{objective.objective}.png",
                                        mean=(0.5,), std=(0.25,), title=objective.objective)
        with Image.open(path) as picture:
            assert picture.size[0] == 3 * 96 + 16 and picture.size[1] > 3 * 96


def test_unlabelled_images_at_any_depth_and_unreadable_ones_skipped(tmp_path):
    from vimamba.pretrain.data import resolve_unlabelled

    for i, sub in enumerate(["a", "a/b", "c/d/e", ".hidden"]):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((5, 7, 3), 30 * i, np.uint8)).save(tmp_path / sub / f"{i}.png")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = resolve_unlabelled(None, tmp_path, heldout_images=0).train(None, in_chans=1)
    assert len(ds) == 4  # three images + the broken one; not the hidden folder or the text file
    items = [ds[i] for i in range(len(ds))]
    assert sum(item is None for item in items) == 1
    assert all(item[1] == 0 and item[0].mode == "L" for item in items if item is not None)
    (tmp_path / "train" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "x" / "only.png")
    # an ImageNet-layout folder: its train split
    assert len(resolve_unlabelled(None, tmp_path, heldout_images=0).train(None, in_chans=3)) == 1


def test_ssl_finetune_recipe_decays_the_learning_rate_by_layer():
    from vimamba.train.config import resolve_config
    from vimamba.engine.optim import build_param_groups

    cfg = resolve_config({"recipe": "ssl_finetune", "data": "somewhere"}).engine
    assert (cfg.layer_decay, cfg.epochs, cfg.weight_decay, cfg.opt_betas) == (0.75, 100, 0.05, (0.9, 0.999))
    model = VisionMamba(encoder_cfg(num_classes=3, depth=3))
    scales = {}
    for group in build_param_groups(model, cfg.weight_decay, layer_decay=cfg.layer_decay):
        for p in group["params"]:
            scales[id(p)] = group["lr_scale"]
    by_name = {name: scales[id(p)] for name, p in model.named_parameters()}
    assert by_name["layers.0.mixer.in_proj.weight"] == pytest.approx(by_name["layers.1.mixer.in_proj.weight"] * 0.75)
    assert by_name["patch_embed.proj.weight"] < by_name["layers.0.mixer.in_proj.weight"] < by_name["head.weight"]


def test_probe_of_a_classifier_checkpoint_with_the_class_token(tmp_path, capsys, seed):
    _write_folder(tmp_path / "data", per_class=4, seed=1)
    classifier = VisionMamba(VimConfig(img_size=16, patch_size=4, stride=4, embed_dim=16, depth=1, d_state=4,
                                       num_classes=2))
    path = save_weights(classifier, tmp_path / "classifier.pth", class_names=["bright", "dark"])
    assert cli_main(["probe", "--checkpoint", str(path), "--data", str(tmp_path / "data"), "--pool", "token",
                     "--k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["feature_dim"] == 16 and result["train_count"] == 8

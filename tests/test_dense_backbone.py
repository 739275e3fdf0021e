"""Vim as a dense backbone: feature maps, pyramid shapes and strides, pruning, pretrained loading, layer decay."""
import math

import pytest
import torch
import torch.nn.functional as F

from vimamba import create_model, save_weights
from vimamba.dense.backbone import BackboneConfig, build_backbone, default_out_indices, prefix_group_matcher
from vimamba.dense.detector import DetectorConfig, build_detector, vitdet_backbone_config
from vimamba.dense.segmentor import SegmentorConfig, build_segmentor
from vimamba.models.pos_embed import remove_cls_token
from vimamba.engine.optim import create_optimizer

TINY = dict(embed_dim=32, depth=4, img_size=64, drop_path_rate=0.0)


def _reference_block_outputs(vim, images):
    """(residual after each block, mixer output of each block) as (B, D, h, w), by running the blocks by hand."""
    residual, (h, w) = vim.embed(images)
    residuals, mixers = [], []
    for block in vim.layers:
        mixed = block.mixer(block.norm(residual))
        residual = residual + mixed
        for store, tokens in ((residuals, residual), (mixers, mixed)):
            store.append(remove_cls_token(tokens).reshape(len(images), h, w, -1).permute(0, 3, 1, 2))
    return residuals, mixers


def test_default_out_indices_are_the_official_blocks():
    assert default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(12) == (2, 5, 8, 11)
    assert default_out_indices(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="fewer blocks"):
        default_out_indices(3)


@pytest.mark.parametrize("feature", ["mixer", "residual"])
def test_features_are_the_chosen_blocks_outputs_without_class_token(feature):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(vim=dict(TINY, patch_size=16, stride=16), out_indices=(1, 3),
                                             strides=(16, 32), feature=feature)).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = backbone.forward_features(images)
        residuals, mixers = _reference_block_outputs(backbone.vim, images)
    expected = residuals if feature == "residual" else mixers
    assert [tuple(f.shape) for f in features] == [(2, 32, 4, 6)] * 2
    torch.testing.assert_close(features[0], expected[1])
    torch.testing.assert_close(features[1], expected[3])


@pytest.mark.parametrize("patch,stride", [(16, 16), (8, 8), (16, 8)])
@pytest.mark.parametrize("size", [(64, 64), (70, 100), (96, 48)])
def test_pyramid_shapes_and_strides(patch, stride, size):
    cfg = BackboneConfig(vim=dict(TINY, patch_size=patch, stride=stride), out_channels=24, pyramid_norm="ln",
                         extra_pool=True)
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, *size))
    assert list(levels) == ["0", "1", "2", "3", "pool"]
    assert backbone.out_strides == (4, 8, 16, 32, 64)
    grid = [math.ceil(s / stride) for s in size]  # the patch grid after padding
    for (name, level), level_stride in zip(levels.items(), backbone.out_strides):
        assert level.shape[:2] == (1, 24)
        expected = [math.ceil(g * stride / level_stride) for g in grid]
        assert list(level.shape[-2:]) == expected, (name, level_stride)


def test_pruning_keeps_only_the_needed_blocks_and_no_head():
    backbone = build_backbone(BackboneConfig(vim=dict(TINY, depth=6), out_indices=(1, 2, 3, 3)))
    assert len(backbone.vim.layers) == 4
    assert isinstance(backbone.vim.head, torch.nn.Identity) and isinstance(backbone.vim.norm_f, torch.nn.Identity)
    kept_norm = build_backbone(BackboneConfig(vim=TINY, norm=True))
    assert not isinstance(kept_norm.vim.norm_f, torch.nn.Identity)
    with pytest.raises(ValueError, match="one block, or one per pyramid level"):
        build_backbone(BackboneConfig(vim=TINY, out_indices=(1, 2)))
    with pytest.raises(ValueError, match="out of range"):
        build_backbone(BackboneConfig(vim=TINY, out_indices=(7,)))


def test_pretrained_classifier_loads_with_head_dropped_and_pos_embed_resized(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("vim_tiny_patch16_224", **dict(TINY, img_size=32), num_classes=7)
    path = save_weights(classifier, tmp_path / "cls.safetensors")
    backbone = build_backbone(BackboneConfig(vim=dict(TINY, img_size=64)), pretrained=str(path))
    vim = backbone.vim
    assert vim.pos_embed.shape == (1, 4 * 4 + 1, 32)  # 2x2 grid at 32 px -> 4x4 at 64 px
    torch.testing.assert_close(vim.layers[2].mixer.in_proj.weight, classifier.layers[2].mixer.in_proj.weight)
    torch.testing.assert_close(vim.patch_embed.proj.weight, classifier.patch_embed.proj.weight)
    # the class slot is carried over unchanged, in the middle of the new sequence
    torch.testing.assert_close(vim.pos_embed[0, 8], classifier.pos_embed[0, 2])


def test_prefix_group_matcher_rewrites_every_alternative():
    matcher = {"stem": r"^cls_token|^pos_embed", "blocks": [(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))]}
    out = prefix_group_matcher(matcher, "backbone.vim.")
    assert out["stem"] == r"^backbone\.vim\.cls_token|^backbone\.vim\.pos_embed"
    assert out["blocks"][0] == (r"^backbone\.vim\.layers\.(\d+)", None)


def _detector():
    vim = dict(TINY, patch_size=16, stride=16)
    return build_detector(DetectorConfig(num_classes=2, backbone=vitdet_backbone_config(vim=vim, out_channels=16),
                                         min_size=64, max_size=64, head_channels=16, box_fc=32))


@pytest.mark.parametrize("build", [lambda: build_segmentor(SegmentorConfig(
    num_classes=3, backbone=BackboneConfig(vim=TINY), channels=16, aux_channels=8)), _detector],
    ids=["segmentor", "detector"])
def test_layer_decay_reaches_every_vim_block_and_prefixed_no_decay_names(build):
    model = build()
    decay, depth = 0.5, 4
    optimizer = create_optimizer(model, lr=1.0, weight_decay=0.1, layer_decay=decay)
    scale_of, decay_of = {}, {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale_of[names[id(p)]] = group["lr_scale"]
            decay_of[names[id(p)]] = group["weight_decay"]
    # block i gets decay^(depth - i); the stem decay^(depth + 1); neck and heads the full rate (norm_f is pruned)
    for i in range(depth):
        assert scale_of[f"backbone.vim.layers.{i}.mixer.in_proj.weight"] == pytest.approx(decay ** (depth - i))
    assert scale_of["backbone.vim.patch_embed.proj.weight"] == pytest.approx(decay ** (depth + 1))
    assert scale_of["backbone.vim.pos_embed"] == pytest.approx(decay ** (depth + 1))
    head_names = [n for n in scale_of if not n.startswith("backbone.vim.")]
    assert head_names and all(scale_of[n] == 1.0 for n in head_names)
    # weight decay: not on the prefixed pos_embed / cls_token, biases and norms; on the 2-D weights
    assert decay_of["backbone.vim.pos_embed"] == 0.0 and decay_of["backbone.vim.cls_token"] == 0.0
    assert decay_of["backbone.vim.layers.0.norm.weight"] == 0.0
    assert decay_of["backbone.vim.layers.0.mixer.in_proj.weight"] == 0.1
    assert decay_of["backbone.vim.layers.0.mixer.A_log"] == 0.1  # the official recipe decays it ...
    no_ssm = create_optimizer(model, lr=1.0, weight_decay=0.1, layer_decay=decay, no_decay_ssm=True)
    a_log = dict(model.named_parameters())["backbone.vim.layers.0.mixer.A_log"]
    assert [g["weight_decay"] for g in no_ssm.param_groups if any(p is a_log for p in g["params"])] == [0.0]


def test_segmentor_output_and_slide_inference_match_whole_inference_for_a_pointwise_model():
    torch.manual_seed(0)
    model = build_segmentor(SegmentorConfig(num_classes=3, backbone=BackboneConfig(vim=TINY), channels=16,
                                            aux_channels=8)).eval()
    images = torch.randn(1, 3, 50, 70)
    assert model(images).shape == (1, 3, 50, 70)
    losses = model.train()(images.repeat(2, 1, 1, 1), torch.randint(0, 3, (2, 50, 70)))
    assert set(losses) == {"loss_decode", "loss_aux"} and all(torch.isfinite(v) for v in losses.values())

    # sliding-window averaging of a pointwise "model" must give back the whole-image result exactly
    weight = torch.randn(3, 3, 1, 1)
    model.forward = lambda x: F.conv2d(x, weight)
    whole = model.inference(images, mode="whole")
    slide = model.inference(images, mode="slide", crop_size=(32, 32), stride=(20, 20))
    torch.testing.assert_close(slide, whole)
    resized = model.inference(images, mode="slide", crop_size=(32, 32), stride=(20, 20), out_size=(25, 35))
    assert resized.shape == (1, 3, 25, 35)


def test_loss_ignores_ignored_pixels_and_is_zero_not_nan_when_all_are_ignored():
    from vimamba.dense.segmentor import segmentation_loss

    logits = torch.randn(1, 3, 4, 4)
    labels = torch.full((1, 4, 4), 255)
    assert segmentation_loss(logits, labels, 255).item() == 0.0
    labels[0, 0, 0] = 2
    expected = F.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    torch.testing.assert_close(segmentation_loss(logits, labels, 255), expected)


def test_vim_tiny_upernet_has_the_official_parameter_count():
    # The official benchmark log (seg/tools/analysis_tools/*-t-upernet.txt) prints 12,901,100 parameters for Vim-Ti
    # UperNet, built with a 64x64 position grid (no class token) and the final norm kept. Ours keeps the class token
    # (+192) and its position slot (+192) and prunes the unused final norm (-192): 192 more, nothing else differs.
    with torch.device("meta"):
        model = build_segmentor(SegmentorConfig(num_classes=150, backbone=BackboneConfig(vim=dict(img_size=1024))))
    assert sum(p.numel() for p in model.parameters()) == 12_901_100 + 192

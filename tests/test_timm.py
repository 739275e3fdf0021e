"""The Vim models as timm models: registration, pretrained cfgs, weights from files and the Hub, timm's idioms."""
import argparse
import ast
import math
import socket
import sys
from pathlib import Path

import pytest
import timm
import torch

import vimamba
from vimamba.models import CheckpointError, VisionMamba
from vimamba.models.variants import VARIANTS

# A small Vim every test can afford: 32x32 images, 8x8 patches at stride 8 (4x4 grid), 2 blocks.
SMALL = dict(embed_dim=16, depth=2, d_state=4, img_size=32, patch_size=8, stride=8, drop_path_rate=0.0)
MODELS = Path(vimamba.models.registry.__file__)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test; the Hub library is in offline mode as well."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def official_file(tmp_path, seed):
    """A file in the official layout: trained and EMA weights that differ, optimizer state, an argparse.Namespace."""
    trained = _randomised(vimamba.create_model("vim_tiny_patch16_224", **SMALL))
    ema = _randomised(vimamba.create_model("vim_tiny_patch16_224", **SMALL))
    path = tmp_path / "vim_t_midclstok_76p1acc.pth"
    torch.save({"model": trained.state_dict(), "model_ema": ema.state_dict(), "optimizer": {"state": {}},
                "epoch": 299, "args": argparse.Namespace(model="vim_tiny")}, path)
    return path, trained.eval(), ema.eval()


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------------- registration
def test_variants_are_real_module_level_timm_entrypoints_with_official_weights():
    import vimamba.models.registry as registry

    assert "vimamba.models._timm_entrypoints" not in sys.modules
    names = [n for e in VARIANTS.values() for n in (e.name, *e.aliases)]
    assert sorted(timm.list_models("vim_*", pretrained=True)) == sorted(names)
    for name in names:
        entrypoint = timm.models.model_entrypoint(name)
        assert entrypoint.__module__ == "vimamba.models.registry" and getattr(registry, name) is entrypoint
        assert timm.models.get_pretrained_cfg(name).hf_hub_id.startswith("hustvl/Vim-")
    files = {n: timm.models.get_pretrained_cfg(n).hf_hub_filename for n in VARIANTS}
    assert files == {"vim_tiny_patch16_224": "vim_t_midclstok_76p1acc.pth",
                     "vim_tiny_patch16_stride8_224": "vim_t_midclstok_ft_78p3acc.pth",
                     "vim_small_patch16_224": "vim_s_midclstok_80p5acc.pth",
                     "vim_small_patch16_stride8_224": "vim_s_midclstok_ft_81p6acc.pth",
                     "vim_base_patch16_224": "vim_b_midclstok_81p9acc.pth"}
    long = "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    assert timm.models.get_pretrained_cfg(long).hf_hub_filename == "vim_s_midclstok_ft_81p6acc.pth"


def test_no_import_circle_between_the_model_modules():
    """At import time each module imports only the ones before it: vim -> variants -> checkpoint -> weights ->
    registry (``VisionMamba.load_pretrained``, the hook timm calls, reaches the weights module when called)."""
    order = ["pos_embed", "vim", "variants", "checkpoint", "weights", "registry"]
    for module in order:
        tree = ast.parse((MODELS.parent / f"{module}.py").read_text())
        imported = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1}
        later = set(order[order.index(module) + 1:])
        assert not imported & later, f"{module}.py imports {imported & later}"


def test_both_apis_build_the_same_model():
    torch.manual_seed(0)
    a = vimamba.create_model("vim_tiny_patch16_224", num_classes=7, **SMALL)
    torch.manual_seed(0)
    b = timm.create_model("vim_tiny_patch16_224", num_classes=7, **SMALL)
    assert type(a) is type(b) is VisionMamba and a.cfg == b.cfg and _same_state(a, b)
    assert a.pretrained_cfg == b.pretrained_cfg and a.arch == b.arch == "vim_tiny_patch16_224"
    with pytest.raises(TypeError, match="unknown arguments \\['embed_size'\\]"):
        timm.create_model("vim_tiny_patch16_224", embed_size=3)


# ---------------------------------------------------------------------------------------------------- timm's tests
@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_small_patch16_stride8_224"])
def test_forward_and_backward(name, seed):
    model = timm.create_model(name, num_classes=42, **{**SMALL, "embed_dim": 8})
    out = model(torch.randn(2, 3, 40, 48))
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    assert all(p.grad is not None for p in model.parameters()), "some parameters got no gradient"


def test_default_cfg_of_a_non_nchw_model(seed):
    """timm's checks for token (NLC) models: forward_features, forward_head, reset_classifier, cfg names."""
    model = timm.create_model("vim_tiny_patch16_224", **SMALL).eval()
    cfg, state = model.default_cfg, model.state_dict()
    assert cfg is model.pretrained_cfg and cfg["input_size"] == (3, 224, 224) and not cfg["fixed_input_size"]
    x = torch.randn(1, *cfg["input_size"][:1], 48, 48)
    tokens = model.forward_features(x)
    assert tokens.shape == (1, 6 * 6 + 1, model.num_features)
    assert model.forward_head(tokens, pre_logits=True).shape == (1, model.head_hidden_size)
    assert model.forward_head(tokens).shape == (1, 1000)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    assert timm.create_model("vim_tiny_patch16_224", num_classes=0, **SMALL)(x).shape == (1, 16)
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state


@pytest.mark.parametrize("name,reduction", [("vim_tiny_patch16_224", 16), ("vim_tiny_patch16_stride8_224", 8)])
def test_features_only_has_a_complete_cfg_and_the_expected_reductions(name, reduction, seed):
    model = timm.create_model(name, features_only=True, embed_dim=8, depth=6, d_state=4).eval()
    cfg = model.pretrained_cfg
    assert cfg is model.default_cfg and cfg["architecture"] == name and cfg["hf_hub_id"].startswith("hustvl/")
    assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert "num_classes" not in cfg  # timm's features cfg drops the classifier entries
    assert model.feature_info.reduction() == [reduction] * 4 and model.feature_info.channels() == [8] * 4
    assert model.feature_info.module_name() == [f"layers.{i}" for i in (2, 3, 4, 5)]
    size = (64, 96)
    outputs = model(torch.randn(1, 3, *size))
    assert len(outputs) == 4
    for out in outputs:
        assert out.shape[:2] == (1, 8)
        assert out.shape[2:] == tuple((s - 16) // reduction + 1 for s in size)
        assert out.shape[2] <= math.ceil(size[0] / reduction) + 1


def test_data_config_classifier_and_input_size(seed):
    model = timm.create_model("vim_tiny_patch16_224", **SMALL).eval()
    data = timm.data.resolve_data_config({}, model=model)
    assert data == dict(input_size=(3, 224, 224), interpolation="bicubic", mean=timm.data.IMAGENET_DEFAULT_MEAN,
                        std=timm.data.IMAGENET_DEFAULT_STD, crop_pct=0.875, crop_mode="center")
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        before = model(x)
        model.set_input_size(img_size=48)
        assert model.pos_embed.shape == (1, 37, 16) and model.patch_embed.grid_size == (6, 6)
        torch.testing.assert_close(model(x), before)  # resizing once = resizing on the fly
    assert model._traits["img_size"] == (48, 48)
    dynamic = timm.create_model("vim_tiny_patch16_224", dynamic_img_size=True, **SMALL)
    assert dynamic(torch.randn(1, 3, 80, 56)).shape == (1, 1000)


def test_forward_intermediates_follow_timm_vit(seed):
    model = timm.create_model("vim_tiny_patch16_224", **{**SMALL, "depth": 4}).eval()
    x = torch.randn(2, 3, 40, 56)  # 5x7 grid
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [m.shape for m in maps] == [(2, 16, 5, 7)] * 2
        only = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert isinstance(only, list) and only[0].shape == (2, 16, 5, 7)
        d = model.forward_intermediates(x, indices=2, output_dict=True, return_prefix_tokens=True)
        assert set(d) == {"image_intermediates", "image_features", "image_intermediates_prefix"}
        assert d["image_intermediates_prefix"][0].shape == (2, 1, 16)
        early, _ = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert early.shape == final.shape and not torch.allclose(early, final)


# ---------------------------------------------------------------------------------------------------- weights
def test_pretrained_file_overlay_loads_offline_and_equals_vimamba(official_file, no_network):
    path, trained, ema = official_file
    x = torch.randn(2, 3, 32, 32)
    via_timm = timm.create_model("vim_tiny_patch16_224", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    via_vimamba = vimamba.create_model("vim_tiny_patch16_224", pretrained=path, **SMALL).eval()
    with torch.no_grad():
        expected = trained(x)  # the trained weights, not the EMA ones
        assert not torch.allclose(expected, ema(x))
        torch.testing.assert_close(via_timm(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(via_vimamba(x), expected, rtol=0, atol=0)
    assert via_timm.pretrained_cfg["file"] == str(path) == via_vimamba.pretrained_cfg["file"]


def test_pretrained_file_adapts_classes_channels_size_and_features(official_file, no_network):
    path, trained, _ = official_file
    overlay = dict(file=str(path))
    other = timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                              num_classes=7, in_chans=1, img_size=48, **{k: v for k, v in SMALL.items()
                                                                          if k != "img_size"})
    assert other.head.out_features == 7 and other.pos_embed.shape == (1, 37, 16)
    torch.testing.assert_close(other.patch_embed.proj.weight, trained.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(other.layers[1].mixer.A_log, trained.layers[1].mixer.A_log)

    features = timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                                 features_only=True, out_indices=(0, 1), **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = trained.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for got, want in zip(features(x), expected):
            torch.testing.assert_close(got, want)


def test_pretrained_file_of_another_architecture_is_refused(tmp_path, no_network):
    torch.save({"model": vimamba.create_model("vim_tiny_patch16_224", **{**SMALL, "embed_dim": 24}).state_dict()},
               tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="mis-shaped keys.*cls_token: checkpoint \\(1, 1, 24\\) vs model"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "wide.pth")), **SMALL)
    with pytest.raises(CheckpointError, match="ViT/DeiT"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, **SMALL, pretrained_cfg_overlay=dict(
            state_dict={"cls_token": torch.zeros(1, 1, 16), "blocks.0.attn.qkv.weight": torch.zeros(48, 16)}))


@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224"])
def test_pretrained_true_downloads_the_registered_file_and_filters_the_official_keys(name, official_file,
                                                                                     monkeypatch, seed):
    """The Hub path with the download replaced by the local official-layout file (same bytes, no network)."""
    import timm.models._hub
    from huggingface_hub.errors import EntryNotFoundError

    path, trained, _ = official_file
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        if filename.endswith(".safetensors"):  # timm first asks for a safetensors twin of the file
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake_download)
    model = vimamba.create_model(name, pretrained=True, **{**SMALL, "stride": 8}).eval()
    assert asked[-1] == ("hustvl/Vim-tiny-midclstok", VARIANTS[name].hf_hub_filename)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
    resized = timm.create_model(name, pretrained=True, in_chans=1, **{**SMALL, "img_size": 48, "num_classes": 3})
    assert resized.pos_embed.shape == (1, 37, 16) and resized.head.out_features == 3
    torch.testing.assert_close(resized.patch_embed.proj.weight, trained.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(resized.pos_embed.detach(), vimamba.models.resize_pos_embed(
        trained.pos_embed.detach(), (4, 4), (6, 6)))

"""The Vim model: exact architecture of the official release, its numerics, bidirectionality, any resolution."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import timm

import vimamba
from vimamba.models import VimConfig, VisionMamba, resize_pos_embed
from vimamba.models.registry import model_config

from conftest import tiny_vim
from official_oracle import official_forward

# Keys and shapes of the official Vim-Ti checkpoint, in file order (from ../shared/reference/ of the project brief).
REFERENCE_KEYS = Path(__file__).resolve().parent / "data" / "vim_tiny_state_dict_keys.txt"

EXPECTED_PARAMS = {
    "vim_tiny_patch16_224": 7_148_008,
    "vim_small_patch16_224": 25_796_584,
    "vim_base_patch16_224": 97_598_440,
    "vim_tiny_patch16_stride8_224": 7_250_344,
    "vim_small_patch16_stride8_224": 26_001_256,
}


def meta_model(name, **overrides):
    with torch.device("meta"):
        return VisionMamba(model_config(name, **overrides))


@pytest.mark.parametrize("name,count", EXPECTED_PARAMS.items())
def test_parameter_counts(name, count):
    assert sum(p.numel() for p in meta_model(name).parameters()) == count


def _tiny_reference_keys():
    rows = [line.split("\t") for line in REFERENCE_KEYS.read_text().splitlines() if line.strip()]
    return [(k, tuple(int(v) for v in s.strip("()").split(",") if v.strip())) for k, s in rows]


def test_state_dict_keys_shapes_and_order_match_official_tiny():
    ours = [(k, tuple(v.shape)) for k, v in meta_model("vim_tiny_patch16_224").state_dict().items()]
    assert ours == _tiny_reference_keys()


@pytest.mark.parametrize("name,dim", [("vim_small_patch16_224", 384), ("vim_base_patch16_224", 768)])
def test_other_sizes_have_the_same_keys_with_scaled_shapes(name, dim):
    state = meta_model(name).state_dict()
    reference = dict(_tiny_reference_keys())
    assert list(state) == list(reference)
    e, r = 2 * dim, math.ceil(dim / 16)
    assert tuple(state["layers.0.mixer.in_proj.weight"].shape) == (2 * e, dim)
    assert tuple(state["layers.0.mixer.x_proj_b.weight"].shape) == (r + 32, e)
    assert tuple(state["layers.23.mixer.dt_proj.weight"].shape) == (e, r)
    assert tuple(state["pos_embed"].shape) == (1, 197, dim)


def test_stride8_differs_only_in_pos_embed():
    a = meta_model("vim_tiny_patch16_224").state_dict()
    b = meta_model("vim_tiny_patch16_stride8_224").state_dict()
    assert list(a) == list(b)
    differing = [k for k in a if a[k].shape != b[k].shape]
    assert differing == ["pos_embed"] and tuple(b["pos_embed"].shape) == (1, 730, 192)


def test_official_long_names_are_aliases():
    long = "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    assert meta_model(long).cfg == meta_model("vim_tiny_patch16_224", stride=8).cfg
    assert long in vimamba.list_models(include_aliases=True)
    assert long not in vimamba.list_models()
    base_long = "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2"
    assert meta_model(base_long).cfg.embed_dim == 768


def test_unknown_name_and_argument_are_clear_errors():
    with pytest.raises(KeyError, match="unknown Vim model 'vim_huge'"):
        vimamba.create_model("vim_huge")
    with pytest.raises(TypeError, match="unknown arguments \\['embed_size'\\]"):
        vimamba.create_model("vim_tiny_patch16_224", embed_size=3)


def test_timm_create_model_builds_the_same_models():
    assert {"vim_tiny_patch16_224", "vim_small_patch16_stride8_224"} <= set(timm.list_models("vim_*"))
    model = timm.create_model("vim_tiny_patch16_224", embed_dim=16, depth=2, num_classes=3, img_size=32)
    assert isinstance(model, VisionMamba) and model.cfg.embed_dim == 16 and model.num_classes == 3
    alias = timm.create_model("vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                              depth=1)
    assert alias.cfg.embed_dim == 384
    features = timm.create_model("vim_tiny_patch16_224", features_only=True, out_indices=(0, 1), depth=2, embed_dim=16,
                                 img_size=32, patch_size=8, stride=8)
    assert [f.shape for f in features(torch.randn(1, 3, 32, 48))] == [(1, 16, 4, 6)] * 2
    assert features.feature_info.reduction() == [8, 8]
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["interpolation"] == "bicubic"
    assert data_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_custom_sizes_from_any_registered_name():
    model = vimamba.create_model("vim_tiny_patch16_224", embed_dim=32, depth=3, d_state=8, patch_size=4, stride=2,
                                 img_size=(28, 20), in_chans=1, num_classes=10)
    assert model.patch_embed.grid_size == (13, 9)
    assert model.layers[0].mixer.A_log.shape == (64, 8)
    assert model(torch.randn(2, 1, 28, 20)).shape == (2, 10)


def test_logits_equal_the_official_dataflow(seed):
    """Flip-free scans, anti-causal conv and the pre-norm residual formulation equal the official computation."""
    for stride in (4, 2):
        model = tiny_vim(stride=stride, depth=3).double().eval()
        with torch.no_grad():  # make every parameter non-trivial, as after training
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(model(x), official_forward(model, x), rtol=1e-10, atol=1e-10)


def test_float32_logits_equal_the_official_dataflow(seed):
    model = tiny_vim().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(model, x), rtol=1e-4, atol=1e-5)


def test_gradients_of_the_whole_model_pass_gradcheck(seed):
    model = vimamba.create_model("vim_tiny_patch16_224", embed_dim=4, depth=2, d_state=2, img_size=8, patch_size=4,
                                 stride=4, num_classes=3, drop_path_rate=0.0).double()
    names = ["pos_embed", "cls_token", "layers.1.mixer.A_b_log", "layers.0.mixer.dt_proj_b.bias",
             "layers.0.mixer.conv1d_b.weight", "layers.1.mixer.x_proj.weight", "norm_f.weight"]
    params = dict(model.named_parameters())
    image = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    chosen = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

    def logits(img, *values):
        return torch.func.functional_call(model, {**params, **dict(zip(names, values))}, (img,))

    assert torch.autograd.gradcheck(logits, (image, *chosen), eps=1e-6, atol=1e-6, fast_mode=True)


def long_memory_vim():
    """A tiny Vim in float64 whose scans barely decay (A close to 0), so far tokens visibly influence each other."""
    model = tiny_vim(depth=2).double().eval()
    with torch.no_grad():
        for block in model.layers:
            block.mixer.A_log.fill_(-4.0)
            block.mixer.A_b_log.fill_(-4.0)
    return model


def _patch_output_sensitivity(model, changed_patch, watched_token):
    """How much changing one input patch changes the final token at ``watched_token``."""
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    y = x.clone()
    row, col = divmod(changed_patch, 4)
    y[..., row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 1.0
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(y)
    return (a[:, watched_token] - b[:, watched_token]).abs().max().item()


def _silence(mixer, direction):
    """Zero one scan direction: its conv output becomes silu(0) = 0 and its skip D is 0, so it contributes 0."""
    suffix = "" if direction == "forward" else "_b"
    with torch.no_grad():
        getattr(mixer, "conv1d" + suffix).weight.zero_()
        getattr(mixer, "conv1d" + suffix).bias.zero_()
        getattr(mixer, "D" + suffix).zero_()


def test_bidirectional_every_token_sees_both_ends(seed):
    model = long_memory_vim()
    first_token, last_token = 0, 16  # 16 patches + class token in the middle (index 8)
    assert _patch_output_sensitivity(model, changed_patch=15, watched_token=first_token) > 1e-6
    assert _patch_output_sensitivity(model, changed_patch=0, watched_token=last_token) > 1e-6


def test_without_the_backward_branch_the_first_token_no_longer_sees_the_last(seed):
    model = long_memory_vim()
    for block in model.layers:
        _silence(block.mixer, "backward")
    assert _patch_output_sensitivity(model, changed_patch=15, watched_token=0) == 0.0
    assert _patch_output_sensitivity(model, changed_patch=0, watched_token=16) > 1e-6  # forward still carries it


def test_without_the_forward_branch_the_last_token_no_longer_sees_the_first(seed):
    model = long_memory_vim()
    for block in model.layers:
        _silence(block.mixer, "forward")
    assert _patch_output_sensitivity(model, changed_patch=0, watched_token=16) == 0.0
    assert _patch_output_sensitivity(model, changed_patch=15, watched_token=0) > 1e-6


@pytest.mark.parametrize("img_size,patch,stride,expected_index", [(224, 16, 16, 98), (224, 16, 8, 364), (16, 4, 4, 8)])
def test_class_token_sits_in_the_middle_slot(img_size, patch, stride, expected_index):
    model = vimamba.create_model("vim_tiny_patch16_224", embed_dim=8, depth=1, d_state=2, img_size=img_size,
                                 patch_size=patch, stride=stride, drop_rate=0.0)
    grid = model.patch_embed.grid_size
    assert grid[0] * grid[1] // 2 == expected_index
    small = torch.randn(1, 3, img_size, img_size)
    with torch.no_grad():
        tokens, _ = model.embed(small)
        patches = model.patch_embed.proj(small).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[:, expected_index] - model.pos_embed[:, expected_index],
                               model.cls_token[:, 0].expand(1, -1))
    torch.testing.assert_close(tokens[:, expected_index - 1] - model.pos_embed[:, expected_index - 1],
                               patches[:, expected_index - 1])
    torch.testing.assert_close(tokens[:, expected_index + 1] - model.pos_embed[:, expected_index + 1],
                               patches[:, expected_index])


def test_head_reads_the_middle_token(seed):
    model = tiny_vim().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), model.head(feats[:, 8]))
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 8])


def test_model_at_another_resolution_equals_the_interpolated_checkpoint_model(seed, tmp_path):
    """A 16px model run at 32px equals a model built for 32px that loaded the 16px checkpoint."""
    small = tiny_vim().eval()
    path = vimamba.save_weights(small, tmp_path / "small.safetensors")
    big = vimamba.create_model("vim_tiny_patch16_224", pretrained=path, **{**small.cfg.to_dict(), "img_size": 32})
    big.eval()
    assert big.pos_embed.shape == (1, 8 * 8 + 1, 16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), rtol=1e-5, atol=1e-6)


def test_any_resolution_including_non_square(seed):
    model = tiny_vim().eval()
    with torch.no_grad():
        for h, w in [(16, 16), (40, 24), (20, 36), (64, 64)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 5)
            feats = model.forward_features(torch.randn(1, 3, h, w))
            assert feats.shape == (1, (h // 4) * (w // 4) + 1, 16)


def test_set_input_size_and_stride_resize_pos_embed(seed):
    model = tiny_vim().eval()
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        before = model(x)
        model.set_input_size(img_size=24)
        assert model.pos_embed.shape == (1, 37, 16)
        torch.testing.assert_close(model(x), before)
        model.set_input_size(stride=2)
        assert model.patch_embed.grid_size == (11, 11) and model.pos_embed.shape == (1, 122, 16)
        assert model(x).shape == (1, 5)


def test_resize_pos_embed_keeps_the_class_slot_and_interpolates_the_patch_grid():
    dim, old, new = 3, (4, 4), (6, 5)
    grid = torch.randn(1, dim, *old)
    cls = torch.randn(1, 1, dim)
    patches = grid.flatten(2).transpose(1, 2)  # raster order
    pos = torch.cat([patches[:, :8], cls, patches[:, 8:]], dim=1)  # class slot at 16 // 2
    out = resize_pos_embed(pos, old, new)
    expected_grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert out.shape == (1, 31, dim)
    torch.testing.assert_close(out[:, 15], cls[:, 0])  # 30 patches -> class slot 15
    torch.testing.assert_close(torch.cat([out[:, :15], out[:, 16:]], 1), expected_grid)
    assert resize_pos_embed(pos, old, old) is pos
    with pytest.raises(ValueError, match="needs 17"):
        resize_pos_embed(pos[:, :-1], old, new)


def test_official_initialisation_and_its_quirks(seed):
    model = vimamba.create_model("vim_tiny_patch16_224", depth=4)
    mixer = model.layers[2].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001  # log-uniform in [dt_min, dt_max]
    assert torch.equal(mixer.dt_proj_b.bias, torch.zeros(384))  # official: the backward dt bias is 0
    assert mixer.dt_proj.weight.abs().max() <= 12 ** -0.5
    assert torch.allclose(mixer.A_log[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(mixer.D, torch.ones(384)) and torch.equal(mixer.D_b, torch.ones(384))
    bound = 1 / math.sqrt(384) / math.sqrt(4)
    assert mixer.out_proj.weight.abs().max() <= bound and mixer.out_proj.weight.abs().max() > 0.8 * bound
    assert abs(model.pos_embed.std().item() - 0.02) < 0.002 and torch.equal(model.head.bias, torch.zeros(1000))

    symmetric = vimamba.create_model("vim_tiny_patch16_224", depth=2, symmetric_init=True).layers[0].mixer
    dt_b = F.softplus(symmetric.dt_proj_b.bias)
    assert dt_b.min() >= 1e-3 * 0.999 and dt_b.max() <= 0.1 * 1.001


def test_drop_path_schedule_is_linear_over_depth():
    model = vimamba.create_model("vim_tiny_patch16_224", depth=5, embed_dim=8, drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_forward_intermediates(seed):
    model = tiny_vim(depth=4).eval()
    x = torch.randn(2, 3, 20, 28)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[1, 3])
        assert [m.shape for m in maps] == [(2, 16, 5, 7)] * 2
        torch.testing.assert_close(final, model.forward_features(x))
        # the last residual map, normalised, is the final feature map without the class token
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        tokens = torch.cat([final[:, :17], final[:, 18:]], 1)  # 35 patches: class token at 17
        torch.testing.assert_close(normed, tokens.transpose(1, 2).reshape(2, 16, 5, 7))
        mixer = model.forward_intermediates(x, indices=[3], feature="mixer", intermediates_only=True)[0]
        assert not torch.allclose(mixer, maps[1])
        nlc = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        assert [m.shape for m in nlc] == [(2, 35, 16)] * 2
    pruned = tiny_vim(depth=4)
    assert pruned.prune_intermediate_layers([0, 1]) == [0, 1] and len(pruned.layers) == 2


def test_bad_inputs_give_clear_errors():
    model = tiny_vim()
    with pytest.raises(ValueError, match="3-channel"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="smaller than one"):
        model(torch.randn(1, 3, 2, 16))
    with pytest.raises(ValueError, match="stride"):
        VimConfig(stride=32)


def test_grad_checkpointing_gives_the_same_gradients(seed):
    model = tiny_vim().train()
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)

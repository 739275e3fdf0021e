"""Checkpoints in and out: official layouts, our .pth and .safetensors, resizing, and clear refusals."""
import argparse
import json

import pytest
import torch

import vimamba
from vimamba.checkpoints import read_checkpoint
from vimamba.checkpoints.state_dicts import infer_config
from vimamba.models import CheckpointError, load_checkpoint, save_weights

from conftest import tiny_vim


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_keeps_weights_config_and_class_names(tmp_path, seed, suffix):
    model = tiny_vim(img_size=(16, 12))
    names = ["cat", "dog", "emu", "fox", "gnu"]
    path = save_weights(model, tmp_path / f"w{suffix}", class_names=names)
    ckpt = read_checkpoint(path)
    assert ckpt.class_names == names and ckpt.vim_config()["img_size"] == [16, 12]
    assert ckpt.arch["name"] == "vim_tiny_patch16_224" and ckpt.arch["overrides"]["embed_dim"] == 16
    assert ckpt.task == "classification"
    assert ckpt.source_format == {".pth": "vimamba-2", ".safetensors": "safetensors"}[suffix]
    rebuilt = vimamba.load_model(path)
    assert _same_weights(model, rebuilt) and rebuilt.class_names == names
    assert rebuilt.cfg == model.cfg
    fresh = tiny_vim(img_size=(16, 12))
    load_checkpoint(fresh, path)
    assert _same_weights(model, fresh)


def test_official_training_checkpoint_layout_loads_strictly(tmp_path, seed):
    """Official files: {'model', 'model_ema', 'optimizer', ..., 'args': argparse.Namespace}, no vimamba metadata."""
    trained, ema = tiny_vim(), tiny_vim()
    path = tmp_path / "official.pth"
    torch.save({"model": trained.state_dict(), "model_ema": ema.state_dict(), "epoch": 299,
                "optimizer": {"state": {}, "param_groups": []}, "args": argparse.Namespace(lr=5e-4, model="vim")},
               path)
    model = tiny_vim()
    report = load_checkpoint(model, path)
    assert _same_weights(model, trained) and not report.missing_keys and not report.unexpected_keys
    load_checkpoint(model, path, weights="ema")
    assert _same_weights(model, ema)
    # the plain torch way the official code uses also works, strict=True
    model.load_state_dict(torch.load(path, weights_only=False)["model"], strict=True)


def test_bare_and_wrapped_state_dicts(tmp_path, seed):
    trained = tiny_vim()
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "ddp.pth")
    model = tiny_vim()
    load_checkpoint(model, tmp_path / "ddp.pth")
    assert _same_weights(model, trained)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_checkpoint(tmp_path / "ddp.pth").select("ema")


def test_official_architecture_is_inferred_from_the_shapes(tmp_path):
    with torch.device("meta"):
        state = vimamba.models.VisionMamba(vimamba.models.model_config("vim_small_patch16_stride8_224")).state_dict()
    config = infer_config(state)
    assert config["embed_dim"] == 384 and config["stride"] == 8 and config["img_size"] == 224
    assert vimamba.models.registry.find_registered_name(config) == "vim_small_patch16_stride8_224"


def test_wrong_architecture_is_refused_with_names_and_a_suggestion(tmp_path):
    other = vimamba.create_model("vim_small_patch16_224", depth=2)
    torch.save({"model": other.state_dict()}, tmp_path / "small.pth")
    model = vimamba.create_model("vim_tiny_patch16_224", depth=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "small.pth")
    message = str(err.value)
    assert "mis-shaped keys" in message and "cls_token: checkpoint (1, 1, 384) vs model (1, 1, 192)" in message
    assert "embed_dim=384" in message and "depth=2" in message
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was half-loaded


def test_deeper_checkpoint_lists_unexpected_and_registered_name(tmp_path):
    full = vimamba.create_model("vim_tiny_patch16_224")
    path = save_weights(full, tmp_path / "tiny.safetensors")
    shallow = vimamba.create_model("vim_tiny_patch16_224", depth=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(shallow, path)
    assert "unexpected keys (374)" in str(err.value) and "registered as 'vim_tiny_patch16_224'" in str(err.value)
    report = load_checkpoint(shallow, path, strict=False)
    assert len(report.unexpected_keys) == 374


def test_foreign_checkpoints_are_named(tmp_path):
    deit = {"cls_token": torch.zeros(1, 1, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    with pytest.raises(CheckpointError, match="ViT/DeiT"):
        load_checkpoint(tiny_vim(), deit)
    rope = {"rope.freqs_cos": torch.zeros(196, 192), "pos_embed": torch.zeros(1, 196, 192)}
    with pytest.raises(CheckpointError, match="RoPE"):
        load_checkpoint(tiny_vim(), rope)


def test_head_of_another_size_is_skipped_only_when_asked(tmp_path, seed):
    trained = tiny_vim(num_classes=7)
    path = save_weights(trained, tmp_path / "seven.pth")
    with pytest.raises(CheckpointError, match="head.weight"):
        load_checkpoint(tiny_vim(num_classes=3), path)
    model = tiny_vim(num_classes=3)
    report = load_checkpoint(model, path, ignore_head=True)
    assert report.skipped == ["head.weight", "head.bias"]
    assert torch.equal(model.layers[1].mixer.A_log, trained.layers[1].mixer.A_log)
    fresh_head = vimamba.create_model("vim_tiny_patch16_224", pretrained=path, **{**trained.cfg.to_dict(),
                                                                                  "num_classes": 3})
    assert fresh_head.head.weight.shape == (3, 16)


def test_stride16_checkpoint_into_stride8_model_keeps_the_class_slot(tmp_path, seed):
    """The long-sequence fine-tune set-up: 4x4 grid (class at 8) -> 7x7 grid (class at 24), no half-patch shift."""
    source = tiny_vim()
    path = save_weights(source, tmp_path / "s4.safetensors")
    target = tiny_vim(stride=2)
    report = load_checkpoint(target, path)
    assert report.resized == ["pos_embed (1, 17, 16) -> (1, 50, 16)"]
    torch.testing.assert_close(target.pos_embed[:, 24], source.pos_embed[:, 8])
    expected = vimamba.models.resize_pos_embed(source.pos_embed.detach(), (4, 4), (7, 7))
    torch.testing.assert_close(target.pos_embed.detach(), expected)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    good = save_weights(tiny_vim(), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(truncated)
    st = save_weights(tiny_vim(), tmp_path / "good.safetensors")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad_st)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        read_checkpoint(text)


def test_untrusted_pickles_are_refused_unless_trusted(tmp_path, seed):
    from fractions import Fraction  # an arbitrary Python object next to the weights

    path = tmp_path / "pickled.pth"
    torch.save({"model": tiny_vim().state_dict(), "extra": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_checkpoint(path)
    assert read_checkpoint(path, trust_pickle=True).weights_key == "'model'"


def test_save_is_atomic(tmp_path, seed, monkeypatch):
    path = save_weights(tiny_vim(), tmp_path / "w.pth")
    original = path.read_bytes()

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tiny_vim(num_classes=2), path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]  # no temporary left behind


def test_safetensors_metadata_is_plain_json(tmp_path):
    from safetensors import safe_open

    path = save_weights(tiny_vim(), tmp_path / "w.safetensors", class_names=["a", "b", "c", "d", "e"])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["class_names"]) == ["a", "b", "c", "d", "e"]
    assert json.loads(meta["vimamba_config"])["embed_dim"] == 16


def test_pretrained_download_without_network_says_what_to_do(monkeypatch):
    import timm.models._hub

    def no_network(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    with pytest.raises(RuntimeError, match="hustvl/Vim-tiny-midclstok.*pretrained='path/to/vim_t_midclstok_76p1acc"):
        vimamba.create_model("vim_tiny_patch16_224", pretrained=True, depth=1)
    with pytest.raises(ValueError, match="pretrained=PATH"):
        vimamba.create_model("vim_tiny_patch16_224", pretrained=True, weights="ema")

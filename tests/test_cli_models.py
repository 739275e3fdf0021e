"""`vimamba models | info | convert` as a user runs them."""
import argparse
import json

import torch

import vimamba
from vimamba.cli import main
from vimamba.checkpoints import read_checkpoint

from conftest import tiny_vim


def test_models_lists_names_counts_and_official_accuracy(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vim_tiny_patch16_224" in out and "7,148,008" in out and "76.1" in out
    assert "midclstok" not in out
    assert main(["models", "vim_small*", "--aliases"]) == 0
    out = capsys.readouterr().out
    assert "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2" in out
    assert "vim_tiny" not in out


def test_info_of_a_name_and_of_a_checkpoint(tmp_path, capsys):
    assert main(["info", "vim_tiny_patch16_stride8_224", "--img-size", "1248"]) == 0
    out = capsys.readouterr().out
    assert "7,250,344" in out and "1248x1248: 155x155 patches + 1 class token = 24026 tokens" in out
    path = vimamba.save_weights(tiny_vim(), tmp_path / "m.pth", class_names=list("abcde"))
    assert main(["info", str(path)]) == 0
    assert "classes (5): a, b, c, d, e" in capsys.readouterr().out


def test_convert_official_layout_to_safetensors(tmp_path, capsys):
    model = tiny_vim()
    src = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "args": argparse.Namespace(x=1)}, src)
    out = tmp_path / "weights.safetensors"
    assert main(["convert", "--checkpoint", str(src), "--output", str(out), "--weights", "ema"]) == 0
    assert "weights from 'model_ema'" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    assert all(torch.equal(ckpt.weights[k], v) for k, v in model.state_dict().items())


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["info", "vim_gigantic"]) == 1
    assert "error: unknown Vim model 'vim_gigantic'" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 10)
    assert main(["convert", "--checkpoint", str(bad), "--output", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "could not read" in err and "Traceback" not in err


def test_info_json_of_a_name(capsys):
    assert main(["info", "vim_tiny_patch16_224", "--json", "--img-size", "224", "448"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 7_148_008 and info["config"]["embed_dim"] == 192
    assert info["tokens"] == {"224x224": {"grid": [14, 14], "tokens": 197},
                              "448x448": {"grid": [28, 28], "tokens": 785}}


def test_convert_writes_the_current_format_with_the_inferred_architecture(tmp_path, capsys):
    model = tiny_vim()
    src = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(x=1)}, src)
    out = tmp_path / "weights.pth"
    assert main(["convert", str(src), str(out)]) == 0
    ckpt = read_checkpoint(out)
    assert ckpt.source_format == "vimamba-2" and ckpt.task == "classification"
    assert ckpt.vim_config() == {**model.cfg.to_dict(), "scan_impl": None, "drop_path_rate": 0.1}
    assert all(torch.equal(ckpt.weights[k], v) for k, v in model.state_dict().items())
    import timm

    deit = timm.create_model("deit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=1,
                             num_heads=2, num_classes=2)
    torch.save({"format": "vimamba", "format_version": 2, "task": "classification",
                "arch": {"name": "deit_tiny_patch16_224", "family": "timm",
                         "overrides": dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                                           num_classes=2)},
                "model": deit.state_dict()}, tmp_path / "deit.pth")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "deit.pth"), str(tmp_path / "deit.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a VisionTransformer, not a Vim" in err[0]
    assert not (tmp_path / "deit.safetensors").exists()

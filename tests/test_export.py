"""Export: the blocked scan, ONNX in onnxruntime and torch.export programs against the eager model, the stored
preprocessing, `vimamba predict --onnx`, segmentation export, and clear errors for checkpoints that do not export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import tiny_vim  # noqa: E402
from vimamba.cli import main as cli  # noqa: E402
from vimamba.data import Preprocessing  # noqa: E402
from vimamba.dense.backbone import BackboneConfig  # noqa: E402
from vimamba.dense.segmentor import SegmentorConfig, build_segmentor  # noqa: E402
from vimamba.export import load_program  # noqa: E402
from vimamba.export.runtime import OnnxModel  # noqa: E402
from vimamba.export.scan import BLOCK, LEVELS, bidirectional_scan_export  # noqa: E402
from vimamba.models.checkpoint import save_weights  # noqa: E402
from vimamba.ops.reference import bidirectional_scan_reference  # noqa: E402

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
PRE = Preprocessing(img_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear",
                    crop_pct=0.9)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(eager model, its .safetensors checkpoint) of a 5-class Vim on 16x16 images, patch 4."""
    torch.manual_seed(0)
    model = tiny_vim(depth=2).eval()
    with torch.no_grad():  # a less trivial model than the init: spread the decays and the class scores
        for layer in model.layers:
            layer.mixer.A_log.uniform_(-1.0, 2.5)
            layer.mixer.A_b_log.uniform_(-1.0, 2.5)
        model.head.weight.normal_(0, 1.0)
    path = save_weights(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", class_names=CLASSES,
                        preprocessing=PRE.to_dict())
    return model, path


@pytest.fixture(scope="module")
def onnx_dynamic(classifier, tmp_path_factory):
    _, ckpt = classifier
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out), "--dynamic"]) == 0
    return out


def _images(batch, height, width, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- the scan
@pytest.mark.parametrize("length", [1, BLOCK - 1, BLOCK + 1, 97, BLOCK ** LEVELS + 45])
def test_blocked_scan_equals_sequential_reference(length):
    """Lengths inside one block, across blocks, and past BLOCK**LEVELS (the closed form over several positions)."""
    g = torch.Generator().manual_seed(length)
    b, e, n = 2, 6, 4
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = [rand(b, length, e), rand(b, length, e), rand(b, length, e), rand(b, length, e),
            rand(b, length, n), rand(b, length, n), rand(b, length, n), rand(b, length, n),
            -torch.rand(e, n, generator=g) * 8, -torch.rand(e, n, generator=g) * 8,
            rand(e), rand(e), rand(e), rand(e), rand(b, length, e)]
    expected = bidirectional_scan_reference(*[a.double() for a in args])
    got = bidirectional_scan_export(*args)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-5)


def test_blocked_scan_survives_strong_decay_on_long_sequences():
    """-A * delta of hundreds per token over 600 tokens: no inf/NaN, equals the reference."""
    g = torch.Generator().manual_seed(1)
    b, length, e, n = 1, 600, 4, 4
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    dt = rand(b, length, e) + 6.0  # softplus ~ 6
    A = -torch.full((e, n), 80.0)
    args = [rand(b, length, e), rand(b, length, e), dt, dt.clone(), rand(b, length, n), rand(b, length, n),
            rand(b, length, n), rand(b, length, n), A, A.clone(), rand(e), rand(e), rand(e), rand(e), None]
    got = bidirectional_scan_export(*args)
    assert torch.isfinite(got).all()
    expected = bidirectional_scan_reference(*[a.double() if a is not None else None for a in args])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 24, 20)])
def test_onnx_dynamic_equals_eager(classifier, onnx_dynamic, shape):
    """At the native size and at another size and batch (position embedding resized inside the graph)."""
    model, _ = classifier
    images = _images(*shape)
    with torch.no_grad():
        expected = model(images)
    got = OnnxModel(onnx_dynamic)(images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_onnx_metadata_round_trip(onnx_dynamic):
    meta = OnnxModel(onnx_dynamic).metadata
    assert meta.task == "classification" and meta.dynamic and meta.class_names == CLASSES
    assert Preprocessing.from_dict(meta.preprocessing) == PRE
    assert tuple(meta.input_size) == (16, 16) and meta.min_size == 8


def test_predict_with_onnx_equals_predict_with_checkpoint(classifier, onnx_dynamic, tmp_path, capsys):
    _, ckpt = classifier
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 18, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    capsys.readouterr()
    assert cli(["predict", "--checkpoint", str(ckpt), *paths, "--json", "--top-k", "3"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert cli(["predict", "--onnx", str(onnx_dynamic), *paths, "--json", "--top-k", "3"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in from_onnx] == paths
    for a, b in zip(from_checkpoint, from_onnx):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-5)


def test_static_onnx_takes_its_size_only(classifier, tmp_path, capsys):
    model, ckpt = classifier
    out = tmp_path / "static.onnx"
    assert cli(["export", str(ckpt), "--output", str(out), "--img-size", "20", "24"]) == 0
    onnx_model = OnnxModel(out)
    assert not onnx_model.metadata.dynamic and tuple(onnx_model.metadata.input_size) == (20, 24)
    images = _images(2, 20, 24)
    with torch.no_grad():
        expected = model(images)
    assert (onnx_model(images) - expected).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="20x24"):
        onnx_model(_images(1, 16, 16))


# ---------------------------------------------------------------------------------------------------- torch.export
def test_torch_export_program_equals_eager_at_two_sizes(classifier, tmp_path):
    model, ckpt = classifier
    out = tmp_path / "tiny.pt2"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "torch-export", "--output", str(out),
                "--dynamic"]) == 0
    program, meta = load_program(out)
    assert meta.class_names == CLASSES and Preprocessing.from_dict(meta.preprocessing) == PRE
    module = program.module()
    for shape in [(1, 16, 16), (3, 28, 20)]:
        images = _images(*shape, seed=1)
        with torch.no_grad():
            torch.testing.assert_close(module(images), model(images), rtol=1e-5, atol=1e-5)


def test_safetensors_export_keeps_preprocessing_and_classes(classifier, tmp_path, capsys):
    model, ckpt = classifier
    out = tmp_path / "again.safetensors"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--output", str(out)]) == 0
    from vimamba.train.models import load_classifier

    loaded = load_classifier(out)
    assert loaded.class_names == CLASSES and loaded.preprocessing == PRE
    images = _images(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(images), model(images))


# ---------------------------------------------------------------------------------------------------- segmentation
def test_segmentation_checkpoint_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    config = SegmentorConfig(num_classes=3, channels=8, aux_channels=8, pool_scales=(1, 2, 3, 6),  # the official
                             backbone=BackboneConfig(vim=dict(embed_dim=16, depth=4, d_state=4, img_size=32,
                                                              drop_path_rate=0.0, patch_size=8, stride=8),
                                                     strides=(4, 8, 16, 32)))
    model = build_segmentor(config).eval()
    ckpt = tmp_path / "seg.pth"
    torch.save({"dense_task": "segmentation", "dense_config": config.to_dict(), "class_names": ["a", "b", "c"],
                "data_config": {"crop_size": [32, 32], "scale": [64, 32]}, "model": model.state_dict()}, ckpt)
    out = tmp_path / "seg.onnx"
    assert cli(["export", "--checkpoint", str(ckpt), "--output", str(out), "--dynamic"]) == 0
    onnx_model = OnnxModel(out)
    assert onnx_model.metadata.task == "segmentation" and onnx_model.metadata.class_names == ["a", "b", "c"]
    assert onnx_model.metadata.preprocessing["crop_size"] == [32, 32]
    assert onnx_model.metadata.min_size == 64 and onnx_model.metadata.size_multiple == 8  # 2 cells at stride 32
    for shape in [(1, 64, 64), (2, 80, 72)]:
        images = _images(*shape, seed=2)
        with torch.no_grad():
            expected = model(images)
        got = onnx_model(images)
        assert got.shape == expected.shape == (shape[0], 3, shape[1], shape[2])
        assert (got - expected).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------------------- errors
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_wrong_kind_of_checkpoint_is_one_clear_error(tmp_path, capsys):
    detection = tmp_path / "det.pth"
    torch.save({"dense_task": "detection", "dense_config": {}, "model": {}}, detection)
    assert cli(["export", "--checkpoint", str(detection), "--output", str(tmp_path / "det.onnx")]) == 1
    assert "detection" in _one_error_line(capsys)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    assert cli(["export", "--checkpoint", str(corrupt), "--output", str(tmp_path / "c.onnx")]) == 1
    assert "corrupt.pth" in _one_error_line(capsys)

    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}}, foreign)
    assert cli(["export", "--checkpoint", str(foreign), "--output", str(tmp_path / "f.onnx")]) == 1
    assert "foreign.pth" in _one_error_line(capsys)

    assert cli(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "m.onnx")]) == 1
    assert "not found" in _one_error_line(capsys)
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written


def test_predict_onnx_rejects_a_file_that_is_not_an_exported_model(tmp_path, capsys):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00\x01 not onnx")
    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    assert cli(["predict", "--onnx", str(bogus), str(image)]) == 1
    assert "bogus.onnx" in _one_error_line(capsys)

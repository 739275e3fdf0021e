"""End to end on synthetic shapes: training makes the loss fall and mIoU / AP rise well above the untrained model's;
eval and predict work from the checkpoint alone; an interrupted run resumes to the same weights."""
import json
import os
import signal

import pytest
import torch
from PIL import Image

from vimamba.cli import main
from vimamba.dense.backbone import BackboneConfig
from vimamba.dense.checkpoint import build_dense_model, load_dense_model
from vimamba.dense.coco_data import CocoDetection
from vimamba.dense.training import SegmentationTask
from vimamba.engine.checkpointing import TrainingCheckpointError
from vimamba.engine.config import EngineConfig
from vimamba.engine.loop import run as run_engine
from vimamba.dense.evaluate import evaluate_detection, evaluate_segmentation
from vimamba.dense.seg_data import SegEvalTransform, SegmentationDataset, SegTrainTransform
from vimamba.dense.segmentor import SegmentorConfig, build_segmentor
from vimamba.dense.synthetic import write_ade20k_shapes, write_coco_shapes
from vimamba.models.checkpoint import CheckpointError
from vimamba.engine.distributed import DistInfo, seed_everything

TINY_VIM = ["embed_dim=32", "depth=4", "patch_size=8", "stride=8", "img_size=64", "drop_path_rate=0"]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _untrained_like(checkpoint):
    """A freshly initialised model of the checkpoint's architecture (the 'before training' reference)."""
    _, info = load_dense_model(checkpoint)
    seed_everything(0)
    return build_dense_model(info.task, info.config).eval(), info


def test_segmentation_train_eval_predict(tmp_path, capsys):
    data, run = tmp_path / "shapes", tmp_path / "run"
    write_ade20k_shapes(data, {"training": 16}, size=(64, 64), seed=0)
    code = main(["segment", "train", "--data", str(data), "--dataset", "custom", "--num-classes", "4",
                 "--vim", *TINY_VIM, "--feature", "residual", "--channels", "32",
                 "--crop-size", "64", "64", "--scale", "256", "64", "--ratio-range", "0.75", "1.5",
                 "--eval-mode", "whole", "--val-split", "training", "--output", str(run), "--iterations", "40",
                 "--batch-size", "4", "--lr", "1e-2",
                 "--weight-decay", "0.01", "--layer-decay", "1", "--warmup-iters", "3", "--eval-interval", "40",
                 "--log-interval", "10", "--workers", "0"])
    assert code == 0
    records = _records(run)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["train_loss"] < 0.7 * records[0]["train_loss"]
    assert {"train_loss_decode", "train_loss_aux"} <= set(records[0])  # each loss of the model, logged
    trained_miou = json.loads((run / "summary.json").read_text())["final_mIoU"]

    untrained, info = _untrained_like(run / "last.pth")
    assert info.task == "segmentation" and info.class_names == [f"class_{c}" for c in range(4)]
    dataset = SegmentationDataset(data, "training", 4, transform=SegEvalTransform(None))
    untrained_miou = evaluate_segmentation(untrained, dataset, device=CPU, mode="whole", workers=0)["mIoU"]
    assert trained_miou > untrained_miou + 0.12, (untrained_miou, trained_miou)

    # eval from the checkpoint alone gives the run's own number; slide mode runs too
    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["segment", "eval", "--checkpoint", str(run / "best.pth"), "--data", str(data), "--split", "training",
                 "--mode", "whole", "--output", str(out), "--workers", "0", "--json"]) == 0
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(trained_miou, abs=1e-6)
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text())  # --json: stdout is the metrics

    image = data / "images" / "training" / "shapes_00000.jpg"
    # the older spelling, the checkpoint as the first argument, still works
    assert main(["segment", "predict", str(run / "last.pth"), str(image), "--output", str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / "shapes_00000_mask.png")
    assert mask.mode == "P" and mask.size == (64, 64)
    assert Image.open(tmp_path / "pred" / "shapes_00000_overlay.png").size == (64, 64)


def test_detection_train_eval_predict(tmp_path, capsys):
    image_dir, annotations = write_coco_shapes(tmp_path / "shapes", 16, sizes=((64, 64),), seed=0, crowd_every=4)
    run = tmp_path / "run"
    code = main(["detect", "train", "--images", str(image_dir), "--annotations", str(annotations),
                 "--val-annotations", str(annotations), "--image-size", "64", "--no-lsj",
                 "--anchor-sizes", "8", "16", "32", "64", "128", "--pyramid-channels", "32",
                 "--detector", "head_channels=32", "box_fc=64", "box_head_convs=2", "mask_head_convs=2",
                 "rpn_batch_size_per_image=64", "box_batch_size_per_image=64", "rpn_post_nms_top_n_train=100",
                 "rpn_post_nms_top_n_test=100", "detections_per_img=20",
                 "--vim", *TINY_VIM, "--output", str(run), "--iterations", "60", "--batch-size", "4",
                 "--lr", "2e-3", "--weight-decay", "0.01", "--layer-decay", "1", "--schedule", "multistep",
                 "--milestones", "55", "--warmup-iters", "3", "--eval-interval", "60", "--log-interval", "10",
                 "--workers", "0"])
    assert code == 0
    records = _records(run)
    assert records[-1]["train_loss"] < 0.7 * records[0]["train_loss"]
    summary = json.loads((run / "summary.json").read_text())

    untrained, info = _untrained_like(run / "last.pth")
    assert info.task == "detection" and info.class_names == ["square", "disc", "triangle"]
    dataset = CocoDetection(image_dir, annotations)
    before = evaluate_detection(untrained, dataset, device=CPU, workers=0)
    assert summary["final_bbox_AP"] > before["bbox"]["AP"] + 0.15, (before, summary)
    assert summary["final_segm_AP"] > before["segm"]["AP"] + 0.15, (before, summary)

    out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(run / "last.pth"), "--images", str(image_dir),
                 "--annotations", str(annotations), "--output", str(out), "--workers", "0", "--json"]) == 0
    assert json.loads(out.read_text())["bbox"]["AP"] == pytest.approx(summary["final_bbox_AP"], abs=1e-6)
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text())

    pred = tmp_path / "pred"
    assert main(["detect", "predict", "--checkpoint", str(run / "last.pth"), str(image_dir / "shapes_00001.jpg"),
                 "--output", str(pred), "--score-thresh", "0.3"]) == 0
    assert Image.open(pred / "shapes_00001_detections.png").size == (64, 64)
    detections = json.loads((pred / "detections.json").read_text())
    assert all(d["category_id"] in (3, 7, 11) and d["score"] >= 0.3 for d in detections)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = tmp_path / "shapes"
    write_ade20k_shapes(data, {"training": 20}, size=(32, 32), seed=3)
    train_set = SegmentationDataset(data, "training", 4, transform=SegTrainTransform((32, 32), (128, 32)))
    config = SegmentorConfig(num_classes=4, dropout=0.0, channels=16, aux_channels=8, backbone=BackboneConfig(
        vim=dict(embed_dim=16, depth=2, patch_size=8, stride=8, img_size=32, drop_path_rate=0.0), out_indices=(1,)))
    stop_once = {"armed": False}

    class StopWhileEvaluating(SegmentationTask):
        def evaluate(self, model, loader):
            if stop_once["armed"]:  # Ctrl-C while evaluating at step 3: the run saves after step 4 and stops
                stop_once["armed"] = False
                os.kill(os.getpid(), signal.SIGINT)
            return {"mIoU": 0.0}

    def run(output, resume=None, model_config=config):
        settings = EngineConfig(steps=6, batch_size=4, lr=1e-3, unscale_lr=True, warmup_steps=2, eval_interval=3,
                                log_interval=1, save_interval=100, workers=0, device="cpu", output=str(output),
                                resume=str(resume) if resume else None)
        task = StopWhileEvaluating(model_config, train_set, eval_set=train_set)
        result = run_engine(task, settings)
        return load_dense_model(output / "last.pth")[0], result

    straight, _ = run(tmp_path / "straight")
    stop_once["armed"] = True
    _, stopped = run(tmp_path / "interrupted")
    assert stopped.exit_code == 130 and stopped.step == 4
    resumed, finished = run(tmp_path / "interrupted", resume=tmp_path / "interrupted" / "last.pth")
    assert finished.exit_code == 0 and finished.step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r["step"] for r in _records(tmp_path / "interrupted")] == [1, 2, 3, 4, 5, 6]

    other = SegmentorConfig(num_classes=5, backbone=config.backbone)
    with pytest.raises(TrainingCheckpointError, match="another model configuration"):
        run(tmp_path / "interrupted", resume=tmp_path / "interrupted" / "last.pth", model_config=other)


def test_dense_checkpoint_errors(tmp_path):
    from vimamba import create_model, save_weights

    classifier = save_weights(create_model("vim_tiny_patch16_224", embed_dim=16, depth=1), tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="classification checkpoint.*--pretrained"):
        load_dense_model(classifier)
    (tmp_path / "cut.pth").write_bytes(classifier.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dense_model(tmp_path / "cut.pth")
    assert main(["segment", "eval", "--checkpoint", str(tmp_path / "nothing.pth"), "--data", str(tmp_path)]) == 1

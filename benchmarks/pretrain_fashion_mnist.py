"""The proof that self-supervised pretraining helps a small Vim, on Fashion-MNIST at a scale a 2-core CPU runs.

Issue 12, item 5. For each objective (ar, mae) a ~0.5M-parameter Vim (patch 4 on 32x32 = 8x8 patches, width 96,
depth 6) is pretrained on the 60,000 training images without labels; then, over 3 seeds, mean +- std:

1. k-NN (k=20, cosine, DINO's weighted vote) and linear-probe accuracy of the frozen features, pretrained vs the
   same encoder randomly initialised;
2. fine-tuning on 1% (600) / 10% (6,000) class-balanced labelled images and on the full set: from pretraining vs
   from scratch with the same fine-tuning budget, and from scratch with a longer budget (so "more epochs" is not the
   hidden explanation).

    python benchmarks/pretrain_fashion_mnist.py --temporary-loop --steps 300   # smoke test of the objectives only
    python benchmarks/pretrain_fashion_mnist.py                                # the full proof (needs the engine)

WHAT WAITS FOR THE TRAINING ENGINE (issue 11). Pretraining and fine-tuning are runs of the shared step-counted
engine (``vimamba pretrain`` / ``vimamba train --init``), with its progress, resume and checkpoints. The two
functions marked ``ENGINE`` below are where those runs plug in; until then they raise, except that
``--temporary-loop`` pretrains with :func:`temporary_minimal_pretraining_loop`, a deliberately bare loop (no resume,
no checkpoints, no distributed) that exists only to check that the objectives learn. Its figures are smoke-test
figures, not the proof. Everything else here (data, splits, probes, the results table) is final.

Timings and accuracies depend on the machine and on what else runs on it: record the machine with them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from vimamba.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from vimamba.data.fashion_mnist import FashionMNIST, ensure_fashion_mnist
from vimamba.data.transforms import Preprocessing
from vimamba.models.vim import VimConfig, VisionMamba
from vimamba.pretrain import (build_objective, config_for, knn_accuracy, save_pretraining_checkpoint,
                              write_reconstructions)
from vimamba.pretrain.probe import train_linear_probe
from vimamba.engine.optim import build_param_groups

# ---------------------------------------------------------------------------------------------------- the setup
ENCODER = dict(img_size=32, patch_size=4, stride=4, in_chans=1, embed_dim=96, depth=6, d_state=16, num_classes=0,
               drop_path_rate=0.0)
OBJECTIVE_KWARGS = {"ar": dict(cluster_size=2, decoder_dim=64, decoder_depth=2, decoder_heads=4),
                    "mae": dict(mask_ratio=0.75, decoder_dim=64, decoder_depth=2, decoder_heads=4)}
LABEL_FRACTIONS = {"1%": 600, "10%": 6000, "full": 60000}
# how `vimamba probe` prepares Fashion-MNIST for these checkpoints: the same bilinear resize and normalisation
PREPROCESSING = Preprocessing(img_size=(32, 32), in_chans=1, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                              interpolation="bilinear", crop_pct=1.0)


def load_fashion_mnist(img_size: int) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Both splits in memory: images resized to img_size (bilinear), normalised; labels."""
    root = ensure_fashion_mnist()
    out = {}
    for split in ("train", "test"):
        ds = FashionMNIST(root, split=split)
        x = ds.images.float().div(255).unsqueeze(1)
        if img_size != 28:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        out[split] = ((x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], ds.targets.clone())
    return out


def balanced_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of ``count`` images, the same number per class, chosen with ``seed``."""
    classes = int(labels.max()) + 1
    per_class = count // classes
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(classes):
        members = (labels == c).nonzero().squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def augment(images: torch.Tensor, generator: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)
            ) -> torch.Tensor:
    """Per-image RandomResizedCrop (area fraction in ``scale``, aspect in ``ratio``, bilinear) + horizontal flip, on
    a batch of normalised tensors at once (torchvision's roi_align does the crops and resizes)."""
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(*scale, generator=generator) * h * w
    aspect = torch.exp(torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    crop_w = torch.sqrt(area * aspect).clamp(max=w)
    crop_h = torch.sqrt(area / aspect).clamp(max=h)
    left = torch.rand(b, generator=generator) * (w - crop_w)
    top = torch.rand(b, generator=generator) * (h - crop_h)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), left, top, left + crop_w, top + crop_h], dim=1)
    out = roi_align(images, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


# ---------------------------------------------------------------------------------------------------- ENGINE
def pretrain_with_engine(objective_name: str, args, output: Path) -> Path:
    """ENGINE: pretrain with ``vimamba pretrain`` (issue 11's engine) and return the checkpoint path.

    The run to launch (one per objective): ``vimamba pretrain --dataset fashion-mnist --objective NAME
    --img-size 32 --patch-size 4 --embed-dim 96 --depth 6 --d-state 16 --decoder-dim 64 --decoder-depth 2
    --decoder-heads 4 [--cluster-size 2 | --mask-ratio 0.75] --epochs 20-50 --batch-size 256 --blr 1.5e-4 (sweep
    x1-x4) --warmup-epochs 5 --scale 0.5 1 --output OUTPUT/NAME``.
    """
    raise NotImplementedError("pretraining runs on the training engine (issue 11), which does not exist yet; pass "
                              "--temporary-loop for the smoke test of the objectives")


def finetune_with_engine(init: Optional[Path], subset: torch.Tensor, epochs: int, seed: int, args, output: Path
                         ) -> float:
    """ENGINE: fine-tune (``vimamba train --init CKPT --recipe ssl_finetune`` with the benchmark's sizes; ``init``
    None = from scratch) on the labelled ``subset`` of the training images; return the test top-1 (%).

    Same model, data and budget for pretrained and scratch runs: AdamW lr 1e-3, layer decay 0.75 (pretrained runs;
    scratch runs have nothing to decay toward, and get the same flag), light augmentation, no mixup at this scale,
    ``epochs`` scaled so that every labelled fraction sees the same number of optimiser steps or a stated budget.
    """
    raise NotImplementedError("fine-tuning runs on the training engine (issue 11), which does not exist yet")


# ---------------------------------------------------------------------------------------------------- TEMPORARY
def temporary_minimal_pretraining_loop(objective: torch.nn.Module, train_x: torch.Tensor, steps: int,
                                       batch_size: int, lr: float, seed: int, log_every: int = 25
                                       ) -> List[Tuple[int, float]]:
    """TEMPORARY, smoke test only, to be replaced by the engine: AdamW(0.9, 0.95), wd 0.05 (not on 1-D parameters,
    position embeddings and tokens), linear warm-up over 10% of the steps, cosine to 0. Returns (step, loss)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    groups = build_param_groups(objective, 0.05)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    schedule = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    objective.train()
    curve, running = [], []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, train_x.shape[0], (batch_size,), generator=generator)
        loss, _ = objective(augment(train_x[idx], generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 3.0)
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            mean = sum(running) / len(running)
            curve.append((step + 1, mean))
            print(f"  step {step + 1}/{steps}  loss {mean:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                  f"{(time.perf_counter() - start) / (step + 1):.2f} s/step", flush=True)
            running = []
    objective.eval()
    return curve


# ---------------------------------------------------------------------------------------------------- probes
@torch.no_grad()
def features(extract, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([extract(images[i:i + batch_size]).float() for i in range(0, images.shape[0], batch_size)])


def probe(extract, data, train_idx: torch.Tensor, test_idx: torch.Tensor, seed: int, probe_epochs: int
          ) -> Dict[str, float]:
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    f_train, f_test = features(extract, train_x[train_idx]), features(extract, test_x[test_idx])
    knn = knn_accuracy(f_train, train_y[train_idx], f_test, test_y[test_idx], num_classes=10)
    linear = train_linear_probe(f_train, train_y[train_idx], f_test, test_y[test_idx], num_classes=10,
                                epochs=probe_epochs, seed=seed)["top1"]
    return {"knn": knn, "linear": linear}


def mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=["ar", "mae"], choices=["ar", "mae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--temporary-loop", action="store_true",
                        help="pretrain with the TEMPORARY minimal loop (smoke test) instead of the engine")
    parser.add_argument("--steps", type=int, default=300, help="temporary loop: optimiser steps")
    parser.add_argument("--batch-size", type=int, default=128, help="temporary loop: images per step")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="temporary loop: peak learning rate")
    parser.add_argument("--embed-dim", type=int, default=ENCODER["embed_dim"])
    parser.add_argument("--depth", type=int, default=ENCODER["depth"])
    parser.add_argument("--knn-train", type=int, default=10000, help="k-NN bank / probe training images")
    parser.add_argument("--knn-test", type=int, default=2000, help="test images for the probes")
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--skip-finetune", action="store_true", help="only pretraining and probes")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--output", default="runs/pretrain-fashion-mnist")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    encoder_cfg = VimConfig(**{**ENCODER, "embed_dim": args.embed_dim, "depth": args.depth})
    data = load_fashion_mnist(encoder_cfg.img_size[0])
    results: Dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "encoder": encoder_cfg.to_dict(), "temporary_loop": args.temporary_loop, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "runs": []}
    print(f"encoder: {sum(p.numel() for p in VisionMamba(encoder_cfg).parameters()):,} parameters "
          f"(as a bidirectional classifier body)", flush=True)

    rows = []
    finetune_pending = False
    for seed in args.seeds:
        train_idx = balanced_subset(data["train"][1], args.knn_train, seed)
        test_idx = balanced_subset(data["test"][1], args.knn_test, seed)
        torch.manual_seed(seed)
        random_objective = build_objective(encoder_cfg, "mae", **OBJECTIVE_KWARGS["mae"]).eval()
        rows.append(("random init", seed, probe(lambda x: random_objective.extract_features(x), data, train_idx,
                                                test_idx, seed, args.probe_epochs)))
        print(f"seed {seed} random init: {rows[-1][2]}", flush=True)
        for name in args.objectives:
            torch.manual_seed(seed)
            objective = build_objective(encoder_cfg, name, **OBJECTIVE_KWARGS[name])
            before = probe(lambda x: objective.extract_features(x), data, train_idx, test_idx, seed,
                           args.probe_epochs) if name == "ar" else None
            if before is not None:  # the AR encoder reads cluster-major and forward-only: its own random baseline
                rows.append(("random init (ar encoder)", seed, before))
            if args.temporary_loop:
                print(f"seed {seed} {name}: TEMPORARY minimal loop, {args.steps} steps", flush=True)
                start = time.perf_counter()
                curve = temporary_minimal_pretraining_loop(objective, data["train"][0], args.steps, args.batch_size,
                                                           args.lr, seed)
                seconds = time.perf_counter() - start
                path = save_pretraining_checkpoint(objective, output / f"{name}-seed{seed}.pth",
                                                   config={"temporary_loop": True, "steps": args.steps},
                                                   preprocessing=PREPROCESSING.with_size(encoder_cfg.img_size[0]).to_dict())
            else:
                path = pretrain_with_engine(name, args, output)
                curve, seconds = [], None
            write_reconstructions(objective, data["test"][0][:8], output / f"{name}-seed{seed}-reconstructions.png",
                                  mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, title=f"{name}, seed {seed}")
            after = probe(lambda x: objective.extract_features(x), data, train_idx, test_idx, seed, args.probe_epochs)
            rows.append((f"{name} pretrained", seed, after))
            results["runs"].append({"objective": name, "seed": seed, "curve": curve, "seconds": seconds,
                                    "probe": after, "random_probe_same_encoder": before, "checkpoint": str(path)})
            print(f"seed {seed} {name}: loss {curve[0][1] if curve else float('nan'):.4f} -> "
                  f"{curve[-1][1] if curve else float('nan'):.4f}; probes {after}", flush=True)

            if not args.skip_finetune and not finetune_pending:
                try:
                    for fraction, count in LABEL_FRACTIONS.items():
                        subset = balanced_subset(data["train"][1], count, seed)
                        for init, label in ((path, "pretrained"), (None, "scratch"), (None, "scratch, longer")):
                            epochs = 30 if label != "scratch, longer" else 60
                            top1 = finetune_with_engine(init, subset, epochs, seed, args, output)
                            rows.append((f"{name} fine-tune {fraction} {label}", seed, {"top1": top1}))
                except NotImplementedError as e:
                    finetune_pending = True
                    results["finetune"] = f"pending: {e}"
                    print(f"fine-tuning skipped: {e}", flush=True)

    # ------------------------------------------------------------------ the table
    by_name: Dict[str, Dict[str, List[float]]] = {}
    for name, _, metrics in rows:
        for metric, value in metrics.items():
            by_name.setdefault(name, {}).setdefault(metric, []).append(value)
    lines = [f"| model | k-NN top-1 (%) | linear probe top-1 (%) | seeds |", "|---|---|---|---|"]
    for name, metrics in by_name.items():
        if "knn" in metrics:
            lines.append(f"| {name} | {mean_std(metrics['knn'])} | {mean_std(metrics['linear'])} | "
                         f"{len(metrics['knn'])} |")
    ft = [(n, m) for n, m in by_name.items() if "top1" in m]
    if ft:
        lines += ["", "| fine-tuning | test top-1 (%) | seeds |", "|---|---|---|"]
        lines += [f"| {n} | {mean_std(m['top1'])} | {len(m['top1'])} |" for n, m in ft]
    table = "\n".join(lines)
    results["table"] = table
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "results.md").write_text(table + "\n")
    print(f"\nmachine: {results['machine']}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

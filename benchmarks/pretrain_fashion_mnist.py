"""The proof that self-supervised pretraining helps a small Vim, on Fashion-MNIST at a scale a 2-core CPU runs.

Issue 12, item 5. A ~0.33M-parameter Vim (patch 4 on 28x28 resized to 32x32 = 8x8 patches, width 96, depth 4,
d_state 16) is pretrained with each objective (``ar``: next 2x2-patch cluster, ``mae``: 75% masked, kept patches in
raster order) for a fixed number of steps on the 60,000 training images without labels. Then, over 3 seeds
(each seed draws the class-balanced subsets, the heads' initialisation and the batch order), mean +- std:

1. k-NN (k=20, cosine, DINO's weighted vote) and linear-probe accuracy of the frozen features, pretrained vs the
   same encoder randomly initialised;
2. fine-tuning on 1% (600) class-balanced labelled images (and 10% / all when ``--fractions`` asks and the time
   budget allows): from pretraining vs from scratch with the same number of fine-tuning steps, and from scratch
   with ``--scratch-longer`` times the steps, so "more steps" is not the hidden explanation;
3. pretraining throughput against supervised (``vimamba train``-style) training of the same encoder, measured in
   one process, interleaved.

``vimamba pretrain`` / ``vimamba train --init`` are the user-facing commands. This script deliberately uses its own
plain loop, :func:`benchmark_loop` (AdamW, linear warm-up then cosine, a fixed number of steps, seeded; no resume,
no checkpoints during the run), so that its numbers depend on the objectives and the model only, not on the
features of the training engine. Pretraining runs once per objective (seed 0); the 3 seeds vary the evaluation.

Every measurement is appended to ``OUTPUT/records.jsonl`` as soon as it exists, so an interrupted run still
reports; ``results.md`` / ``results.json`` are rendered from the records at the end (or with ``--render-only``).
``--deadline HH:MM`` (UTC) skips the measurements that would not finish in time and records the cut.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pretrain_fashion_mnist.py --threads 1 \\
        --output benchmarks/results/pretrain_fashion_mnist --deadline 01:20

Timings and accuracies depend on the machine and on what else runs on it: the machine is recorded with them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from vimamba.bench.report import cpu_model
from vimamba.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from vimamba.data.fashion_mnist import FashionMNIST, ensure_fashion_mnist
from vimamba.data.transforms import Preprocessing
from vimamba.models.vim import VimConfig, VisionMamba
from vimamba.pretrain import (build_objective, classifier_from_pretraining, knn_accuracy,
                              save_pretraining_checkpoint, write_reconstructions)
from vimamba.pretrain.config import pretrain_configs
from vimamba.pretrain.probe import train_linear_probe
from vimamba.engine.optim import build_param_groups

# ---------------------------------------------------------------------------------------------------- the setup
ENCODER = dict(img_size=32, patch_size=4, stride=4, in_chans=1, embed_dim=96, depth=4, d_state=16, num_classes=0,
               drop_path_rate=0.0)
OBJECTIVE_KWARGS = {"ar": dict(cluster_size=2, decoder_dim=64, decoder_depth=2, decoder_heads=4),
                    "mae": dict(mask_ratio=0.75, decoder_dim=64, decoder_depth=2, decoder_heads=4)}
LABEL_FRACTIONS = {"1%": 600, "10%": 6000, "full": 60000}
NUM_CLASSES = 10
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


# ---------------------------------------------------------------------------------------------------- records
class Records:
    """One JSON line per measurement, appended and flushed as it is made."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        if fresh and path.exists():
            path.rename(path.with_suffix(f".{int(path.stat().st_mtime)}.jsonl"))

    def add(self, kind: str, **values) -> dict:
        record = {"kind": kind, "utc": dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S"), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[record] {json.dumps(record)}", flush=True)
        return record

    def read(self) -> List[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Deadline:
    """A wall-clock limit: ``fits(seconds)`` says whether a piece of work of that estimated length ends in time."""

    def __init__(self, hhmm: Optional[str]):
        self.at = None
        if hhmm:
            now = dt.datetime.now(dt.timezone.utc)
            hour, minute = (int(v) for v in hhmm.split(":"))
            self.at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if self.at < now - dt.timedelta(hours=12):
                self.at += dt.timedelta(days=1)

    def fits(self, seconds: float) -> bool:
        return self.at is None or dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds) <= self.at


# ---------------------------------------------------------------------------------------------------- the loop
def benchmark_loop(module: torch.nn.Module, groups: List[dict], loss_of: Callable[[torch.Tensor, torch.Tensor],
                   torch.Tensor], images: torch.Tensor, labels: Optional[torch.Tensor], *, steps: int,
                   batch_size: int, lr: float, betas: Tuple[float, float], seed: int, clip: Optional[float] = None,
                   warmup_fraction: float = 0.1, log_every: int = 50, label: str = "",
                   scale: Tuple[float, float] = (0.5, 1.0)) -> List[Tuple[int, float]]:
    """The benchmark's plain training loop, for pretraining and fine-tuning alike.

    AdamW over ``groups`` (each group's ``lr_scale``, from layer-wise decay, multiplies ``lr``); linear warm-up over
    ``warmup_fraction`` of the steps, then cosine to 0, stepped per iteration; ``steps`` batches of ``batch_size``
    images drawn with replacement from ``images`` (``labels`` alongside, or None), augmented with :func:`augment`
    (crop area fraction in ``scale``);
    optional gradient-norm clipping. Seeded by ``seed``. Returns the loss curve as (step, mean loss since the last
    point)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    warmup = max(1, int(steps * warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    module.train()
    curve, running = [], []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        loss = loss_of(augment(images[idx], generator, scale), None if labels is None else labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            curve.append((step + 1, sum(running) / len(running)))
            print(f"  {label} step {step + 1}/{steps}  loss {curve[-1][1]:.4f}  "
                  f"{(time.perf_counter() - start) / (step + 1):.2f} s/step", flush=True)
            running = []
    module.eval()
    return curve


# ---------------------------------------------------------------------------------------------------- stages
def measure_throughput(encoder_cfg: VimConfig, objectives: Iterable[str], train_x: torch.Tensor, batch_size: int,
                       rounds: int, steps_per_round: int) -> Dict[str, float]:
    """Images/s of a full training step (augment, forward, backward, AdamW) for each objective and for supervised
    classification of the same encoder (bidirectional Vim + head, cross-entropy, as ``vimamba train``), measured
    in one process and interleaved round by round so that a change in the machine's load hits all alike."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (train_x.shape[0],), generator=generator)
    models = {name: build_objective(encoder_cfg, name, **OBJECTIVE_KWARGS[name]) for name in objectives}
    models["supervised"] = VisionMamba(replace(encoder_cfg, num_classes=NUM_CLASSES, global_pool="avg"))
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    seconds = {name: 0.0 for name in models}

    def step(name: str) -> None:
        idx = torch.randint(0, train_x.shape[0], (batch_size,), generator=generator)
        x = augment(train_x[idx], generator)
        model = models[name]
        loss = F.cross_entropy(model(x), labels[idx]) if name == "supervised" else model(x)[0]
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in models:  # warm-up: first-call compilation and allocation
        step(name)
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(name)
            seconds[name] += time.perf_counter() - start
    return {name: rounds * steps_per_round * batch_size / s for name, s in seconds.items()}


@torch.no_grad()
def features(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 500
             ) -> torch.Tensor:
    return torch.cat([extract(images[i:i + batch_size]).float() for i in range(0, images.shape[0], batch_size)])


def probe(extract, data, train_idx: torch.Tensor, test_idx: torch.Tensor, seed: int, probe_epochs: int
          ) -> Dict[str, float]:
    """k-NN (k=20, cosine, weighted vote) and linear-probe top-1 (%) of frozen features."""
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    f_train, f_test = features(extract, train_x[train_idx]), features(extract, test_x[test_idx])
    knn = knn_accuracy(f_train, train_y[train_idx], f_test, test_y[test_idx], num_classes=NUM_CLASSES, k=20)
    linear = train_linear_probe(f_train, train_y[train_idx], f_test, test_y[test_idx], num_classes=NUM_CLASSES,
                                epochs=probe_epochs, seed=seed)["top1"]
    return {"knn": knn, "linear": linear}


def pretrain(name: str, encoder_cfg: VimConfig, data, args, output: Path, records: Records) -> torch.nn.Module:
    """Pretrain one objective on the training images (no labels) and save its checkpoint; with
    ``--reuse-pretraining`` an existing checkpoint from an earlier run is loaded instead."""
    path = output / f"{name}.pth"
    # the recipe as the project's pretraining config records it (MAE/ARM values; a short-schedule lr, see the docs)
    recipe, engine = pretrain_configs(name, dict(lr=args.lr, batch_size=args.batch_size, weight_decay=0.05,
                                                  clip_grad=3.0, scale=(0.5, 1.0), **OBJECTIVE_KWARGS[name]))
    torch.manual_seed(0)
    objective = build_objective(encoder_cfg, recipe)
    if args.reuse_pretraining and path.exists():
        objective.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        print(f"{name}: reusing {path}", flush=True)
        return objective.eval()
    start = time.perf_counter()
    curve = benchmark_loop(objective, build_param_groups(objective, engine.weight_decay),
                           lambda x, _: objective(x)[0], data["train"][0], None, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, betas=tuple(engine.opt_betas), seed=0,
                           clip=engine.clip_grad, label=f"pretrain {name}", scale=tuple(recipe.scale))
    seconds = time.perf_counter() - start
    save_pretraining_checkpoint(objective, path, config={"steps": args.steps, "batch_size": args.batch_size,
                                                         "lr": args.lr, "loop": "benchmark_loop"},
                                preprocessing=PREPROCESSING.to_dict())
    write_reconstructions(objective, data["test"][0][:8], output / f"{name}-reconstructions.png",
                          mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, title=f"{name}, {args.steps} steps")
    records.add("pretrain", objective=name, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                images_seen=args.steps * args.batch_size, seconds=round(seconds, 1),
                loss_first=curve[0][1], loss_last=curve[-1][1], curve=curve)
    return objective


def fit_head(model: VisionMamba, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> None:
    """LP-FT's first stage: set ``model.head`` to a linear probe of the model's own frozen pooled features on the
    labelled images (standardised features + a linear layer trained with AdamW, the standardisation folded into
    the head's weights), so that fine-tuning starts from a head that fits the features instead of a random one."""
    model.eval()
    feats = features(lambda x: model.forward_head(model.forward_features(x), pre_logits=True), images)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(feats.shape[1], NUM_CLASSES)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    z = (feats - mean) / std
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=generator).split(128):
            loss = F.cross_entropy(head(z[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        model.head.weight.copy_(head.weight / std)
        model.head.bias.copy_(head.bias - (head.weight / std) @ mean)


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, data) -> float:
    test_x, test_y = data["test"]
    logits = features(model, test_x)
    return 100.0 * (logits.argmax(1) == test_y).float().mean().item()


def finetune(init: Optional[Path], encoder_cfg: VimConfig, data, subset: torch.Tensor, steps: int, seed: int, args
             ) -> float:
    """Fine-tune a bidirectional Vim classifier (mean-pooled patch tokens + linear head) on the labelled ``subset``
    with :func:`benchmark_loop`; ``init`` a pretraining checkpoint (layer-wise lr decay ``--layer-decay``) or None
    (from scratch, no layer decay: nothing to preserve); with ``--head-init probe`` the head of a run from
    pretraining first fits the frozen features (LP-FT, :func:`fit_head`); scratch runs keep a random head (a probe of
    random features only hurts them: 57.6% against 63.3% on seed 0 of the 1% split). Test top-1 (%) on all 10,000
    test images."""
    torch.manual_seed(seed)
    if init is None:
        model = VisionMamba(replace(encoder_cfg, num_classes=NUM_CLASSES, global_pool="avg"))
        groups = build_param_groups(model, args.ft_weight_decay)
    else:
        model, _ = classifier_from_pretraining(init, NUM_CLASSES, global_pool="avg")
        groups = build_param_groups(model, args.ft_weight_decay, layer_decay=args.layer_decay)
    train_x, train_y = data["train"]
    if args.head_init == "probe" and init is not None:
        fit_head(model, train_x[subset], train_y[subset], args.head_epochs, seed)
    benchmark_loop(model, groups, lambda x, y: F.cross_entropy(model(x), y, label_smoothing=0.1),
                   train_x[subset], train_y[subset], steps=steps, batch_size=args.ft_batch_size, lr=args.ft_lr,
                   betas=(0.9, 0.999), seed=seed, log_every=100, label=f"finetune {init.stem if init else 'scratch'}")
    return test_accuracy(model, data)


# ---------------------------------------------------------------------------------------------------- the report
def mean_std(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(records: List[dict], output: Path) -> str:
    """results.md and results.json from the records: tables of mean ± std and the targets of issue 12."""
    run = next((r for r in records if r["kind"] == "run"), {})
    lines = ["# Self-supervised pretraining on Fashion-MNIST: results", "",
             f"Machine: {run.get('machine', '?')}. Command: `{run.get('command', '?')}`. Started {run.get('utc', '?')} "
             "UTC.", ""]
    summary: Dict[str, object] = {"run": run}

    pre = [r for r in records if r["kind"] == "pretrain"]
    if pre:
        lines += ["| pretraining | steps × batch | images seen | loss first → last | minutes |", "|---|---|---|---|---|"]
        lines += [f"| {r['objective']} | {r['steps']} × {r['batch_size']} | {r['images_seen']:,} | "
                  f"{r['loss_first']:.3f} → {r['loss_last']:.3f} | {r['seconds'] / 60:.1f} |" for r in pre]
        lines.append("")
        summary["pretrain"] = [{k: v for k, v in r.items() if k != "curve"} for r in pre]

    probes: Dict[str, Dict[str, List[float]]] = {}
    for r in (r for r in records if r["kind"] == "probe"):
        for metric in ("knn", "linear"):
            probes.setdefault(r["model"], {}).setdefault(metric, []).append(r[metric])
    if probes:
        lines += ["| frozen features | k-NN top-1 (%) | linear probe top-1 (%) | seeds |", "|---|---|---|---|"]
        lines += [f"| {m} | {mean_std(v['knn'])} | {mean_std(v['linear'])} | {len(v['knn'])} |"
                  for m, v in probes.items()]
        lines.append("")
        summary["probes"] = probes

    tuned: Dict[Tuple[str, str, int], Dict[int, float]] = {}
    for r in (r for r in records if r["kind"] == "finetune"):
        tuned.setdefault((r["fraction"], r["init"], r["steps"]), {})[r["seed"]] = r["top1"]
    if tuned:
        lines += ["| fine-tuning | labelled images | init | steps | test top-1 (%) | seeds |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {fraction} | {LABEL_FRACTIONS[fraction]:,} | {init} | {steps} | "
                  f"{mean_std(list(v.values()))} | {len(v)} |" for (fraction, init, steps), v in tuned.items()]
        lines.append("")
        summary["finetune"] = [{"fraction": f, "init": i, "steps": s, "top1_by_seed": v}
                               for (f, i, s), v in tuned.items()]

    cuts = [r for r in records if r["kind"] == "skipped"]
    if cuts:
        lines += ["Not run (time budget): " + "; ".join(r["what"] for r in cuts) + ".", ""]
        summary["skipped"] = [r["what"] for r in cuts]

    speed = next((r for r in records if r["kind"] == "throughput"), None)
    if speed:
        ips = speed["images_per_s"]
        lines += ["| training step (augment + forward + backward + AdamW) | images/s | time per image vs supervised |",
                  "|---|---|---|"]
        lines += [f"| {name} | {value:.0f} | {ips['supervised'] / value:.2f}× |" for name, value in ips.items()]
        lines += ["", f"Measured in one process, interleaved ({speed['rounds']} rounds of {speed['steps_per_round']} "
                      f"steps of {speed['batch_size']} images each), 1 thread, on a machine shared with other jobs.",
                  ""]
        summary["throughput"] = speed

    lines += ["## Targets of issue 12", ""] + targets(probes, tuned, speed, summary)
    text = "\n".join(lines) + "\n"
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    return text


def targets(probes, tuned, speed, summary) -> List[str]:
    """One line per target of issue 12: met, missed or not measured, with the numbers."""
    out, verdicts = [], {}
    random_knn = probes.get("random init (bidirectional, raster)", {}).get("knn")
    for name in ("ar", "mae"):
        knn = probes.get(f"{name} pretrained", {}).get("knn")
        base = probes.get("random init (ar encoder: forward-only, cluster-major)", {}).get("knn") \
            if name == "ar" else random_knn
        if knn and base:
            gain = statistics.mean(knn) - statistics.mean(base)
            verdicts[f"knn_gain_{name}"] = gain
            out.append(f"- k-NN, {name} pretrained vs random init of the same encoder: {gain:+.1f} points "
                       f"({'met' if gain >= 10 else 'missed'}: target 'tens of points').")
    for name in ("ar", "mae"):
        for (fraction, init, steps), values in tuned.items():
            if fraction != "1%" or init != f"{name} pretrained":
                continue
            scratch = tuned.get((fraction, "scratch", steps))
            if not scratch:
                continue
            seeds = sorted(set(values) & set(scratch))
            if len(seeds) < 2:
                continue
            a, b = [values[s] for s in seeds], [scratch[s] for s in seeds]
            diff = statistics.mean(a) - statistics.mean(b)
            spread = max(statistics.stdev(a), statistics.stdev(b))
            paired = [x - y for x, y in zip(a, b)]
            met = diff > 2 * spread
            verdicts[f"finetune_1pct_{name}"] = {"gain": diff, "two_std": 2 * spread, "met": met}
            out.append(f"- 1% labels, {name} pretrained vs scratch, same {steps} steps: {diff:+.2f} points; 2 std "
                       f"= {2 * spread:.2f} (the larger std of the two) -> {'met' if met else 'missed'}. "
                       f"Paired by seed: {mean_std(paired)}.")
    if speed:
        ips = speed["images_per_s"]
        for name in ("ar", "mae"):
            if name in ips:
                ratio = ips["supervised"] / ips[name]
                verdicts[f"throughput_{name}"] = ratio
                out.append(f"- Pretraining throughput, {name}: {ratio:.2f}× the time per image of supervised "
                           f"training ({'met' if ratio <= 1.5 else 'missed'}: target ≤ 1.5×).")
    summary["targets"] = verdicts
    return out or ["- nothing measured yet."]


# ---------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", nargs="+", default=["ar", "mae"], choices=["ar", "mae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--embed-dim", type=int, default=ENCODER["embed_dim"])
    parser.add_argument("--depth", type=int, default=ENCODER["depth"])
    pre = parser.add_argument_group("pretraining")
    pre.add_argument("--steps", type=int, default=500, help="optimiser steps per objective")
    pre.add_argument("--batch-size", type=int, default=128)
    pre.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (AdamW 0.9/0.95, wd 0.05)")
    pre.add_argument("--reuse-pretraining", action="store_true", help="load OUTPUT/NAME.pth if it exists")
    ev = parser.add_argument_group("probes")
    ev.add_argument("--knn-train", type=int, default=5000, help="k-NN bank / probe training images (balanced)")
    ev.add_argument("--knn-test", type=int, default=2000, help="test images for the probes (balanced)")
    ev.add_argument("--probe-epochs", type=int, default=30)
    ft = parser.add_argument_group("fine-tuning")
    ft.add_argument("--fractions", nargs="*", default=["1%"], choices=list(LABEL_FRACTIONS))
    ft.add_argument("--ft-steps", type=int, default=150, help="fine-tuning steps (same for pretrained and scratch)")
    ft.add_argument("--scratch-longer", type=float, default=2.0, help="the longer scratch run's steps, × --ft-steps")
    ft.add_argument("--ft-batch-size", type=int, default=64)
    ft.add_argument("--ft-lr", type=float, default=1e-3)
    ft.add_argument("--ft-weight-decay", type=float, default=0.05)
    ft.add_argument("--layer-decay", type=float, default=0.75, help="for runs from pretraining")
    ft.add_argument("--head-init", choices=["random", "probe"], default="random",
                    help="probe: LP-FT, a run from pretraining starts with a linear probe of its frozen features "
                         "as its head (scratch runs: random head)")
    ft.add_argument("--head-epochs", type=int, default=100, help="--head-init probe: epochs of the probe")
    tp = parser.add_argument_group("throughput")
    tp.add_argument("--throughput-rounds", type=int, default=4)
    tp.add_argument("--throughput-steps", type=int, default=5, help="steps per model per round")
    ev.add_argument("--skip-probes", action="store_true", help="no frozen-feature probes (e.g. with --reuse-pretraining)")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: skip (and record) what would not finish")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--output", default="benchmarks/results/pretrain_fashion_mnist")
    parser.add_argument("--render-only", action="store_true", help="render results.md/json from the records")
    args = parser.parse_args()

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    records = Records(output / "records.jsonl", fresh=not args.render_only)
    if args.render_only:
        print(render(records.read(), output))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    deadline = Deadline(args.deadline)
    encoder_cfg = VimConfig(**{**ENCODER, "embed_dim": args.embed_dim, "depth": args.depth})
    data = load_fashion_mnist(encoder_cfg.img_size[0])
    params = sum(p.numel() for p in VisionMamba(replace(encoder_cfg, num_classes=NUM_CLASSES)).parameters())
    records.add("run", command="python " + " ".join(sys.argv), encoder=encoder_cfg.to_dict(), classifier_params=params,
                machine=f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
                args=vars(args))

    # 1. throughput, first: short, and the same load for all
    ips = measure_throughput(encoder_cfg, args.objectives, data["train"][0], args.batch_size,
                             args.throughput_rounds, args.throughput_steps)
    records.add("throughput", images_per_s=ips, batch_size=args.batch_size, rounds=args.throughput_rounds,
                steps_per_round=args.throughput_steps)
    render(records.read(), output)

    # 2. pretraining, once per objective
    objectives = {name: pretrain(name, encoder_cfg, data, args, output, records) for name in args.objectives}
    render(records.read(), output)

    # 3. frozen features, per seed: random init (both encoder layouts) vs pretrained
    for seed in ([] if args.skip_probes else args.seeds):
        train_idx = balanced_subset(data["train"][1], args.knn_train, seed)
        test_idx = balanced_subset(data["test"][1], args.knn_test, seed)
        models = {}
        torch.manual_seed(seed)
        models["random init (bidirectional, raster)"] = build_objective(encoder_cfg, "mae", **OBJECTIVE_KWARGS["mae"])
        if "ar" in objectives:
            torch.manual_seed(seed)
            models["random init (ar encoder: forward-only, cluster-major)"] = build_objective(
                encoder_cfg, "ar", **OBJECTIVE_KWARGS["ar"])
        models.update({f"{name} pretrained": obj for name, obj in objectives.items()})
        for label, model in models.items():
            model.eval()
            result = probe(model.extract_features, data, train_idx, test_idx, seed, args.probe_epochs)
            records.add("probe", model=label, seed=seed, knn_train=args.knn_train, knn_test=args.knn_test, **result)
    render(records.read(), output)

    # 4. fine-tuning, seed-major within each fraction so that a cut leaves whole seeds
    seconds_per_step = args.ft_batch_size / ips["supervised"]  # first estimate; replaced by measurements
    for fraction in args.fractions:
        for seed in args.seeds:
            subset = balanced_subset(data["train"][1], LABEL_FRACTIONS[fraction], seed)
            runs = [(None, "scratch", args.ft_steps)]
            runs += [(output / f"{name}.pth", f"{name} pretrained", args.ft_steps) for name in objectives]
            runs.append((None, "scratch", int(round(args.ft_steps * args.scratch_longer))))
            for init, label, steps in runs:
                what = f"{fraction} {label} {steps} steps seed {seed}"
                if not deadline.fits(steps * seconds_per_step + 60):
                    records.add("skipped", what=what)
                    continue
                start = time.perf_counter()
                top1 = finetune(init, encoder_cfg, data, subset, steps, seed, args)
                seconds = time.perf_counter() - start
                seconds_per_step = max(seconds_per_step, seconds / steps)
                records.add("finetune", fraction=fraction, init=label, steps=steps, batch_size=args.ft_batch_size,
                            seed=seed, top1=top1, seconds=round(seconds, 1))
            render(records.read(), output)

    print(render(records.read(), output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

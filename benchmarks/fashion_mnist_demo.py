"""The Fashion-MNIST demo against a DeiT of the same size and recipe given the same training time: accuracy, time,
throughput.

    python benchmarks/fashion_mnist_demo.py                        # both models, the demo recipe, same time
    python benchmarks/fashion_mnist_demo.py --same epochs          # the same number of epochs instead
    python benchmarks/fashion_mnist_demo.py --models vim --epochs 2 --json results.json

Each model trains in its own process with ``vimamba train`` (the ``demo`` recipe plus the size flags below), so
the timings do not share a warm-up. With ``--same time`` (the default) the DeiT gets the number of epochs that
takes it as long as the Vim's epochs take the Vim: short ``vimamba train`` runs of the two (150 steps, data
loading included) alternate first, and the DeiT's epochs are the Vim's times the ratio of their images/s, rounded
(a whole number: the recipe's schedule is per epoch). Timing the models' steps alone is not enough: the data
pipeline's share is larger for the faster model (a 2.14x faster step gave 1.08x the images/s of the whole run).
The table it prints is the one in docs/benchmarks.md; it names what was built. Wall-clock figures depend on the
machine and on what else runs on it: report the machine with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The DeiT is sized to the demo Vim's parameter count: at equal width and depth a DeiT block (4D^2 attention +
# 8D^2 MLP) is about twice a Vim block (~6.5D^2 with the SSM projections), so it gets fewer blocks.
MODELS = {
    "vim": ["--model", "vim_tiny_patch16_224"],
    "deit": ["--model", "deit_tiny_patch16_224", "--embed-dim", "96", "--depth", "4", "--num-heads", "3"],
}


def train_config(name: str, extra: list):
    """The configuration ``vimamba train`` resolves for ``name`` with these flags (the demo recipe unless the flags
    say otherwise)."""
    from vimamba.cli import build_parser
    from vimamba.engine.config import EngineConfig, explicit_values
    from vimamba.train.config import ClassificationConfig, resolve_config

    args = build_parser().parse_args(["train", *MODELS[name], *extra])
    return resolve_config(explicit_values(args, (ClassificationConfig, EngineConfig)))


def pipeline_speed(name: str, extra: list, output: Path, threads: int, steps: int = 150) -> float:
    """Training images/s of ``vimamba train`` for ``name`` with these flags over ``steps`` steps (data loading
    included; the median of its logged rates after the first)."""
    folder = output / f"speed-{name}"
    command = [sys.executable, "-m", "vimamba.cli", "train", *MODELS[name], *extra, "--steps", str(steps),
               "--log-interval", "10", "--output", str(folder), "--overwrite", "--no-export"]
    subprocess.run(command, env=_env(threads), check=True, stdout=subprocess.DEVNULL)
    log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([r["samples_per_s"] for r in log if "samples_per_s" in r][1:])


def deit_over_vim_speed(extra: list, output: Path, threads: int, rounds: int = 2) -> float:
    """How many times the Vim's training images/s the DeiT's are, each trained by ``vimamba train`` with the demo
    recipe and these flags (the whole pipeline: data loading, forward, backward, AdamW). Short runs of the two
    alternate ``rounds`` times, so both see the same machine load; the medians are compared."""
    speeds = {"vim": [], "deit": []}
    for _ in range(rounds):
        for name in speeds:
            speeds[name].append(pipeline_speed(name, extra, output, threads))
    print(f"training images/s (short runs): {speeds}", flush=True)
    return statistics.median(speeds["deit"]) / statistics.median(speeds["vim"])


def _env(threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run(name: str, extra: list, output: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "vimamba.cli", "train", *MODELS[name], "--output", str(output / name),
               "--overwrite", *extra]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=_env(threads), check=True)
    wall = time.perf_counter() - start
    summary = json.loads((output / name / "summary.json").read_text())
    log = [json.loads(line) for line in (output / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "model": name, "built": summary.get("network") or summary["model"].split("), ")[0] + ")", "parameters": summary["parameters"],
        "epochs": summary["epochs"],
        "test_top1": summary["final_top1"], "best_top1": summary["best_value"],
        "train_minutes": summary["seconds_this_session"] / 60, "wall_minutes": wall / 60,
        "train_img_per_s": sum(r["samples_per_s"] for r in log) / len(log),  # one record per logged step
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default="runs/fashion-mnist-bench")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: PyTorch's default)")
    parser.add_argument("--same", choices=("time", "epochs"), default="time",
                        help="what the DeiT gets the same of: training time (default) or epochs")
    parser.add_argument("--json", default=None, help="also write the results here")
    args, extra = parser.parse_known_args()  # anything else goes to `vimamba train` (e.g. --epochs 2)
    output = Path(args.output)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing
    vim_epochs = int(train_config("vim", extra).engine.epochs)
    deit_extra, ratio = list(extra), None
    if args.same == "time" and "deit" in args.models:
        ratio = deit_over_vim_speed(extra, output, args.threads)
        deit_epochs = max(1, round(vim_epochs * ratio))
        deit_extra += ["--epochs", str(deit_epochs)]
        print(f"DeiT trains {ratio:.2f}x as many images per second as the Vim here: it gets {deit_epochs} epochs "
              f"for the Vim's {vim_epochs}", flush=True)
    results = [run(name, deit_extra if name == "deit" else extra, output, args.threads) for name in args.models]
    from vimamba.bench.report import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch threads: {args.threads or 'default'}"
    print(f"\nmachine: {machine}; extra flags: {' '.join(extra) or '(none)'}; same {args.same}"
          + (f" (DeiT/Vim speed {ratio:.2f})" if ratio else ""))
    print("| model | parameters | epochs | test top-1 | training time | throughput |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['built']} | {r['parameters']:,} | {r['epochs']} | {r['test_top1']:.2f}% | "
              f"{r['train_minutes']:.1f} min | {r['train_img_per_s']:.0f} img/s |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "extra": extra, "same": args.same,
                                               "deit_over_vim_speed": ratio, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

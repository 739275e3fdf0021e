"""The Fashion-MNIST demo against a DeiT of the same size, same recipe, same epochs: accuracy, time, throughput.

    python benchmarks/fashion_mnist_demo.py                        # both models, the demo recipe
    python benchmarks/fashion_mnist_demo.py --models vim --epochs 2 --json results.json

Each model trains in its own process with ``vimamba train`` (the ``demo`` recipe plus the size flags below), so
the timings do not share a warm-up. The table it prints is the one in docs/benchmarks.md. Wall-clock figures
depend on the machine and on what else runs on it: report the machine with them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def run(name: str, extra: list, output: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "vimamba.cli", "train", *MODELS[name], "--output", str(output / name),
               "--overwrite", *extra]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((output / name / "summary.json").read_text())
    log = [json.loads(line) for line in (output / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "model": name, "parameters": summary["parameters"], "epochs": summary["epochs"],
        "test_top1": summary["final_top1"], "best_top1": summary["best_value"],
        "train_minutes": summary["train_seconds_total"] / 60, "wall_minutes": wall / 60,
        "train_img_per_s": sum(r["train_img_per_s"] for r in log) / len(log),  # one record per epoch
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default="runs/fashion-mnist-bench")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: PyTorch's default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args, extra = parser.parse_known_args()  # anything else goes to `vimamba train` (e.g. --epochs 2)
    output = Path(args.output)
    results = [run(name, extra, output, args.threads) for name in args.models]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads: " \
              f"{args.threads or 'default'}"
    print(f"\nmachine: {machine}; extra flags: {' '.join(extra) or '(none)'}")
    print("| model | parameters | epochs | test top-1 | training time | throughput |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['parameters']:,} | {r['epochs']} | {r['test_top1']:.2f}% | "
              f"{r['train_minutes']:.1f} min | {r['train_img_per_s']:.0f} img/s |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "extra": extra, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

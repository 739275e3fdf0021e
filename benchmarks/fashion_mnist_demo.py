"""The Fashion-MNIST demo against a DeiT of the same size and recipe given the same training time: accuracy, time,
throughput.

    python benchmarks/fashion_mnist_demo.py                        # both models, the demo recipe, same time
    python benchmarks/fashion_mnist_demo.py --same epochs          # the same number of epochs instead
    python benchmarks/fashion_mnist_demo.py --models vim --epochs 2 --json results.json

Each model trains in its own process with ``vimamba train`` (the ``demo`` recipe plus the size flags below), so
the timings do not share a warm-up. With ``--same time`` (the default) the DeiT gets the number of epochs that
takes it as long as the Vim's epochs take the Vim: the two models' training steps are first timed against each
other in this process (interleaved, so both see the same machine load), and the DeiT's epochs are the Vim's times
that speed ratio, rounded (a whole number: the recipe's schedule is per epoch). The table it prints is the one in
docs/benchmarks.md; it names what was built. Wall-clock figures depend on the machine and on what else runs on
it: report the machine with them.
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


def _flag_value(flags: list, name: str, default):
    """The value of ``--name VALUE`` / ``--name=VALUE`` in a list of command-line flags (the last one wins)."""
    value = default
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
    return value


def _demo_model(name: str, extra: list):
    """The network ``vimamba train`` builds for ``name`` with the demo recipe and these flags."""
    from vimamba.train.config import RECIPES
    from vimamba.train.models import create_classifier

    flags = [*MODELS[name], *extra]
    demo = RECIPES["demo"]
    sizes = dict(patch_size=int(_flag_value(flags, "--patch-size", demo["patch_size"])),
                 embed_dim=int(_flag_value(flags, "--embed-dim", demo["embed_dim"])),
                 depth=int(_flag_value(flags, "--depth", demo["depth"])), img_size=28, in_chans=1, num_classes=10)
    if name == "vim":
        sizes["stride"] = int(_flag_value(flags, "--stride", demo["stride"]))
    else:
        sizes["num_heads"] = int(_flag_value(flags, "--num-heads", 3))
    model, _ = create_classifier(_flag_value(flags, "--model", ""), **sizes)
    return model


def deit_over_vim_speed(extra: list, threads: int, steps: int = 8) -> float:
    """How many DeiT training steps take the time of one Vim step (forward, loss, backward, AdamW), at the demo's
    batch size, timed interleaved in this process."""
    import statistics

    import torch
    import torch.nn.functional as F

    from vimamba.train.config import RECIPES

    if threads:
        torch.set_num_threads(threads)
    batch = int(_flag_value(extra, "--batch-size", RECIPES["demo"]["batch_size"]))
    torch.manual_seed(0)
    images, targets = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    models = {name: _demo_model(name, extra).train() for name in ("vim", "deit")}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    times = {name: [] for name in models}
    for step in range(steps + 2):
        for name, model in models.items():
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            F.cross_entropy(model(images), targets).backward()
            optimizers[name].step()
            if step >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["vim"]) / statistics.median(times["deit"])


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
        "model": name, "built": summary["model"], "parameters": summary["parameters"],
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
    from vimamba.train.config import RECIPES

    vim_epochs = int(_flag_value(extra, "--epochs", RECIPES["demo"]["epochs"]))
    deit_extra, ratio = list(extra), None
    if args.same == "time" and "deit" in args.models:
        ratio = deit_over_vim_speed(extra, args.threads)
        deit_epochs = max(1, round(vim_epochs * ratio))
        deit_extra += ["--epochs", str(deit_epochs)]
        print(f"DeiT trains {ratio:.2f}x as many images per second as the Vim here: it gets {deit_epochs} epochs "
              f"for the Vim's {vim_epochs}", flush=True)
    results = [run(name, deit_extra if name == "deit" else extra, output, args.threads) for name in args.models]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads: " \
              f"{args.threads or 'default'}"
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

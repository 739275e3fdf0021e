"""What ``torch.compile`` buys Vim on this machine, measured as ratios in one process (read the ratios).

    PYTHONPATH=src python benchmarks/compile_speed.py                          # everything
    PYTHONPATH=src python benchmarks/compile_speed.py --only demo_train --repeats 5 --json compile_speed.json

1. ``demo_train``: training throughput (images/s: forward, cross-entropy, backward, AdamW step) of the
   Fashion-MNIST demo model (the ``demo`` recipe's Vim: 28x28 grey images, 7x7 patches, D=96, depth 6, N=8, batch 64),
   compiled (``torch.compile(model)``, Inductor) against eager;
2. ``vim_ti_train``: the same for Vim-Ti at 224x224, batch 8 (drop-path 0.1);
3. ``infer_224`` / ``infer_1024``: inference latency at batch 1 of Vim-Ti against timm's DeiT-Ti
   (``dynamic_img_size`` at 1024: 4097 tokens), each eager and compiled; the ratio Vim/DeiT is reported with the
   faster of eager/compiled for each model.

Steps of the variants being compared are interleaved round-robin (after warm-up, which includes compiling), so
all of them see the same machine load; the medians are reported. Compile times are printed too. On a shared or
loaded machine the absolute figures mean little; the ratios are the result.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import vimamba  # noqa: F401  (registers the Vim models with timm)
from vimamba.bench.report import cpu_model, write_json
from vimamba.models.registry import create_model
from vimamba.train.config import RECIPES

CASES = ("demo_train", "vim_ti_train", "infer_224", "infer_1024")
# The demo recipe's network (`vimamba train` without data): its sizes, on 28x28 grey images, 10 classes.
DEMO_SHAPE = dict({k: RECIPES["demo"][k] for k in ("patch_size", "stride", "embed_dim", "depth", "d_state")},
                  img_size=28, in_chans=1, num_classes=10)



def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds of each function, calls interleaved round-robin after ``warmup`` calls each (timed apart:
    the first call of a compiled function compiles it)."""
    first: Dict[str, float] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
        for _ in range(warmup - 1):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    medians.update({f"{name}_first_call": s for name, s in first.items()})
    return medians


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def training(model: torch.nn.Module, images: torch.Tensor, classes: int, repeats: int) -> Dict:
    """Images/s of a full training step, eager and compiled (the same weights, separate optimizers)."""
    torch.manual_seed(0)
    model.train()
    targets = torch.randint(0, classes, (images.shape[0],))
    compiled = torch.compile(model)
    steps = {"eager": _train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), images, targets),
             "compiled": _train_step(compiled, torch.optim.AdamW(model.parameters(), lr=1e-4), images, targets)}
    s = interleaved(steps, repeats)
    batch = images.shape[0]
    return dict(batch=batch, eager_img_s=batch / s["eager"], compiled_img_s=batch / s["compiled"],
                compiled_over_eager=s["eager"] / s["compiled"], compile_s=s["compiled_first_call"])


def inference(size: int, repeats: int) -> Dict:
    import timm

    vim = create_model("vim_tiny_patch16_224").eval()
    deit = timm.create_model("deit_tiny_patch16_224", dynamic_img_size=size != 224).eval()
    x = torch.randn(1, 3, size, size)
    fns = {}
    for name, model in (("vim", vim), ("deit", deit)):
        compiled = torch.compile(model)
        fns[f"{name}_eager"] = (lambda m: lambda: m(x))(model)
        fns[f"{name}_compiled"] = (lambda m: lambda: m(x))(compiled)
    with torch.inference_mode():
        s = interleaved(fns, repeats)
    ms = {k: v * 1e3 for k, v in s.items() if not k.endswith("_first_call")}
    best_vim, best_deit = min(ms["vim_eager"], ms["vim_compiled"]), min(ms["deit_eager"], ms["deit_compiled"])
    return dict(size=size, batch=1, tokens=(size // 16) ** 2 + 1, **{f"{k}_ms": v for k, v in ms.items()},
                vim_over_deit_eager=ms["vim_eager"] / ms["deit_eager"],
                vim_over_deit_compiled=ms["vim_compiled"] / ms["deit_compiled"],
                vim_over_deit_best=best_vim / best_deit,
                compile_s={k[:-len("_first_call")]: v for k, v in s.items() if k.endswith("_first_call")})


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each variant (default 10)")
    parser.add_argument("--demo-batch", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=8, help="Vim-Ti training batch (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: Dict = dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                        command=" ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]))
    print(f"# {result['cpu']}, {result['threads']} threads, torch {result['torch']}", flush=True)
    if "demo_train" in args.only:
        torch.manual_seed(0)
        model = create_model("vim_tiny_patch16_224", drop_path_rate=0.0, **DEMO_SHAPE)
        r = result["demo_train"] = training(model, torch.randn(args.demo_batch, 1, 28, 28), 10, args.repeats)
        print(f"demo Vim training, batch {r['batch']}: eager {r['eager_img_s']:.0f} img/s, compiled "
              f"{r['compiled_img_s']:.0f} img/s, compiled/eager = {r['compiled_over_eager']:.2f} "
              f"(compiling took {r['compile_s']:.0f} s)", flush=True)
    if "vim_ti_train" in args.only:
        torch.manual_seed(0)
        model = create_model("vim_tiny_patch16_224", drop_path_rate=0.1)
        r = result["vim_ti_train"] = training(model, torch.randn(args.train_batch, 3, 224, 224), 1000,
                                              max(2, args.repeats // 2))
        print(f"Vim-Ti training 224, batch {r['batch']}: eager {r['eager_img_s']:.1f} img/s, compiled "
              f"{r['compiled_img_s']:.1f} img/s, compiled/eager = {r['compiled_over_eager']:.2f} "
              f"(compiling took {r['compile_s']:.0f} s)", flush=True)
    for size in (224, 1024):
        if f"infer_{size}" in args.only:
            repeats = args.repeats if size == 224 else max(2, args.repeats // 4)
            r = result[f"infer_{size}"] = inference(size, repeats)
            print(f"inference {size}x{size}, batch 1 ({r['tokens']} tokens): Vim-Ti eager {r['vim_eager_ms']:.1f} / "
                  f"compiled {r['vim_compiled_ms']:.1f} ms, DeiT-Ti eager {r['deit_eager_ms']:.1f} / compiled "
                  f"{r['deit_compiled_ms']:.1f} ms; Vim/DeiT eager {r['vim_over_deit_eager']:.2f}, compiled "
                  f"{r['vim_over_deit_compiled']:.2f}, best of each {r['vim_over_deit_best']:.2f}", flush=True)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""Model-level CPU speed and memory of Vim-Ti against timm's DeiT-Ti, measured in one process (read the ratios).

    PYTHONPATH=src python benchmarks/model_speed.py                        # everything, torch's thread count
    PYTHONPATH=src python benchmarks/model_speed.py --threads 1 --json model_speed.json
    PYTHONPATH=src python benchmarks/model_speed.py --only memory --memory-impls cpp chunked

1. inference latency, batch 1, 224x224: Vim-Ti (scan implementation `--impl`, default automatic) vs
   ``deit_tiny_patch16_224``, calls interleaved so both see the same machine load;
2. the same at 1024x1024 (DeiT with ``dynamic_img_size=True``: 4097 tokens, attention is quadratic);
3. one training step (forward + cross-entropy + backward) of each at 224, batch 8, drop-path 0.1 for both;
4. peak memory of one training step against the sequence length, for a Vim-Ti-width model with fewer layers, each
   size in a fresh child process (peak resident set size, reset just before the step, minus the resident size
   before it): memory should grow linearly in L.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import vimamba  # noqa: F401  (registers the Vim models with timm)
from vimamba.bench.report import cpu_model, write_json
from vimamba.models.registry import create_model



def clock() -> Callable[[], float]:
    """CPU time of this thread when torch runs on one thread (robust on a shared machine), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median time (ms) of each function, calls interleaved round-robin after one warm-up call each."""
    for fn in fns.values():
        fn()
    now = clock()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            fn()
            times[name].append(now() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def vim_tiny(impl: Optional[str], **overrides):
    model = create_model("vim_tiny_patch16_224", **overrides)
    model.set_scan_impl(impl)
    return model


def deit_tiny(**kwargs):
    import timm

    return timm.create_model("deit_tiny_patch16_224", **kwargs)


def inference(impl: Optional[str], size: int, repeats: int) -> Dict:
    vim, deit = vim_tiny(impl).eval(), deit_tiny(dynamic_img_size=size != 224).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        ms = interleaved({"vim": lambda: vim(x), "deit": lambda: deit(x)}, repeats)
    return dict(size=size, batch=1, tokens=(size // 16) ** 2 + 1, vim_ms=ms["vim"], deit_ms=ms["deit"],
                vim_over_deit=ms["vim"] / ms["deit"])


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def training(impl: Optional[str], batch: int, repeats: int) -> Dict:
    torch.manual_seed(0)
    vim, deit = vim_tiny(impl, drop_path_rate=0.1).train(), deit_tiny(drop_path_rate=0.1).train()
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    ms = interleaved({"vim": lambda: training_step(vim, x, y), "deit": lambda: training_step(deit, x, y)}, repeats)
    return dict(size=224, batch=batch, vim_ms=ms["vim"], deit_ms=ms["deit"], vim_over_deit=ms["vim"] / ms["deit"])


def _resident_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(impl: str, size: int, depth: int, batch: int) -> Dict:
    """Runs in a fresh process: peak RSS growth (MiB) of one training step of a depth-`depth` Vim-Ti."""
    torch.manual_seed(0)
    model = vim_tiny(impl, depth=depth, drop_path_rate=0.0).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak resident size (VmHWM) to the current one
        f.write("5")
    before = _resident_kb("VmRSS")
    training_step(model, x, y)
    peak = _resident_kb("VmHWM")
    return dict(impl=impl, size=size, tokens=(size // 16) ** 2 + 1, depth=depth, batch=batch,
                peak_mib=(peak - before) / 1024)


def memory(impls: List[str], sizes: List[int], depth: int, batch: int, threads: int) -> List[Dict]:
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    for impl in impls:
        for size in sizes:
            cmd = [sys.executable, __file__, "--memory-child", impl, str(size), str(depth), str(batch),
                   "--threads", str(threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"memory child failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {impl:9s} {size:5d} px {r['tokens']:6d} tokens: peak +{r['peak_mib']:8.1f} MiB "
                  f"({r['peak_mib'] / r['tokens'] * 1024:6.1f} KiB/token)", flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default=None, help="Vim scan implementation (default: automatic)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=["224", "1024", "train", "memory"],
                        default=["224", "1024", "train", "memory"])
    parser.add_argument("--memory-impls", nargs="+", default=["cpp", "chunked"])
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[224, 448, 672, 896, 1120])
    parser.add_argument("--memory-depth", type=int, default=4)
    parser.add_argument("--memory-batch", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--memory-child", nargs=4, metavar=("IMPL", "SIZE", "DEPTH", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        impl, size, depth, batch = args.memory_child
        print(json.dumps(memory_child(impl, int(size), int(depth), int(batch))))
        return {}

    result: Dict = dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                        impl=args.impl or "auto", clock="thread" if clock() is time.thread_time else "wall")
    print(f"# {result['cpu']}, {result['threads']} threads ({result['clock']} time), torch {result['torch']}, "
          f"Vim scan impl {result['impl']}")
    for size in (224, 1024):
        if str(size) in args.only:
            repeats = args.repeats if size == 224 else max(2, args.repeats // 4)
            r = result[f"inference_{size}"] = inference(args.impl, size, repeats)
            print(f"inference {size}x{size}, batch 1 ({r['tokens']} tokens): Vim-Ti {r['vim_ms']:.1f} ms, "
                  f"DeiT-Ti {r['deit_ms']:.1f} ms, Vim/DeiT = {r['vim_over_deit']:.2f}", flush=True)
    if "train" in args.only:
        r = result["training_224"] = training(args.impl, args.train_batch, max(2, args.repeats // 3))
        print(f"training step 224x224, batch {r['batch']}: Vim-Ti {r['vim_ms']:.0f} ms, DeiT-Ti {r['deit_ms']:.0f} ms, "
              f"Vim/DeiT = {r['vim_over_deit']:.2f}", flush=True)
    if "memory" in args.only:
        print(f"peak memory of one training step, Vim-Ti width, depth {args.memory_depth}, batch {args.memory_batch}:")
        result["memory"] = memory(args.memory_impls, args.memory_sizes, args.memory_depth, args.memory_batch,
                                  torch.get_num_threads())
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

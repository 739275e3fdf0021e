"""onnxruntime against PyTorch on the CPU: latency of an exported Vim, batch 1, in one process.

    python benchmarks/onnx_speed.py                                  # Vim-Ti at 224 and 1024, 1 thread
    python benchmarks/onnx_speed.py --threads 0 --clock wall         # default threads, wall clock (quiet machine)
    python benchmarks/onnx_speed.py --model vim_small_patch16_224 --sizes 224 --json onnx.json

Exports the model (random weights: speed does not depend on them) with ``--dynamic`` once (``--onnx PATH`` reuses
or keeps that file), then times PyTorch eager (the automatic scan: the native CPU kernel where it builds) and
onnxruntime (all graph optimisations, the same number of threads) at each size, and checks that their logits
agree. With one thread (the default) both run on the calling thread and are timed in that thread's CPU time,
which other processes on a loaded machine barely disturb; the ratio onnxruntime / PyTorch is the result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vimamba import create_model  # noqa: E402
from vimamba.export.exporter import metadata_for  # noqa: E402
from vimamba.export.loading import Exportable  # noqa: E402
from vimamba.export.onnx_export import program_to_onnx  # noqa: E402
from vimamba.export.runtime import OnnxModel  # noqa: E402
from vimamba.export.tracing import export_program  # noqa: E402
from vimamba.ops import scan_impl_in_use  # noqa: E402


def median_seconds(fn, repeats: int, clock, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vim_tiny_patch16_224")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 1024])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size and runtime (median)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both runtimes (0: PyTorch's default)")
    parser.add_argument("--clock", choices=("thread", "wall"), default=None,
                        help="thread CPU time (default with --threads 1) or wall clock (default otherwise)")
    parser.add_argument("--onnx", default=None, help="use this exported model if it exists, else export to it")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    clock_name = args.clock or ("thread" if threads == 1 else "wall")
    if clock_name == "thread" and threads != 1:
        parser.error("--clock thread measures one thread: use it with --threads 1")
    clock = time.thread_time if clock_name == "thread" else time.perf_counter
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    item = Exportable(model=model, task="classification", preprocessing={}, class_names=[],
                      native_size=tuple(model.cfg.img_size), min_size=2 * model.patch_embed.patch_size,
                      size_multiple=1, in_chans=model.cfg.in_chans, description=args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.onnx or Path(tmp) / "model.onnx")
        start = time.perf_counter()
        reused = path.exists()
        if not reused:
            program = export_program(model, item.in_chans, item.native_size, True, item.min_size)
            program_to_onnx(program, path, metadata_for(item, item.native_size, True))
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        onnx_model = OnnxModel(path, threads=threads)
        load_s = time.perf_counter() - start
        print(f"{'reused' if reused else 'exported'} {args.model} ({export_s:.0f} s, "
              f"{path.stat().st_size / 2**20:.1f} MiB), "
              f"onnxruntime session in {load_s:.1f} s; {threads} threads", flush=True)
        rows = []
        for size in args.sizes:
            images = torch.randn(1, 3, size, size)
            with torch.no_grad():
                reference = model(images)
                difference = (onnx_model(images) - reference).abs().max().item()
                repeats = args.repeats if size <= 512 else max(2, args.repeats // 2)
                eager = median_seconds(lambda: model(images), repeats, clock)
                ort = median_seconds(lambda: onnx_model(images), repeats, clock)
            rows.append({"size": size, "tokens": (size // model.patch_embed.stride) ** 2 + 1,
                         "pytorch_ms": 1000 * eager, "onnxruntime_ms": 1000 * ort,
                         "ratio_ort_over_pytorch": ort / eager,
                         "max_abs_logit_difference": difference})
            print(f"{size:>5}  PyTorch {1000 * eager:9.1f} ms   onnxruntime {1000 * ort:9.1f} ms   "
                  f"ratio {ort / eager:5.2f}   max |dlogit| {difference:.2e}", flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads, "
               f"clock: {clock_name}")
    scan = scan_impl_in_use(None, torch.device("cpu"))
    print(f"machine: {machine}; PyTorch scan: {scan}; torch {torch.__version__}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "machine": machine, "pytorch_scan": scan,
                                               "export_seconds": export_s, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

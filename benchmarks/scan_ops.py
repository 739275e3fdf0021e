"""Op-level speed of the bidirectional selective scan on the CPU: each implementation against the reference and
against the chunked path, forward and forward+backward, in one process (ratios are what to read).

    PYTHONPATH=src python benchmarks/scan_ops.py                      # Vim-Ti shapes (E=384, N=16)
    PYTHONPATH=src python benchmarks/scan_ops.py --threads 1 --json scan_ops.json

Shapes follow Vim-Ti (E = 384 channels, N = 16 states) at L = 197 (224 px), 730 (~432 px), 1025 (512 px),
4097 (1024 px) and 6085 (1248 px) tokens, batch 1 and 32. Configurations whose run would take minutes (the Python
loop of the reference at long L or large batch; its autograd graph, which grows with L; the chunked path's
backward at the largest sizes) are skipped and listed as such.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from vimamba.bench.report import write_json
from vimamba.ops import bidirectional_selective_scan

# Work (batch * L) above which a measurement is skipped, per implementation and mode; None = never skipped.
SKIP_ABOVE = {
    ("reference", "forward"): 8_000,
    ("reference", "forward+backward"): 1_100,
    ("chunked", "forward"): 40_000,
    ("chunked", "forward+backward"): 40_000,
    ("cpp", "forward"): None,
    ("cpp", "forward+backward"): None,
}


def make_inputs(batch: int, length: int, channels: int, n_state: int, requires_grad: bool):
    """Inputs laid out as the model makes them (B, C slices of an x_proj output; z half of an in_proj output)."""
    g = torch.Generator().manual_seed(0)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x_proj = [randn(batch, length, 12 + 2 * n_state) for _ in range(2)]
    xz = randn(batch, length, 2 * channels)
    a = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1)  # S4D-real, as Vim's init
    tensors = [
        randn(batch, length, channels), randn(batch, length, channels),
        randn(batch, length, channels) * 0.5 - 4, randn(batch, length, channels) * 0.5 - 4,
        x_proj[0][..., 12:12 + n_state], x_proj[1][..., 12:12 + n_state],
        x_proj[0][..., 12 + n_state:], x_proj[1][..., 12 + n_state:],
        a.clone(), a.clone(), torch.ones(channels), torch.ones(channels), randn(channels), randn(channels),
        xz[..., channels:],
    ]
    if requires_grad:
        tensors = [t.detach().requires_grad_() for t in tensors]
    return tensors


def clock() -> Callable[[], float]:
    """CPU time of this thread when torch runs on one thread (robust on a shared machine), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def time_call(fn: Callable[[], None], repeats: int) -> float:
    """Median time in ms of ``repeats`` calls after one warm-up call."""
    fn()
    now, times = clock(), []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    return statistics.median(times) * 1e3


def measure(impl: str, mode: str, batch: int, length: int, channels: int, n_state: int, repeats: int) -> Optional[float]:
    limit = SKIP_ABOVE[(impl, mode)]
    if limit is not None and batch * length > limit:
        return None
    inputs = make_inputs(batch, length, channels, n_state, requires_grad=mode != "forward")
    if mode == "forward":
        def run():
            with torch.no_grad():
                bidirectional_selective_scan(*inputs, impl=impl)
    else:
        grad = torch.randn(batch, length, channels)

        def run():
            out = bidirectional_selective_scan(*inputs, impl=impl)
            torch.autograd.grad(out, inputs, grad)
    heavy = impl != "cpp" and batch * length > 2_000
    return time_call(run, 1 if heavy else repeats)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 730, 1025, 4097, 6085])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--impls", nargs="+", default=["cpp", "chunked", "reference"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    header = f"{'mode':17s} {'batch':>5s} {'L':>5s} " + " ".join(f"{i + ' ms':>13s}" for i in args.impls)
    header += "  " + " ".join(f"{i + ' vs ref':>15s}" for i in args.impls if i != "reference")
    header += "  " + " ".join(f"{i + ' vs chunked':>18s}" for i in args.impls if i not in ("reference", "chunked"))
    timer = "thread CPU time" if clock() is time.thread_time else "wall time"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads ({timer}), E={args.channels}, "
          f"N={args.d_state}; 'A vs B' = time of B / time of A (how many times faster A is)")
    print(header)
    for mode in ("forward", "forward+backward"):
        for batch in args.batches:
            for length in args.lengths:
                ms = {impl: measure(impl, mode, batch, length, args.channels, args.d_state, args.repeats)
                      for impl in args.impls}
                rows.append(dict(mode=mode, batch=batch, length=length, ms=ms))
                fmt = lambda v: f"{v:13.2f}" if v is not None else f"{'skipped':>13s}"  # noqa: E731
                ratio = lambda a, b: (f"{b / a:14.1f}x" if a is not None and b is not None  # noqa: E731
                                      else f"{'-':>15s}")
                line = f"{mode:17s} {batch:5d} {length:5d} " + " ".join(fmt(ms[i]) for i in args.impls)
                line += "  " + " ".join(ratio(ms[i], ms.get("reference")) for i in args.impls if i != "reference")
                line += "  " + " ".join(ratio(ms[i], ms.get("chunked")).rjust(18)
                                        for i in args.impls if i not in ("reference", "chunked"))
                print(line, flush=True)
    result = dict(torch=torch.__version__, threads=torch.get_num_threads(), channels=args.channels,
                  d_state=args.d_state, rows=rows, skip_above=[dict(impl=k[0], mode=k[1], batch_x_length=v)
                                                              for k, v in SKIP_ABOVE.items()])
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

"""Op-level speed of the fused bidirectional Triton scan on a GPU, against the "chunked" PyTorch path and the
memory/exp floor of ``shared/reference/scan-kernels.md`` section 4.

    python benchmarks/scan_triton.py                       # Vim-Ti widths (E=384, N=16), bf16, the issue's shapes
    python benchmarks/scan_triton.py --dtype float32 --no-chunked
    python benchmarks/scan_triton.py --sweep --shapes 8x6085 32x197   # try launch configurations

Shapes (batch x L): batch 1 and 32 at L = 197, 730, 1025, 4097, 6085 (Vim at 224, 432, 512, 1024, 1248 px), and
batch 8 at L = 6085. For each: forward, and forward + backward (gradients of every input), median wall time over
``--reps`` runs after ``--warmup``.

The floor of one call is max(compulsory HBM bytes / bandwidth, exps / special-function rate):
- forward reads x, dt of both directions and z (5 E per token), B and C of both (4 N), writes the output (E);
  needs one exp per (token, channel, state, direction);
- backward reads the same inputs and the output gradient (6 E + 4 N), writes dx, ddt of both directions and dz
  (5 E), dB and dC of both (4 N, float32), and needs at least one more exp per element (the recomputed decays;
  this kernel spends two).
"Achieved GB/s" is the compulsory bytes over the measured time; "% of floor" is the floor time over the measured
time. Defaults: H100 SXM figures from scan-kernels.md (3.0 TB/s measured HBM, 3.9 T exp/s); pass ``--hbm-gbps`` /
``--exp-rate`` for another GPU (H200: about 4.8 TB/s HBM, same exp rate).

Needs a CUDA device (exits with a message otherwise). With ``TRITON_INTERPRET=1`` and ``--device cpu`` the script
runs its logic on tiny shapes in Triton's interpreter (smoke test only; the timings mean nothing there).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from vimamba.ops import bidirectional_selective_scan

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}
DT_RANK = 12  # Vim-Ti's dt_rank: B and C are slices of a (R + 2N)-wide x_proj output


def parse_shape(text: str) -> Tuple[int, int]:
    batch, length = text.lower().split("x")
    return int(batch), int(length)


def make_inputs(batch: int, length: int, channels: int, n_state: int, dtype: torch.dtype, device: str,
                requires_grad: bool) -> Dict[str, Optional[torch.Tensor]]:
    """Scan inputs in the mixer's layout (B, C and z are strided views), with realistic magnitudes."""
    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    x_proj_f = randn(batch, length, DT_RANK + 2 * n_state)
    x_proj_b = randn(batch, length, DT_RANK + 2 * n_state)
    in_proj = randn(batch, length, 2 * channels)
    a_init = torch.arange(1, n_state + 1, dtype=torch.float32, device=device).repeat(channels, 1)
    inputs = dict(
        x_f=randn(batch, length, channels), x_b=randn(batch, length, channels),
        dt_f=randn(batch, length, channels, scale=0.5), dt_b=randn(batch, length, channels, scale=0.5),
        B_f=x_proj_f[..., DT_RANK:DT_RANK + n_state], B_b=x_proj_b[..., DT_RANK:DT_RANK + n_state],
        C_f=x_proj_f[..., DT_RANK + n_state:], C_b=x_proj_b[..., DT_RANK + n_state:],
        A_f=-a_init.clone(), A_b=-a_init.clone(),
        D_f=torch.ones(channels, device=device), D_b=torch.ones(channels, device=device),
        dt_bias_f=torch.full((channels,), -4.0, device=device), dt_bias_b=torch.full((channels,), -4.0, device=device),
        z=in_proj[..., channels:],
    )
    if requires_grad:
        for t in inputs.values():
            t.requires_grad_()  # the strided views stay views, as in the mixer
    return inputs


def floor_seconds(batch: int, length: int, channels: int, n_state: int, dtype: torch.dtype, backward: bool,
                  hbm_bytes_per_s: float, exps_per_s: float) -> Tuple[float, float, float]:
    """(floor seconds, compulsory bytes, exps) of one forward or forward+backward call."""
    size = torch.tensor([], dtype=dtype).element_size()
    tokens = batch * length
    bytes_ = tokens * ((5 * channels + 4 * n_state) + channels) * size  # inputs + output
    exps = 2 * tokens * channels * n_state  # one per (token, channel, state, direction)
    if backward:
        bytes_ += tokens * (6 * channels + 4 * n_state) * size  # inputs and the output gradient
        bytes_ += tokens * 5 * channels * size + tokens * 4 * n_state * 4  # dx, ddt, dz; dB, dC in float32
        exps *= 2
    return max(bytes_ / hbm_bytes_per_s, exps / exps_per_s), bytes_, exps


def median_seconds(fn: Callable[[], object], warmup: int, reps: int, device: str) -> float:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_call(impl: str, inputs: Dict[str, Optional[torch.Tensor]], backward: bool) -> Callable[[], object]:
    if not backward:
        def forward():
            with torch.no_grad():
                return bidirectional_selective_scan(**inputs, impl=impl)
        return forward
    leaves = [t for t in inputs.values() if t is not None]

    def forward_backward():
        out = bidirectional_selective_scan(**inputs, impl=impl)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))
    return forward_backward


def time_impl(impl: str, inputs, backward: bool, args) -> Optional[float]:
    """Median seconds, or None when the implementation is missing or runs out of memory."""
    try:
        return median_seconds(run_call(impl, inputs, backward), args.warmup, args.reps, args.device)
    except (ImportError, torch.cuda.OutOfMemoryError) as error:
        print(f"    {impl}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
        return None


def check_against(inputs, reference_impl: str) -> Optional[float]:
    """Max |triton - other| / max |other| of the forward output (a sanity check, not a test)."""
    try:
        with torch.no_grad():
            ours = bidirectional_selective_scan(**inputs, impl="triton").float()
            other = bidirectional_selective_scan(**inputs, impl=reference_impl).float()
    except (ImportError, torch.cuda.OutOfMemoryError):
        return None
    return ((ours - other).abs().max() / other.abs().max().clamp_min(1e-30)).item()


def fmt_us(seconds: Optional[float]) -> str:
    return f"{seconds * 1e6:.1f}" if seconds is not None else "n/a"


def benchmark(args) -> None:
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu (Triton interpreter)'}; "
          f"torch {torch.__version__}; E={args.channels} N={args.state} dtype={args.dtype}; "
          f"floor: {args.hbm_gbps:g} GB/s HBM, {args.exp_rate:.3g} exp/s")
    print("| batch | L | pass | triton us | chunked us | chunked / triton | floor us | bound | triton GB/s | "
          "% of floor | rel. diff vs chunked |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    dtype = DTYPES[args.dtype]
    for (batch, length), backward in itertools.product(args.shapes, (False, True)):
        inputs = make_inputs(batch, length, args.channels, args.state, dtype, args.device, requires_grad=backward)
        diff = None if backward or args.no_chunked else check_against(inputs, "chunked")
        ours = time_impl("triton", inputs, backward, args)
        other = None if args.no_chunked else time_impl("chunked", inputs, backward, args)
        floor, bytes_, exps = floor_seconds(batch, length, args.channels, args.state, dtype, backward,
                                            args.hbm_gbps * 1e9, args.exp_rate)
        bound = "exp" if exps / args.exp_rate >= bytes_ / (args.hbm_gbps * 1e9) else "HBM"
        ratio = f"{other / ours:.1f}x" if ours and other else "n/a"
        gbps = f"{bytes_ / ours / 1e9:.0f}" if ours else "n/a"
        frac = f"{100 * floor / ours:.0f}%" if ours else "n/a"
        print(f"| {batch} | {length} | {'fwd+bwd' if backward else 'fwd'} | {fmt_us(ours)} | {fmt_us(other)} | "
              f"{ratio} | {floor * 1e6:.1f} | {bound} | {gbps} | {frac} | "
              f"{'n/a' if diff is None else f'{diff:.1e}'} |", flush=True)
        del inputs
        if args.device == "cuda":
            torch.cuda.empty_cache()


def sweep(args) -> None:
    """Time the forward and forward+backward under launch configurations, per shape; print the best."""
    from vimamba.ops.triton_scan import TritonScanConfig, use_config

    dtype = DTYPES[args.dtype]
    for batch, length in args.shapes:
        inputs = make_inputs(batch, length, args.channels, args.state, dtype, args.device, requires_grad=True)
        results: List[Tuple[float, float, TritonScanConfig]] = []
        candidates = []
        for warps_f, min_programs in itertools.product((1, 2, 4), (0, 1)):
            for checkpoint, (block_e_b, warps_b) in itertools.product((16, 32, 64), ((8, 1), (16, 1), (16, 2))):
                candidates.append(TritonScanConfig(block_e_fwd=32 * warps_f, num_warps_fwd=warps_f,
                                                   min_programs=min_programs, checkpoint=checkpoint,
                                                   block_e_bwd=block_e_b, num_warps_bwd=warps_b))
        for config in candidates:
            with use_config(config):
                try:
                    fwd = median_seconds(run_call("triton", inputs, False), 2, args.reps, args.device)
                    both = median_seconds(run_call("triton", inputs, True), 2, args.reps, args.device)
                except Exception as error:  # a configuration the compiler rejects (e.g. out of registers/smem)
                    print(f"  {config}: {type(error).__name__}")
                    continue
            results.append((fwd, both, config))
            print(f"  {batch}x{length} {config}: fwd {fwd * 1e3:.3f} ms, "
                  f"fwd+bwd {both * 1e3:.3f} ms", flush=True)
        if results:
            best_fwd = min(results, key=lambda r: r[0])
            best_both = min(results, key=lambda r: r[1])
            print(f"best forward for {batch}x{length}: {best_fwd[0] * 1e3:.3f} ms with {best_fwd[2]}")
            print(f"best fwd+bwd  for {batch}x{length}: {best_both[1] * 1e3:.3f} ms with {best_both[2]}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape,
                        default=[(b, n) for b in (1, 32) for n in (197, 730, 1025, 4097, 6085)] + [(8, 6085)],
                        help="batch x L pairs, e.g. 8x6085 32x197")
    parser.add_argument("--channels", type=int, default=384, help="E (Vim-Ti: 384)")
    parser.add_argument("--state", type=int, default=16, help="N (Vim: 16)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-chunked", action="store_true", help="skip the PyTorch chunked path")
    parser.add_argument("--sweep", action="store_true", help="try launch configurations instead")
    parser.add_argument("--hbm-gbps", type=float, default=3000.0, help="HBM bandwidth of the floor (GB/s)")
    parser.add_argument("--exp-rate", type=float, default=3.9e12, help="exp2 per second of the floor")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu only with TRITON_INTERPRET=1, to smoke-test this script")
    args = parser.parse_args(argv)

    from vimamba.ops import triton_scan

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/scan_triton.py needs a CUDA GPU: none is available here (the kernels' correctness is "
              "tested without one, under TRITON_INTERPRET=1, by tests/test_scan_triton.py)", file=sys.stderr)
        return 2
    if not triton_scan.is_available() or (args.device == "cpu" and not triton_scan.INTERPRETED):
        print("Triton is not usable here (not installed, or --device cpu without TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    (sweep if args.sweep else benchmark)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

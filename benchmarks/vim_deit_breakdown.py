"""Where Vim-Ti's inference time goes next to DeiT-Ti's, at batch 1 on the CPU, as ratios in one process.

    PYTHONPATH=src python benchmarks/vim_deit_breakdown.py --threads 2 --repeats 40 --json breakdown.json

Variants, their calls interleaved round-robin after warm-up (compiling included), medians reported:

- ``deit`` / ``deit_compiled``: timm's ``deit_tiny_patch16_224``, eager and ``torch.compile``;
- ``vim`` / ``vim_compiled``: Vim-Ti as users run it (the native scan and fused convolution);
- ``vim_no_kernels`` / ``vim_no_kernels_compiled``: the same Vim-Ti with the scan and the convolution replaced by
  operators that only allocate their outputs. Everything else stays: the six matrix products of each block, the
  RMSNorms, residual adds, ``exp(A_log)`` and the operators' dispatch. Its time is what Vim-Ti would take with
  infinitely fast scan and convolution kernels, so ``vim_no_kernels / deit`` is the lowest ratio that any kernel
  work can reach without changing the model's arithmetic.

Ratios use the faster of eager / compiled for each model (as issue 14's target does). Only the ratios compare
across runs; the machine's absolute speed may change from one minute to the next.
"""
from __future__ import annotations

import argparse
import sys
import types
from typing import Dict, List, Optional

import torch

import vimamba  # noqa: F401  (registers the Vim models with timm)
from vimamba.bench.report import cpu_model, write_json
from vimamba.models.registry import create_model
from vimamba.models.vim import BiMambaMixer

from compile_speed import interleaved  # noqa: E402  (benchmarks/ is on sys.path when this runs as a script)


@torch.library.custom_op("vimamba_bench::no_scan", mutates_args=())
def no_scan(x_f: torch.Tensor, dt_f: torch.Tensor, dt_b: torch.Tensor, B_f: torch.Tensor, B_b: torch.Tensor,
            C_f: torch.Tensor, C_b: torch.Tensor, A_f: torch.Tensor, A_b: torch.Tensor, z: torch.Tensor
            ) -> torch.Tensor:
    """The scan's output, allocated and not computed (takes the inputs so nothing upstream is optimised away)."""
    return torch.empty_like(x_f)


@no_scan.register_fake
def _(x_f, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, z):
    return torch.empty_like(x_f)


@torch.library.custom_op("vimamba_bench::no_conv", mutates_args=())
def no_conv(x: torch.Tensor, weight_f: torch.Tensor, weight_b: torch.Tensor) -> List[torch.Tensor]:
    """The two convolution branches' outputs, allocated and not computed."""
    return [torch.empty_like(x), torch.empty_like(x)]


@no_conv.register_fake
def _(x, weight_f, weight_b):
    return [torch.empty_like(x), torch.empty_like(x)]


def _mixer_without_kernels(self: BiMambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """BiMambaMixer.forward with the convolution and the scan kernels left out (their outputs only allocated)."""
    x, z = self.in_proj(hidden).chunk(2, dim=-1)
    x_f, x_b = no_conv(x, self.conv1d.weight, self.conv1d_b.weight)
    s = self._scan_inputs(x_f, x_b, z)
    return self.out_proj(no_scan(s.x_f, s.dt_f, s.dt_b, s.B_f, s.B_b, s.C_f, s.C_b, s.A_f, s.A_b, s.z))


def without_kernels(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, BiMambaMixer):
            module.forward = types.MethodType(_mixer_without_kernels, module)
    return model


def breakdown(size: int, repeats: int) -> Dict:
    import timm

    torch.manual_seed(0)
    models = {
        "deit": timm.create_model("deit_tiny_patch16_224", dynamic_img_size=size != 224).eval(),
        "vim": create_model("vim_tiny_patch16_224").eval(),
        "vim_no_kernels": without_kernels(create_model("vim_tiny_patch16_224").eval()),
    }
    x = torch.randn(1, 3, size, size)
    fns = {}
    for name, model in models.items():
        fns[name] = (lambda m: lambda: m(x))(model)
        fns[f"{name}_compiled"] = (lambda m: lambda: m(x))(torch.compile(model))
    with torch.inference_mode():
        ms = {name: s * 1e3 for name, s in interleaved(fns, repeats, warmup=3).items()
              if not name.endswith("_first_call")}
    best = {name: min(ms[name], ms[f"{name}_compiled"]) for name in models}
    return dict(size=size, batch=1, repeats=repeats, ms=ms, best_ms=best,
                vim_over_deit=best["vim"] / best["deit"],
                vim_no_kernels_over_deit=best["vim_no_kernels"] / best["deit"],
                kernels_share_of_vim=1 - best["vim_no_kernels"] / best["vim"])


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224], help="image sizes (default 224)")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls of each variant (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: Dict = dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                        command=" ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), sizes={})
    print(f"# {result['cpu']}, {result['threads']} threads, torch {result['torch']}", flush=True)
    for size in args.sizes:
        r = result["sizes"][str(size)] = breakdown(size, args.repeats)
        ms, best = r["ms"], r["best_ms"]
        print(f"{size}x{size}, batch 1, ms eager / compiled: DeiT-Ti {ms['deit']:.1f} / {ms['deit_compiled']:.1f}, "
              f"Vim-Ti {ms['vim']:.1f} / {ms['vim_compiled']:.1f}, Vim-Ti without scan and conv kernels "
              f"{ms['vim_no_kernels']:.1f} / {ms['vim_no_kernels_compiled']:.1f}", flush=True)
        print(f"  faster of each: Vim/DeiT {r['vim_over_deit']:.2f}; without the kernels "
              f"{r['vim_no_kernels_over_deit']:.2f}; the kernels are {100 * r['kernels_share_of_vim']:.0f}% of "
              f"Vim-Ti's time ({best['vim'] - best['vim_no_kernels']:.1f} ms)", flush=True)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

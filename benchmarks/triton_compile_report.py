"""Compile every Triton scan kernel variant for a GPU architecture, without a GPU, and report what the hardware
would get: registers, spills, shared memory, CTAs per SM and the SASS of the main loop.

    python benchmarks/triton_compile_report.py --arch 90                 # table on stdout
    python benchmarks/triton_compile_report.py --arch 90 --json out.json # plus one JSON record per variant
    python benchmarks/triton_compile_report.py --quick                   # a representative handful (the CI test)

How: each kernel of ``vimamba.ops.triton_scan_kernels`` is specialised the way the launcher specialises it (Triton's
own binder, on stand-in tensors carrying the mixer's real dtypes and strides: B and C are slices of the x_proj
output, z is half of the in_proj output), then compiled by ``triton.compile`` for ``GPUTarget("cuda", arch, 32)``.
Registers and spills come from ``ptxas -v`` on the PTX, shared memory from the compiled kernel, the SASS from
``cuobjdump -sass`` - both tools ship inside the Triton wheel (``triton/backends/nvidia/bin``). The variants are the
ones the launch plans of ``vimamba.ops.triton_scan_plan`` can choose with the default configuration: forward
(inference, training, segmented inference/training, the segment summary) and backward, float32/bfloat16/float16
inputs, with and without z, Vim-Ti (E=384) and Vim-B (E=1536) widths, short and long L (197, 6085); plus the
segment carry kernel. Width and length are runtime arguments: their binaries are identical (the table says so).

The script needs only Triton (no torch, no GPU): it loads the two kernel/plan modules by path, so it also runs in
a bare virtualenv with another Triton version (``pip install triton==3.6.0``) to check that one too.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = os.path.join(ROOT, "src", "vimamba", "ops")

# sm_90 resources (CUDA occupancy rules); the same for sm_80/89 apart from shared memory, used only as a report.
REGS_PER_SM = 65536
MAX_WARPS_PER_SM = {80: 64, 86: 48, 89: 48, 90: 64, 100: 64, 120: 48}
MAX_CTAS_PER_SM = {80: 32, 86: 16, 89: 24, 90: 32, 100: 32, 120: 24}
SMEM_PER_SM = {80: 167936, 86: 102400, 89: 102400, 90: 233472, 100: 233472, 120: 102400}
DT_RANK = {384: 12, 1536: 48}  # x_proj output width is dt_rank + 2N (Vim-Ti: 12, Vim-B: 48)


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _DType:
    """Stand-in for ``torch.dtype``: Triton's binder maps a tensor's dtype by its string form.

    One object per name, kept for the life of the process, as torch's dtypes are: the binder's native code may
    remember a dtype object by its address, so a freed stand-in whose address a new one (of another dtype) reused
    would be taken for the old dtype (seen as a float32 pointer compiled as bfloat16, depending on test order)."""

    __module__ = "torch"
    _instances: Dict[str, "_DType"] = {}

    def __new__(cls, name: str) -> "_DType":
        if name not in cls._instances:
            instance = super().__new__(cls)
            instance.name = name
            cls._instances[name] = instance
        return cls._instances[name]

    def __str__(self) -> str:
        return "torch." + self.name

    __repr__ = __str__


class _Tensor:
    """Stand-in for a tensor argument: a dtype and a 16-byte aligned address (what the binder looks at)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = _DType(dtype)

    @staticmethod
    def data_ptr() -> int:
        return 0


@dataclass
class Variant:
    name: str
    kernel: str
    args: tuple
    constexprs: Dict[str, object]
    num_warps: int
    group: str  # kernel family + constexprs: variants of one group with equal binaries are the same program
    record: Dict[str, object] = field(default_factory=dict)


class _Mixer:
    """The stand-in arguments the launcher passes for one dtype, width and length: the sequences (x, dt: (batch, L,
    E); B, C: slices of the x_proj output; z: half of the in_proj output) and the float32 parameters (A, D, dt bias)."""

    n_state, batch = 16, 8

    def __init__(self, dtype: str, channels: int, length: int) -> None:
        self.seq, self.f32 = _Tensor(dtype), _Tensor("float32")
        self.channels, self.length = channels, length
        self.xproj_stride = DT_RANK[channels] + 2 * self.n_state
        self.inproj_stride = 2 * channels

    def direction(self) -> tuple:
        """x, dt, B, C, A, D, dt_bias of one direction."""
        return (self.seq,) * 4 + (self.f32,) * 3

    def direction_strides(self) -> tuple:
        """(batch, token) strides of x, dt, B and C of one direction, as ``triton_scan._direction_args`` has them."""
        tokens, xproj = self.length * self.channels, self.length * self.xproj_stride
        return tokens, self.channels, tokens, self.channels, xproj, self.xproj_stride, xproj, self.xproj_stride

    def z_strides(self) -> tuple:
        return self.length * self.inproj_stride, self.inproj_stride


def _forward_variants(kernels, plans, dtype: str, has_z: bool, channels: int, length: int, mode: str) -> Variant:
    config = plans.TritonScanConfig()
    m = _Mixer(dtype, channels, length)
    # target programs: 4 per SM of an H100/H200; "seg" variants are what batch 1 at this length gets
    target = 4 * 132
    plan = plans.forward_plan(1 if mode.startswith("seg") else m.batch, length, channels, m.n_state, target, config)
    summary = mode == "seg-summary"
    seeded = mode.startswith("seg") and plan.n_segments > 1 and not summary
    save = mode in ("train", "seg-train")
    args = (
        *m.direction(), *m.direction(), m.seq, m.seq, m.f32, m.f32, m.f32, m.f32,
        *m.direction_strides(), *m.direction_strides(), *m.z_strides(), length * channels, channels,
        length, channels, m.n_state, plan.n_chunks, plan.n_segments, plan.seg_len,
    )
    constexprs = dict(HAS_Z=has_z, SAVE_STATES=save and not summary, SEEDED=seeded, SUMMARY=summary,
                      CK=config.checkpoint, BLOCK_E=plan.block_e, BLOCK_N=plan.block_n)
    name = f"fwd {mode} {dtype} {'z' if has_z else 'no-z'} E={channels} L={length}"
    return Variant(name, "bidirectional_scan_fwd_kernel", args, constexprs, config.num_warps_fwd,
                   f"fwd {mode} {dtype} {'z' if has_z else 'no-z'}")


def _backward_variant(kernels, plans, dtype: str, has_z: bool, channels: int, length: int,
                      deterministic: bool) -> Variant:
    config = plans.TritonScanConfig()
    m = _Mixer(dtype, channels, length)
    plan = plans.backward_plan(m.batch, channels, m.n_state, 4 * 132, config)
    n_chunks = -(-length // config.checkpoint)
    gradients = (m.seq, m.seq) + (m.f32,) * 5  # dx, ddt in the input dtype; dB, dC, dA, dD, dbias float32
    args = (
        *m.direction(), *m.direction(), m.seq, m.seq, m.f32, m.f32, *gradients, *gradients, m.seq,
        *m.direction_strides(), *m.direction_strides(), *m.z_strides(), length * channels, channels,
        length * channels, channels, m.batch * length * m.n_state, length * m.n_state, m.n_state,
        length, channels, m.n_state, n_chunks, plan.blocks_per_group,
    )
    constexprs = dict(HAS_Z=has_z, CK=config.checkpoint, ITEMS=config.items_bwd, BLOCK_E=plan.block_e,
                      BLOCK_N=plan.block_n)
    # the backward has one code path: dB/dC partials per channel group, summed in a fixed order (deterministic
    # with or without torch.use_deterministic_algorithms); both settings are listed so the table says so
    mode = "deterministic" if deterministic else "default"
    name = f"bwd {mode} {dtype} {'z' if has_z else 'no-z'} E={channels} L={length}"
    return Variant(name, "bidirectional_scan_bwd_kernel", args, constexprs, config.num_warps_bwd,
                   f"bwd {dtype} {'z' if has_z else 'no-z'}")


def _carry_variant(plans) -> Variant:
    f32 = _Tensor("float32")
    args = (f32, f32, f32, f32, f32, 384, 16, 22)
    return Variant("carry (segments) fp32", "segment_carry_kernel", args, dict(BLOCK_E=16, BLOCK_N=16), 2, "carry")


def variants(kernels, plans, quick: bool) -> List[Variant]:
    out: List[Variant] = []
    dtypes = ("float32", "bfloat16", "float16")
    if quick:  # one of each kernel family, the dtypes and z settings that change the code most
        out.append(_forward_variants(kernels, plans, "bfloat16", True, 384, 6085, "infer"))
        out.append(_forward_variants(kernels, plans, "float32", False, 384, 197, "train"))
        out.append(_forward_variants(kernels, plans, "bfloat16", True, 384, 6085, "seg-summary"))
        out.append(_backward_variant(kernels, plans, "bfloat16", True, 384, 197, False))
        out.append(_carry_variant(plans))
        return out
    for dtype in dtypes:
        for has_z in (True, False):
            for channels in (384, 1536):
                for length in (197, 6085):
                    for mode in ("infer", "train", "seg-summary", "seg-infer", "seg-train"):
                        out.append(_forward_variants(kernels, plans, dtype, has_z, channels, length, mode))
                    for deterministic in (False, True):
                        out.append(_backward_variant(kernels, plans, dtype, has_z, channels, length, deterministic))
    out.append(_carry_variant(plans))
    return out


def _tool(name: str) -> Optional[str]:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def _ptxas_usage(ptx: str, arch: int) -> Tuple[Optional[int], Optional[int], Optional[int], Optional[int]]:
    """(registers, spill store bytes, spill load bytes, static shared bytes) from ``ptxas -v``."""
    ptxas = _tool("ptxas")
    if ptxas is None:
        return None, None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        suffix = "a" if arch in (90, 100) else ""
        result = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", src, "-o", os.path.join(tmp, "k.o")],
                                capture_output=True, text=True)
    text = result.stdout + result.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return (int(regs.group(1)) if regs else None, int(spill.group(1)) if spill else None,
            int(spill.group(2)) if spill else None, int(smem.group(1)) if smem else 0)


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def _sass_main_loop(cubin: bytes) -> Dict[str, object]:
    """Instruction counts of the loop with the most MUFU (exp) instructions (the token loop), from the SASS."""
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        result = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True)
    instructions = []  # (address, opcode, operands)
    for match in _SASS_LINE.finditer(result.stdout):
        instructions.append((int(match.group(1), 16), match.group(3), match.group(4)))
    if not instructions:
        return {}
    loops = []
    for index, (address, opcode, operands) in enumerate(instructions):
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                start = int(target.group(1), 16)
                loops.append([ins for ins in instructions if start <= ins[0] <= address])
    if not loops:
        body = instructions
    else:
        body = max(loops, key=lambda ins: (sum(op.startswith("MUFU") for _, op, _ in ins), -len(ins)))

    def count(prefix: str) -> int:
        return sum(op.startswith(prefix) for _, op, _ in body)

    return {"sass_total": len(instructions), "loop_sass": len(body), "loop_mufu": count("MUFU"),
            "loop_shfl": count("SHFL"), "loop_bar": count("BAR"), "loop_ldg": count("LDG"),
            "loop_stg": count("STG"), "loop_lds": count("LDS"), "loop_sts": count("STS"),
            "loop_atom": count("ATOM") + count("RED"), "loop_local": count("LDL") + count("STL")}


def ctas_per_sm(regs: int, smem: int, num_warps: int, arch: int) -> int:
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = (REGS_PER_SM // regs_per_warp) // num_warps
    by_warps = MAX_WARPS_PER_SM.get(arch, 64) // num_warps
    by_smem = SMEM_PER_SM.get(arch, 233472) // (smem + 1024)
    return max(0, min(by_regs, by_warps, by_smem, MAX_CTAS_PER_SM.get(arch, 32)))


def compile_variant(kernels, variant: Variant, arch: int) -> Dict[str, object]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(kernels, variant.kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(variant.constexprs, num_warps=variant.num_warps)
    bound, specialization, options = binder(*variant.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    regs, spill_st, spill_ld, static_smem = _ptxas_usage(compiled.asm["ptx"], arch)
    smem = int(compiled.metadata.shared) + (static_smem or 0)
    record: Dict[str, object] = {
        "name": variant.name, "kernel": variant.kernel, "num_warps": variant.num_warps,
        "constexprs": {k: v for k, v in variant.constexprs.items()},
        "regs": regs, "spill_bytes": (spill_st or 0) + (spill_ld or 0) if regs is not None else None,
        "spill_store_bytes": spill_st, "spill_load_bytes": spill_ld, "smem_bytes": smem,
        "ctas_per_sm": ctas_per_sm(regs, smem, variant.num_warps, arch) if regs is not None else None,
        "cubin_sha1": hashlib.sha1(compiled.asm["cubin"]).hexdigest()[:12],
    }
    record.update(_sass_main_loop(compiled.asm["cubin"]))
    return record


def load_modules():
    kernels = _load_module("vimamba_triton_scan_kernels", os.path.join(OPS, "triton_scan_kernels.py"))
    plans = _load_module("vimamba_triton_scan_plan", os.path.join(OPS, "triton_scan_plan.py"))
    return kernels, plans


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--json", help="write one record per variant to this file")
    parser.add_argument("--quick", action="store_true", help="a representative handful of variants only")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the report compiles kernels, the interpreter would not", file=sys.stderr)
        return 2
    import triton

    kernels, plans = load_modules()
    print(f"Triton {triton.__version__}, target sm_{arch_str(args.arch)}; ptxas: {_tool('ptxas') or 'missing'}")
    records = []
    failures = 0
    print("| variant | warps | regs | spill st+ld B | smem B | CTAs/SM | loop SASS | MUFU | SHFL | BAR | local | "
          "binary |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in variants(kernels, plans, args.quick):
        try:
            record = compile_variant(kernels, variant, args.arch)
        except Exception as error:  # a variant that stops compiling is the point of this report
            failures += 1
            record = {"name": variant.name, "kernel": variant.kernel, "error": f"{type(error).__name__}: {error}",
                      "regs": None, "spill_bytes": None, "smem_bytes": None, "ctas_per_sm": None}
            print(f"| {variant.name} | FAILED: {record['error'][:200]} |")
            records.append(record)
            continue
        record["group"] = variant.group
        records.append(record)
        print(f"| {record['name']} | {record['num_warps']} | {record['regs']} | {record['spill_store_bytes']}+"
              f"{record['spill_load_bytes']} | {record['smem_bytes']} | {record['ctas_per_sm']} | "
              f"{record.get('loop_sass')} | {record.get('loop_mufu')} | {record.get('loop_shfl')} | "
              f"{record.get('loop_bar')} | {record.get('loop_local')} | {record['cubin_sha1']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch, "records": records}, f, indent=1)
    print(f"{len(records) - failures} of {len(records)} variants compiled")
    return 1 if failures else 0


def arch_str(arch: int) -> str:
    return f"{arch}a" if arch in (90, 100) else str(arch)


if __name__ == "__main__":
    sys.exit(main())

"""The Triton scan kernels compile for sm_90 (H100/H200) on a machine without a GPU, and the forward stays within
its register budget. Compile only: Triton's own compiler for GPUTarget("cuda", 90, 32), then ``ptxas`` from the
Triton wheel. ``benchmarks/triton_compile_report.py`` compiles every variant; this test a representative handful,
so that a kernel that stops compiling fails CI."""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import triton_compile_report as report  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                                reason="compiles kernels; the interpreter setting would make them Python functions")


@pytest.fixture(scope="module")
def modules():
    return report.load_modules()


def _ptxas_or_skip():
    if report._tool("ptxas") is None:
        pytest.skip("this Triton wheel ships no ptxas: registers and spills cannot be measured")


@pytest.mark.parametrize("dtype,has_z,mode", [("bfloat16", True, "infer"), ("float32", True, "train")])
def test_forward_compiles_within_register_budget(modules, dtype, has_z, mode):
    _ptxas_or_skip()
    kernels, plans = modules
    record = report.compile_variant(kernels, report._forward_variants(kernels, plans, dtype, has_z, 384, 6085, mode),
                                    90)
    assert record["regs"] <= 128 and record["spill_bytes"] == 0, record
    assert record["ctas_per_sm"] >= 4, record
    assert record.get("loop_shfl", 0) == 0, record  # nothing crosses lanes in the token loop


def test_backward_and_carry_compile(modules):
    _ptxas_or_skip()
    kernels, plans = modules
    for variant in (report._backward_variant(kernels, plans, "bfloat16", True, 384, 197, False),
                    report._carry_variant(plans)):
        record = report.compile_variant(kernels, variant, 90)
        assert record["regs"] is not None and record["regs"] <= 255, record


def test_occupancy_arithmetic():
    """CTAs per SM from registers, warps and shared memory (sm_90: 64K registers, 64 warps, 32 CTAs, 228 KB)."""
    assert report.ctas_per_sm(128, 0, 4, 90) == 4
    assert report.ctas_per_sm(255, 0, 4, 90) == 2
    assert report.ctas_per_sm(32, 0, 1, 90) == 32
    assert report.ctas_per_sm(64, 100 * 1024, 4, 90) == 2

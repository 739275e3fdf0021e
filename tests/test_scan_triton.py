"""The Triton bidirectional scan against the sequential reference: values, every gradient, dtypes, edge cases.

The kernels run on a CUDA GPU when one is present, and always in Triton's CPU interpreter. The interpreter has to be
switched on (``TRITON_INTERPRET=1``) before a kernel is decorated, i.e. before ``vimamba.ops.triton_scan`` is
imported, and it must not leak into other test modules; so ``test_kernels_under_interpreter`` re-runs this module in
a subprocess with the variable set, where the kernel tests below run on the "cpu" device. In the parent process they
run on "cuda" if available and are skipped otherwise.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from conftest import tiny_vim  # noqa: E402
from vimamba.ops import triton_scan  # noqa: E402
from vimamba.ops.reference import bidirectional_scan_reference, selective_scan_reference  # noqa: E402
from vimamba.ops.triton_scan import bidirectional_scan_triton  # noqa: E402

INTERPRETED = triton_scan.INTERPRETED
if INTERPRETED:
    DEVICES = ["cpu"]
elif torch.cuda.is_available():
    DEVICES = ["cuda"]
else:
    DEVICES = [pytest.param("cpu", marks=pytest.mark.skip(
        reason="no CUDA device: these run in Triton's interpreter in test_kernels_under_interpreter"))]
on_devices = pytest.mark.parametrize("device", DEVICES)

ARG_NAMES = ("x_f", "x_b", "dt_f", "dt_b", "B_f", "B_b", "C_f", "C_b", "A_f", "A_b", "D_f", "D_b", "dt_bias_f",
             "dt_bias_b", "z")


# ---------------------------------------------------------------------------------------------------------------
# The interpreter emulates tl.associative_scan one element at a time in Python (about half a millisecond per
# element). This replaces it, for this module only, by the same left-to-right fold applied to whole slices across
# the scan axis - the result the interpreter computes, vectorised. test_interpreter_scan_emulation checks it.

def _vectorised_generic_scan(self, input):
    datas = [arg.handle.data for arg in input]
    outs = [np.empty_like(d) for d in datas]
    acc = None
    for i in range(datas[0].shape[self.axis]):
        index = (slice(None),) * self.axis + (i,)
        current = tuple(self.to_tensor(d[index], arg.dtype) for d, arg in zip(datas, input))
        if acc is None:
            acc = current
        else:
            combined = self.combine_fn.fn(*acc, *current)
            acc = combined if isinstance(combined, tuple) else (combined,)
        for out, value in zip(outs, acc):
            out[index] = value.handle.data
    return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, input)]


def _interpreter_scan_ops():
    from triton.runtime import interpreter

    scan_ops = getattr(interpreter, "ScanOps", None)
    return scan_ops if scan_ops is not None and hasattr(scan_ops, "generic_scan") else None


@pytest.fixture(scope="module", autouse=True)
def fast_interpreter_scan():
    scan_ops = _interpreter_scan_ops() if INTERPRETED else None
    if scan_ops is None:  # a GPU run, or a Triton whose interpreter is organised differently: leave it alone
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_ops, "generic_scan", _vectorised_generic_scan)
        yield


@triton.jit
def _recurrence(a_first, b_first, a_second, b_second):
    return a_first * a_second, b_first * a_second + b_second


@triton.jit
def _scan_kernel(a_ptr, b_ptr, out_ptr, REVERSE: tl.constexpr, T: tl.constexpr, E: tl.constexpr, N: tl.constexpr):
    offsets = (tl.arange(0, T)[:, None, None] * E * N + tl.arange(0, E)[None, :, None] * N
               + tl.arange(0, N)[None, None, :])
    _, h = tl.associative_scan((tl.load(a_ptr + offsets), tl.load(b_ptr + offsets)), 0, _recurrence, reverse=REVERSE)
    tl.store(out_ptr + offsets, h)


@pytest.mark.skipif(not INTERPRETED, reason="checks the interpreter emulation used by this module")
@pytest.mark.parametrize("reverse", [False, True])
def test_interpreter_scan_emulation(reverse):
    a, b = torch.rand(4, 2, 4, dtype=torch.float64) + 0.1, torch.randn(4, 2, 4, dtype=torch.float64)
    expected, h = torch.empty_like(b), torch.zeros(2, 4, dtype=torch.float64)
    for i in (range(3, -1, -1) if reverse else range(4)):
        h = a[i] * h + b[i]
        expected[i] = h
    out = torch.empty_like(b)
    _scan_kernel[(1,)](a, b, out, reverse, 4, 2, 4)
    torch.testing.assert_close(out, expected)
    assert _interpreter_scan_ops().generic_scan is _vectorised_generic_scan  # the kernels below ran vectorised


# ---------------------------------------------------------------------------------------------------------------
# Inputs and comparisons

def make_inputs(batch=2, length=33, channels=20, n_state=5, dtype=torch.float32, device="cpu", with_z=True,
                dt_scale=0.5, a_scale=3.0, seed=0):
    """Random scan inputs laid out as the Vim mixer produces them: B and C are slices of one x_proj output per
    direction and z is the second half of the in_proj output (non-contiguous views)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=device)

    rank = 3
    x_proj_f, x_proj_b = randn(batch, length, rank + 2 * n_state), randn(batch, length, rank + 2 * n_state)
    in_proj = randn(batch, length, 2 * channels)
    inputs = dict(
        x_f=randn(batch, length, channels), x_b=randn(batch, length, channels),
        dt_f=randn(batch, length, channels, scale=dt_scale), dt_b=randn(batch, length, channels, scale=dt_scale),
        B_f=x_proj_f[..., rank:rank + n_state], B_b=x_proj_b[..., rank:rank + n_state],
        C_f=x_proj_f[..., rank + n_state:], C_b=x_proj_b[..., rank + n_state:],
        A_f=-(torch.rand(channels, n_state, generator=gen) * a_scale + 0.05).to(device),
        A_b=-(torch.rand(channels, n_state, generator=gen) * a_scale + 0.05).to(device),
        D_f=torch.randn(channels, generator=gen).to(device), D_b=torch.randn(channels, generator=gen).to(device),
        dt_bias_f=(torch.randn(channels, generator=gen) * 0.5).to(device),
        dt_bias_b=(torch.randn(channels, generator=gen) * 0.5).to(device),
        z=in_proj[..., channels:] if with_z else None,
    )
    return inputs


def as_leaves(inputs, dtype=None):
    """Independent copies that require grad (float64 copies on the CPU for the reference when dtype is given)."""
    out = {}
    for name, t in inputs.items():
        if t is None:
            out[name] = None
        elif dtype is not None:
            out[name] = t.detach().to("cpu", dtype).requires_grad_()
        else:
            out[name] = t.detach().clone().requires_grad_()
    return out


def assert_close_scaled(actual, expected, rtol, name=""):
    """Max abs error within rtol times the largest magnitude of the expected tensor (errors of a float32 scan grow
    with the size of its accumulations, not with each element's value)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, name
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= rtol * scale + 1e-30, f"{name}: max error {error:.3e} > {rtol:.0e} x {scale:.3e}"


def reference64(inputs):
    return bidirectional_scan_reference(**{k: (v.detach().cpu().double() if v is not None else None)
                                           for k, v in inputs.items()})


def check_gradients(inputs, rtol, seed=1):
    """Every gradient of the Triton op equals autograd through the float64 reference."""
    leaves = as_leaves(inputs)
    out = bidirectional_scan_triton(**leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(grad_out.to(out.dtype).to(out.device))

    ref_leaves = as_leaves(inputs, dtype=torch.float64)
    bidirectional_scan_reference(**ref_leaves).backward(grad_out)
    for name in ARG_NAMES:
        if ref_leaves[name] is not None:
            assert leaves[name].grad is not None, name
            assert leaves[name].grad.dtype == leaves[name].dtype, name
            assert_close_scaled(leaves[name].grad, ref_leaves[name].grad, rtol, name)
    return {name: leaf.grad for name, leaf in leaves.items() if leaf is not None}


# ---------------------------------------------------------------------------------------------------------------
# Kernel tests. The interpreter costs the same per op whatever the tile size, so under it the backward runs with
# large tiles and a short checkpoint interval (fewer, bigger steps; same code, other constexprs); the default
# launch parameters are covered by test_default_launch_parameters. On a GPU everything uses the defaults.

FAST_INTERPRETER_CONFIG = triton_scan.TritonScanConfig(items_bwd=8, checkpoint=16, block_e_bwd=32)
SEGMENTED = dict(min_programs=10 ** 6)  # split every sequence into as many segments as it has checkpoint chunks


def config(**overrides):
    base = FAST_INTERPRETER_CONFIG if INTERPRETED else triton_scan.TritonScanConfig()
    return triton_scan.use_config(dataclasses.replace(base, **overrides))


@pytest.fixture(autouse=True)
def launch_parameters():
    with config():
        yield


@on_devices
@pytest.mark.parametrize("with_z", [True, False], ids=["z", "no_z"])
@pytest.mark.parametrize("length", [1, 2, 3, 17, 40])
def test_forward_matches_reference(device, length, with_z):
    inputs = make_inputs(length=length, with_z=with_z, device=device)  # E=20: a partial channel block
    out = bidirectional_scan_triton(**inputs)
    assert out.dtype == torch.float32 and out.shape == (2, length, 20)
    assert_close_scaled(out, reference64(inputs), 2e-5)


@on_devices
@pytest.mark.parametrize("length", [17, 53])
def test_segmented_forward_matches_reference(device, length):
    """Sequences split into segments (summary pass, carry pass, seeded main pass) give the same result; L=53
    leaves a partial last segment and a partial last checkpoint chunk."""
    inputs = make_inputs(batch=1, length=length, channels=8, n_state=16, device=device)
    with config(**SEGMENTED):
        plan = triton_scan.forward_plan(1, length, 8, 16, 10 ** 6, triton_scan.current_config())
        assert plan.n_segments > 1
        out = bidirectional_scan_triton(**inputs)
    assert_close_scaled(out, reference64(inputs), 2e-5)


@on_devices
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_each_direction_alone(device, direction):
    """With the other direction's input and skip term zeroed, the output is one direction's scan: catches a
    direction run the wrong way or with the other direction's parameters."""
    inputs = make_inputs(length=21, n_state=16, channels=8, device=device)
    other = "b" if direction == "forward" else "f"
    inputs[f"x_{other}"] = torch.zeros_like(inputs[f"x_{other}"])
    own = "f" if direction == "forward" else "b"
    cpu = {k: (v.detach().cpu().double() if v is not None else None) for k, v in inputs.items()}
    expected = selective_scan_reference(
        cpu[f"x_{own}"], cpu[f"dt_{own}"], cpu[f"A_{own}"], cpu[f"B_{own}"], cpu[f"C_{own}"], cpu[f"D_{own}"],
        z=cpu["z"], delta_bias=cpu[f"dt_bias_{own}"], delta_softplus=True, reverse=direction == "backward") / 2
    assert_close_scaled(bidirectional_scan_triton(**inputs), expected, 2e-5)


@on_devices
@pytest.mark.parametrize("length,with_z,segmented", [(1, True, False), (3, True, False), (17, False, False),
                                                     (37, True, False), (21, True, True)])
def test_gradients_match_reference(device, length, with_z, segmented):
    # L=17 and 37 cross checkpoint chunks (16 tokens under the interpreter) with a partial last one, so the
    # adjoint carries across tiles and chunks in both directions; segmented: states saved by the seeded pass.
    with config(**(SEGMENTED if segmented else {})):
        check_gradients(make_inputs(length=length, with_z=with_z, device=device), rtol=1e-4)


@on_devices
def test_default_launch_parameters(device):
    """The default configuration (checkpoint 32, 4-token backward tiles, 8-channel backward blocks: two blocks
    one of them partial for E=12) against the reference, values and gradients, across two checkpoint chunks."""
    with triton_scan.use_config(triton_scan.TritonScanConfig()):
        inputs = make_inputs(batch=1, length=35, channels=12, device=device)
        assert_close_scaled(bidirectional_scan_triton(**inputs), reference64(inputs), 2e-5)
        check_gradients(inputs, rtol=1e-4)


@on_devices
def test_row_scalar_loads(device):
    """The compiled kernels load B and C rows as N scalars; the interpreter normally uses tile loads. Both agree."""
    inputs = make_inputs(length=5, n_state=5, device=device)
    with config(row_scalars=True):
        assert_close_scaled(bidirectional_scan_triton(**inputs), reference64(inputs), 2e-5)


@on_devices
def test_gradients_are_deterministic(device):
    """dB/dC are summed over channel blocks in a fixed order (no atomics): bitwise repeatable, with and without
    torch.use_deterministic_algorithms."""
    inputs = make_inputs(length=9, channels=40, device=device)
    previous = torch.are_deterministic_algorithms_enabled()
    runs = []
    try:
        for deterministic in (True, False):
            torch.use_deterministic_algorithms(deterministic)
            runs.append(check_gradients(inputs, rtol=1e-4))
    finally:
        torch.use_deterministic_algorithms(previous)
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


@on_devices
@pytest.mark.parametrize("dtype,length,out_tol,grad_rtol", [(torch.bfloat16, 10, 1e-2, 3e-2),
                                                             (torch.float16, 7, 2e-3, 1e-2)], ids=["bf16", "fp16"])
def test_half_precision_inputs(device, dtype, length, out_tol, grad_rtol):
    """bf16/fp16 in, float32 inside, the same dtype out: within that dtype's rounding of the float32 result on the
    same values; the gradients in the input dtype too."""
    inputs = make_inputs(length=length, dtype=dtype, device=device)
    out = bidirectional_scan_triton(**inputs)
    assert out.dtype == dtype
    assert_close_scaled(out, reference64(inputs), out_tol)
    grads = check_gradients(inputs, rtol=grad_rtol)
    assert all(grads[name].dtype == dtype for name in ("x_f", "x_b", "dt_b", "B_f", "C_b", "z"))


@on_devices
def test_large_negative_decay_is_finite(device):
    """A * delta down to about -1e5 (decays underflow to 0) and huge dt (softplus passes it through): finite values
    and gradients equal to the reference."""
    inputs = make_inputs(length=20, device=device, dt_scale=30.0, a_scale=1e4)
    out = bidirectional_scan_triton(**inputs)
    assert torch.isfinite(out).all()
    assert_close_scaled(out, reference64(inputs), 2e-5)
    check_gradients(inputs, rtol=1e-4)


@on_devices
def test_saves_chunk_states_not_the_full_state(device):
    """What autograd keeps is the inputs plus one state per chunk and direction - never (batch, L, E, N)."""
    batch, length, channels, n_state = 2, 40, 8, 16
    inputs = as_leaves(make_inputs(batch=batch, length=length, channels=channels, n_state=n_state, device=device))
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs.values() if t is not None}
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in input_ptrs:
            extra.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = bidirectional_scan_triton(**inputs)
    full_state_bytes = 2 * batch * length * channels * n_state * 4
    block_t = triton_scan.current_config().checkpoint
    chunk_state_bytes = 2 * batch * -(-length // block_t) * channels * n_state * 4
    assert sum(extra) == chunk_state_bytes < full_state_bytes / 8
    out.sum().backward()  # and the saved tensors suffice for the backward pass
    assert inputs["A_f"].grad is not None


@on_devices
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_saves_no_states(device, mode, monkeypatch):
    """A forward without autograd (inputs that require grad, under no_grad / inference_mode) asks the kernel for no
    saved states, and its output equals the training forward's."""
    inputs = as_leaves(make_inputs(length=9, device=device))
    calls = []
    original = triton_scan.scan_forward

    def recording(inputs_, z, save_states):
        calls.append(save_states)
        return original(inputs_, z, save_states)

    monkeypatch.setattr(triton_scan, "scan_forward", recording)
    with (torch.no_grad() if mode == "no_grad" else torch.inference_mode()):
        inferred = bidirectional_scan_triton(**inputs)
    assert calls == [False] and not inferred.requires_grad
    trained = bidirectional_scan_triton(**inputs)
    assert calls == [False, True]
    torch.testing.assert_close(inferred, trained.detach(), rtol=0, atol=0)


@on_devices
def test_contract_functions(device):
    """scan_forward / scan_backward / saved_states_shape, the raw entry points a custom op wraps: shapes, and the
    gradients equal autograd through the reference."""
    inputs = make_inputs(batch=1, length=20, channels=12, n_state=16, device=device)
    prepared, z = triton_scan.prepare_inputs(**inputs)
    out, states = triton_scan.scan_forward(prepared, z, save_states=True)
    assert states.dtype == torch.float32
    assert tuple(states.shape) == triton_scan.saved_states_shape(1, 20, 12, 16)
    assert triton_scan.scan_forward(prepared, z, save_states=False)[1] is None
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    grads = triton_scan.scan_backward(prepared, z, states, dout)
    assert len(grads) == 15
    ref = as_leaves(inputs, dtype=torch.float64)
    bidirectional_scan_reference(**ref).backward(dout.double().cpu())
    for name, grad in zip(ARG_NAMES, grads):
        assert_close_scaled(grad, ref[name].grad, 1e-4, name)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        again = [triton_scan.scan_backward(prepared, z, states, dout) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, first, second in zip(ARG_NAMES, *again):
        assert torch.equal(first, second), name


@on_devices
def test_empty_sequence(device):
    inputs = as_leaves(make_inputs(length=0, device=device))
    out = bidirectional_scan_triton(**inputs)
    assert out.shape == (2, 0, 20)
    out.sum().backward()
    assert inputs["A_f"].grad.abs().sum() == 0 and inputs["x_f"].grad.shape == (2, 0, 20)


@on_devices
def test_whole_model_matches_reference(device):
    """A tiny Vim gives the same logits and parameter gradients with impl="triton" as with "reference"."""
    torch.manual_seed(0)
    model = tiny_vim().to(device).eval()
    images = torch.randn(2, 3, 16, 16, device=device)
    results = {}
    for impl in ("reference", "triton"):
        model.set_scan_impl(impl)
        model.zero_grad()
        logits = model(images)
        logits.square().sum().backward()
        results[impl] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (ref_logits, ref_grads), (tri_logits, tri_grads) = results["reference"], results["triton"]
    assert_close_scaled(tri_logits, ref_logits, 1e-5, "logits")
    for name, grad in ref_grads.items():
        assert_close_scaled(tri_grads[name], grad, 1e-4, name)


# ---------------------------------------------------------------------------------------------------------------
# Host-side checks (no kernel launch) and the interpreter run

def test_rejects_bad_inputs():
    inputs = make_inputs(length=5)
    with pytest.raises(TypeError, match="float64"):
        bidirectional_scan_triton(**{**inputs, "x_f": inputs["x_f"].double()})
    with pytest.raises(ValueError, match="B_b must have shape"):
        bidirectional_scan_triton(**{**inputs, "B_b": inputs["B_b"][:, :4]})
    with pytest.raises(ValueError, match="A_f must be"):
        bidirectional_scan_triton(**{**inputs, "A_f": inputs["A_f"][:3]})
    if not INTERPRETED:
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            bidirectional_scan_triton(**inputs)


def test_config_must_use_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        triton_scan.TritonScanConfig(checkpoint=24)
    with pytest.raises(ValueError, match="multiple of 32"):
        triton_scan.TritonScanConfig(block_e_fwd=16)


def test_plans_fill_the_gpu():
    """Batch 1 of a 1248-px image (L = 6085) is split into segments until 4 programs per SM of an H100 run; a
    large batch is not split; the backward's channel groups stay within max_bwd_groups."""
    cfg = triton_scan.TritonScanConfig()
    small = triton_scan.forward_plan(1, 6085, 384, 16, 4 * 132, cfg)
    assert small.n_segments * small.e_blocks >= 4 * 132 and small.seg_len % cfg.checkpoint == 0
    assert (small.n_segments - 1) * small.seg_len < 6085 <= small.n_segments * small.seg_len
    assert triton_scan.forward_plan(64, 197, 384, 16, 4 * 132, cfg).n_segments == 1
    back = triton_scan.backward_plan(1, 384, 16, 4 * 132, cfg)
    assert back.groups <= cfg.max_bwd_groups and back.groups * back.blocks_per_group * back.block_e >= 384


@pytest.mark.skipif(INTERPRETED, reason="already running under the interpreter")
def test_kernels_under_interpreter():
    """Run this module's kernel tests in Triton's CPU interpreter, in a subprocess so the interpreter setting
    does not reach other test modules."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider", "-x"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"interpreter run failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout and " failed" not in result.stdout

"""The bidirectional selective scan as a native CPU kernel (``csrc/scan_cpu.cpp``), compiled on first use.

The C++ source has no torch headers and a plain C ABI, so it builds in a few seconds with
``torch.utils.cpp_extension.load`` (ninja, cached in the torch extensions directory, rebuilt when the source or the
flags change, locked against concurrent builds) and is called through :mod:`ctypes`. It is built for the machine it
runs on (``-march=native``); the CPU's feature flags are part of the extension's name, so machines sharing a
home directory never load each other's builds. OpenMP threads follow ``torch.get_num_threads()``.

Where it cannot be built (no C++ compiler, no ninja) one warning is given and the scan runs on the ``"chunked"``
path. ``VIMAMBA_DISABLE_CPP=1`` turns it off (``is_available()`` is then false, so "auto" picks "chunked").
float64 inputs (gradient checks) and state sizes above the kernel's limit are computed by the chunked path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from .chunked import bidirectional_scan_chunked, check_scan_inputs

__all__ = ["bidirectional_scan_cpp", "bidirectional_conv_silu_cpp", "is_available", "load_library", "DISABLE_ENV",
           "CHUNK"]

DISABLE_ENV = "VIMAMBA_DISABLE_CPP"
CHUNK = 64  # tokens between the states saved for backward
_SOURCE = Path(__file__).parent / "csrc" / "scan_cpu.cpp"
_ABI_VERSION = 2
# Flag sets tried in order; the first that builds is used.
_FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-fno-math-errno"],
)


class _Direction(ctypes.Structure):
    _fields_ = [
        ("u", ctypes.c_void_p), ("u_sb", ctypes.c_int64), ("u_sl", ctypes.c_int64),
        ("dt", ctypes.c_void_p), ("dt_sb", ctypes.c_int64), ("dt_sl", ctypes.c_int64),
        ("B", ctypes.c_void_p), ("B_sb", ctypes.c_int64), ("B_sl", ctypes.c_int64),
        ("C", ctypes.c_void_p), ("C_sb", ctypes.c_int64), ("C_sl", ctypes.c_int64),
        ("A", ctypes.c_void_p), ("D", ctypes.c_void_p), ("dt_bias", ctypes.c_void_p),
        ("states", ctypes.c_void_p),
        ("du", ctypes.c_void_p), ("ddt", ctypes.c_void_p), ("dA", ctypes.c_void_p),
        ("dD", ctypes.c_void_p), ("dbias", ctypes.c_void_p), ("dB", ctypes.c_void_p), ("dC", ctypes.c_void_p),
    ]


class _Problem(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64), ("length", ctypes.c_int64), ("channels", ctypes.c_int64),
        ("n_state", ctypes.c_int64), ("chunk", ctypes.c_int64), ("n_chunks", ctypes.c_int64),
        ("num_threads", ctypes.c_int64),
        ("z", ctypes.c_void_p), ("z_sb", ctypes.c_int64), ("z_sl", ctypes.c_int64),
        ("out", ctypes.c_void_p), ("grad_out", ctypes.c_void_p), ("dz", ctypes.c_void_p),
        ("dir", _Direction * 2),
    ]


class _ConvProblem(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64), ("length", ctypes.c_int64), ("channels", ctypes.c_int64),
        ("width", ctypes.c_int64), ("num_threads", ctypes.c_int64),
        ("x", ctypes.c_void_p), ("x_sb", ctypes.c_int64), ("x_sl", ctypes.c_int64),
        ("w", ctypes.c_void_p * 2), ("bias", ctypes.c_void_p * 2), ("out", ctypes.c_void_p * 2),
        ("grad", ctypes.c_void_p * 2), ("dx", ctypes.c_void_p), ("dw", ctypes.c_void_p * 2),
        ("dbias", ctypes.c_void_p * 2), ("scratch", ctypes.c_void_p),
    ]


def _cpu_fingerprint() -> str:
    """A short hash of the CPU's model and feature flags (what -march=native depends on)."""
    text = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name", "CPU part")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _build(flags: Sequence[str]) -> str:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise on CPU hosts
    from torch.utils import cpp_extension

    try:  # ninja from PyPI (a dependency) when there is none on PATH
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    flag_tag = hashlib.sha1(" ".join(flags).encode()).hexdigest()[:6]
    return cpp_extension.load(
        name=f"vimamba_scan_cpu_{_cpu_fingerprint()}_{flag_tag}",
        sources=[str(_SOURCE)],
        extra_cflags=list(flags),
        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
        is_python_module=False,
        verbose=False,
    )


@functools.lru_cache(maxsize=None)
def load_library() -> Optional[ctypes.CDLL]:
    """The compiled kernel (built on first call), or None if disabled or if it cannot be built (warns once)."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    errors = []
    for flags in _FLAG_SETS:
        try:
            lib = ctypes.CDLL(_build(flags))
        except Exception as error:  # no compiler, no ninja, unsupported flag, ...
            errors.append(f"{' '.join(flags)}: {type(error).__name__}: {str(error).strip()[-300:]}")
            continue
        if lib.vimamba_scan_abi_version() != _ABI_VERSION:
            errors.append(f"{' '.join(flags)}: stale build (ABI version {lib.vimamba_scan_abi_version()})")
            continue
        for fn in (lib.vimamba_scan_forward, lib.vimamba_scan_backward):
            fn.argtypes, fn.restype = [ctypes.POINTER(_Problem)], ctypes.c_int
        for fn in (lib.vimamba_conv_silu_forward, lib.vimamba_conv_silu_backward):
            fn.argtypes, fn.restype = [ctypes.POINTER(_ConvProblem)], ctypes.c_int
        return lib
    warnings.warn(
        "vimamba: the native CPU selective scan could not be built, using the slower 'chunked' PyTorch path "
        f"(set {DISABLE_ENV}=1 to silence this). Attempts:\n  " + "\n  ".join(errors),
        RuntimeWarning, stacklevel=2,
    )
    return None


def is_available() -> bool:
    """True when the kernel is enabled and built (building it on the first call)."""
    return load_library() is not None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return t.data_ptr() if t is not None else None


def _as_kernel_input(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """float32 with a unit stride on the last axis (other strides are passed to the kernel as they are)."""
    if t is None:
        return None
    if t.dtype != torch.float32:
        return t.float().contiguous()
    return t if t.stride(-1) == 1 else t.contiguous()


def _problem(inputs, out=None, grad_out=None, dz=None, states=(None, None), grads=(None, None)) -> _Problem:
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z = inputs
    batch, length, channels = x_f.shape
    n_chunks = -(-length // CHUNK)
    p = _Problem(batch, length, channels, A_f.shape[1], CHUNK, n_chunks, torch.get_num_threads())
    if z is not None:
        p.z, p.z_sb, p.z_sl = z.data_ptr(), z.stride(0), z.stride(1)
    p.out, p.grad_out, p.dz = _ptr(out), _ptr(grad_out), _ptr(dz)
    per_direction = ((x_f, dt_f, B_f, C_f, A_f, D_f, dt_bias_f), (x_b, dt_b, B_b, C_b, A_b, D_b, dt_bias_b))
    for k, (u, dt, B, C, A, D, bias) in enumerate(per_direction):
        d = p.dir[k]
        d.u, d.u_sb, d.u_sl = u.data_ptr(), u.stride(0), u.stride(1)
        d.dt, d.dt_sb, d.dt_sl = dt.data_ptr(), dt.stride(0), dt.stride(1)
        d.B, d.B_sb, d.B_sl = B.data_ptr(), B.stride(0), B.stride(1)
        d.C, d.C_sb, d.C_sl = C.data_ptr(), C.stride(0), C.stride(1)
        d.A, d.D, d.dt_bias, d.states = A.data_ptr(), _ptr(D), _ptr(bias), _ptr(states[k])
        if grads[k] is not None:
            d.du, d.ddt, d.dA, d.dD, d.dbias, d.dB, d.dC = (_ptr(g) for g in grads[k])
    return p


def _forward(lib: ctypes.CDLL, inputs, save_states: bool):
    x_f, A_f = inputs[0], inputs[8]
    batch, length, channels = x_f.shape
    out = torch.empty(batch, length, channels, dtype=torch.float32)
    states = tuple(torch.empty(batch, -(-length // CHUNK), A_f.shape[1], channels) if save_states else None
                   for _ in range(2))
    if lib.vimamba_scan_forward(ctypes.byref(_problem(inputs, out=out, states=states))) != 0:
        raise RuntimeError("vimamba_scan_forward rejected its arguments")
    return out, states


class _CppBidirectionalScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        lib = load_library()
        kernel_inputs = tuple(_as_kernel_input(t) for t in inputs)
        out, states = _forward(lib, kernel_inputs, save_states=True)
        ctx.save_for_backward(*kernel_inputs, *states)
        ctx.dtypes = [t.dtype if t is not None else None for t in inputs]
        return out.to(inputs[0].dtype)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        inputs, states = saved[:15], saved[15:]
        x_f, A_f, z = inputs[0], inputs[8], inputs[14]
        batch, length, channels = x_f.shape
        n_state, threads = A_f.shape[1], torch.get_num_threads()
        grad_out = grad_out.float().contiguous()
        dz = torch.empty_like(grad_out) if z is not None else None
        grads = []
        for D, bias in ((inputs[10], inputs[12]), (inputs[11], inputs[13])):
            grads.append((
                torch.empty(batch, length, channels), torch.empty(batch, length, channels),
                torch.empty(batch, channels, n_state),
                torch.empty(batch, channels) if D is not None else None,
                torch.empty(batch, channels) if bias is not None else None,
                torch.zeros(threads, batch, length, n_state), torch.zeros(threads, batch, length, n_state),
            ))
        problem = _problem(inputs, grad_out=grad_out, dz=dz, states=states, grads=grads)
        if load_library().vimamba_scan_backward(ctypes.byref(problem)) != 0:
            raise RuntimeError("vimamba_scan_backward rejected its arguments")
        (du_f, ddt_f, dA_f, dD_f, db_f, dB_f, dC_f), (du_b, ddt_b, dA_b, dD_b, db_b, dB_b, dC_b) = grads
        total = lambda t: t.sum(0) if t is not None else None  # noqa: E731  (partial sums -> gradient)
        result = (du_f, du_b, ddt_f, ddt_b, total(dB_f), total(dB_b), total(dC_f), total(dC_b),
                  total(dA_f), total(dA_b), total(dD_f), total(dD_b), total(db_f), total(db_b), dz)
        return tuple(g.to(dtype) if g is not None and need else None
                     for g, dtype, need in zip(result, ctx.dtypes, ctx.needs_input_grad))


def bidirectional_scan_cpp(
    x_f: torch.Tensor,
    x_b: torch.Tensor,
    dt_f: torch.Tensor,
    dt_b: torch.Tensor,
    B_f: torch.Tensor,
    B_b: torch.Tensor,
    C_f: torch.Tensor,
    C_b: torch.Tensor,
    A_f: torch.Tensor,
    A_b: torch.Tensor,
    D_f: Optional[torch.Tensor],
    D_b: Optional[torch.Tensor],
    dt_bias_f: Optional[torch.Tensor],
    dt_bias_b: Optional[torch.Tensor],
    z: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 by the native CPU kernel; same contract as the other implementations.

    float32, bfloat16 and float16 inputs (computed in float32); float64 inputs, state sizes above 64, or a kernel
    that could not be built go to :func:`vimamba.ops.chunked.bidirectional_scan_chunked`.
    """
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)
    check_scan_inputs(*inputs)
    tensors = [t for t in inputs if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("the 'cpp' selective scan runs on CPU tensors; use impl='auto', 'triton' or 'chunked'")
    lib = load_library()
    if lib is None or x_f.dtype == torch.float64 or A_f.shape[1] > lib.vimamba_scan_max_state():
        return bidirectional_scan_chunked(*inputs)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _CppBidirectionalScan.apply(*inputs)
    out, _ = _forward(lib, tuple(_as_kernel_input(t) for t in inputs), save_states=False)
    return out.to(x_f.dtype)


# ----------------------------------------------------------------------------------------------- conv + SiLU


def _conv_problem(x, weights, biases, out=(None, None), grad=(None, None), dx=None, dw=(None, None),
                  dbias=(None, None), scratch=None) -> _ConvProblem:
    batch, length, channels = x.shape
    p = _ConvProblem(batch, length, channels, weights[0].shape[-1], torch.get_num_threads(),
                     x.data_ptr(), x.stride(0), x.stride(1))
    for k in range(2):
        p.w[k], p.bias[k], p.out[k] = weights[k].data_ptr(), _ptr(biases[k]), _ptr(out[k])
        p.grad[k], p.dw[k], p.dbias[k] = _ptr(grad[k]), _ptr(dw[k]), _ptr(dbias[k])
    p.dx, p.scratch = _ptr(dx), _ptr(scratch)
    return p


def _conv_forward(lib, x, weights, biases):
    out = (torch.empty(x.shape), torch.empty(x.shape))
    if lib.vimamba_conv_silu_forward(ctypes.byref(_conv_problem(x, weights, biases, out=out))) != 0:
        raise RuntimeError("vimamba_conv_silu_forward rejected its arguments")
    return out


class _CppConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_f, bias_f, weight_b, bias_b):
        inputs = (x, weight_f, bias_f, weight_b, bias_b)
        ctx.dtypes = [t.dtype if t is not None else None for t in inputs]
        ctx.shapes = [t.shape if t is not None else None for t in inputs]
        x_, w_f, b_f, w_b, b_b = (_as_kernel_input(t) for t in _flat_kernels(inputs))
        out = _conv_forward(load_library(), x_, (w_f, w_b), (b_f, b_b))
        ctx.save_for_backward(x_, w_f, b_f, w_b, b_b)
        return tuple(o.to(x.dtype) for o in out)

    @staticmethod
    def backward(ctx, grad_f, grad_b):
        x, w_f, b_f, w_b, b_b = ctx.saved_tensors
        batch, length, channels = x.shape
        width, threads = w_f.shape[-1], torch.get_num_threads()
        grads = tuple((g if g is not None else torch.zeros(x.shape)).float().contiguous() for g in (grad_f, grad_b))
        dx = torch.empty(x.shape)
        dw = (torch.empty(batch, channels, width), torch.empty(batch, channels, width))
        dbias = tuple(torch.empty(batch, channels) if b is not None else None for b in (b_f, b_b))
        scratch = torch.empty(threads, 2, length, _lanes())
        problem = _conv_problem(x, (w_f, w_b), (b_f, b_b), grad=grads, dx=dx, dw=dw, dbias=dbias, scratch=scratch)
        if load_library().vimamba_conv_silu_backward(ctypes.byref(problem)) != 0:
            raise RuntimeError("vimamba_conv_silu_backward rejected its arguments")
        result = (dx, dw[0].sum(0), dbias[0].sum(0) if dbias[0] is not None else None,
                  dw[1].sum(0), dbias[1].sum(0) if dbias[1] is not None else None)
        return tuple(g.reshape(shape).to(dtype) if g is not None and need else None
                     for g, dtype, shape, need in zip(result, ctx.dtypes, ctx.shapes, ctx.needs_input_grad))


def _flat_kernels(inputs):
    """(x, weight_f, bias_f, weight_b, bias_b) with the (E, 1, K) conv weights viewed as (E, K)."""
    x, weight_f, bias_f, weight_b, bias_b = inputs
    return x, weight_f.reshape(weight_f.shape[0], -1), bias_f, weight_b.reshape(weight_b.shape[0], -1), bias_b


def _lanes() -> int:
    return load_library().vimamba_scan_lanes()


def conv_silu_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`bidirectional_conv_silu_cpp` can run these inputs natively (CPU, not float64, small kernel)."""
    lib = load_library()
    return (lib is not None and x.device.type == "cpu" and x.dtype != torch.float64
            and weight.shape[-1] <= lib.vimamba_conv_max_width())


def bidirectional_conv_silu_cpp(x, weight_f, bias_f, weight_b, bias_b):
    """(silu(causal depthwise conv of x), silu(anti-causal depthwise conv of x)) by the native kernel.

    x: (batch, L, E); weights (E, 1, K) or (E, K); biases (E,) or None. Check :func:`conv_silu_supported` first.
    """
    inputs = (x, weight_f, bias_f, weight_b, bias_b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _CppConvSilu.apply(*inputs)
    x_, w_f, b_f, w_b, b_b = (_as_kernel_input(t) for t in _flat_kernels(inputs))
    out = _conv_forward(load_library(), x_, (w_f, w_b), (b_f, b_b))
    return tuple(o.to(x.dtype) for o in out)

"""The bidirectional selective scan as a native CPU kernel (``csrc/scan_cpu.cpp``), compiled on first use.

The same library also runs the mixer's two depthwise convolutions + SiLU in one pass. This module is the CPU
kernel of the ``vimamba::bidirectional_scan`` and ``vimamba::bidirectional_conv_silu`` operators
(:mod:`vimamba.ops.library`, which registers them with autograd and fake implementations): :func:`scan_forward`,
:func:`scan_backward` and :func:`saved_states_shape` (the same three functions as the Triton backend), and
:func:`conv_silu_forward` / :func:`conv_silu_backward`. :func:`bidirectional_scan_cpp` and
:func:`bidirectional_conv_silu_cpp` call the operators.

The C++ source has no torch headers and a plain C ABI, so it builds in a few seconds with
``torch.utils.cpp_extension.load`` (ninja, cached in the torch extensions directory, rebuilt when the source or the
flags change, locked against concurrent builds) and is called through :mod:`ctypes` (inside the opaque operators,
so ``torch.compile`` never sees it). It is built for the machine it runs on (``-march=native``); the CPU's feature
flags are part of the extension's name, so machines sharing a home directory never load each other's builds. OpenMP
threads follow ``torch.get_num_threads()``.

Where it cannot be built (no C++ compiler, no ninja) one warning is given and the operators compute by the
``"chunked"`` path. ``VIMAMBA_DISABLE_CPP=1`` turns it off (``is_available()`` is then false, so "auto" picks
"chunked"). float64 inputs (gradient checks) and state sizes above the kernel's limit are computed by the chunked
path too.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from .scan_inputs import ScanInputs, scan_entry_point

__all__ = ["bidirectional_scan_cpp", "bidirectional_conv_silu_cpp", "is_available", "load_library", "DISABLE_ENV",
           "CHUNK", "scan_forward", "scan_backward", "saved_states_shape", "native_scan_supported",
           "conv_silu_supported", "conv_silu_forward", "conv_silu_backward"]

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
    name = f"vimamba_scan_cpu_{_cpu_fingerprint()}_{hashlib.sha1(' '.join(flags).encode()).hexdigest()[:6]}"
    try:  # say so when this is the (slow) first build on this machine
        built = any(Path(cpp_extension._get_build_directory(name, False)).glob("*.so"))
    except Exception:
        built = True
    if not built:
        print("vimamba: compiling the native CPU selective scan (first use on this machine, a few seconds)",
              file=sys.stderr, flush=True)
    return cpp_extension.load(
        name=name,
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


def _strided(t: torch.Tensor) -> Tuple[int, int, int]:
    """(address, batch stride, token stride) of a (batch, L, ...) tensor."""
    stride = t.stride()
    return t.data_ptr(), stride[0], stride[1]


def _problem(inputs, out=None, grad_out=None, dz=None, states=(None, None), grads=(None, None)) -> _Problem:
    """The kernel's arguments (built with positional constructors: this runs on every call, at batch 1 its cost
    is not negligible next to the kernel's)."""
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z = inputs
    batch, length, channels = x_f.shape
    per_direction = ((x_f, dt_f, B_f, C_f, A_f, D_f, dt_bias_f), (x_b, dt_b, B_b, C_b, A_b, D_b, dt_bias_b))
    directions = [
        _Direction(*_strided(u), *_strided(dt), *_strided(B), *_strided(C), A.data_ptr(), _ptr(D), _ptr(bias),
                   _ptr(states[k]), *(_ptr(g) for g in (grads[k] if grads[k] is not None else (None,) * 7)))
        for k, (u, dt, B, C, A, D, bias) in enumerate(per_direction)
    ]
    return _Problem(batch, length, channels, A_f.shape[1], CHUNK, -(-length // CHUNK), torch.get_num_threads(),
                    *(_strided(z) if z is not None else (None, 0, 0)), _ptr(out), _ptr(grad_out), _ptr(dz),
                    (_Direction * 2)(*directions))


def native_scan_supported(x_f: torch.Tensor, A_f: torch.Tensor) -> bool:
    """Whether the native kernel computes these inputs (CPU, not float64, state size within its limit, built).
    Otherwise the ``vimamba::bidirectional_scan`` operator computes them by the chunked path."""
    if x_f.device.type != "cpu" or x_f.dtype == torch.float64:
        return False
    lib = load_library()
    return lib is not None and A_f.shape[1] <= lib.vimamba_scan_max_state()


def saved_states_shape(batch: int, length: int, channels: int, n_state: int) -> Tuple[int, ...]:
    """Shape of the float32 states :func:`scan_forward` saves for backward: the state entering every chunk of
    ``CHUNK`` tokens, per direction: (2, batch, n_chunks, N, E)."""
    return (2, batch, -(-length // CHUNK), n_state, channels)


def scan_forward(inputs: Sequence[Optional[torch.Tensor]], z: Optional[torch.Tensor], save_states: bool
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The native forward pass: (out in the dtype of x_f, states of :func:`saved_states_shape` or None).

    ``inputs``: the 14 tensors (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b),
    D/dt_bias may be None. Check :func:`native_scan_supported` first.
    """
    lib = load_library()
    kernel_inputs = tuple(_as_kernel_input(t) for t in (*inputs, z))
    x_f, A_f = kernel_inputs[0], kernel_inputs[8]
    batch, length, channels = x_f.shape
    out = torch.empty(batch, length, channels, dtype=torch.float32)
    states = torch.empty(saved_states_shape(batch, length, channels, A_f.shape[1])) if save_states else None
    pair = (states[0], states[1]) if states is not None else (None, None)
    if lib.vimamba_scan_forward(ctypes.byref(_problem(kernel_inputs, out=out, states=pair))) != 0:
        raise RuntimeError("vimamba_scan_forward rejected its arguments")
    return out.to(inputs[0].dtype), states


def scan_backward(inputs: Sequence[Optional[torch.Tensor]], z: Optional[torch.Tensor],
                  states: Optional[torch.Tensor], dout: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """The native backward pass from the states :func:`scan_forward` saved (recomputed when None or empty).

    Returns the 15 gradients of (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b,
    z), each contiguous in its input's dtype; None for an input that is None.
    """
    if states is None or states.numel() == 0:
        states = scan_forward(inputs, z, save_states=True)[1]
    lib = load_library()
    kernel_inputs = tuple(_as_kernel_input(t) for t in (*inputs, z))
    x_f, A_f = kernel_inputs[0], kernel_inputs[8]
    batch, length, channels = x_f.shape
    n_state, threads = A_f.shape[1], torch.get_num_threads()
    grad_out = dout.float().contiguous()
    dz = torch.empty_like(grad_out) if z is not None else None
    grads = []
    for D, bias in ((kernel_inputs[10], kernel_inputs[12]), (kernel_inputs[11], kernel_inputs[13])):
        grads.append((
            torch.empty(batch, length, channels), torch.empty(batch, length, channels),
            torch.empty(batch, channels, n_state),
            torch.empty(batch, channels) if D is not None else None,
            torch.empty(batch, channels) if bias is not None else None,
            torch.zeros(threads, batch, length, n_state), torch.zeros(threads, batch, length, n_state),
        ))
    states = states.float().contiguous()
    problem = _problem(kernel_inputs, grad_out=grad_out, dz=dz, states=(states[0], states[1]), grads=grads)
    if lib.vimamba_scan_backward(ctypes.byref(problem)) != 0:
        raise RuntimeError("vimamba_scan_backward rejected its arguments")
    (du_f, ddt_f, dA_f, dD_f, db_f, dB_f, dC_f), (du_b, ddt_b, dA_b, dD_b, db_b, dB_b, dC_b) = grads
    total = lambda t: t.sum(0) if t is not None else None  # noqa: E731  (partial sums -> gradient)
    result = (du_f, du_b, ddt_f, ddt_b, total(dB_f), total(dB_b), total(dC_f), total(dC_b),
              total(dA_f), total(dA_b), total(dD_f), total(dD_b), total(db_f), total(db_b), dz)
    return tuple(g.to(t.dtype) if g is not None else None for g, t in zip(result, (*inputs, z)))


@scan_entry_point
def bidirectional_scan_cpp(inputs: ScanInputs) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 by the native CPU kernel; same contract as the other implementations.

    Runs the ``vimamba::bidirectional_scan`` operator (:mod:`vimamba.ops.library`), whose CPU kernel is this
    module's; float64 inputs, state sizes above 64, or a kernel that could not be built are computed by the chunked
    path (:func:`vimamba.ops.chunked.bidirectional_scan_chunked`) inside the operator.
    """
    from .library import bidirectional_scan

    if any(t is not None and t.device.type != "cpu" for t in inputs):
        raise ValueError("the 'cpp' selective scan runs on CPU tensors; use impl='auto', 'triton' or 'chunked'")
    return bidirectional_scan(*inputs)


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


def _flat_kernels(inputs):
    """(x, weight_f, bias_f, weight_b, bias_b) with the (E, 1, K) conv weights viewed as (E, K)."""
    x, weight_f, bias_f, weight_b, bias_b = inputs
    return x, weight_f.reshape(weight_f.shape[0], -1), bias_f, weight_b.reshape(weight_b.shape[0], -1), bias_b


def conv_silu_supported(x: torch.Tensor, weight_f: torch.Tensor, weight_b: Optional[torch.Tensor] = None) -> bool:
    """Whether the native kernel runs these inputs (CPU, not float64, a small kernel, the same width both ways)."""
    if x.device.type != "cpu" or x.dtype == torch.float64:
        return False
    if weight_b is not None and weight_b.shape != weight_f.shape:
        return False
    lib = load_library()
    return lib is not None and weight_f.shape[-1] <= lib.vimamba_conv_max_width()


def conv_silu_forward(x, weight_f, bias_f, weight_b, bias_b) -> Tuple[torch.Tensor, torch.Tensor]:
    """(silu(causal depthwise conv of x), silu(anti-causal depthwise conv of x)) by the native kernel, in the
    dtype of x. x: (batch, L, E); weights (E, 1, K) or (E, K); biases (E,) or None. Check
    :func:`conv_silu_supported` first."""
    x_, w_f, b_f, w_b, b_b = (_as_kernel_input(t) for t in _flat_kernels((x, weight_f, bias_f, weight_b, bias_b)))
    out = (torch.empty(x.shape), torch.empty(x.shape))
    if load_library().vimamba_conv_silu_forward(ctypes.byref(_conv_problem(x_, (w_f, w_b), (b_f, b_b), out=out))):
        raise RuntimeError("vimamba_conv_silu_forward rejected its arguments")
    return out[0].to(x.dtype), out[1].to(x.dtype)


def conv_silu_backward(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of (x, weight_f, bias_f, weight_b, bias_b) from those of the two outputs, by the native kernel;
    contiguous, each in its input's dtype and shape (None for a bias that is None)."""
    inputs = (x, weight_f, bias_f, weight_b, bias_b)
    x_, w_f, b_f, w_b, b_b = (_as_kernel_input(t) for t in _flat_kernels(inputs))
    batch, length, channels = x_.shape
    width, threads = w_f.shape[-1], torch.get_num_threads()
    grads = tuple(g.float().contiguous() for g in (grad_f, grad_b))
    dx = torch.empty(x_.shape)
    dw = (torch.empty(batch, channels, width), torch.empty(batch, channels, width))
    dbias = tuple(torch.empty(batch, channels) if b is not None else None for b in (b_f, b_b))
    scratch = torch.empty(threads, 2, length, load_library().vimamba_scan_lanes())
    problem = _conv_problem(x_, (w_f, w_b), (b_f, b_b), grad=grads, dx=dx, dw=dw, dbias=dbias, scratch=scratch)
    if load_library().vimamba_conv_silu_backward(ctypes.byref(problem)) != 0:
        raise RuntimeError("vimamba_conv_silu_backward rejected its arguments")
    result = (dx, dw[0].sum(0), dbias[0].sum(0) if dbias[0] is not None else None,
              dw[1].sum(0), dbias[1].sum(0) if dbias[1] is not None else None)
    return tuple(g.reshape(t.shape).to(t.dtype) if g is not None else None for g, t in zip(result, inputs))


def bidirectional_conv_silu_cpp(x, weight_f, bias_f, weight_b, bias_b):
    """(silu(causal depthwise conv of x), silu(anti-causal depthwise conv of x)) through the
    ``vimamba::bidirectional_conv_silu`` operator, whose CPU kernel is this module's native one (PyTorch where that
    cannot run). x: (batch, L, E); weights (E, 1, K) or (E, K); biases (E,) or None."""
    from .library import bidirectional_conv_silu

    return bidirectional_conv_silu(x, weight_f, bias_f, weight_b, bias_b)

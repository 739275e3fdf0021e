"""Selective-scan operators for Vision Mamba.

The model calls one entry point, :func:`bidirectional_selective_scan`, which computes the core of Vim's
bidirectional mixer::

    out = silu(z) * (scan_forward(x_f) + scan_backward(x_b)) / 2

and dispatches to an implementation:

``"reference"``  a sequential loop over tokens that reads like the math (:mod:`vimamba.ops.reference`); the
                 definition every other path is tested against. Slow.
``"chunked"``    pure PyTorch, any device: a two-level (about sqrt(L) chunks) scan with a custom autograd Function
                 that recomputes from chunk-boundary states in backward (:mod:`vimamba.ops.chunked`).
``"cpp"``        the native C++/OpenMP CPU kernel, compiled on first use (:mod:`vimamba.ops.cpp_scan`), run as the
                 PyTorch operator ``torch.ops.vimamba.bidirectional_scan`` (:mod:`vimamba.ops.library`), which
                 computes by the chunked scan where the kernel cannot be built or does not take the inputs.
``"triton"``     fused forward and backward Triton kernels for CUDA GPUs (:mod:`vimamba.ops.triton_scan`), the CUDA
                 kernel of the same operator.

The implementation is chosen, first match wins, by the ``impl`` argument, by the environment variable
``VIMAMBA_SCAN_IMPL``, or automatically (``"auto"``) from the device of the inputs. Under ``torch.compile`` the
choice is made once, while tracing (it is a constant of the compiled graph), and the scan and the fused
convolution are single graph nodes: the model compiles with ``fullgraph=True`` and exports with ``torch.export``.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from . import cpp_scan, library
from .chunked import bidirectional_scan_chunked
from .conv import bidirectional_conv_silu, depthwise_conv1d
from .reference import bidirectional_scan_reference, selective_scan_reference
from .scan_inputs import ScanInputs, scan_entry_point

__all__ = [
    "bidirectional_selective_scan",
    "selective_scan_reference",
    "bidirectional_scan_reference",
    "depthwise_conv1d",
    "bidirectional_conv_silu",
    "available_scan_impls",
    "resolve_scan_impl",
    "scan_impl_in_use",
    "SCAN_IMPL_ENV",
]

SCAN_IMPL_ENV = "VIMAMBA_SCAN_IMPL"
_IMPLS = ("reference", "chunked", "cpp", "triton")


def available_scan_impls() -> List[str]:
    """Names accepted by ``impl=`` / ``VIMAMBA_SCAN_IMPL`` (plus ``"auto"``)."""
    return list(_IMPLS)


def _usable(name: str) -> bool:
    if name == "cpp":
        return cpp_scan.is_available()
    if name == "triton":
        try:
            from . import triton_scan
        except ImportError:
            return False
        return triton_scan.is_available()
    return True


# Preference order of "auto" per device type: the first usable backend wins.
_AUTO_ORDER = {"cuda": ("triton", "chunked"), "cpu": ("cpp", "chunked")}


def _auto_impl(device: torch.device) -> str:
    for name in _AUTO_ORDER.get(device.type, ("chunked",)):
        if _usable(name):
            return name
    return "reference"


@torch.compiler.assume_constant_result
def _resolve(impl: Optional[str], device_type: str) -> str:
    name = (impl or os.environ.get(SCAN_IMPL_ENV) or "auto").strip().lower()
    if name == "auto":
        return _auto_impl(torch.device(device_type))
    if name not in _IMPLS:
        raise ValueError(
            f"unknown selective-scan implementation {name!r}; choose one of {['auto', *available_scan_impls()]} "
            f"(argument `scan_impl`/`impl` or environment variable {SCAN_IMPL_ENV})"
        )
    return name


def resolve_scan_impl(impl: Optional[str], device: torch.device) -> str:
    """The implementation that will run for inputs on ``device``: argument, else environment, else automatic."""
    return _resolve(impl, device.type)


def scan_impl_in_use(impl: Optional[str], device: torch.device) -> str:
    """The implementation that actually computes for inputs on ``device`` (for reports): like
    :func:`resolve_scan_impl`, except that ``"cpp"`` whose native kernel cannot be built here reports
    ``"chunked"``, the path it falls back to."""
    name = resolve_scan_impl(impl, device)
    if name == "cpp" and not _usable("cpp"):
        return "chunked"
    return name


@scan_entry_point
def bidirectional_selective_scan(inputs: ScanInputs, *, impl: Optional[str] = None) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 for Vim's two scan directions, without flipped copies of the sequence.

    Shapes (token-major): x_*, dt_*, z: (batch, L, E); B_*, C_*: (batch, L, N); A_*: (E, N); D_*, dt_bias_*: (E,).
    Per direction, with delta = softplus(dt + dt_bias):

        h_t = exp(delta_t A) h_prev + delta_t B_t x_t,   y_t = C_t . h_t + D x_t

    where h_prev is the state of token t-1 (forward) or t+1 (backward). x/dt/z/B/C may be float32, bfloat16 or
    float16; the state and all accumulation are float32; the output has the dtype of ``x_f``.
    """
    name = resolve_scan_impl(impl, inputs.x_f.device)
    if name == "reference":
        return bidirectional_scan_reference(*inputs)
    if name == "chunked":
        return bidirectional_scan_chunked(*inputs)
    if name == "cpp":
        return cpp_scan.bidirectional_scan_cpp(*inputs)
    if inputs.x_f.device.type == "cuda":  # "triton": the operator's CUDA kernel
        return library.bidirectional_scan(*inputs)
    from .triton_scan import bidirectional_scan_triton  # the kernels in Triton's CPU interpreter (tests)

    return bidirectional_scan_triton(*inputs)

"""Selective-scan operators for Vision Mamba.

The model calls one entry point, :func:`bidirectional_selective_scan`, which computes the core of Vim's
bidirectional mixer::

    out = silu(z) * (scan_forward(x_f) + scan_backward(x_b)) / 2

and dispatches to an implementation:

``"reference"``  a sequential loop over tokens that reads like the math (:mod:`vimamba.ops.reference`); the
                 definition every other path is tested against. Slow.

The implementation is chosen, first match wins, by the ``impl`` argument, by the environment variable
``VIMAMBA_SCAN_IMPL``, or automatically (``"auto"``) from the device of the inputs.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch

from .conv import depthwise_conv1d
from .reference import bidirectional_scan_reference, selective_scan_reference

__all__ = [
    "bidirectional_selective_scan",
    "selective_scan_reference",
    "bidirectional_scan_reference",
    "depthwise_conv1d",
    "available_scan_impls",
    "resolve_scan_impl",
    "SCAN_IMPL_ENV",
]

SCAN_IMPL_ENV = "VIMAMBA_SCAN_IMPL"

# name -> function with the signature of :func:`bidirectional_scan_reference`
_IMPLS: Dict[str, Callable[..., torch.Tensor]] = {
    "reference": bidirectional_scan_reference,
}


def available_scan_impls() -> list[str]:
    """Names accepted by ``impl=`` / ``VIMAMBA_SCAN_IMPL`` (plus ``"auto"``)."""
    return list(_IMPLS)


def resolve_scan_impl(impl: Optional[str], device: torch.device) -> str:
    """The implementation that will run for inputs on ``device``: argument, else environment, else automatic."""
    name = impl or os.environ.get(SCAN_IMPL_ENV) or "auto"
    name = name.strip().lower()
    if name == "auto":
        return "reference"
    if name not in _IMPLS:
        raise ValueError(
            f"unknown selective-scan implementation {name!r}; choose one of {['auto', *available_scan_impls()]} "
            f"(argument `scan_impl`/`impl` or environment variable {SCAN_IMPL_ENV})"
        )
    return name


def bidirectional_selective_scan(
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
    D_f: torch.Tensor,
    D_b: torch.Tensor,
    dt_bias_f: torch.Tensor,
    dt_bias_b: torch.Tensor,
    z: Optional[torch.Tensor] = None,
    *,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 for Vim's two scan directions, without flipped copies of the sequence.

    Shapes (token-major): x_*, dt_*, z: (batch, L, E); B_*, C_*: (batch, L, N); A_*: (E, N); D_*, dt_bias_*: (E,).
    Per direction, with delta = softplus(dt + dt_bias):

        h_t = exp(delta_t A) h_prev + delta_t B_t x_t,   y_t = C_t . h_t + D x_t

    where h_prev is the state of token t-1 (forward) or t+1 (backward). x/dt/z/B/C may be float32, bfloat16 or
    float16; the state and all accumulation are float32; the output has the dtype of ``x_f``.
    """
    name = resolve_scan_impl(impl, x_f.device)
    return _IMPLS[name](x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)

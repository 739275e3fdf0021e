"""Depthwise 1-D convolution along the token axis, causal (forward scan) or anti-causal (backward scan).

Vim's mixer runs a kernel-4 depthwise convolution before each scan direction. The forward branch is causal
(token t sees t-3..t, zeros before the start); the official backward branch applies the same causal convolution to
the flipped sequence, which is an anti-causal convolution on the original order (token t sees t..t+3, with the
kernel taps mirrored). Both are computed here in the token-major layout (batch, L, E) the projections produce,
without flipped copies of the sequence.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv1d", "bidirectional_conv_silu"]


def depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, reverse: bool = False
) -> torch.Tensor:
    """Depthwise convolution of a (batch, L, E) sequence with an (E, 1, K) or (E, K) kernel.

    ``reverse=False``: y[t] = bias + sum_k weight[:, k] * x[t - (K-1) + k]   (causal, as ``nn.Conv1d(padding=K-1)``
    truncated to the first L outputs, which is what the official forward branch computes).
    ``reverse=True``:  y[t] = bias + sum_k weight[:, k] * x[t + (K-1) - k]   (the causal convolution of the flipped
    sequence, flipped back: the official backward branch).
    """
    if x.dim() != 3:
        raise ValueError(f"depthwise_conv1d expects (batch, L, E), got shape {tuple(x.shape)}")
    w = weight.reshape(weight.shape[0], -1)  # (E, K)
    if w.shape[0] != x.shape[-1]:
        raise ValueError(f"kernel has {w.shape[0]} channels, input has {x.shape[-1]}")
    k = w.shape[1]
    length = x.shape[1]
    w = w.to(x.dtype)
    # Pad K-1 zero tokens before (causal) or after (anti-causal) the sequence and sum the K shifted copies.
    padded = F.pad(x, (0, 0, k - 1, 0) if not reverse else (0, 0, 0, k - 1))
    y = None
    for tap in range(k):
        start = tap if not reverse else k - 1 - tap
        term = padded[:, start:start + length] * w[:, tap]
        y = term if y is None else y + term
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y


def bidirectional_conv_silu(
    x: torch.Tensor,
    weight_f: torch.Tensor,
    bias_f: Optional[torch.Tensor],
    weight_b: torch.Tensor,
    bias_b: Optional[torch.Tensor],
    native: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both branches of the mixer's convolution: (silu(causal conv(x)), silu(anti-causal conv(x))).

    ``native=True`` runs the ``vimamba::bidirectional_conv_silu`` operator (:mod:`vimamba.ops.library`), whose CPU
    kernel is the fused C++ one of :mod:`vimamba.ops.cpp_scan` (one pass over x for both branches, forward and
    backward) where it is built and supports the inputs; otherwise, and by default, this is
    ``silu(depthwise_conv1d(x, ...))`` for each branch, plain PyTorch that a compiler can fuse.
    """
    if native:
        out_f, out_b = torch.ops.vimamba.bidirectional_conv_silu(x, weight_f, bias_f, weight_b, bias_b)
        return out_f, out_b
    return (F.silu(depthwise_conv1d(x, weight_f, bias_f)), F.silu(depthwise_conv1d(x, weight_b, bias_b, reverse=True)))

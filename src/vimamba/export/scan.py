"""The bidirectional selective scan in plain tensor operations that trace with a symbolic sequence length.

The eager scans of :mod:`vimamba.ops` run Python loops whose length depends on the token count (or call native
kernels), so an exported graph would freeze the image size or hold nothing to run. This form has a fixed number
of steps for any length, so one exported graph (ONNX, ``torch.export``) serves every image size.

Per direction the scan is the linear recurrence ``h_t = a_t h_prev + b_t`` over tokens, for channel e and state n::

    delta_t = softplus(dt_t + dt_bias),   log a_t = delta_t A[e, n] (<= 0),   b_t = delta_t u_t B_t[n]
    y_t     = sum_n C_t[n] h_t[n] + D[e] u_t

It is solved blockwise, with a block length ``T`` fixed at trace time and the number of blocks symbolic:

1. inside every block, from a zero state, the ``T`` sequential steps, all blocks at once (``T`` fused ops);
2. the state entering each block, from the recurrence between blocks -- itself a linear recurrence, with decay
   ``exp(sum of log a over the block)`` and input the block's last local state -- solved by the same method
   (``levels`` times), and at the top by its closed form ``h_t = sum_{s <= t} exp(S_t - S_s) b_s`` with
   ``S = cumsum(log a)`` over the few remaining blocks;
3. every state gets its block's entering state times ``exp(cumsum of log a within the block)`` added.

Only exponentials of non-positive numbers appear (differences ``S_t - S_s`` with ``s <= t``, cumulative sums of
``log a <= 0``), so nothing overflows for long sequences. The backward direction is the forward one on the
token-reversed inputs, reversed back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["linear_recurrence", "selective_scan_export", "bidirectional_scan_export", "BLOCK", "LEVELS"]

BLOCK = 16  # tokens per block (steps unrolled into the graph per level)
LEVELS = 2  # blocked levels before the closed form: up to BLOCK**LEVELS tokens per top-level position


def _closed_form(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states of the recurrence along dim 1 by ``h_t = sum_{s<=t} exp(S_t - S_s) b_s`` (quadratic in length)."""
    cum = torch.cumsum(log_a, dim=1)  # (batch, L, ...)
    diff = cum.unsqueeze(2) - cum.unsqueeze(1)  # [t, s] = S_t - S_s: (batch, L, L, ...)
    length = log_a.shape[1]
    steps = torch.arange(length, device=log_a.device)
    causal = (steps.unsqueeze(1) >= steps.unsqueeze(0)).reshape(1, length, length, *([1] * (log_a.dim() - 2)))
    weights = torch.exp(torch.where(causal, diff, torch.full_like(diff, float("-inf"))))
    return (weights * b.unsqueeze(1)).sum(2)


def linear_recurrence(log_a: torch.Tensor, b: torch.Tensor, levels: int = LEVELS, block: int = BLOCK) -> torch.Tensor:
    """All states of ``h_t = exp(log_a_t) h_{t-1} + b_t`` along dim 1 from ``h_{-1} = 0``; ``log_a <= 0``.

    ``log_a`` and ``b`` have the same shape (batch, L, ...); so has the result.
    """
    if levels == 0:
        return _closed_form(log_a, b)
    batch, length = b.shape[0], b.shape[1]
    rest = b.shape[2:]
    pad = (block - length % block) % block
    n_blocks = (length + pad) // block
    # zero tokens appended: log a = 0 (decay 1), b = 0 -- they change no state before them
    pad_spec = [0, 0] * len(rest) + [0, pad]
    log_a = F.pad(log_a, pad_spec).reshape(batch, n_blocks, block, *rest)
    b = F.pad(b, pad_spec).reshape(batch, n_blocks, block, *rest)
    a = torch.exp(log_a)
    local = [b[:, :, 0]]
    for t in range(1, block):  # 1. every block from a zero state
        local.append(a[:, :, t] * local[-1] + b[:, :, t])
    states = torch.stack(local, dim=2)  # (batch, n_blocks, block, ...)
    within = torch.cumsum(log_a, dim=2)  # log of the decay from the block's start to each token
    leaving = linear_recurrence(within[:, :, -1], local[-1], levels - 1, block)  # 2. state after each block
    entering = torch.cat([torch.zeros_like(leaving[:, :1]), leaving[:, :-1]], dim=1)
    states = states + torch.exp(within) * entering.unsqueeze(2)  # 3.
    return states.reshape(batch, n_blocks * block, *rest)[:, :length]


def selective_scan_export(u, dt, A, B, C, D, dt_bias, reverse: bool = False) -> torch.Tensor:
    """One direction's y (batch, L, E), D term included; shapes as :func:`vimamba.ops.bidirectional_selective_scan`."""
    if reverse:
        u, dt, B, C = (torch.flip(t, dims=[1]) for t in (u, dt, B, C))
    delta = F.softplus(dt + dt_bias)  # (batch, L, E)
    log_a = delta.unsqueeze(-1) * A  # (batch, L, E, N)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (batch, L, E, N)
    states = linear_recurrence(log_a, drive)
    y = (states * C.unsqueeze(2)).sum(-1) + u * D
    return torch.flip(y, dims=[1]) if reverse else y


def bidirectional_scan_export(
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b,
    z: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 with the contract of :func:`vimamba.ops.bidirectional_selective_scan`."""
    dtype = torch.promote_types(x_f.dtype, torch.float32)
    cast = lambda t: t.to(dtype)  # noqa: E731
    y_f = selective_scan_export(*map(cast, (x_f, dt_f, A_f, B_f, C_f, D_f, dt_bias_f)), reverse=False)
    y_b = selective_scan_export(*map(cast, (x_b, dt_b, A_b, B_b, C_b, D_b, dt_bias_b)), reverse=True)
    y = (y_f + y_b) * 0.5
    if z is not None:
        y = y * F.silu(cast(z))
    return y.to(x_f.dtype)

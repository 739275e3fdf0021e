"""The selective scan written as plainly as the math: the definition every faster path is tested against.

Notation (Mamba-1, one direction), for each batch element b, channel e, state n and token t:

    delta_t = softplus(dt_t + dt_bias)                       (if softplus is on)
    h_t     = exp(delta_t * A[e, n]) * h_{t-1} + delta_t * B_t[n] * u_t       h_{-1} = 0
    y_t     = sum_n C_t[n] * h_t[n]  +  D[e] * u_t
    out_t   = y_t * silu(z_t)                                  (if z is given)

The backward ("reverse") direction of Vision Mamba is the same recurrence run from the last token to the first,
``h_{L} = 0`` and ``h_t = exp(delta_t A) h_{t+1} + delta_t B_t u_t``, which equals the official code's
"flip the sequence, scan, flip back" without materialising flipped copies.

Layout: token-major, as the linear projections produce it: u, dt, z are (batch, L, E); B, C are (batch, L, N);
A is (E, N); D and dt_bias are (E,). Computation is in float32 (or float64 when the inputs are float64, which the
gradient tests use); the result is cast back to the dtype of ``u``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .scan_inputs import ScanInputs, scan_entry_point

__all__ = ["selective_scan_reference", "bidirectional_scan_reference"]


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> torch.Tensor:
    """One direction of the selective scan, a sequential loop over tokens (slow; the definition).

    Args:
        u: (batch, L, E) input sequence (in Vim: the conv + SiLU output).
        delta: (batch, L, E) time steps before bias/softplus (in Vim: dt_proj without its bias).
        A: (E, N) state matrix (diagonal per channel; negative for a stable system).
        B: (batch, L, N) input matrix per token.
        C: (batch, L, N) output matrix per token.
        D: (E,) skip connection, optional.
        z: (batch, L, E) gate, optional: the output is multiplied by silu(z).
        delta_bias: (E,) added to delta before the softplus, optional.
        delta_softplus: apply softplus to delta (+ bias).
        reverse: run from the last token to the first.

    Returns:
        (batch, L, E) tensor with the dtype of ``u``.
    """
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse).to(u.dtype)


def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse) -> torch.Tensor:
    """The loop itself; returns float32 (float64 for float64 inputs) so callers can combine before rounding."""
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    u_, delta_, B_, C_ = (t.to(compute_dtype) for t in (u, delta, B, C))
    A_ = A.to(compute_dtype)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(compute_dtype)
    if delta_softplus:
        delta_ = F.softplus(delta_)

    batch, length, channels = u_.shape
    n_state = A_.shape[1]
    h = u_.new_zeros(batch, channels, n_state)
    ys = [u_.new_empty(0)] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        decay = torch.exp(delta_[:, t, :, None] * A_)                                # (batch, E, N)
        drive = delta_[:, t, :, None] * B_[:, t, None, :] * u_[:, t, :, None]        # (batch, E, N)
        h = decay * h + drive
        ys[t] = (h * C_[:, t, None, :]).sum(-1)                                      # (batch, E)
    y = torch.stack(ys, dim=1) if length else u_.new_zeros(batch, 0, channels)

    if D is not None:
        y = y + u_ * D.to(compute_dtype)
    if z is not None:
        y = y * F.silu(z.to(compute_dtype))
    return y


@scan_entry_point
def bidirectional_scan_reference(inputs: ScanInputs) -> torch.Tensor:
    """Vim's bidirectional mixer core: silu(z) * (scan_forward + scan_backward) / 2, by two reference scans.

    Both directions use softplus(dt + dt_bias); the forward direction runs first-to-last on ``x_f``, the backward
    direction last-to-first on ``x_b``, each with its own B, C, A, D and dt bias.
    """
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z = inputs
    y_f = _scan(x_f, dt_f, A_f, B_f, C_f, D_f, None, dt_bias_f, True, reverse=False)
    y_b = _scan(x_b, dt_b, A_b, B_b, C_b, D_b, None, dt_bias_b, True, reverse=True)
    y = (y_f + y_b) / 2
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x_f.dtype)

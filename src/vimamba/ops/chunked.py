"""The bidirectional selective scan as a two-level ("sqrt L") chunked scan in plain PyTorch: any device, any dtype.

Per direction the scan is the linear recurrence ``h_t = a_t * h_prev + b_t`` with, for channel e and state n,

    delta_t = softplus(dt_t + dt_bias),   a_t = exp(delta_t * A[e, n]),   b_t = delta_t * u_t * B_t[n],
    y_t     = sum_n C_t[n] h_t[n] + D[e] u_t.

The sequence is cut into ``n_chunks`` chunks of ``T`` (about sqrt(L)) tokens, and all chunks are scanned at once:

1. inside every chunk, from a zero state: the local states and the running product of decays (T steps);
2. across chunks: the state entering chunk c+1 is ``prod_c * entry_c + local_end_c`` (n_chunks steps);
3. every state gets its chunk's entering state times the running product added (one vectorised op).

So about ``T + n_chunks`` Python steps instead of L, each a fused op over (batch, chunks, E, N) tensors. Only
products of decays (all <= 1 for a stable A) appear: nothing is divided by a decay and no long cumulative sum is
exponentiated, so long sequences and large ``-A * delta`` underflow harmlessly to zero instead of overflowing.
The backward ("reverse") direction runs the same steps in descending token order; nothing is flipped.

:class:`_ChunkedBidirectionalScan` saves only its inputs and the states entering each chunk, O(batch * sqrt(L) * E
* N), and its backward recomputes the states chunk group by chunk group, then runs the adjoint recurrence
``dh_t = C_t g_t + a_next_t dh_next`` with the same chunked machinery in the opposite direction. Large problems
are processed in groups of chunks so the transient (batch, chunks, T, E, N) tensors stay within a fixed budget:
memory is linear in L with a small constant.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .scan_inputs import ScanInputs, check_scan_shapes, scan_entry_point

__all__ = ["bidirectional_scan_chunked", "chunk_length", "chunked_scan_forward", "chunked_scan_backward"]

# Elements of one transient (batch, chunks, T, E, N) tensor (8 MiB in float32); forward holds ~4, backward ~10.
_GROUP_ELEMENTS = 1 << 21
_SOFTPLUS_THRESHOLD = 20.0  # as F.softplus: x above it is returned as is (derivative 1)


def chunk_length(length: int) -> int:
    """Tokens per chunk: about sqrt(L), which balances the within-chunk and the across-chunk loops."""
    return max(1, math.ceil(math.sqrt(length)))


def _softplus_with_grad_factor(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """softplus(x) and its derivative sigmoid(x), both with F.softplus's threshold (x > 20: identity)."""
    above = x > _SOFTPLUS_THRESHOLD
    return torch.where(above, x, F.softplus(x)), torch.where(above, torch.ones_like(x), torch.sigmoid(x))


def _pad_tokens(t: torch.Tensor, padded_length: int) -> torch.Tensor:
    """(batch, L, k) -> (batch, padded_length, k) with zero tokens appended (a zero delta: decay 1, input 0)."""
    extra = padded_length - t.shape[1]
    return F.pad(t, (0, 0, 0, extra)) if extra else t


def _scan_group(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor], reverse: bool):
    """All states of ``h = a * h_prev + b`` over a group of chunks, two-level.

    Args:
        a, b: (batch, G, T, E, N) decays and inputs of G consecutive chunks of T tokens.
        h0: (batch, E, N) state entering the group (from the left, or from the right if ``reverse``); None = 0.
        reverse: scan in descending token order.
    Returns:
        states (batch, G, T, E, N), the state entering each chunk (batch, G, E, N), and the state leaving the group.
    """
    steps = range(a.shape[2] - 1, -1, -1) if reverse else range(a.shape[2])
    h = torch.empty_like(b)
    decay_product = torch.empty_like(a)  # prod of the decays from the chunk's first step up to this one
    prev = None
    for t in steps:  # 1. local scan of every chunk from a zero state
        if prev is None:
            h[:, :, t] = b[:, :, t]
            decay_product[:, :, t] = a[:, :, t]
        else:
            torch.addcmul(b[:, :, t], a[:, :, t], h[:, :, prev], out=h[:, :, t])
            torch.mul(a[:, :, t], decay_product[:, :, prev], out=decay_product[:, :, t])
        prev = t
    entry = torch.zeros_like(h[:, :, 0])
    state = h0
    for c in (range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])):  # 2. across chunks
        if state is not None:
            entry[:, c] = state
            state = torch.addcmul(h[:, c, prev], decay_product[:, c, prev], state)
        else:
            state = h[:, c, prev].clone()  # a copy: callers may modify the states in place
    h.addcmul_(decay_product, entry[:, :, None])  # 3. add each chunk's entering state, decayed
    return h, entry, state


class _Direction:
    """One scan direction's inputs laid out on the chunk grid (batch, n_chunks, T, ...), in the compute dtype."""

    def __init__(self, u, dt, B, C, A, D, dt_bias, reverse: bool, chunk: int, dtype: torch.dtype):
        batch, length, _ = u.shape
        self.reverse, self.length, self.chunk = reverse, length, chunk
        self.n_chunks = -(-length // chunk)
        padded = self.n_chunks * chunk
        u, dt = u.to(dtype), dt.to(dtype)
        self.A = A.to(dtype)
        self.D = D.to(dtype) if D is not None else None
        self.has_bias = dt_bias is not None
        pre = dt + dt_bias.to(dtype) if dt_bias is not None else dt
        self.delta, self.softplus_grad = _softplus_with_grad_factor(pre)  # (batch, L, E)
        self.u = u
        grid = lambda t: _pad_tokens(t, padded).reshape(batch, self.n_chunks, chunk, t.shape[-1])  # noqa: E731
        self.delta_grid = grid(self.delta)
        self.du_grid = grid(self.delta * u)
        self.B_grid, self.C_grid = grid(B.to(dtype)), grid(C.to(dtype))
        self.u_grid = grid(u)

    def groups(self, batch: int) -> List[slice]:
        """Slices of consecutive chunks, in scan order, each small enough for the transient-tensor budget."""
        per_chunk = batch * self.chunk * self.A.numel()
        size = max(1, _GROUP_ELEMENTS // max(per_chunk, 1))
        slices = [slice(s, min(s + size, self.n_chunks)) for s in range(0, self.n_chunks, size)]
        return slices[::-1] if self.reverse else slices

    def decays_and_inputs(self, g: slice) -> Tuple[torch.Tensor, torch.Tensor]:
        delta = self.delta_grid[:, g, :, :, None]
        return torch.exp(delta * self.A), self.du_grid[:, g, :, :, None] * self.B_grid[:, g, :, None, :]

    def output(self, states: torch.Tensor, g: slice) -> torch.Tensor:
        """y on the grid, without the D term: sum_n C_t[n] h_t[n]."""
        return (states * self.C_grid[:, g, :, None, :]).sum(-1)

    def ungrid(self, t: torch.Tensor) -> torch.Tensor:
        """(batch, n_chunks, T, k) -> (batch, L, k)."""
        return t.reshape(t.shape[0], -1, t.shape[-1])[:, : self.length]


def _forward_direction(d: _Direction, save_entries: bool):
    """y (batch, L, E) including D*u, and the state entering every chunk (batch, n_chunks, E, N) if asked."""
    batch = d.u.shape[0]
    y = d.u.new_empty(batch, d.n_chunks, d.chunk, d.u.shape[-1])
    entries = d.u.new_empty(batch, d.n_chunks, *d.A.shape) if save_entries else None
    state = None
    for g in d.groups(batch):
        a, b = d.decays_and_inputs(g)
        states, entry, state = _scan_group(a, b, state, d.reverse)
        y[:, g] = d.output(states, g)
        if entries is not None:
            entries[:, g] = entry
    y = d.ungrid(y)
    return (y + d.u * d.D if d.D is not None else y), entries


def _shift_in_scan_order(grid: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The value of the next token in scan order at every token (zero past the end): (batch, chunks, T, k)."""
    batch, n_chunks, chunk, k = grid.shape
    flat = grid.reshape(batch, n_chunks * chunk, k)
    shifted = F.pad(flat[:, :-1], (0, 0, 1, 0)) if reverse else F.pad(flat[:, 1:], (0, 0, 0, 1))
    return shifted.reshape(batch, n_chunks, chunk, k)


def _backward_direction(d: _Direction, entries: torch.Tensor, g_out: torch.Tensor, needs_dA: bool):
    """Gradients of one direction from the gradient ``g_out`` (batch, L, E) of its y (D term included).

    Returns (y, du, ddt, dB, dC, dA, dD, dbias), y being the recomputed output for the gate's gradient.
    """
    batch, channels = d.u.shape[0], d.u.shape[-1]
    padded = d.n_chunks * d.chunk
    g_grid = _pad_tokens(g_out, padded).reshape(batch, d.n_chunks, d.chunk, channels)
    # The adjoint runs against the scan: dh_t = C_t g_t + a_next_t * dh_next, a_next_t = the decay of the token
    # after t in scan order (zero-padded delta past the end: decay 1 times a zero adjoint).
    delta_next = _shift_in_scan_order(d.delta_grid, d.reverse)

    y = torch.empty_like(g_grid)
    s_grid = torch.empty_like(g_grid)       # sum_n dh * B
    ddelta_grid = torch.empty_like(g_grid)
    dB = torch.empty_like(d.B_grid)
    dC = torch.empty_like(d.C_grid)
    dA = torch.zeros_like(d.A)
    adjoint_state = None
    for g in d.groups(batch)[::-1]:  # chunk groups in the adjoint's order
        a, b = d.decays_and_inputs(g)
        first = g.stop - 1 if d.reverse else g.start  # the group's first chunk in scan order
        states, entry, _ = _scan_group(a, b, entries[:, first], d.reverse)
        del b
        y[:, g] = d.output(states, g)
        a_next = torch.exp(delta_next[:, g, :, :, None] * d.A)
        drive = g_grid[:, g, :, :, None] * d.C_grid[:, g, :, None, :]
        dh, _, adjoint_state = _scan_group(a_next, drive, adjoint_state, not d.reverse)
        del a_next, drive
        # h_prev: the state before each token in scan order; the chunk's entering state for its first token.
        prev_states = torch.roll(states, 1 if not d.reverse else -1, dims=2)
        prev_states[:, :, -1 if d.reverse else 0] = entry
        dC[:, g] = (states * g_grid[:, g, :, :, None]).sum(-2)
        del states
        dB[:, g] = (dh * d.du_grid[:, g, :, :, None]).sum(-2)
        s_grid[:, g] = (dh * d.B_grid[:, g, :, None, :]).sum(-1)
        q = dh.mul_(a).mul_(prev_states)  # dh * a * h_prev = d(loss)/d(log a)
        del a, prev_states
        if needs_dA:
            dA += (q * d.delta_grid[:, g, :, :, None]).sum((0, 1, 2))
        ddelta_grid[:, g] = (q * d.A).sum(-1)
    s = d.ungrid(s_grid)
    ddelta = d.ungrid(ddelta_grid) + s * d.u
    du = s * d.delta + (g_out * d.D if d.D is not None else 0)
    ddt = ddelta * d.softplus_grad
    dD = (g_out * d.u).sum((0, 1)) if d.D is not None else None
    dbias = ddt.sum((0, 1)) if d.has_bias else None
    y = d.ungrid(y)
    if d.D is not None:
        y = y + d.u * d.D
    return y, du, ddt, d.ungrid(dB), d.ungrid(dC), dA, dD, dbias


def _gate(z: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return F.silu(z.to(dtype)) if z is not None else None


def chunked_scan_forward(inputs, save_entries: bool):
    """silu(z) * (y_f + y_b) / 2 from the 15 inputs (x_f, ..., dt_bias_b, z), and, if asked, the state entering each
    chunk per direction (what :func:`chunked_scan_backward` starts from). No autograd involved."""
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z = inputs
    dtype = torch.promote_types(x_f.dtype, torch.float32)
    chunk = chunk_length(x_f.shape[1])
    y_f, entries_f = _forward_direction(
        _Direction(x_f, dt_f, B_f, C_f, A_f, D_f, dt_bias_f, False, chunk, dtype), save_entries)
    y_b, entries_b = _forward_direction(
        _Direction(x_b, dt_b, B_b, C_b, A_b, D_b, dt_bias_b, True, chunk, dtype), save_entries)
    y = (y_f + y_b) * 0.5
    if z is not None:
        y = y * _gate(z, dtype)
    return y.to(x_f.dtype), entries_f, entries_b


def chunked_scan_backward(inputs, entries_f, entries_b, grad_out, needs=None):
    """The gradients of the 15 inputs of :func:`chunked_scan_forward` (None where an input is None or, by
    ``needs``, not wanted), each in its input's dtype. No autograd involved."""
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z = inputs
    needs = needs if needs is not None else [t is not None for t in inputs]
    dtype = torch.promote_types(x_f.dtype, torch.float32)
    chunk = chunk_length(x_f.shape[1])
    grad_out = grad_out.to(dtype)
    gate = _gate(z, dtype)
    g = grad_out * 0.5 if gate is None else grad_out * gate * 0.5  # d loss / d y_f = d loss / d y_b
    out_f = _backward_direction(
        _Direction(x_f, dt_f, B_f, C_f, A_f, D_f, dt_bias_f, False, chunk, dtype), entries_f, g, needs[8])
    out_b = _backward_direction(
        _Direction(x_b, dt_b, B_b, C_b, A_b, D_b, dt_bias_b, True, chunk, dtype), entries_b, g, needs[9])
    dz = None
    if z is not None and needs[14]:
        sig = torch.sigmoid(z.to(dtype))
        dz = (grad_out * 0.5 * (out_f[0] + out_b[0]) * sig * (1 + z.to(dtype) * (1 - sig))).to(z.dtype)
    (_, du_f, ddt_f, dB_f, dC_f, dA_f, dD_f, dbias_f), (_, du_b, ddt_b, dB_b, dC_b, dA_b, dD_b, dbias_b) = out_f, out_b
    grads = (du_f, du_b, ddt_f, ddt_b, dB_f, dB_b, dC_f, dC_b, dA_f, dA_b, dD_f, dD_b, dbias_f, dbias_b)
    cast = tuple(gr.to(inp.dtype) if gr is not None and inp is not None and need else None
                 for gr, inp, need in zip(grads, inputs, needs))
    return (*cast, dz)


class _ChunkedBidirectionalScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        y, entries_f, entries_b = chunked_scan_forward(inputs, save_entries=any(ctx.needs_input_grad))
        ctx.save_for_backward(*inputs, entries_f, entries_b)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        *inputs, entries_f, entries_b = ctx.saved_tensors
        return chunked_scan_backward(inputs, entries_f, entries_b, grad_out, ctx.needs_input_grad)


@scan_entry_point
def bidirectional_scan_chunked(inputs: ScanInputs) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 by the chunked scan; same contract as :func:`vimamba.ops.bidirectional_selective_scan`.

    Works on any device and for float32/float64/bfloat16/float16 inputs (state and accumulation in float32, or
    float64 for float64 inputs); ``D_*``, ``dt_bias_*`` and ``z`` may be None. Differentiable in every input.
    """
    check_scan_shapes(inputs)
    return _ChunkedBidirectionalScan.apply(*inputs)

"""The bidirectional selective scan in standard ONNX operators (opset 18+), for any sequence length.

This is the blocked linear recurrence of :mod:`vimamba.export.scan` (see there for the math) written with ONNX
Script operators, so that the exported graph runs in any ONNX runtime without custom kernels. The first level
streams tokens inside the blocks and never stores the full (L, N, E) states (see :func:`_direction`); the levels
above it, on one state per block, are :func:`_linear_recurrence`. It is the ONNX translation
of the ``vimamba_export::bidirectional_scan`` operator; the sequence length is read from the input's shape at run
time, so one graph serves every image size.
"""
from __future__ import annotations

from onnxscript import opset18 as op

from .scan import BLOCK, LEVELS

__all__ = ["bidirectional_scan_onnx"]

_INT64_MAX = 9223372036854775807
_INT64_MIN = -9223372036854775808


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def _reverse_tokens(x):
    """x[:, ::-1]."""
    return op.Slice(x, _ints(-1), _ints(_INT64_MIN), _ints(1), _ints(-1))


def _closed_form(log_a, b):
    """h_t = sum_{s <= t} exp(S_t - S_s) b_s, S = cumsum(log a) along axis 1 (the few top-level positions)."""
    cum = op.CumSum(log_a, op.Constant(value_int=1))
    diff = op.Sub(op.Unsqueeze(cum, _ints(2)), op.Unsqueeze(cum, _ints(1)))  # (batch, L, L, E, N): [t, s]
    length = op.Squeeze(op.Shape(b, start=1, end=2))
    steps = op.Range(op.Constant(value_int=0), length, op.Constant(value_int=1))
    causal = op.GreaterOrEqual(op.Unsqueeze(steps, _ints(1)), op.Unsqueeze(steps, _ints(0)))  # (L, L)
    causal = op.Unsqueeze(causal, _ints(0, 3, 4))
    minus_inf = op.CastLike(op.Constant(value_float=float("-inf")), diff)
    weights = op.Exp(op.Where(causal, diff, minus_inf))
    return op.ReduceSum(op.Mul(weights, op.Unsqueeze(b, _ints(1))), _ints(2), keepdims=0)


def _linear_recurrence(log_a, b, levels: int, block: int):
    """All states of h_t = exp(log_a_t) h_{t-1} + b_t along axis 1, as :func:`vimamba.export.scan.linear_recurrence`."""
    if levels == 0:
        return _closed_form(log_a, b)
    batch, length, tail = op.Shape(b, start=0, end=1), op.Shape(b, start=1, end=2), op.Shape(b, start=2)
    block_c = _ints(block)
    pad = op.Mod(op.Sub(block_c, op.Mod(length, block_c)), block_c)
    zero2 = _ints(0, 0)
    pads = op.Concat(_ints(0, 0, 0, 0, 0), pad, zero2, axis=0)  # begins (4 axes), then ends: (0, pad, 0, 0)
    n_blocks = op.Div(op.Add(length, pad), block_c)
    grid = op.Concat(batch, n_blocks, block_c, tail, axis=0)
    log_a = op.Reshape(op.Pad(log_a, pads), grid)  # (batch, n_blocks, block, E, N)
    b = op.Reshape(op.Pad(b, pads), grid)
    a_steps = op.Split(op.Exp(log_a), axis=2, num_outputs=block)
    b_steps = op.Split(b, axis=2, num_outputs=block)
    local = [b_steps[0]]
    for t in range(1, block):  # 1. every block from a zero state
        local.append(op.Add(op.Mul(a_steps[t], local[-1]), b_steps[t]))
    states = op.Concat(*local, axis=2)
    within = op.CumSum(log_a, op.Constant(value_int=2))
    block_decay = op.Squeeze(op.Slice(within, _ints(block - 1), _ints(block), _ints(2)), _ints(2))
    leaving = _linear_recurrence(block_decay, op.Squeeze(local[-1], _ints(2)), levels - 1, block)  # 2.
    all_but_last = op.Slice(leaving, _ints(0), _ints(-1), _ints(1))
    entering = op.Pad(all_but_last, _ints(0, 1, 0, 0, 0, 0, 0, 0))  # a zero state enters the first block
    states = op.Add(states, op.Mul(op.Exp(within), op.Unsqueeze(entering, _ints(2))))  # 3.
    flat = op.Reshape(states, op.Concat(batch, op.Mul(n_blocks, block_c), tail, axis=0))
    return op.Slice(flat, _ints(0), length, _ints(1))


def _blocks(x, block_c, pad, n_blocks):
    """(batch, L, k) -> (batch, n_blocks, block, k), zero tokens appended."""
    batch, tail = op.Shape(x, start=0, end=1), op.Shape(x, start=2)
    padded = op.Pad(x, op.Concat(_ints(0, 0, 0, 0), pad, _ints(0), axis=0))
    return op.Reshape(padded, op.Concat(batch, n_blocks, block_c, tail, axis=0))


def _direction(u, dt, A, B, C, D, dt_bias, reverse: bool):
    """One direction's y (batch, L, E), D term included.

    The first level works token by token inside the blocks on (batch, blocks, N, E) slices, computing each
    token's output as it goes: the full states are never stored, only the products ``C_t * (decay from the
    block's start to t)`` that carry the state entering the block to the outputs. States are laid out (N, E),
    channels innermost, so every broadcast multiplies contiguous rows of E channels (onnxruntime's broadcasting
    is several times slower with the 16 states innermost).
    """
    if reverse:
        u, dt, B, C = (_reverse_tokens(t) for t in (u, dt, B, C))
    pre = op.Add(dt, dt_bias)
    threshold = op.CastLike(op.Constant(value_float=20.0), pre)
    delta = op.Where(op.Greater(pre, threshold), pre, op.Softplus(pre))  # torch's softplus (threshold 20)
    block = BLOCK
    block_c = _ints(block)
    length = op.Shape(u, start=1, end=2)
    pad = op.Mod(op.Sub(block_c, op.Mod(length, block_c)), block_c)
    n_blocks = op.Div(op.Add(length, pad), block_c)
    # zero tokens appended: delta = 0 (decay 1, input 0) and C = 0, so they change nothing before them
    delta_g, du_g = _blocks(delta, block_c, pad, n_blocks), _blocks(op.Mul(delta, u), block_c, pad, n_blocks)
    B_g, C_g = _blocks(B, block_c, pad, n_blocks), _blocks(C, block_c, pad, n_blocks)
    A = op.Transpose(A, perm=[1, 0])  # (N, E)
    delta_t = op.Split(op.Unsqueeze(delta_g, _ints(3)), axis=2, num_outputs=block)  # (batch, blocks, 1, 1, E)
    du_t = op.Split(op.Unsqueeze(du_g, _ints(3)), axis=2, num_outputs=block)
    B_t = op.Split(op.Unsqueeze(B_g, _ints(-1)), axis=2, num_outputs=block)  # (batch, blocks, 1, N, 1)
    C_t = op.Split(op.Unsqueeze(C_g, _ints(-1)), axis=2, num_outputs=block)
    local_y, carry = [], []
    state = decay = None
    for t in range(block):  # 1. every block from a zero state, all blocks at once
        a = op.Exp(op.Mul(delta_t[t], A))
        b = op.Mul(du_t[t], B_t[t])
        state = b if state is None else op.Add(op.Mul(a, state), b)
        decay = a if decay is None else op.Mul(a, decay)
        local_y.append(op.ReduceSum(op.Mul(state, C_t[t]), _ints(3), keepdims=0))  # (batch, blocks, 1, E)
        carry.append(op.Mul(decay, C_t[t]))
    # 2. the state entering each block: the recurrence between blocks, decay exp(sum of delta over block * A)
    block_log_decay = op.Mul(op.Unsqueeze(op.ReduceSum(delta_g, _ints(2), keepdims=0), _ints(2)), A)
    leaving = _linear_recurrence(block_log_decay, op.Squeeze(state, _ints(2)), LEVELS - 1, block)
    entering = op.Pad(op.Slice(leaving, _ints(0), _ints(-1), _ints(1)), _ints(0, 1, 0, 0, 0, 0, 0, 0))
    # 3. y_t = C_t . (local state + decay to t * entering state)
    carried = op.ReduceSum(op.Mul(op.Concat(*carry, axis=2), op.Unsqueeze(entering, _ints(2))), _ints(3),
                           keepdims=0)
    y = op.Add(op.Concat(*local_y, axis=2), carried)  # (batch, blocks, block, E)
    y = op.Reshape(y, op.Concat(op.Shape(u, start=0, end=1), op.Mul(n_blocks, block_c), op.Shape(u, start=2),
                                axis=0))
    y = op.Add(op.Slice(y, _ints(0), length, _ints(1)), op.Mul(u, D))
    return _reverse_tokens(y) if reverse else y


def bidirectional_scan_onnx(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z):
    """silu(z) * (y_f + y_b) / 2 in ONNX operators."""
    y_f = _direction(x_f, dt_f, A_f, B_f, C_f, D_f, dt_bias_f, reverse=False)
    y_b = _direction(x_b, dt_b, A_b, B_b, C_b, D_b, dt_bias_b, reverse=True)
    half = op.CastLike(op.Constant(value_float=0.5), y_f)
    return op.Mul(op.Mul(op.Add(y_f, y_b), half), op.Mul(z, op.Sigmoid(z)))

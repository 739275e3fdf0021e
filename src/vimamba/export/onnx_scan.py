"""The bidirectional selective scan in standard ONNX operators (opset 18+), for any sequence length.

This is :mod:`vimamba.export.scan` (the blocked linear recurrence, see there for the math) written with ONNX Script
operators, so that the exported graph runs in any ONNX runtime without custom kernels. It is the ONNX translation
of the ``vimamba_export::bidirectional_scan`` operator; the sequence length is read from the input's shape at run
time, so one graph serves every image size. Every tensor of the recurrence is (batch, L, E, N).
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
    """All states of h_t = exp(log_a_t) h_{t-1} + b_t along axis 1 (see :func:`vimamba.export.scan.linear_recurrence`)."""
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


def _direction(u, dt, A, B, C, D, dt_bias, reverse: bool):
    """One direction's y (batch, L, E), D term included."""
    if reverse:
        u, dt, B, C = (_reverse_tokens(t) for t in (u, dt, B, C))
    pre = op.Add(dt, dt_bias)
    threshold = op.CastLike(op.Constant(value_float=20.0), pre)
    delta = op.Where(op.Greater(pre, threshold), pre, op.Softplus(pre))  # torch's softplus (threshold 20)
    log_a = op.Mul(op.Unsqueeze(delta, _ints(-1)), A)  # (batch, L, E, N)
    drive = op.Mul(op.Unsqueeze(op.Mul(delta, u), _ints(-1)), op.Unsqueeze(B, _ints(2)))
    states = _linear_recurrence(log_a, drive, LEVELS, BLOCK)
    y = op.ReduceSum(op.Mul(states, op.Unsqueeze(C, _ints(2))), _ints(-1), keepdims=0)
    y = op.Add(y, op.Mul(u, D))
    return _reverse_tokens(y) if reverse else y


def bidirectional_scan_onnx(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z):
    """silu(z) * (y_f + y_b) / 2 in ONNX operators."""
    y_f = _direction(x_f, dt_f, A_f, B_f, C_f, D_f, dt_bias_f, reverse=False)
    y_b = _direction(x_b, dt_b, A_b, B_b, C_b, D_b, dt_bias_b, reverse=True)
    half = op.CastLike(op.Constant(value_float=0.5), y_f)
    return op.Mul(op.Mul(op.Add(y_f, y_b), half), op.Mul(z, op.Sigmoid(z)))
